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
completion together) the model takes. Log-probabilities of given completions are the logits of one teacher-forced
pass read at the labels: ``rmlab.policy.logprobs`` (``token_logprobs``, ``completion_labels``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from rmlab.kinds import TEXT
from rmlab.sequence import Tokenizer


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
