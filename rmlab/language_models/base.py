"""The interface every rmlab language model implements, and the log-probability helpers built on it.

A language model maps token ids to next-token logits and carries its tokenizer:

    logits = model(ids, attention_mask=None, cache=None)      # (B, T, V)

- ``attention_mask=None``: every row starts at position 0 (no left padding, no holes). Right padding is fine: in a
  causal model no real token attends to a later pad, and a pad position's own logits are ignored by the labels. This
  is the fast path training uses.
- ``attention_mask`` bool (B, S), True on real tokens, where S counts the tokens already in ``cache`` plus the T of
  this call: positions are counted over the real tokens only (``cumsum(mask) - 1``), and attention reaches only real
  tokens. Left-padded prompts (generation) and prompt + completion batches with holes (policy optimisation) use it.
- ``cache``: an object from ``model.new_cache(batch_size, max_length)``; the call appends this call's keys and values
  to it, so the next call passes only the new tokens (generation with a KV cache).

``model.tokenizer`` is a ``rmlab.sequence.Tokenizer``; ``model.max_length`` the longest sequence (prompt and
completion together) the model takes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmlab.kinds import TEXT
from rmlab.sequence import IGNORE_INDEX, Tokenizer


class LanguageModel(nn.Module):
    """Base of ``causal_lm`` and ``hf_causal_lm``: a causal LM over ``text`` inputs (see the module docstring)."""

    input_types: ClassVar[tuple[str, ...]] = (TEXT,)
    tokenizer: Tokenizer
    max_length: int

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None, cache: Any = None) -> Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def new_cache(self, batch_size: int, max_length: int) -> Any:
        """An empty KV cache for ``batch_size`` rows of up to ``max_length`` tokens."""
        raise NotImplementedError  # pragma: no cover - abstract


def positions_from_mask(attention_mask: Tensor, length: int) -> Tensor:
    """Position ids (B, length) of the last ``length`` columns of ``attention_mask``: real tokens count 0, 1, 2, ...
    from each row's first real token; pads get the position of the token before them (0 at the start)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -length:]


def token_logprobs(model: nn.Module, ids: Tensor, labels: Tensor, attention_mask: Tensor | None = None,
                   temperature: float = 1.0) -> Tensor:
    """float32 (B, T): ``log p(labels[b, t] | ids[b, :t + 1])`` where ``labels`` is not ``IGNORE_INDEX``, 0 elsewhere.

    ``labels`` follows the training layout of ``rmlab.sequence`` (the next token where it is a completion token), so
    ``token_logprobs(...).sum(-1)`` is the log-probability of each row's completion. ``temperature`` divides the
    logits first, as generation does when it samples.
    """
    logits = model(ids, attention_mask).float()
    if temperature != 1.0:
        logits = logits / temperature
    valid = labels != IGNORE_INDEX
    nll = F.cross_entropy(logits.flatten(0, 1), labels.clamp_min(0).flatten(), reduction="none")
    return -nll.view(labels.shape) * valid


def completion_batch(prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                     completion_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Prompts (left-padded) followed by their completions (e.g. a ``Generation``'s ``ids`` and ``mask``) as one
    batch for ``token_logprobs``: ``(ids, attention_mask, labels)`` with labels on the completion tokens only."""
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask.bool(), completion_mask.bool()], dim=1)
    labels = torch.full_like(ids, IGNORE_INDEX)
    prompt_length = prompt_ids.shape[1]
    # Position prompt_length - 1 + i predicts completion token i.
    labels[:, prompt_length - 1:-1] = torch.where(completion_mask.bool(), completion_ids, IGNORE_INDEX)
    return ids, attention_mask, labels
