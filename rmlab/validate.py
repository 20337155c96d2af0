"""The checks that need no torch: the config's shape and every value of the parts that have no ``_target_``.

``validate_config(cfg)`` runs first, before torch, scikit-learn or anything else heavy is imported and before any
seed is set, so a typo answers in about a second instead of several. It checks:
- values nobody gave (``???`` in a config: ``task.path`` of ``task=csv``) and interpolations that do not resolve;
- the root keys (``seed``, ``experiment``, ``run_name``, ``init_from``) and no unknown root key;
- every key of ``trainer``, ``optimizer``, ``logger`` and ``generation`` (and ``feedback=none``): unknown keys are an
  error listing the valid ones, as for the components built from a ``_target_``; each value's type, range and
  finiteness.
The components with a ``_target_`` (task, model, loss, reward, feedback) are checked against their class's
signature and by their constructors in ``rmlab.build``, which needs the classes, hence torch.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Collection, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rmlab.errors import ConfigError, check
from rmlab.generation_config import GenerationConfig

GROUPS = ("task", "model", "loss", "reward", "feedback", "generation", "optimizer", "trainer", "logger")
# optuna: set by the Optuna sweeper per trial
ROOT_KEYS = (*GROUPS, "seed", "experiment", "run_name", "init_from", "resume", "optuna")
MAX_SEED = 2**32 - 1  # what numpy's and Lightning's seeding accept

PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "64")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
UNSUPPORTED_STRATEGIES = ("ddp_spawn", "ddp_notebook", "ddp_fork")
SCHEDULERS = ("none", "cosine", "step", "exponential")

# Every key of a group without a _target_ (nested groups as dicts). A key missing from the config is an error too:
# the packaged YAML files set them all, so a missing one was removed on purpose (~trainer.x) or forgotten.
TRAINER_KEYS: dict[str, Any] = {
    "accelerator": None, "devices": None, "strategy": None, "num_threads": None, "precision": None,
    "max_epochs": None, "gradient_clip_val": None, "accumulate_grad_batches": None, "deterministic": None,
    "log_every_n_steps": None, "check_val_every_n_epoch": None, "fast_dev_run": None, "limit_train_batches": None,
    "steps_per_chunk": None, "enable_progress_bar": None,
    "early_stopping": {"enabled": None, "patience": None, "min_delta": None},
    "checkpoint": {"enabled": None, "every_n_epochs": None, "min_interval_s": None},
}
_SCHEDULER_KEYS = {"name": None, "step_size": None, "gamma": None, "min_lr": None}
_OPTIMIZER_COMMON = {"name": None, "lr": None, "weight_decay": None, "scheduler": _SCHEDULER_KEYS}
OPTIMIZER_KEYS: dict[str, dict[str, Any]] = {
    "adam": {**_OPTIMIZER_COMMON, "betas": None},
    "adamw": {**_OPTIMIZER_COMMON, "betas": None},
    "sgd": {**_OPTIMIZER_COMMON, "momentum": None, "nesterov": None},
}
LOGGER_KEYS: dict[str, dict[str, Any]] = {
    "mlflow": {"name": None, "tracking_uri": None, "log_checkpoint": None, "log_model": None, "register_as": None,
               "flush_every_s": None, "retry_s": None},
    "none": {"name": None},
}


# --- value checks: one message shape everywhere ------------------------------------------------------------------


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite number (bools are not numbers here: ``lr=true`` must not train with lr 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_int(key: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    ok = is_int(value) and value >= minimum and (maximum is None or value <= maximum)
    valid = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    check(ok, f"{key} must be {valid}, got {value!r}")


def check_real(key: str, value: Any, low: float | None = None, high: float | None = None, *,
               low_open: bool = False, high_open: bool = False) -> None:
    """A finite real number within the bounds given (open or closed as flagged)."""
    ok = is_real(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if low is not None and high is not None:
        valid = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        valid = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        valid = "a finite number"
    check(ok, f"{key} must be {valid}, got {value!r}")


def check_bool(key: str, value: Any) -> None:
    check(isinstance(value, bool), f"{key} must be true or false, got {value!r}")


def check_choice(key: str, value: Any, choices: Collection[str]) -> None:
    check(isinstance(value, str) and value in choices, f"{key} must be one of {', '.join(choices)}, got {value!r}")


def check_keys(where: str, node: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """No unknown key (the error lists the valid ones) and no missing one, recursively for nested groups."""
    unknown = sorted(k for k in node if k not in schema)
    check(not unknown, f"{where} has no option {', '.join(unknown)}; its options are: {', '.join(schema)}")
    missing = [k for k in schema if k not in node]
    check(not missing, f"{where} lacks {', '.join(missing)} (every option of {where} needs a value)")
    for key, sub in schema.items():
        if isinstance(sub, Mapping):
            check(isinstance(node[key], Mapping), f"{where}.{key} must be a group of options ({', '.join(sub)}), "
                                                  f"got {node[key]!r}")
            check_keys(f"{where}.{key}", node[key], sub)


# --- the parts of the config -------------------------------------------------------------------------------------


def validate_root(cfg: Mapping[str, Any]) -> None:
    unknown = sorted(k for k in cfg if k not in ROOT_KEYS)
    check(not unknown, f"unknown key {', '.join(unknown)} at the top of the config; the top-level keys are: "
                       f"{', '.join(k for k in ROOT_KEYS if k != 'optuna')}")
    check_int("seed", cfg.get("seed"), 0, MAX_SEED)
    experiment = cfg.get("experiment")
    check(isinstance(experiment, str) and experiment.strip() != "",
          f"experiment must be a non-empty name (the MLflow experiment), got {experiment!r}")
    name = cfg.get("run_name")
    check(name is None or (isinstance(name, str) and name.strip() != ""),
          f"run_name must be null (the default name) or a non-empty name, got {name!r}")
    source = cfg.get("init_from")
    check(source is None or (isinstance(source, str) and source.strip() != "" and source == source.strip()),
          f"init_from must be null (fresh weights), an MLflow run id, a run's output folder or a checkpoint file "
          f"(a string; quote a run id of digits only: init_from=\"'0123...'\"), got {source!r}")
    resume = cfg.get("resume")
    # A run id of digits (and at most one e) reads as a number on the command line: quoting keeps it text.
    check(resume is None or (isinstance(resume, str) and re.fullmatch(r"[0-9A-Za-z_-]+", resume) is not None),
          f"resume must be null or the MLflow run id of the run to continue (quote an id that reads as a number: "
          f"resume=\"'0123...'\"), got {resume!r}")


def check_devices(devices: Any) -> None:
    """An integer >= 1, -1 (all), "auto", or device ids (a list, or "0,1")."""
    valid = f"trainer.devices must be an integer >= 1, -1 (all devices), auto, or a list of device ids; got {devices!r}"
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return
        parts = [p.strip() for p in text.split(",")] if "," in text else [text]
        check(all(p.isdigit() for p in parts) and parts, valid)
        check("," in text or int(text) >= 1, valid)
        return
    if isinstance(devices, (list, ListConfig)):
        ids = list(devices)
        check(bool(ids) and all(is_int(i) and i >= 0 for i in ids) and len(set(ids)) == len(ids), valid)
        return
    check(is_int(devices) and (devices >= 1 or devices == -1), valid)


def validate_trainer(trainer: Mapping[str, Any]) -> None:
    """Every Trainer setting: unknown keys, types, ranges (availability of the devices is checked in rmlab.build)."""
    check_keys("trainer", trainer, TRAINER_KEYS)
    check_choice("trainer.accelerator", trainer["accelerator"], ACCELERATORS)
    check_devices(trainer["devices"])
    strategy = trainer["strategy"]
    check(isinstance(strategy, str) and strategy != "", f"trainer.strategy must be a strategy name, got {strategy!r}")
    check(strategy not in UNSUPPORTED_STRATEGIES,
          f"trainer.strategy={strategy} is not supported yet: the epoch-end validation state (best weights, "
          "val/selected_reward) would stay in the spawned workers. Use trainer.strategy=ddp (or auto)")
    threads = trainer["num_threads"]
    check(threads is None or (is_int(threads) and threads >= 1),
          f"trainer.num_threads must be null or an integer >= 1, got {threads!r}")
    check(str(trainer["precision"]) in PRECISIONS,
          f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {trainer['precision']!r}")
    for key in ("max_epochs", "log_every_n_steps", "check_val_every_n_epoch", "steps_per_chunk",
                "accumulate_grad_batches"):
        check_int(f"trainer.{key}", trainer[key], 1)
    clip = trainer["gradient_clip_val"]
    if clip is not None:
        check(is_real(clip) and clip > 0, f"trainer.gradient_clip_val must be null or a number > 0, got {clip!r}")
    deterministic = trainer["deterministic"]
    check(isinstance(deterministic, bool) or deterministic == "warn",
          f"trainer.deterministic must be true, false or warn, got {deterministic!r}")
    limit = trainer["limit_train_batches"]
    check(limit is None or (is_int(limit) and limit >= 1) or (
        isinstance(limit, float) and math.isfinite(limit) and 0 < limit <= 1),
          f"trainer.limit_train_batches must be null, a fraction in (0, 1] or an integer count >= 1, got {limit!r}")
    runs = trainer["fast_dev_run"]
    check(isinstance(runs, bool) or (is_int(runs) and runs >= 1),
          f"trainer.fast_dev_run must be true, false or a number of batches >= 1, got {runs!r}")
    check_bool("trainer.enable_progress_bar", trainer["enable_progress_bar"])
    stop = trainer["early_stopping"]
    check_bool("trainer.early_stopping.enabled", stop["enabled"])
    check_int("trainer.early_stopping.patience", stop["patience"], 1)
    check_real("trainer.early_stopping.min_delta", stop["min_delta"], 0)
    check_bool("trainer.checkpoint.enabled", trainer["checkpoint"]["enabled"])
    check_int("trainer.checkpoint.every_n_epochs", trainer["checkpoint"]["every_n_epochs"], 0)
    check_real("trainer.checkpoint.min_interval_s", trainer["checkpoint"]["min_interval_s"], 0)


def validate_optimizer(cfg: Mapping[str, Any]) -> None:
    """Every optimizer and scheduler value; raise ConfigError naming the key, the value and the valid range."""
    name = cfg.get("name")
    check_choice("optimizer.name", name, OPTIMIZER_KEYS)
    check_keys(f"optimizer {name!r}", cfg, OPTIMIZER_KEYS[name])
    check_real("optimizer.lr", cfg["lr"], 0, low_open=True)
    check_real("optimizer.weight_decay", cfg["weight_decay"], 0)
    if "betas" in cfg:
        betas = cfg["betas"]
        check(isinstance(betas, (list, tuple, ListConfig)) and len(betas) == 2
              and all(is_real(b) and 0 <= b < 1 for b in betas),
              f"optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.999]; got {betas!r}")
    if "momentum" in cfg:
        check_real("optimizer.momentum", cfg["momentum"], 0, 1, high_open=True)
        check_bool("optimizer.nesterov", cfg["nesterov"])
        check(not cfg["nesterov"] or cfg["momentum"] > 0, "optimizer.nesterov needs optimizer.momentum > 0")
    sched = cfg["scheduler"]
    check_choice("optimizer.scheduler.name", sched["name"], SCHEDULERS)
    # Every scheduler key is checked whatever the scheduler, so a bad value never waits for the day it is used.
    check_int("optimizer.scheduler.step_size", sched["step_size"], 1)
    check_real("optimizer.scheduler.gamma", sched["gamma"], 0, 1, low_open=True)
    check_real("optimizer.scheduler.min_lr", sched["min_lr"], 0)
    if sched["name"] == "cosine":
        check(sched["min_lr"] < cfg["lr"],
              f"optimizer.scheduler.min_lr must be in [0, lr={cfg['lr']}), got {sched['min_lr']}")


def validate_logger(logger: Mapping[str, Any]) -> None:
    name = logger.get("name")
    check_choice("logger", name, LOGGER_KEYS)
    check_keys(f"logger {name!r}", logger, LOGGER_KEYS[name])
    if name == "mlflow":
        uri = logger["tracking_uri"]
        check(uri is None or (isinstance(uri, str) and uri.strip() != ""),
              f"logger.tracking_uri must be null (the default store) or a URI, got {uri!r}")
        check_bool("logger.log_checkpoint", logger["log_checkpoint"])
        check_real("logger.flush_every_s", logger["flush_every_s"], 0, low_open=True)
        check_real("logger.retry_s", logger["retry_s"], 0)
        validate_model_logging(logger)


def validate_model_logging(logger: Mapping[str, Any]) -> None:
    """``logger.log_model`` and ``logger.register_as`` (a Model registry name: no '/' or ':')."""
    check_bool("logger.log_model", logger["log_model"])
    name = logger["register_as"]
    check(name is None or (isinstance(name, str) and name.strip() != "" and not any(c in name for c in "/:")),
          f"logger.register_as must be null or a model name without '/' or ':', got {name!r}")
    check(name is None or logger["log_model"],
          f"logger.register_as={name} registers the run's model, but logger.log_model=false logs none; "
          "set logger.log_model=true")


def validate_feedback(feedback: Mapping[str, Any]) -> None:
    """``feedback=none`` has no _target_ and no options; the others are built (and checked) from their class."""
    if "_target_" not in feedback:
        check(feedback.get("name") == "none", f"feedback {feedback.get('name')!r} has no _target_ (the class to "
                                              "build); feedback=none is the only option without one")
        check_keys("feedback 'none'", feedback, {"name": None})


def validate_config(cfg: DictConfig) -> dict[str, Any]:
    """Check everything that needs no torch; return the resolved config as plain containers."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required: give "
                          f"{' '.join(f'{k}=...' for k in missing)} on the command line")
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:  # an interpolation that does not resolve: ${nope}
        raise ConfigError(f"the config does not resolve: {str(err).splitlines()[0]}") from err
    validate_root(resolved)
    for group in GROUPS:
        check(isinstance(resolved.get(group), Mapping), f"{group} must be a config group, got {resolved.get(group)!r}")
    validate_trainer(resolved["trainer"])
    validate_optimizer(resolved["optimizer"])
    validate_logger(resolved["logger"])
    validate_feedback(resolved["feedback"])
    GenerationConfig.from_config(resolved["generation"])
    return resolved
