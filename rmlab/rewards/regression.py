"""Regression rewards (output kind ``value``): negative MSE, negative MAE, R^2 and Spearman rank correlation.

Error metrics are negated (``AdaptedMetric(sign=-1)``) so that higher is better like every reward. The two that
decompose over samples (``neg_mse``, ``neg_mae``) also give per-sample rewards whose mean is the aggregate.
"""

import warnings
from typing import ClassVar

import torch
from torchmetrics import Metric
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score, SpearmanCorrCoef

from rmlab.kinds import VALUE, TaskInfo
from rmlab.rewards.base import Reward
from rmlab.rewards.metrics import AdaptedMetric


class _RegressionReward(Reward):
    """Shared by every regression reward: accepts a value per sample; ``_inner`` and ``_sign`` pick the metric."""

    accepts: ClassVar[tuple[str, ...]] = (VALUE,)
    _inner: ClassVar[type[Metric]]
    _sign: ClassVar[float] = 1.0

    def metric(self, info: TaskInfo) -> AdaptedMetric:
        return AdaptedMetric(self._inner(), sign=self._sign)


class NegMSE(_RegressionReward):
    """Negative mean squared error; per sample ``-(pred - target)^2``."""

    has_per_sample: ClassVar[bool] = True
    _inner = MeanSquaredError
    _sign = -1.0

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -(output - target).square()


class NegMAE(_RegressionReward):
    """Negative mean absolute error; per sample ``-|pred - target|``."""

    has_per_sample: ClassVar[bool] = True
    _inner = MeanAbsoluteError
    _sign = -1.0

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -(output - target).abs()


class R2(_RegressionReward):
    """Coefficient of determination ``1 - SS_res / SS_tot`` (1 is perfect; 0 is predicting the mean)."""

    _inner = R2Score


class Spearman(_RegressionReward):
    """Spearman rank correlation between predictions and targets (exact: keeps the epoch's values until compute)."""

    _inner = SpearmanCorrCoef

    def metric(self, info: TaskInfo) -> AdaptedMetric:
        # torchmetrics warns on every construction that the values are buffered; that is the documented cost of an
        # exact rank correlation, so don't repeat it in every run's log.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all targets and predictions")
            return super().metric(info)
