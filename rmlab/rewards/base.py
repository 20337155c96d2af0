"""The reward contract: a score of model behaviour where higher is always better.

A reward gives an aggregate torchmetrics ``Metric`` (accumulated on device over an epoch) and, where it decomposes
per sample, a ``per_sample(output, target) -> (B,)`` form that reward feedback needs.
"""

from typing import ClassVar

import torch

from rmlab.kinds import TaskInfo


class Reward:
    """Base class of every rmlab reward.

    Subclasses set ``accepts`` (output kinds) and implement ``metric``; those that decompose per sample set
    ``has_per_sample = True`` and implement ``per_sample``. ``name`` is the YAML file's ``name`` and is the metric
    name it is logged under (``val/<name>``) besides ``val/reward``.
    """

    accepts: ClassVar[tuple[str, ...]] = ()
    has_per_sample: ClassVar[bool] = False

    def __init__(self, name: str | None = None) -> None:
        self.name = name or type(self).__name__.lower()

    def check_task(self, info: TaskInfo) -> None:
        """Raise ConfigError if this reward cannot be computed on the task (called once, before training)."""

    def metric(self, info: TaskInfo):
        """A fresh torchmetrics Metric: ``update(output, target)`` with raw model output, ``compute()`` -> scalar
        tensor, higher is better."""
        raise NotImplementedError

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Reward of each sample, shape (B,), higher is better; only where ``has_per_sample``."""
        raise NotImplementedError(f"reward {self.name!r} has no per-sample form")
