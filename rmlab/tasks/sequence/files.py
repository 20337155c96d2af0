"""The user's own text data: ``completion_file`` (a prompt and a completion per row, the shape of public SFT sets)
and ``text_classification_file`` (a text and a label per row).

Files are JSON lines (``.jsonl``, ``.json``: one object per line), CSV or Parquet. Every problem with a file is a
``DataError`` naming the file and what to fix: the path and extension at construction (``check_user_file``, as the
other file tasks), the rows when the data is loaded, each message naming the column and the first bad row (``line N``
of a JSON lines file, ``data row N`` of a table). Splits are grouped by prompt, as every sequence task's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rmlab.errors import ConfigError, DataError
from rmlab.sequence import TextExample
from rmlab.tasks.files import check_unique_columns, check_user_file
from rmlab.tasks.sequence.base import SequenceTask
from rmlab.tasks.sequence.labels import LabelledTask

EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
Rows = tuple[list[str], dict[str, list[Any]], list[str]]  # column names, column -> values, where each row is
TEXT_PLACEHOLDER = "{text}"


def read_rows(path: Path, error: Callable[[str], DataError]) -> Rows:
    """The file's columns and rows, with each row's place in the file, for every supported format."""
    fmt = EXTENSIONS[path.suffix.lower()]
    names, data, where = _read_jsonl(path, error) if fmt == "jsonl" else _read_table(path, fmt, error)
    if not where:
        raise error(f"the file has no rows (columns: {', '.join(names)})" if names else "the file is empty")
    return names, data, where


def _read_jsonl(path: Path, error: Callable[[str], DataError]) -> Rows:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise error(f"is not UTF-8 text: {e}") from None
    records, where = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline, spacing) carry no row
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            hint = " (a JSON array is not supported: write one object per line)" if line.lstrip()[:1] == "[" else ""
            raise error(f"line {number} is not valid JSON: {e.msg} at column {e.colno}{hint}") from None
        if not isinstance(record, dict):
            hint = " (a JSON array is not supported: write one object per line)" if isinstance(record, list) else ""
            raise error(f"line {number} must be a JSON object {{...}}, got {type(record).__name__}{hint}")
        records.append(record)
        where.append(f"line {number}")
    names = list(dict.fromkeys(k for record in records for k in record))
    return names, {c: [record.get(c) for record in records] for c in names}, where


def _read_table(path: Path, fmt: str, error: Callable[[str], DataError]) -> Rows:
    import pandas as pd

    check_unique_columns(path, fmt, error)  # pandas would rename a repeated column (a, a.1) without a word
    try:
        # Every CSV cell as text, and an empty cell as "" (not NaN): "nan" or "123" are completions too.
        df = pd.read_csv(path, dtype=str, keep_default_na=False) if fmt == "csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise error("the file is empty") from None
    except (ValueError, OSError, UnicodeDecodeError) as e:  # parser errors, pyarrow's ArrowInvalid, ...
        raise error(f"could not be read as {fmt}: {e}") from e
    names = [str(c) for c in df.columns]
    df.columns = names
    return names, {c: df[c].tolist() for c in names}, [f"data row {i}" for i in range(1, len(df) + 1)]


def require_columns(rows: Rows, roles: dict[str, str], error: Callable[[str], DataError]) -> None:
    """Raise naming every ``role column 'name'`` the file lacks, and the columns it has."""
    names, data, _ = rows
    absent = [f"{role} column {column!r}" for role, column in roles.items() if column not in data]
    if absent:
        raise error(f"{', '.join(absent)} not found; available columns: {', '.join(names)}")


def text_values(rows: Rows, column: str, role: str, error: Callable[[str], DataError], *,
                numbers: bool = False) -> list[str]:
    """The column's values as non-blank strings (integers too where ``numbers``: labels such as 0/1), or a DataError
    naming the column and the first bad row."""
    _, data, where = rows
    out, empty = [], []
    for i, value in enumerate(data[column]):
        if numbers and isinstance(value, float) and value.is_integer():
            value = int(value)  # a Parquet integer column with a gap reads as floats
        if isinstance(value, str) or (numbers and isinstance(value, int) and not isinstance(value, bool)):
            value = str(value)
            if not value.strip():
                empty.append(i)
            out.append(value)
        elif value is None or (isinstance(value, float) and math.isnan(value)):
            empty.append(i)
        else:
            kind = "text or an integer" if numbers else "text"
            raise error(f"{role} column {column!r} holds {value!r} ({type(value).__name__}) in {where[i]}, not {kind}")
    if empty:
        raise error(f"{role} column {column!r} has {len(empty)} empty values (missing, blank or null), e.g. in "
                    f"{where[empty[0]]}")
    return out


def check_columns(**columns: Any) -> list[str]:
    """The column names a file task reads (``prompt_column="prompt", ...``), each a non-empty string, all different;
    a ConfigError naming the keys otherwise."""
    for param, value in columns.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"task.{param} must be a column name, got {value!r}")
    if len(set(columns.values())) != len(columns):
        keys = [f"task.{param}" for param in columns]
        raise ConfigError(f"{', '.join(keys[:-1])} and {keys[-1]} must differ, got "
                          f"{', '.join(repr(v) for v in columns.values())}")
    return list(columns.values())


def _resolve(path: Any) -> Path:
    if not isinstance(path, str | Path) or not str(path):
        raise ConfigError(f"task.path must be a file path, got {path!r}")
    # Resolved now, so a later change of directory cannot change which file is read.
    return Path(path).expanduser().absolute()


class CompletionFile(SequenceTask):
    """Rows of ``path`` with a prompt and the completion to learn for it (``prompt_column``, ``completion_column``).
    Texts are used as they are, whitespace included: the prompt should end where the completion starts."""

    def __init__(self, *, path: str, prompt_column: str = "prompt", completion_column: str = "completion",
                 **common: Any) -> None:
        self.path = _resolve(path)
        self.prompt_column, self.completion_column = check_columns(prompt_column=prompt_column,
                                                                   completion_column=completion_column)
        self.default_name = self.path.stem
        super().__init__(**common)
        check_user_file(self.path, path, EXTENSIONS)

    def _error(self, message: str) -> DataError:
        return DataError(f"{self.path}: {message}")

    def _examples(self) -> list[TextExample]:
        rows = read_rows(self.path, self._error)
        require_columns(rows, {"prompt": self.prompt_column, "completion": self.completion_column}, self._error)
        prompts = text_values(rows, self.prompt_column, "prompt", self._error)
        completions = text_values(rows, self.completion_column, "completion", self._error)
        return [TextExample(prompt=p, completion=c) for p, c in zip(prompts, completions)]


class TextClassificationFile(LabelledTask):
    """Rows of ``path`` with a text and its label (``text_column``, ``label_column``). The prompt is
    ``prompt_template`` with ``{text}`` replaced by the row's text; the completion is the label (text, or an integer
    written out), surrounding whitespace removed. The label set is every label of the file, sorted."""

    def __init__(self, *, path: str, text_column: str = "text", label_column: str = "label",
                 prompt_template: str = "{text}\nlabel: ", **common: Any) -> None:
        self.path = _resolve(path)
        self.text_column, self.label_column = check_columns(text_column=text_column, label_column=label_column)
        if not isinstance(prompt_template, str) or prompt_template.count(TEXT_PLACEHOLDER) != 1:
            raise ConfigError(f"task.prompt_template must be a string holding {TEXT_PLACEHOLDER} exactly once, got "
                              f"{prompt_template!r}")
        self.prompt_template = prompt_template
        self.default_name = self.path.stem
        super().__init__(**common)
        check_user_file(self.path, path, EXTENSIONS)

    def _error(self, message: str) -> DataError:
        return DataError(f"{self.path}: {message}")

    def _examples(self) -> list[TextExample]:
        rows = read_rows(self.path, self._error)
        require_columns(rows, {"text": self.text_column, "label": self.label_column}, self._error)
        texts = text_values(rows, self.text_column, "text", self._error)
        labels = [label.strip() for label in text_values(rows, self.label_column, "label", self._error, numbers=True)]
        self.labels = tuple(sorted(set(labels)))
        if len(self.labels) < 2:
            raise self._error(f"label column {self.label_column!r} has a single label ({self.labels[0]!r}); "
                              f"classification needs at least 2")
        return [TextExample(prompt=self.prompt_template.replace(TEXT_PLACEHOLDER, text), completion=label,
                            meta={"label": label}) for text, label in zip(texts, labels)]
