"""``dialogue``: the assistant's reply to the user's last turn, from templated intents.

``user: hi\\nbot: Hello! How can I help you?\\nuser: wake me up at 6:30 am\\nbot: `` -> ``Alarm set for 6:30 am.``
Each intent (greet, book a table, weather, alarm, music, taxi, thanks, bye) has a few user phrasings with slots
(party size, time, city, genre, destination) and one reply template that repeats the slots, so every prompt has
exactly one right reply. Knobs: ``n_intents`` (the first n of that list), ``n_phrasings`` (user phrasings per
intent, 1-3), ``history_turns`` (earlier user/bot exchanges in the prompt, which the reply must ignore). ``verify``
checks the reply exactly (case and spacing ignored).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rmlab.sequence import TextExample
from rmlab.tasks.sequence.generated import GeneratedTask, check_int_in
from rmlab.tasks.sequence.translation import normalize_words
from rmlab.tasks.sequence.words import CITIES, DESTINATIONS, GENRES

# intent -> (user phrasings, reply); {slots} are filled from SLOTS.
INTENTS = {
    "greet": (("hi", "hello there", "good morning"), "Hello! How can I help you?"),
    "book_table": (("book a table for {people} at {time}", "i need a table for {people} people at {time}",
                    "reserve a table for {people} at {time} please"), "Booked a table for {people} at {time}."),
    "weather": (("what is the weather in {city}", "how is the weather in {city} today", "will it rain in {city}"),
                "Here is the forecast for {city}."),
    "alarm": (("set an alarm for {time}", "wake me up at {time}", "i need an alarm at {time}"),
              "Alarm set for {time}."),
    "music": (("play some {genre}", "put on {genre} music", "i want to hear {genre}"), "Playing {genre} music."),
    "taxi": (("call a taxi to {destination}", "i need a cab to {destination}", "get me a ride to {destination}"),
             "A taxi to {destination} is on its way."),
    "thanks": (("thanks", "thank you", "cheers"), "You are welcome!"),
    "bye": (("bye", "goodbye", "see you later"), "Goodbye!"),
}
TIMES = tuple(f"{h}:{m:02d} {half}" for half in ("am", "pm") for h in range(1, 13) for m in (0, 15, 30, 45))
SLOTS = {"people": tuple(str(n) for n in range(1, 13)), "time": TIMES, "city": CITIES, "genre": GENRES,
         "destination": DESTINATIONS}
MAX_PHRASINGS = 3
MAX_HISTORY = 4


class Dialogue(GeneratedTask):
    """Reply to the last user turn of a short templated conversation."""

    default_name = "dialogue"

    def __init__(self, *, n_intents: int = len(INTENTS), n_phrasings: int = MAX_PHRASINGS, history_turns: int = 1,
                 n_examples: int = 1000, **common: Any) -> None:
        self.n_intents = check_int_in("n_intents", n_intents, 1, len(INTENTS))
        self.n_phrasings = check_int_in("n_phrasings", n_phrasings, 1, MAX_PHRASINGS)
        self.history_turns = check_int_in("history_turns", history_turns, 0, MAX_HISTORY)
        super().__init__(n_examples=n_examples, **common)

    def _turn(self, rng: np.random.Generator) -> tuple[str, str]:
        """(user utterance, reply) of a random intent."""
        phrasings, reply = INTENTS[list(INTENTS)[int(rng.integers(self.n_intents))]]
        slots = {name: values[int(rng.integers(len(values)))] for name, values in SLOTS.items()}
        return phrasings[int(rng.integers(self.n_phrasings))].format(**slots), reply.format(**slots)

    def _sample(self, rng: np.random.Generator) -> TextExample:
        turns = [self._turn(rng) for _ in range(self.history_turns + 1)]
        history = "".join(f"user: {user}\nbot: {reply}\n" for user, reply in turns[:-1])
        user, reply = turns[-1]
        return TextExample(prompt=f"{history}user: {user}\nbot: ", completion=reply, meta={"answer": reply})

    def _widen_hint(self) -> str:
        return "raise n_intents, n_phrasings or history_turns"

    def verify(self, completion: str, example: TextExample) -> float:
        return float(normalize_words(completion) == normalize_words(example.meta["answer"]))
