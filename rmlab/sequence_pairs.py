"""The data path of ``sequence_pair`` tasks (a language model trained on preference pairs of completions):
``PairExample``, pairs tokenised once with the model's tokenizer, training chunks and evaluation batches as slices.

A pair is a prompt with a chosen and a rejected completion. A split is tokenised as ``rmlab.sequence_data`` tokenises
a sequence task's split, once for the chosen completions and once for the rejected ones (the same checks: a pair too
long for ``model.max_length`` fails at start-up), then the two are stacked as ``ids``/``labels`` (N, 2, T) padded to
one width: index 0 is chosen, 1 rejected. ``as_rows`` lays a batch (B, 2, T) out as the ``[chosen rows; rejected
rows]`` (2B, T) of one forward pass, the layout ``rmlab.losses.preference_lm.pair_logps`` reads.

The chosen side is also the split's generation data: evaluation generates from its left-padded prompts and the text
rewards score the generations against its ``TextExample`` (the chosen completion as the reference, the pair's
``meta`` for a task's verifier).

Batches keep the habits of ``rmlab.sequence_data``: one seeded permutation per epoch, then slices, widths read from
lengths kept on the CPU. A training chunk carries the rows' indices in the split, so the module can pick the cached
reference log-probs of the same pairs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rmlab.sequence import IGNORE_INDEX, TextExample, Tokenizer
from rmlab.sequence_data import EvalBatches, TrainBatches, batch_widths, tokenize_split


@dataclass(frozen=True)
class PairExample:
    """One preference pair: a ``prompt``, the ``chosen`` completion and the ``rejected`` one. ``meta`` is what a
    verifier needs (``{"answer": ...}``), never shown to the model; a pair whose two completions were swapped by
    ``pair_flip`` keeps ``meta["flipped"] = True``."""

    prompt: str
    chosen: str
    rejected: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    def chosen_example(self) -> TextExample:
        """The pair as a sequence example: the prompt and the chosen completion (the reference of text rewards)."""
        return TextExample(prompt=self.prompt, completion=self.chosen, meta=self.meta)

    def rejected_example(self) -> TextExample:
        return TextExample(prompt=self.prompt, completion=self.rejected, meta=self.meta)


@dataclass(frozen=True)
class TokenizedPairs:
    """One split of pairs, tokenised. ``lengths`` (the longer completion's row of each pair) and ``prompt_lengths``
    stay on the CPU; ``examples`` are the chosen sides as ``TextExample`` (what the rewards score against)."""

    pairs: list[PairExample]
    examples: list[TextExample]
    ids: Tensor  # int64 (N, 2, T): chosen, rejected; each [bos] prompt completion eos, then pad
    labels: Tensor  # int64 (N, 2, T): next token on completion positions, IGNORE_INDEX elsewhere
    lengths: Tensor  # int64 (N,)
    prompt_ids: Tensor  # int64 (N, P): pad, then [bos] prompt
    prompt_mask: Tensor  # bool (N, P)
    prompt_lengths: Tensor  # int64 (N,)
    pair_tokens: Tensor  # int64 (N,): real tokens of the chosen row plus the rejected row

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def tokens(self) -> int:
        return int(self.pair_tokens.sum())

    def to(self, device: torch.device | str) -> TokenizedPairs:
        return replace(self, ids=self.ids.to(device), labels=self.labels.to(device),
                       prompt_ids=self.prompt_ids.to(device), prompt_mask=self.prompt_mask.to(device))


def _pad(x: Tensor, width: int, value: int) -> Tensor:
    return F.pad(x, (0, width - x.shape[1]), value=value)


def tokenize_pairs(pairs: list[PairExample], tokenizer: Tokenizer, max_length: int, split: str,
                   task: str) -> TokenizedPairs:
    """Tokenise ``pairs`` (see the module docstring); ConfigError if a completion does not fit ``max_length``."""
    chosen = tokenize_split([p.chosen_example() for p in pairs], tokenizer, max_length, split, task)
    rejected = tokenize_split([p.rejected_example() for p in pairs], tokenizer, max_length, split, task)
    width = max(chosen.ids.shape[1], rejected.ids.shape[1])
    ids = torch.stack([_pad(chosen.ids, width, tokenizer.pad_id), _pad(rejected.ids, width, tokenizer.pad_id)], 1)
    labels = torch.stack([_pad(chosen.labels, width, IGNORE_INDEX), _pad(rejected.labels, width, IGNORE_INDEX)], 1)
    return TokenizedPairs(list(pairs), chosen.examples, ids, labels, torch.maximum(chosen.lengths, rejected.lengths),
                          chosen.prompt_ids, chosen.prompt_mask, chosen.prompt_lengths,
                          chosen.lengths + rejected.lengths)


def as_rows(pairs: Tensor) -> Tensor:
    """(B, 2, T) -> (2B, T): the chosen rows, then the rejected rows."""
    return pairs.transpose(0, 1).reshape(-1, pairs.shape[-1])


class PairChunk(NamedTuple):
    """What a training step receives: ``len(widths)`` batches of ``batch_size`` pairs (the last may be shorter) as
    (n, 2, T) tensors, each batch's width, the pairs' indices in the split (on the device) and their real tokens."""

    ids: Tensor
    labels: Tensor
    index: Tensor
    widths: list[int]
    tokens: int


class PairTrainBatches(TrainBatches):
    """Training chunks of pairs: ``TrainBatches``' sizes, seeded permutation and per-rank share, over pairs."""

    def __iter__(self) -> Iterator[PairChunk]:  # type: ignore[override]
        split: TokenizedPairs = self.split  # type: ignore[assignment]
        perm = torch.randperm(len(split), generator=self.generator)
        offset = self.rank * self.per_rank
        perm = perm[offset:offset + self.samples]
        lengths = split.lengths[perm]
        widths = batch_widths(lengths, self.batch_size)
        device_perm = perm.to(split.ids.device, non_blocking=True)
        width = max(widths)
        ids, labels = split.ids[device_perm, :, :width], split.labels[device_perm, :, :width]
        for start in range(0, self.samples, self.chunk):
            stop = min(start + self.chunk, self.samples)
            first = start // self.batch_size
            chunk_widths = widths[first:first + -(-(stop - start) // self.batch_size)]
            high = max(chunk_widths)
            yield PairChunk(ids[start:stop, :, :high], labels[start:stop, :, :high], device_perm[start:stop],
                            chunk_widths, int(split.pair_tokens[perm[start:stop]].sum()))


class PairEvalBatch(NamedTuple):
    """One evaluation batch: the pairs' ``ids``/``labels`` (B, 2, T) cut to the longest row, the chosen side's
    left-padded prompts and examples, and the pairs' place in the split (``start``: the first row)."""

    ids: Tensor
    labels: Tensor
    prompt_ids: Tensor
    prompt_mask: Tensor
    examples: list[TextExample]
    start: int


class PairEvalBatches(EvalBatches):
    """A split of pairs (``TokenizedPairs``) in its own order, ``batch_size`` pairs at a time."""

    def _batch(self, start: int, stop: int, width: int, prompt: int) -> PairEvalBatch:
        return PairEvalBatch(*super()._batch(start, stop, width, prompt), start)
