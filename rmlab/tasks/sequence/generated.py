"""``GeneratedTask``: a sequence task whose examples are drawn from a seeded generator.

``data_seed`` fixes the dataset (so it stays the same while ``split_seed`` varies the split) and ``n_examples`` is the
number of examples with **distinct prompts** it holds: a generator whose space is too small for ``n_examples`` is a
start-up error, not a silently smaller dataset. A subclass implements ``_sample(rng) -> TextExample``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rmlab.errors import ConfigError
from rmlab.sequence import TextExample
from rmlab.tasks.base import check_int
from rmlab.tasks.sequence.base import SequenceTask

# Draws allowed per requested example before giving up on finding enough distinct prompts: enough for a space a
# little larger than n_examples (the last few distinct prompts of a nearly exhausted space take many draws).
DRAWS_PER_EXAMPLE = 30


def check_text(param: str, value: Any, *, min_length: int = 1, forbidden: str = "") -> str:
    """Raise unless ``value`` is a string of distinct, printable, non-space characters (an alphabet), at least
    ``min_length`` long and free of ``forbidden``."""
    ok = isinstance(value, str) and len(value) >= min_length and len(set(value)) == len(value)
    ok = ok and all(c.isprintable() and not c.isspace() and c not in forbidden for c in value)
    if not ok:
        extra = f", without {' '.join(repr(c) for c in forbidden)}" if forbidden else ""
        raise ConfigError(f"task.{param} must be a string of >= {min_length} distinct printable non-space "
                          f"characters{extra}, got {value!r}")
    return value


def check_int_in(param: str, value: Any, minimum: int, maximum: int) -> int:
    """Raise unless ``value`` is an integer in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(f"task.{param} must be an integer in [{minimum}, {maximum}], got {value!r}")
    return value


def check_range(low_param: str, low: Any, high_param: str, high: Any, minimum: int, maximum: int) -> None:
    """Two integer knobs ``low <= high``, both in [minimum, maximum]."""
    check_int_in(low_param, low, minimum, maximum)
    check_int_in(high_param, high, minimum, maximum)
    if low > high:
        raise ConfigError(f"task.{low_param} must be <= task.{high_param}, got {low} > {high}")


class GeneratedTask(SequenceTask):
    """``n_examples`` examples with distinct prompts, drawn by ``_sample`` from a generator seeded by ``data_seed``."""

    def __init__(self, *, n_examples: int = 2000, data_seed: int = 0, **common: Any) -> None:
        check_int("n_examples", n_examples, 3)
        check_int("data_seed", data_seed, 0)
        self.n_examples = n_examples
        self.data_seed = data_seed
        super().__init__(**common)

    def _sample(self, rng: np.random.Generator) -> TextExample:  # pragma: no cover - abstract
        raise NotImplementedError

    def _examples(self) -> list[TextExample]:
        rng = np.random.default_rng(self.data_seed)
        found: dict[str, TextExample] = {}
        draws = 0
        while len(found) < self.n_examples and draws < DRAWS_PER_EXAMPLE * self.n_examples:
            example = self._sample(rng)
            found.setdefault(example.prompt, example)
            draws += 1
        if len(found) < self.n_examples:
            raise ConfigError(f"task {self.name}: only {len(found)} distinct prompts in {draws} draws, fewer than "
                              f"task.n_examples={self.n_examples}; lower n_examples or widen the task "
                              f"({self._widen_hint()})")
        return list(found.values())

    def _widen_hint(self) -> str:
        return "see its knobs in the README"
