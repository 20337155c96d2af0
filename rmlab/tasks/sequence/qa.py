"""``qa``: extractive question answering over a short context of templated facts.

``context: Anna lives in Oslo. Ben has a pet parrot. Carla lives in Lima.\\nquestion: Where does Carla live?\\n``
``answer: `` -> ``Lima``. The context states ``n_facts`` facts, each about a person (distinct person-relation pairs)
with one of ``n_relations`` relations (where someone lives, their job, pet, food, car colour); the question asks one
of them, so the answer is a word of the context. Fewer relations mean more facts of the same kind to tell apart by
name; more facts mean a longer context. ``verify`` is SQuAD's exact match (lowercase, punctuation, articles and extra
spaces ignored).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rmlab.sequence import TextExample
from rmlab.tasks.sequence.generated import GeneratedTask, check_int_in
from rmlab.tasks.sequence.words import CITIES, COLOURS, FOODS, JOBS, NAMES, PETS

# relation -> (values, statement, question)
RELATIONS = {
    "city": (CITIES, "{name} lives in {value}.", "Where does {name} live?"),
    "job": (JOBS, "{name} works as a {value}.", "What is {name}'s job?"),
    "pet": (PETS, "{name} has a pet {value}.", "What pet does {name} have?"),
    "food": (FOODS, "{name} likes to eat {value}.", "What does {name} like to eat?"),
    "colour": (COLOURS, "{name} drives a {value} car.", "What colour is {name}'s car?"),
}
MAX_FACTS = 10


class QuestionAnswering(GeneratedTask):
    """A context of facts about people and a question about one of them; the answer is extracted from the context."""

    default_name = "qa"

    def __init__(self, *, n_facts: int = 3, n_relations: int = len(RELATIONS), **common: Any) -> None:
        self.n_facts = check_int_in("n_facts", n_facts, 1, MAX_FACTS)
        self.n_relations = check_int_in("n_relations", n_relations, 1, len(RELATIONS))
        super().__init__(**common)

    def _sample(self, rng: np.random.Generator) -> TextExample:
        relations = list(RELATIONS)[: self.n_relations]
        pairs = [(name, relation) for name in NAMES for relation in relations]
        facts = []
        for k in rng.choice(len(pairs), size=self.n_facts, replace=False):
            name, relation = pairs[int(k)]
            values, statement, question = RELATIONS[relation]
            value = values[int(rng.integers(len(values)))]
            facts.append((statement.format(name=name, value=value), question.format(name=name), value))
        statement, question, answer = facts[int(rng.integers(len(facts)))]
        context = " ".join(fact[0] for fact in facts)
        return TextExample(prompt=f"context: {context}\nquestion: {question}\nanswer: ", completion=answer,
                           meta={"answer": answer})

    def verify(self, completion: str, example: TextExample) -> float:
        from rmlab.rewards.text import squad_exact_match  # the rewards' normalisation; imported when first scored

        return squad_exact_match(completion, example.meta["answer"])
