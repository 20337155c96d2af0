"""Log-probabilities and entropies of given tokens under a language model's next-token logits.

Everything here takes logits (B, T, V) and labels (B, T) in the ``sequence`` contract (``rmlab.sequence``):
``labels[b, t]`` is the token that position ``t`` predicts, or ``IGNORE_INDEX`` where nothing is scored (prompt,
padding, anything after the completion's EOS). Results are float32 whatever the logits' dtype (bf16 log-probs lose
about two digits, and the policy ratio ``exp(logp - old_logp)`` is where that would show), with 0 at ignored
positions so sums over a row need no further masking.

``temperature`` divides the logits first: the log-probs are then those of the distribution the completions were
sampled from (a policy ratio must compare the same distribution before and after an update).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rmlab.sequence import IGNORE_INDEX


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


def _check_shapes(logits: Tensor, labels: Tensor) -> None:
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"expected logits (B, T, V) and labels (B, T), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")


def token_logprobs(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(log p(labels[b, t] | prefix), mask)``, both (B, T): float32 log-probs (0 where ignored) and the bool mask of
    scored positions (``labels != IGNORE_INDEX``).

    ``log_softmax`` at the label only: ``z_y - logsumexp(z)`` (stable; no (B, T, V) log-softmax is kept for autograd
    beyond what logsumexp needs).
    """
    _check_shapes(logits, labels)
    z = _scaled(logits, temperature)
    mask = labels != IGNORE_INDEX
    index = labels.masked_fill(~mask, 0).long().unsqueeze(-1)
    logps = z.gather(-1, index).squeeze(-1) - torch.logsumexp(z, dim=-1)
    return logps.masked_fill(~mask, 0.0), mask


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy (nats) of each position's next-token distribution, float32 (B, T). ``-sum p log p`` with ``0 log 0 =
    0``, so logits of -inf (a masked vocabulary entry) give a finite entropy."""
    z = _scaled(logits, temperature)
    log_p = torch.log_softmax(z, dim=-1)
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)


def sequence_logprobs(logits: Tensor, labels: Tensor, temperature: float = 1.0,
                      average: bool = False) -> tuple[Tensor, Tensor]:
    """``(log-prob of each row's scored tokens, token count)``, both (B,) float32: the sum over the row's scored
    positions, or with ``average`` their mean (a row with no scored token has mean 0)."""
    logps, mask = token_logprobs(logits, labels, temperature)
    total = logps.sum(-1)
    count = mask.sum(-1).float()
    return (total / count.clamp(min=1.0) if average else total), count


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the True entries of ``mask`` (0 when there are none), float32 scalar."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def completion_labels(prompt_length: int, completion_ids: Tensor, completion_mask: Tensor) -> Tensor:
    """Labels (B, P + N) for the teacher-forced pass over ``cat([prompt_ids, completion_ids], 1)``.

    Prompts are left-padded to a common length P, so completion token ``j`` is predicted at position ``P - 1 + j``
    in every row; positions outside the completion (and completion tokens after its EOS: ``completion_mask`` False)
    are ``IGNORE_INDEX``. The last position predicts nothing.
    """
    if prompt_length < 1:
        raise ValueError(f"prompt_length must be >= 1 (a completion is predicted from the prompt), got {prompt_length}")
    batch, n = completion_ids.shape
    labels = completion_ids.new_full((batch, prompt_length + n), IGNORE_INDEX)
    labels[:, prompt_length - 1:prompt_length - 1 + n] = completion_ids.masked_fill(~completion_mask.bool(),
                                                                                   IGNORE_INDEX)
    return labels
