"""The known-reward text family: short reviews whose true (gold) reward is a hidden programmatic function.

Shared by its two views, so both see the same generator and the same gold function:
``review_preference`` (``rmlab.tasks.review_preference``: Bradley-Terry preference pairs of reviews, to train a
text reward model) and ``review_writing`` (``rmlab.tasks.sequence.reviews``: prompts asking for a review, whose
generations the gold function scores). The toy version of RLHF where the reward a proxy should learn is known.

A prompt names a thing, a reviewer and a day: ``review of the soup by Anna on Monday: ``. A review is one or more
clauses joined by `` and `` / `` but ``, each ``the <thing> was [not] [<intensifier>] <adjective>`` (``is`` is read
too), over the sentiment lexicon of ``rmlab.tasks.sequence.words``.

**Gold reward** (``gold_score(thing, text)``): the mean over clauses of each clause's value, where an adjective is
worth +1 (positive), -1 (negative) or 0 (neutral), an intensifier multiplies it by 1.5 and ``not`` flips its sign; so
a well-formed review scores in [-1.5, 1.5]. Text that does not parse as such a review (a word outside the lexicon,
a broken clause, extra spaces inside, an empty text), or that never mentions the prompt's thing, scores
``MALFORMED`` = -2, below every review. The mean (not the sum) means repeating praise does not pay; the parse means a
policy that games a learned proxy with text outside the reviews it was trained on is caught by the gold reward.
"""

from __future__ import annotations

import re

import numpy as np

from rmlab.tasks.sequence.words import DAYS, INTENSIFIERS, NAMES, NEGATIVE, NEUTRAL, POSITIVE, REVIEWED

MALFORMED = -2.0
INTENSITY = 1.5
INTENSIFIER_RATE = 0.4
MAX_CLAUSES = 4  # the most clauses a generated review may have (task.max_clauses)
VALENCE = {**{w: 1.0 for w in POSITIVE}, **{w: -1.0 for w in NEGATIVE}, **{w: 0.0 for w in NEUTRAL}}
LEXICONS = (POSITIVE, NEGATIVE, NEUTRAL)
JOINERS = ("and", "but")
_CLAUSE = re.compile(r"the (\w+) (?:was|is) (not )?(?:(" + "|".join(INTENSIFIERS) + r") )?(\w+)")
_JOIN = re.compile(r" (?:" + "|".join(JOINERS) + r") ")
PROMPTS = len(REVIEWED) * len(NAMES) * len(DAYS)  # distinct prompts there are


def gold_score(thing: str, text: str) -> float:
    """The gold reward of review ``text`` written for ``thing`` (see the module docstring); surrounding whitespace
    is ignored."""
    clauses = _JOIN.split(text.strip())
    values, about = [], False
    for clause in clauses:
        match = _CLAUSE.fullmatch(clause)
        if match is None or match[1] not in REVIEWED or match[4] not in VALENCE:
            return MALFORMED
        value = VALENCE[match[4]] * (INTENSITY if match[3] else 1.0) * (-1.0 if match[2] else 1.0)
        values.append(value)
        about = about or match[1] == thing
    return float(np.mean(values)) + 0.0 if about else MALFORMED  # + 0.0: no -0.0 from a negated neutral


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def sample_prompt(rng: np.random.Generator) -> tuple[str, str]:
    """A prompt and the thing it asks a review of."""
    thing = _pick(rng, REVIEWED)
    return f"review of the {thing} by {_pick(rng, NAMES)} on {_pick(rng, DAYS)}: ", thing


def sample_review(rng: np.random.Generator, thing: str, max_clauses: int, negation: float) -> str:
    """A well-formed review of ``thing``: 1..``max_clauses`` clauses (uniform), the first about ``thing``, the others
    about any thing; each adjective of a uniformly drawn polarity (positive, negative, neutral), intensified with
    probability 0.4 and negated with probability ``negation``."""
    clauses = []
    for i in range(int(rng.integers(1, max_clauses + 1))):
        subject = thing if i == 0 else _pick(rng, REVIEWED)
        adjective = _pick(rng, LEXICONS[int(rng.integers(len(LEXICONS)))])
        intensifier = f"{_pick(rng, INTENSIFIERS)} " if rng.random() < INTENSIFIER_RATE else ""
        negated = "not " if rng.random() < negation else ""
        clauses.append(f"the {subject} was {negated}{intensifier}{adjective}")
    text = clauses[0]
    for clause in clauses[1:]:
        text += f" {_pick(rng, JOINERS)} {clause}"
    return text
