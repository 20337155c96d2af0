"""Reward feedback on sequence tasks: one training batch of ``SequenceModule`` through ``rmlab.policy.policy_step``.

For each batch of training prompts (``feedback=reinforce|rloo|grpo``): sample ``num_samples`` completions per prompt
with the policy's sampling settings, decode them and score each with the run's reward against its prompt's example,
turn rewards into advantages, and take ``num_iterations`` optimizer steps on
``loss_weight * cross entropy (the batch's reference completions) + feedback_weight * policy loss``, each through the
module's own ``_optimize`` (clipping, precision, accumulation and DDP as for every run).

- The model runs with dropout off for the whole step (TRL's ``disable_dropout``): the log-probs that the importance
  ratio compares must be those of the distribution the completions were sampled from.
- The reference policy is a frozen copy of the model as training starts (the ``init_from`` model when one is given),
  kept out of the module's state dict (and so out of checkpoints). The KL to it is logged in every run; ``beta``
  weighs it into the objective.
- The cross entropy on the reference completions is always computed (``train/loss``, so runs with and without
  feedback compare); it carries a gradient only when ``loss_weight > 0``.
- Beside the reward, the sampled completions' extras (``rmlab.rewards.extras``: each term of a combined reward, the
  gold reward of a task that has one) are averaged into the step's metrics (``train/<term>``,
  ``train/gold_reward``): the proxy being optimised and the truth, step by step.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rmlab.generation import decode_ids, generate
from rmlab.policy import PolicyAlgorithm, policy_step
from rmlab.rewards.extras import score_with_extras
from rmlab.sequence import TextExample


class PolicyBatch(NamedTuple):
    """What one batch of prompts gave: the cross entropy before its first update, the policy step's metrics (0-d
    tensors), the sampled completions' rewards, and how many optimizer steps it took."""

    loss: Tensor
    metrics: dict[str, Tensor]
    rewards: Tensor
    steps: int


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The reference policy: a copy of ``model`` in eval mode, without gradients."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def run_policy_batch(module: Any, algorithm: PolicyAlgorithm, reference: torch.nn.Module | None, x: Tensor,
                     y: Tensor, prompt_ids: Tensor, prompt_mask: Tensor, examples: list[TextExample],
                     optimizer: Any) -> PolicyBatch:
    """One generation batch of ``module`` (a ``SequenceModule``): see the module docstring."""
    model = module.model
    tokenizer = module.tokenizer
    scored: list[Tensor] = []
    extras: dict[str, Tensor] = {}  # of the sampled completions (the first scoring; a greedy baseline scores again)
    losses: list[Tensor] = []
    steps = 0

    def sample(ids: Tensor, mask: Tensor, greedy: bool) -> tuple[Tensor, Tensor]:
        out = generate(model, ids, mask, do_sample=not greedy, **algorithm.sampling)
        return out.ids, out.mask

    def score(completion_ids: Tensor, completion_mask: Tensor, prompt_index: Tensor) -> Tensor:
        texts = decode_ids(tokenizer, completion_ids, completion_mask)
        rewards, parts = score_with_extras(module.reward, module.info, texts,
                                           [examples[i] for i in prompt_index.tolist()])
        rewards = torch.as_tensor(rewards, dtype=torch.float32).to(completion_ids.device)
        if not scored:
            extras.update({name: values.float().mean().to(completion_ids.device) for name, values in parts.items()})
        scored.append(rewards)
        return rewards

    def update(pg_loss: Tensor) -> None:
        nonlocal steps
        with_grad = algorithm.loss_weight > 0
        task_loss = None
        if with_grad or not losses:
            with torch.set_grad_enabled(with_grad):
                task_loss = module.loss_fn(model(x), y)
            losses.append(task_loss.detach())
        total = algorithm.combine(task_loss if with_grad else None, pg_loss)
        steps += int(module._optimize(optimizer, total, x.shape[0]))

    was_training = model.training
    model.eval()
    try:
        metrics = policy_step(algorithm, prompt_ids, prompt_mask, generate=sample, score=score, policy=model,
                              update=update, reference=reference)
    finally:
        model.train(was_training)
    return PolicyBatch(losses[0], {**metrics, **extras}, scored[0], steps)

