"""What a sequence run logs beside its reward, per sample: each term of a combined reward (``{split}/<label>``) and,
on a task with a hidden true reward, the gold reward of the same completions (``{split}/gold_reward``): the number
a learned reward is a proxy for. Evaluation and policy feedback both call ``score_with_extras``, so the reward is
computed once and the extras beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rmlab.kinds import TaskInfo
from rmlab.sequence import TextExample

GOLD = "gold_reward"


def extra_names(reward: Any, info: TaskInfo) -> tuple[str, ...]:
    """The names ``score_with_extras`` returns extras under, in a fixed order."""
    return tuple(getattr(reward, "term_names", ())) + ((GOLD,) if info.gold is not None else ())


def score_with_extras(reward: Any, info: TaskInfo, completions: Sequence[str],
                      examples: Sequence[TextExample]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reward of each completion (float32 (B,)) and the extras named by ``extra_names``, each float32 (B,)."""
    if hasattr(reward, "score_with_terms"):
        score, extras = reward.score_with_terms(completions, examples)
    else:
        score, extras = reward.score(completions, examples), {}
    extras = dict(extras)
    if info.gold is not None:
        extras[GOLD] = torch.tensor([info.gold(c, e) for c, e in zip(completions, examples)], dtype=torch.float32)
    return score, extras
