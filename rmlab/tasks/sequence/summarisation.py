"""``summarisation``: a templated report of an event, padded with filler sentences; the summary is one sentence that
lists its key facts.

``passage: The doors opened at noon. Lima hosted the concert. Anna organised the concert. The concert was on
Friday.\\nsummary: `` -> ``Anna organised a concert in Lima on Friday.`` Four key facts (who, what event, where,
which day), each stated by one of two templates; ``n_filler`` filler sentences that carry none; with ``shuffle`` the
sentences come in random order, else the key facts first in a fixed order. ``verify`` gives the share of the four
key facts the completion mentions (whole words, any case): partial credit for a partial summary.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from rmlab.sequence import TextExample
from rmlab.tasks.base import check_bool
from rmlab.tasks.sequence.generated import GeneratedTask, check_int_in
from rmlab.tasks.sequence.words import CITIES, DAYS, EVENTS, NAMES

KEY_SENTENCES = (
    ("{who} organised the {event}.", "The {event} was organised by {who}."),
    ("The {event} took place in {place}.", "{place} hosted the {event}."),
    ("The {event} was on {day}.", "The {event} happened on {day}."),
)
FILLERS = (
    "The weather was mild.", "Many guests arrived early.", "Coffee and tea were served.", "The room was full.",
    "Tickets sold out quickly.", "Some people stayed late.", "The music was loud.", "A photographer took pictures.",
    "Parking was difficult.", "Everyone wore name tags.", "The doors opened at noon.", "Snacks were available.",
)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class Summarisation(GeneratedTask):
    """Summarise an event report: who organised what, where, on which day."""

    default_name = "summarisation"

    def __init__(self, *, n_filler: int = 2, shuffle: bool = True, **common: Any) -> None:
        self.n_filler = check_int_in("n_filler", n_filler, 0, len(FILLERS))
        check_bool("shuffle", shuffle)
        self.shuffle = shuffle
        super().__init__(**common)

    def _sample(self, rng: np.random.Generator) -> TextExample:
        facts = {"who": NAMES, "event": EVENTS, "place": CITIES, "day": DAYS}
        slots = {slot: values[int(rng.integers(len(values)))] for slot, values in facts.items()}
        sentences = [pair[int(rng.integers(2))].format(**slots) for pair in KEY_SENTENCES]
        sentences += [FILLERS[int(i)] for i in rng.choice(len(FILLERS), size=self.n_filler, replace=False)]
        if self.shuffle:
            sentences = [sentences[int(i)] for i in rng.permutation(len(sentences))]
        event = slots["event"]
        summary = f"{slots['who']} organised {article(event)} {event} in {slots['place']} on {slots['day']}."
        return TextExample(prompt=f"passage: {' '.join(sentences)}\nsummary: ", completion=summary,
                           meta={"facts": tuple(slots.values())})

    def verify(self, completion: str, example: TextExample) -> float:
        facts = example.meta["facts"]
        return sum(re.search(rf"\b{re.escape(f)}\b", completion, re.IGNORECASE) is not None for f in facts) / len(facts)
