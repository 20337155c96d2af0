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


def command_overrides() -> list[str]:
    """This job's command-line overrides (``loss.delta=0.5``); in a sweep also the sweep's own, as the user typed
    them (Hydra rewrites a job's numbers: ``1e-4`` reaches the job as ``0.0001``), read from the ``multirun.yaml``
    that Hydra's sweeper writes into the sweep folder. Empty outside a Hydra app."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except ValueError:
        return []
    overrides = list(hc.overrides.task)
    saved = Path(hc.sweep.dir) / "multirun.yaml"
    if hc.mode is not None and hc.mode.name == "MULTIRUN" and saved.is_file():
        try:
            overrides += [str(o) for o in OmegaConf.load(saved).hydra.overrides.task]
        except Exception:  # an unreadable file only costs the typed spelling
            pass
    return overrides


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


def git_commit() -> str | None:
    """The commit checked out in the current directory; None outside a git repository (or without git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def git_tags() -> dict[str, str]:
    """MLflow's git tag, only where there is a commit: the UI shows it as a chip beside the source, and a chip reading
    "unknown" would be noise."""
    commit = git_commit()
    return {"mlflow.source.git.commit": commit} if commit else {}


def run_tags(cfg: DictConfig, context: dict[str, Any]) -> dict[str, str]:
    """The tags DESIGN.md lists, plus the config hash (a sweep skips jobs that already FINISHED with it) and, inside a
    sweep, the sweep id (its directory), the job number and the job's own overrides."""
    tags = {
        "task": cfg.task.name, "loss": cfg.loss.name, "reward": cfg.reward.name, "seed": str(cfg.seed),
        "feedback": cfg.feedback.name, "model": cfg.model.name, "optimizer": cfg.optimizer.name,
        "rmlab_version": rmlab.__version__, **git_tags(),
        "mlflow.source.name": "rmlab", "command": command_line(), "rmlab.config_hash": config_hash(cfg),
    }
    if context.get("multirun"):
        tags.update({"sweep_id": context["sweep_dir"], "rmlab.job_num": str(context["job_num"]),
                     "rmlab.overrides": " ".join(context["overrides"])})
    return tags
