"""The sequence data path: the token layout of rmlab.sequence, start-up errors for examples that do not fit, and
batches that cover every example once per epoch, cut to their longest row."""

import pytest
import torch

from rmlab.errors import ConfigError
from rmlab.sequence import IGNORE_INDEX, TextExample
from rmlab.sequence_data import EvalBatches, TrainBatches, batch_widths, tokenize_split
from rmlab.tokenizer import BOS, EOS, PAD, ByteTokenizer

EXAMPLES = [TextExample("ab=", "ba"), TextExample("abcd=", "dcba"), TextExample("x=", "")]


def test_layout_teacher_forcing_and_prompts():
    tokenizer = ByteTokenizer()
    split = tokenize_split(EXAMPLES, tokenizer, 16, "train", "t")
    enc = tokenizer.encode
    assert split.ids[0].tolist() == [BOS, *enc("ab="), *enc("ba"), EOS] + [PAD] * 4
    assert split.lengths.tolist() == [7, 11, 4]
    # labels[t] is ids[t + 1] where that is a completion token (EOS included), else ignored.
    for row, example in enumerate(EXAMPLES):
        prompt = 1 + len(example.prompt)
        labels, ids = split.labels[row], split.ids[row]
        completion = list(range(prompt - 1, int(split.lengths[row]) - 1))
        assert labels[completion].tolist() == ids[[t + 1 for t in completion]].tolist()
        assert (labels[[t for t in range(labels.shape[0]) if t not in completion]] == IGNORE_INDEX).all()
        assert tokenizer.decode(labels[labels != IGNORE_INDEX]) == example.completion
    assert split.labels[2][split.labels[2] != IGNORE_INDEX].tolist() == [EOS]  # an empty completion still ends
    # Prompts are left-padded, masked, and exactly the teacher-forced prefix.
    assert split.prompt_ids[0].tolist() == [PAD, PAD, BOS, *enc("ab=")]
    assert split.prompt_mask.sum(1).tolist() == [4, 6, 3]
    for row in range(3):
        prompt = split.prompt_ids[row][split.prompt_mask[row]]
        assert torch.equal(prompt, split.ids[row, :len(prompt)])


def test_examples_too_long_or_unstartable_are_start_up_errors():
    with pytest.raises(ConfigError, match=r"task t: 1 of 3 val examples are longer than model.max_length=8 tokens "
                                          r"\(prompt, completion and EOS; the longest, #1, has 11"):
        tokenize_split(EXAMPLES, ByteTokenizer(), 8, "val", "t")
    no_bos = ByteTokenizer()
    no_bos.bos_id = None
    with pytest.raises(ConfigError, match="1 train example.* have an empty prompt"):
        tokenize_split([TextExample("", "a")], no_bos, 8, "train", "t")
    with pytest.raises(ConfigError, match="the test split is empty"):
        tokenize_split([], ByteTokenizer(), 8, "test", "t")


def test_train_batches_cover_every_example_once_and_are_cut_to_their_longest_row():
    examples = [TextExample("p" * (i % 5) + "=", "c" * (i % 3)) for i in range(37)]
    split = tokenize_split(examples, ByteTokenizer(), 16, "train", "t")
    batches = TrainBatches(split, batch_size=8, seed=1, steps_per_chunk=2)
    assert len(batches) == 3  # 5 batches of 8 (the last holds 5), two per chunk
    seen, tokens = [], 0
    for chunk in batches:
        for step, width in enumerate(chunk.widths):
            rows = chunk.ids[step * 8:(step + 1) * 8, :width]
            labels = chunk.labels[step * 8:(step + 1) * 8, :width]
            lengths = (rows != PAD).sum(1)  # the byte tokenizer never writes PAD inside a sequence
            assert width == int(lengths.max())  # no row is cut, no column is all padding
            seen += [(tuple(r[:n].tolist()), tuple(lab[:n].tolist())) for r, lab, n in zip(rows, labels, lengths)]
        tokens += chunk.tokens
    full = [(tuple(r[:n].tolist()), tuple(lab[:n].tolist())) for r, lab, n in zip(split.ids, split.labels,
                                                                                 split.lengths)]
    assert sorted(seen) == sorted(full) and tokens == int(split.lengths.sum())
    orders = [[tuple(c.ids[0].tolist()) for c in TrainBatches(split, 8, seed=s)] for s in (1, 1, 2)]
    assert orders[0] == orders[1] and orders[0] != orders[2]  # seeded shuffling
    assert sum(len(c.widths) for c in TrainBatches(split, 8, seed=1, max_batches=2)) == 2


def test_batch_widths():
    assert batch_widths(torch.tensor([3, 9, 2, 4, 5]), 2) == [9, 4, 5]


def test_eval_batches_keep_the_split_order_with_their_examples():
    split = tokenize_split(EXAMPLES, ByteTokenizer(), 16, "test", "t")
    batches = list(EvalBatches(split, 2))
    assert [b.examples for b in batches] == [EXAMPLES[:2], EXAMPLES[2:]]
    assert batches[1].ids.shape == (1, 4) and batches[1].prompt_ids.shape == (1, 3)
    assert batches[0].prompt_mask.all(1).tolist() == [False, True]
