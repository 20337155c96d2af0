"""Losses that misbehave on purpose, selected with ``loss._target_=tests.fault_helpers.X`` in the fault tests.

They put a fault at a known moment of a real run in a real process: a signal that arrives mid-training (as a
scheduler's SIGTERM or a user's Ctrl-C would), a constructor that raises an exception no check expects.
"""

import os
import signal

import torch

from rmlab.losses.base import Loss


class SignalAfterSteps(Loss):
    """Cross entropy that sends its own process ``signal_name`` on its ``after``-th training step (once, or
    ``repeat`` times in a row: a second SIGTERM stops at once). With ``marker`` it writes that file first."""

    accepts = ("logits",)

    def __init__(self, after: int = 5, signal_name: str = "SIGTERM", repeat: int = 1, marker: str | None = None):
        super().__init__()
        self.after, self.signum, self.repeat, self.marker = after, getattr(signal, signal_name), repeat, marker
        self.calls = 0

    def forward(self, output, target):
        if self.training:
            self.calls += 1
            if self.after <= self.calls < self.after + self.repeat:
                if self.marker:
                    open(self.marker, "w").close()
                os.kill(os.getpid(), self.signum)
        return torch.nn.functional.cross_entropy(output.float(), target)


class BrokenLoss(Loss):
    """Raises a RuntimeError from its constructor when ``broken``: an unexpected exception before the run exists."""

    accepts = ("logits",)

    def __init__(self, broken: bool = False):
        super().__init__()
        if broken:
            raise RuntimeError("broken on purpose")

    def forward(self, output, target):
        return torch.nn.functional.cross_entropy(output.float(), target)
