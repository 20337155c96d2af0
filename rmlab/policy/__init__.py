"""Policy optimisation of language models from rewards (``feedback=reinforce|rloo|grpo`` on sequence tasks).

- ``logprobs``: token log-probs, sequence sums and means, token entropies from logits and labels (float32).
- ``kl``: the k1 / k2 / k3 per-token KL estimators against a frozen reference.
- ``advantages``: leave-one-out baselines, RLOO and GRPO advantages, zero-variance groups.
- ``objective``: the clipped importance-ratio surrogate and the ``loss_type`` aggregations.
- ``algorithms``: ``SequenceReinforce``, ``RLOO`` and ``GRPO`` over one shared objective (``PolicyAlgorithm``).
- ``step``: the shared "sample K per prompt, score, advantages, update" step.
"""

from typing import Any

from rmlab.policy.algorithms import GRPO, RLOO, PolicyAlgorithm, PolicyLoss, Rollout, SequenceReinforce
from rmlab.policy.step import completion_logprobs, policy_step

__all__ = ["GRPO", "RLOO", "PolicyAlgorithm", "PolicyLoss", "Rollout", "SequenceReinforce", "as_policy",
           "completion_logprobs", "policy_step"]


def as_policy(feedback: Any) -> PolicyAlgorithm:
    """The sequence algorithm behind a feedback bound to a sequence task: ``rloo`` and ``grpo`` are their own;
    ``reinforce`` (``rmlab.feedback.Reinforce``) builds its ``SequenceReinforce`` in ``check``."""
    if isinstance(feedback, PolicyAlgorithm):
        return feedback
    algorithm = getattr(feedback, "sequence", None)
    if not isinstance(algorithm, PolicyAlgorithm):
        raise TypeError(f"{type(feedback).__name__} is not bound to a sequence task (call check(reward, info) on a "
                        "sequence task first)")
    return algorithm
