"""``text_classification``: the sentiment of a templated one-line review, from the small lexicon of
``rmlab.tasks.sequence.words``; the label is the completion.

``review: the soup was not very tasty\\nsentiment: `` -> ``negative``. A review says one adjective about one thing,
optionally with an intensifier (``very``) and, with probability ``negation``, negated (``not``), which flips a
positive or negative adjective's label: the difficulty knob. With ``neutral: true`` a third label ``neutral`` comes
with the lexicon's neutral adjectives (negated or not, still neutral).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rmlab.sequence import TextExample
from rmlab.tasks.base import check_bool, check_real
from rmlab.tasks.sequence.generated import GeneratedTask
from rmlab.tasks.sequence.labels import LabelledTask
from rmlab.tasks.sequence.words import INTENSIFIERS, NEGATIVE, NEUTRAL, POSITIVE, REVIEWED

TEMPLATES = (
    "the {thing} was {phrase}",
    "i found the {thing} {phrase}",
    "this {thing} is {phrase}",
    "we thought the {thing} was {phrase}",
    "honestly, the {thing} felt {phrase}",
)
INTENSIFIER_RATE = 0.4


class TextClassification(LabelledTask, GeneratedTask):
    """Templated reviews labelled ``positive`` / ``negative`` (/ ``neutral``)."""

    default_name = "text_classification"

    def __init__(self, *, negation: float = 0.2, neutral: bool = False, **common: Any) -> None:
        check_real("negation", negation, 0, 1, high_open=False)
        check_bool("neutral", neutral)
        self.negation, self.neutral = negation, neutral
        self.labels = ("negative", "neutral", "positive") if neutral else ("negative", "positive")
        super().__init__(**common)

    def _sample(self, rng: np.random.Generator) -> TextExample:
        lexicon = {"positive": POSITIVE, "negative": NEGATIVE, **({"neutral": NEUTRAL} if self.neutral else {})}
        polarity = list(lexicon)[int(rng.integers(len(lexicon)))]
        adjective = lexicon[polarity][int(rng.integers(len(lexicon[polarity])))]
        negated = bool(rng.random() < self.negation)
        phrase = adjective
        if rng.random() < INTENSIFIER_RATE:
            phrase = f"{INTENSIFIERS[int(rng.integers(len(INTENSIFIERS)))]} {phrase}"
        if negated:
            phrase = f"not {phrase}"
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        text = template.format(thing=REVIEWED[int(rng.integers(len(REVIEWED)))], phrase=phrase)
        label = {"positive": "negative", "negative": "positive"}.get(polarity, polarity) if negated else polarity
        return TextExample(prompt=f"review: {text}\nsentiment: ", completion=label, meta={"label": label})

    def _widen_hint(self) -> str:
        adjectives = len(POSITIVE) + len(NEGATIVE) + (len(NEUTRAL) if self.neutral else 0)
        negations = 2 if 0 < self.negation < 1 else 1
        size = len(TEMPLATES) * len(REVIEWED) * adjectives * (1 + len(INTENSIFIERS)) * negations
        return f"these settings allow at most {size} distinct reviews"
