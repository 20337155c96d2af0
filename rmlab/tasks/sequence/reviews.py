"""``review_writing``: prompts asking for a review of a thing, scored by the known-reward family's gold function.

``review of the soup by Anna on Monday: `` -> ``the soup was very tasty but the cafe was noisy``. The reference
completions are reviews drawn from the same generator as ``review_preference``'s items (mixed sentiment: what a
supervised start learns to write), and the task's gold reward (``reward=gold``, and ``{split}/gold_reward`` in
every run on it) is ``rmlab.tasks.sequence.review_gold.gold_score``: a policy optimised against a reward model
trained on ``review_preference`` can be checked against the truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rmlab.sequence import TextExample
from rmlab.tasks.base import check_real
from rmlab.tasks.sequence.generated import GeneratedTask, check_int_in
from rmlab.tasks.sequence.review_gold import MAX_CLAUSES, PROMPTS, gold_score, sample_prompt, sample_review


class ReviewWriting(GeneratedTask):
    """A review per prompt; ``meta["thing"]`` is the thing the prompt asks about (what the gold function needs)."""

    default_name = "review_writing"

    def __init__(self, *, max_clauses: int = 2, negation: float = 0.2, n_examples: int = 1000,
                 **common: Any) -> None:
        check_int_in("max_clauses", max_clauses, 1, MAX_CLAUSES)
        check_real("negation", negation, 0, 1, high_open=False)
        self.max_clauses, self.negation = max_clauses, negation
        super().__init__(n_examples=n_examples, **common)

    def _sample(self, rng: np.random.Generator) -> TextExample:
        prompt, thing = sample_prompt(rng)
        review = sample_review(rng, thing, self.max_clauses, self.negation)
        return TextExample(prompt=prompt, completion=review, meta={"thing": thing})

    def gold_reward(self, completion: str, example: TextExample) -> float:
        return gold_score(example.meta["thing"], completion)

    def _widen_hint(self) -> str:
        return f"there are {PROMPTS} distinct prompts"
