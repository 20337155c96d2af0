"""The ``generation`` config group: how sequence tasks are evaluated (``rmlab.generation`` generates with it).

Plain Python, no torch: ``rmlab.validate`` checks these settings before anything heavy is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from rmlab.errors import check


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


@dataclass(frozen=True)
class GenerationConfig:
    """The ``generation`` config group: how sequence tasks are evaluated (every key validated here).

    ``max_new_tokens`` >= 1; ``do_sample`` false (greedy) or true (sample with ``temperature`` > 0, ``top_k`` >= 0
    (0: off), ``top_p`` in (0, 1], which only apply when sampling); ``seed`` seeds the sampling at every evaluation
    (the same draws each time, so evaluations compare); ``batch_size`` prompts per generation batch (also the
    teacher-forced evaluation batch); ``log_samples`` rows of the sample table logged per evaluation (0: none).
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 64
    log_samples: int = 8

    def __post_init__(self) -> None:
        check(_count(self.max_new_tokens, 1),
              f"generation.max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        check(isinstance(self.do_sample, bool), f"generation.do_sample must be true or false, got {self.do_sample!r}")
        check(_number(self.temperature) and self.temperature > 0,
              f"generation.temperature must be a number > 0, got {self.temperature!r}")
        check(_count(self.top_k, 0), f"generation.top_k must be an integer >= 0 (0: off), got {self.top_k!r}")
        check(_number(self.top_p) and 0 < self.top_p <= 1,
              f"generation.top_p must be in (0, 1], got {self.top_p!r}")
        check(_count(self.seed, 0), f"generation.seed must be an integer >= 0, got {self.seed!r}")
        check(_count(self.batch_size, 1), f"generation.batch_size must be an integer >= 1, got {self.batch_size!r}")
        check(_count(self.log_samples, 0),
              f"generation.log_samples must be an integer >= 0, got {self.log_samples!r}")
        if not self.do_sample:
            changed = [f"{name}={getattr(self, name)}" for name, default in (("temperature", 1.0), ("top_k", 0),
                                                                           ("top_p", 1.0))
                       if getattr(self, name) != default]
            check(not changed, f"generation.{', generation.'.join(changed)} only apply when sampling: set "
                               "generation.do_sample=true (or use generation=sample), or leave them at their defaults")

    @classmethod
    def from_config(cls, node: dict[str, Any]) -> GenerationConfig:
        """Build from the composed ``generation`` group (its ``name`` key aside); an unknown key is an error."""
        node = {k: v for k, v in node.items() if k != "name"}
        valid = [f.name for f in fields(cls)]
        unknown = sorted(k for k in node if k not in valid)
        check(not unknown, f"generation has no option {', '.join(unknown)}; its options are: {', '.join(valid)}")
        return cls(**node)

    def sampling(self) -> dict[str, Any]:
        """The keyword arguments of ``generate`` these settings give."""
        return {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample, "temperature": self.temperature,
                "top_k": self.top_k, "top_p": self.top_p}
