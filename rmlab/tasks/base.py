"""The Task base class: everything a dataset needs besides its raw arrays.

A subclass sets ``kind`` (classification or regression) and implements ``_raw() -> (X, y)``; this module owns the
validation of the common parameters, the deterministic train/val/test split, z-scoring with train statistics, and
applying the corruptions of ``rmlab.tasks.corruption``. Plain Python + torch on purpose: the Lightning wrapper lives
elsewhere, so building a task (and checking a config) stays cheap; sklearn is imported only when data is loaded.
"""

import math
import numbers
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from rmlab import kinds
from rmlab.errors import ConfigError
from rmlab.tasks import corruption
from rmlab.tasks.corruption import NOISE_TYPES

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASK_KINDS = (CLASSIFICATION, REGRESSION)


@dataclass(frozen=True)
class Split:
    """One split: ``x`` float32 (N, D); ``y`` int64 (N,) class indices, or float32 (N,) regression targets."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


# --- validation helpers, shared with the subclasses so every message has the same shape -------------------------


def check_bool(param: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"task.{param} must be true or false, got {value!r}")


def check_int(param: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"task.{param} must be an integer >= {minimum}, got {value!r}")


def check_real(
    param: str, value: Any, low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = True
) -> None:
    """Raise unless ``value`` is a real number in the interval (bounds open or closed as flagged; no high = none)."""
    if high is None:
        valid = f"{'>' if low_open else '>='} {low:g}"
    else:
        valid = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(f"task.{param} must be {valid}, got {value!r}")


def check_choice(param: str, value: Any, choices: Collection[str]) -> None:
    if value not in choices:
        raise ConfigError(f"task.{param} must be one of {', '.join(choices)}, got {value!r}")


def _round(x: float) -> int:
    return math.floor(x + 0.5)  # half up: Python's round() would give 0.5 -> 0


def _zscore_stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = a.mean(axis=0), a.std(axis=0)
    # A constant column (std 0, or float dust around 0) is centred and left unscaled instead of dividing by ~0.
    std = np.where(std > 1e-12 * (1.0 + np.abs(mean)), std, 1.0)
    return mean, std


def _can_stratify(labels: np.ndarray, n_held_out: int) -> bool:
    """A stratified split needs >= 2 members per class and at least one slot per class on both sides."""
    counts = np.unique(labels, return_counts=True)[1]
    return counts.min() >= 2 and n_held_out >= len(counts) and len(labels) - n_held_out >= len(counts)


class Task:
    """A dataset with its deterministic train/val/test splits, standardisation and corruption.

    Subclasses set ``kind`` (class attribute, or in their ``__init__`` *before* calling ``super().__init__``, which
    checks the corruption knobs against it), ``default_name``, and implement ``_raw``.

    Randomness: ``split_seed`` seeds one ``SeedSequence`` whose independent children drive the split, the train
    corruption and the val corruption, so changing ``label_noise`` or ``corrupt_val`` never moves a sample between
    splits, and turning ``corrupt_val`` off leaves the train labels exactly as they were.
    """

    kind: str
    default_name: str = "task"
    # The kinds this class's ``_build`` handles; a subclass with its own pipeline (pairs) widens it.
    supported_kinds: ClassVar[tuple[str, ...]] = TASK_KINDS

    def __init__(
        self,
        *,
        name: str | None = None,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        standardize: bool = True,
        standardize_target: bool = True,
        label_noise: float = 0.0,
        noise_type: str = "symmetric",
        corrupt_val: bool = True,
        outlier_fraction: float = 0.0,
        outlier_scale: float = 10.0,
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(f"task.name must be a non-empty string or null, got {name!r}")
        check_int("batch_size", batch_size, 1)
        check_real("val_fraction", val_fraction, 0, 1, low_open=True)
        check_real("test_fraction", test_fraction, 0, 1, low_open=True)
        if val_fraction + test_fraction >= 1:
            raise ConfigError(
                f"task.val_fraction + task.test_fraction must be < 1 (train keeps the rest), got "
                f"{val_fraction} + {test_fraction} = {val_fraction + test_fraction:g}"
            )
        check_int("split_seed", split_seed, 0)
        check_bool("standardize", standardize)
        check_bool("standardize_target", standardize_target)
        check_real("label_noise", label_noise, 0, 1)
        check_choice("noise_type", noise_type, NOISE_TYPES)
        check_bool("corrupt_val", corrupt_val)
        check_real("outlier_fraction", outlier_fraction, 0, 1)
        check_real("outlier_scale", outlier_scale, 0, low_open=True)
        check_choice("kind", self.kind, self.supported_kinds)
        # Each corruption belongs to one kind of target; a knob that would silently do nothing is an error instead.
        if self.kind == REGRESSION and label_noise > 0:
            raise ConfigError(
                f"task.label_noise must be 0 on a regression task, got {label_noise}; corrupt regression targets "
                f"with task.outlier_fraction (and task.outlier_scale) instead"
            )
        if self.kind == CLASSIFICATION and outlier_fraction > 0:
            raise ConfigError(
                f"task.outlier_fraction must be 0 on a classification task, got {outlier_fraction}; corrupt class "
                f"labels with task.label_noise (and task.noise_type) instead"
            )
        if self.kind == CLASSIFICATION and not standardize_target:
            raise ConfigError("task.standardize_target applies to regression targets only; leave it true here")

        self.name = name if name is not None else self.default_name
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.standardize = standardize
        self.standardize_target = standardize_target
        self.label_noise = label_noise
        self.noise_type = noise_type
        self.corrupt_val = corrupt_val
        self.outlier_fraction = outlier_fraction
        self.outlier_scale = outlier_scale
        self._splits: dict[str, Split] | None = None
        self._info: kinds.TaskInfo | None = None

    # --- what a subclass provides ------------------------------------------------------------------------------

    def _raw(self) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        """The whole dataset: X (N, D) numeric; y (N,) ints in 0..C-1 (classification) or floats (regression)."""
        raise NotImplementedError

    def _dataset_noise(self, y: np.ndarray) -> np.ndarray | None:
        """Labels with the noise that is part of the dataset itself (``synthetic_classification.flip_y``), or None.
        Like every corruption they replace the train labels (and val with ``corrupt_val``), never the test labels."""
        return None

    def _error(self, message: str) -> ConfigError:
        """The exception for a problem with the data itself; file tasks name their file (DataError)."""
        return ConfigError(f"task {self.name}: {message}")

    # --- public API ----------------------------------------------------------------------------------------------

    def split_sizes(self, n: int) -> tuple[int, int, int]:
        """(train, val, test) sizes for ``n`` rows; raises if any split would be empty."""
        n_val, n_test = _round(n * self.val_fraction), _round(n * self.test_fraction)
        n_train = n - n_val - n_test
        if min(n_train, n_val, n_test) < 1:
            raise self._error(
                f"too few rows to split: {n} rows give train/val/test sizes {n_train}/{n_val}/{n_test} with "
                f"val_fraction={self.val_fraction}, test_fraction={self.test_fraction}; every split needs a row"
            )
        return n_train, n_val, n_test

    @property
    def info(self) -> kinds.TaskInfo:
        """Name, output kind, input dimension and class count (loads the data on first use)."""
        if self._info is None:
            self.load()
        assert self._info is not None
        return self._info

    def load(self) -> dict[str, Split]:
        """The ``train``/``val``/``test`` splits: deterministic given ``split_seed``, computed once and cached."""
        if self._splits is None:
            self._splits = self._build()
        return self._splits

    # --- the pipeline: split, standardise (train statistics), corrupt -------------------------------------------

    def _build(self) -> dict[str, Split]:
        from sklearn.model_selection import train_test_split

        x, y = self._raw()
        x = np.asarray(x, dtype=np.float64)
        classification = self.kind == CLASSIFICATION
        y = np.asarray(y, dtype=np.int64 if classification else np.float64)
        noisy = self._dataset_noise(y)
        _, n_val, n_test = self.split_sizes(len(y))
        num_classes = None
        if classification:
            num_classes = int(y.max()) + 1
            if len(np.unique(y)) < 2:
                raise self._error("the target has a single class; classification needs at least 2")

        split_seq, train_seq, val_seq = np.random.SeedSequence(self.split_seed).spawn(3)
        seed_test, seed_val = (int(s) for s in np.random.default_rng(split_seq).integers(2**31 - 1, size=2))
        # Stratify (keeps class proportions equal across splits, which matters on small or imbalanced data) unless a
        # class is too small to appear on both sides.
        strat = classification and _can_stratify(y, n_test)
        rest, test = train_test_split(
            np.arange(len(y)), test_size=n_test, random_state=seed_test, stratify=y if strat else None
        )
        strat = classification and _can_stratify(y[rest], n_val)
        train, val = train_test_split(rest, test_size=n_val, random_state=seed_val, stratify=y[rest] if strat else None)
        xs = {"train": x[train], "val": x[val], "test": x[test]}
        ys = {"train": y[train], "val": y[val], "test": y[test]}

        if self.standardize:
            mean, std = _zscore_stats(xs["train"])
            xs = {k: (v - mean) / std for k, v in xs.items()}
        target_std = 1.0  # of the clean train targets, in the units the model sees: outliers are scaled by it
        if not classification:
            mean, std = _zscore_stats(ys["train"])
            if self.standardize_target:
                # Targets on a common scale make loss hyperparameters (a Huber delta of 1) mean the same on every
                # dataset. Fitted on the *clean* train targets, so the scale stays the same at every outlier level.
                ys = {k: (v - mean) / std for k, v in ys.items()}
            else:
                target_std = float(std)

        corrupted = ("train", "val") if self.corrupt_val else ("train",)  # test labels always stay clean
        if noisy is not None:
            noisy = np.asarray(noisy, dtype=y.dtype)
            for split, rows in (("train", train), ("val", val)):
                if split in corrupted:
                    ys[split] = noisy[rows]
        rngs = {"train": np.random.default_rng(train_seq), "val": np.random.default_rng(val_seq)}
        for split in corrupted:
            if classification and self.label_noise > 0:
                ys[split] = corruption.flip_labels(
                    ys[split], num_classes, self.label_noise, self.noise_type, rngs[split]
                )
            if not classification and self.outlier_fraction > 0:
                std = self.outlier_scale * target_std
                ys[split] = corruption.add_outliers(ys[split], self.outlier_fraction, std, rngs[split])

        y_dtype = torch.int64 if classification else torch.float32
        splits = {
            k: Split(
                x=torch.as_tensor(xs[k], dtype=torch.float32).contiguous(),
                y=torch.as_tensor(ys[k], dtype=y_dtype).contiguous(),
            )
            for k in ("train", "val", "test")
        }
        self._info = kinds.TaskInfo(
            name=self.name,
            output_kind=kinds.LOGITS if classification else kinds.VALUE,
            input_dim=x.shape[1],
            num_classes=num_classes,
        )
        return splits
