"""MLflow tracking: the store, the experiment, one run's params, tags, metrics, artifacts and final status.

Rules this module keeps (docs/design.md says why):
- the store is opened through ``rmlab.store`` (which one, writable, created once under a file lock).
- params are logged synchronously and in full (Lightning's MLFlowLogger truncates them to 250 characters); metrics
  are buffered and sent asynchronously at most every ``flush_every_s`` seconds (each write to a sqlite store costs
  milliseconds of CPU, which a small model's training would otherwise share), drained before the run is closed.
  The sending thread is our own single worker, not MLflow's async queue: closing a run shuts that queue down, which
  waits up to a second for its polling thread, a second added to every run of a sweep.
- a run always ends with an explicit status: FINISHED, FAILED (with the error in the ``error`` tag) or KILLED. When a
  run opens and closes, and with which status, is ``rmlab.lifecycle``'s business; this module only records it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from rmlab.store import get_or_create_experiment, open_client, resolve_tracking_uri, slug, sqlite_path

MAX_TAG = 8000

# The store's own functions, also importable from here.
client_for = open_client
__all__ = ["Tracker", "TrackerLogger", "client_for", "dashboard_command", "flatten", "get_or_create_experiment",
           "open_client", "resolve_tracking_uri", "slug", "sqlite_path"]


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


class Tracker:
    """One MLflow run, opened by ``start`` (or joined by ``attach``) and closed by ``finish`` with an explicit status.

    ``opened`` counts the runs this process has started, so that a sweep job can tell whether its failure already has
    a run to record it on.
    """

    opened = 0

    def __init__(self, tracking_uri: str | None, experiment: str, flush_every_s: float = 5.0) -> None:
        self.uri = resolve_tracking_uri(tracking_uri)
        self.flush_every_s = flush_every_s
        self._buffer: list[Metric] = []
        self._last_send = time.monotonic()
        self.client: MlflowClient = open_client(self.uri)
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
        Tracker.opened += 1
        self._last_send = time.monotonic()  # the flush interval counts from the run's start, not the store's opening
        return self.run_id

    def attach(self, run_id: str) -> None:
        """Record on an existing run (a sweep's parent, from the process that opened it)."""
        self.run_id = run_id
        self.experiment_id = self.client.get_run(run_id).info.experiment_id

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
            try:
                future = self._sender.submit(self.client.log_batch, self.run_id, metrics=batch, synchronous=True)
            except RuntimeError:  # the interpreter is shutting down (an exit hook): no new threads, send it here
                future = Future()
                self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
                future.set_result(None)
            self._pending.append(future)
        self._last_send = time.monotonic()

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

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
        self.end_run(self.run_id, status, error)
        if failure is not None:
            raise failure

    # -- other runs of the store (a sweep's children) ---------------------------------------------------------------

    def end_run(self, run_id: str, status: str, error: str | None = None) -> None:
        """Close ``run_id`` with ``status``, recording ``error`` (if any) in its ``error`` tag."""
        if error:
            self.client.set_tag(run_id, "error", error[:MAX_TAG])
        self.client.set_terminated(run_id, status=status)

    def get(self, run_id: str | None = None) -> Any:
        """The run ``run_id`` (default: this run) as the store has it now."""
        return self.client.get_run(run_id or self.run_id)

    def children(self, run_id: str | None = None) -> list:
        """Every child run of ``run_id`` (default: this run), in every experiment (a sweep may vary
        ``experiment``), oldest job first."""
        parent = run_id or self.run_id
        ids = [e.experiment_id for e in self.client.search_experiments()]
        runs, token = [], None
        while True:
            page = self.client.search_runs(ids, filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                           max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                break
        return sorted(runs, key=lambda r: (int(r.data.tags.get("rmlab.job_num", 0)), r.info.start_time))

    def delete(self) -> None:
        """Delete this run (a sweep parent that no job ever used)."""
        self.client.delete_run(self.run_id)


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
