"""Optuna pruning inside a job: report ``val/reward`` each epoch to the job's trial, stop hopeless trials.

The ``rmlab_optuna`` sweeper adds ``optuna.{study_name,storage,trial_number,objective,pruner}`` to each job's config;
this callback reopens the trial in that storage and raises ``optuna.TrialPruned`` when the study's pruner says so.
The run is then closed KILLED with the reason, and the sweeper records the trial as PRUNED.
"""

from typing import Any

import pytorch_lightning as pl


class OptunaPruning(pl.Callback):
    def __init__(self, optuna_cfg: Any, monitor: str = "val/reward") -> None:
        self.optuna_cfg = optuna_cfg
        self.monitor = monitor

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        from hydra_plugins.rmlab_optuna_sweeper import report_and_should_prune

        value = float(trainer.callback_metrics[self.monitor])
        if report_and_should_prune(self.optuna_cfg, trainer.current_epoch, value):
            import optuna

            raise optuna.TrialPruned(f"{self.monitor}={value:.4f} at epoch {trainer.current_epoch}")
