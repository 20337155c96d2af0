"""Policy optimisation of a language model from a reward: REINFORCE, RLOO and GRPO as small classes over one objective.

All three run the same step (``rmlab.policy.step``): sample ``num_samples`` completions per prompt, score them,
turn rewards into advantages (``rollout``), then take ``num_iterations`` gradient steps on the clipped surrogate
(``loss``). They differ only in:

============  ==========================================  ======================  ===================  ===========
algorithm     advantage                                   importance ratio        clipping             KL default
============  ==========================================  ======================  ===================  ===========
reinforce     r - baseline (none, leave-one-out mean,     per completion          none (one on-policy  k1, reward
              moving average, greedy completion's r)                              update)
rloo          r - mean of the group's other samples       per completion          epsilon              k1, reward
grpo          (r - group mean) / (std + 1e-4)             per token               epsilon              k3, loss
============  ==========================================  ======================  ===================  ===========

as in TRL's ``RLOOTrainer`` and ``GRPOTrainer``. The KL to the frozen reference policy (weight ``beta``) is either
subtracted from the reward before advantages (``kl_in: reward``; the sequence's summed per-token estimate, computed
with the sampling policy's log-probs) or added to the loss (``kl_in: loss``; per token, with the current policy's
log-probs, so it has a gradient). An entropy bonus subtracts ``entropy_coef`` x the mean token entropy.

Everything is float32 and stays on the device: the metrics are detached 0-d tensors, never ``.item()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from rmlab.errors import IncompatibleError, check
from rmlab.kinds import SEQUENCE, TaskInfo
from rmlab.policy import params
from rmlab.policy.advantages import (SCALE_REWARDS, batch_leave_one_out, grpo_advantages, leave_one_out,
                                     rloo_advantages, unbiased_std, zero_std_groups)
from rmlab.policy.kl import kl_per_token
from rmlab.policy.logprobs import masked_mean
from rmlab.policy.objective import LOSS_TYPES, aggregate, clipped_surrogate

REINFORCE_BASELINES = ("none", "batch_mean", "moving_average", "greedy")


@dataclass(frozen=True)
class Rollout:
    """One batch of scored generations, ready for ``num_iterations`` updates. Rows are completions, the
    ``num_samples`` completions of a prompt in adjacent rows; per-token tensors cover the completion positions."""

    completion_mask: Tensor  # (B, N) bool: True up to and including the first EOS
    old_logps: Tensor  # (B, N) float32 log-probs under the sampling policy (0 off the mask)
    ref_logps: Tensor | None  # (B, N) float32 log-probs under the frozen reference, where one is used
    advantages: Tensor  # (B,) float32
    num_tokens: Tensor  # 0-d: completion tokens of the whole generation batch (the ``dapo`` normaliser)
    stats: dict[str, Tensor] = field(default_factory=dict)  # detached 0-d metrics of the whole batch

    def select(self, rows: Tensor | slice) -> Rollout:
        """The rollout of a subset of rows (a mini-batch); ``num_tokens`` and ``stats`` stay the whole batch's."""
        return replace(self, completion_mask=self.completion_mask[rows], old_logps=self.old_logps[rows],
                       ref_logps=None if self.ref_logps is None else self.ref_logps[rows],
                       advantages=self.advantages[rows])


class PolicyLoss(NamedTuple):
    loss: Tensor  # the policy loss, with its gradient (``combine`` weighs it against the task loss)
    metrics: dict[str, Tensor]  # detached 0-d tensors: the rollout's stats and this update's


class PolicyAlgorithm(nn.Module):
    """The shared objective. Subclasses set ``name`` and ``token_level`` and implement ``advantages``."""

    accepts: ClassVar[tuple[str, ...]] = (SEQUENCE,)
    name: ClassVar[str] = ""
    token_level: ClassVar[bool] = False  # importance ratio per token (GRPO) or per completion (RLOO, REINFORCE)
    loss_type: str = "grpo"  # token-level aggregation (GRPO only exposes it)

    def __init__(self, *, num_samples: int, beta: float, kl_estimator: str, kl_in: str, entropy_coef: float,
                 loss_weight: float, feedback_weight: float, temperature: float, top_k: int, top_p: float,
                 max_new_tokens: int, num_iterations: int = 1, epsilon: float | None = None,
                 epsilon_high: float | None = None, min_samples: int = 1) -> None:
        super().__init__()
        self.num_samples = params.integer("num_samples", num_samples, min_samples)
        self.beta, self.kl_estimator, self.kl_in = params.kl_penalty(beta, kl_estimator, kl_in)
        self.entropy_coef = params.real("entropy_coef", entropy_coef, 0.0)
        self.loss_weight, self.feedback_weight = params.weights(loss_weight, feedback_weight)
        self.sampling = params.sampling(temperature, top_k, top_p, max_new_tokens)
        self.num_iterations = params.integer("num_iterations", num_iterations, 1)
        self.epsilon = None if epsilon is None else params.real("epsilon", epsilon, 0.0, 1.0, low_open=True,
                                                                high_open=True)
        self.epsilon_high = None if epsilon_high is None else params.real("epsilon_high", epsilon_high, 0.0,
                                                                          low_open=True)
        check(not (self.entropy_coef > 0 and self.feedback_weight == 0),
              "feedback.entropy_coef > 0 with feedback.feedback_weight=0: the entropy bonus is part of the policy "
              "loss, which would not be trained; set feedback_weight > 0 or entropy_coef=0")

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, beta={self.beta}, kl={self.kl_estimator} in {self.kl_in}, "
                f"num_iterations={self.num_iterations}, epsilon={self.epsilon}")

    # -- what the generation step needs ---------------------------------------------------------------------------
    @property
    def temperature(self) -> float:
        return self.sampling["temperature"]

    @property
    def needs_reference(self) -> bool:
        """Whether the step must compute the frozen reference's log-probs (for the KL penalty)."""
        return self.beta > 0

    @property
    def needs_old_logps(self) -> bool:
        """Whether the sampling policy's log-probs need a forward pass of their own before the first update: with
        one update they are the first forward's own log-probs, detached (as TRL does)."""
        return self.num_iterations > 1

    @property
    def needs_greedy(self) -> bool:
        """Whether the advantages need the reward of each prompt's greedy completion (self-critical baseline)."""
        return False

    # -- start-up ---------------------------------------------------------------------------------------------------
    def check(self, reward: Any, info: TaskInfo) -> None:
        """Raise before training unless this algorithm can train the task's model from the reward."""
        if info.output_kind != SEQUENCE:
            raise IncompatibleError(
                f"feedback={self.name} trains language models on sequence tasks, but task={info.name} outputs "
                f"{info.output_kind!r}. Choices of feedback that work on task={info.name}: "
                f"{', '.join(_feedback_choices(info.output_kind)) or '(none)'}")
        name = getattr(reward, "name", reward)
        if SEQUENCE not in getattr(reward, "accepts", ()):
            raise IncompatibleError(
                f"feedback={self.name} cannot feed back reward={name}: it does not score the completions of a "
                f"'sequence' task. Rewards that can be fed back on task={info.name}: "
                f"{', '.join(_per_sample_rewards(info.output_kind)) or '(none)'}")
        if not getattr(reward, "has_per_sample", False):
            raise IncompatibleError(
                f"feedback={self.name} cannot feed back reward={name}: it has no "
                f"per-sample form, and each completion needs its own reward. Rewards that can be fed back on "
                f"task={info.name}: {', '.join(_per_sample_rewards(info.output_kind)) or '(none)'}")

    # -- the objective ----------------------------------------------------------------------------------------------
    def advantages(self, rewards: Tensor, greedy_rewards: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def rollout(self, rewards: Tensor, completion_mask: Tensor, old_logps: Tensor, ref_logps: Tensor | None = None,
                greedy_rewards: Tensor | None = None) -> Rollout:
        """Advantages and statistics of a batch of scored completions (rows grouped by prompt).

        ``rewards`` (B,); ``completion_mask`` (B, N); ``old_logps`` (B, N) the sampling policy's token log-probs;
        ``ref_logps`` (B, N) the reference's (needed when ``beta > 0``; when given with ``beta = 0`` the KL is
        only logged); ``greedy_rewards`` (B / num_samples,) for the self-critical baseline.
        """
        if self.needs_reference and ref_logps is None:
            raise ValueError(f"feedback={self.name} with beta={self.beta} needs the reference's log-probs")
        with torch.no_grad():
            mask = completion_mask.bool()
            rewards = rewards.detach().float()
            old_logps = old_logps.detach().float().masked_fill(~mask, 0.0)
            stats = {"sampled_reward": rewards.mean(), "reward_std": unbiased_std(rewards),
                     "completion_length": mask.sum(-1).float().mean()}
            if self.num_samples > 1:
                stats["zero_std_groups"] = zero_std_groups(rewards, self.num_samples)
            shaped = rewards
            if ref_logps is not None:
                ref_logps = ref_logps.detach().float().masked_fill(~mask, 0.0)
                kl = kl_per_token(old_logps, ref_logps, self.kl_estimator) * mask
                if self.beta > 0 and self.kl_in == "reward":
                    shaped = rewards - self.beta * kl.sum(-1)
                if not (self.beta > 0 and self.kl_in == "loss"):  # there, the loss logs the current policy's KL
                    stats.update(_kl_stats(kl, mask))
            advantages = self.advantages(shaped, greedy_rewards).float()
            stats["advantage_std"] = advantages.std(correction=0)
        return Rollout(completion_mask=mask, old_logps=old_logps, ref_logps=ref_logps, advantages=advantages,
                       num_tokens=mask.sum(), stats=stats)

    def loss(self, logps: Tensor, rollout: Rollout, entropy: Tensor | None = None) -> PolicyLoss:
        """The policy loss of one update: ``logps`` (B, N) the current policy's token log-probs of the rollout's
        completions (with their gradient; same temperature as sampling), ``entropy`` (B, N) the token entropies
        (needed with a gradient when ``entropy_coef > 0``, else only logged when given)."""
        mask = rollout.completion_mask
        maskf = mask.float()
        logps = logps.float().masked_fill(~mask, 0.0)
        kl = None
        if self.beta > 0 and self.kl_in == "loss":
            kl = kl_per_token(logps, rollout.ref_logps, self.kl_estimator) * maskf
        if self.token_level:
            per_token, _, clipped = clipped_surrogate(logps, rollout.old_logps, rollout.advantages.unsqueeze(1),
                                                      self.epsilon, self.epsilon_high)
            if kl is not None:
                per_token = per_token + self.beta * kl
            policy = aggregate(per_token, mask, self.loss_type, self.sampling["max_new_tokens"], rollout.num_tokens)
            clip_fraction = masked_mean(clipped.float(), mask)
        else:
            per_sequence, _, clipped = clipped_surrogate((logps * maskf).sum(-1), rollout.old_logps.sum(-1),
                                                         rollout.advantages, self.epsilon, self.epsilon_high)
            if kl is not None:
                per_sequence = per_sequence + self.beta * kl.sum(-1)
            policy = per_sequence.mean()
            clip_fraction = clipped.float().mean()
        metrics = dict(rollout.stats)
        if self.entropy_coef > 0:
            if entropy is None:
                raise ValueError(f"feedback={self.name} with entropy_coef={self.entropy_coef} needs the token "
                                 "entropies")
            policy = policy - self.entropy_coef * masked_mean(entropy.float(), mask)
        if entropy is not None:
            metrics["entropy"] = masked_mean(entropy.detach().float(), mask)
        if kl is not None:
            metrics.update(_kl_stats(kl.detach(), mask))
        metrics["pg_loss"] = policy.detach()
        metrics["clip_fraction"] = clip_fraction
        return PolicyLoss(policy, metrics)

    def combine(self, loss: Tensor | None, pg_loss: Tensor) -> Tensor:
        """``loss_weight * loss + feedback_weight * pg_loss``; a zero-weighted term is left out (not multiplied by
        0, which would turn an infinite term into NaN). ``loss`` is the task's cross entropy on its reference
        completions and may be None when ``loss_weight`` is 0."""
        if self.loss_weight == 0:
            return self.feedback_weight * pg_loss
        if loss is None:
            raise ValueError(f"feedback={self.name} with loss_weight={self.loss_weight} needs the task loss")
        if self.feedback_weight == 0:
            return self.loss_weight * loss
        return self.loss_weight * loss + self.feedback_weight * pg_loss


def _kl_stats(kl: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """``kl``: the mean per-token estimate over completion tokens (TRL's metric); ``kl_sequence``: the mean over
    completions of their summed estimate (the KL of whole completions, the x-axis of over-optimisation plots)."""
    return {"kl": masked_mean(kl, mask), "kl_sequence": kl.sum(-1).mean()}


class SequenceReinforce(PolicyAlgorithm):
    """REINFORCE with a baseline (Williams 1992): ``-mean_b (r_b - baseline_b) * log pi(y_b | x_b)``, one on-policy
    update per batch of generations, no clipping. ``batch_mean`` is the leave-one-out mean of the prompt's other
    samples when ``num_samples > 1`` (then it equals RLOO's advantage), else of the batch's other completions;
    ``moving_average`` an exponential average of past batch means (updated in training mode only); ``greedy`` the
    reward of the prompt's greedy completion (self-critical sequence training, Rennie et al. 2017).

    Selected as ``feedback=reinforce`` on a sequence task: ``rmlab.feedback.Reinforce`` builds one in ``check``.
    """

    name: ClassVar[str] = "reinforce"

    def __init__(self, loss_weight: float = 1.0, feedback_weight: float = 1.0, baseline: str = "batch_mean",
                 momentum: float = 0.9, num_samples: int = 1, beta: float = 0.0, kl_estimator: str = "k1",
                 kl_in: str = "reward", entropy_coef: float = 0.0, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, max_new_tokens: int = 64) -> None:
        super().__init__(num_samples=num_samples, beta=beta, kl_estimator=kl_estimator, kl_in=kl_in,
                         entropy_coef=entropy_coef, loss_weight=loss_weight, feedback_weight=feedback_weight,
                         temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens)
        self.baseline = params.choice("baseline", baseline, REINFORCE_BASELINES)
        self.momentum = params.real("momentum", momentum, 0.0, 1.0, high_open=True)
        if self.baseline == "moving_average":
            # Persistent, so a resumed run continues from the same average.
            self.register_buffer("average", torch.zeros(()))
            self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @property
    def needs_greedy(self) -> bool:
        return self.baseline == "greedy"

    def advantages(self, rewards: Tensor, greedy_rewards: Tensor | None = None) -> Tensor:
        rewards = rewards.float()
        if self.baseline == "none":
            return rewards
        if self.baseline == "batch_mean":
            if self.num_samples > 1:
                return rewards - leave_one_out(rewards, self.num_samples)
            return rewards - batch_leave_one_out(rewards)
        if self.baseline == "greedy":
            if greedy_rewards is None:
                raise ValueError("baseline=greedy needs the reward of each prompt's greedy completion")
            return rewards - greedy_rewards.float().repeat_interleave(self.num_samples)
        # moving_average: torch.where instead of an `if`, so "initialised?" never leaves the device.
        batch_mean = rewards.mean()
        current = torch.where(self.initialised, self.average.float(), batch_mean)
        if self.training:  # on the first batch current == batch_mean, so this initialises the average to it
            self.average.copy_(self.momentum * current + (1 - self.momentum) * batch_mean)
            self.initialised.fill_(True)
        return rewards - current


class RLOO(PolicyAlgorithm):
    """REINFORCE Leave-One-Out (Ahmadian et al. 2024), as TRL's ``RLOOTrainer``: advantage ``r_i - mean_{j != i}
    r_j`` over the prompt's ``num_samples`` completions (optionally standardised over the batch), a clipped ratio of
    whole-completion probabilities, the per-sequence losses averaged; KL defaults to k1 in the reward."""

    name: ClassVar[str] = "rloo"

    def __init__(self, num_samples: int = 4, beta: float = 0.05, kl_estimator: str = "k1", kl_in: str = "reward",
                 num_iterations: int = 1, epsilon: float = 0.2, epsilon_high: float | None = None,
                 normalize_advantages: bool = False, entropy_coef: float = 0.0, loss_weight: float = 0.0,
                 feedback_weight: float = 1.0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 max_new_tokens: int = 64) -> None:
        super().__init__(num_samples=num_samples, beta=beta, kl_estimator=kl_estimator, kl_in=kl_in,
                         entropy_coef=entropy_coef, loss_weight=loss_weight, feedback_weight=feedback_weight,
                         temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
                         num_iterations=num_iterations, epsilon=epsilon, epsilon_high=epsilon_high, min_samples=2)
        self.normalize_advantages = params.boolean("normalize_advantages", normalize_advantages)

    def advantages(self, rewards: Tensor, greedy_rewards: Tensor | None = None) -> Tensor:
        return rloo_advantages(rewards, self.num_samples, self.normalize_advantages)


class GRPO(PolicyAlgorithm):
    """Group Relative Policy Optimization (Shao et al. 2024), as TRL's ``GRPOTrainer``: group-normalised
    advantages (``scale_rewards``), a clipped per-token ratio (``epsilon``, ``epsilon_high``), per-token terms
    aggregated by ``loss_type``; KL defaults to k3 in the loss (with ``beta = 0``, TRL's default, no reference)."""

    name: ClassVar[str] = "grpo"
    token_level: ClassVar[bool] = True

    def __init__(self, num_samples: int = 8, beta: float = 0.0, kl_estimator: str = "k3", kl_in: str = "loss",
                 num_iterations: int = 1, epsilon: float = 0.2, epsilon_high: float | None = None,
                 scale_rewards: str = "group", loss_type: str = "dapo", entropy_coef: float = 0.0,
                 loss_weight: float = 0.0, feedback_weight: float = 1.0, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, max_new_tokens: int = 64) -> None:
        super().__init__(num_samples=num_samples, beta=beta, kl_estimator=kl_estimator, kl_in=kl_in,
                         entropy_coef=entropy_coef, loss_weight=loss_weight, feedback_weight=feedback_weight,
                         temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
                         num_iterations=num_iterations, epsilon=epsilon, epsilon_high=epsilon_high, min_samples=2)
        self.scale_rewards = params.choice("scale_rewards", scale_rewards, SCALE_REWARDS)
        self.loss_type = params.choice("loss_type", loss_type, LOSS_TYPES)

    def advantages(self, rewards: Tensor, greedy_rewards: Tensor | None = None) -> Tensor:
        return grpo_advantages(rewards, self.num_samples, self.scale_rewards)


def _feedback_choices(kind: str) -> list[str]:
    """Feedback options (``conf/feedback``) whose class accepts the output kind."""
    from rmlab.build import compatible_options  # lazily: build imports the model zoo

    return compatible_options("feedback", kind)


def _per_sample_rewards(kind: str) -> list[str]:
    """Reward options that accept the output kind and have a per-sample form."""
    from hydra.utils import get_class

    from rmlab.build import group_options

    names = []
    for option, target in group_options("reward").items():
        try:
            cls = get_class(target)
        except Exception:  # an unimportable user config is not a choice to offer
            continue
        if kind in getattr(cls, "accepts", ()) and getattr(cls, "has_per_sample", False):
            names.append(option)
    return sorted(names)
