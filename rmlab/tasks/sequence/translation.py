"""``translation``: English sentences of a small grammar into a deterministic toy language with its own vocabulary
and word order.

English is subject-verb-object: ``the big dog quickly chases the small cat``. The toy language is subject-object-verb,
drops the articles, puts adjectives after their noun, marks the subject with ``ga`` and the object with ``o``, and
puts an adverb just before the verb: ``vor gran ga miku pim o rapi kura``. Every English word has one toy word
(``rmlab.tasks.sequence.words``), so each sentence has exactly one translation and ``verify`` checks it exactly
(case and spacing ignored). Difficulty: ``max_adjectives`` per noun phrase (0-2, which also reorders more words) and
``adverb_rate``, the share of sentences with an adverb.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rmlab.sequence import TextExample
from rmlab.tasks.base import check_real
from rmlab.tasks.sequence.generated import GeneratedTask, check_int_in
from rmlab.tasks.sequence.words import TOY_ADJECTIVES, TOY_ADVERBS, TOY_NOUNS, TOY_OBJECT, TOY_SUBJECT, TOY_VERBS

MAX_ADJECTIVES = 2


def normalize_words(text: str) -> str:
    """Lowercase, single spaces: the form two translations are compared in."""
    return " ".join(text.lower().split())


class Translation(GeneratedTask):
    """``english: the old king helps the child\\ntoy: `` -> ``zaro vek ga rel o juta``."""

    default_name = "translation"

    def __init__(self, *, max_adjectives: int = 1, adverb_rate: float = 0.3, **common: Any) -> None:
        self.max_adjectives = check_int_in("max_adjectives", max_adjectives, 0, MAX_ADJECTIVES)
        check_real("adverb_rate", adverb_rate, 0, 1, high_open=False)
        self.adverb_rate = adverb_rate
        super().__init__(**common)

    def _pick(self, rng: np.random.Generator, words: dict[str, str], k: int = 1) -> list[str]:
        return [list(words)[int(i)] for i in rng.choice(len(words), size=k, replace=False)]

    def _noun_phrase(self, rng: np.random.Generator) -> tuple[str, str]:
        """(english, toy) of ``the [adjectives] noun``."""
        adjectives = self._pick(rng, TOY_ADJECTIVES, int(rng.integers(self.max_adjectives + 1)))
        noun = self._pick(rng, TOY_NOUNS)[0]
        english = " ".join(["the", *adjectives, noun])
        toy = " ".join([TOY_NOUNS[noun], *(TOY_ADJECTIVES[a] for a in adjectives)])
        return english, toy

    def _sample(self, rng: np.random.Generator) -> TextExample:
        (subject, subject_toy), (obj, obj_toy) = self._noun_phrase(rng), self._noun_phrase(rng)
        verb = self._pick(rng, TOY_VERBS)[0]
        adverb = self._pick(rng, TOY_ADVERBS)[0] if rng.random() < self.adverb_rate else None
        english = " ".join([subject, *([adverb] if adverb else []), verb, obj])
        toy = " ".join([subject_toy, TOY_SUBJECT, obj_toy, TOY_OBJECT, *([TOY_ADVERBS[adverb]] if adverb else []),
                        TOY_VERBS[verb]])
        return TextExample(prompt=f"english: {english}\ntoy: ", completion=toy, meta={"answer": toy})

    def verify(self, completion: str, example: TextExample) -> float:
        return float(normalize_words(completion) == example.meta["answer"])
