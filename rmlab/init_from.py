"""``init_from``: start a run from the weights of an earlier rmlab run, checked before anything is tracked.

``init_from`` names one of:

- an MLflow run id (32 hex digits), looked up in the run's store (``logger.tracking_uri``, else
  ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``): its ``checkpoints/best.ckpt`` artifact (logged with
  ``logger.log_checkpoint=true``), else the checkpoint in the output folder the run recorded (tag
  ``rmlab.output_dir``) while that folder is still on this machine, else the weights of the run's logged MLflow
  model (``logger.log_model=true``, for the kinds that have one); the run's model and task configs are its
  ``config.yaml``;
- a sweep's parent run id: the sweep's finished child run with this run's ``seed`` (one per seed: the way a study
  fine-tunes each seed of a supervised sweep from the same seed's weights); no such child, or several (a sweep that
  varied more than the seed), is an error listing what the sweep holds;
- a run that a re-run sweep reused (tag ``rmlab.reused_from``) stands for the run it reused, which holds the weights;
- a run's output folder (it holds ``checkpoints/best.ckpt``);
- a checkpoint file written by rmlab (``{"state_dict": ..., "model_config": ...}``).

Checkpoints are read with ``torch.load(weights_only=True)``: a file that needs arbitrary code to load is refused. Only
the model's own weights (the module's ``model.*`` entries) are loaded, and strictly: every tensor must exist on both
sides with the same shape. Before that the two model configs are compared: the same model (``name``) and the same
value of every key but the dropout rates (which train differently; where a dropout rate adds layers, as the MLP's
does, the tensors then do not fit and the error says so). Any other difference (``width``, ``depth``, ``heads``,
``positions``, ``max_length``, ...) is a start-up error naming the keys and both values. A checkpoint without a model
config (a hand-made file) is checked by its tensors alone.

Every problem is a ``ConfigError`` of one line, raised by ``rmlab.build`` before the run exists (exit code 2).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmlab.errors import ConfigError

CHECKPOINT = Path("checkpoints") / "best.ckpt"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
PREFIX = "model."  # the language model / KindHead inside the LightningModule's state dict
TAG = "rmlab.init_from"
OUTPUT_DIR_TAG = "rmlab.output_dir"
ROLE_TAG = "rmlab.role"  # "parent" on a sweep's parent run
REUSED_TAG = "rmlab.reused_from"  # on a sweep job that reused a finished run instead of training: that run's id
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@dataclass(frozen=True)
class Source:
    """A resolved ``init_from``: the model's weights, the model config they were trained with (None if unknown) and
    how the source is recorded on the new run (tag ``rmlab.init_from``); where known, the run's task config and its
    model spec (``rmlab.serving.export.model_spec``: sizes, output kind, input type, a text model's ``max_length``
    and whether it reads prompts), which a reward model used as a reward is rebuilt from."""

    label: str  # "run <id>" or the checkpoint's absolute path
    state_dict: dict[str, Any]  # the model's own tensors (the ``model.`` prefix removed)
    model_config: dict[str, Any] | None
    task_config: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None


def checkpoint_meta(model_config: dict[str, Any], task_config: dict[str, Any] | None = None,
                    spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """What rmlab stores in ``best.ckpt`` beside the weights, so that a checkpoint file alone can be checked (and a
    reward model rebuilt)."""
    return {"model_config": model_config, "task_config": task_config, "spec": spec}


def resolve(value: str, tracking_uri: str | None, seed: int | None = None) -> Source:
    """Read the source ``init_from`` names (see the module docstring); ConfigError if it cannot be used. ``seed``
    picks the child of a sweep's parent run (None: a parent run is refused)."""
    path = Path(value).expanduser()
    if path.exists():
        return _from_path(path, value)
    if RUN_ID.match(value):
        return _from_run(value, tracking_uri, seed)
    raise _not_a_source(value)


def check_source(value: str, tracking_uri: str | None) -> None:
    """What a sweep checks once, before any job starts: that ``value`` is a file or folder, or a run in the store
    (for a sweep's parent, one with a finished child); ConfigError otherwise. Each job then reads the weights."""
    if Path(value).expanduser().exists():
        return
    if not RUN_ID.match(value):
        raise _not_a_source(value)
    from mlflow.tracking import MlflowClient

    uri, where = _store(value, tracking_uri), f"init_from={value}"
    client = MlflowClient(tracking_uri=uri)
    run = _get_run(client, value, uri, where)
    if run.data.tags.get(ROLE_TAG) == "parent":
        from rmlab.tracking import child_runs

        if not any(child.info.status == "FINISHED" for child in child_runs(client, value)):
            raise ConfigError(f"{where}: the sweep (parent run) has no finished child run to start from")


def _not_a_source(value: str) -> ConfigError:
    return ConfigError(f"init_from={value}: no such file or folder, and not an MLflow run id (32 hex digits); give a "
                       f"run id, a run's output folder (with {CHECKPOINT}) or a checkpoint file")


def _from_path(path: Path, value: str) -> Source:
    if path.is_dir():
        file = path / CHECKPOINT
        if not file.is_file():
            raise ConfigError(f"init_from={value}: the folder has no {CHECKPOINT} (the run kept no best weights: "
                              "trainer.checkpoint.enabled=false, or it has not finished)")
    else:
        file = path
    content = _read(file, f"init_from={value}")
    config = content.get("model_config")
    if config is None:  # a checkpoint from before rmlab stored its model config: the run folder's Hydra config
        config = _hydra_model_config(file)
    return Source(str(file.resolve()), _model_weights(content, f"init_from={value}"), config,
                  content.get("task_config"), content.get("spec"))


def _hydra_model_config(file: Path) -> dict[str, Any] | None:
    """The model config of ``<run folder>/checkpoints/best.ckpt``'s run from ``<run folder>/.hydra/config.yaml``."""
    saved = file.parent.parent / ".hydra" / "config.yaml"
    if file.name != CHECKPOINT.name or not saved.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        model = OmegaConf.to_container(OmegaConf.load(saved), resolve=True).get("model")
    except Exception:  # an unreadable Hydra file leaves the check to the tensors
        return None
    return model if isinstance(model, dict) else None


def _from_run(run_id: str, tracking_uri: str | None, seed: int | None = None) -> Source:
    uri = _store(run_id, tracking_uri)
    with _quiet_downloads():
        return _read_run(run_id, uri, f"init_from={run_id}", seed)


def _store(run_id: str, tracking_uri: str | None) -> str:
    """The URI of the store to look ``run_id`` up in; ConfigError if it is a sqlite file that does not exist."""
    from rmlab.store import resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():  # never create a store just to look a run up in it
        raise ConfigError(f"init_from={run_id}: no MLflow store at {db} to look the run up in (set "
                          "logger.tracking_uri or $MLFLOW_TRACKING_URI to the store of the earlier run, or give a "
                          "checkpoint path)")
    return uri


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No download progress bars on the terminal (an error must stay one line); the setting is restored after."""
    before = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROGRESS_BAR, None)
        else:
            os.environ[PROGRESS_BAR] = before


def _read_run(run_id: str, uri: str, where: str, seed: int | None = None) -> Source:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = _get_run(client, run_id, uri, where)
    original = run.data.tags.get(REUSED_TAG)
    if original and original != run_id:  # a job a re-run sweep reused: its weights are the original run's
        found = _read_run(original, uri, where)
        return Source(f"run {run_id} (reused from run {original})", found.state_dict, found.model_config,
                      found.task_config, found.spec)
    if run.data.tags.get(ROLE_TAG) == "parent":
        child = _child_with_seed(client, run, seed, where)
        found = _read_run(child.info.run_id, uri, where)
        return Source(f"run {child.info.run_id} (seed {seed} of sweep {run_id})", found.state_dict,
                      found.model_config, found.task_config, found.spec)
    with tempfile.TemporaryDirectory(prefix="rmlab-init-") as tmp:
        config_file = _download(client, run_id, "config.yaml", tmp)
        config, task = None, None
        if config_file is not None:
            from omegaconf import OmegaConf

            saved = OmegaConf.to_container(OmegaConf.load(config_file), resolve=False)
            config = saved.get("model") if isinstance(saved.get("model"), dict) else None
            task = saved.get("task") if isinstance(saved.get("task"), dict) else None
        file = _download(client, run_id, CHECKPOINT.as_posix(), tmp)
        if file is None:
            folder = run.data.tags.get(OUTPUT_DIR_TAG)
            local = Path(folder) / CHECKPOINT if folder else None
            if local is None or not local.is_file():
                logged = _logged_model(client, run, uri, tmp, where)
                if logged is not None:
                    state, spec = logged
                    return Source(f"run {run_id}", state, config or spec.get("network"), task, spec)
                raise ConfigError(
                    f"{where}: the run has no {CHECKPOINT.as_posix()} artifact (run it with "
                    "logger.log_checkpoint=true and trainer.checkpoint.enabled=true)"
                    + (f" and its output folder {folder} holds none" if folder else "")
                    + "; or give init_from=<checkpoint file>")
            file = local
        content = _read(file, where)
    return Source(f"run {run_id}", _model_weights(content, where), config or content.get("model_config"),
                  task or content.get("task_config"), content.get("spec"))


def _get_run(client, run_id: str, uri: str, where: str):
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ConfigError(f"{where}: no run with this id in the MLflow store {uri} ({_first_line(err)})") from err
    if run.info.lifecycle_stage == "deleted":
        raise ConfigError(f"{where}: the run is deleted in {uri}")
    return run


def _child_with_seed(client, parent, seed: int | None, where: str):
    """The parent's one FINISHED child run whose ``seed`` param is ``seed``; ConfigError naming what the sweep holds
    otherwise."""
    parent_id = parent.info.run_id
    if seed is None:
        raise ConfigError(f"{where}: the run is a sweep's parent, which holds no weights; give one of its child runs")
    from rmlab.tracking import child_runs

    children = child_runs(client, parent_id)
    finished = [c for c in children if c.info.status == "FINISHED"]
    matching = [c for c in finished if c.data.params.get("seed") == str(seed)]
    if len(matching) == 1:
        return matching[0]
    if not matching:
        seeds = sorted({c.data.params.get("seed", "?") for c in finished}, key=lambda s: (len(s), s))
        raise ConfigError(f"{where}: the sweep (parent run) has no finished child run with seed={seed} "
                          f"(finished children's seeds: {', '.join(seeds) or 'none'}); use one of those seeds")
    cells = sorted(c.data.tags.get("rmlab.overrides", c.info.run_id) for c in matching)
    raise ConfigError(f"{where}: the sweep (parent run) has {len(matching)} finished child runs with seed={seed} "
                      f"({'; '.join(cells[:4])}): it varied more than the seed; give one child's run id")


def _logged_model(client, run, uri: str, into: str, where: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(weights, spec) of the run's logged MLflow model (``rmlab.serving.export``), or None if it logged none."""
    import json

    models = [output.model_id for output in (run.outputs.model_outputs if run.outputs else [])]
    if not models:
        return None
    import mlflow.artifacts
    import torch

    from rmlab.serving.pyfunc import SPEC_FILE, WEIGHTS_FILE

    location = client.get_logged_model(models[-1]).artifact_location.rstrip("/")
    try:
        files = {name: mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/artifacts/{name}", dst_path=into,
                                                           tracking_uri=uri) for name in (SPEC_FILE, WEIGHTS_FILE)}
        state = torch.load(files[WEIGHTS_FILE], map_location="cpu", weights_only=True)
    except Exception as err:  # an artifact store that cannot be read, a file that is not what rmlab wrote
        raise ConfigError(f"{where}: cannot read the run's logged model: {_first_line(err)}") from err
    return state, json.loads(Path(files[SPEC_FILE]).read_text())


def _download(client, run_id: str, artifact: str, into: str) -> Path | None:
    """The artifact downloaded into ``into``, or None if the run has none of that name."""
    folder, _, name = artifact.rpartition("/")
    try:
        if name not in {Path(info.path).name for info in client.list_artifacts(run_id, folder or None)}:
            return None
        return Path(client.download_artifacts(run_id, artifact, into))
    except Exception as err:  # an artifact store that cannot be read
        raise ConfigError(f"init_from={run_id}: cannot read the run's {artifact}: {_first_line(err)}") from err


def _read(file: Path, where: str) -> dict[str, Any]:
    import torch

    try:
        content = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, a pickle needing code (refused by weights_only), truncated
        raise ConfigError(f"{where}: {file} is not a checkpoint torch can load with weights_only=True: "
                          f"{_first_line(err)}") from err
    if not isinstance(content, dict) or not isinstance(content.get("state_dict"), dict):
        raise ConfigError(f"{where}: {file} is not an rmlab checkpoint (a dict with a 'state_dict')")
    return content


def _model_weights(content: dict[str, Any], where: str) -> dict[str, Any]:
    weights = {k[len(PREFIX):]: v for k, v in content["state_dict"].items() if k.startswith(PREFIX)}
    if not weights:
        raise ConfigError(f"{where}: the checkpoint holds no model weights (no '{PREFIX}*' entries)")
    return weights


def _first_line(err: BaseException) -> str:
    """The error's first line, without torch's advice to load with weights_only=False (which would run whatever
    code the file holds: rmlab never does)."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    if line.startswith("Weights only load failed"):
        return "it is not a torch file, or holds more than tensors and plain containers"
    return line


# --- compatibility ------------------------------------------------------------------------------------------------


def _free(key: str) -> bool:
    """Keys that do not change the network the weights belong to: dropout rates (``dropout``, ``resid_pdrop``...)."""
    last = key.rsplit(".", 1)[-1]
    return "dropout" in last or last.endswith("pdrop")


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested keys as dotted ones; an empty group (``overrides: {}``) has no keys, so it compares equal to one that
    only sets free keys."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(source: dict[str, Any], current: dict[str, Any], free: bool = False) -> list[str]:
    """``model.<key>=<theirs> (here <ours>)`` for every key that decides the network (with ``free``: every dropout
    key) and differs."""
    theirs, ours = _flat(source), _flat(current)
    keys = [k for k in dict.fromkeys([*theirs, *ours]) if _free(k) == free and theirs.get(k) != ours.get(k)]
    return [f"model.{k}={theirs.get(k)} (here {ours.get(k)})" for k in keys]


def check_compatible(source: Source, model_config: dict[str, Any], value: str) -> list[str]:
    """ConfigError naming the differing model keys unless the source was trained with the same network; returns the
    dropout keys that differ (allowed)."""
    if source.model_config is None:
        return []
    theirs, ours = source.model_config.get("name"), model_config.get("name")
    if theirs != ours:
        raise ConfigError(f"init_from={value}: {source.label} trained model={theirs}, this run builds model={ours}; "
                          f"use model={theirs} with the same settings")
    differences = config_differences(source.model_config, model_config)
    if differences:
        raise ConfigError(f"init_from={value}: the model differs from {source.label}'s: {', '.join(differences)}; "
                          "use the same model settings (only dropout may differ)")
    return config_differences(source.model_config, model_config, free=True)


def load_weights(model: Any, source: Source, value: str, changed: list[str] | None = None) -> None:
    """Copy the source's weights into ``model`` (strict); ConfigError naming the tensors that do not fit (and the
    dropout keys ``changed``, which can add layers to a model, as the MLP's dropout does)."""
    own = model.state_dict()
    missing = [k for k in own if k not in source.state_dict]
    extra = [k for k in source.state_dict if k not in own]
    wrong = [f"{k} {tuple(source.state_dict[k].shape)} there, {tuple(v.shape)} here" for k, v in own.items()
             if k in source.state_dict and tuple(source.state_dict[k].shape) != tuple(v.shape)]
    if missing or extra or wrong:
        parts = ([f"shapes differ: {'; '.join(wrong[:3])}"] if wrong else []) + (
            [f"missing there: {', '.join(missing[:3])}"] if missing else []) + (
            [f"not in this model: {', '.join(extra[:3])}"] if extra else [])
        because = f" (model settings that differ: {', '.join(changed)})" if changed else ""
        raise ConfigError(f"init_from={value}: {source.label}'s weights do not fit this model ({'; '.join(parts)})"
                          f"{because}; use the model (and task) it was trained with")
    model.load_state_dict(source.state_dict, strict=True)


def initialise(model: Any, value: str, model_config: dict[str, Any], tracking_uri: str | None,
               seed: int | None = None) -> str:
    """Load ``init_from`` into ``model`` after checking it fits; return the label recorded on the run. ``seed`` (the
    run's) picks the child of a sweep's parent run."""
    source = resolve(value, tracking_uri, seed)
    changed = check_compatible(source, model_config, value)
    load_weights(model, source, value, changed)
    return source.label
