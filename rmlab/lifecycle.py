"""How a run opens and closes, and what ends it: the one path every tracked (and untracked) run takes.

``RunLifecycle`` is a context manager around everything a run does once it exists:

- entering installs the run's Ctrl-C / SIGTERM policy (``rmlab.signals``), then creates the MLflow run (or reopens an
  interrupted one, ``resume=``) with the process that owns it (``rmlab.processes``: host, pid, start time, so a run left open by a killed process can be
  found and closed later);
- during training (``lightning_callback``), SIGTERM stops at the next batch boundary: Lightning's own handler stops
  its loop there, so the weights are those of a whole step. A second SIGTERM, and Ctrl-C, stop at once;
- leaving runs the ``on_stop`` hooks when the run did not finish (an interrupt or an error, not an Optuna pruning:
  ``rmlab.run`` writes the last whole epoch's ``last.ckpt`` there), then closes the run whatever happened: FINISHED;
  KILLED for Ctrl-C or SIGTERM (``error``: ``interrupted (SIGTERM)``) or an Optuna pruning; FAILED with ``error`` =
  the exception for anything else. Queued metrics are flushed first, and a signal arriving while the hooks run or
  the run closes is remembered but does not cut them short. An interrupted run raises ``Interrupted``, whose
  ``exit_code`` (130 for Ctrl-C, 143 for SIGTERM) the entry point exits with, even where Lightning turned the
  interrupt into ``SystemExit(1)`` or its own ``SIGTERMException``.

How the Hydra task function uses it, for a single run and for a sweep job: ``rmlab.jobs``.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from rmlab import processes, signals
from rmlab.signals import Interrupted

log = logging.getLogger("rmlab")

job_sweep_dir: Path | None = None  # the sweep folder of the job running in this process (set by rmlab.jobs)


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
                 parent_run_id: str | None = None, reopen: str | None = None) -> None:
        self.tracker = tracker
        self.reopen = reopen  # the id of an interrupted run to continue (resume=) instead of a new run
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
        # Run in order, before the run is closed, when it ends other than FINISHED (not pruned): a signal does not cut
        # them short, and an error in one is logged without keeping the run from being closed.
        self.on_stop: list[Callable[[], None]] = []

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
            if job_sweep_dir is not None:  # the job of a sweep that is being interrupted must not start a run
                from rmlab.sweep_parent import stop_requested

                stopped = stop_requested(job_sweep_dir)
                if stopped is not None:
                    raise Interrupted(stopped)
            if self.tracker is not None and self.reopen:
                self.run_id = self.tracker.reopen(self.reopen, {**self.tags, **processes.identity()})
            elif self.tracker is not None:
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
            if status != "FINISHED" and not is_pruned(exc):
                self._stopping()
            if self.tracker is not None and self.run_id is not None:
                self.tracker.finish(status, error=reason)
        finally:
            self._signals.__exit__(None, None, None)
        if signum is not None and not isinstance(exc, Interrupted):
            raise Interrupted(signum) from exc
        return False

    def _stopping(self) -> None:
        for hook in self.on_stop:
            try:
                hook()
            except Exception as err:
                log.warning(f"rmlab: while stopping run {self.run_id}: {describe(err)}")

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
