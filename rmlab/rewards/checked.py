"""Text rewards that need something of the task (output kind ``sequence``):

    TaskVerifier   ``verifier``        the task's own answer checker (``TaskInfo.verifier``), in [0, 1]
    LabelAccuracy  ``label_accuracy``  1 if the completion is the example's label, else 0 (text classification)
    GoldReward     ``gold``            the task's hidden true reward (``TaskInfo.gold``: the known-reward tasks)

Each refuses, at start-up (``check_task``), a task that lacks what it needs, naming the text rewards that work there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rmlab.kinds import TaskInfo
from rmlab.rewards.text import TextReward
from rmlab.sequence import TextExample, Verifier


class _TaskFunctionReward(TextReward):
    """Scores each completion with a function the task provides (``TaskInfo.<field>``), bound by ``check_task`` (the
    run calls it once at start-up, before any ``score``); a task without one is refused there."""

    field: str  # the TaskInfo attribute holding the function
    needs: str  # what the refusal says the reward needs

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self._function: Verifier | None = None

    def check_task(self, info: TaskInfo) -> None:
        function = getattr(info, self.field)
        if function is None:
            raise self._refuse(info, self.needs)
        self._function = function

    def score(self, completions: Sequence[str], examples: Sequence[TextExample]) -> torch.Tensor:
        self._check_batch(completions, examples)
        if self._function is None:
            raise RuntimeError(f"reward {self.name!r} scores with the task's {self.field}: call check_task(info) first")
        return torch.tensor([self._function(c, e) for c, e in zip(completions, examples)], dtype=torch.float32)


class TaskVerifier(_TaskFunctionReward):
    """The task's verifier on each completion: whether the answer is right (``addition`` checks the sum numerically,
    ``summarisation`` gives the share of key facts mentioned, ``reasoning_gym`` uses the dataset's ``score_answer``).
    A verifier checks the true answer, so on a split whose completions were corrupted it still scores against the
    clean one, unlike the rewards that compare with the reference text."""

    default_name = "verifier"
    field = "verifier"
    needs = "a task with its own answer checker (a verifier)"


class GoldReward(_TaskFunctionReward):
    """The task's hidden true reward on each completion (``review_writing``'s gold function): what a learned reward
    model is a proxy for. Its range is the task's (not [0, 1])."""

    default_name = "gold"
    field = "gold"
    needs = "a task with a hidden true reward (a gold function)"


class LabelAccuracy(TextReward):
    """Classification accuracy of a text classification task: 1.0 if the completion, stripped of surrounding
    whitespace, is the example's label (its completion in the split), else 0.0; text outside the label set is wrong."""

    default_name = "label_accuracy"

    def check_task(self, info: TaskInfo) -> None:
        if not info.labels:
            raise self._refuse(info, "a text classification task (a label set)")

    def _score(self, completion: str, reference: str) -> float:
        return float(completion.strip() == reference)
