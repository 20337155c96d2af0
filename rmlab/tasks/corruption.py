"""Corruptions a study applies to its training data: class-label noise and regression outliers.

Pure functions: they take the labels/targets and a ``numpy.random.Generator`` and return a corrupted copy (of the
same type, numpy array or torch tensor), so a test can measure their rates directly and a task decides where they
apply (train, and val when ``corrupt_val``; never test).
"""

import math

import numpy as np
import torch

from rmlab.errors import ConfigError

NOISE_TYPES = ("symmetric", "asymmetric")

ArrayLike = np.ndarray | torch.Tensor


def _as_numpy(a: ArrayLike) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _like(out: np.ndarray, like: ArrayLike) -> ArrayLike:
    if isinstance(like, torch.Tensor):
        return torch.from_numpy(out).to(device=like.device, dtype=like.dtype)
    return out.astype(np.asarray(like).dtype, copy=False)


def flip_labels(
    y: ArrayLike, num_classes: int, rate: float, noise_type: str, rng: np.random.Generator
) -> ArrayLike:
    """Return a copy of class labels ``y`` (ints in [0, num_classes)) with each label flipped with probability ``rate``.

    ``symmetric``: a flipped label becomes a uniformly random *different* class (so the observed flip rate is ``rate``,
    not ``rate * (C - 1) / C`` as with "replace by any class"). ``asymmetric``: class-conditional pair flip
    ``y -> (y + 1) mod C``, the standard structured-noise benchmark (one confusable neighbour per class).
    """
    if noise_type not in NOISE_TYPES:
        raise ConfigError(f"noise_type must be one of {', '.join(NOISE_TYPES)}, got {noise_type!r}")
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"label noise rate must be in [0, 1], got {rate!r}")
    if num_classes < 2:
        raise ConfigError(f"label noise needs at least 2 classes, got num_classes={num_classes}")
    labels = _as_numpy(y).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(f"labels must be in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]")
    n = labels.shape[0]
    flip = rng.random(n) < rate
    # A shift in 1..C-1 is uniform over the other classes; drawn for every label so the stream does not depend on
    # which labels flipped.
    shift = rng.integers(1, num_classes, size=n) if noise_type == "symmetric" else np.ones(n, dtype=np.int64)
    out = np.where(flip, (labels + shift) % num_classes, labels)
    return _like(out, y)


def add_outliers(y: ArrayLike, fraction: float, std: float, rng: np.random.Generator) -> ArrayLike:
    """Return a copy of regression targets ``y`` where ``round(fraction * N)`` of them, chosen uniformly without
    replacement, get added Gaussian noise of standard deviation ``std`` (a task passes ``outlier_scale`` times the
    target's std, so the knob means the same on every dataset)."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"outlier fraction must be in [0, 1], got {fraction!r}")
    if not std >= 0.0:
        raise ConfigError(f"outlier std must be >= 0, got {std!r}")
    out = _as_numpy(y).astype(np.float64)  # a copy: the caller's targets stay clean
    n = out.shape[0]
    k = math.floor(fraction * n + 0.5)  # round half up, unlike Python's banker's round()
    idx = rng.choice(n, size=k, replace=False)
    out[idx] += rng.normal(0.0, std, size=k)
    return _like(out, y)
