"""Classification losses applied token-wise: the shared reduction of every loss that accepts both ``logits`` and
``sequence`` outputs.

A ``TokenwiseLoss`` defines one per-example loss ``per_example(logits (N, C), target (N,)) -> (N,)``. On ``logits``
(B, C) it is averaged over the batch. On ``sequence`` (B, T, V) every position is one example whose classes are the
vocabulary: positions whose label is ``IGNORE_INDEX`` (prompt, padding) are left out, and ``average`` says how the
completion tokens are weighed:

- ``token``: the mean over all completion tokens of the batch, so a long completion weighs more than a short one
  (what a language-model loss usually reports: its exponential is the perplexity);
- ``sequence``: the mean over each completion's tokens, then over the completions, so every example weighs the same
  whatever its length.

On ``logits`` the two are the same (every example is one token).
"""

from typing import ClassVar

import torch

from rmlab.errors import ConfigError
from rmlab.kinds import LOGITS, SEQUENCE, TaskInfo
from rmlab.losses.base import Loss
from rmlab.sequence import IGNORE_INDEX

AVERAGES = ("token", "sequence")


def reduce_tokens(per_token: torch.Tensor, valid: torch.Tensor, average: str) -> torch.Tensor:
    """Scalar mean of ``per_token`` (B, T) over the ``valid`` (B, T) positions, weighed per ``average``."""
    per_token = per_token * valid
    if average == "token":
        return per_token.sum() / valid.sum().clamp_min(1)
    counts = valid.sum(dim=1)
    per_sequence = per_token.sum(dim=1) / counts.clamp_min(1)
    rows = counts > 0
    return (per_sequence * rows).sum() / rows.sum().clamp_min(1)


class TokenwiseLoss(Loss):
    """Base of the classification losses: ``per_example`` plus the reduction in the module docstring."""

    accepts: ClassVar[tuple[str, ...]] = (LOGITS, SEQUENCE)
    loss_name: ClassVar[str] = "loss"

    def __init__(self, average: str = "token") -> None:
        super().__init__()
        if average not in AVERAGES:
            raise ConfigError(f"{self.loss_name}: average must be one of {', '.join(AVERAGES)}, got {average!r}")
        self.average = average

    def per_example(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """float32 (N,) loss of each row of ``output`` (N, C) against int64 ``target`` (N,)."""
        raise NotImplementedError

    def class_weighted(self) -> bool:
        """True when the loss holds per-class weights (meaningless over a vocabulary, refused on sequence tasks)."""
        return False

    def check_task(self, info: TaskInfo) -> None:
        if info.output_kind == SEQUENCE and self.class_weighted():
            raise ConfigError(f"{self.loss_name}: per-class weights do not apply to sequence tasks (the classes "
                              "would be vocabulary tokens); leave them null")

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.dim() == 3:  # sequence: (B, T, V) logits, (B, T) labels
            valid = target != IGNORE_INDEX
            per = self.per_example(output.flatten(0, 1), target.clamp_min(0).flatten()).view(target.shape)
            return reduce_tokens(per, valid, self.average)
        return self.per_example(output, target).mean()
