"""A sweep's parent run, in the process that launches the jobs: opening it, signals while jobs run, closing it.

Opening (``ParentRun.open``, from ``SweepCallback.on_multirun_start``, before any job starts):
- claims the sweep folder with an exclusive lock on ``<sweep dir>/.rmlab_sweep.lock``, held until the sweep ends:
  two sweeps never write into one folder at once (the default folder is unique per invocation; one given with
  ``hydra.sweep.dir`` that another running sweep holds is refused). The system drops the lock if the process dies;
- opens the store (created once, under its file lock) and the experiment, closes runs of this host whose process is
  gone (``rmlab.tidy``), creates the parent run with this process's identity, and writes its id to
  ``<sweep dir>/mlflow_parent_run_id``, where every job finds it.

Signals while the jobs run. A job running in this process (the basic launcher) is stopped by its own run's policy.
Jobs in other processes (joblib workers, submitit) are drained: on the first Ctrl-C or SIGTERM the sweep writes
``<sweep dir>/.rmlab_stopped`` (a job that starts after it runs nothing), sends SIGTERM to the processes on this host
whose children are still RUNNING, waits up to ``DRAIN_S`` seconds for them to close their runs KILLED, and only then
stops the launcher (by raising ``Interrupted`` here, through the same signal). A second signal stops at once.

Closing (``close``: from ``on_multirun_end``, or from the entry point when the sweep stopped early, always before
interpreter shutdown; an exit hook is only the last resort): a child still RUNNING whose process is gone is closed,
FAILED (KILLED if the sweep was interrupted) with the reason; the report summarises the children, including the jobs
that never started; the parent ends FINISHED, FAILED (the sweep itself failed) or KILLED (interrupted) with a
``failures`` tag, and the command's exit code is decided: 128 + the signal if interrupted, 1 if the sweep or any job
failed, else 0.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rmlab import processes, signals
from rmlab.errors import ConfigError
from rmlab.lifecycle import describe
from rmlab.signals import Interrupted

log = logging.getLogger("rmlab")

PARENT_RUN_FILE = "mlflow_parent_run_id"
STOP_FILE = ".rmlab_stopped"
LOCK_FILE = ".rmlab_sweep.lock"
DRAIN_S = 30.0  # how long an interrupted sweep waits for its running jobs to close their runs
LOST_WAIT_S = 10.0  # how long a sweep that stopped early waits for its running jobs' processes to end

Report = Callable[[Any, list, dict, list], int]  # (tracker, children, status by run id, notes) -> failures

_open: ParentRun | None = None  # the parent run this process has open
_launcher_pid: int | None = None
_exit_code = 0  # the exit code decided by the last closed parent


def parent_run_id(sweep_dir: str | Path) -> str | None:
    """The parent run of the sweep writing to ``sweep_dir``, if its callback opened one."""
    path = Path(sweep_dir) / PARENT_RUN_FILE
    return path.read_text().strip() if path.is_file() else None


def stop_requested(sweep_dir: str | Path) -> int | None:
    """The signal that is stopping the sweep writing to ``sweep_dir``, if one is."""
    path = Path(sweep_dir) / STOP_FILE
    try:
        return int(path.read_text().strip() or signal.SIGINT)
    except (OSError, ValueError):
        return None


def current() -> ParentRun | None:
    return _open


def launched_here() -> bool:
    """Whether this process launched the sweep (its jobs then run in-process, and an interrupt stops the sweep)."""
    return _launcher_pid == os.getpid()


def exit_code() -> int:
    """The exit code the last closed sweep decided (0 when no sweep ran)."""
    return _exit_code


def is_hydra_config_error(err: BaseException | None) -> bool:
    """A composition error (a typo in a key or an option): Hydra reports it before any job starts."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(err, (HydraException, OmegaConfBaseException))


class ParentRun:
    """The parent run of one multirun (see the module docstring)."""

    def __init__(self, uri: str, experiment: str, sweep_dir: Path, run_name: str, report: Report,
                 planned_jobs: int | None = None) -> None:
        self.uri = uri
        self.experiment = experiment
        self.sweep_dir = sweep_dir
        self.run_name = run_name
        self.report = report
        self.planned_jobs = planned_jobs
        self.tracker: Any = None
        self.run_id: str | None = None
        self._lock: Any = None
        self._mark = 0
        self._signals: Any = None
        self._closing = False
        self._state = threading.Lock()
        self._drain: threading.Thread | None = None

    # -- opening ---------------------------------------------------------------------------------------------------

    def open(self, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
        global _open, _launcher_pid
        from filelock import FileLock, Timeout

        from rmlab.tidy import close_orphans
        from rmlab.tracking import Tracker

        try:
            self.sweep_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create the sweep folder {self.sweep_dir} ({err.strerror}): set "
                              "hydra.sweep.dir to a folder you can write") from err
        self._lock = FileLock(str(self.sweep_dir / LOCK_FILE), timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            other = parent_run_id(self.sweep_dir)  # None while that sweep is still opening its parent run
            which = f" (parent run {other})" if other else ""
            raise ConfigError(f"hydra.sweep.dir={self.sweep_dir} is used by another sweep that is still running"
                              f"{which}: choose another folder") from None
        try:
            (self.sweep_dir / STOP_FILE).unlink(missing_ok=True)  # a folder reused after an interrupted sweep
            tracker = Tracker(self.uri, self.experiment)
            close_orphans(tracker.client)
            self.run_id = tracker.start(self.run_name, {**tags, **processes.identity()})
        except BaseException:
            self._lock.release()
            raise
        try:
            tracker.set_tags({"sweep_id": self.run_id})
            tracker.log_params({k: "" if v is None else v for k, v in params.items()})
            (self.sweep_dir / PARENT_RUN_FILE).write_text(self.run_id + "\n")
        except BaseException as err:
            tracker.finish("FAILED", error=f"{type(err).__name__}: {err}")
            self._lock.release()
            raise
        self.tracker = tracker
        _open, _launcher_pid = self, os.getpid()
        self._signals = signals.handling(self._on_signal)
        self._signals.__enter__()
        self._mark = signals.mark()
        atexit.register(self._at_exit)
        from rmlab.credentials import redact

        log.info(f"Sweep parent run {self.run_id} in {redact(self.uri)} (experiment {self.experiment!r})")
        return self.run_id

    # -- signals ---------------------------------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        with self._state:
            if self._closing:
                return
            if self._drain is not None:  # a second signal, or the drain's own when it is done
                raise Interrupted(signum)
            (self.sweep_dir / STOP_FILE).write_text(f"{signum}\n")
            self._drain = threading.Thread(target=self._drain_jobs, args=(signum,), name="rmlab-drain", daemon=True)
        os.write(2, f"rmlab: stopping the sweep ({signals.name(signum)}): no new job starts; waiting up to "
                    f"{DRAIN_S:.0f} s for running jobs to close their runs (again to stop at once)\n".encode())
        self._drain.start()

    def _drain_jobs(self, signum: int) -> None:
        """Ask the jobs running in other processes of this host to stop (SIGTERM), wait until their runs are closed,
        then stop the launcher in the main thread."""
        me, asked = os.getpid(), set()
        deadline = time.monotonic() + DRAIN_S
        while not self._closing and time.monotonic() < deadline:
            try:
                running = [c for c in self.tracker.children() if c.info.status == "RUNNING"]
            except Exception:
                break
            others = [int(c.data.tags[processes.PID_TAG]) for c in running
                      if processes.recorded_alive(c.data.tags) and c.data.tags[processes.PID_TAG] != str(me)]
            if not others:
                break
            for pid in set(others) - asked:
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
                asked.add(pid)
            time.sleep(0.5)
        with self._state:
            if not self._closing:
                os.kill(me, signum)

    # -- closing ---------------------------------------------------------------------------------------------------

    def close(self, error: BaseException | None = None) -> int:
        """Close the parent (see the module docstring); ``error`` is what stopped the sweep early, if anything.
        Returns the command's exit code."""
        global _exit_code
        with self._state:
            if self._closing:
                return _exit_code
            self._closing = True
        signum = signals.received_since(self._mark)
        if isinstance(error, Interrupted):
            signum = signum or error.signum
        tracker = self.tracker
        try:
            children = tracker.children()
            if error is not None and signum is None and not children and (
                    is_hydra_config_error(error) or (isinstance(error, SystemExit) and error.code == 2)):
                # No job ran: a typo Hydra reported while composing the jobs, or a plugin setting refused (exit 2)
                # when Hydra built the launcher or sweeper. Like a bad command line for a single run, it leaves no
                # run behind.
                tracker.delete()
                (self.sweep_dir / PARENT_RUN_FILE).unlink(missing_ok=True)
                _exit_code = 2
                return _exit_code
            if signum is not None:
                status, reason = "KILLED", f"interrupted ({signals.name(signum)})"
            elif error is not None:
                status, reason = "FAILED", describe(error)
            else:
                status, reason = "FINISHED", None
            if reason:
                print(f"rmlab: sweep {'interrupted' if signum else 'stopped'}: {reason}: closing parent run "
                      f"{self.run_id}", flush=True)
            failed_jobs = 0
            try:
                status_of, notes = self._close_lost_children(tracker, children, early=status != "FINISHED",
                                                            interrupted=signum is not None, reason=reason)
                failed_jobs = sum(1 for s in status_of.values() if s == "FAILED")
                notes += self._unstarted(len(children), status != "FINISHED")
                failures = self.report(tracker, children, status_of, notes)
                tracker.set_tags({"failures": str(failures), **({"error": reason} if reason else {})})
            except Exception as err:  # the parent must still be closed
                log.error(f"Sweep summary failed: {type(err).__name__}: {err}")
                tracker.set_tags({"error": f"{reason + '; ' if reason else ''}summary failed: "
                                           f"{type(err).__name__}: {err}"})
            tracker.finish(status)
            if signum is not None:
                _exit_code = 128 + signum
            elif error is not None:
                _exit_code = 2 if isinstance(error, ConfigError) else 1
            else:
                _exit_code = 1 if failed_jobs else 0
            return _exit_code
        finally:
            self._release()

    def _release(self) -> None:
        global _open
        if self._signals is not None:
            self._signals.__exit__(None, None, None)
            self._signals = None
        atexit.unregister(self._at_exit)
        if self._lock is not None:
            self._lock.release()
        if _open is self:
            _open = None

    def _close_lost_children(self, tracker: Any, children: list, early: bool, interrupted: bool,
                             reason: str | None) -> tuple[dict[str, str], list[str]]:
        """Close the children still RUNNING whose job cannot close them any more; return every child's status and the
        notes for the summary. When the sweep ended normally every job has returned, so a RUNNING child lost its
        process. When it stopped early, jobs in processes that still exist get ``LOST_WAIT_S`` to close their own
        runs; runs of other hosts (a cluster) are left to their jobs."""
        status_of = {run.info.run_id: run.info.status for run in children}
        notes: list[str] = []
        running = [run for run in children if run.info.status == "RUNNING"]
        if early and running:
            deadline = time.monotonic() + LOST_WAIT_S
            while any(processes.recorded_alive(r.data.tags) for r in running) and time.monotonic() < deadline:
                time.sleep(0.5)
                running = [r for r in running if tracker.get(r.info.run_id).info.status == "RUNNING"]
            for run in children:
                status_of[run.info.run_id] = tracker.get(run.info.run_id).info.status
        elsewhere = 0
        for run in running:
            if status_of[run.info.run_id] != "RUNNING":
                continue
            alive = processes.recorded_alive(run.data.tags)
            if early and alive is not False and run.data.tags.get(processes.PID_TAG) != str(os.getpid()):
                elsewhere += 1  # still running on its own (another host, a detached process): it closes itself
                continue
            if interrupted:
                status, why = "KILLED", "its process was stopped with the interrupted sweep"
            elif early:
                status, why = "FAILED", f"its process ended without closing the run (the sweep stopped: {reason})"
            else:
                status, why = "FAILED", "the job ended without closing its run (its process died)"
            tracker.end_run(run.info.run_id, status, why)
            status_of[run.info.run_id] = status
        if elsewhere:
            notes.append(f"{elsewhere} job(s) still RUNNING in other processes or hosts; they close their own runs.")
        return status_of, notes

    def _unstarted(self, started: int, early: bool) -> list[str]:
        if not early:
            return []
        if self.planned_jobs is not None and self.planned_jobs > started:
            missing = self.planned_jobs - started
            return [f"{missing} of {self.planned_jobs} jobs never started. Run the same command again to run them "
                    "(finished jobs are reused, not trained again)."]
        return ["The sweep stopped before all its jobs ran. Run the same command again to run the rest (finished "
                "jobs are reused, not trained again)."]

    def _at_exit(self) -> None:
        """Last resort, when the sweep was not closed by the entry point (a program driving Hydra itself)."""
        if not self._closing:
            self.close(RuntimeError("the process exited before the sweep ended"))


def close_current(error: BaseException | None) -> int | None:
    """Close the parent run this process has open, if any (the entry point, when the sweep stopped early); returns
    the exit code it decided."""
    parent = _open
    return parent.close(error) if parent is not None else None


def reset_exit_code() -> None:
    global _exit_code
    _exit_code = 0

