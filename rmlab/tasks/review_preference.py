"""``review_preference``: preference pairs of reviews labelled by Bradley-Terry draws from the known gold reward.

The pair view of the known-reward family (``rmlab.tasks.sequence.review_gold``): each pair is a prompt and two
different reviews of its thing drawn from the family's generator; the first is chosen with probability
``sigmoid((gold(a) - gold(b)) / temperature)``. Items are text, encoded as a preference file's are
(``[BOS] review [EOS]``, or ``[BOS] prompt [SEP] review [EOS]`` with ``with_prompt``, in byte tokens, padded to
``max_length``), so ``model=text_transformer`` trains a reward model on them, and ``y`` holds each item's gold reward
(``true_reward_spearman`` works).

Without the prompt by default: every review of the data is about its prompt's thing, so the labels never depend on
the prompt, and its bytes (names, days) only dilute what a small byte-level model must learn (measured: a Spearman
of 0.50 with the gold reward after 300 steps on one-clause reviews without negation, 0.21 with the prompt:
``bench/review_reward_model.py``). A
reward model trained so cannot see whether a review is about the right thing: a blind spot of the proxy that the
gold reward of ``review_writing`` catches.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from rmlab import kinds
from rmlab.errors import ConfigError
from rmlab.tasks.base import check_bool, check_int, check_real
from rmlab.tasks.preference import Pairs, PairTask
from rmlab.tasks.sequence.generated import check_int_in
from rmlab.tasks.sequence.review_gold import MAX_CLAUSES, gold_score, sample_prompt, sample_review
from rmlab.tokenizer import MIN_LENGTH, batch_encode, encode_pair_item

_REDRAWS = 100  # attempts at a second review that differs from the first (the space is large: one or two suffice)


class ReviewPreference(PairTask):
    """Pairs of reviews of one prompt with Bradley-Terry labels from the gold reward (see the module docstring)."""

    default_name = "review_preference"
    input_type: ClassVar[str] = kinds.TOKENS
    true_reward: ClassVar[bool] = True

    def __init__(self, *, n_pairs: int = 4000, max_clauses: int = 2, negation: float = 0.2, temperature: float = 0.5,
                 data_seed: int = 0, max_length: int = 128, with_prompt: bool = False, pair_flip: float = 0.0,
                 **common: Any) -> None:
        check_int("n_pairs", n_pairs, 1)
        check_int_in("max_clauses", max_clauses, 1, MAX_CLAUSES)
        check_real("negation", negation, 0, 1, high_open=False)
        check_real("temperature", temperature, 0, low_open=True)
        check_int("data_seed", data_seed, 0)
        check_int("max_length", max_length, MIN_LENGTH)
        check_bool("with_prompt", with_prompt)
        # As a preference file's prompt column: whether items are encoded with their prompt (what a served model and
        # reward=reward_model read).
        self.prompt_column = "prompt" if with_prompt else None
        self.n_pairs, self.max_clauses, self.negation = n_pairs, max_clauses, negation
        self.temperature, self.data_seed, self.max_length = temperature, data_seed, max_length
        super().__init__(pair_flip=pair_flip, **common)
        self.standardize = False  # token ids
        self.split_sizes(n_pairs)  # fail now, not at load time, if n_pairs cannot be split

    def draw(self) -> tuple[list[str], list[tuple[str, str]], np.ndarray]:
        """The whole dataset before the split: prompts, (chosen, rejected) reviews and their gold rewards (N, 2).
        Fixed by ``data_seed``; the labels come from their own stream, so ``temperature`` reuses the same uniforms
        (a lower temperature can only make each label agree more with the gold reward)."""
        item_seq, label_seq = np.random.SeedSequence(self.data_seed).spawn(2)
        rng, labels = np.random.default_rng(item_seq), np.random.default_rng(label_seq)
        prompts, pairs, gold = [], [], np.zeros((self.n_pairs, 2))
        for i in range(self.n_pairs):
            prompt, thing = sample_prompt(rng)
            a = sample_review(rng, thing, self.max_clauses, self.negation)
            for _ in range(_REDRAWS):
                b = sample_review(rng, thing, self.max_clauses, self.negation)
                if b != a:
                    break
            else:  # only with max_clauses=1 and negation in {0, 1}... still hundreds of reviews: never in practice
                raise ConfigError(f"task {self.name}: could not draw two different reviews for a pair")
            ga, gb = gold_score(thing, a), gold_score(thing, b)
            # sigmoid(z) = (1 + tanh(z / 2)) / 2, which cannot overflow at a tiny temperature.
            if labels.random() >= 0.5 * (1.0 + np.tanh((ga - gb) / (2.0 * self.temperature))):
                a, b, ga, gb = b, a, gb, ga
            prompts.append(prompt)
            pairs.append((a, b))
            gold[i] = ga, gb
        return prompts, pairs, gold

    def _pairs(self, rng: np.random.Generator) -> tuple[Pairs, np.ndarray | None]:
        prompts, pairs, gold = self.draw()
        shown = prompts if self.prompt_column else [None] * len(prompts)
        longest = max(len(encode_pair_item(p, max(pair, key=len), 10**6)) for p, pair in zip(shown, pairs))
        if longest > self.max_length:  # truncation would cut a review the gold reward scores whole
            raise ConfigError(f"task.max_length={self.max_length} is too short: the longest prompt + review takes "
                              f"{longest} tokens; set task.max_length={longest} or more, or lower task.max_clauses")
        x = torch.stack([batch_encode([pair[k] for pair in pairs], self.max_length,
                                      prompts if self.prompt_column else None) for k in (0, 1)], dim=1).numpy()
        idx = self._split_by_group(prompts, rng, "prompt")
        return {k: (x[i], gold[i]) for k, i in idx.items()}, None
