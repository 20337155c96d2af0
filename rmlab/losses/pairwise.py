"""Pairwise (preference) losses on output kind ``pair``: bradley_terry, hinge, log_exp, ipo.

Output (B, 2) = scores (chosen, rejected); each loss is a function of the score difference ``d = s_c - s_r``,
averaged over the batch. The target (the items' true rewards, or NaN) is not used: the label of a pair is its order.
Computed in float32 (``output.float()``), so the losses behave the same under bf16 autocast.
"""

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from rmlab.errors import ConfigError
from rmlab.kinds import PAIR, SEQUENCE_PAIR
from rmlab.losses.base import Loss
from rmlab.losses.pointwise import as_float


def _at_least(loss: str, param: str, value: Any, low: float, *, strict: bool) -> float:
    value = as_float(loss, param, value)
    if value < low or (strict and value == low):
        raise ConfigError(f"{loss}: {param} must be {'>' if strict else '>='} {low:g}, got {value}")
    return value


class PairwiseLoss(Loss):
    """Base of the pair losses: ``mean_b f(d_b)`` with ``f = _per_pair`` of ``d = s_c - s_r``."""

    accepts: ClassVar[tuple[str, ...]] = (PAIR,)
    # What a user who picks a reward-model loss on a language model's preference pairs wants instead.
    kind_hints: ClassVar[dict[str, str]] = {
        SEQUENCE_PAIR: "on a language model's preference pairs use loss=dpo (sigmoid: the Bradley-Terry loss of "
                       "the log-ratios), loss=dpo loss.loss_type=ipo, loss=dpo loss.loss_type=hinge, loss=simpo or "
                       "loss=orpo"}

    def _per_pair(self, d: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = output.float()
        return self._per_pair(output[:, 0] - output[:, 1]).mean()


class BradleyTerry(PairwiseLoss):
    """Bradley-Terry negative log-likelihood, as TRL's RewardTrainer:
    ``(1 - eps) * -log sigmoid(z) + eps * -log sigmoid(-z)`` with ``z = d - margin``, plus
    ``center_rewards_coefficient * mean((s_c + s_r)^2)``.

    ``margin`` asks chosen to win by at least that much; ``label_smoothing`` eps treats each pair as mislabelled with
    probability eps (conservative BT, robust to flipped pairs); the centring term pins the scores' offset, which BT
    alone leaves free (Eisenstein et al. 2023).
    """

    def __init__(self, margin: float = 0.0, label_smoothing: float = 0.0,
                 center_rewards_coefficient: float = 0.0) -> None:
        super().__init__()
        self.margin = _at_least("bradley_terry", "margin", margin, 0.0, strict=False)
        self.label_smoothing = as_float("bradley_terry", "label_smoothing", label_smoothing)
        if not 0.0 <= self.label_smoothing < 0.5:  # eps = 0.5 makes the loss blind to the order
            raise ConfigError(f"bradley_terry: label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        self.center_rewards_coefficient = _at_least(
            "bradley_terry", "center_rewards_coefficient", center_rewards_coefficient, 0.0, strict=False
        )

    def _per_pair(self, d: torch.Tensor) -> torch.Tensor:
        z = d - self.margin
        nll = -F.logsigmoid(z)
        if self.label_smoothing:
            # -log sigmoid(-z) = -log sigmoid(z) + z, so the smoothed loss is nll + eps * z.
            nll = nll + self.label_smoothing * z
        return nll

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = super().forward(output, target)
        if self.center_rewards_coefficient:
            loss = loss + self.center_rewards_coefficient * output.float().sum(dim=1).square().mean()
        return loss


class MarginRanking(PairwiseLoss):
    """Hinge ``max(0, margin - d)``: ``F.margin_ranking_loss(s_c, s_r, 1, margin)``; pairs won by ``margin`` or
    more give no gradient."""

    kind_hints: ClassVar[dict[str, str]] = {
        SEQUENCE_PAIR: "the hinge loss on a language model's preference pairs is loss=dpo loss.loss_type=hinge"}

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        # margin 0 would be satisfied by any d > 0 at any scale; > 0 gives the scores a unit.
        self.margin = _at_least("hinge", "margin", margin, 0.0, strict=True)

    def _per_pair(self, d: torch.Tensor) -> torch.Tensor:
        return (self.margin - d).clamp(min=0)


class LogExp(PairwiseLoss):
    """RankNet / log-exp loss ``log(1 + exp(-d))`` (Burges et al. 2005), as softplus (stable for any d).

    Identical to ``bradley_terry`` with its defaults; kept under the name the ranking literature uses.
    """

    def _per_pair(self, d: torch.Tensor) -> torch.Tensor:
        return F.softplus(-d)


class IPO(PairwiseLoss):
    """IPO (Azar et al. 2023): ``(d - 1 / (2 beta))^2``; regresses the difference to a fixed target instead of
    pushing it to infinity, so it does not overfit deterministic preferences. Smaller ``beta``: larger target gap."""

    kind_hints: ClassVar[dict[str, str]] = {
        SEQUENCE_PAIR: "IPO on a language model's preference pairs is loss=dpo_ipo (or loss=dpo loss.loss_type=ipo)"}

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = _at_least("ipo", "beta", beta, 0.0, strict=True)

    def _per_pair(self, d: torch.Tensor) -> torch.Tensor:
        return (d - 1.0 / (2.0 * self.beta)).square()
