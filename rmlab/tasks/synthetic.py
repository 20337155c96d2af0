"""Synthetic tasks from scikit-learn's generators, for controlled studies: ``synthetic_classification``
(``make_classification``; ``class_sep`` is the difficulty knob) and ``synthetic_regression`` (``make_regression``).

``data_seed`` fixes the generated dataset (and which rows ``flip_y`` flips); ``split_seed`` (the run's seed) only
changes the split and the corruption, so runs with different seeds study the same data. ``flip_y`` corrupts train
(and with ``corrupt_val`` val) labels only, as every corruption knob does; test labels stay clean.
"""

from typing import Any

import numpy as np

from rmlab.errors import ConfigError
from rmlab.tasks.base import CLASSIFICATION, REGRESSION, Task, check_int, check_real


def _check_shape(n_samples: int, n_features: int, n_informative: int, data_seed: int) -> None:
    check_int("n_samples", n_samples, 1)
    check_int("n_features", n_features, 1)
    check_int("n_informative", n_informative, 1)
    if n_informative > n_features:
        raise ConfigError(f"task.n_informative must be <= task.n_features ({n_features}), got {n_informative}")
    check_int("data_seed", data_seed, 0)


class SyntheticClassification(Task):
    """Gaussian clusters per class on ``n_informative`` dimensions; the other features are pure noise."""

    kind = CLASSIFICATION
    default_name = "synthetic_classification"

    def __init__(
        self,
        *,
        n_samples: int = 2000,
        n_features: int = 20,
        n_informative: int = 10,
        n_classes: int = 4,
        class_sep: float = 1.0,
        flip_y: float = 0.0,
        data_seed: int = 0,
        **common: Any,
    ) -> None:
        _check_shape(n_samples, n_features, n_informative, data_seed)
        check_int("n_classes", n_classes, 2)
        # make_classification puts 2 clusters per class on the vertices of an n_informative-dimensional hypercube.
        if 2 * n_classes > 2**n_informative:
            raise ConfigError(
                f"task.n_classes={n_classes} needs task.n_informative >= {int(np.ceil(np.log2(2 * n_classes)))} "
                f"(2 clusters per class on a hypercube of 2**n_informative vertices), got {n_informative}"
            )
        check_real("class_sep", class_sep, 0)
        check_real("flip_y", flip_y, 0, 1)
        self.n_samples, self.n_features, self.n_informative = n_samples, n_features, n_informative
        self.n_classes, self.class_sep, self.flip_y, self.data_seed = n_classes, class_sep, flip_y, data_seed
        super().__init__(**common)
        self.split_sizes(n_samples)  # fail now, not at load time, if n_samples cannot be split

    def _raw(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import make_classification

        return make_classification(
            n_samples=self.n_samples,
            n_features=self.n_features,
            n_informative=self.n_informative,
            n_redundant=0,  # so n_features - n_informative is exactly the number of noise features
            n_repeated=0,
            n_classes=self.n_classes,
            class_sep=self.class_sep,
            flip_y=0.0,  # flipped by _dataset_noise instead, so that test labels stay clean
            random_state=self.data_seed,
        )

    def _dataset_noise(self, y: np.ndarray) -> np.ndarray | None:
        """scikit-learn's ``flip_y``: each label is replaced, with probability ``flip_y``, by a class drawn uniformly
        from all classes (possibly its own). Drawn from ``data_seed`` over the whole dataset, so the noisy rows are
        part of the data (the same at every seed), but applied only to the train (and with ``corrupt_val`` val)
        labels: scikit-learn would flip test labels too."""
        if self.flip_y == 0:
            return None
        rng = np.random.default_rng(np.random.SeedSequence([self.data_seed, 1]))
        flip = rng.random(len(y)) < self.flip_y
        return np.where(flip, rng.integers(0, self.n_classes, size=len(y)), y)


class SyntheticRegression(Task):
    """A random linear model on ``n_informative`` of ``n_features`` Gaussian features, plus Gaussian noise."""

    kind = REGRESSION
    default_name = "synthetic_regression"

    def __init__(
        self,
        *,
        n_samples: int = 2000,
        n_features: int = 20,
        n_informative: int = 10,
        noise: float = 10.0,
        data_seed: int = 0,
        **common: Any,
    ) -> None:
        _check_shape(n_samples, n_features, n_informative, data_seed)
        check_real("noise", noise, 0)
        self.n_samples, self.n_features, self.n_informative = n_samples, n_features, n_informative
        self.noise, self.data_seed = noise, data_seed
        super().__init__(**common)
        self.split_sizes(n_samples)

    def _raw(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import make_regression

        return make_regression(
            n_samples=self.n_samples,
            n_features=self.n_features,
            n_informative=self.n_informative,
            noise=self.noise,
            random_state=self.data_seed,
        )
