"""Procedural sequence tasks with exact answers: ``copy``, ``reverse``, ``sort`` (strings over an alphabet) and
``addition`` (multi-digit integers).

Prompts are the input followed by ``=`` (``"cab="``, ``"57+305="``); the completion is the answer (``"abc"``,
``"362"``). Difficulty is the length of the input (``min_length``/``max_length`` characters, or digits per operand)
and the size of the alphabet. Each task checks an answer itself (``verify``): strings exactly (surrounding whitespace
ignored), sums numerically (``"0362"`` is right).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from rmlab.sequence import TextExample
from rmlab.tasks.sequence.generated import GeneratedTask, check_int_in, check_range, check_text

MAX_LENGTH = 512  # characters of a string task's input; far beyond what a small LM learns on a CPU
MAX_DIGITS = 30
MAX_OPERANDS = 10
SEPARATOR = "="
INTEGER = re.compile(r"[+-]?[0-9]+")


class StringTask(GeneratedTask):
    """A random string of ``min_length``..``max_length`` characters of ``alphabet`` -> ``_answer(string)``."""

    def __init__(self, *, min_length: int = 3, max_length: int = 8, alphabet: str = "abcdefghij",
                 **common: Any) -> None:
        check_range("min_length", min_length, "max_length", max_length, 1, MAX_LENGTH)
        self.alphabet = check_text("alphabet", alphabet, min_length=2, forbidden=SEPARATOR)
        self.min_length, self.max_length = min_length, max_length
        super().__init__(**common)

    def _answer(self, text: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _sample(self, rng: np.random.Generator) -> TextExample:
        length = int(rng.integers(self.min_length, self.max_length + 1))
        text = "".join(self.alphabet[i] for i in rng.integers(len(self.alphabet), size=length))
        answer = self._answer(text)
        return TextExample(prompt=text + SEPARATOR, completion=answer, meta={"answer": answer})

    def _widen_hint(self) -> str:
        return "raise max_length or use a larger alphabet"

    def verify(self, completion: str, example: TextExample) -> float:
        return float(completion.strip() == example.meta["answer"])


class Copy(StringTask):
    """``abca=`` -> ``abca``."""

    default_name = "copy"

    def _answer(self, text: str) -> str:
        return text


class Reverse(StringTask):
    """``abcd=`` -> ``dcba``."""

    default_name = "reverse"

    def _answer(self, text: str) -> str:
        return text[::-1]


class Sort(StringTask):
    """``dbca=`` -> ``abcd``: characters in the order of ``alphabet`` (repeats kept)."""

    default_name = "sort"

    def _answer(self, text: str) -> str:
        rank = {c: i for i, c in enumerate(self.alphabet)}
        return "".join(sorted(text, key=rank.__getitem__))


class Addition(GeneratedTask):
    """``n_operands`` non-negative integers of ``min_digits``..``max_digits`` digits each -> their sum in decimal:
    ``57+305=`` -> ``362``. Each operand's digit count is uniform, then its value uniform among numbers of that
    many digits (0-9 for one digit), so short and long operands are equally common."""

    default_name = "addition"

    def __init__(self, *, min_digits: int = 1, max_digits: int = 3, n_operands: int = 2, **common: Any) -> None:
        check_range("min_digits", min_digits, "max_digits", max_digits, 1, MAX_DIGITS)
        check_int_in("n_operands", n_operands, 2, MAX_OPERANDS)
        self.min_digits, self.max_digits, self.n_operands = min_digits, max_digits, n_operands
        super().__init__(**common)

    def _operand(self, rng: np.random.Generator) -> int:
        digits = int(rng.integers(self.min_digits, self.max_digits + 1))
        if digits == 1:
            return int(rng.integers(10))
        # Digit by digit (a leading 1-9, then 0-9): uniform over numbers of that length at any length, where numpy's
        # int64 integers would overflow beyond 18 digits.
        return int(str(rng.integers(1, 10)) + "".join(map(str, rng.integers(10, size=digits - 1))))

    def _sample(self, rng: np.random.Generator) -> TextExample:
        operands = [self._operand(rng) for _ in range(self.n_operands)]
        total = sum(operands)
        return TextExample(prompt="+".join(map(str, operands)) + SEPARATOR, completion=str(total),
                           meta={"answer": total})

    def _widen_hint(self) -> str:
        return "raise max_digits or n_operands"

    def verify(self, completion: str, example: TextExample) -> float:
        text = completion.strip()
        return float(INTEGER.fullmatch(text) is not None and int(text) == example.meta["answer"])

