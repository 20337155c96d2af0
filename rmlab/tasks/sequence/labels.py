"""``LabelledTask``: text classification as a sequence task, the completion being the label's own text.

The task declares its label set (``labels``, what ``label_accuracy`` needs) and replaces the completion noise of the
base with **label noise**: ``label_noise`` of the train examples (and val with ``corrupt_val``) get another label of
the set, uniformly among the others (``symmetric``) or the next one in the sorted label set (``asymmetric``), exactly
as the tabular tasks' label noise (``rmlab.tasks.corruption.flip_labels``). A corrupted example keeps its clean label
in ``meta["clean"]``; every example carries its clean label in ``meta["label"]``, which ``verify`` checks against.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from rmlab import kinds
from rmlab.errors import ConfigError
from rmlab.sequence import TextExample
from rmlab.tasks.base import check_choice, check_real
from rmlab.tasks.corruption import NOISE_TYPES, flip_labels
from rmlab.tasks.sequence.base import SequenceTask


class LabelledTask(SequenceTask):
    """A sequence task whose completions are labels of a fixed set. A subclass sets ``self.labels`` (sorted, at least
    two) in its constructor or, for a file, when it reads it, and gives every example ``meta["label"]``."""

    def __init__(self, *, label_noise: float = 0.0, noise_type: str = "symmetric", **common: Any) -> None:
        check_real("label_noise", label_noise, 0, 1)
        check_choice("noise_type", noise_type, NOISE_TYPES)
        completion_noise = common.get("completion_noise", 0.0)
        if completion_noise != 0:
            raise ConfigError(f"task.completion_noise must be 0 on a text classification task, got "
                              f"{completion_noise!r}; corrupt labels with task.label_noise (and task.noise_type)")
        self.label_noise, self.noise_type = label_noise, noise_type
        super().__init__(**common)

    @property
    def info(self) -> kinds.TaskInfo:
        if self.labels is None:  # a file's label set is known once it is read
            self.load()
        return super().info

    def verify(self, completion: str, example: TextExample) -> float:
        return float(completion.strip() == example.meta["label"])

    def _corrupt(self, examples: list[TextExample], rng: np.random.Generator) -> list[TextExample]:
        if self.label_noise == 0:
            return examples
        assert self.labels is not None
        index = {label: i for i, label in enumerate(self.labels)}
        y = np.array([index[e.completion] for e in examples], dtype=np.int64)
        noisy = flip_labels(y, len(self.labels), self.label_noise, self.noise_type, rng)
        return [e if new == old else replace(e, completion=self.labels[new], meta={**e.meta, "clean": e.completion})
                for e, old, new in zip(examples, y, noisy)]
