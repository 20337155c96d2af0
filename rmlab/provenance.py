"""Where a run comes from: its name, the command line, its config's identity, the code and data it ran on, its place
in a sweep.

These become the run's MLflow tags; they are cheap to compute and import nothing heavy (no torch, no MLflow).

The **reuse key** decides whether a sweep may hand back an earlier FINISHED run instead of training again: it is a
digest of everything that decides a run's numbers (the resolved config, rmlab's own source files and packaged
configs, the contents of the task's data file, the versions of the libraries that compute the result). The git
commit of the current directory is recorded for the reader only: outside a repository it is "unknown", and it never
sees uncommitted edits. When a part of the key cannot be known (a component whose ``_target_`` lives outside rmlab,
a data file that cannot be read) the run has no key and is never reused: in doubt, train.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from functools import lru_cache
from typing import Any

from omegaconf import DictConfig, OmegaConf

import rmlab
from rmlab.paths import CONFIG_DIR, read_yaml

# The libraries whose version can change a run's numbers (or how they are stored), as pip names them.
DEPENDENCIES = ("torch", "pytorch-lightning", "torchmetrics", "numpy", "scikit-learn", "pandas", "mlflow")
_PACKAGE = Path(rmlab.__file__).resolve().parent


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
    if hc.mode is not None and hc.mode.name == "MULTIRUN":
        try:  # read once per version of the file: parsing it again cost every job of a sweep about 50 ms
            overrides += [str(o) for o in read_yaml(saved)["hydra"]["overrides"]["task"]]
        except Exception:  # a missing or unreadable file only costs the typed spelling
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


def config_hash(cfg: DictConfig, resolved: dict[str, Any] | None = None) -> str:
    """Identity of a job's config (the resolved config minus what only says where the job sits in a sweep);
    ``resolved``: the config already resolved to a container, if the caller has it."""
    resolved = dict(OmegaConf.to_container(cfg, resolve=True) if resolved is None else resolved)
    resolved.pop("optuna", None)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _digest_files(files: list[tuple[str, Path]]) -> str:
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@lru_cache(maxsize=None)
def code_digest(package: Path = _PACKAGE, config_dir: Path = CONFIG_DIR) -> str:
    """A digest of rmlab's own source (every ``.py`` file of the package) and of its packaged configs: any edit,
    committed or not, installed or editable, changes it. Computed once per process (a few milliseconds)."""
    files = [(f"rmlab/{p.relative_to(package).as_posix()}", p) for p in package.rglob("*.py")
             if "__pycache__" not in p.parts]
    files += [(f"conf/{p.relative_to(config_dir).as_posix()}", p) for p in config_dir.rglob("*.yaml")]
    return _digest_files(sorted(files))


def file_digest(path: str | Path) -> str:
    """sha256 of a file's contents (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def data_digest(cfg: DictConfig) -> str | None:
    """The digest of the task's data file (``task.path``: csv, preference_file), None for a task without one."""
    path = cfg.task.get("path")
    return None if path is None else file_digest(Path(str(path)).expanduser())


def dependency_versions() -> dict[str, str]:
    """Python's and the result-deciding libraries' versions (read from the installed metadata, nothing imported)."""
    return dict(_dependency_versions())


@lru_cache(maxsize=1)
def _dependency_versions() -> tuple[tuple[str, str], ...]:
    """Read once per process: the modules a process has imported do not change when a package is reinstalled under
    it, so the first reading is the one that describes every run of the process (a sweep's jobs)."""
    versions = {"python": platform.python_version(), "rmlab": rmlab.__version__}
    for name in DEPENDENCIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return tuple(versions.items())


def _outside_targets(node: Any) -> list[str]:
    """``_target_`` values of the config that are not rmlab's own classes (a user's loss, say)."""
    if isinstance(node, dict):
        found = [str(node["_target_"])] if "_target_" in node and not str(node["_target_"]).startswith(
            "rmlab.") else []
        return found + [t for value in node.values() for t in _outside_targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in _outside_targets(value)]
    return []


def provenance(cfg: DictConfig, resolved: dict[str, Any] | None = None) -> dict[str, str]:
    """The tags that say which code, data and libraries a run used, and its reuse key (absent when any part of what
    decides the result is unknown: then the run is never reused). ``resolved``: as for ``config_hash``."""
    if resolved is None:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    tags = {"rmlab.code_digest": code_digest(),
            "rmlab.versions": " ".join(f"{k}={v}" for k, v in dependency_versions().items())}
    data = None
    try:
        data = data_digest(cfg)
    except OSError as err:  # unreadable now: no key, so no reuse
        tags["rmlab.no_reuse"] = f"data file: {type(err).__name__}: {err}"
    else:
        if data is not None:
            tags["rmlab.data_digest"] = data
    outside = _outside_targets(resolved)
    if outside:
        tags["rmlab.no_reuse"] = f"components from outside rmlab: {', '.join(sorted(set(outside)))}"
    if "rmlab.no_reuse" not in tags:
        parts = [config_hash(cfg, resolved), tags["rmlab.code_digest"], data or "", tags["rmlab.versions"]]
        tags["rmlab.reuse_key"] = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
    return tags


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
    """Task, loss, reward, seed, model, optimizer, feedback, versions, the git commit (for the reader), the command,
    the config hash, the provenance tags with the reuse key (a sweep does not train again a job whose key already
    FINISHED) and, inside a sweep, the sweep id (its parent run's id, unique per invocation), the sweep directory, the
    job number and the job's own overrides (quoted as a shell would, so a value with a space stays one override)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tags = {
        "task": cfg.task.name, "loss": cfg.loss.name, "reward": cfg.reward.name, "seed": str(cfg.seed),
        "feedback": cfg.feedback.name, "model": cfg.model.name, "optimizer": cfg.optimizer.name,
        "rmlab_version": rmlab.__version__, **git_tags(),
        "mlflow.source.name": "rmlab", "command": command_line(), "rmlab.config_hash": config_hash(cfg, resolved),
        **provenance(cfg, resolved),
    }
    if context.get("multirun"):
        tags.update({"sweep_id": context.get("parent_run_id") or "", "rmlab.sweep_dir": context["sweep_dir"],
                     "rmlab.job_num": str(context["job_num"]), "rmlab.overrides": shlex.join(context["overrides"])})
    return tags
