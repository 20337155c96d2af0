"""Text generation for every rmlab language model: batched, left-padded, with a KV cache.

``generate(model, prompt_ids, prompt_mask, ...)`` continues left-padded prompts (the layout of ``rmlab.sequence``)
one token at a time: greedy (the argmax) or sampled (``temperature``, then ``top_k`` and ``top_p`` filtering), until
every row has produced EOS or ``max_new_tokens`` tokens, and never past ``model.max_length``. Each row is computed as
it would be alone: positions count its real tokens and attention skips its padding. ``num_return_sequences=K``
samples K completions per prompt (rows ``[p0 s0, p0 s1, ..., p1 s0, ...]``), the shape policy optimisation needs.
Sampling draws from ``generator`` (a ``torch.Generator`` on the model's device), so a seeded generator gives the
same completions every time.

``decode`` turns a ``Generation`` into completion texts. The ``generation`` config group's settings (how sequence tasks
are evaluated) are ``rmlab.generation_config.GenerationConfig``, re-exported here.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rmlab.generation_config import GenerationConfig
from rmlab.sequence import Tokenizer

__all__ = ["Generation", "GenerationConfig", "decode", "decode_ids", "generate"]


class Generation(NamedTuple):
    """What ``generate`` returns; N is the number of steps run (at most ``max_new_tokens``).

    ``ids`` int64 (B*K, N): generated tokens, ``pad_id`` after a row's EOS. ``mask`` bool (B*K, N): True up to and
    including the first EOS. ``logprobs`` float32 (B*K, N): log-probability of each generated token under the
    model's distribution at the sampling temperature (``log_softmax(logits / temperature)``; temperature 1 when
    greedy), before top-k/top-p filtering, 0 where ``mask`` is False: the quantity ``rmlab.policy.logprobs``
    recomputes from a teacher-forced pass over ``cat([prompt_ids, ids])`` at the same temperature.
    ``prompt_ids``/``prompt_mask``: the prompts the rows continue (repeated K times).
    """

    ids: Tensor
    mask: Tensor
    logprobs: Tensor
    prompt_ids: Tensor
    prompt_mask: Tensor


@torch.no_grad()
def generate(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, *, max_new_tokens: int,
             do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             num_return_sequences: int = 1, generator: torch.Generator | None = None,
             use_cache: bool = True) -> Generation:
    """Continue each left-padded prompt (see the module docstring). ``use_cache=False`` recomputes the whole
    sequence at every step (the reference the KV cache is tested and benchmarked against)."""
    tokenizer = model.tokenizer
    if num_return_sequences > 1:
        prompt_ids = prompt_ids.repeat_interleave(num_return_sequences, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(num_return_sequences, dim=0)
    prompt_mask = prompt_mask.bool()
    batch, prompt_length = prompt_ids.shape
    steps = min(max_new_tokens, model.max_length - prompt_length)
    if steps < 1:
        raise ValueError(f"prompts of {prompt_length} tokens leave no room to generate within "
                         f"model.max_length={model.max_length}")
    cache = model.new_cache(batch, prompt_length + steps) if use_cache else None
    sequence, mask = prompt_ids, prompt_mask
    logits = model(prompt_ids, prompt_mask, cache=cache)[:, -1]
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
    tokens, masks, logprobs = [], [], []
    for step in range(steps):
        token, logprob = _pick(logits.float(), do_sample, temperature, top_k, top_p, generator)
        alive = ~finished
        token = torch.where(alive, token, tokenizer.pad_id)
        tokens.append(token)
        masks.append(alive)
        logprobs.append(logprob * alive)
        finished = finished | (token == tokenizer.eos_id)
        # One host read per step: decoding is sequential anyway, and stopping early saves whole forward passes.
        if step == steps - 1 or bool(finished.all()):
            break
        mask = torch.cat([mask, alive.unsqueeze(1)], dim=1)
        if cache is not None:
            logits = model(token.unsqueeze(1), mask, cache=cache)[:, -1]
        else:
            sequence = torch.cat([sequence, token.unsqueeze(1)], dim=1)
            logits = model(sequence, mask)[:, -1]
    return Generation(torch.stack(tokens, 1), torch.stack(masks, 1), torch.stack(logprobs, 1), prompt_ids,
                      prompt_mask)


def _pick(logits: Tensor, do_sample: bool, temperature: float, top_k: int, top_p: float,
          generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """The next token of each row (B,) and its log-probability at ``temperature`` (B,), from float32 logits (B, V)."""
    if not do_sample:
        token = logits.argmax(-1)
        return token, F.log_softmax(logits, -1).gather(-1, token.unsqueeze(-1)).squeeze(-1)
    scaled = logits / temperature
    log_probs = F.log_softmax(scaled, -1)
    filtered = scaled
    if 0 < top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]
        filtered = filtered.masked_fill(filtered < kth, -math.inf)
    if top_p < 1.0:
        ordered, order = filtered.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        # Drop a token once the tokens before it already hold top_p of the mass; the most likely always stays.
        drop = (probs.cumsum(-1) - probs) > top_p
        filtered = filtered.scatter(-1, order, ordered.masked_fill(drop, -math.inf))
    token = torch.multinomial(filtered.softmax(-1), 1, generator=generator).squeeze(-1)
    return token, log_probs.gather(-1, token.unsqueeze(-1)).squeeze(-1)


def decode(tokenizer: Tokenizer, generation: Generation) -> list[str]:
    """The completion text of each row: its tokens up to (not including) EOS, special tokens dropped."""
    return decode_ids(tokenizer, generation.ids, generation.mask)


def decode_ids(tokenizer: Tokenizer, ids: Tensor, mask: Tensor) -> list[str]:
    """``decode`` of completion ``ids`` (B, N) with their ``mask`` (True up to and including the first EOS)."""
    rows = ids.tolist()
    lengths = mask.sum(1).tolist()
    texts = []
    for row, length in zip(rows, lengths):
        row = row[:length]
        if row and row[-1] == tokenizer.eos_id:
            row = row[:-1]
        texts.append(tokenizer.decode(row))
    return texts
