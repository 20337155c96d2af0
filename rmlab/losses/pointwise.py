"""Regression-style (pointwise) losses: mse, mae, huber, smooth_l1, log_cosh; and the parameter checks all losses share.

Each loss is one elementwise function of the residual ``d = prediction - target``; ``PointwiseLoss`` owns the rest:

- kind ``value``: output (B,), target float (B,); loss = mean_b f(d_b).
- kind ``logits``: output (B, C) raw logits, target int64 (B,); the prediction is the softmax probability vector and
  the target its one-hot vector, and loss = mean_b sum_c f(p_bc - onehot_bc). So ``mae`` on logits is
  ``2 (1 - p_y)``, the noise-robust MAE of Ghosh et al. (2017), and ``mse`` on logits is the Brier score.

Everything is computed in float32 (``output.float()``) so the losses behave the same under bf16 autocast.
"""

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from rmlab.errors import ConfigError
from rmlab.kinds import LOGITS, VALUE
from rmlab.losses.base import Loss


def as_float(loss: str, param: str, value: Any) -> float:
    """``value`` as a float, or ConfigError naming the loss and parameter (a YAML typo should not be a TypeError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{loss}: {param} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{loss}: {param} must be finite, got {value!r}")
    return value


def positive_weights(loss: str, param: str, values: Any) -> torch.Tensor:
    """A list of positive floats (a YAML list arrives as an OmegaConf ListConfig) as a float32 tensor."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ConfigError(f"{loss}: {param} must be null or a non-empty list of floats > 0, got {values!r}")
    floats = [as_float(loss, param, v) for v in values]
    if any(v <= 0 for v in floats):
        raise ConfigError(f"{loss}: {param} must be a list of floats > 0, got {list(floats)!r}")
    return torch.tensor(floats, dtype=torch.float32)


class PointwiseLoss(Loss):
    """Base of regression-style losses: an elementwise ``_elementwise(d)`` of the float32 residual, reduced as above."""

    accepts: ClassVar[tuple[str, ...]] = (VALUE, LOGITS)

    def _elementwise(self, d: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = output.float()
        if output.dim() == 2:  # logits (B, C): compare probabilities with one-hot targets, sum over classes
            probs = output.softmax(dim=-1)
            onehot = F.one_hot(target.long(), num_classes=output.shape[-1]).to(probs.dtype)
            return self._elementwise(probs - onehot).sum(dim=-1).mean()
        return self._elementwise(output - target.to(output.dtype)).mean()


class MSE(PointwiseLoss):
    """Mean squared error, ``d^2`` (on logits: the Brier score)."""

    def _elementwise(self, d: torch.Tensor) -> torch.Tensor:
        return d.square()


class MAE(PointwiseLoss):
    """Mean absolute error, ``|d|`` (on logits: ``2 (1 - p_y)``, robust to label noise, Ghosh et al. 2017)."""

    def _elementwise(self, d: torch.Tensor) -> torch.Tensor:
        return d.abs()


class Huber(PointwiseLoss):
    """Huber loss: ``d^2 / 2`` for ``|d| < delta``, else ``delta (|d| - delta / 2)`` (as ``F.huber_loss``)."""

    def __init__(self, delta: float = 1.0) -> None:
        super().__init__()
        self.delta = as_float("huber", "delta", delta)
        if self.delta <= 0:
            raise ConfigError(f"huber: delta must be > 0, got {self.delta}")

    def _elementwise(self, d: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(d, torch.zeros_like(d), reduction="none", delta=self.delta)


class SmoothL1(PointwiseLoss):
    """Smooth L1: ``d^2 / (2 beta)`` for ``|d| < beta``, else ``|d| - beta / 2``; i.e. Huber(beta) / beta."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = as_float("smooth_l1", "beta", beta)
        # beta = 0 would be plain L1, which is already `mae`; > 0 keeps one meaning per config.
        if self.beta <= 0:
            raise ConfigError(f"smooth_l1: beta must be > 0, got {self.beta}")

    def _elementwise(self, d: torch.Tensor) -> torch.Tensor:
        return F.smooth_l1_loss(d, torch.zeros_like(d), reduction="none", beta=self.beta)


class LogCosh(PointwiseLoss):
    """``log cosh(d)``: quadratic near 0, linear in the tails."""

    def _elementwise(self, d: torch.Tensor) -> torch.Tensor:
        # log cosh(d) = d + softplus(-2d) - log 2: cosh overflows float32 at |d| ~ 89, this form never does.
        return d + F.softplus(-2.0 * d) - math.log(2.0)
