"""Validation of the policy-optimisation config keys: each check raises ``ConfigError`` naming ``feedback.<key>``, the
value and what is allowed, before anything runs."""

from __future__ import annotations

import math
from typing import Any

from rmlab.errors import ConfigError
from rmlab.policy.kl import ESTIMATORS

KL_PLACES = ("reward", "loss")


def real(key: str, value: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False,
         high_open: bool = False) -> float:
    """A finite number in the range; bools are not numbers."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(f"feedback.{key} must be a finite number{_range(low, high, low_open, high_open)}, "
                          f"got {value!r}")
    return float(value)


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def integer(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"feedback.{key} must be an integer >= {low}, got {value!r}")
    return value


def choice(key: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ConfigError(f"feedback.{key} must be one of {', '.join(options)}, got {value!r}")
    return value


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"feedback.{key} must be true or false, got {value!r}")
    return value


def weights(loss_weight: Any, feedback_weight: Any) -> tuple[float, float]:
    """``loss_weight`` (the task's cross entropy) and ``feedback_weight`` (the policy loss): >= 0, not both 0."""
    lw, fw = real("loss_weight", loss_weight, 0.0), real("feedback_weight", feedback_weight, 0.0)
    if lw == 0 and fw == 0:
        raise ConfigError("feedback.loss_weight and feedback.feedback_weight are both 0: nothing would be trained; "
                          "set at least one > 0")
    return lw, fw


def sampling(temperature: Any, top_k: Any, top_p: Any, max_new_tokens: Any) -> dict[str, Any]:
    """How training completions are sampled; the policy's log-probs use the same ``temperature``."""
    return {
        "temperature": real("temperature", temperature, 0.0, low_open=True),
        "top_k": integer("top_k", top_k, 0),
        "top_p": real("top_p", top_p, 0.0, 1.0, low_open=True),
        "max_new_tokens": integer("max_new_tokens", max_new_tokens, 1),
    }


def kl_penalty(beta: Any, kl_estimator: Any, kl_in: Any) -> tuple[float, str, str]:
    return (real("beta", beta, 0.0), choice("kl_estimator", kl_estimator, ESTIMATORS),
            choice("kl_in", kl_in, KL_PLACES))
