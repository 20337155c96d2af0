"""The one policy-optimisation step every algorithm shares: sample K completions per prompt, score them, compute
advantages, update (``num_iterations`` times).

The step knows nothing of Lightning, tokenizers or the reward's text: the caller hands it four callables, so the same
code runs inside the training module, a benchmark's hand-written loop and the tests:

- ``generate(prompt_ids, prompt_mask, greedy) -> (completion_ids, completion_mask)``: completions of left-padded
  prompts (``rmlab.generation``), sampled with ``algorithm.sampling`` or greedy; ``completion_mask`` is True up to
  and including each row's first EOS.
- ``score(completion_ids, completion_mask, prompt_index) -> rewards (rows,)``: the reward of each completion, row
  ``i`` being a completion of prompt ``prompt_index[i]`` of the batch (the caller decodes and scores against that
  prompt's example).
- ``policy(input_ids, attention_mask) -> logits (rows, P + N, V)``, with gradient; ``reference`` the same for the
  frozen reference policy, called under ``no_grad``: required when ``algorithm.needs_reference`` (``beta > 0``);
  given with ``beta = 0`` it costs one forward pass and only logs the KL.
- ``update(pg_loss)``: one optimizer step on ``pg_loss`` (the caller adds the task loss with ``algorithm.combine``
  when ``loss_weight > 0``, backpropagates, clips and steps).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rmlab.policy.algorithms import PolicyAlgorithm, Rollout
from rmlab.policy.logprobs import token_entropy, token_logprobs
from rmlab.sequence import IGNORE_INDEX

Generate = Callable[[Tensor, Tensor, bool], tuple[Tensor, Tensor]]
Score = Callable[[Tensor, Tensor, Tensor], Tensor]
Logits = Callable[[Tensor, Tensor], Tensor]


def completion_logprobs(logits: Tensor, prompt_length: int, completion_ids: Tensor, completion_mask: Tensor,
                        temperature: float, entropy: str = "none") -> tuple[Tensor, Tensor | None]:
    """Token log-probs (rows, N) of the completions, from the logits of the teacher-forced pass over
    ``cat([prompt, completion])``: completion token ``j`` is predicted at position ``P - 1 + j`` (prompts are
    left-padded to a common length P). Also the token entropies: ``entropy="grad"`` with their gradient, ``"log"``
    detached (for the metric only: no graph through a second softmax), ``"none"`` not computed."""
    n = completion_ids.shape[1]
    scoring = logits[:, prompt_length - 1:prompt_length - 1 + n]
    labels = completion_ids.masked_fill(~completion_mask.bool(), IGNORE_INDEX)
    logps, _ = token_logprobs(scoring, labels, temperature)
    if entropy == "none":
        return logps, None
    if entropy == "log":
        with torch.no_grad():
            return logps, token_entropy(scoring, temperature)
    return logps, token_entropy(scoring, temperature)


def policy_step(algorithm: PolicyAlgorithm, prompt_ids: Tensor, prompt_mask: Tensor, *, generate: Generate,
                score: Score, policy: Logits, update: Callable[[Tensor], None],
                reference: Logits | None = None) -> dict[str, Tensor]:
    """Run one generation batch through ``algorithm`` and return its metrics (detached 0-d tensors; the update
    metrics are averaged over the ``num_iterations`` updates). ``prompt_ids``/``prompt_mask`` are (B, P)."""
    k = algorithm.num_samples
    temperature = algorithm.temperature
    prompt_index = torch.arange(prompt_ids.shape[0], device=prompt_ids.device).repeat_interleave(k)
    ids, mask = prompt_ids[prompt_index], prompt_mask[prompt_index]
    with torch.no_grad():
        completion_ids, completion_mask = generate(ids, mask, False)
        completion_mask = completion_mask.bool()
        rewards = score(completion_ids, completion_mask, prompt_index)
        greedy_rewards = None
        if algorithm.needs_greedy:
            greedy_ids, greedy_mask = generate(prompt_ids, prompt_mask, True)
            greedy_rewards = score(greedy_ids, greedy_mask.bool(), prompt_index[::k])
    input_ids = torch.cat([ids, completion_ids], 1)
    attention_mask = torch.cat([mask.bool(), completion_mask], 1)
    p = ids.shape[1]

    def logps_of(model: Logits, entropy: str = "none") -> tuple[Tensor, Tensor | None]:
        return completion_logprobs(model(input_ids, attention_mask), p, completion_ids, completion_mask,
                                   temperature, entropy)

    ref_logps = None
    if reference is not None:  # with beta = 0 only to log the KL
        with torch.no_grad():
            ref_logps, _ = logps_of(reference)
    elif algorithm.needs_reference:
        raise ValueError(f"feedback={algorithm.name} with beta={algorithm.beta} needs a reference policy")

    def make_rollout(old_logps: Tensor) -> Rollout:
        return algorithm.rollout(rewards, completion_mask, old_logps, ref_logps, greedy_rewards)

    rollout = None
    if algorithm.needs_old_logps:
        with torch.no_grad():
            rollout = make_rollout(logps_of(policy)[0])
    totals: dict[str, Tensor] = {}
    for _ in range(algorithm.num_iterations):
        logps, entropy = logps_of(policy, "grad" if algorithm.entropy_coef > 0 else "log")
        if rollout is None:
            rollout = make_rollout(logps.detach())
        out = algorithm.loss(logps, rollout, entropy)
        update(out.loss)
        for name, value in out.metrics.items():
            totals[name] = totals.get(name, 0) + value.detach()
    return {name: value / algorithm.num_iterations for name, value in totals.items()}
