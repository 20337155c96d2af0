"""Config schema of the ``rmlab_optuna`` sweeper, registered as ``hydra/sweeper=rmlab_optuna``.

Keys follow the official hydra-optuna-sweeper where they overlap (direction, n_trials, n_jobs, sampler, storage,
study_name, params, pruner); ``objective`` is ours. This module imports no Optuna: Hydra imports every plugin module
at start-up, and ``--help`` should not pay for Optuna.
"""

from dataclasses import dataclass, field
from typing import Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class SamplerConf:
    # tpe | random | grid | cmaes (cmaes needs `pip install cmaes`).
    name: str = "tpe"
    # null: the root config's `seed`. A resumed study adds its trial count, so it does not redraw earlier points.
    seed: Optional[int] = None


@dataclass
class PrunerConf:
    # none | median | hyperband. Pruning happens inside the jobs (report_and_should_prune), so it needs a storage
    # that every job can open: the default sqlite file, or a database server for jobs on other machines.
    name: str = "none"
    # Steps a trial runs before it can be pruned (median: n_warmup_steps; hyperband: min_resource).
    n_warmup_steps: int = 0
    # Median only: trials that must finish before any trial is pruned.
    n_startup_trials: int = 5


@dataclass
class RmlabOptunaSweeperConf:
    _target_: str = "hydra_plugins.rmlab_optuna_sweeper.optuna_sweeper.RmlabOptunaSweeper"
    # maximize | minimize. rmlab's rewards are higher-is-better, hence maximize.
    direction: str = "maximize"
    # Total trials of the study: a rerun with the same study_name and storage only runs the missing ones.
    n_trials: int = 20
    # Trials launched per batch through the configured Hydra launcher (joblib, submitit, ...).
    n_jobs: int = 1
    sampler: SamplerConf = field(default_factory=SamplerConf)
    # Optuna storage URL. null: sqlite:///<directory of the MLflow sqlite store, else cwd>/optuna.db
    storage: Optional[str] = None
    study_name: str = "rmlab"
    # Key of the task function's returned dict to optimise (a float return is used as is). rmlab's default: the
    # validation reward of the weights each trial tested (its best epoch, or its last with checkpointing off).
    objective: str = "val/selected_reward"
    # key -> Hydra sweep syntax: interval(0.0001, 0.1), tag(log, interval(1e-5, 1e-1)), int(interval(16, 256)),
    # range(1, 5), choice(a, b, c). Sweeps given on the command line join these; plain overrides pass through.
    params: Dict[str, str] = field(default_factory=dict)
    pruner: PrunerConf = field(default_factory=PrunerConf)


ConfigStore.instance().store(
    group="hydra/sweeper", name="rmlab_optuna", node=RmlabOptunaSweeperConf, provider="rmlab_optuna_sweeper"
)
