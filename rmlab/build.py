"""Turn a composed config into the run's components, checking everything before any training starts.

``build_components(cfg)`` instantiates the task (and loads its data, so a bad file fails here), the model, loss and
reward, after ``rmlab.validate`` has checked the parts without a ``_target_`` (trainer, optimizer, logger, root keys),
and checks that the requested accelerator and devices exist. Every problem raises a ``ConfigError`` that names it and
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
from rmlab.kinds import FEATURES, SEQUENCE, SEQUENCE_PAIR, TaskInfo
from rmlab.models import KindHead, output_dim
from rmlab.paths import CONFIG_DIR
from rmlab.validate import validate_config


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
    init_from: str | None = None  # where the model's weights came from (``init_from``), as recorded on the run


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


def option_config(group: str, option: str) -> DictConfig | None:
    """The config file of one option of a group (``reward/bleu``), unresolved, from Hydra's search path when Hydra is
    initialised (user config dirs included), else from the packaged conf/ folder; None when there is no such option."""
    try:
        from hydra.core.global_hydra import GlobalHydra

        if GlobalHydra.instance().is_initialized():
            result = GlobalHydra.instance().config_loader().repository.load_config(config_path=f"{group}/{option}")
            if result is not None:
                return result.config
    except Exception:  # Hydra not initialised (a plain library call): read the packaged configs
        pass
    path = CONFIG_DIR / group / f"{option}.yaml"
    return OmegaConf.load(path) if path.is_file() else None


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
    """A loss or reward must accept the task's output kind. A component that has a counterpart for another kind
    says so in ``kind_hints`` (output kind -> what to use instead), added to the error."""
    try:
        _require(group, name, component.accepts, info.output_kind, info, "model outputs", "accepts")
    except IncompatibleError as err:
        hint = getattr(component, "kind_hints", {}).get(info.output_kind)
        if hint is None:
            raise
        raise IncompatibleError(f"{err} ({hint})") from None


def check_model_input(model_cfg: DictConfig, info: TaskInfo) -> None:
    """The model must read the task's input type (feature vectors or token ids)."""
    accepted = getattr(get_class(model_cfg._target_), "input_types", (FEATURES,))
    _require("model", model_cfg.name, accepted, info.input_type, info, "inputs are", "input_types", (FEATURES,))


def check_devices_available(trainer: DictConfig) -> None:
    """The accelerator exists on this machine and has as many devices as asked for: checked here, before any store
    or run is created, rather than by Lightning once the run is open."""
    accelerator = trainer.accelerator
    wanted = device_ids(trainer.devices)
    if accelerator in ("gpu", "cuda"):
        import torch

        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        check(have > 0, f"trainer.accelerator={accelerator} but this machine has no CUDA GPU visible to torch "
                        f"(torch {torch.__version__}); use trainer.accelerator=cpu")
    elif accelerator == "mps":
        import torch

        have = 1 if torch.backends.mps.is_available() else 0
        check(have > 0, "trainer.accelerator=mps but MPS is not available here; use trainer.accelerator=cpu")
    elif accelerator == "tpu":
        import importlib.util

        check(importlib.util.find_spec("torch_xla") is not None,
              "trainer.accelerator=tpu needs the torch_xla package, which is not installed; "
              "use trainer.accelerator=cpu")
        return
    else:
        return  # cpu: any number of processes; auto: Lightning picks what exists
    if isinstance(wanted, int):
        check(wanted <= have, f"trainer.devices={trainer.devices} but this machine has {have} {accelerator} "
                              f"device(s)")
    elif wanted is not None:
        check(max(wanted) < have, f"trainer.devices={trainer.devices} names a device this machine does not have "
                                  f"(it has {have} {accelerator} device(s): ids 0 to {have - 1})")


def device_ids(devices: Any) -> int | list[int] | None:
    """A validated trainer.devices as a count (int), a list of ids, or None (auto / -1: all there are)."""
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return None
        return [int(d) for d in text.split(",") if d.strip()] if "," in text else int(text)
    if isinstance(devices, int):
        return None if devices == -1 else devices
    return [int(d) for d in devices]


def build_components(cfg: DictConfig, validated: bool = False) -> Components:
    """Validate the whole config and build the task, model, loss, reward (and feedback); raise ConfigError first.
    ``validated``: ``validate_config`` (what needs no torch) has already passed on this config (``rmlab.run`` runs
    it first); a direct caller leaves it False."""
    if not validated:
        validate_config(cfg)
    check_devices_available(cfg.trainer)
    task = instantiate("task", cfg.task)
    loss = instantiate("loss", cfg.loss)
    reward = instantiate("reward", cfg.reward)
    task.load()  # reads and checks the data now, so a bad file fails before anything is tracked
    info = task.info
    check_accepts("loss", cfg.loss.name, loss, info)
    check_accepts("reward", cfg.reward.name, reward, info)
    loss.check_task(info)
    reward.check_task(info)
    if info.output_kind == SEQUENCE_PAIR and cfg.feedback.name != "none":
        raise IncompatibleError(
            f"feedback={cfg.feedback.name} does not work on task={info.name}: a task of preference pairs trains on "
            "its pairs offline (loss=dpo|simpo|orpo), with no reward fed back. Choices of feedback that work on "
            f"task={info.name}: none")
    if info.output_kind in (SEQUENCE, SEQUENCE_PAIR):
        from rmlab.sequence_build import build_sequence

        return build_sequence(cfg, task, info, loss, reward)
    feedback = None
    if cfg.feedback.name != "none":
        feedback = instantiate("feedback", cfg.feedback)
        feedback.check(reward, info)
    check_model_input(cfg.model, info)
    check_generation_unused(cfg, info)
    net = instantiate("model", cfg.model, input_dim=info.input_dim, output_dim=output_dim(info))
    model = KindHead(net, info.output_kind)
    return Components(task=task, info=info, model=model, loss=loss, reward=reward, feedback=feedback,
                      init_from=initialise_model(cfg, model))


def check_generation_unused(cfg: DictConfig, info: Any) -> None:
    """The ``generation`` group only applies where the model writes text: on other tasks a setting that differs from
    the default would be silently ignored, so it is refused, naming what was set."""
    from rmlab.paths import read_yaml

    # Unresolved on both sides: the default's seed is ${seed}, which only the whole config resolves.
    default = read_yaml(CONFIG_DIR / "generation" / "greedy.yaml")
    given = OmegaConf.to_container(cfg.generation, resolve=False)
    changed = [f"generation.{k}={given.get(k)}" for k in sorted(set(default) | set(given))
               if given.get(k) != default.get(k)]
    if changed:
        raise IncompatibleError(
            f"{', '.join(changed)} does not apply to task={info.name}: the generation group sets how a language model "
            f"writes its completions, and this task's model outputs {info.output_kind!r}, not text. Leave generation "
            "at its default (greedy) here")


def initialise_model(cfg: DictConfig, model: Any) -> str | None:
    """Load ``init_from`` (an earlier run's weights) into the freshly built model; return the source's label."""
    value = cfg.get("init_from")
    if value is None:
        return None
    from rmlab.init_from import initialise

    return initialise(model, value, OmegaConf.to_container(cfg.model, resolve=True),
                      cfg.logger.get("tracking_uri"), int(cfg.seed))
