"""The byte-level tokenizer that ships with rmlab: text -> token ids with no vocabulary file and no download.

Ids: 0 pad, 1 bos (also the sequence's CLS position), 2 sep (between prompt and response), 3 eos, and byte ``b`` of
the UTF-8 encoding -> ``b + 4``; so ``VOCAB_SIZE = 260`` and any text in any script encodes.

Truncation (``max_length`` counts the special tokens; the special tokens always survive):

- ``encode(text)``: keeps the START of the text.
- ``encode_pair_item(prompt, response)``: the response is what a reward model judges, so the PROMPT is cut first,
  keeping its END (the words nearest the response, e.g. the last question; TRL's ``truncation_mode="keep_end"``);
  only a response that alone does not fit is cut, keeping its start.

A cut may split a multi-byte character; ``decode`` replaces such a fragment with U+FFFD.

``ByteTokenizer`` is the same vocabulary behind the ``rmlab.sequence.Tokenizer`` protocol that language models use:
``encode`` adds no special tokens and never truncates (the sequence data path lays out and checks lengths itself).
"""

from collections.abc import Sequence

import torch

from rmlab.errors import ConfigError

PAD, BOS, SEP, EOS = 0, 1, 2, 3
OFFSET = 4  # byte b -> id b + OFFSET
VOCAB_SIZE = 256 + OFFSET
MIN_LENGTH = 4  # room for bos, sep, eos and one byte of response


def _check_length(max_length: int) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < MIN_LENGTH:
        raise ConfigError(f"max_length must be an integer >= {MIN_LENGTH}, got {max_length!r}")


def _ids(text: str) -> list[int]:
    return [b + OFFSET for b in text.encode("utf-8")]


def encode(text: str, max_length: int) -> list[int]:
    """``[BOS] bytes [EOS]``, at most ``max_length`` ids; a long text keeps its start."""
    _check_length(max_length)
    return [BOS, *_ids(text)[: max_length - 2], EOS]


def encode_pair_item(prompt: str | None, response: str, max_length: int) -> list[int]:
    """``[BOS] prompt [SEP] response [EOS]`` (``[BOS] response [EOS]`` when ``prompt`` is None), at most
    ``max_length`` ids; the prompt loses its start first, then the response its end (see the module docstring)."""
    _check_length(max_length)
    body = _ids(response)
    if prompt is None:
        return [BOS, *body[: max_length - 2], EOS]
    body = body[: max_length - 3]
    room = max_length - 3 - len(body)
    head = _ids(prompt)
    # Keep the prompt's last `room` ids (all of them when it fits); head[-0:] would keep it all, and a negative start
    # (a prompt shorter than the room) would count from the end and cut a prompt that fits.
    head = head[max(0, len(head) - room) :] if room > 0 else []
    return [BOS, *head, SEP, *body, EOS]


def batch_encode(
    responses: Sequence[str], max_length: int, prompts: Sequence[str | None] | None = None
) -> torch.Tensor:
    """int64 (N, max_length): each ``encode_pair_item(prompts[i], responses[i])`` right-padded with PAD.

    Always ``max_length`` wide, not the longest row: every split of a task then has the same width, which is the
    sequence length the text model's position table is built for (``TaskInfo.input_dim``).
    """
    _check_length(max_length)
    if prompts is not None and len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts for {len(responses)} responses")
    out = torch.full((len(responses), max_length), PAD, dtype=torch.int64)
    for i, response in enumerate(responses):
        ids = encode_pair_item(None if prompts is None else prompts[i], response, max_length)
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return out


def decode(ids: Sequence[int] | torch.Tensor) -> str:
    """The text of the byte ids (special ids dropped, so prompt and response run together)."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return bytes(i - OFFSET for i in values if i >= OFFSET).decode("utf-8", errors="replace")


class ByteTokenizer:
    """The byte-level vocabulary as a ``rmlab.sequence.Tokenizer``: pad 0, bos 1, eos 3, byte ``b`` -> ``b + 4``."""

    vocab_size: int = VOCAB_SIZE
    pad_id: int = PAD
    eos_id: int = EOS
    bos_id: int | None = BOS

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of ``text`` as ids, no special tokens."""
        return _ids(text)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The text of the byte ids; special ids are dropped."""
        return decode(ids)

    def __repr__(self) -> str:
        return "ByteTokenizer()"
