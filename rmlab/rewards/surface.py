"""Text rewards on a completion's surface, without a reference: the usual extra terms of a combined reward.

    NegLength  ``neg_length``  minus the completion's length in characters (a length penalty with a weight > 0)
    Format     ``format``      1 if the completion (surrounding whitespace stripped) matches ``pattern`` whole, else 0
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from rmlab.errors import ConfigError
from rmlab.rewards.text import TextReward
from rmlab.sequence import TextExample


class NegLength(TextReward):
    """``-len(completion)`` in characters (Unicode code points) as generated."""

    default_name = "neg_length"

    def score(self, completions: Sequence[str], examples: Sequence[TextExample]) -> torch.Tensor:
        self._check_batch(completions, examples)
        return torch.tensor([-float(len(c)) for c in completions], dtype=torch.float32)


class Format(TextReward):
    """A format check: 1.0 if the stripped completion matches the regular expression ``pattern`` (Python ``re``,
    the whole text: ``re.fullmatch``), else 0.0."""

    default_name = "format"

    def __init__(self, pattern: str | None = None, name: str | None = None) -> None:
        super().__init__(name)
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"reward {self.name!r}: pattern must be a regular expression the completion must match "
                              f"(e.g. pattern='[0-9]+'), got {pattern!r}")
        try:
            self.pattern = re.compile(pattern)
        except re.error as err:
            raise ConfigError(f"reward {self.name!r}: pattern {pattern!r} is not a valid regular expression: {err}") \
                from None

    def _score(self, completion: str, reference: str) -> float:
        return float(self.pattern.fullmatch(completion.strip()) is not None)
