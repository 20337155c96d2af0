"""The user's own table: a CSV or Parquet file with a target column (the ``csv`` task).

Everything that can be wrong with a file is reported as a ``DataError`` naming the file and what to fix, before
training starts: the path and columns at construction, the values when the data is loaded (a column name used twice,
a missing or non-numeric value, a number too large for a float).
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rmlab.errors import ConfigError, DataError
from rmlab.tasks.base import CLASSIFICATION, TASK_KINDS, Task, check_choice

EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _too_large(value: Any) -> bool:
    try:
        float(value)
    except OverflowError:
        return True
    except (TypeError, ValueError):
        return False
    return False


def check_user_file(resolved: Path, given: Any, extensions: dict[str, str]) -> None:
    """Raise DataError (naming the file) unless ``resolved`` is an existing file with one of ``extensions``."""
    if resolved.suffix.lower() not in extensions:
        raise DataError(f"{resolved}: unknown file extension {resolved.suffix!r}; valid: {', '.join(extensions)}")
    if not resolved.is_file():
        where = "not a file" if resolved.exists() else "file not found"
        raise DataError(f"{resolved}: {where} (task.path={str(given)!r}; relative paths resolve against {Path.cwd()})")


def duplicate_columns(path: Path) -> list[str]:
    """Column names that appear more than once in a CSV file's header. pandas renames them (``a``, ``a.1``) without
    a word, which would train on a column the user never named: the file tasks refuse such a file instead."""
    import csv

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        header = next(csv.reader(f), [])
    seen: set[str] = set()
    return list(dict.fromkeys(name for name in header if name in seen or seen.add(name)))


def check_unique_columns(path: Path, fmt: str, error) -> None:
    """Raise ``error(message)`` naming the repeated columns of a CSV file."""
    if fmt != "csv":
        return
    try:
        repeated = duplicate_columns(path)
    except OSError:
        return  # reading the file reports it
    if repeated:
        raise error(f"column name(s) {', '.join(map(repr, repeated))} appear more than once in the header; "
                    "give every column its own name")


class FileTask(Task):
    """Rows of ``path``: ``target`` is the label (classification, any type: mapped to 0..C-1 in sorted order, see
    ``classes``) or the value (regression); ``features`` (default: every other column) must be numeric."""

    def __init__(
        self,
        *,
        path: str,
        target: str,
        features: Sequence[str] | None = None,
        kind: str = CLASSIFICATION,
        **common: Any,
    ) -> None:
        if not isinstance(path, str | Path) or not str(path):
            raise ConfigError(f"task.path must be a file path, got {path!r}")
        if not isinstance(target, str) or not target:
            raise ConfigError(f"task.target must be a column name, got {target!r}")
        if features is not None:
            # Any sequence of names: Hydra passes a ListConfig, not a list.
            if isinstance(features, str) or not all(isinstance(f, str) for f in features) or not len(features):
                raise ConfigError(f"task.features must be null or a non-empty list of column names, got {features!r}")
            features = list(features)
            if target in features:
                raise ConfigError(f"task.features must not contain the target column {target!r}")
            if len(set(features)) != len(features):
                raise ConfigError(f"task.features lists a column twice: {features}")
        check_choice("kind", kind, TASK_KINDS)
        self.kind = kind
        # Resolved now, so a later change of directory cannot change which file is read.
        self.path = Path(path).expanduser().absolute()
        self.default_name = self.path.stem
        self.target = target
        self.features = features
        self.classes: list[Any] | None = None  # original label of each class index, once loaded
        super().__init__(**common)
        check_user_file(self.path, path, EXTENSIONS)

    def _error(self, message: str) -> DataError:
        return DataError(f"{self.path}: {message}")

    def _read(self) -> "Any":
        import pandas as pd

        fmt = EXTENSIONS[self.path.suffix.lower()]
        check_unique_columns(self.path, fmt, self._error)
        try:
            df = pd.read_csv(self.path) if fmt == "csv" else pd.read_parquet(self.path)
        except pd.errors.EmptyDataError:
            raise self._error("the file is empty") from None
        except (ValueError, OSError, UnicodeDecodeError) as e:  # parser errors, pyarrow's ArrowInvalid, ...
            raise self._error(f"could not be read as {fmt}: {e}") from e
        df.columns = [str(c) for c in df.columns]  # names from YAML are strings; Parquet may use ints
        if len(df) == 0:
            raise self._error(f"the file has no rows (columns: {', '.join(df.columns)})")
        return df

    def _numeric(self, df: "Any", column: str, role: str) -> np.ndarray:
        """The column as float64, or a DataError naming the column and an offending value."""
        import pandas as pd

        s = df[column]
        missing = int(s.isna().sum())
        if missing:
            raise self._error(
                f"{role} column {column!r} has {missing} missing values (NaN or empty); fill or drop them"
            )
        if pd.api.types.is_bool_dtype(s):
            return s.to_numpy(dtype=np.float64)
        try:
            num = pd.to_numeric(s, errors="coerce")
        except OverflowError:  # an integer too large for a float (pandas keeps such a column as Python ints)
            row = next(i for i, v in enumerate(s) if _too_large(v))
            raise self._error(
                f"{role} column {column!r} holds a number too large for a float in data row {row + 1} "
                f"({str(s.iloc[row])[:20]}..., {len(str(s.iloc[row]))} characters)"
            ) from None
        bad = num.isna().to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise self._error(
                f"{role} column {column!r} has {int(bad.sum())} non-numeric values, e.g. {s.iloc[row]!r} in data row "
                f"{row + 1}; encode it as numbers or leave it out of task.features"
            )
        values = num.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise self._error(f"{role} column {column!r} has {int((~np.isfinite(values)).sum())} infinite values")
        return values

    def _raw(self) -> tuple[np.ndarray, np.ndarray]:
        df = self._read()
        available = f"available columns: {', '.join(df.columns)}"
        if self.target not in df.columns:
            raise self._error(f"target column {self.target!r} not found; {available}")
        features = self.features if self.features is not None else [c for c in df.columns if c != self.target]
        absent = [c for c in features if c not in df.columns]
        if absent:
            raise self._error(f"feature column(s) {', '.join(map(repr, absent))} not found; {available}")
        if not features:
            raise self._error(f"no feature columns: the file has only the target column {self.target!r}")
        x = np.stack([self._numeric(df, c, "feature") for c in features], axis=1)

        if self.kind != CLASSIFICATION:
            return x, self._numeric(df, self.target, "target")
        labels = df[self.target]
        missing = int(labels.isna().sum())
        if missing:
            raise self._error(f"target column {self.target!r} has {missing} missing values (NaN or empty)")
        values = labels.to_numpy()
        try:
            classes, y = np.unique(values, return_inverse=True)
        except TypeError:  # mixed types (numbers and strings) have no order; compare them as text
            classes, y = np.unique(values.astype(str), return_inverse=True)
        if len(classes) < 2:
            raise self._error(
                f"target column {self.target!r} has a single class ({classes[0]!r}); classification needs at least 2"
            )
        self.classes = [c.item() if isinstance(c, np.generic) else c for c in classes]
        return x, y
