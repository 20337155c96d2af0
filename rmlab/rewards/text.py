"""Text rewards (output kind ``sequence``, and ``sequence_pair`` where the reference is the chosen completion): scores
of generated completions against the reference completion.

A text reward is ``score(completions, examples) -> float32 (B,)``, one score per completion against its example's
``completion`` (the reference of its split), higher is better; ``per_sample`` is the same function, and the aggregate
over a split (``metric``) is the mean of the scores, which the run accumulates. This module holds the base class and
the string-matching rewards built on torchmetrics.text:

    ExactMatch       ``exact_match``        1 if the completion equals the reference (after ``normalize``), else 0
    TokenF1          ``token_f1``           SQuAD token F1 (lowercase, no punctuation, no articles a/an/the)
    NegEditDistance  ``neg_edit_distance``  -Levenshtein(completion, reference) / max(their lengths), in [-1, 0]
    RougeL           ``rouge_l``            ROUGE-L F-measure (longest common subsequence of words), in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torchmetrics import MeanMetric

from rmlab.errors import ConfigError, IncompatibleError
from rmlab.kinds import SEQUENCE, SEQUENCE_PAIR, TaskInfo
from rmlab.rewards.base import Reward
from rmlab.sequence import TextExample

NORMALIZATIONS = ("none", "strip", "squad")


def check_bool(reward: str, param: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"reward {reward!r}: {param} must be true or false, got {value!r}")
    return value


def check_choice(reward: str, param: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"reward {reward!r}: {param} must be one of {', '.join(choices)}, got {value!r}")
    return value  # type: ignore[return-value]


def check_int_in(reward: str, param: str, value: object, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(f"reward {reward!r}: {param} must be an integer in [{minimum}, {maximum}], got {value!r}")
    return value


def _squad(prediction: str, reference: str) -> dict[str, torch.Tensor]:
    from torchmetrics.functional.text import squad

    return squad({"prediction_text": prediction, "id": "0"},
                 {"answers": {"answer_start": [0], "text": [reference]}, "id": "0"})


def squad_exact_match(prediction: str, reference: str) -> float:
    """1.0 if the two answers are equal after SQuAD's normalisation (lowercase; punctuation, the articles a/an/the
    and extra whitespace removed), else 0.0."""
    return float(_squad(prediction, reference)["exact_match"]) / 100.0


def squad_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 of the normalised answers (1.0 when both normalise to nothing, as SQuAD v2.0 scores it)."""
    return float(_squad(prediction, reference)["f1"]) / 100.0


class TextReward(Reward):
    """Base of the text rewards: a per-sample score of each completion, aggregated as a mean.

    A subclass implements ``_score(completion, reference) -> float``, or ``score`` itself where it needs the whole
    example (a task's verifier) or scores a batch at once.
    """

    # On preference pairs of completions (sequence_pair) the generations are scored against the chosen completion.
    accepts: ClassVar[tuple[str, ...]] = (SEQUENCE, SEQUENCE_PAIR)
    has_per_sample: ClassVar[bool] = True
    default_name: ClassVar[str] = "text_reward"  # its config's name, used when built without one

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name or self.default_name)

    def score(self, completions: Sequence[str], examples: Sequence[TextExample]) -> torch.Tensor:
        """The score of each completion against its example, float32 (B,), higher is better."""
        self._check_batch(completions, examples)
        return torch.tensor([self._score(c, e.completion) for c, e in zip(completions, examples)],
                            dtype=torch.float32)

    @property
    def term_names(self) -> tuple[str, ...]:
        """Names of the parts a reward is made of (a combined reward's terms), each logged as ``{split}/<name>``."""
        return ()

    def score_with_terms(self, completions: Sequence[str],
                         examples: Sequence[TextExample]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``score`` and each part's own per-sample score (keys: ``term_names``), computed once."""
        return self.score(completions, examples), {}

    # A text reward's per-sample form takes texts, not (output, target) tensors.
    def per_sample(self, completions: Sequence[str], examples: Sequence[TextExample]) -> torch.Tensor:  # type: ignore
        return self.score(completions, examples)

    def metric(self, info: TaskInfo) -> MeanMetric:
        """The split's mean score; the run updates it with ``score``'s output."""
        self.check_task(info)
        return MeanMetric()

    def _score(self, completion: str, reference: str) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_batch(self, completions: Sequence[str], examples: Sequence[TextExample]) -> None:
        if len(completions) != len(examples):
            raise ValueError(f"reward {self.name!r}: {len(completions)} completions for {len(examples)} examples")

    def _refuse(self, info: TaskInfo, needs: str) -> IncompatibleError:
        """The start-up error of a reward the task cannot give: what it needs, and the text rewards that work."""
        from rmlab.build import compatible_options

        needs_task = ("verifier", "label_accuracy", "gold")
        other = [name for name in compatible_options("reward", SEQUENCE) if name not in needs_task]
        return IncompatibleError(f"reward={self.name} does not work on task={info.name}: it needs {needs}, which "
                                 f"task={info.name} does not have; use reward={', '.join(other)} instead")


class ExactMatch(TextReward):
    """1.0 if the completion equals the reference, else 0.0, after ``normalize``: ``none`` (character for
    character), ``strip`` (surrounding whitespace ignored) or ``squad`` (SQuAD's answer normalisation)."""

    default_name = "exact_match"

    def __init__(self, normalize: str = "strip", name: str | None = None) -> None:
        super().__init__(name)
        self.normalize = check_choice(self.name, "normalize", normalize, NORMALIZATIONS)

    def _score(self, completion: str, reference: str) -> float:
        if self.normalize == "squad":
            return squad_exact_match(completion, reference)
        if self.normalize == "strip":
            completion, reference = completion.strip(), reference.strip()
        return float(completion == reference)


class TokenF1(TextReward):
    """SQuAD's token-overlap F1 between the normalised completion and reference: partial credit for an answer that
    shares words with the reference."""

    default_name = "token_f1"

    def _score(self, completion: str, reference: str) -> float:
        return squad_f1(completion, reference)


class NegEditDistance(TextReward):
    """Negative normalised character edit distance: ``-levenshtein(c, r) / max(len(c), len(r))`` of the two texts
    stripped of surrounding whitespace, in [-1, 0] (0 for identical texts; -1 when nothing can be kept)."""

    default_name = "neg_edit_distance"

    def score(self, completions: Sequence[str], examples: Sequence[TextExample]) -> torch.Tensor:
        from torchmetrics.functional.text import edit_distance

        self._check_batch(completions, examples)
        if not completions:
            return torch.zeros(0)
        hyp, ref = [c.strip() for c in completions], [e.completion.strip() for e in examples]
        distance = edit_distance(hyp, ref, reduction="none").to(torch.float32)
        longest = torch.tensor([max(len(h), len(r), 1) for h, r in zip(hyp, ref)], dtype=torch.float32)
        return -(distance / longest) + 0.0  # + 0.0 turns -0.0 (identical texts) into 0.0


class RougeL(TextReward):
    """ROUGE-L F-measure: the longest common subsequence of words (lowercased, punctuation dropped, as rouge-score
    tokenises) between completion and reference; ``use_stemmer`` compares Porter stems (needs nltk, no download)."""

    default_name = "rouge_l"

    def __init__(self, use_stemmer: bool = False, name: str | None = None) -> None:
        super().__init__(name)
        self.use_stemmer = check_bool(self.name, "use_stemmer", use_stemmer)
        if use_stemmer:
            try:
                import nltk
            except ImportError:
                raise ConfigError(f"reward {self.name!r}: use_stemmer needs nltk: pip install nltk") from None

    def _score(self, completion: str, reference: str) -> float:
        from torchmetrics.functional.text import rouge_score

        # Only rougeL: rougeLsum would split sentences with nltk's punkt, which downloads its data.
        scores = rouge_score(completion, reference, rouge_keys=("rougeL",), use_stemmer=self.use_stemmer)
        return float(scores["rougeL_fmeasure"])
