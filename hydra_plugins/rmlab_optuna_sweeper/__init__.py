"""A Hydra sweeper on current Optuna (``hydra/sweeper=rmlab_optuna``), with resumable studies and in-job pruning.

The official hydra-optuna-sweeper pins optuna<3, whose sqlite storage breaks with SQLAlchemy 2; this plugin drives
Optuna 5 through ask/tell. See ``optuna_sweeper`` for the behaviour and ``config`` for the keys.
"""

from hydra_plugins.rmlab_optuna_sweeper import config as _config  # noqa: F401  (registers the config)
from hydra_plugins.rmlab_optuna_sweeper.optuna_sweeper import report_and_should_prune

__all__ = ["report_and_should_prune"]
