"""Classification rewards (output kind ``logits``): accuracy, macro F1 / precision / recall, macro one-vs-rest
AUROC, and negative expected calibration error.

Each builds a metric wrapped in ``AdaptedMetric``, which takes raw logits: torchmetrics objects with
``validate_args=False`` (the task already guarantees shapes and label range, and the checks cost host syncs every
step), except macro F1 / precision / recall, whose torchmetrics versions sync on CUDA (see ``MacroScore``).
Label-based metrics get the logits unchanged (they argmax, and softmax would not change the argmax);
probability-based ones (AUROC, ECE) get an explicit softmax.
"""

from typing import ClassVar, Literal

import torch
from torch.nn.functional import one_hot
from torchmetrics import Metric
from torchmetrics.classification import (
    BinaryAUROC,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCalibrationError,
)

from rmlab.errors import check
from rmlab.kinds import LOGITS, TaskInfo
from rmlab.rewards.base import Reward
from rmlab.rewards.metrics import AdaptedMetric, check_bins, positive_class_prob, softmax


class _ClassificationReward(Reward):
    """Shared by every classification reward: accepts logits and needs a task with at least 2 classes."""

    accepts: ClassVar[tuple[str, ...]] = (LOGITS,)

    def check_task(self, info: TaskInfo) -> None:
        check(
            info.num_classes is not None and info.num_classes >= 2,
            f"reward {self.name!r} needs a classification task with num_classes >= 2; task {info.name!r} has "
            f"num_classes={info.num_classes}",
        )

    def metric(self, info: TaskInfo) -> AdaptedMetric:
        self.check_task(info)
        return self._metric(info.num_classes)

    def _metric(self, num_classes: int) -> AdaptedMetric:
        raise NotImplementedError


class Accuracy(_ClassificationReward):
    """Fraction of samples whose argmax is the target; per sample, 1.0 if right else 0.0."""

    has_per_sample: ClassVar[bool] = True

    def _metric(self, num_classes: int) -> AdaptedMetric:
        # average="micro" is plain accuracy (torchmetrics' multiclass default is macro, i.e. balanced accuracy).
        return AdaptedMetric(MulticlassAccuracy(num_classes, average="micro", validate_args=False))

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output.argmax(dim=1) == target).to(output.dtype)


class MacroScore(Metric):
    """Macro precision, recall or F1 from per-class counts, averaged over the classes seen in targets or predictions
    (as scikit-learn's ``average="macro"``; a class with a zero denominator scores 0).

    Not torchmetrics' ``Multiclass{F1Score,Precision,Recall}``: their update builds the confusion matrix with
    ``torch.bincount``, which on CUDA reads the input's min and max back to the host, a sync every training step.
    One-hot sums here stay on device.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, stat: Literal["precision", "recall", "f1"]) -> None:
        super().__init__()
        if stat not in ("precision", "recall", "f1"):
            raise ValueError(f"stat must be 'precision', 'recall' or 'f1', got {stat!r}")
        self.num_classes = num_classes
        self.stat = stat
        for state in ("hits", "predicted", "actual"):  # per class: true positives, tp + fp, tp + fn
            self.add_state(state, torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        predicted = output.argmax(dim=1)
        # one_hot with an explicit num_classes checks the range on CPU only (on CUDA it relies on a device assert)
        actual_oh = one_hot(target, self.num_classes)
        self.hits += (actual_oh * (predicted == target).unsqueeze(1)).sum(0)
        self.predicted += one_hot(predicted, self.num_classes).sum(0)
        self.actual += actual_oh.sum(0)

    def compute(self) -> torch.Tensor:
        hits = self.hits.double()
        denominator = {"precision": self.predicted, "recall": self.actual, "f1": (self.predicted + self.actual) / 2}
        per_class = hits / denominator[self.stat].double().clamp(min=1)  # 0/0 -> 0 (sklearn's zero_division=0)
        seen = (self.predicted + self.actual) > 0
        return ((per_class * seen).sum() / seen.sum().clamp(min=1)).float()


class _MacroReward(_ClassificationReward):
    """Macro average of a per-class label statistic; no per-sample form (it does not decompose over samples)."""

    _stat: ClassVar[Literal["precision", "recall", "f1"]]

    def _metric(self, num_classes: int) -> AdaptedMetric:
        return AdaptedMetric(MacroScore(num_classes, self._stat))


class F1(_MacroReward):
    """Macro-averaged F1 score over classes."""

    _stat = "f1"


class Precision(_MacroReward):
    """Macro-averaged precision over classes."""

    _stat = "precision"


class Recall(_MacroReward):
    """Macro-averaged recall over classes (balanced accuracy)."""

    _stat = "recall"


class AUROC(_ClassificationReward):
    """Macro one-vs-rest area under the ROC curve on softmax probabilities.

    Exact (``thresholds=None``): the metric keeps every probability of the epoch on device until ``compute``. With 2
    classes the macro OvR average equals the binary AUROC of P(class 1) (class 0's curve is its mirror), so the
    binary metric is used: one curve instead of two.
    """

    def _metric(self, num_classes: int) -> AdaptedMetric:
        if num_classes == 2:
            return AdaptedMetric(BinaryAUROC(thresholds=None, validate_args=False), positive_class_prob)
        inner = MulticlassAUROC(num_classes, average="macro", thresholds=None, validate_args=False)
        return AdaptedMetric(inner, softmax)


class NegECE(_ClassificationReward):
    """Negative expected calibration error (L1, top-label): ``-sum_b |acc_b - conf_b| * n_b / n``.

    Confidence is the max softmax probability; bins are ``n_bins`` equal-width intervals of [0, 1].
    """

    def __init__(self, n_bins: int = 15, name: str | None = None) -> None:
        super().__init__(name)
        self.n_bins = check_bins(self.name, n_bins)

    def _metric(self, num_classes: int) -> AdaptedMetric:
        inner = MulticlassCalibrationError(num_classes, n_bins=self.n_bins, norm="l1", validate_args=False)
        return AdaptedMetric(inner, softmax, sign=-1.0)
