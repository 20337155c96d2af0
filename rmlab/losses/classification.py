"""Classification losses on logits: cross_entropy, focal, and the label-noise-robust gce, sce and nce_rce.

All take output (B, C) raw logits and int64 targets (B,), work from ``log_softmax`` in float32 (stable, and the same
under bf16 autocast), and return the mean over the batch. On sequence tasks they apply token-wise over the
vocabulary, averaged per ``average`` (``rmlab.losses.tokens``). ``1 - p_y`` is computed as ``-expm1(log p_y)``, which stays
accurate when ``p_y`` is close to 1. Per-class weight vectors are buffers, so they follow the module to its device.
"""

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from rmlab.errors import ConfigError
from rmlab.kinds import SEQUENCE_PAIR, TaskInfo
from rmlab.losses.pointwise import as_float, positive_weights
from rmlab.losses.tokens import TokenwiseLoss

# RCE clamps the one-hot target's log at log(1e-4) (Wang et al. 2019), so RCE = -log(1e-4) * (1 - p_y).
_RCE_SCALE = -math.log(1e-4)


def _log_p_target(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log_softmax (B, C), log p_y (B,)) in float32."""
    log_probs = F.log_softmax(output.float(), dim=-1)
    return log_probs, log_probs.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)


def _check_weight_length(loss: str, param: str, weights: torch.Tensor | None, info: TaskInfo) -> None:
    if weights is not None and info.num_classes is not None and weights.numel() != info.num_classes:
        raise ConfigError(
            f"{loss}: {param} has {weights.numel()} entries but task {info.name!r} has {info.num_classes} classes"
        )


def _active_passive_weights(loss: str, alpha: Any, beta: Any) -> tuple[float, float]:
    """Validate the (alpha, beta) mixing weights of a two-term loss: both >= 0, not both 0."""
    alpha, beta = as_float(loss, "alpha", alpha), as_float(loss, "beta", beta)
    if alpha < 0:
        raise ConfigError(f"{loss}: alpha must be >= 0, got {alpha}")
    if beta < 0:
        raise ConfigError(f"{loss}: beta must be >= 0, got {beta}")
    if alpha == 0 and beta == 0:
        raise ConfigError(f"{loss}: alpha and beta must not both be 0 (the loss would be constant), got 0.0 and 0.0")
    return alpha, beta


class CrossEntropy(TokenwiseLoss):
    """Cross entropy with optional label smoothing and class weights (exactly ``F.cross_entropy``).

    With ``class_weights`` the batch reduction is PyTorch's weighted mean: sum_b w_{y_b} l_b / sum_b w_{y_b}.
    """

    loss_name = "cross_entropy"
    kind_hints: ClassVar[dict[str, str]] = {
        SEQUENCE_PAIR: "to fine-tune on the chosen completions alone, train them as a sequence task, "
                       "task=completion_file; loss=orpo keeps their cross entropy beside its preference term"}
    class_weights: torch.Tensor | None

    def __init__(self, label_smoothing: float = 0.0, class_weights: list[float] | None = None,
                 average: str = "token") -> None:
        super().__init__(average)
        self.label_smoothing = as_float("cross_entropy", "label_smoothing", label_smoothing)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"cross_entropy: label_smoothing must be in [0, 1), got {self.label_smoothing}")
        weights = None if class_weights is None else positive_weights("cross_entropy", "class_weights", class_weights)
        # Not persistent: the weights come from the config, and checkpoints then load whatever the config says.
        self.register_buffer("class_weights", weights, persistent=False)

    def class_weighted(self) -> bool:
        return self.class_weights is not None

    def check_task(self, info: TaskInfo) -> None:
        super().check_task(info)
        _check_weight_length("cross_entropy", "class_weights", self.class_weights, info)

    def per_example(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.float(), target.long(), label_smoothing=self.label_smoothing, reduction="none")

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.dim() == 3 or self.class_weights is None:
            return super().forward(output, target)
        return F.cross_entropy(
            output.float(), target.long(), weight=self.class_weights, label_smoothing=self.label_smoothing
        )


class Focal(TokenwiseLoss):
    """Focal loss (Lin et al. 2017): ``-alpha_t (1 - p_y)^gamma log p_y``, plain mean over the batch.

    ``alpha`` (the class-balancing weight alpha_t):
    - null: alpha_t = 1 for every sample (``gamma = 0`` is then plain cross entropy);
    - a float in (0, 1), on a 2-class task only: the balanced form of Lin et al. (eq. 5), class 1 the positive
      (foreground) class: alpha_t = alpha for targets of class 1 and 1 - alpha for class 0. It is the softmax form
      of torchvision's ``sigmoid_focal_loss`` on the logit difference. With more classes a single number has no
      class-balancing meaning (kornia multiplies the whole loss by it, which under Adam changes almost nothing):
      it is refused, and the per-class list is the way to weight classes;
    - a list of one weight > 0 per class: alpha_t = alpha[y].
    """

    loss_name = "focal"
    alpha_per_class: torch.Tensor | None

    def __init__(self, gamma: float = 2.0, alpha: float | list[float] | None = None, average: str = "token") -> None:
        super().__init__(average)
        self.gamma = as_float("focal", "gamma", gamma)
        if self.gamma < 0:
            raise ConfigError(f"focal: gamma must be >= 0, got {self.gamma}")
        self.alpha: float | None = None  # the binary balancing weight of class 1
        per_class = None
        if isinstance(alpha, Sequence) and not isinstance(alpha, str):
            per_class = positive_weights("focal", "alpha", alpha)
        elif alpha is not None:
            self.alpha = as_float("focal", "alpha", alpha)
            if not 0.0 < self.alpha < 1.0:
                raise ConfigError(f"focal: alpha must be null, a float in (0, 1) (2-class tasks: the weight of class "
                                  f"1, and 1 - alpha of class 0) or a list of one float > 0 per class, got {alpha}")
        self.register_buffer("alpha_per_class", per_class, persistent=False)

    def class_weighted(self) -> bool:
        return self.alpha_per_class is not None or self.alpha is not None

    def check_task(self, info: TaskInfo) -> None:
        super().check_task(info)
        _check_weight_length("focal", "alpha", self.alpha_per_class, info)
        if self.alpha is not None and info.num_classes is not None and info.num_classes != 2:
            raise ConfigError(
                f"focal: a single alpha ({self.alpha}) balances the two classes of a binary task, but task "
                f"{info.name!r} has {info.num_classes} classes; give one weight per class instead, e.g. "
                f"loss.alpha=[{', '.join(['1.0'] * info.num_classes)}]"
            )

    def per_example(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _, log_py = _log_p_target(output, target)
        # Floor 1 - p_y: at p_y == 1 with 0 < gamma < 1, d/dx x^gamma is infinite and 0 * inf would be a NaN gradient.
        loss = -(-torch.expm1(log_py)).clamp_min(1e-12).pow(self.gamma) * log_py
        if self.alpha_per_class is not None:
            loss = loss * self.alpha_per_class[target.long()]
        elif self.alpha is not None:
            if output.shape[-1] != 2:
                raise ValueError(f"focal: a single alpha needs 2 classes, got outputs of shape {tuple(output.shape)}")
            loss = loss * torch.where(target == 1, self.alpha, 1.0 - self.alpha)
        return loss


class GCE(TokenwiseLoss):
    """Generalized cross entropy (Zhang & Sabuncu 2018): ``(1 - p_y^q) / q``.

    ``q -> 0`` approaches cross entropy, ``q = 1`` is MAE / 2 (noise-robust but slow to fit).
    """


    loss_name = "gce"

    def __init__(self, q: float = 0.7, average: str = "token") -> None:
        super().__init__(average)
        self.q = as_float("gce", "q", q)
        if not 0.0 < self.q <= 1.0:
            raise ConfigError(f"gce: q must be in (0, 1], got {self.q}")

    def per_example(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _, log_py = _log_p_target(output, target)
        # 1 - p_y^q = -expm1(q log p_y): no pow of a tiny probability, accurate near p_y = 1.
        return -torch.expm1(self.q * log_py) / self.q


class SCE(TokenwiseLoss):
    """Symmetric cross entropy (Wang et al. 2019): ``alpha CE + beta RCE``.

    RCE = -sum_k p_k log(clamp(onehot_k, min=1e-4)) = -log(1e-4) (1 - p_y) ~= 9.21 (1 - p_y).
    """


    loss_name = "sce"

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, average: str = "token") -> None:
        super().__init__(average)
        self.alpha, self.beta = _active_passive_weights("sce", alpha, beta)

    def per_example(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _, log_py = _log_p_target(output, target)
        rce = _RCE_SCALE * -torch.expm1(log_py)
        return self.alpha * -log_py + self.beta * rce


class NCERCE(TokenwiseLoss):
    """Active-passive loss NCE + RCE (Ma et al. 2020): ``alpha NCE + beta RCE``.

    NCE = (-log p_y) / (-sum_k log p_k), normalised cross entropy in [0, 1]; RCE as in ``SCE``.
    """


    loss_name = "nce_rce"

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, average: str = "token") -> None:
        super().__init__(average)
        self.alpha, self.beta = _active_passive_weights("nce_rce", alpha, beta)

    def per_example(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_probs, log_py = _log_p_target(output, target)
        nce = log_py / log_probs.sum(dim=-1)  # the two minus signs cancel
        rce = _RCE_SCALE * -torch.expm1(log_py)
        return self.alpha * nce + self.beta * rce
