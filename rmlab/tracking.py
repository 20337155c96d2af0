"""MLflow tracking: the store, the experiment, one run's params, tags, metrics, artifacts and final status.

Rules this module keeps (docs/design.md says why):
- the store is opened through ``rmlab.store`` (which one, writable, created once under a file lock).
- params are logged synchronously and in full (Lightning's MLFlowLogger truncates them to 250 characters); metrics
  are buffered and sent asynchronously at most every ``flush_every_s`` seconds (each write to a sqlite store costs
  milliseconds of CPU, which a small model's training would otherwise share), drained before the run is closed.
  The sending thread is our own single worker, not MLflow's async queue: closing a run shuts that queue down, which
  waits up to a second for its polling thread, a second added to every run of a sweep.
- a run always ends with an explicit status: FINISHED, FAILED (with the error in the ``error`` tag) or KILLED.
- a store that goes away mid-run: the sending thread retries the metrics for ``retry_s`` seconds after the first
  failure (saying so once), then gives up; at the end the points it could not store are written to a local file
  (``rmlab.spool``) and the run ends with one line naming it. ``python -m rmlab.replay FILE`` stores them and closes the
  run once the server is back. The last batch carries the tag ``rmlab.metric_points``: the points the run sent.
  What a run records after training (its final tags, ``set_final_tags``) travels with that last batch, so it is in
  the file too and replay stores it; an upload after training (the model, the checkpoint: ``upload``) is skipped with
  a warning once the store has given up, and the file lists what was not stored.
- credentials in the store's URI never leave the process: params, tags, text and text artifacts pass through
  ``rmlab.credentials.redact``.
  When a run opens and closes, and with which status, is ``rmlab.lifecycle``'s business; this module only
  records it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from rmlab.credentials import redact, redacted_file, remove_copy
from rmlab.errors import MetricsNotStored
from rmlab.server import bound_http_retries, check_reachable, is_http
from rmlab.store import get_or_create_experiment, open_client, resolve_tracking_uri, slug, sqlite_path

log = logging.getLogger("rmlab")

MAX_TAG = 8000
# How long the metrics are retried while the store does not answer (logger.retry_s).
RETRY_S = 120.0
# Tag on every run: the metric points it sent (the store should hold as many).
POINTS_TAG = "rmlab.metric_points"

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


UI_PORT = 5000  # where `mlflow ui` listens unless told otherwise
# MLflow 3's UI opens in its GenAI view unless the link says otherwise.
ML_VIEW = "workflowType=machine_learning"


def run_page_url(uri: str, experiment_id: str | None, run_id: str) -> str | None:
    """The run's page in the MLflow UI, in the model-training view: on the tracking server itself, or where
    ``mlflow ui`` serves a local store by default; None for other stores (their UI address is not known here)."""
    path = f"#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{path}"
    if sqlite_path(uri) is not None:
        return f"http://127.0.0.1:{UI_PORT}/{path}"
    return None


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


def typed_params(params: Mapping[str, str], overrides: list[str]) -> dict[str, str]:
    """``params`` with each number the user set on the command line written as they typed it (``optimizer.lr=1e-4``
    is stored as ``1e-4``, not Python's ``0.0001``), where the typed text means the same number. A sweep's list
    (``optimizer.lr=1e-3,1e-4``) offers each of its values."""
    typed: dict[str, str] = {}
    for override in overrides:
        key, sep, text = override.partition("=")
        key = key.lstrip("+~")
        if not sep or key not in params or re.fullmatch(r"[-+]?\d+", params[key]):
            continue  # not a number the config stores as a float
        for candidate in text.split(",") if re.fullmatch(r"[^\[\](){}'\"]*", text) else [text]:
            try:
                same = float(candidate) == float(params[key])
            except ValueError:
                continue
            if same:
                typed[key] = candidate.strip()
    return {**params, **typed}


def current_user() -> str:
    """The OS user name for the ``mlflow.user`` tag (MLflow's own fluent API records the same)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry and no $USER
        return "unknown"


class Tracker:
    """One MLflow run, opened by ``start`` (or joined by ``attach``) and closed by ``finish`` with an explicit status.

    ``opened`` counts the runs this process has started, so that a sweep job can tell whether its failure already has
    a run to record it on.
    """

    opened = 0

    def __init__(self, tracking_uri: str | None, experiment: str, flush_every_s: float = 5.0,
                 retry_s: float = RETRY_S) -> None:
        self.uri = resolve_tracking_uri(tracking_uri)
        self.flush_every_s = flush_every_s
        self.retry_s = retry_s
        self._buffer: list[Metric] = []
        self._last: dict[str, tuple[int, float]] = {}  # key -> (step, value) last buffered
        self._last_point: dict[str, Metric] = {}  # key -> the point last buffered (its timestamp: as stored)
        self._held_steps: dict[str, int] = {}  # a reopened run: key -> the last step the store already holds
        self._last_send = time.monotonic()
        if is_http(self.uri):
            bound_http_retries()
            check_reachable(self.uri)  # a server that is down: a clear error now, not a hang at the first write
        self.client: MlflowClient = open_client(self.uri)
        self.experiment = experiment
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.artifact_uri: str | None = None  # where the run's artifacts go, as the store said when it made the run
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rmlab-metrics")
        self._pending: list[Future] = []
        # Owned by the sending thread while batches are pending; read by flush() once they are done.
        self._sent = 0  # metric points the store has acknowledged
        self._unsent: list[Metric] = []  # points given up on: the store stayed away for retry_s
        self._gave_up = False
        self._down_since: float | None = None
        self._final_tags: dict[str, str] = {}  # sent with the final batch (or written to the unsent-metrics file)
        self.not_stored: list[str] = []  # uploads skipped because the store did not answer
        self.unsent_path: Path | None = None

    def start(self, run_name: str, tags: Mapping[str, str], parent_run_id: str | None = None) -> str:
        # Looked up already by a sweep job's reuse check, a moment before: not asked twice.
        self.experiment_id = self.experiment_id or get_or_create_experiment(self.client, self.uri, self.experiment)
        all_tags = {"mlflow.user": current_user(), **{k: redact(str(v))[:MAX_TAG] for k, v in tags.items()}}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        self.artifact_uri = run.info.artifact_uri
        Tracker.opened += 1
        self._last_send = time.monotonic()  # the flush interval counts from the run's start, not the store's opening
        return self.run_id

    def reopen(self, run_id: str, tags: Mapping[str, str]) -> str:
        """Continue a closed run (``resume=``): RUNNING again, its ``error`` tag removed, ``tags`` set. The points it
        holds count as sent, and a point at a step the run already holds for its key is not sent again: the
        interrupted process logged it before it stopped, and training repeats the steps since its last checkpoint."""
        self.attach(run_id)
        run = self.client.get_run(run_id)
        self.experiment = self.client.get_experiment(self.experiment_id).name
        for key in run.data.metrics:
            steps = [m.step for m in self.client.get_metric_history(run_id, key)]
            self._sent += len(steps)
            self._held_steps[key] = max(steps)
        if "error" in run.data.tags:
            self.client.delete_tag(run_id, "error")
        self.set_tags(tags)
        self.client.update_run(run_id, status="RUNNING")
        Tracker.opened += 1
        self._last_send = time.monotonic()
        return run_id

    def attach(self, run_id: str) -> None:
        """Record on an existing run (a sweep's parent, from the process that opened it)."""
        self.run_id = run_id
        info = self.client.get_run(run_id).info
        self.experiment_id, self.artifact_uri = info.experiment_id, info.artifact_uri

    def log_params(self, params: Mapping[str, str], tags: Mapping[str, str] | None = None) -> None:
        """Store ``params`` (and ``tags``, if given, in the same write: one store transaction, not two)."""
        # Synchronous: concurrent async batches logging one param key race and are dropped silently (docs/design.md).
        self.client.log_batch(self.run_id, params=[Param(k, redact(str(v))) for k, v in params.items()],
                              tags=[RunTag(k, redact(str(v))[:MAX_TAG]) for k, v in (tags or {}).items()],
                              synchronous=True)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, redact(str(v))[:MAX_TAG]) for k, v in tags.items()],
                              synchronous=True)

    def set_final_tags(self, tags: Mapping[str, str]) -> None:
        """Tags that describe the run's outcome: held back and sent with the final batch of metrics, so that a store
        that went away mid-run gets them with the metrics when the run is replayed (``rmlab.replay``)."""
        self._final_tags.update({k: redact(str(v))[:MAX_TAG] for k, v in tags.items()})

    @property
    def store_away(self) -> bool:
        """True once the store stayed away for ``retry_s``: later metrics go to the unsent-metrics file."""
        return self._gave_up

    def drain(self) -> bool:
        """Send what is buffered and wait until every queued batch is stored or given up on (at most ``retry_s``
        while the store does not answer); True if the store holds every metric so far. Unlike ``flush`` it neither
        sends the points count nor raises when the store stayed away."""
        self._send()
        pending, self._pending = self._pending, []
        for operation in pending:
            operation.result()
        return not self._gave_up

    def upload(self, what: str, action: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``action`` (an upload to the store after training: the model, a checkpoint) unless the store stayed
        away; if it is away, or the upload finds it away, skip it with a warning and remember ``what`` in
        ``not_stored`` (the unsent-metrics file lists it). Returns what ``action`` returned, None when skipped."""
        if not self._gave_up:
            try:
                return action(*args, **kwargs)
            except Exception as err:
                if not _unreachable(err):
                    raise
        self.not_stored.append(what)
        log.warning(f"rmlab: the tracking store {redact(self.uri)} does not answer: {what} of run {self.run_id} is "
                    "not stored")
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            point = (step, float(value))
            # Lightning adds `epoch` to every call; the same value again at the same step says nothing new (and a
            # store keeps one of two identical points, so sent and stored counts would disagree).
            if self._last.get(key) != point and step > self._held_steps.get(key, -1):
                self._last[key] = point
                self._last_point[key] = metric = Metric(key, point[1], now, step)
                self._buffer.append(metric)
        if time.monotonic() - self._last_send >= self.flush_every_s:
            self._send()

    def sent_point(self, key: str, step: int) -> Metric | None:
        """The point of ``key`` at ``step`` as this tracker sent it (value and timestamp), if the last point it sent
        for ``key`` is at ``step`` and the store took every batch so far; None otherwise (then only the store knows:
        a point kept for the unsent-metrics file is in no store yet)."""
        if self._gave_up or self._unsent:
            return None
        point = self._last_point.get(key)
        return point if point is not None and point.step == step else None

    def link_waiting(self, model_id: str, keys: Iterable[str], step: int) -> list[str]:
        """Link to the logged model ``model_id`` the last points of ``keys`` where they are at ``step`` and still wait
        in the buffer: they are stored once, linked, with the next batch (no write of their own). Returns the keys
        whose point does not wait here (already sent, or not logged at ``step`` by this tracker)."""
        waiting = {id(point): index for index, point in enumerate(self._buffer)}
        elsewhere = []
        for key in keys:
            point = self._last_point.get(key)
            if point is None or point.step != step or id(point) not in waiting:
                elsewhere.append(key)
                continue
            linked = Metric(point.key, point.value, point.timestamp, point.step, model_id=model_id)
            self._buffer[waiting[id(point)]] = self._last_point[key] = linked
        return elsewhere

    def _send(self, final: bool = False) -> None:
        """Queue the buffered metrics as one batch for the sending thread (the final one carries the points count)."""
        if self._buffer or final:
            batch, self._buffer = self._buffer, []
            try:
                operation = self._sender.submit(self._deliver, batch, final)
            except RuntimeError:  # an exit hook closing a run: the interpreter takes no new futures; send from here
                operation = Future()
                try:
                    self._deliver(batch, final)
                    operation.set_result(None)
                except Exception as err:
                    operation.set_exception(err)
            self._pending.append(operation)
        self._last_send = time.monotonic()

    def _deliver(self, batch: list[Metric], final: bool) -> None:
        """Store one batch (in the sending thread). While the store does not answer, retry until ``retry_s`` after
        the first failure, then give up: this batch and every later one are kept for the unsent-metrics file. An
        error the store reports about the request itself (4xx) is raised, to fail the run as before."""
        if self._gave_up:
            self._unsent += batch
            return
        attempt = 0
        while True:
            tags = self._closing_tags(self._sent + len(batch)) if final else []
            try:
                self.client.log_batch(self.run_id, metrics=batch, tags=tags, synchronous=True)
            except Exception as err:
                if not _transient(err):
                    raise
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                    log.warning(f"rmlab: the tracking store {redact(self.uri)} does not answer "
                                f"({_short(err)}); retrying the metrics for up to {self.retry_s:g} s "
                                "(logger.retry_s); training goes on")
                left = self.retry_s - (now - self._down_since)
                if left <= 0:
                    self._gave_up = True
                    self._unsent += batch
                    log.warning(f"rmlab: the tracking store {redact(self.uri)} still does not answer after "
                                f"{self.retry_s:g} s; the run's metrics will be kept in a local file")
                    return
                attempt += 1
                time.sleep(min(2.0 ** (attempt - 1), 10.0, left))  # 1, 2, 4, 8, 10, 10... s
                continue
            self._sent += len(batch)
            if self._down_since is not None:
                log.warning(f"rmlab: the tracking store {redact(self.uri)} answers again after "
                            f"{time.monotonic() - self._down_since:.0f} s; metrics are stored again")
                self._down_since = None
            return

    def log_inputs(self, datasets: list) -> None:
        """Record the datasets the run used (``mlflow.entities.DatasetInput``, see ``rmlab.lineage``)."""
        self.client.log_inputs(self.run_id, datasets=datasets)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.log_texts({artifact_file: text})

    def log_texts(self, texts: Mapping[str, str]) -> None:
        """Store text files (artifact path -> text) in one upload: one artifact-store call for all of them."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            for name, text in texts.items():
                file = Path(tmp) / name
                file.parent.mkdir(parents=True, exist_ok=True)
                file.write_text(redact(text), encoding="utf-8")
            artifact_repository(self.artifact_uri, self.uri).log_artifacts(tmp)

    def log_table(self, data: Mapping[str, list], artifact_file: str) -> None:
        """Append rows (column -> values) to the run's table ``artifact_file`` (``.json``; MLflow's table artifact,
        shown in the UI), from the sending thread; ``flush`` waits until it is stored. While the store does not
        answer, tables are dropped with a warning (they are samples of what the metrics measure); an error the store
        reports about the request itself is raised at ``flush``, as for metrics."""
        # Appending downloads the stored table first; MLflow would draw a progress bar for it on the console.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self._pending.append(self._sender.submit(self._deliver_table, dict(data), artifact_file))

    def _deliver_table(self, data: dict[str, list], artifact_file: str) -> None:
        try:
            self.client.log_table(self.run_id, data, artifact_file)
        except Exception as err:
            if not _transient(err):
                raise
            log.warning(f"rmlab: the tracking store {redact(self.uri)} does not answer ({_short(err)}); the sample "
                        f"rows for {artifact_file} are not stored")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        upload, is_copy = redacted_file(Path(path))
        try:
            self.client.log_artifact(self.run_id, str(upload), artifact_path)
        finally:
            if is_copy:
                remove_copy(upload)

    def flush(self) -> None:
        """Send what is buffered and wait until every queued batch is stored. If the store stayed away, try once
        more with everything held back; if that fails too, write the unsent-metrics file and raise MetricsNotStored."""
        self._send(final=True)
        pending, self._pending = self._pending, []
        for operation in pending:
            operation.result()  # re-raises a failed write here, before the run is closed
        if not self._gave_up:
            return
        try:  # the server may be back by now
            self.client.log_batch(self.run_id, metrics=self._unsent,
                                  tags=self._closing_tags(self._sent + len(self._unsent)), synchronous=True)
        except Exception as err:
            if not _transient(err):
                raise
        else:
            self._sent += len(self._unsent)
            self._unsent, self._gave_up = [], False
            log.warning(f"rmlab: the tracking store {redact(self.uri)} answers again; every metric is stored")
            return
        self._spool(status=None, error=None)
        raise MetricsNotStored(
            f"the tracking store {redact(self.uri)} did not answer for {self.retry_s:g} s (logger.retry_s): "
            f"{len(self._unsent)} metric points of run {self.run_id} are kept in {self.unsent_path}; once the "
            f"server is back, store them and close the run with: python -m rmlab.replay {self.unsent_path}")

    def _spool(self, status: str | None, error: str | None) -> None:
        from rmlab import spool

        self.unsent_path = self.unsent_path or spool.default_path(self.run_id)
        spool.write(self.unsent_path, uri=self.uri, run_id=self.run_id, experiment=self.experiment, status=status,
                    error=error, sent=self._sent, metrics=self._unsent, tags=self._final_tags,
                    not_stored=self.not_stored)

    def _closing_tags(self, points: int) -> list[RunTag]:
        return [RunTag(k, v) for k, v in self._final_tags.items()] + [RunTag(POINTS_TAG, str(points))]

    def finish(self, status: str, error: str | None = None) -> None:
        """Drain queued metrics, record the error (if any) and close the run with ``status``; a run whose metrics
        could not be stored is closed FAILED (a FINISHED run must be complete: sweeps reuse them), then the error is
        raised."""
        failure = None
        try:
            self.flush()
        except MetricsNotStored:
            # The store is away: closing the run now would only wait for it again. The file says how to close it.
            self._sender.shutdown(wait=True)
            self._spool(status=status, error=error)
            raise
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
            self.client.set_tag(run_id, "error", redact(error)[:MAX_TAG])
        self.client.set_terminated(run_id, status=status)

    def get(self, run_id: str | None = None) -> Any:
        """The run ``run_id`` (default: this run) as the store has it now."""
        return self.client.get_run(run_id or self.run_id)

    def children(self, run_id: str | None = None) -> list:
        """Every child run of ``run_id`` (default: this run): ``child_runs``."""
        return child_runs(self.client, run_id or self.run_id)

    def delete(self) -> None:
        """Delete this run (a sweep parent that no job ever used)."""
        self.client.delete_run(self.run_id)


def artifact_repository(artifact_uri: str, tracking_uri: str) -> Any:
    """The artifact store at ``artifact_uri`` (a run's or a logged model's), the repository MLflow's client would use
    for it (same class, same arguments), without the query the client makes first to read that location back (a
    ``get_run`` per run, a ``get_logged_model`` per model) when the caller holds it already."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

    return get_artifact_repository(add_databricks_profile_info_to_artifact_uri(artifact_uri, tracking_uri),
                                   tracking_uri=tracking_uri)


def child_runs(client: Any, parent: str) -> list:
    """Every child run of ``parent`` in every experiment (a sweep may vary ``experiment``), page by page, oldest job
    first."""
    ids = [e.experiment_id for e in client.search_experiments()]
    runs, token = [], None
    while True:
        page = client.search_runs(ids, filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=1000,
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    return sorted(runs, key=lambda r: (int(r.data.tags.get("rmlab.job_num", 0)), r.info.start_time))


def _transient(err: BaseException) -> bool:
    """Worth retrying: MLflow reports that the store did not answer or failed on its side (a 5xx: connection refused,
    a database that is locked or down). Not a 4xx (the store says the request itself is wrong: sending it again
    cannot help), nor an error from outside MLflow's store layer (a bug, not an outage)."""
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException) and err.get_http_status_code() >= 500


def _unreachable(err: BaseException) -> bool:
    """The store did not answer an upload: a 5xx from MLflow's client, or the HTTP connection itself failed (the
    artifact client may report it without wrapping it)."""
    import requests

    return _transient(err) or isinstance(err, (requests.ConnectionError, requests.Timeout))


def _short(err: BaseException) -> str:
    from rmlab.server import reason

    return redact(reason(err))


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
