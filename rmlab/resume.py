"""``resume=<run id>``: which run to continue, whether it can be, and from which file.

A tracked run records where its ``last.ckpt`` is (tag ``rmlab.last_checkpoint``; the file itself is
``rmlab.last_checkpoint``'s business). ``resume_point`` checks, before anything is created, that the run exists in the
store, was interrupted (KILLED or FAILED, or RUNNING with its process gone), has its ``last.ckpt``, and was started
with the same config as this command in every key that decides the result; any problem is a ``ConfigError`` (one
line, exit status 2). ``rmlab.tracking.Tracker.reopen`` then makes the same run RUNNING again, and training goes on
from the checkpoint (``rmlab.run``).

Imports neither torch nor Lightning.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmlab import processes
from rmlab.errors import ConfigError

LAST_TAG = "rmlab.last_checkpoint"  # the path of the run's last.ckpt
RESUMED_TAG = "rmlab.resumed_from"  # set on a resumed run: the checkpoint it went on from
# Keys that do not change the numbers a run produces: where and how it is recorded, how it is shown, how often it
# is checkpointed. Every other key must be the run's own.
FREE_KEYS = ("resume", "run_name", "experiment", "trainer.enable_progress_bar", "trainer.num_threads",
             "trainer.checkpoint.every_n_epochs", "trainer.checkpoint.min_interval_s")
FREE_PREFIXES = ("logger.",)
RESUMABLE = ("KILLED", "FAILED")


@dataclass(frozen=True)
class ResumePoint:
    run_id: str
    checkpoint: Path
    experiment: str


def decides_result(key: str) -> bool:
    return key not in FREE_KEYS and not key.startswith(FREE_PREFIXES)


def config_differences(stored: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """The keys (that decide the result) whose value differs between a run's params and this config's, each as
    ``key: stored -> now``. Numbers compare by value (a param holds the number as the user typed it, ``1e-4``)."""
    differences = []
    for key in sorted(set(stored) | set(current)):
        if not decides_result(key):
            continue
        before, now = stored.get(key, "<absent>"), current.get(key, "<absent>")
        if not _same(before, now):
            differences.append(f"{key}: {before} -> {now}")
    return differences


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


def resume_point(cfg: DictConfig, client: Any, check_status: bool = True) -> ResumePoint:
    """Check that ``cfg.resume`` names a run this command can continue (see the module docstring); ConfigError if
    not. ``client``: an MlflowClient on the run's store (which exists: the caller checked). ``check_status`` False
    skips the run's status (a DDP rank other than 0, started after rank 0 reopened the run)."""
    from mlflow.exceptions import MlflowException

    from rmlab.tracking import flatten

    run_id = cfg.resume
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"resume={run_id}: no such run in the tracking store (give the run id MLflow shows, "
                          "from the same logger.tracking_uri)") from None
    status, tags = run.info.status, run.data.tags
    if not check_status:
        pass
    elif status == "RUNNING":
        alive = processes.recorded_alive(tags)
        if alive is not False:
            where = f"{tags.get(processes.HOST_TAG)}:{tags.get(processes.PID_TAG)}"
            raise ConfigError(
                f"resume={run_id}: the run is still RUNNING in process {where}" + (
                    "" if alive else f" (another host: once its job is gone, close it with python -m rmlab.tidy "
                                     f"--close {run_id} --status KILLED)"))
    elif status not in RESUMABLE:
        raise ConfigError(f"resume={run_id}: the run is {status}; only an interrupted run (KILLED or FAILED) can be "
                          "resumed")
    if LAST_TAG not in tags:
        raise ConfigError(f"resume={run_id}: the run has no last.ckpt (it wrote none: untracked, "
                          "trainer.checkpoint.every_n_epochs=0, or stopped before its first checkpoint)")
    checkpoint = Path(tags[LAST_TAG])
    if not checkpoint.is_file():
        raise ConfigError(f"resume={run_id}: its last.ckpt {checkpoint} does not exist (it is written at the end of "
                          "an epoch once trainer.checkpoint.min_interval_s seconds of training have passed, and when "
                          "a run stops after a whole epoch, on the machine that ran the run)")
    current = flatten(OmegaConf.to_container(cfg, resolve=True))
    differences = config_differences(run.data.params, current)
    if differences:
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        raise ConfigError(f"resume={run_id}: the config differs from the run's in keys that decide the result "
                          f"({shown}); resume with the run's own config")
    experiment = client.get_experiment(run.info.experiment_id).name
    return ResumePoint(run_id, checkpoint, experiment)
