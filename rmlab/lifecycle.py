"""How a run opens and closes, and what ends it: the one path every tracked (and untracked) run takes.

``RunLifecycle`` is a context manager around everything a run does once it exists:

- entering installs the run's Ctrl-C / SIGTERM policy (``rmlab.signals``), then creates the MLflow run with the
  process that owns it (``rmlab.processes``: host, pid, start time, so a run left open by a killed process can be
  found and closed later);
- during training (``lightning_callback``), SIGTERM stops at the next batch boundary: Lightning's own handler stops
  its loop there, so the weights are those of a whole step. A second SIGTERM, and Ctrl-C, stop at once;
- leaving closes the run whatever happened: FINISHED; KILLED for Ctrl-C or SIGTERM (``error``: ``interrupted
  (SIGTERM)``) or an Optuna pruning; FAILED with ``error`` = the exception for anything else. Queued metrics are
  flushed first, and a signal arriving while the run closes is remembered but does not cut the close short. An
  interrupted run raises ``Interrupted``, whose ``exit_code`` (130 for Ctrl-C, 143 for SIGTERM) the entry point exits
  with, even where Lightning turned the interrupt into ``SystemExit(1)`` or its own ``SIGTERMException``.

``run_job`` is the body of the Hydra task function: a single run's errors become one line and an exit code; a sweep
job goes through ``sweep_job``, which records a job that fails before its run exists as a FAILED child of the sweep
(whatever the exception), so the sweep's summary counts every job that started.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rmlab import processes, signals
from rmlab.errors import ConfigError, RmlabError
from rmlab.signals import Interrupted

log = logging.getLogger("rmlab")

task_started = False  # whether the Hydra task function has been entered in this process (the entry point asks)


def is_pruned(err: BaseException | None) -> bool:
    """An ``optuna.TrialPruned`` (Optuna is imported only by sweeps that prune, so it may not be loaded)."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(err, optuna.TrialPruned)


def is_lightning_sigterm(err: BaseException | None) -> bool:
    """Lightning's ``SIGTERMException``: a bare ``SystemExit`` (exit status 0) raised when its SIGTERM handler ran."""
    module = sys.modules.get("pytorch_lightning.utilities.exceptions")
    return module is not None and isinstance(err, module.SIGTERMException)


def is_dead_worker(err: BaseException | None) -> bool:
    """joblib's ``TerminatedWorkerError``: a worker process killed by the system (out of memory, ``kill -9``)."""
    module = sys.modules.get("joblib.externals.loky.process_executor")
    return module is not None and isinstance(err, module.TerminatedWorkerError)


def describe(err: BaseException) -> str:
    """One line naming an error, for a message or an ``error`` tag."""
    if is_dead_worker(err):
        return "a worker process died (TerminatedWorkerError: killed by the system, e.g. out of memory)"
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def ending(err: BaseException | None, signum: int | None) -> tuple[str, str | None, int | None]:
    """(MLflow status, reason for the ``error`` tag, interrupting signal) of a run that ended with ``err`` after
    ``signum`` (the first signal received while it was open, if any)."""
    if isinstance(err, Interrupted):
        signum = err.signum
    elif signum is None and is_lightning_sigterm(err):
        signum = signal.SIGTERM
    if signum is not None:
        return "KILLED", f"interrupted ({signals.name(signum)})", signum
    if err is None:
        return "FINISHED", None, None
    if is_pruned(err):
        return "KILLED", f"pruned by Optuna: {err}", None
    if isinstance(err, (KeyboardInterrupt, SystemExit)):
        return "KILLED", f"stopped ({type(err).__name__}{f': {err}' if str(err) else ''})", None
    return "FAILED", f"{type(err).__name__}: {err}", None


class RunLifecycle:
    """One run from open to close (see the module docstring). ``tracker`` None: an untracked run, which still gets
    the signal handling and the exit codes."""

    def __init__(self, tracker: Any | None, run_name: str, tags: Mapping[str, str],
                 parent_run_id: str | None = None) -> None:
        self.tracker = tracker
        self.run_name = run_name
        self.tags = dict(tags)
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None
        self.status: str | None = None
        self._mark = 0
        self._closing = False
        self._graceful = False
        self._sigterm_pending = False
        self._signals: Any = None

    def _policy(self, signum: int) -> None:
        if self._closing:
            return
        if self._graceful and signum == signal.SIGTERM and not self._sigterm_pending:
            self._sigterm_pending = True  # Lightning's handler, which ran first, stops the loop at the next batch
            log.warning("rmlab: SIGTERM: stopping after the current batch (send it again to stop at once)")
            return
        raise Interrupted(signum)

    def __enter__(self) -> RunLifecycle:
        self._signals = signals.handling(self._policy)
        self._signals.__enter__()
        self._mark = signals.mark()
        try:
            stopped = _job_sweep_stopped()
            if stopped is not None:  # the job of a sweep that is being interrupted: it must not start a run
                raise Interrupted(stopped)
            if self.tracker is not None:
                self.run_id = self.tracker.start(self.run_name, {**self.tags, **processes.identity()},
                                                 parent_run_id=self.parent_run_id)
        except BaseException:
            self._signals.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        self._closing = True
        self._graceful = False
        status, reason, signum = ending(exc, signals.received_since(self._mark))
        self.status = status
        try:
            if self.tracker is not None and self.run_id is not None:
                self.tracker.finish(status, error=reason)
        finally:
            self._signals.__exit__(None, None, None)
        if signum is not None and not isinstance(exc, Interrupted):
            raise Interrupted(signum) from exc
        return False

    # -- training: SIGTERM stops at a batch boundary ------------------------------------------------------------------

    def lightning_callback(self) -> Any:
        """A Lightning callback that opens the graceful SIGTERM window while the trainer's loop runs (Lightning's own
        SIGTERM handler, registered by then, makes the loop stop at the next batch)."""
        return _graceful_callback_type()(self)

    def _enter_graceful(self) -> None:
        self._graceful = True

    def _leave_graceful(self) -> None:
        self._graceful = False
        if self._sigterm_pending:  # the signal came after the loop's last check: stop now
            raise Interrupted(signal.SIGTERM)


@lru_cache(maxsize=1)
def _graceful_callback_type() -> type:
    import pytorch_lightning as pl

    class GracefulSigterm(pl.Callback):
        def __init__(self, life: RunLifecycle) -> None:
            self.life = life

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.life._enter_graceful()

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.life._leave_graceful()

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self.life._graceful = False

    return GracefulSigterm


# -- the task function ---------------------------------------------------------------------------------------------

Work = Callable[[DictConfig], Mapping[str, Any]]

_job_sweep_dir: Path | None = None  # the sweep folder of the job running in this process, if any


def _job_sweep_stopped() -> int | None:
    if _job_sweep_dir is None:
        return None
    from rmlab.sweep_parent import stop_requested

    return stop_requested(_job_sweep_dir)


def returned_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """What the task function returns to Hydra's sweeper: the numeric results (``val/best_reward``, ...)."""
    return {k: float(v) for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_job(cfg: DictConfig, work: Work) -> dict[str, float] | None:
    """The Hydra task function's body. A single run exits with status 2 on a config error and 1 on a failed run,
    printing one line (an interrupt propagates to the entry point, which exits 130 or 143); a sweep job never raises
    for its own failure (see ``sweep_job``)."""
    global task_started
    from rmlab.provenance import job_context

    task_started = True
    context = job_context()
    if context["multirun"]:
        return sweep_job(cfg, context, work)
    try:
        results = work(cfg)
    except ConfigError as err:
        print(f"rmlab: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except RmlabError as err:
        print(f"rmlab: run failed: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    return returned_metrics(results)


def sweep_job(cfg: DictConfig, context: dict[str, Any], work: Work) -> dict[str, float] | None:
    """One job of a multirun. Returns its metrics, or None when it failed or was stopped (the sweep goes on with the
    other jobs; its run, or a FAILED child recorded here, says what happened). An Optuna pruning is raised for the
    sweeper to count. An interrupt propagates when the job runs in the sweep's own process (it stops the sweep);
    in a worker process the job returns and the launching process stops the sweep (see ``rmlab.sweep_parent``)."""
    global _job_sweep_dir
    from rmlab.sweep_parent import launched_here, stop_requested

    sweep_dir = Path(context["sweep_dir"])
    in_launcher = launched_here()
    if stop_requested(sweep_dir) is not None:
        print(f"rmlab: job {context['job_num']} not started: the sweep was interrupted", file=sys.stderr)
        return None
    opened = _runs_opened()
    _job_sweep_dir = sweep_dir
    try:
        with signals.handling(signals.stop_now):
            return returned_metrics(work(cfg))
    except Interrupted as err:
        if in_launcher:
            raise
        print(f"rmlab: job {context['job_num']} stopped: {err}", file=sys.stderr)
        return None
    except KeyboardInterrupt:
        if in_launcher:
            raise
        print(f"rmlab: job {context['job_num']} stopped: interrupted", file=sys.stderr)
        return None
    except BaseException as err:
        if is_pruned(err):
            raise
        if _runs_opened() == opened:  # it failed before its run existed: record it, so the summary counts it
            try:
                _record_failed_job(cfg, context, err)
            except Exception as record_err:
                log.error(f"rmlab: job {context['job_num']} could not be recorded: {type(record_err).__name__}: "
                          f"{record_err}")
        print(f"rmlab: job {context['job_num']} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return None
    finally:
        _job_sweep_dir = None


def _runs_opened() -> int:
    tracking = sys.modules.get("rmlab.tracking")
    return tracking.Tracker.opened if tracking is not None else 0


def _safe(read: Callable[[], Any], default: Any = None) -> Any:
    try:
        return read()
    except Exception:
        return default


def _record_failed_job(cfg: DictConfig, context: dict[str, Any], err: BaseException) -> None:
    """A FAILED child run for a sweep job that failed before opening its run, robust to the config being the
    problem (a name, tags or experiment that cannot be computed fall back to the job's number and the parent's)."""
    from rmlab.provenance import run_name, run_tags
    from rmlab.sweep_parent import parent_run_id

    parent = parent_run_id(context["sweep_dir"])
    tracked = _safe(lambda: cfg.logger.name == "mlflow" and not cfg.trainer.fast_dev_run, True)
    if not parent or not tracked:
        return
    from rmlab.tracking import Tracker

    context = {**context, "parent_run_id": parent}
    name = _safe(lambda: run_name(cfg), f"job-{context['job_num']}")
    tags = _safe(lambda: run_tags(cfg, context), None) or {
        "sweep_id": parent, "rmlab.sweep_dir": context["sweep_dir"], "rmlab.job_num": str(context["job_num"]),
        "rmlab.overrides": " ".join(context.get("overrides", []))}
    tracker = Tracker(_safe(lambda: cfg.logger.tracking_uri), _safe(lambda: str(cfg.experiment), ""))
    try:
        if not tracker.experiment:
            raise ValueError("no experiment name")
        tracker.start(name, {**tags, **processes.identity()}, parent_run_id=parent)
    except Exception:  # the job's experiment is unusable: record the job in its parent's
        experiment_id = tracker.client.get_run(parent).info.experiment_id
        tracker.experiment = tracker.client.get_experiment(experiment_id).name
        tracker.start(name, {**tags, **processes.identity()}, parent_run_id=parent)
    tracker.finish("FAILED", error=f"{type(err).__name__}: {err}")
