"""A sweep job whose process died (a killed worker, a lost node): its child run, closed FAILED with the reason.

A job closes its own run on every path it can see (FINISHED, FAILED, KILLED); a killed process sees none, and its run
would stay RUNNING. A launcher that learns of the death (``hydra/launcher=rmlab_ray``) calls ``record_lost_job``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def record_lost_job(cfg: DictConfig, sweep_dir: str, job_num: int, overrides: list[str], reason: str) -> str | None:
    """Close job ``job_num``'s child run FAILED with ``reason`` in its ``error`` tag, creating the child if the job
    died before opening it. Returns the run id; None when the sweep is not tracked (no parent run)."""
    from rmlab.credentials import redact
    from rmlab.provenance import run_name, run_tags
    from rmlab.sweep import parent_run_id
    from rmlab.tracking import MAX_TAG, client_for, get_or_create_experiment, resolve_tracking_uri

    parent = parent_run_id(sweep_dir)
    if parent is None or cfg.logger.name != "mlflow":
        return None
    uri = resolve_tracking_uri(cfg.logger.tracking_uri)
    client = client_for(uri)
    experiment_id = get_or_create_experiment(client, uri, str(cfg.experiment))
    found = client.search_runs([experiment_id], filter_string=(
        f"tags.mlflow.parentRunId = '{parent}' and tags.`rmlab.job_num` = '{job_num}'"))
    if found:
        run = found[0]
        if run.info.status != "RUNNING":  # the job closed its run before its process went away
            return run.info.run_id
        run_id = run.info.run_id
    else:
        context = {"multirun": True, "sweep_dir": str(Path(sweep_dir).resolve()), "job_num": job_num,
                   "overrides": [o for o in overrides if not o.startswith(("++optuna.", "+optuna."))]}
        tags = {**run_tags(cfg, context), "mlflow.parentRunId": parent}
        tags["command"] = "python -m rmlab " + " ".join(overrides)
        run_id = client.create_run(experiment_id, run_name=run_name(cfg),
                                   tags={k: redact(str(v))[:MAX_TAG] for k, v in tags.items()}).info.run_id
    client.set_tag(run_id, "error", reason[:MAX_TAG])
    client.set_terminated(run_id, "FAILED")
    return run_id
