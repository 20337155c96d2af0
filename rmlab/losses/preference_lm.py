"""Preference optimisation of a language model on offline pairs (output kind ``sequence_pair``): dpo, simpo, orpo.

The input is ``PairLogps`` of the policy (the summed log-probs of each pair's chosen and rejected completions, and
their token counts) and, for ``dpo``, the same of the frozen reference policy (the target, cached once per dataset).
With ``h = (log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r))``, the difference of the log-ratios:

- ``dpo`` (Rafailov et al. 2023), by ``loss_type`` (TRL's ``DPOConfig.loss_type`` names):
    - ``sigmoid``: ``-log sigmoid(beta h)``; with ``label_smoothing`` eps the conservative DPO of Mitchell (2023):
      ``(1 - eps) * -log sigmoid(beta h) + eps * -log sigmoid(-beta h)`` (each pair taken as flipped w.p. eps);
    - ``ipo`` (Azar et al. 2023): ``(h' - 1 / (2 beta))^2`` with ``h'`` the difference of the *per-token* log-ratios
      (each log-ratio divided by its completion's token count), as TRL does;
    - ``hinge`` (SLiC, Zhao et al. 2023): ``max(0, 1 - beta h)``.
- ``simpo`` (Meng et al. 2024), reference-free: ``-log sigmoid(beta (a_c - a_r) - gamma)`` with ``a`` the mean token
  log-prob of a completion (length-normalised), ``gamma`` the target margin; ``label_smoothing`` as in dpo.
- ``orpo`` (Hong et al. 2024), reference-free: ``NLL(y_c) - beta * log sigmoid(log odds(a_c) - log odds(a_r))`` with
  ``odds(a) = exp(a) / (1 - exp(a))``, and the NLL the mean token cross entropy of the chosen completions.

Each loss is the mean over pairs, in float32. ``implicit_rewards`` gives each pair's (chosen, rejected) scores under
the loss's own implicit reward model (DPO: ``beta`` x log-ratio; SimPO, ORPO: ``beta`` x mean token log-prob), the
(B, 2) form the ``pair`` rewards (``preference_accuracy``, ``reward_margin``) read.

The ``ipo`` and ``hinge`` losses of reward models (output kind ``pair``, ``loss=ipo`` and ``loss=hinge``) are the same
functions of a score gap; on a language model they are ``loss=dpo loss.loss_type=ipo|hinge``.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rmlab.errors import ConfigError
from rmlab.kinds import PAIR, SEQUENCE, SEQUENCE_PAIR
from rmlab.losses.base import Loss
from rmlab.losses.pointwise import as_float
from rmlab.policy.logprobs import sequence_logprobs

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")
# ORPO's log(1 - p) is -inf at p = 1 (a completion the model is certain of); its mean token log-prob is kept below
# this so the loss and its gradient stay finite.
MAX_MEAN_LOGP = -1e-6


class PairLogps(NamedTuple):
    """Summed completion log-probs of a batch of pairs and their token counts, each float32 (B,)."""

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor

    def mean_chosen(self) -> Tensor:
        return self.chosen / self.chosen_tokens.clamp(min=1.0)

    def mean_rejected(self) -> Tensor:
        return self.rejected / self.rejected_tokens.clamp(min=1.0)

    def detach(self) -> PairLogps:
        return PairLogps(*(t.detach() for t in self))


def pair_logps(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> PairLogps:
    """``PairLogps`` from the logits (2B, T, V) and labels (2B, T) of one forward pass over the chosen rows followed
    by the rejected rows (labels in the ``sequence`` contract: ``IGNORE_INDEX`` outside the completions)."""
    if logits.shape[0] % 2:
        raise ValueError(f"expected [chosen rows; rejected rows], an even number of rows, got {logits.shape[0]}")
    sums, counts = sequence_logprobs(logits, labels, temperature)
    b = logits.shape[0] // 2
    return PairLogps(sums[:b], sums[b:], counts[:b], counts[b:])


def _positive(loss: str, param: str, value: Any) -> float:
    value = as_float(loss, param, value)
    if value <= 0:
        raise ConfigError(f"{loss}: {param} must be > 0, got {value}")
    return value


def _smoothing(loss: str, value: Any) -> float:
    value = as_float(loss, "label_smoothing", value)
    if not 0.0 <= value < 0.5:  # 0.5 makes the loss blind to which completion was preferred
        raise ConfigError(f"{loss}: label_smoothing must be in [0, 0.5), got {value}")
    return value


def _smoothed_logistic(z: Tensor, eps: float) -> Tensor:
    """``(1 - eps) * -log sigmoid(z) + eps * -log sigmoid(-z)``; softplus form, stable for any z."""
    loss = F.softplus(-z)
    return loss if eps == 0 else (1.0 - eps) * loss + eps * F.softplus(z)


def _as_float(logps: PairLogps) -> PairLogps:
    return PairLogps(*(t.float() for t in logps))


class PreferenceLoss(Loss):
    """Base of the preference losses on a language model. ``needs_reference``: whether the run must provide the frozen
    reference's ``PairLogps`` as the target (the sequence path computes them once and caches them)."""

    accepts: ClassVar[tuple[str, ...]] = (SEQUENCE_PAIR,)
    kind_hints: ClassVar[dict[str, str]] = {
        PAIR: "a reward model's pair scores train with loss=bradley_terry, loss=ipo or loss=hinge",
        SEQUENCE: "a sequence task has no rejected completions: train on preference pairs "
                  "(task=reverse_preference, addition_preference or preference_completion_file)"}
    needs_reference: ClassVar[bool] = True
    name: ClassVar[str] = ""

    def _reference(self, target: PairLogps | None) -> PairLogps:
        if target is None:
            raise ValueError(f"loss={self.name} needs the reference policy's log-probs as its target")
        return _as_float(target)

    def implicit_rewards(self, output: PairLogps, target: PairLogps | None = None) -> Tensor:
        """(B, 2) detached (chosen, rejected) scores under the loss's implicit reward model."""
        raise NotImplementedError  # pragma: no cover - abstract


class DPO(PreferenceLoss):
    """Direct Preference Optimization and its ``ipo`` / ``hinge`` variants (see the module docstring)."""

    name: ClassVar[str] = "dpo"

    def __init__(self, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.beta = _positive(self.name, "beta", beta)
        if loss_type not in DPO_LOSS_TYPES:
            raise ConfigError(f"{self.name}: loss_type must be one of {', '.join(DPO_LOSS_TYPES)}, got {loss_type!r}")
        self.loss_type = loss_type
        self.label_smoothing = _smoothing(self.name, label_smoothing)
        if self.label_smoothing and loss_type != "sigmoid":
            raise ConfigError(f"{self.name}: label_smoothing applies to loss_type=sigmoid only (conservative DPO), got "
                              f"label_smoothing={self.label_smoothing} with loss_type={loss_type}")

    def forward(self, output: PairLogps, target: PairLogps | None) -> Tensor:
        policy, ref = _as_float(output), self._reference(target)
        chosen, rejected = policy.chosen - ref.chosen, policy.rejected - ref.rejected
        if self.loss_type == "ipo":
            gap = chosen / policy.chosen_tokens.clamp(min=1.0) - rejected / policy.rejected_tokens.clamp(min=1.0)
            return (gap - 1.0 / (2.0 * self.beta)).square().mean()
        h = chosen - rejected
        if self.loss_type == "hinge":
            return torch.relu(1.0 - self.beta * h).mean()
        return _smoothed_logistic(self.beta * h, self.label_smoothing).mean()

    def implicit_rewards(self, output: PairLogps, target: PairLogps | None = None) -> Tensor:
        policy, ref = _as_float(output.detach()), self._reference(target).detach()
        return self.beta * torch.stack([policy.chosen - ref.chosen, policy.rejected - ref.rejected], dim=1)


class DPOIPO(DPO):
    """DPO's ``ipo`` form as a loss of its own (``loss=dpo_ipo``), so that one sweep can list it beside ``dpo`` and
    ``simpo``; it has no ``loss_type`` to set (an override of one is an unknown key)."""

    name: ClassVar[str] = "dpo_ipo"

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__(beta=beta, loss_type="ipo")


class SimPO(PreferenceLoss):
    """Simple Preference Optimization: reference-free, length-normalised, with a target margin ``gamma``."""

    name: ClassVar[str] = "simpo"
    needs_reference: ClassVar[bool] = False

    def __init__(self, beta: float = 2.0, gamma: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.beta = _positive("simpo", "beta", beta)
        self.gamma = as_float("simpo", "gamma", gamma)
        if self.gamma < 0:
            raise ConfigError(f"simpo: gamma must be >= 0, got {self.gamma}")
        self.label_smoothing = _smoothing("simpo", label_smoothing)

    def forward(self, output: PairLogps, target: PairLogps | None = None) -> Tensor:
        policy = _as_float(output)
        z = self.beta * (policy.mean_chosen() - policy.mean_rejected()) - self.gamma
        return _smoothed_logistic(z, self.label_smoothing).mean()

    def implicit_rewards(self, output: PairLogps, target: PairLogps | None = None) -> Tensor:
        policy = _as_float(output.detach())
        return self.beta * torch.stack([policy.mean_chosen(), policy.mean_rejected()], dim=1)


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for x < 0, accurate on both sides of -log 2 (Maechler 2012)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


class ORPO(PreferenceLoss):
    """Odds Ratio Preference Optimization: supervised NLL of the chosen completions plus ``beta`` x the odds-ratio
    loss; reference-free, so one stage replaces SFT + DPO."""

    name: ClassVar[str] = "orpo"
    needs_reference: ClassVar[bool] = False

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = _positive("orpo", "beta", beta)

    def log_odds_ratio(self, output: PairLogps) -> Tensor:
        """``log odds(y_c) - log odds(y_r)`` per pair, from mean token log-probs (B,)."""
        policy = _as_float(output)
        chosen = policy.mean_chosen().clamp(max=MAX_MEAN_LOGP)
        rejected = policy.mean_rejected().clamp(max=MAX_MEAN_LOGP)
        return (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))

    def forward(self, output: PairLogps, target: PairLogps | None = None) -> Tensor:
        policy = _as_float(output)
        nll = -policy.chosen.sum() / policy.chosen_tokens.sum().clamp(min=1.0)
        return nll + self.beta * F.softplus(-self.log_odds_ratio(policy)).mean()

    def implicit_rewards(self, output: PairLogps, target: PairLogps | None = None) -> Tensor:
        policy = _as_float(output.detach())
        return self.beta * torch.stack([policy.mean_chosen(), policy.mean_rejected()], dim=1)
