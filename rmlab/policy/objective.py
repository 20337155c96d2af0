"""The clipped policy-gradient surrogate (PPO, Schulman et al. 2017) and how its per-token terms become one loss.

``ratio = exp(logp - old_logp)``: the probability of a sampled token (or whole completion) under the policy being
trained over its probability under the policy that sampled it. With advantage ``A``,

    loss = -min(ratio * A, clip(ratio, 1 - epsilon_low, 1 + epsilon_high) * A)

whose gradient is ``-A * ratio * grad logp`` where the ratio is inside the trust region (or moving back into it) and
0 where it has left it in the direction the advantage pushes. At the first update on fresh samples ``ratio == 1``
and this is exactly REINFORCE, ``-A * grad logp``. ``epsilon_high > epsilon_low`` (DAPO's "clip higher", Yu et al.
2025) lets rare tokens with positive advantage grow more. ``epsilon_low=None`` turns clipping off.

Aggregation of per-token terms ``l[b, t]`` over the completion mask ``m`` (TRL's ``loss_type``):

- ``grpo``: ``mean_b (sum_t l m / sum_t m)``: each sequence weighs the same, so a long answer's tokens weigh less.
- ``bnpo``: ``sum l m / sum m`` over the batch being updated: every token weighs the same.
- ``dapo``: ``sum l m / N`` with N the completion tokens of the whole generation batch: the same as ``bnpo`` when
  the update uses the whole generation batch, and independent of how it is split into mini-batches otherwise.
- ``dr_grpo``: ``sum l m / (B * max_new_tokens)``: a constant normaliser, no length bias at all (Liu et al. 2025).
"""

from __future__ import annotations

import torch
from torch import Tensor

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def clipped_surrogate(logps: Tensor, old_logps: Tensor, advantages: Tensor, epsilon_low: float | None,
                      epsilon_high: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, ratio, clipped)`` elementwise, shaped as ``logps`` ((B, T) per token or (B,) per sequence);
    ``advantages`` broadcasts against it ((B, 1) or (B,)). ``clipped`` marks where clipping removed the gradient
    (ratio below ``1 - epsilon_low`` with A < 0, or above ``1 + epsilon_high`` with A > 0)."""
    ratio = torch.exp(logps - old_logps.detach())
    advantages = advantages.detach()
    unclipped = ratio * advantages
    if epsilon_low is None:
        return -unclipped, ratio, torch.zeros_like(ratio, dtype=torch.bool)
    high = epsilon_low if epsilon_high is None else epsilon_high
    clipped_term = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + high) * advantages
    loss = -torch.min(unclipped, clipped_term)
    with torch.no_grad():
        clipped = ((ratio < 1.0 - epsilon_low) & (advantages < 0)) | ((ratio > 1.0 + high) & (advantages > 0))
    return loss, ratio, clipped


def aggregate(per_token: Tensor, mask: Tensor, loss_type: str, max_new_tokens: int | None = None,
              num_tokens: Tensor | None = None) -> Tensor:
    """One scalar from per-token terms (B, T) over the completion ``mask`` (B, T), by ``loss_type`` (see the module
    docstring). ``max_new_tokens`` is needed by ``dr_grpo``; ``num_tokens`` (the generation batch's completion
    tokens) by ``dapo``, which falls back to this batch's count."""
    mask = mask.to(per_token.dtype)
    total = per_token * mask
    if loss_type == "grpo":
        return (total.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return total.sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dapo":
        count = mask.sum() if num_tokens is None else num_tokens.to(per_token.dtype)
        return total.sum() / count.clamp(min=1.0)
    if loss_type == "dr_grpo":
        if max_new_tokens is None:
            raise ValueError("loss_type dr_grpo needs max_new_tokens")
        return total.sum() / (per_token.shape[0] * max_new_tokens)
    raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
