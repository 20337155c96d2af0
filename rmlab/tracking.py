"""MLflow tracking: the store, the experiment, one run's params, tags, metrics, artifacts and final status.

Rules this module keeps (docs/design.md says why):
- the store is ``logger.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``: the file
  that ``mlflow ui`` opens when started in the same directory. Never the file store that Lightning defaults to.
- experiments on a local sqlite store get an absolute artifact location beside the database (``mlartifacts/``).
- params are logged synchronously and in full (Lightning's MLFlowLogger truncates them to 250 characters); metrics
  are buffered and sent asynchronously at most every ``flush_every_s`` seconds (each write to a sqlite store costs
  milliseconds of CPU, which a small model's training would otherwise share), drained before the run is closed.
  The sending thread is our own single worker, not MLflow's async queue: closing a run shuts that queue down, which
  waits up to a second for its polling thread, a second added to every run of a sweep.
- a run always ends with an explicit status: FINISHED, FAILED (with the error in the ``error`` tag) or KILLED.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

MAX_TAG = 8000


def resolve_tracking_uri(configured: str | None) -> str:
    """The store a run writes to: the configured URI, else $MLFLOW_TRACKING_URI, else ./mlflow.db (absolute)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # A relative sqlite path would move with the working directory; pin it now.
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def dashboard_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    db = sqlite_path(uri)
    if db is not None and db.parent == Path.cwd().resolve() and db.name == "mlflow.db":
        return "mlflow ui"
    if db is not None:
        return f"mlflow ui --backend-store-uri {uri}"
    return f"open {uri} in a browser" if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": value-as-text}; lists stay whole (``[128, 128]``) so each key is one param."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "experiment"


@lru_cache(maxsize=8)
def client_for(uri: str) -> MlflowClient:
    """One client per store and process: opening a sqlite store (engine, schema check) costs about 0.1 s, paid once
    per sweep instead of once per job."""
    return MlflowClient(tracking_uri=uri)


def get_or_create_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """The experiment's id, creating it (with an absolute artifact location on a local store) if needed."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    db = sqlite_path(uri)
    location = str(db.parent / "mlartifacts" / slug(name)) if db is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:
        # Another process created it between our lookup and our create.
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class Tracker:
    """One MLflow run, opened by ``start`` and always closed by ``finish`` with an explicit status."""

    def __init__(self, tracking_uri: str | None, experiment: str, flush_every_s: float = 5.0) -> None:
        self.uri = resolve_tracking_uri(tracking_uri)
        self.flush_every_s = flush_every_s
        self._buffer: list[Metric] = []
        self._last_send = time.monotonic()
        db = sqlite_path(self.uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        self.client = client_for(self.uri)
        self.experiment = experiment
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rmlab-metrics")
        self._pending: list[Future] = []

    def start(self, run_name: str, tags: Mapping[str, str], parent_run_id: str | None = None) -> str:
        self.experiment_id = get_or_create_experiment(self.client, self.uri, self.experiment)
        all_tags = {k: str(v)[:MAX_TAG] for k, v in tags.items()}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: Mapping[str, str]) -> None:
        # Synchronous: concurrent async batches logging one param key race and are dropped silently (docs/design.md).
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()], synchronous=True)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:MAX_TAG]) for k, v in tags.items()],
                              synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if time.monotonic() - self._last_send >= self.flush_every_s:
            self._send()

    def _send(self) -> None:
        """Queue the buffered metrics as one batch for the sending thread."""
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self._pending.append(self._sender.submit(self.client.log_batch, self.run_id, metrics=batch,
                                                     synchronous=True))
        self._last_send = time.monotonic()

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_table(self, data: Mapping[str, list], artifact_file: str) -> None:
        """Append rows (column -> values) to the run's table ``artifact_file`` (``.json``; MLflow's table artifact,
        shown in the UI), from the sending thread; ``flush`` waits until it is stored."""
        # Appending downloads the stored table first; MLflow would draw a progress bar for it on the console.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self._pending.append(self._sender.submit(self.client.log_table, self.run_id, dict(data), artifact_file))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def flush(self) -> None:
        """Send what is buffered and wait until every queued batch is stored."""
        self._send()
        pending, self._pending = self._pending, []
        for operation in pending:
            operation.result()  # re-raises a failed write here, before the run is closed

    def finish(self, status: str, error: str | None = None) -> None:
        """Drain queued metrics, record the error (if any) and close the run with ``status``; a run whose metrics
        could not be stored is closed FAILED (a FINISHED run must be complete: sweeps reuse them), then the error is
        raised."""
        failure = None
        try:
            self.flush()
        except Exception as err:
            failure = err
            status = "FAILED"
            error = f"metrics could not be stored: {type(err).__name__}: {err}" + (f"; {error}" if error else "")
        finally:
            self._sender.shutdown(wait=True)
        if error:
            self.client.set_tag(self.run_id, "error", error[:MAX_TAG])
        self.client.set_terminated(self.run_id, status=status)
        if failure is not None:
            raise failure


class TrackerLogger(Logger):
    """Lightning's view of a Tracker: metrics go to the open MLflow run; the run's lifecycle stays with rmlab."""

    def __init__(self, tracker: Tracker) -> None:
        super().__init__()
        self.tracker = tracker

    @property
    def name(self) -> str:
        return self.tracker.experiment

    @property
    def version(self) -> str:
        return self.tracker.run_id or ""

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """rmlab logs the full resolved config itself, untruncated; nothing to do here."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.tracker.log_metrics(metrics, step or 0)

    @rank_zero_only
    def log_table(self, data: Mapping[str, list], artifact_file: str) -> None:
        self.tracker.log_table(data, artifact_file)
