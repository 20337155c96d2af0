"""Output kinds: the contract between a task, its model head, and the losses and rewards it can be paired with.

- ``logits``: (B, C) unnormalised class scores; targets are int64 class indices (B,).
- ``value``:  (B,) one real prediction per sample; targets are float (B,).
- ``pair``:   (B, 2) scalar scores of (chosen, rejected); targets are float (B, 2) holding the items' hidden true
  rewards where the task knows them (NaN otherwise).
- ``sequence``: (B, T, V) next-token logits of a language model over prompt + completion token ids; targets are int64
  (B, T) labels, ``labels[b, t]`` the id that position ``t`` must predict where that id is a completion token (EOS
  included), ``IGNORE_INDEX`` on prompt and padding positions (``rmlab.sequence`` holds the whole contract).
- ``sequence_pair``: a language model on preference pairs (prompt, chosen completion, rejected completion). The output
  is ``rmlab.losses.preference_lm.PairLogps``: the policy's summed log-probs of the chosen and rejected completions
  and their token counts, each (B,), from its logits over the batch ``[chosen rows; rejected rows]``
  (``pair_logps``); the target is the frozen reference policy's ``PairLogps`` of the same pairs (computed once per
  dataset and cached), or None for a reference-free loss (``needs_reference = False``). The tasks
  (``rmlab.tasks.sequence_preference``) yield ``rmlab.sequence_pairs.PairExample``; evaluation generates from the
  prompts and scores with the ``sequence`` kind's text rewards, against the chosen completion.

Input types: ``features`` (float (B, D), or (B, 2, D) for pairs), ``tokens`` (int64 token ids (B, L), or
(B, 2, L) for pairs) which only a text model accepts, or ``text`` (prompts and completions as strings, tokenised by
the language model's own tokenizer) which only a language model accepts.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LOGITS = "logits"
VALUE = "value"
PAIR = "pair"
SEQUENCE = "sequence"
SEQUENCE_PAIR = "sequence_pair"
ALL_KINDS = (LOGITS, VALUE, PAIR, SEQUENCE, SEQUENCE_PAIR)
FEATURES = "features"
TOKENS = "tokens"
TEXT = "text"


@dataclass(frozen=True)
class TaskInfo:
    """What a task tells the rest of the run: what its model outputs and how big its inputs are."""

    name: str
    output_kind: str
    input_dim: int
    num_classes: int | None = None  # classification only
    input_type: str = FEATURES  # what the model is fed: FEATURES or TOKENS (input_dim is then the sequence length)
    true_reward: bool = False  # pair tasks: targets hold each item's hidden true reward (synthetic tasks)
    # Sequence tasks: the label set of a text classification task (the completion is one of these strings), and
    # the task's own answer checker ``verifier(completion, example) -> float`` in [0, 1] where it has one
    # (``rmlab.sequence.Verifier``).
    labels: tuple[str, ...] | None = None
    verifier: Callable[[str, Any], float] | None = None
    # Sequence tasks with a hidden true reward (the known-reward tasks): ``gold(completion, example) -> float``, any
    # real range, higher is better. A run logs it as ``{split}/gold_reward`` beside whatever reward it uses.
    gold: Callable[[str, Any], float] | None = None
