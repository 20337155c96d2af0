"""``reasoning_gym``: any procedural dataset of reasoning-gym (``pip install 'rmlab[reasoning]'``), scored by the
dataset's own checker.

``dataset`` names one of reasoning-gym's generators (``basic_arithmetic``, ``spell_backward``, ``word_sorting``, ...)
and ``config`` its own settings (its difficulty knobs, checked by reasoning-gym's config class); ``n_examples`` and
``data_seed`` become its ``size`` and ``seed``. The prompt is the dataset's question followed by ``\\nanswer: ``, the
completion its reference answer, and ``verify`` is the dataset's ``score_answer`` (partial credit where the dataset
gives it). Generated locally: reasoning-gym downloads nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from rmlab.errors import ConfigError
from rmlab.sequence import TextExample
from rmlab.tasks.base import check_int
from rmlab.tasks.sequence.base import SequenceTask

RESERVED = {"seed": "data_seed", "size": "n_examples"}


def _import() -> Any:
    try:
        import reasoning_gym
    except ImportError:
        message = "task=reasoning_gym needs the reasoning-gym package: pip install 'rmlab[reasoning]'"
        raise ConfigError(message) from None
    return reasoning_gym


class ReasoningGym(SequenceTask):
    """The ``n_examples`` questions of reasoning-gym's ``dataset`` generated with seed ``data_seed``."""

    default_name = "reasoning_gym"

    def __init__(self, *, dataset: str, config: Mapping[str, Any] | None = None, n_examples: int = 1000,
                 data_seed: int = 0, **common: Any) -> None:
        check_int("n_examples", n_examples, 3)
        check_int("data_seed", data_seed, 0)
        config = {} if config is None else config
        if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
            raise ConfigError(f"task.config must be a mapping of reasoning-gym settings or null, got {config!r}")
        reserved = [k for k in config if k in RESERVED]
        if reserved:
            raise ConfigError(f"task.config must not set {', '.join(reserved)}: use task."
                              f"{', task.'.join(RESERVED[k] for k in reserved)} instead")
        self.dataset, self.config = dataset, dict(config)
        self.n_examples, self.data_seed = n_examples, data_seed
        super().__init__(**common)
        self._generator = self._create()

    def _create(self) -> Any:
        rg = _import()
        from reasoning_gym.factory import DATASETS

        if self.dataset not in DATASETS:
            raise ConfigError(f"task.dataset must be a reasoning-gym dataset, got {self.dataset!r}; valid: "
                              f"{', '.join(sorted(DATASETS))}")
        fields = [f.name for f in dataclasses.fields(DATASETS[self.dataset][1]) if f.name not in RESERVED]
        unknown = sorted(k for k in self.config if k not in fields)
        if unknown:
            raise ConfigError(f"task.config has no setting {', '.join(unknown)} for reasoning-gym dataset "
                              f"{self.dataset!r}; its settings are: {', '.join(fields)}")
        try:
            return rg.create_dataset(self.dataset, **self.config, seed=self.data_seed, size=self.n_examples)
        except (AssertionError, ValueError, TypeError) as err:  # its config's validate() asserts
            raise ConfigError(f"task.config is not valid for reasoning-gym dataset {self.dataset!r}: {err}") from None

    def _examples(self) -> list[TextExample]:
        return [TextExample(prompt=f"{entry['question'].rstrip()}\nanswer: ", completion=str(entry["answer"]),
                            meta={"answer": str(entry["answer"]), "entry": entry}) for entry in self._generator]

    def verify(self, completion: str, example: TextExample) -> float:
        try:
            score = float(self._generator.score_answer(completion.strip(), example.meta["entry"]))
        except Exception:  # a checker that chokes on malformed model output: the answer is wrong, the run goes on
            return 0.0
        return min(max(score, 0.0), 1.0) if score == score else 0.0  # NaN scores nothing
