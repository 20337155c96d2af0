"""The ``sequence`` output kind: the contract between sequence tasks, language models, generation, sequence losses
and text rewards.

A sequence task yields ``TextExample`` (a prompt, the completion to learn, and what a verifier needs). The run
tokenises the examples once with the language model's own ``Tokenizer`` (``rmlab.sequence_data``), so the same task
works with the byte-level ``causal_lm`` and with a Hugging Face model.

Training batch (teacher forcing), one row per example, right-padded:
    ids             int64 (B, T)  ``[bos] prompt completion [eos] pad...`` (bos only where the tokenizer has one)
    attention_mask  bool  (B, T)  True on real tokens
    labels          int64 (B, T)  ``labels[b, t] = ids[b, t + 1]`` where that token belongs to the completion (its
                                  EOS included), else ``IGNORE_INDEX``: a loss sees the completion tokens only.
The model maps (ids, attention_mask) to next-token logits (B, T, V); a sequence loss is ``forward(logits, labels)``.

Generation batch (evaluation and policy optimisation), left-padded so every row's last prompt token is at the end:
    prompt_ids      int64 (B, P)
    prompt_mask     bool  (B, P)
and the examples themselves, which the rewards score against. ``rmlab.generation.generate`` returns completion ids
(B, N) and a mask (True up to and including the first EOS); rewards see the decoded completion texts.

A text reward scores ``(completions: list[str], examples: list[TextExample]) -> float tensor (B,)``, higher is
better; its aggregate over a split is the mean of the per-sample scores unless the reward says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TextExample:
    """One example of a sequence task.

    ``completion`` is what the model is trained on and scored against in its split (train labels, and val labels
    when the task corrupts val, may be corrupted; test completions never are). ``meta`` carries what a task's
    verifier or a reward needs beyond the text (e.g. ``{"answer": 579}``, ``{"label": "positive"}``, the clean
    completion of a corrupted example as ``{"clean": ...}``); it is never shown to the model.
    """

    prompt: str
    completion: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Tokenizer(Protocol):
    """What rmlab needs of a tokenizer (the byte-level one that ships with rmlab, or a Hugging Face one).

    ``encode`` adds no special tokens; ``decode`` drops them. ``bos_id`` is None where the model has no BOS token.
    """

    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class Verifier(Protocol):
    """A task's own answer checker: 1.0 for a correct completion, 0.0 for a wrong one (partial credit allowed)."""

    def __call__(self, completion: str, example: TextExample) -> float: ...
