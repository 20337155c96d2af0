"""``model=causal_lm``: a small decoder-only Transformer written here, over rmlab's byte-level tokenizer.

Pre-norm blocks (LayerNorm -> causal self-attention -> residual, LayerNorm -> GELU MLP -> residual), a final
LayerNorm, and an output layer tied to the token embedding. Attention is ``F.scaled_dot_product_attention``: with no
attention mask it runs as ``is_causal`` (the fused kernels' fast path); with a mask (left padding, holes, a KV cache)
it gets an explicit boolean mask. Positions are ``rotary`` (RoPE on queries and keys, GPT-NeoX layout) or ``learned``
(a position table added to the token embeddings); either way a row's positions count its real tokens only, so a
left-padded row computes what it would alone.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmlab.errors import check
from rmlab.language_models.base import LanguageModel, positions_from_mask
from rmlab.tokenizer import ByteTokenizer

POSITIONS = ("rotary", "learned")


def _positive_int(param: str, value: Any) -> None:
    check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
          f"model.{param} must be an integer >= 1, got {value!r}")


class KVCache:
    """Keys and values of every layer for ``batch_size`` rows of up to ``max_length`` tokens, allocated on first use
    in the dtype and device of the first keys (so autocast and ``*-true`` precisions need no special case)."""

    def __init__(self, depth: int, batch_size: int, max_length: int) -> None:
        self.depth, self.batch_size, self.max_length = depth, batch_size, max_length
        self.keys: Tensor | None = None
        self.values: Tensor | None = None
        self.length = 0  # tokens stored, the same in every layer

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store this call's keys/values (B, H, T, D) of ``layer`` after the cached ones; return all of them."""
        if self.keys is None:
            shape = (self.depth, k.shape[0], k.shape[1], self.max_length, k.shape[3])
            self.keys = k.new_empty(shape)
            self.values = v.new_empty(shape)
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} tokens; {end} requested")
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class Block(nn.Module):
    """One pre-norm Transformer block."""

    def __init__(self, width: int, heads: int, ff_width: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.attn_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, ff_width)
        self.out = nn.Linear(ff_width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None,
                cache: KVCache | None, layer: int) -> Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(attended.transpose(1, 2).reshape(batch, length, width)))
        return x + self.drop(self.out(F.gelu(self.fc(self.mlp_norm(x)))))


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE, GPT-NeoX layout: the two halves of each head's features form the rotated pairs."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class CausalLM(LanguageModel):
    """Decoder-only Transformer over byte tokens (``rmlab.tokenizer.ByteTokenizer``).

    ``width`` (divisible by ``heads``; the head size must be even for rotary positions), ``depth`` blocks, ``heads``
    attention heads, MLP hidden size ``ff_mult * width``, ``max_length`` tokens of context (prompt and completion),
    ``positions`` ``rotary`` or ``learned``, ``dropout`` on attention weights and residual branches.
    """

    def __init__(self, width: int = 128, depth: int = 2, heads: int = 4, max_length: int = 256,
                 positions: str = "rotary", dropout: float = 0.0, ff_mult: int = 4) -> None:
        super().__init__()
        for param, value in (("width", width), ("depth", depth), ("heads", heads), ("max_length", max_length),
                             ("ff_mult", ff_mult)):
            _positive_int(param, value)
        check(width % heads == 0, f"model.width ({width}) must be divisible by model.heads ({heads})")
        check(positions in POSITIONS, f"model.positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        check(positions != "rotary" or (width // heads) % 2 == 0,
              f"model.positions=rotary needs an even head size; width/heads = {width}/{heads} = {width // heads}")
        check(isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0.0 <= dropout < 1.0,
              f"model.dropout must be in [0, 1), got {dropout!r}")
        self.tokenizer = ByteTokenizer()
        self.max_length = max_length
        self.depth = depth
        self.embed = nn.Embedding(self.tokenizer.vocab_size, width)
        self.position_table = nn.Embedding(max_length, width) if positions == "learned" else None
        if positions == "rotary":
            head = width // heads
            inverse = 1.0 / (10000.0 ** (torch.arange(0, head, 2, dtype=torch.float64) / head))
            angles = torch.outer(torch.arange(max_length, dtype=torch.float64), inverse)
            angles = torch.cat([angles, angles], dim=-1)
            # Not persistent: derived from the config, so a checkpoint holds weights only.
            self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
            self.register_buffer("rope_sin", angles.sin().float(), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, ff_mult * width, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2's scheme: N(0, 0.02) everywhere, residual output projections scaled down by sqrt(2 * depth) so the
        # residual stream's variance does not grow with depth.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            nn.init.normal_(block.proj.weight, std=0.02 / math.sqrt(2 * self.depth))
            nn.init.normal_(block.out.weight, std=0.02 / math.sqrt(2 * self.depth))

    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        return KVCache(self.depth, batch_size, min(max_length, self.max_length))

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        batch, length = ids.shape
        past = cache.length if cache is not None else 0
        total = past + length
        if total > self.max_length:  # shapes are known on the host: no sync
            raise ValueError(f"sequence of {total} tokens exceeds model.max_length={self.max_length}")
        if attention_mask is None and past == 0:
            positions, mask = None, None  # the is_causal fast path
        else:
            if attention_mask is None:
                attention_mask = torch.ones(batch, total, dtype=torch.bool, device=ids.device)
            if attention_mask.shape != (batch, total):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected ({batch}, {total}): "
                                 "the cached tokens and this call's")
            positions = positions_from_mask(attention_mask, length)
            mask = _attention_mask(attention_mask.bool(), past, length)
        h = self.embed(ids)
        rope = None
        if self.position_table is not None:
            h = h + (self.position_table.weight[:length] if positions is None else self.position_table(positions))
        else:
            cos, sin = self.rope_cos, self.rope_sin
            if positions is None:
                rope = (cos[:length].to(h.dtype), sin[:length].to(h.dtype))
            else:
                rope = (cos[positions].unsqueeze(1).to(h.dtype), sin[positions].unsqueeze(1).to(h.dtype))
        h = self.drop(h)
        for layer, block in enumerate(self.blocks):
            h = block(h, rope, mask, cache, layer)
        if cache is not None:
            cache.length = total
        return F.linear(self.norm(h), self.embed.weight)


def _attention_mask(real: Tensor, past: int, length: int) -> Tensor:
    """bool (B, 1, length, past + length): query i (at absolute column past + i) sees real keys at columns <= its own,
    and always itself, so a pad query still has one key and its (unused) output stays finite."""
    total = past + length
    columns = torch.arange(total, device=real.device)
    query_columns = torch.arange(past, total, device=real.device).unsqueeze(1)
    causal = columns <= query_columns
    return (real[:, None, None, :] & causal) | (columns == query_columns)
