"""Advantages of sampled completions from their rewards: the part where REINFORCE, RLOO and GRPO differ most.

Rewards are (B,) with the ``K = group_size`` completions of one prompt in adjacent rows (rows ``g*K .. g*K+K-1``
are prompt ``g``'s group), the layout ``prompt_ids.repeat_interleave(K, 0)`` gives.

- ``leave_one_out``: each sample's baseline is the mean reward of the other samples of its group. It does not depend
  on the sample itself, so ``r - b`` keeps REINFORCE unbiased (a mean that includes the sample shrinks the gradient
  by ``(K - 1) / K``). RLOO (Ahmadian et al. 2024; Kool et al. 2019) is exactly this.
- ``grpo_advantages``: ``(r - mean_group(r)) / (std + 1e-4)`` (Shao et al. 2024), ``std`` the unbiased standard
  deviation of the group (``scale_rewards="group"``), of the whole batch (``"batch"``), or no division (``"none"``,
  Dr. GRPO, Liu et al. 2025). The 1e-4 and the Bessel correction are TRL's, so advantages agree with TRL's to float
  rounding. A group whose rewards are all equal gets advantage 0 (no signal): ``zero_std_groups`` counts them.
"""

from __future__ import annotations

import torch
from torch import Tensor

SCALE_REWARDS = ("group", "batch", "none")
STD_EPS = 1e-4  # added to the std before dividing, as TRL does


def grouped(rewards: Tensor, group_size: int) -> Tensor:
    """Rewards (B,) viewed as (B / K, K) groups."""
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (B,) with B a multiple of the group size {group_size}, got shape "
                         f"{tuple(rewards.shape)}")
    return rewards.float().view(-1, group_size)


def unbiased_std(values: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Sample standard deviation (Bessel-corrected); 0 where there is a single value rather than NaN."""
    n = values.numel() if dim is None else values.shape[dim]
    if n < 2:
        return values.new_zeros(()) if dim is None else values.new_zeros(values.shape).mean(dim, keepdim=keepdim)
    return values.std(dim=dim, keepdim=keepdim) if dim is not None else values.std()


def leave_one_out(rewards: Tensor, group_size: int) -> Tensor:
    """Each sample's baseline: the mean reward of the other ``K - 1`` samples of its group, (B,). Needs K >= 2."""
    if group_size < 2:
        raise ValueError(f"a leave-one-out baseline needs at least 2 samples per group, got {group_size}")
    groups = grouped(rewards, group_size)
    return ((groups.sum(1, keepdim=True) - groups) / (group_size - 1)).reshape(-1)


def batch_leave_one_out(rewards: Tensor) -> Tensor:
    """Each sample's baseline: the mean reward of every other sample of the batch (0 for a batch of one)."""
    n = rewards.numel()
    if n < 2:
        return torch.zeros_like(rewards, dtype=torch.float32)
    rewards = rewards.float()
    return (rewards.sum() - rewards) / (n - 1)


def rloo_advantages(rewards: Tensor, group_size: int, normalize: bool = False) -> Tensor:
    """RLOO: ``r - leave_one_out(r)``; with ``normalize`` then standardised over the batch (TRL's
    ``normalize_advantages``: ``(a - mean(a)) / (std(a) + 1e-4)``)."""
    advantages = rewards.float() - leave_one_out(rewards, group_size)
    if normalize:
        advantages = (advantages - advantages.mean()) / (unbiased_std(advantages) + STD_EPS)
    return advantages


def group_std(rewards: Tensor, group_size: int) -> Tensor:
    """Unbiased std of each group's rewards, (B / K,) (0 for groups of one)."""
    return unbiased_std(grouped(rewards, group_size), dim=1)


def grpo_advantages(rewards: Tensor, group_size: int, scale_rewards: str = "group") -> Tensor:
    """GRPO: ``(r - mean_group(r)) / (std + 1e-4)`` with the std of ``scale_rewards`` (group, batch or none)."""
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {', '.join(SCALE_REWARDS)}, got {scale_rewards!r}")
    groups = grouped(rewards, group_size)
    centred = (groups - groups.mean(1, keepdim=True)).reshape(-1)
    if scale_rewards == "none":
        return centred
    if scale_rewards == "group":
        std = group_std(rewards, group_size).repeat_interleave(group_size)
    else:
        std = unbiased_std(groups.reshape(-1))
    return centred / (std + STD_EPS)


def zero_std_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Share of groups whose rewards are all equal (no learning signal for group-relative advantages), scalar."""
    groups = grouped(rewards, group_size)
    return (groups == groups[:, :1]).all(1).float().mean()
