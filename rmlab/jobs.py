"""The Hydra task function's body: a single run, or one job of a sweep.

- A single run: its errors become one line and an exit code (2 for a config error, 1 for a failed run); an interrupt
  propagates to the entry point (``rmlab.exits``), which exits 130 or 143.
- A sweep job (``sweep_job``) never raises for its own failure, so the sweep goes on: a job that fails before its run
  exists (whatever the exception: a bad value, a user's class that raises, a broken config) is recorded as a FAILED
  child of the sweep here, so the summary counts every job that started. A job of a sweep being interrupted does not
  start. An interrupt stops the sweep when the job runs in the sweep's own process; in a worker process the job
  returns, and the launching process stops the sweep (``rmlab.sweep_parent``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rmlab import lifecycle, processes, signals
from rmlab.credentials import redact
from rmlab.errors import ConfigError, RmlabError
from rmlab.lifecycle import is_pruned
from rmlab.signals import Interrupted

log = logging.getLogger("rmlab")

task_started = False  # whether the Hydra task function has been entered in this process (the entry point asks)

Work = Callable[[DictConfig], Mapping[str, Any]]


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
        print(f"rmlab: error: {redact(str(err))}", file=sys.stderr)
        raise SystemExit(2) from None
    except RmlabError as err:
        print(f"rmlab: run failed: {redact(str(err))}", file=sys.stderr)
        raise SystemExit(1) from None
    return returned_metrics(results)


def sweep_job(cfg: DictConfig, context: dict[str, Any], work: Work) -> dict[str, float] | None:
    """One job of a multirun. Returns its metrics, or None when it failed or was stopped (the sweep goes on with the
    other jobs; its run, or a FAILED child recorded here, says what happened). An Optuna pruning is raised for the
    sweeper to count. An interrupt propagates when the job runs in the sweep's own process (it stops the sweep);
    in a worker process the job returns and the launching process stops the sweep (see ``rmlab.sweep_parent``)."""
    from rmlab.sweep_parent import launched_here, stop_requested

    sweep_dir = Path(context["sweep_dir"])
    in_launcher = launched_here()
    if stop_requested(sweep_dir) is not None:
        print(f"rmlab: job {context['job_num']} not started: the sweep was interrupted", file=sys.stderr)
        return None
    opened = _runs_opened()
    lifecycle.job_sweep_dir = sweep_dir
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
        print(f"rmlab: job failed (job {context['job_num']}): {type(err).__name__}: {redact(str(err))}",
              file=sys.stderr)
        return None
    finally:
        lifecycle.job_sweep_dir = None


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
    problem: a name or tags that cannot be computed fall back to what places the job in its sweep (its number and
    overrides, so the summary counts it in its cell); a job whose ``experiment`` or ``logger`` is the invalid part is
    recorded in its parent's experiment and store."""
    import shlex

    from rmlab.provenance import run_name, run_tags
    from rmlab.sweep_parent import parent_run_id
    from rmlab.tracking import Tracker

    parent = parent_run_id(context["sweep_dir"])
    if not parent:  # an untracked sweep
        return
    context = {**context, "parent_run_id": parent}
    name = _safe(lambda: str(run_name(cfg)), f"job-{context['job_num']}")
    tags = _safe(lambda: run_tags(cfg, context), None) or {
        "sweep_id": parent, "rmlab.sweep_dir": str(context["sweep_dir"]), "rmlab.job_num": str(context["job_num"]),
        "rmlab.overrides": shlex.join(context.get("overrides", [])), "mlflow.source.name": "rmlab"}
    uri = _safe(lambda: cfg.logger.get("tracking_uri") if cfg.logger.get("name") == "mlflow" else None)
    experiment = _safe(lambda: cfg.get("experiment"))
    tracker = Tracker(uri if isinstance(uri, str) and uri else None, "")
    try:
        if isinstance(experiment, str) and experiment.strip():
            tracker.experiment = experiment
        else:
            experiment_id = tracker.get(parent).info.experiment_id
            tracker.experiment = tracker.client.get_experiment(experiment_id).name
    except Exception as lookup:  # the parent is not in that store either: nothing to attach the job to
        log.warning(f"rmlab: failed job {context['job_num']} not recorded: {type(lookup).__name__}: {lookup}")
        return
    tracker.start(name, {**tags, **processes.identity()}, parent_run_id=parent)
    tracker.finish("FAILED", error=f"{type(err).__name__}: {err}")
