"""Output kinds: the contract between a task, its model head, and the losses and rewards it can be paired with.

- ``logits``: (B, C) unnormalised class scores; targets are int64 class indices (B,).
- ``value``:  (B,) one real prediction per sample; targets are float (B,).
- ``pair``:   (B, 2) scalar scores of (chosen, rejected); targets are float (B, 2) holding the items' hidden true
  rewards where the task knows them (NaN otherwise).

Input types: ``features`` (float (B, D), or (B, 2, D) for pairs) or ``tokens`` (int64 token ids (B, L), or
(B, 2, L) for pairs) which only a text model accepts.
"""

from dataclasses import dataclass

LOGITS = "logits"
VALUE = "value"
PAIR = "pair"
ALL_KINDS = (LOGITS, VALUE, PAIR)
FEATURES = "features"
TOKENS = "tokens"


@dataclass(frozen=True)
class TaskInfo:
    """What a task tells the rest of the run: what its model outputs and how big its inputs are."""

    name: str
    output_kind: str
    input_dim: int
    num_classes: int | None = None  # classification only
    input_type: str = FEATURES  # what the model is fed: FEATURES or TOKENS (input_dim is then the sequence length)
    true_reward: bool = False  # pair tasks: targets hold each item's hidden true reward (synthetic tasks)
