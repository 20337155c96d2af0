"""Turn a composed config into the run's components, checking everything before any training starts.

``build_components(cfg)`` instantiates the task (and loads its data, so a bad file fails here), the model, loss and
reward, and validates the optimizer and trainer settings. Every problem raises a ``ConfigError`` that names it and
the valid choices; an incompatible task x loss x reward combination raises ``IncompatibleError`` listing the options
of that group that do work with the task. Only torch and the project's own modules are imported here: no Lightning,
no MLflow.
"""

import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from rmlab.errors import ConfigError, IncompatibleError, check
from rmlab.generation import GenerationConfig
from rmlab.kinds import FEATURES, SEQUENCE, TaskInfo
from rmlab.models import KindHead, output_dim
from rmlab.optim import validate_optimizer
from rmlab.paths import CONFIG_DIR

PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "64")


@dataclass
class Components:
    """Everything a run needs, built and validated."""

    task: Any
    info: TaskInfo
    model: KindHead  # on sequence tasks, the language model itself (rmlab.language_models)
    loss: Any
    reward: Any
    feedback: Any  # None when feedback=none
    generation: Any = None  # sequence tasks: the evaluation's GenerationConfig
    splits: Any = None  # sequence tasks: the tokenised splits (rmlab.sequence_data.TokenizedSplit)


def instantiate(group: str, node: DictConfig | dict, **extra: Any) -> Any:
    """Build ``node`` (a config with ``_target_``) into an object; its ``name`` key is passed only if the class takes
    it. Unknown keys are a ConfigError naming the valid ones (not a TypeError deep inside a constructor)."""
    spec = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    name = spec.pop("name", None)
    target = spec.pop("_target_", None)
    check(target is not None, f"{group} config {name!r} has no _target_ (the class to build)")
    try:
        cls = get_class(target)
    except Exception as err:  # hydra raises ImportError/ValueError variants
        raise ConfigError(f"{group}: cannot import _target_ {target!r}: {err}") from err
    params = accepted_parameters(cls)
    if "name" in params:
        spec["name"] = name
    unknown = sorted(k for k in spec if k not in params)
    check(not unknown, f"{group} {name!r} has no option {', '.join(unknown)}; its options are: "
                       f"{', '.join(k for k in params if k not in extra and k != 'name') or '(none)'}")
    return cls(**spec, **extra)


def accepted_parameters(cls: type) -> list[str]:
    """Keyword parameters a class's constructor takes, following ``**kwargs`` up to the base classes' __init__."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def group_options(group: str) -> dict[str, str]:
    """Option name -> ``_target_`` for every config of a group on Hydra's search path (user config dirs included
    when Hydra is initialised), falling back to the packaged conf/ folder."""
    try:
        from hydra.core.global_hydra import GlobalHydra

        loader = GlobalHydra.instance().config_loader()
        names = loader.get_group_options(group)
        found = {}
        for option in names:
            result = loader.repository.load_config(config_path=f"{group}/{option}")
            if result is not None and "_target_" in result.config:
                found[option] = result.config["_target_"]
        if found:
            return found
    except Exception:  # Hydra not initialised (a plain library call): read the packaged configs
        pass
    return _packaged_options(group)


@lru_cache(maxsize=None)
def _packaged_options(group: str) -> dict[str, str]:
    found = {}
    for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
        target = OmegaConf.load(path).get("_target_")
        if target:
            found[path.stem] = target
    return found


def compatible_options(group: str, value: str, attribute: str = "accepts", default: tuple = ()) -> list[str]:
    """Names of the options of ``group`` whose class lists ``value`` in ``attribute`` (a loss or reward's output
    kinds by default; a model's ``input_types``)."""
    names = []
    for option, target in group_options(group).items():
        try:
            if value in getattr(get_class(target), attribute, default):
                names.append(option)
        except Exception:  # an unimportable user config is not a compatible choice
            continue
    return sorted(names)


def _require(group: str, name: str, offered: tuple, needed: str, info: TaskInfo, what: str, attribute: str,
             default: tuple = ()) -> None:
    """Raise IncompatibleError unless ``needed`` (what the task has) is among ``offered`` (what the component takes),
    listing the options of ``group`` that would work."""
    if needed in offered:
        return
    fits = compatible_options(group, needed, attribute, default)
    raise IncompatibleError(
        f"{group}={name} does not work on task={info.name}: the task's {what} {needed!r} but {group}={name} accepts "
        f"{', '.join(repr(k) for k in offered)}. "
        f"Choices of {group} that work on task={info.name}: {', '.join(fits) or '(none)'}"
    )


def check_accepts(group: str, name: str, component: Any, info: TaskInfo) -> None:
    """A loss or reward must accept the task's output kind."""
    _require(group, name, component.accepts, info.output_kind, info, "model outputs", "accepts")


def check_model_input(model_cfg: DictConfig, info: TaskInfo) -> None:
    """The model must read the task's input type (feature vectors or token ids)."""
    accepted = getattr(get_class(model_cfg._target_), "input_types", (FEATURES,))
    _require("model", model_cfg.name, accepted, info.input_type, info, "inputs are", "input_types", (FEATURES,))


def validate_trainer(trainer: DictConfig) -> None:
    """Check the Trainer settings that would otherwise fail (or silently misbehave) after start-up."""
    check(str(trainer.precision) in PRECISIONS,
          f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {trainer.precision!r}")
    check(isinstance(trainer.max_epochs, int) and trainer.max_epochs >= 1,
          f"trainer.max_epochs must be an integer >= 1, got {trainer.max_epochs}")
    check(isinstance(trainer.log_every_n_steps, int) and trainer.log_every_n_steps >= 1,
          f"trainer.log_every_n_steps must be an integer >= 1, got {trainer.log_every_n_steps}")
    check(isinstance(trainer.steps_per_chunk, int) and trainer.steps_per_chunk >= 1,
          f"trainer.steps_per_chunk must be an integer >= 1, got {trainer.steps_per_chunk}")
    check(isinstance(trainer.check_val_every_n_epoch, int) and trainer.check_val_every_n_epoch >= 1,
          f"trainer.check_val_every_n_epoch must be an integer >= 1, got {trainer.check_val_every_n_epoch}")
    limit = trainer.limit_train_batches
    check(limit is None or (not isinstance(limit, bool) and (
        (isinstance(limit, int) and limit >= 1) or (isinstance(limit, float) and 0 < limit <= 1))),
          f"trainer.limit_train_batches must be null, a fraction in (0, 1] or an integer count >= 1, got {limit}")
    runs = trainer.fast_dev_run
    check(isinstance(runs, bool) or (isinstance(runs, int) and runs >= 1),
          f"trainer.fast_dev_run must be true, false or a number of batches >= 1, got {runs}")
    threads = trainer.num_threads
    check(threads is None or (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1),
          f"trainer.num_threads must be null or an integer >= 1, got {threads}")
    check(trainer.strategy not in ("ddp_spawn", "ddp_notebook", "ddp_fork"),
          f"trainer.strategy={trainer.strategy} is not supported yet: the epoch-end validation state (best weights, "
          "val/best_reward) would stay in the spawned workers. Use trainer.strategy=ddp (or auto)")
    clip = trainer.gradient_clip_val
    check(clip is None or clip > 0, f"trainer.gradient_clip_val must be null or > 0, got {clip}")
    check(trainer.accelerator in ("cpu", "gpu", "cuda", "mps", "tpu", "auto"),
          f"trainer.accelerator must be one of cpu, gpu, cuda, mps, tpu, auto; got {trainer.accelerator!r}")
    stop = trainer.early_stopping
    check(stop.patience >= 1, f"trainer.early_stopping.patience must be >= 1, got {stop.patience}")
    check(stop.min_delta >= 0, f"trainer.early_stopping.min_delta must be >= 0, got {stop.min_delta}")


def validate_logger(logger: DictConfig) -> None:
    check(logger.name in ("mlflow", "none"), f"logger must be mlflow or none, got {logger.name!r}")
    if logger.name == "mlflow":
        check(isinstance(logger.flush_every_s, (int, float)) and logger.flush_every_s > 0,
              f"logger.flush_every_s must be > 0, got {logger.flush_every_s}")


def validate_generation(cfg: DictConfig) -> GenerationConfig:
    """The ``generation`` group (used by sequence tasks; checked on every task, so a typo never waits)."""
    node = cfg.get("generation")
    return GenerationConfig.from_config(OmegaConf.to_container(node, resolve=True) if node is not None else {})


def build_components(cfg: DictConfig) -> Components:
    """Validate the whole config and build the task, model, loss, reward (and feedback); raise ConfigError first."""
    validate_trainer(cfg.trainer)
    validate_logger(cfg.logger)
    validate_optimizer(OmegaConf.to_container(cfg.optimizer, resolve=True))
    generation = validate_generation(cfg)
    task = instantiate("task", cfg.task)
    loss = instantiate("loss", cfg.loss)
    reward = instantiate("reward", cfg.reward)
    task.load()  # reads and checks the data now, so a bad file fails before anything is tracked
    info = task.info
    check_accepts("loss", cfg.loss.name, loss, info)
    check_accepts("reward", cfg.reward.name, reward, info)
    loss.check_task(info)
    reward.check_task(info)
    if info.output_kind == SEQUENCE:
        from rmlab.sequence_build import build_sequence

        return build_sequence(cfg, task, info, loss, reward, generation)
    feedback = None
    if cfg.feedback.name != "none":
        feedback = instantiate("feedback", cfg.feedback)
        feedback.check(reward, info)
    check_model_input(cfg.model, info)
    net = instantiate("model", cfg.model, input_dim=info.input_dim, output_dim=output_dim(info))
    return Components(task=task, info=info, model=KindHead(net, info.output_kind), loss=loss, reward=reward,
                      feedback=feedback)
