"""Reward feedback: turn a reward into a gradient with REINFORCE (score-function policy gradient).

The model's output defines a policy over actions, by output kind:

- ``logits`` (B, C): Categorical over the C classes.
- ``value``  (B,):   Normal(mean=output, sigma); ``sigma`` is fixed, or learned as ``log_sigma`` (an ``nn.Parameter``
  of this module, trained by the optimizer once the module is a child of the LightningModule).
- ``pair``   (B, 2): which item to prefer; action 0 picks chosen, 1 picks rejected, with
  P(chosen) = sigmoid(s_chosen - s_rejected). That is a Categorical over the two scores (softmax of two logits is
  the sigmoid of their difference), so it shares the ``logits`` code.

``num_samples`` actions are drawn per input and scored by the reward's own ``per_sample(output_like, target)``,
where an action becomes an output-like tensor: a one-hot row for a class (its argmax is the class), the sampled
number for a value, (1, 0) for picking chosen and (0, 1) for picking rejected. **Contract**: the per-sample form of a
classification or pair reward must depend only on the argmax / order of its output, never on its magnitudes (one-hot
rows are not the model's scores). ``check`` probes this at start-up and rejects a reward that breaks it (e.g.
``reward_margin``, which scores the size of the gap, and a sampled choice has no size).

``pg_loss = -mean((R(a) - b) * log pi(a|x))`` over all samples, with the baseline ``b`` detached: its gradient in
expectation is ``-grad E[R]``, for any baseline that does not depend on the action ``a`` itself. Baselines:

- ``none``: b = 0.
- ``batch_mean``: the leave-one-out mean reward of the sample's group: the other samples of the same input when
  ``num_samples > 1``, else the other inputs of the batch. Leaving the sample out keeps the estimate unbiased (a
  mean that includes it shrinks the gradient by (n-1)/n); the reported mean baseline still equals the batch mean.
- ``moving_average``: an exponential average of past batch-mean rewards (a buffer; the first training batch sets it
  to its own mean). Updated only in training mode, so evaluation does not move it.
- ``greedy`` (self-critical): the reward of the model's own greedy action: the argmax class, the predicted value,
  the higher-scored item of the pair.

Advantages are not normalised: dividing by their batch std rescales the gradient by a noisy factor, a job better left
to the optimizer (Adam) and ``feedback_weight``. Everything runs in float32 with autocast off, and nothing reads a
device value back to the host.

On a ``sequence`` task (a language model) the policy is the model's distribution over completions, and ``check``
builds the sequence algorithm ``rmlab.policy.SequenceReinforce`` from the same config (its KL, entropy and sampling
keys, ``beta`` ... ``max_new_tokens``, apply to sequence tasks only; ``sigma`` and ``learn_sigma`` to value outputs
only): ``rmlab.policy.as_policy(feedback)`` returns it.
"""

import math
from contextlib import nullcontext
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.functional import one_hot

from rmlab.errors import IncompatibleError, check
from rmlab.kinds import LOGITS, PAIR, SEQUENCE, VALUE, TaskInfo
from rmlab.policy.algorithms import SequenceReinforce

BASELINES = ("none", "batch_mean", "moving_average", "greedy")
KINDS = (LOGITS, VALUE, PAIR)
DEFAULT_SIGMA = 0.5
# Keys that only a sequence task uses, with their defaults (a non-default value elsewhere is an error).
SEQUENCE_DEFAULTS: dict[str, Any] = {"beta": 0.0, "kl_estimator": "k1", "kl_in": "reward", "entropy_coef": 0.0,
                                     "temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 64}


class FeedbackOut(NamedTuple):
    """One feedback step. Only ``pg_loss`` carries a gradient; the rest are detached scalars for logging."""

    pg_loss: Tensor  # REINFORCE surrogate; its gradient estimates -grad E[reward]
    sampled_reward: Tensor  # mean reward of the sampled actions
    baseline: Tensor  # mean baseline subtracted from them
    advantage_std: Tensor  # spread of (reward - baseline): the estimator's noise scale


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Reinforce(nn.Module):
    """REINFORCE reward feedback: ``loss_total = loss_weight * loss + feedback_weight * pg_loss``.

    ``check(reward, info)`` must be called once before ``forward``: it validates the reward and binds the task's
    output kind (``logits`` and ``pair`` outputs can have the same shape, so the kind is not read off the tensor).
    """

    accepts: ClassVar[tuple[str, ...]] = (*KINDS, SEQUENCE)

    def __init__(self, loss_weight: float = 1.0, feedback_weight: float = 1.0, baseline: str = "batch_mean",
                 momentum: float = 0.9, num_samples: int = 1, sigma: float = DEFAULT_SIGMA, learn_sigma: bool = False,
                 beta: float = 0.0, kl_estimator: str = "k1", kl_in: str = "reward", entropy_coef: float = 0.0,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, max_new_tokens: int = 64) -> None:
        super().__init__()
        check(_number(loss_weight) and loss_weight >= 0,
              f"feedback.loss_weight must be a number >= 0, got {loss_weight!r}")
        check(_number(feedback_weight) and feedback_weight >= 0,
              f"feedback.feedback_weight must be a number >= 0, got {feedback_weight!r}")
        check(loss_weight > 0 or feedback_weight > 0,
              "feedback.loss_weight and feedback.feedback_weight are both 0: nothing would be trained; "
              "set at least one > 0")
        check(baseline in BASELINES, f"feedback.baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
        check(_number(momentum) and 0 <= momentum < 1, f"feedback.momentum must be in [0, 1), got {momentum!r}")
        check(isinstance(num_samples, int) and not isinstance(num_samples, bool) and num_samples >= 1,
              f"feedback.num_samples must be an integer >= 1, got {num_samples!r}")
        check(_number(sigma) and sigma > 0, f"feedback.sigma must be a number > 0, got {sigma!r}")
        check(isinstance(learn_sigma, bool), f"feedback.learn_sigma must be true or false, got {learn_sigma!r}")
        check(not (learn_sigma and feedback_weight == 0),
              "feedback.learn_sigma=true with feedback.feedback_weight=0: sigma gets no gradient; set one of them")
        self.sequence_keys = {"beta": beta, "kl_estimator": kl_estimator, "kl_in": kl_in,
                              "entropy_coef": entropy_coef, "temperature": temperature, "top_k": top_k,
                              "top_p": top_p, "max_new_tokens": max_new_tokens}
        # Validated here, where the config enters; the algorithm itself is built by check() on a sequence task.
        SequenceReinforce(loss_weight=loss_weight, feedback_weight=feedback_weight, baseline=baseline,
                          momentum=momentum, num_samples=num_samples, **self.sequence_keys)
        self.beta, self.kl_estimator, self.kl_in = beta, kl_estimator, kl_in
        self.entropy_coef, self.temperature, self.top_k, self.top_p = entropy_coef, temperature, top_k, top_p
        self.max_new_tokens = max_new_tokens
        self.loss_weight = float(loss_weight)
        self.feedback_weight = float(feedback_weight)
        self.baseline = baseline
        self.momentum = float(momentum)
        self.num_samples = num_samples
        self.sigma = float(sigma)
        self.learn_sigma = learn_sigma
        self.output_kind: str | None = None  # bound by check()
        if learn_sigma:
            self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))
        if baseline == "moving_average":
            # Persistent, so a resumed run continues from the same average.
            self.register_buffer("average", torch.zeros(()))
            self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def extra_repr(self) -> str:
        return (f"baseline={self.baseline}, num_samples={self.num_samples}, loss_weight={self.loss_weight}, "
                f"feedback_weight={self.feedback_weight}")

    # -- start-up -----------------------------------------------------------------------------------------------
    def check(self, reward: Any, info: TaskInfo) -> None:
        """Raise before training unless the reward can be fed back on this task; bind the task's output kind."""
        kind = info.output_kind
        if kind == SEQUENCE:
            self._bind_sequence(reward, info)
            return
        check(kind in KINDS, f"feedback=reinforce supports output kinds {', '.join(self.accepts)}; "
                             f"task={info.name} outputs {kind!r}")
        changed = [f"{key}={value!r}" for key, value in self.sequence_keys.items() if value != SEQUENCE_DEFAULTS[key]]
        check(not changed, f"feedback.{', feedback.'.join(changed)}: KL, entropy and sampling keys apply to "
                           f"sequence tasks (language models) only, but task={info.name} outputs {kind!r}; leave "
                           "them at their defaults")
        if not reward.has_per_sample:
            problem = "has no per-sample form (it does not decompose over samples)"
        elif not scores_actions(reward, info):
            problem = ("scores the magnitudes of the model's outputs, not only their argmax / order, and a sampled "
                       "action has no magnitude")
        else:
            problem = None
        if problem:
            fits = [name for name in feedback_rewards(info) if name != reward.name]
            raise IncompatibleError(
                f"feedback=reinforce cannot feed back reward={reward.name}: it {problem}. Rewards that can be fed "
                f"back on task={info.name}: {', '.join(fits) or '(none)'}; or keep reward={reward.name} with "
                f"feedback=none"
            )
        check(not self.learn_sigma or kind == VALUE,
              f"feedback.learn_sigma=true trains the Gaussian policy of value outputs, but task={info.name} outputs "
              f"{kind!r} (a categorical policy has no sigma); set feedback.learn_sigma=false")
        self.output_kind = kind

    def _bind_sequence(self, reward: Any, info: TaskInfo) -> None:
        check(not self.learn_sigma and self.sigma == DEFAULT_SIGMA,
              f"feedback.sigma and feedback.learn_sigma set the Gaussian policy of value outputs, but task={info.name} "
              f"is a sequence task; leave them at their defaults ({DEFAULT_SIGMA}, false)")
        algorithm = SequenceReinforce(loss_weight=self.loss_weight, feedback_weight=self.feedback_weight,
                                      baseline=self.baseline, momentum=self.momentum, num_samples=self.num_samples,
                                      **self.sequence_keys)
        algorithm.check(reward, info)
        self.sequence = algorithm  # a child module: its moving average is saved with the model
        self.output_kind = SEQUENCE

    # -- training -----------------------------------------------------------------------------------------------
    def combine(self, loss: Tensor, pg_loss: Tensor) -> Tensor:
        """``loss_weight * loss + feedback_weight * pg_loss``. A zero-weighted term is left out rather than multiplied
        by 0, so a term that is only logged (a non-finite loss in pure reward-driven training) cannot give NaN."""
        if self.loss_weight == 0:
            return self.feedback_weight * pg_loss
        if self.feedback_weight == 0:
            return self.loss_weight * loss
        return self.loss_weight * loss + self.feedback_weight * pg_loss

    def current_sigma(self) -> Tensor | float:
        """Std of the Gaussian policy on value outputs (a tensor with a gradient when learned)."""
        return self.log_sigma.float().exp() if self.learn_sigma else self.sigma

    def forward(self, output: Tensor, target: Tensor, reward: Any) -> FeedbackOut:
        if self.output_kind is None:
            raise RuntimeError("call Reinforce.check(reward, info) before forward: it binds the task's output kind")
        if self.output_kind == SEQUENCE:
            raise RuntimeError("on a sequence task reinforce runs as rmlab.policy.as_policy(feedback) through "
                               "rmlab.policy.policy_step, not forward")
        # float32 whatever the trainer's precision: log-probabilities and advantages lose too much in 16 bits.
        with _autocast_off(output.device):
            out = output.float()
            k, batch = self.num_samples, out.shape[0]
            actions, log_prob = self._gaussian(out) if self.output_kind == VALUE else self._categorical(out)
            targets = target.expand(k, *target.shape).flatten(0, 1)  # row i*B + j is input j, sample i
            with torch.no_grad():
                rewards = reward.per_sample(actions.flatten(0, 1), targets).float().view(k, batch)
                baseline = self._baseline(rewards, reward, out.detach(), target)
            advantage = rewards - baseline
            pg_loss = -(advantage * log_prob).mean()
        return FeedbackOut(pg_loss, rewards.mean(), baseline.mean(), advantage.std(correction=0))

    def _categorical(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """Sample classes (or pair sides) by Gumbel-max: argmax(log p + Gumbel noise) ~ Categorical(p), with no
        host sync and no distribution-argument validation."""
        k = self.num_samples
        log_p = out.log_softmax(-1)  # (B, C)
        gumbel = -torch.empty((k, *log_p.shape), device=out.device).exponential_().log()
        actions = (log_p.detach() + gumbel).argmax(-1)  # (K, B)
        log_prob = log_p.expand(k, *log_p.shape).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        # One-hot rows: their argmax is the action (and for a pair, (1, 0) ranks chosen first).
        return one_hot(actions, out.shape[-1]).float(), log_prob

    def _gaussian(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """Sample values around the prediction; log-density up to its constant (which has no gradient)."""
        sigma = self.current_sigma()
        sigma_d = sigma.detach() if isinstance(sigma, Tensor) else sigma
        actions = out.detach() + sigma_d * torch.randn((self.num_samples, *out.shape), device=out.device)  # (K, B)
        log_sigma = self.log_sigma.float() if self.learn_sigma else math.log(sigma)
        log_prob = -(actions - out).square() / (2 * sigma**2) - log_sigma
        return actions, log_prob

    def _baseline(self, rewards: Tensor, reward: Any, out: Tensor, target: Tensor) -> Tensor:
        """Baseline broadcastable to the (K, B) rewards; never depends on the sample it is subtracted from (except
        on the first moving-average batch, which has no past to average)."""
        if self.baseline == "none":
            return rewards.new_zeros(())
        if self.baseline == "greedy":  # the predicted value, or the one-hot argmax class / higher-scored item
            greedy = out if self.output_kind == VALUE else one_hot(out.argmax(-1), out.shape[-1]).float()
            return reward.per_sample(greedy, target).float()  # (B,), shared by the K samples of an input
        if self.baseline == "batch_mean":
            dim = 0 if self.num_samples > 1 else 1  # the K samples of an input, else the batch
            n = rewards.shape[dim]
            if n == 1:
                return rewards.new_zeros(())  # nothing else to average
            return (rewards.sum(dim, keepdim=True) - rewards) / (n - 1)
        # moving_average: torch.where instead of an `if`, so "initialised?" never leaves the device.
        batch_mean = rewards.mean()
        current = torch.where(self.initialised, self.average.float(), batch_mean)
        if self.training:  # on the first batch current == batch_mean, so this initialises the average to it
            self.average.copy_(self.momentum * current + (1 - self.momentum) * batch_mean)
            self.initialised.fill_(True)
        return current


def _autocast_off(device: torch.device) -> Any:
    """Autocast disabled on ``device``; nothing to disable where it has no autocast (the meta device)."""
    if not torch.amp.is_autocast_available(device.type):
        return nullcontext()
    return torch.autocast(device.type, enabled=False)


def scores_actions(reward: Any, info: TaskInfo) -> bool:
    """Whether ``reward.per_sample`` depends only on what a sampled action carries: always for values; for classes
    and pairs, only the argmax / order. Probed once, on the host: one-hot rows against rows with the same argmax
    but other magnitudes must score the same."""
    if info.output_kind == VALUE:
        return True
    width = 2 if info.output_kind == PAIR else info.num_classes or 2
    actions = torch.eye(width)
    # Same argmax per row (the diagonal stays the largest for any width), other values and gaps.
    scaled = (width + 3) * actions - 2 + 0.5 * torch.arange(width)
    target = torch.zeros(width, 2) if info.output_kind == PAIR else torch.zeros(width, dtype=torch.long)
    with torch.no_grad():
        return torch.equal(reward.per_sample(actions, target).float(), reward.per_sample(scaled, target).float())


def feedback_rewards(info: TaskInfo) -> list[str]:
    """Reward config names (``conf/reward``, or the Hydra search path) that ``reinforce`` can feed back on the task:
    its class accepts the output kind, has a per-sample form, and (built with defaults) passes ``scores_actions``."""
    from hydra.utils import get_class

    from rmlab.build import group_options  # lazily: build imports the model zoo, which feedback does not need

    names = []
    for option, target in group_options("reward").items():
        try:
            cls = get_class(target)
            if not (cls.has_per_sample and info.output_kind in cls.accepts and scores_actions(cls(), info)):
                continue
        except Exception:  # an unimportable user config, or one that needs arguments: not a choice to offer
            continue
        names.append(option)
    return sorted(names)
