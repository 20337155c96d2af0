"""Sweeps as MLflow sees them: one parent run per multirun, each job a child run.

The launching process opens the parent run (``SweepCallback.on_multirun_start``) before any job starts, after creating
the store and the experiment once (a fresh sqlite store opened by parallel jobs fails: FACTS.md), and writes its id to
``<sweep dir>/mlflow_parent_run_id``; each job reads that file, so the link works for every launcher whose jobs see
the sweep directory (in-process, joblib, submitit).
"""

import time
from pathlib import Path

PARENT_RUN_FILE = "mlflow_parent_run_id"


def parent_run_id(sweep_dir: str | Path) -> str | None:
    """The parent run of the sweep writing to ``sweep_dir``, if its callback opened one."""
    path = Path(sweep_dir) / PARENT_RUN_FILE
    return path.read_text().strip() if path.is_file() else None


def reuse_finished_run(tracker, cfg, run_name: str, tags: dict[str, str], parent_run_id: str) -> dict | None:
    """If a run with this job's config hash already FINISHED in the experiment (an interrupted sweep re-run), record
    a child of the new sweep that points at it (tag ``rmlab.reused_from``) and carries its params and final metrics,
    and return those metrics; else None. The job is then not trained again."""
    from mlflow.entities import Metric, Param

    tracker.experiment_id = tracker.experiment_id or _experiment_id(tracker)
    if tracker.experiment_id is None:
        return None
    found = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`rmlab.config_hash` = '{tags['rmlab.config_hash']}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        return None
    original = found[0]
    tracker.start(run_name, {**tags, "rmlab.reused_from": original.info.run_id}, parent_run_id=parent_run_id)
    metrics = dict(original.data.metrics)
    tracker.client.log_batch(
        tracker.run_id, params=[Param(k, v) for k, v in original.data.params.items()],
        metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in metrics.items()], synchronous=True)
    tracker.finish("FINISHED")
    return {**metrics, "run_id": tracker.run_id, "reused_from": original.info.run_id}


def _experiment_id(tracker) -> str | None:
    found = tracker.client.get_experiment_by_name(tracker.experiment)
    return found.experiment_id if found else None
