"""Where a run comes from: its name, the command line, the git commit, its config's identity, its place in a sweep.

These become the run's MLflow tags (DESIGN.md lists them); they are cheap to compute and import nothing heavy.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import rmlab


def run_name(cfg: DictConfig) -> str:
    return cfg.run_name or f"{cfg.task.name}-{cfg.loss.name}-{cfg.reward.name}-s{cfg.seed}"


def command_line() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
        return "python -m rmlab " + " ".join(shlex.quote(o) for o in overrides)
    except ValueError:
        return " ".join(shlex.quote(a) for a in sys.argv)


def job_context() -> dict[str, Any]:
    """Where this job stands in Hydra: multirun or not, its sweep dir, job number, its overrides, and how many jobs
    the launcher runs at once (empty outside a Hydra app)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except ValueError:
        return {"multirun": False}
    multirun = hc.mode == RunMode.MULTIRUN
    return {
        "multirun": multirun,
        "sweep_dir": str(Path(hc.sweep.dir).resolve()) if multirun else None,
        "job_num": hc.job.num if multirun else None,
        "overrides": [o for o in hc.overrides.task if not o.startswith(("++optuna.", "+optuna."))],
        "parallel_jobs": int(hc.launcher.get("n_jobs") or 1) if multirun else 1,
    }


def config_hash(cfg: DictConfig) -> str:
    """Identity of a job's config (the resolved config minus what only says where the job sits in a sweep)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("optuna", None)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(cfg: DictConfig, context: dict[str, Any]) -> dict[str, str]:
    """The tags DESIGN.md lists, plus the config hash (a sweep skips jobs that already FINISHED with it) and, inside a
    sweep, the sweep id (its parent run's id, unique per invocation), the sweep directory, the job number and the
    job's own overrides."""
    tags = {
        "task": cfg.task.name, "loss": cfg.loss.name, "reward": cfg.reward.name, "seed": str(cfg.seed),
        "feedback": cfg.feedback.name, "model": cfg.model.name, "optimizer": cfg.optimizer.name,
        "rmlab_version": rmlab.__version__, "mlflow.source.git.commit": git_commit(),
        "mlflow.source.name": "rmlab", "command": command_line(), "rmlab.config_hash": config_hash(cfg),
    }
    if context.get("multirun"):
        tags.update({"sweep_id": context.get("parent_run_id") or "", "rmlab.sweep_dir": context["sweep_dir"],
                     "rmlab.job_num": str(context["job_num"]),
                     "rmlab.overrides": " ".join(context["overrides"])})
    return tags
