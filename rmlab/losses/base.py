"""The loss contract: an nn.Module mapping (output, target) to a scalar, declaring the output kinds it accepts."""

from typing import ClassVar

import torch
from torch import nn

from rmlab.kinds import TaskInfo


class Loss(nn.Module):
    """Base class of every rmlab loss.

    Subclasses set ``accepts`` (a tuple of output kinds from ``rmlab.kinds``) and implement ``forward``. Constructor
    arguments come from the loss's YAML file and are validated in ``__init__`` (raise ``rmlab.errors.ConfigError``);
    checks that need the task (a class-weight vector's length) go in ``check_task``.
    """

    accepts: ClassVar[tuple[str, ...]] = ()

    def check_task(self, info: TaskInfo) -> None:
        """Raise ConfigError if this loss's settings do not fit the task (called once, before training)."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
