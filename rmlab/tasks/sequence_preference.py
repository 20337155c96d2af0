"""Preference tasks for language models (output kind ``sequence_pair``): a prompt with a chosen and a rejected
completion, for the preference-optimisation losses (``dpo``, ``simpo``, ``orpo``).

- ``PreferencePairs``: what every such task adds to ``SequenceTask`` (whose split grouped by prompt it keeps, so no
  prompt is in two splits): ``pair_flip``, the share of train pairs (and val pairs with ``corrupt_val``) whose chosen
  and rejected completions are swapped, the sequence analogue of the tabular preference tasks' flips (test pairs
  never are); and ``info`` of the ``sequence_pair`` kind.
- ``preference_completion_file``: the user's rows of ``prompt``, ``chosen``, ``rejected`` (TRL's preference format),
  read and checked as ``completion_file`` reads its rows.
- ``reverse_preference``, ``addition_preference``: the procedural tasks' prompts with their correct answer as the
  chosen completion and a corrupted one (``edits`` characters changed) as the rejected; their verifier checks the
  true answer, so val and test are also scored by generating and checking, as the sequence tasks are.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from rmlab import kinds
from rmlab.errors import ConfigError, DataError
from rmlab.sequence_pairs import PairExample
from rmlab.tasks.base import check_real
from rmlab.tasks.files import check_user_file
from rmlab.tasks.sequence.base import SequenceTask
from rmlab.tasks.sequence.files import EXTENSIONS, _resolve, check_columns, read_rows, require_columns, text_values
from rmlab.tasks.sequence.generated import check_int_in
from rmlab.tasks.sequence.procedural import MAX_LENGTH, Addition, Reverse

DIGITS = "0123456789"


class PreferencePairs(SequenceTask):
    """Base of the ``sequence_pair`` tasks: ``_examples`` returns ``PairExample``s (see the module docstring)."""

    kind: ClassVar[str] = kinds.SEQUENCE_PAIR

    def __init__(self, *, pair_flip: float = 0.0, **common: Any) -> None:
        if common.get("completion_noise", 0.0) != 0.0:
            raise ConfigError("task.completion_noise does not apply to preference pairs; use task.pair_flip (the "
                              "share of pairs whose chosen and rejected completions are swapped)")
        check_real("pair_flip", pair_flip, 0, 1)
        self.pair_flip = pair_flip
        super().__init__(**common)

    @property
    def info(self) -> kinds.TaskInfo:
        return kinds.TaskInfo(name=self.name, output_kind=kinds.SEQUENCE_PAIR, input_dim=0, input_type=kinds.TEXT,
                              verifier=self.verifier())

    def _corrupt(self, examples: list[PairExample], rng: np.random.Generator) -> list[PairExample]:  # type: ignore
        if self.pair_flip == 0:
            return examples
        flip = rng.random(len(examples)) < self.pair_flip
        return [replace(p, chosen=p.rejected, rejected=p.chosen, meta={**p.meta, "flipped": True}) if f else p
                for p, f in zip(examples, flip)]


class PreferenceCompletionFile(PreferencePairs):
    """Rows of ``path`` with a prompt, a chosen and a rejected completion (``prompt_column``, ``chosen_column``,
    ``rejected_column``); texts are used as they are (end the prompt where the completions start)."""

    def __init__(self, *, path: str, prompt_column: str = "prompt", chosen_column: str = "chosen",
                 rejected_column: str = "rejected", **common: Any) -> None:
        self.path = _resolve(path)
        names = check_columns(prompt_column=prompt_column, chosen_column=chosen_column,
                              rejected_column=rejected_column)
        self.columns = dict(zip(("prompt", "chosen", "rejected"), names))
        self.default_name = self.path.stem
        super().__init__(**common)
        check_user_file(self.path, path, EXTENSIONS)

    def _error(self, message: str) -> DataError:
        return DataError(f"{self.path}: {message}")

    def _examples(self) -> list[PairExample]:  # type: ignore[override]
        rows = read_rows(self.path, self._error)
        require_columns(rows, self.columns, self._error)
        texts = {role: text_values(rows, column, role, self._error) for role, column in self.columns.items()}
        same = [i for i, (c, r) in enumerate(zip(texts["chosen"], texts["rejected"])) if c == r]
        if same:
            raise self._error(f"{len(same)} rows have identical chosen and rejected text, e.g. {rows[2][same[0]]}; a "
                              "pair needs two different completions")
        return [PairExample(prompt=p, chosen=c, rejected=r)
                for p, c, r in zip(texts["prompt"], texts["chosen"], texts["rejected"])]


class AnswerPairs(PreferencePairs):
    """Pairs from a generated task with a known answer: chosen = the answer, rejected = the answer with ``edits``
    characters changed (each to another character of the answer's alphabet), drawn from ``data_seed``'s stream, so
    the pairs are fixed by the data seed as the examples are. Mixed in before the generated task's class."""

    def __init__(self, *, edits: int = 1, **common: Any) -> None:
        self.edits = check_int_in("edits", edits, 1, MAX_LENGTH)
        super().__init__(**common)

    def _edit_alphabet(self, position: int, answer: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _wrong(self, answer: str, rng: np.random.Generator) -> str:
        chars = list(answer)
        for position in rng.choice(len(chars), size=min(self.edits, len(chars)), replace=False):
            others = [c for c in self._edit_alphabet(int(position), answer) if c != chars[position]]
            chars[position] = others[int(rng.integers(len(others)))]
        return "".join(chars)

    def _examples(self) -> list[PairExample]:  # type: ignore[override]
        rng = np.random.default_rng(np.random.SeedSequence(self.data_seed).spawn(2)[1])
        return [PairExample(prompt=e.prompt, chosen=e.completion, rejected=self._wrong(e.completion, rng),
                            meta=e.meta) for e in super()._examples()]


class ReversePreference(AnswerPairs, Reverse):
    """``cabd=``: chosen ``dbac``, rejected e.g. ``dbcc`` (one letter of the alphabet changed)."""

    default_name = "reverse_preference"

    def _edit_alphabet(self, position: int, answer: str) -> str:
        return self.alphabet


class AdditionPreference(AnswerPairs, Addition):
    """``57+305=``: chosen ``362``, rejected e.g. ``352`` (one digit changed; never a leading zero, so the rejected
    sum is a different number written as a sum would be)."""

    default_name = "addition_preference"

    def _edit_alphabet(self, position: int, answer: str) -> str:
        return DIGITS[1:] if position == 0 and len(answer) > 1 else DIGITS
