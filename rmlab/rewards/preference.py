"""Preference rewards (output kind ``pair``: scores (B, 2) of (chosen, rejected); targets (B, 2) true rewards or NaN;
and ``sequence_pair``, where the scores are the preference loss's implicit rewards and the targets NaN).

- ``preference_accuracy``: fraction of pairs ranked right (``s_c > s_r``; a tie counts as wrong); per sample.
- ``reward_margin``: mean ``s_c - s_r``; per sample. Unbounded: it also grows by just scaling the scores up.
- ``true_reward_spearman``: Spearman correlation of every item's score with its hidden true reward, over all items
  of the epoch; only on tasks that know true rewards (``TaskInfo.true_reward``).
- ``preference_neg_ece``: negative ECE of ``p = sigmoid(s_c - s_r)``, the model's probability that chosen wins.
  The pair is a two-class problem whose answer is always "chosen": the predicted side is the likelier one,
  confidence ``max(p, 1 - p)``, correct when that side is chosen (p = 0.5 counts as predicting chosen). That is
  top-label ECE over ``softmax(s_c, s_r)`` with target class 0, which ``MulticlassCalibrationError`` computes.

Every metric is an ``AdaptedMetric`` (raw output in, higher is better) over an inner metric that keeps its state on
device: no host read in ``update``.
"""

import warnings
from typing import ClassVar

import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassCalibrationError
from torchmetrics.regression import SpearmanCorrCoef

from rmlab.errors import IncompatibleError
from rmlab.kinds import PAIR, SEQUENCE_PAIR, TaskInfo
from rmlab.rewards.base import Reward
from rmlab.rewards.metrics import AdaptedMetric, check_bins, softmax


def score_margin(output: torch.Tensor) -> torch.Tensor:
    """``s_c - s_r`` (B,) from pair scores (B, 2), in at least float32."""
    output = output.to(torch.promote_types(output.dtype, torch.float32))
    return output[:, 0] - output[:, 1]


def won(margin: torch.Tensor) -> torch.Tensor:
    """1.0 where chosen scored strictly higher, else 0.0."""
    return (margin > 0).to(margin.dtype)


class MeanOf(Metric):
    """Mean over all samples of ``fn(value)`` (``fn`` None: the value itself); the target is not used.

    Not torchmetrics' ``MeanMetric``: its ``update(value, weight)`` would take the pair targets as weights.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, fn=None) -> None:  # fn: a module-level function, so the metric pickles
        super().__init__()
        self.fn = fn
        self.add_state("total", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, target: torch.Tensor) -> None:
        value = value if self.fn is None else self.fn(value)
        self.total += value.sum().to(self.total.dtype)
        self.count += value.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class ItemSpearman(SpearmanCorrCoef):
    """Spearman over items: scores (B, 2) and true rewards (B, 2) are flattened to 2B items."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        dtype = torch.promote_types(preds.dtype, torch.float32)  # torchmetrics wants equal float dtypes
        super().update(preds.reshape(-1).to(dtype), target.reshape(-1).to(dtype))


class ChosenCalibrationError(MulticlassCalibrationError):
    """Top-label ECE of two-class probabilities (B, 2) whose true class is always 0 (chosen); targets ignored."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(preds, torch.zeros(preds.shape[0], dtype=torch.long, device=preds.device))


class _PreferenceReward(Reward):
    """Shared by the preference rewards: accepts pair scores, a reward model's or, on a language model's preference
    pairs (``sequence_pair``), the preference loss's implicit rewards of (chosen, rejected)."""

    accepts: ClassVar[tuple[str, ...]] = (PAIR, SEQUENCE_PAIR)

    def metric(self, info: TaskInfo) -> AdaptedMetric:
        self.check_task(info)
        return self._metric()

    def _metric(self) -> AdaptedMetric:  # pragma: no cover - abstract
        raise NotImplementedError


class PreferenceAccuracy(_PreferenceReward):
    """Fraction of pairs where chosen scores strictly higher; per sample 1.0 or 0.0."""

    has_per_sample: ClassVar[bool] = True

    def _metric(self) -> AdaptedMetric:
        return AdaptedMetric(MeanOf(won), score_margin)

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return won(score_margin(output))


class RewardMargin(_PreferenceReward):
    """Mean score margin ``s_c - s_r``; per sample the margin."""

    has_per_sample: ClassVar[bool] = True

    def _metric(self) -> AdaptedMetric:
        return AdaptedMetric(MeanOf(), score_margin)

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return score_margin(output)


def _tasks_with_true_reward() -> list[str]:
    """Task options whose class declares ``true_reward = True`` (imported lazily: only an error message needs it)."""
    from hydra.utils import get_class

    from rmlab.build import group_options

    names = []
    for option, target in group_options("task").items():
        try:
            if getattr(get_class(target), "true_reward", False) is True:
                names.append(option)
        except Exception:  # an unimportable user config is not a choice to offer
            continue
    return sorted(names)


class TrueRewardSpearman(_PreferenceReward):
    """Spearman rank correlation between the model's item scores and the items' hidden true rewards (exact: keeps
    the epoch's scores until ``compute``). Measures whether the model recovered the reward's ordering of ALL items,
    not only within the pairs it saw."""

    def check_task(self, info: TaskInfo) -> None:
        if info.output_kind in (PAIR, SEQUENCE_PAIR) and not info.true_reward:
            raise IncompatibleError(
                f"reward={self.name} needs a task that knows each item's true reward, and task={info.name} does not "
                f"(its targets are NaN). Tasks with true rewards: {', '.join(_tasks_with_true_reward()) or '(none)'}; "
                f"on this task use reward=preference_accuracy"
            )

    def _metric(self) -> AdaptedMetric:
        with warnings.catch_warnings():  # the "saves all targets and predictions" warning: the known cost
            warnings.filterwarnings("ignore", message=".*will save all targets and predictions")
            return AdaptedMetric(ItemSpearman())


class PreferenceNegECE(_PreferenceReward):
    """Negative expected calibration error of P(chosen wins) = sigmoid(s_c - s_r) (L1, top-label, ``n_bins``
    equal-width bins; see the module docstring)."""

    def __init__(self, n_bins: int = 15, name: str | None = None) -> None:
        super().__init__(name)
        self.n_bins = check_bins(self.name, n_bins)

    def _metric(self) -> AdaptedMetric:
        # softmax(s_c, s_r) = (sigmoid(d), sigmoid(-d)): the two sides' probabilities.
        inner = ChosenCalibrationError(2, n_bins=self.n_bins, norm="l1", validate_args=False)
        return AdaptedMetric(inner, softmax, sign=-1.0)
