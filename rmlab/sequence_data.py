"""The data path of sequence tasks: examples tokenised once with the model's tokenizer into tensors, batches as slices.

``tokenize_split`` lays out a split as ``rmlab.sequence`` describes (right-padded ``ids`` and ``labels`` for teacher
forcing, left-padded ``prompt_ids`` for generation) and checks that every example fits ``model.max_length``; it runs
at start-up, so a task too long for the model fails before anything is tracked. The tensors then move to the
training device once (``TokenizedSplit.to``).

Batches keep the habits of ``rmlab.data``: one gather per epoch (a seeded permutation), then slices (views). Each
batch is cut to the width of its longest row, a width computed on the host from lengths kept on the CPU, so no
batch reads a device value. ``TrainBatches`` groups ``steps_per_chunk`` batches into one ``TokenChunk`` per
Lightning step (a ``PromptChunk``, with the prompts and examples, when reward feedback trains on them);
``EvalBatches`` yields ``EvalBatch`` (teacher-forced tensors, prompts and the examples, which the rewards score
against).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rmlab.errors import ConfigError
from rmlab.sequence import IGNORE_INDEX, TextExample, Tokenizer


@dataclass(frozen=True)
class TokenizedSplit:
    """One split, tokenised. ``lengths`` and ``prompt_lengths`` stay on the CPU (batch widths are read from them)."""

    examples: list[TextExample]
    ids: Tensor  # int64 (N, T): [bos] prompt completion eos, then pad
    labels: Tensor  # int64 (N, T): next token on completion positions, IGNORE_INDEX elsewhere
    lengths: Tensor  # int64 (N,): real tokens per row
    prompt_ids: Tensor  # int64 (N, P): pad, then [bos] prompt
    prompt_mask: Tensor  # bool (N, P): True on real prompt tokens
    prompt_lengths: Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def to(self, device: torch.device | str) -> TokenizedSplit:
        return replace(self, ids=self.ids.to(device), labels=self.labels.to(device),
                       prompt_ids=self.prompt_ids.to(device), prompt_mask=self.prompt_mask.to(device))


def tokenize_split(examples: list[TextExample], tokenizer: Tokenizer, max_length: int, split: str,
                   task: str) -> TokenizedSplit:
    """Tokenise ``examples`` (see the module docstring); ConfigError if one does not fit ``max_length`` tokens."""
    if not examples:
        raise ConfigError(f"task {task}: the {split} split is empty")
    start = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    prompts, completions, too_long, empty = [], [], [], []
    for index, example in enumerate(examples):
        prompt = start + tokenizer.encode(example.prompt)
        completion = tokenizer.encode(example.completion) + [tokenizer.eos_id]
        if not prompt:
            empty.append(index)
        if len(prompt) + len(completion) > max_length:
            too_long.append((len(prompt) + len(completion), index))
        prompts.append(prompt)
        completions.append(completion)
    if empty:
        raise ConfigError(f"task {task}: {len(empty)} {split} example(s) have an empty prompt (first: #{empty[0]}) and "
                          "the model's tokenizer has no BOS token to start generation from")
    if too_long:
        longest, index = max(too_long)
        raise ConfigError(
            f"task {task}: {len(too_long)} of {len(examples)} {split} examples are longer than "
            f"model.max_length={max_length} tokens (prompt, completion and EOS; the longest, #{index}, has {longest}: "
            f"prompt {examples[index].prompt[:60]!r}); raise model.max_length or use shorter texts")
    lengths = torch.tensor([len(p) + len(c) for p, c in zip(prompts, completions)], dtype=torch.int64)
    prompt_lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int64)
    width, prompt_width = int(lengths.max()), int(prompt_lengths.max())
    ids = torch.full((len(examples), width), tokenizer.pad_id, dtype=torch.int64)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.int64)
    prompt_ids = torch.full((len(examples), prompt_width), tokenizer.pad_id, dtype=torch.int64)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        sequence = torch.tensor(prompt + completion, dtype=torch.int64)
        ids[row, :len(sequence)] = sequence
        # Position t predicts token t + 1: the completion's tokens are predicted from positions len(prompt) - 1 on.
        labels[row, len(prompt) - 1:len(sequence) - 1] = sequence[len(prompt):]
        prompt_ids[row, prompt_width - len(prompt):] = sequence[:len(prompt)]
    prompt_mask = torch.arange(prompt_width) >= (prompt_width - prompt_lengths).unsqueeze(1)
    return TokenizedSplit(list(examples), ids, labels, lengths, prompt_ids, prompt_mask, prompt_lengths)


def batch_widths(lengths: Tensor, batch_size: int) -> list[int]:
    """The longest row of each consecutive batch of ``lengths`` (a CPU tensor)."""
    count = len(lengths)
    padded = torch.zeros(-(-count // batch_size) * batch_size, dtype=lengths.dtype)
    padded[:count] = lengths
    return padded.view(-1, batch_size).amax(dim=1).tolist()


class TokenChunk(NamedTuple):
    """What a training step receives: ``steps`` batches of ``batch_size`` rows (the last may be shorter), their
    widths, and the number of real tokens in the chunk."""

    ids: Tensor
    labels: Tensor
    widths: list[int]
    tokens: int


class ChunkExamples:
    """The examples of a chunk's rows. Not a list: Lightning's batch transfer walks lists and refuses the frozen
    ``TextExample`` dataclasses inside; the tensors are on the device already."""

    __slots__ = ("items",)

    def __init__(self, items: list[TextExample]) -> None:
        self.items = items

    def __getitem__(self, rows: slice) -> list[TextExample]:
        return self.items[rows]

    def __len__(self) -> int:
        return len(self.items)


class PromptChunk(NamedTuple):
    """A ``TokenChunk`` with what policy optimisation needs besides: the rows' left-padded prompts (cut to the
    chunk's longest), the longest prompt of each batch, and the examples the rewards score against."""

    ids: Tensor
    labels: Tensor
    widths: list[int]
    tokens: int
    prompt_ids: Tensor
    prompt_mask: Tensor
    prompt_widths: list[int]
    examples: ChunkExamples


class TrainBatches:
    """Training chunks over a device-resident split: a new seeded permutation each epoch; under data parallelism
    each rank takes its own contiguous share of it (as ``rmlab.data.TensorBatches``). With ``prompts`` the chunks
    are ``PromptChunk`` (reward feedback generates from the prompts)."""

    def __init__(self, split: TokenizedSplit, batch_size: int, seed: int = 0, steps_per_chunk: int = 1,
                 max_batches: int | None = None, rank: int = 0, world_size: int = 1, prompts: bool = False) -> None:
        self.prompts = prompts
        self.split = split
        self.batch_size = batch_size
        self.steps_per_chunk = steps_per_chunk
        self.generator = torch.Generator().manual_seed(seed)
        self.rank = rank
        self.per_rank = len(split) // world_size if world_size > 1 else len(split)
        batches = -(-self.per_rank // batch_size)
        if max_batches is not None:
            batches = min(batches, max_batches)
        self.samples = min(self.per_rank, batches * batch_size)
        self.chunk = steps_per_chunk * batch_size

    def __len__(self) -> int:
        return -(-self.samples // self.chunk)

    def __iter__(self) -> Iterator[TokenChunk]:
        split = self.split
        perm = torch.randperm(len(split), generator=self.generator)
        offset = self.rank * self.per_rank
        perm = perm[offset:offset + self.samples]
        lengths = split.lengths[perm]
        widths = batch_widths(lengths, self.batch_size)
        width = max(widths)
        device_perm = perm.to(split.ids.device, non_blocking=True)
        ids, labels = split.ids[device_perm, :width], split.labels[device_perm, :width]
        if self.prompts:
            prompt_widths = batch_widths(split.prompt_lengths[perm], self.batch_size)
            prompt_ids, prompt_mask = split.prompt_ids[device_perm], split.prompt_mask[device_perm]
            full = prompt_ids.shape[1]
        for start in range(0, self.samples, self.chunk):
            stop = min(start + self.chunk, self.samples)
            first = start // self.batch_size
            count = -(-(stop - start) // self.batch_size)
            chunk_widths = widths[first:first + count]
            high = max(chunk_widths)
            tokens = int(lengths[start:stop].sum())
            if not self.prompts:
                yield TokenChunk(ids[start:stop, :high], labels[start:stop, :high], chunk_widths, tokens)
                continue
            chunk_prompts = prompt_widths[first:first + count]
            cut = full - max(chunk_prompts)  # prompts are left-padded: keep the last columns
            yield PromptChunk(ids[start:stop, :high], labels[start:stop, :high], chunk_widths, tokens,
                              prompt_ids[start:stop, cut:], prompt_mask[start:stop, cut:], chunk_prompts,
                              ChunkExamples([split.examples[i] for i in perm[start:stop].tolist()]))


class EvalBatch(NamedTuple):
    """One evaluation batch: teacher-forced ``ids``/``labels`` (cut to the batch's longest row), left-padded
    ``prompt_ids``/``prompt_mask`` (cut to its longest prompt) and the ``examples`` themselves."""

    ids: Tensor
    labels: Tensor
    prompt_ids: Tensor
    prompt_mask: Tensor
    examples: list[TextExample]


class EvalBatches:
    """A split in its own order, ``batch_size`` examples at a time (the first batch holds the first examples, whose
    generations the sample table shows). Rows may carry extra dimensions between the example and the token (a
    pair's two sequences: ``rmlab.sequence_pairs``); the cut to the batch's longest row applies to the last one."""

    def __init__(self, split: Any, batch_size: int) -> None:
        self.split = split
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def _batch(self, start: int, stop: int, width: int, prompt: int) -> EvalBatch:
        split = self.split
        cut = split.prompt_ids.shape[1] - prompt  # prompts are left-padded: keep the last columns
        return EvalBatch(split.ids[start:stop, ..., :width], split.labels[start:stop, ..., :width],
                         split.prompt_ids[start:stop, cut:], split.prompt_mask[start:stop, cut:],
                         split.examples[start:stop])

    def __iter__(self) -> Iterator[Any]:
        split = self.split
        for start in range(0, len(split), self.batch_size):
            stop = min(start + self.batch_size, len(split))
            width = int(split.lengths[start:stop].max())
            prompt = int(split.prompt_lengths[start:stop].max())
            yield self._batch(start, stop, width, prompt)
