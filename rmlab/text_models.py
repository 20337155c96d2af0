"""Text networks: ``TextTransformer``, a small Transformer encoder over byte-token ids (``rmlab.tokenizer``).

Takes int64 ids (B, L) right-padded with 0, returns (B, output_dim); under ``KindHead`` a pair task's (B, 2, L) ids
are scored as (B*2, L) -> (B, 2). ``input_dim`` is the task's sequence length (the size of the position table).
"""

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rmlab.errors import check
from rmlab.tokenizer import PAD, VOCAB_SIZE


def _positive_int(param: str, value: Any) -> None:
    check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
          f"model.{param} must be an integer >= 1, got {value!r}")


class TextTransformer(nn.Module):
    """Token + learned position embeddings -> pre-norm ``nn.TransformerEncoder`` (pad positions masked out of
    attention) -> mean over the non-pad positions -> Linear.

    Mean pooling rather than the first (BOS/CLS) position: every token feeds the score directly, which trains faster
    on small data than routing everything through one position, and it does not depend on how much padding follows
    (extra padding leaves the score unchanged).
    """

    input_types: ClassVar[tuple[str, ...]] = ("tokens",)

    def __init__(self, input_dim: int, output_dim: int, width: int = 128, depth: int = 2, heads: int = 4,
                 dropout: float = 0.0, ff_mult: int = 4) -> None:
        super().__init__()
        for param, value in (("input_dim", input_dim), ("output_dim", output_dim), ("width", width),
                             ("depth", depth), ("heads", heads), ("ff_mult", ff_mult)):
            _positive_int(param, value)
        check(width % heads == 0, f"model.width ({width}) must be divisible by model.heads ({heads})")
        check(isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0.0 <= dropout < 1.0,
              f"model.dropout must be in [0, 1), got {dropout!r}")
        self.max_length = input_dim
        self.tokens = nn.Embedding(VOCAB_SIZE, width, padding_idx=PAD)
        self.positions = nn.Parameter(torch.randn(input_dim, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, ff_mult * width, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        # Pre-norm leaves the residual stream unnormalised, so one final LayerNorm before pooling.
        # enable_nested_tensor only applies to post-norm layers; off, so torch does not warn about it.
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(width), enable_nested_tensor=False)
        self.out = nn.Linear(width, output_dim)

    def forward(self, ids: Tensor) -> Tensor:
        length = ids.shape[1]
        if length > self.max_length:  # a shape, known on the host: no sync
            raise ValueError(f"sequence length {length} exceeds the model's input_dim {self.max_length}")
        pad = ids == PAD
        # A row of padding only would mask every key and turn attention into NaN; let such a row attend to itself.
        pad = pad & ~pad.all(dim=1, keepdim=True)
        h = self.tokens(ids) + self.positions[:length]
        h = self.encoder(h, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(dim=1) / keep.sum(dim=1)  # >= 1 kept position per row, by the line above
        return self.out(pooled)
