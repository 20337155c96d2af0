"""A model trained by an earlier rmlab run, named by ``init_from``: an MLflow run id or a checkpoint path.

``load_run_model(init_from, tracking_uri)`` returns the run's resolved config, the network's weights (the state
dict of the run's model: ``KindHead`` keys ``net.*`` for a tabular or pair task, the language model's own on a
sequence task) and, where the run had a served form, its model spec (``rmlab.serving.export.model_spec``: sizes,
output kind, input type, a text model's ``max_length`` and whether it reads prompts). Where they come from:

- a **checkpoint file**: the ``checkpoints/best.ckpt`` a run writes to its output folder (and uploads with
  ``logger.log_checkpoint=true``), which holds the module's weights, the run's config and its spec;
- a **run id**: that run's ``checkpoints/best.ckpt`` artifact if it has one, else its logged MLflow model
  (``logger.log_model=true``, the default: the weights and the spec) with the run's ``config.yaml`` artifact.

Weights load with ``torch.load(weights_only=True)``: nothing is unpickled. Every problem (an id that is not in the
store, a store that does not exist, a run that did not finish or stored no weights, a file that is not an rmlab
checkpoint) is a one-line ``ConfigError`` naming ``what`` (the config key) and what to do; nothing is created (a
missing sqlite store is not created by looking into it).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rmlab.errors import ConfigError

RUN_ID = re.compile(r"[0-9a-f]{32}")
CHECKPOINT_ARTIFACT = "checkpoints/best.ckpt"
MODULE_PREFIX = "model."  # the module attribute that holds the model in a checkpoint's state dict


@dataclass(frozen=True)
class RunModel:
    """What ``load_run_model`` found: where (``source``, for messages), the run's resolved ``config``, the model's
    weights ``state`` and its ``spec`` (None where the run's output kind has no served form)."""

    source: str
    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    spec: dict[str, Any] | None


def load_run_model(init_from: Any, tracking_uri: str | None = None, what: str = "init_from") -> RunModel:
    """The model of ``init_from`` (a run id in the store ``tracking_uri`` (None: the run's default store), or a
    checkpoint path); ConfigError otherwise."""
    if not isinstance(init_from, str) or not init_from.strip():
        raise ConfigError(f"{what} must be an MLflow run id or a checkpoint path, got {init_from!r}")
    path = Path(init_from).expanduser()
    if path.exists():
        return load_checkpoint(path, what)
    if RUN_ID.fullmatch(init_from):
        return _load_run(init_from, tracking_uri, what)
    raise ConfigError(f"{what}={init_from}: no such checkpoint file, and not an MLflow run id (32 hex digits, as the "
                      "result block of a run prints it)")


def load_checkpoint(path: Path, what: str = "init_from", source: str | None = None) -> RunModel:
    """A checkpoint written by ``rmlab.checkpoint.Validation.save`` (the run's config and spec inside)."""
    source = source or str(path)
    if not path.is_file():
        raise ConfigError(f"{what}={source} is not a file (give the checkpoint file, e.g. .../checkpoints/best.ckpt)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{what}={source} is not a checkpoint torch can load safely: {first}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise ConfigError(f"{what}={source} is not an rmlab checkpoint (no state_dict)")
    if not isinstance(saved.get("config"), dict):
        raise ConfigError(f"{what}={source} holds no run config (it was written by an older rmlab); give the run's id "
                          "instead")
    return RunModel(source=source, config=saved["config"], state=model_state(saved["state_dict"]),
                    spec=saved.get("spec"))


def model_state(module_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's weights out of a training module's state dict (the loss's or other parts' left out)."""
    return {k[len(MODULE_PREFIX):]: v for k, v in module_state.items() if k.startswith(MODULE_PREFIX)}


def _client(tracking_uri: str | None, run_id: str, what: str):
    from rmlab.store import open_client, resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ConfigError(f"{what}={run_id}: there is no MLflow store at {uri} to find the run in; run from the "
                          "folder of the run's mlflow.db, or set the store's URI (logger.tracking_uri or "
                          "MLFLOW_TRACKING_URI)")
    return open_client(uri), uri


def _load_run(run_id: str, tracking_uri: str | None, what: str) -> RunModel:
    from mlflow.exceptions import MlflowException

    client, uri = _client(tracking_uri, run_id, what)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"{what}={run_id}: no such run in the MLflow store {uri}") from None
    status = run.info.status
    if status != "FINISHED":
        raise ConfigError(f"{what}={run_id}: the run is {status}, not FINISHED, so it has no trained model to load")
    from rmlab.serving.export import quiet_mlflow

    with quiet_mlflow():  # no INFO lines or download progress bars in the run's output
        return _download(client, uri, run, what)


def _download(client: Any, uri: str, run: Any, what: str) -> RunModel:
    from mlflow.exceptions import MlflowException

    run_id = run.info.run_id
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    if "checkpoints" in artifacts and any(a.path == CHECKPOINT_ARTIFACT
                                          for a in client.list_artifacts(run_id, "checkpoints")):
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, tmp)
            return load_checkpoint(Path(local), what, source=f"run {run_id}")
    models = [o.model_id for o in (run.outputs.model_outputs if run.outputs else [])]
    if not models or "config.yaml" not in artifacts:
        raise ConfigError(f"{what}={run_id}: the run stored no weights (neither a logged model nor a checkpoint); "
                          "train it again with logger.log_model=true or logger.log_checkpoint=true")
    from rmlab.serving.pyfunc import SPEC_FILE, WEIGHTS_FILE

    model = client.get_logged_model(models[-1])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            import mlflow.artifacts

            files = {name: mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model.artifact_location.rstrip('/')}/artifacts/{name}", dst_path=tmp,
                tracking_uri=uri) for name in (SPEC_FILE, WEIGHTS_FILE)}
            config_file = client.download_artifacts(run_id, "config.yaml", tmp)
        except (MlflowException, OSError) as err:
            raise ConfigError(f"{what}={run_id}: cannot read the run's model files: {str(err).splitlines()[0]}") \
                from None
        import json

        import yaml

        spec = json.loads(Path(files[SPEC_FILE]).read_text())
        state = torch.load(files[WEIGHTS_FILE], map_location="cpu", weights_only=True)
        config = yaml.safe_load(Path(config_file).read_text())
    # The logged weights are the model's own (KindHead) state dict already.
    return RunModel(source=f"run {run_id}", config=config, state=state, spec=spec)
