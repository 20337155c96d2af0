"""``SequenceTask``: the shared pipeline of every sequence task (see ``rmlab.sequence`` for the data contract).

Splits are grouped by prompt: examples are grouped by their prompt text and whole groups are assigned to train, val
or test, so no prompt is seen in training and tested on. ``completion_noise`` replaces the completion of that share of
train examples (and val examples when ``corrupt_val``) with the completion of another example drawn at random from
the same split: the sequence analogue of symmetric label noise. Test completions are never corrupted. A corrupted
example keeps its clean completion in ``meta["clean"]``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import numpy as np

from rmlab import kinds
from rmlab.errors import ConfigError
from rmlab.sequence import TextExample, Verifier
from rmlab.tasks.base import _round, check_bool, check_int, check_real

SPLITS = ("train", "val", "test")


class SequenceTask:
    """Base of the sequence tasks. Subclasses set ``default_name`` and implement ``_examples``; they may set
    ``labels`` (text classification), override ``verify`` (tasks with a checkable answer), ``gold_reward`` (tasks
    with a hidden true reward) and ``_corrupt`` (another kind of noise than completion noise)."""

    kind: ClassVar[str] = kinds.SEQUENCE
    default_name: ClassVar[str] = "sequence"
    labels: tuple[str, ...] | None = None

    def __init__(self, *, name: str | None = None, batch_size: int = 32, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, split_seed: int = 0, completion_noise: float = 0.0,
                 corrupt_val: bool = True) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(f"task.name must be a non-empty string or null, got {name!r}")
        check_int("batch_size", batch_size, 1)
        check_real("val_fraction", val_fraction, 0, 1, low_open=True)
        check_real("test_fraction", test_fraction, 0, 1, low_open=True)
        if val_fraction + test_fraction >= 1:
            raise ConfigError(f"task.val_fraction + task.test_fraction must be < 1, got {val_fraction + test_fraction:g}")
        check_int("split_seed", split_seed, 0)
        check_real("completion_noise", completion_noise, 0, 1)
        check_bool("corrupt_val", corrupt_val)
        self.name = name if name is not None else self.default_name
        self.batch_size = batch_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.split_seed = split_seed
        self.completion_noise = completion_noise
        self.corrupt_val = corrupt_val
        self._splits: dict[str, list[TextExample]] | None = None

    # --- what a subclass provides ------------------------------------------------------------------------------

    def _examples(self) -> list[TextExample]:  # pragma: no cover - abstract
        """The whole dataset, deterministic (generated from the task's own data seed, or read from a file)."""
        raise NotImplementedError

    def verifier(self) -> Verifier | None:
        """The task's answer checker, or None when the task has none (override ``verify`` to provide one)."""
        return self.verify if type(self).verify is not SequenceTask.verify else None

    def verify(self, completion: str, example: TextExample) -> float:  # pragma: no cover - optional
        raise NotImplementedError

    def gold(self) -> Verifier | None:
        """The task's hidden true reward, or None when the task has none (override ``gold_reward`` to provide one)."""
        return self.gold_reward if type(self).gold_reward is not SequenceTask.gold_reward else None

    def gold_reward(self, completion: str, example: TextExample) -> float:  # pragma: no cover - optional
        raise NotImplementedError

    # --- public API ----------------------------------------------------------------------------------------------

    @property
    def info(self) -> kinds.TaskInfo:
        return kinds.TaskInfo(name=self.name, output_kind=kinds.SEQUENCE, input_dim=0, input_type=kinds.TEXT,
                              labels=self.labels, verifier=self.verifier(), gold=self.gold())

    def load(self) -> dict[str, list[TextExample]]:
        """``train``/``val``/``test`` lists of examples: deterministic given ``split_seed``, computed once."""
        if self._splits is None:
            self._splits = self._build()
        return self._splits

    # --- the pipeline --------------------------------------------------------------------------------------------

    def _build(self) -> dict[str, list[TextExample]]:
        examples = self._examples()
        if not examples:
            raise ConfigError(f"task {self.name}: no examples")
        groups: dict[str, list[int]] = {}
        for i, example in enumerate(examples):
            groups.setdefault(example.prompt, []).append(i)
        keys = list(groups)
        split_seq, train_seq, val_seq = np.random.SeedSequence(self.split_seed).spawn(3)
        order = np.random.default_rng(split_seq).permutation(len(keys))
        n_val, n_test = _round(len(keys) * self.val_fraction), _round(len(keys) * self.test_fraction)
        if min(n_val, n_test, len(keys) - n_val - n_test) < 1:
            raise ConfigError(f"task {self.name}: too few distinct prompts ({len(keys)}) to split with "
                              f"val_fraction={self.val_fraction}, test_fraction={self.test_fraction}")
        parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
        splits = {name: [examples[i] for g in sorted(parts[name]) for i in groups[keys[g]]] for name in SPLITS}
        rngs = {"train": np.random.default_rng(train_seq), "val": np.random.default_rng(val_seq)}
        for name in ("train", "val") if self.corrupt_val else ("train",):  # test stays clean
            splits[name] = self._corrupt(splits[name], rngs[name])
        return splits

    def _corrupt(self, examples: list[TextExample], rng: np.random.Generator) -> list[TextExample]:
        """The corrupted copy of one split's examples (train, and val when ``corrupt_val``): completion noise here;
        a task with another kind of noise (labels of a text classification task) overrides this."""
        if self.completion_noise == 0:
            return examples
        return corrupt_completions(examples, self.completion_noise, rng)


def corrupt_completions(examples: list[TextExample], rate: float, rng: np.random.Generator) -> list[TextExample]:
    """Each example's completion replaced, with probability ``rate``, by another example's (a different text where
    one exists); the clean completion is kept in ``meta["clean"]``."""
    out = list(examples)
    n = len(examples)
    for i in np.flatnonzero(rng.random(n) < rate):
        for _ in range(8):  # a few draws to find a different completion; identical texts stay as they are
            j = int(rng.integers(n))
            if examples[j].completion != examples[i].completion:
                break
        clean = examples[i]
        out[i] = replace(clean, completion=examples[j].completion, meta={**clean.meta, "clean": clean.completion})
    return out
