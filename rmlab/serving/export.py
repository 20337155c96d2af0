"""Log a finished run's tested weights as the run's MLflow model (``runs:/<run id>/model``), optionally registered.

What is logged: an MLflow LoggedModel named ``model``, linked to the run (its output at the final step, with the
run's test metrics and ``val/best_reward``) and holding a pyfunc model: ``rmlab.serving.pyfunc.RmlabModel``, named by
the code file ``rmlab/serving/model_code.py`` (MLflow's models from code: nothing pickled), with two artifacts, the
spec (``rmlab_model.json``: model config, sizes, the kind's preprocessing) and the weights (float32 state dict), a
signature (the raw input columns, and the output columns where they are fixed) and an input example (a few raw
training rows). Everything goes through ``MlflowClient`` on the run's own store: no global MLflow state (tracking
URI, active run) is touched, so runs of a sweep in one process do not interfere.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rmlab.serving.io import ModelIO, io_class_for

log = logging.getLogger("rmlab")

MODEL_NAME = "model"  # the name in runs:/<run id>/model


def model_spec(cfg: DictConfig, parts: Any, io_cls: type[ModelIO]) -> dict[str, Any]:
    """Everything needed to rebuild the network and serve it on raw inputs, JSON-able."""
    import rmlab
    from rmlab.models import output_dim

    info = parts.info
    return {
        "format": 1,
        "io": f"{io_cls.__module__}:{io_cls.__qualname__}",
        "network": OmegaConf.to_container(cfg.model, resolve=True),
        "input_dim": info.input_dim, "output_dim": output_dim(info), "output_kind": info.output_kind,
        "input_type": info.input_type, "task": info.name, "rmlab_version": rmlab.__version__,
        **io_cls.describe(parts.task, info),
    }


def requirements() -> list[str]:
    """The packages the model needs where it is loaded, pinned to the versions it was trained with. rmlab itself
    must be installed there too (from its checkout): it is not on PyPI under this name, so it is not listed."""
    import mlflow
    import numpy
    import pandas

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
            f"numpy=={numpy.__version__}", f"pandas=={pandas.__version__}"]


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Keep MLflow's INFO lines and download progress bars (it copies the artifacts into the model folder) out of
    the run's output; restore both afterwards."""
    logger = logging.getLogger("mlflow")
    level, bar = logger.level, os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    logger.setLevel(logging.WARNING)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


@contextmanager
def _no_requirement_check() -> Iterator[None]:
    """Skip MLflow's check of a model's pip requirements against the installed packages while a model is saved.

    ``requirements()`` reads every pin from the installed packages, so the check cannot find a mismatch; but the first
    check of a process maps every installed package to its modules (about 0.6 s here, paid by every single run and
    by a sweep's first job), and each later one rebuilds that map's inverse. MLflow offers no switch for it: this
    replaces its private
    ``mlflow.utils.environment.warn_dependency_requirement_mismatches`` for the duration, in this one place (a test
    fails if MLflow moves it, and then the check simply runs again)."""
    from mlflow.utils import environment

    original = getattr(environment, "warn_dependency_requirement_mismatches", None)
    if original is None:
        yield
        return
    environment.warn_dependency_requirement_mismatches = _requirements_match
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = original


def _requirements_match(model_requirements: list[str]) -> None:
    """Stands in for MLflow's requirement check (see ``_no_requirement_check``): nothing to warn about."""


def log_model(tracker: Any, cfg: DictConfig, parts: Any, step: int, metrics: dict[str, float],
              params: dict[str, str] | None = None, register_as: str | None = None) -> str | None:
    """Log ``parts.model`` (its current weights: the tested ones) as the run's model; return its model id, or None
    where no kind of MLflow model exists yet for the task's output kind (a warning says so). ``metrics`` (logged on
    the run at ``step``: stored, or waiting in the tracker's buffer) are linked to the model, so the Logged models
    view shows them."""
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model, ModelSignature

    from rmlab.serving import model_code
    from rmlab.serving.pyfunc import SPEC_FILE, WEIGHTS_FILE
    from rmlab.tracking import artifact_repository

    io_cls = io_class_for(parts.info)
    if io_cls is None:
        log.warning(f"No MLflow model logged: rmlab has no served form for output kind {parts.info.output_kind!r} "
                    f"with {parts.info.input_type!r} inputs yet")
        return None
    spec = model_spec(cfg, parts, io_cls)
    io = io_cls(spec)
    client, run_id = tracker.client, tracker.run_id
    model = client.create_logged_model(tracker.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                       params=params, model_type=io_cls.__name__.lower(),
                                       tags={"task": parts.info.name})
    try:
        with tempfile.TemporaryDirectory() as tmp, _quiet_mlflow(), _no_requirement_check():
            spec_file, weights_file = Path(tmp) / SPEC_FILE, Path(tmp) / WEIGHTS_FILE
            spec_file.write_text(json.dumps(spec, indent=1))
            state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
                     for k, v in parts.model.state_dict().items()}
            torch.save(state, weights_file)
            path = Path(tmp) / "model"
            mlflow.pyfunc.save_model(
                str(path), python_model=str(Path(model_code.__file__)),
                artifacts={"spec": str(spec_file), "weights": str(weights_file)},
                signature=ModelSignature(inputs=io.input_schema(), outputs=io.output_schema()),
                input_example=io.example(parts.task), pip_requirements=requirements(),
                metadata={"rmlab_version": spec["rmlab_version"], "task": spec["task"]},
                # Where the artifacts will live and whose they are, as MLflow's own Model.log records it.
                mlflow_model=Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                                   model_id=model.model_id))
            artifact_repository(model.artifact_location, tracker.uri).log_artifacts(str(path))
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
        _link_metrics(tracker, model.model_id, step, metrics)
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    if register_as:
        register(client, register_as, model, run_id)
    return model.model_id


def _link_metrics(tracker: Any, model_id: str, step: int, metrics: dict[str, float]) -> None:
    """Attach the run's points of ``metrics`` at ``step`` to the model. A point still waiting in the tracker's buffer
    (the usual case: the test metrics) is linked there and stored once, linked, with the run's final batch of
    metrics: no write of its own. (A process killed outright before that batch leaves the model READY without them;
    an interrupt or an error still stores the batch, or keeps it, linked, in the unsent-metrics file.) Any other
    point is linked once every batch in flight is stored: a point the tracker sent is re-logged with its timestamp
    (the run's history gains no second point); only the others (a resumed run's points stored by an earlier
    process) are read back from the store."""
    from mlflow.entities import Metric

    elsewhere = tracker.link_waiting(model_id, metrics, step)
    if not elsewhere:
        return
    if not tracker.drain():  # a point in a batch still being sent is no stored point yet
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

        # As an upload that finds the store away: the model is not finalized READY, and it is reported not stored.
        raise MlflowException("the store took no metrics: they wait for the unsent-metrics file",
                              TEMPORARILY_UNAVAILABLE)
    client, run_id = tracker.client, tracker.run_id
    points = []
    for key in elsewhere:
        sent = tracker.sent_point(key, step)
        stored = [sent] if sent is not None else [m for m in client.get_metric_history(run_id, key) if m.step == step]
        points += [Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id) for m in stored[-1:]]
    if points:
        client.log_batch(run_id, metrics=points, synchronous=True)


def register(client: Any, name: str, model: Any, run_id: str) -> Any:
    """A new version of registered model ``name`` (created if needed) pointing at the logged model's files.

    The source is the model's artifact location, not ``models:/<model id>``: MLflow's database registry resolves
    the latter through the process's global tracking URI (not the client's store), so it fails, or finds another
    store's model, whenever rmlab's store is not the global default."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    return client.create_model_version(name, source=model.artifact_location, run_id=run_id, model_id=model.model_id)
