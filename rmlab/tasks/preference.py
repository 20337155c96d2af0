"""Preference tasks (output kind ``pair``): which of two items is better, for training reward models.

- ``PairTask``: the pair pipeline on top of ``Task`` (its validation, split sizes, ``load``/``info`` caching and error
  style): split, standardise features with train statistics, flip pairs (``pair_flip``), build tensors.
- ``SyntheticPreference`` (``synthetic_preference``): items with a hidden reward function, labels drawn by
  Bradley-Terry.
- ``PreferenceFromDataset`` (``diabetes_preference``): pairs of items of a regression dataset, the higher target wins.
- ``PreferenceFile`` (``preference_file``): the user's prompt/chosen/rejected texts, byte-tokenised.

Every split holds ``x`` float32 (N, 2, D) features or int64 (N, 2, L) token ids, and ``y`` float32 (N, 2): each
item's true reward where the task knows it, NaN otherwise. Chosen is index 0, always.

Randomness, as in ``Task``: ``split_seed`` spawns independent streams for the split (and pairing), the train flips and
the val flips, so ``pair_flip`` or ``corrupt_val`` never move a pair between splits. The synthetic data itself
(items, reward function, Bradley-Terry labels) is fixed by ``data_seed``.
"""

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from rmlab import kinds
from rmlab.errors import ConfigError, DataError
from rmlab.tasks.base import (
    REGRESSION,
    Split,
    Task,
    _zscore_stats,
    check_bool,
    check_choice,
    check_int,
    check_real,
)
from rmlab.tasks.files import check_unique_columns, check_user_file
from rmlab.tasks.sklearn_data import DATASETS as SKLEARN_DATASETS
from rmlab.tokenizer import MIN_LENGTH, batch_encode

Pairs = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (x (N, 2, ...), true rewards (N, 2)), chosen first
SPLITS = ("train", "val", "test")


def flip_pairs(x: np.ndarray, r: np.ndarray, rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Copies of pairs ``x`` (N, 2, ...) and rewards ``r`` (N, 2) with each pair's two items swapped with probability
    ``rate``: the preference-label noise of a crowd that sometimes picks the worse answer."""
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"pair flip rate must be in [0, 1], got {rate!r}")
    flip = rng.random(len(x)) < rate
    x, r = x.copy(), r.copy()
    x[flip] = x[flip][:, ::-1]
    r[flip] = r[flip][:, ::-1]
    return x, r


class PairTask(Task):
    """Base of the pair tasks. A subclass sets ``input_type`` and ``true_reward`` and implements ``_pairs``."""

    kind = kinds.PAIR
    supported_kinds: ClassVar[tuple[str, ...]] = (kinds.PAIR,)
    input_type: ClassVar[str] = kinds.FEATURES
    true_reward: ClassVar[bool] = True

    # The Task parameters that mean something for pairs, spelled out so label_noise & co. are not options here.
    def __init__(
        self,
        *,
        pair_flip: float = 0.0,
        name: str | None = None,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        corrupt_val: bool = True,
    ) -> None:
        check_real("pair_flip", pair_flip, 0, 1)
        self.pair_flip = pair_flip
        super().__init__(
            name=name,
            batch_size=batch_size,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            split_seed=split_seed,
            corrupt_val=corrupt_val,
        )

    def _pairs(self, rng: np.random.Generator) -> tuple[Pairs, np.ndarray | None]:  # pragma: no cover - abstract
        """The splits' pairs (clean, chosen first) drawn with ``rng``, and the train items (M, D) that feature
        standardisation is fitted on (None: no standardisation, e.g. tokens)."""
        raise NotImplementedError

    def _split_index(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A random partition of ``range(n)`` into the split sizes of ``Task.split_sizes``."""
        n_train, n_val, _ = self.split_sizes(n)
        perm = rng.permutation(n)
        return {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}

    def _split_by_group(self, groups: list[Any], rng: np.random.Generator, what: str) -> dict[str, np.ndarray]:
        """A random partition of the rows that keeps each group (rows with the same ``groups`` value: a prompt) in
        one split. The groups are shuffled and cut where the rows reach the split sizes of ``Task.split_sizes``, so
        the sizes are met up to one group; every split needs at least one group."""
        n_train, n_val, n_test = self.split_sizes(len(groups))
        ids: dict[Any, int] = {}
        group = np.array([ids.setdefault(g, len(ids)) for g in groups])
        order = rng.permutation(len(ids))
        sizes = np.bincount(group, minlength=len(ids))[order]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # first row of each shuffled group
        # Test first, then val, as for rows: a group goes where its first row falls.
        where = np.where(starts < n_test, 2, np.where(starts < n_test + n_val, 1, 0))
        split_of_group = np.empty(len(ids), dtype=np.int64)
        split_of_group[order] = where
        counts = np.bincount(split_of_group, minlength=3)
        if (counts == 0).any():
            raise self._error(
                f"the {len(groups)} rows have {len(ids)} distinct {what}s, too few to give train, val and test each "
                f"their own {what}s (rows with one {what} stay in one split) with val_fraction={self.val_fraction}, "
                f"test_fraction={self.test_fraction}; add rows with other {what}s"
            )
        rows = split_of_group[group]
        return {name: rng.permutation(np.flatnonzero(rows == k)) for k, name in enumerate(SPLITS)}

    def _build(self) -> dict[str, Split]:
        split_seq, train_seq, val_seq = np.random.SeedSequence(self.split_seed).spawn(3)
        pairs, train_items = self._pairs(np.random.default_rng(split_seq))
        if train_items is not None and self.standardize:
            mean, std = _zscore_stats(train_items)
            pairs = {k: ((x - mean) / std, r) for k, (x, r) in pairs.items()}
        if self.pair_flip > 0:
            rngs = {"train": np.random.default_rng(train_seq), "val": np.random.default_rng(val_seq)}
            for split in ("train", "val") if self.corrupt_val else ("train",):  # test stays clean
                pairs[split] = flip_pairs(*pairs[split], self.pair_flip, rngs[split])

        x_dtype = torch.float32 if self.input_type == kinds.FEATURES else torch.int64
        splits = {
            k: Split(
                x=torch.as_tensor(np.ascontiguousarray(pairs[k][0]), dtype=x_dtype).contiguous(),
                y=torch.as_tensor(np.ascontiguousarray(pairs[k][1]), dtype=torch.float32).contiguous(),
            )
            for k in SPLITS
        }
        self._info = kinds.TaskInfo(
            name=self.name,
            output_kind=kinds.PAIR,
            input_dim=splits["train"].x.shape[2],
            input_type=self.input_type,
            true_reward=self.true_reward,
        )
        return splits


# --- synthetic ------------------------------------------------------------------------------------------------------

NONLINEARITIES = ("linear", "quadratic", "mlp")
_MLP_HIDDEN = 32
_SCALE_SAMPLE = 4096  # items used once to scale r to unit std


class SyntheticPreference(PairTask):
    """Pairs of Gaussian items x ~ N(0, I_dim) with a hidden reward r(x), and a Bradley-Terry label per pair:
    P(a chosen over b) = sigmoid((r(a) - r(b)) / temperature).

    r is ``w.x`` (linear), ``w.x + 0.5 (v.x)^2`` (quadratic) or a fixed random tanh network with one hidden layer of
    32 units (mlp), scaled to unit standard deviation over N(0, I) so ``temperature`` means the same for each: 1 is a
    noisy crowd, 0.01 near-deterministic. The Bradley-Terry draw is part of the data (test labels included);
    ``pair_flip`` adds further flips on train/val only.
    """

    default_name = "synthetic_preference"

    def __init__(
        self,
        *,
        n_pairs: int = 4000,
        dim: int = 16,
        nonlinearity: str = "linear",
        temperature: float = 1.0,
        data_seed: int = 0,
        standardize: bool = True,
        pair_flip: float = 0.0,
        **common: Any,
    ) -> None:
        check_int("n_pairs", n_pairs, 1)
        check_int("dim", dim, 1)
        check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        check_real("temperature", temperature, 0, low_open=True)
        check_int("data_seed", data_seed, 0)
        check_bool("standardize", standardize)
        self.n_pairs, self.dim, self.nonlinearity = n_pairs, dim, nonlinearity
        self.temperature, self.data_seed = temperature, data_seed
        super().__init__(pair_flip=pair_flip, **common)
        self.standardize = standardize
        self.split_sizes(n_pairs)  # fail now, not at load time, if n_pairs cannot be split

    def _reward_fn(self, rng: np.random.Generator):
        """The hidden reward r: items (..., dim) -> (...). Every weight is drawn whatever the nonlinearity, so the
        stream (and so the linear part) is the same for each choice."""
        d = self.dim
        w, v = rng.normal(size=d) / math.sqrt(d), rng.normal(size=d) / math.sqrt(d)
        w1, b1 = rng.normal(size=(d, _MLP_HIDDEN)) / math.sqrt(d), 0.5 * rng.normal(size=_MLP_HIDDEN)
        w2 = rng.normal(size=_MLP_HIDDEN) / math.sqrt(_MLP_HIDDEN)

        def raw(x: np.ndarray) -> np.ndarray:
            if self.nonlinearity == "linear":
                return x @ w
            if self.nonlinearity == "quadratic":
                return x @ w + 0.5 * (x @ v) ** 2
            return np.tanh(x @ w1 + b1) @ w2

        scale = raw(rng.normal(size=(_SCALE_SAMPLE, d))).std()
        return lambda x: raw(x) / scale

    def _pairs(self, rng: np.random.Generator) -> tuple[Pairs, np.ndarray | None]:
        # Separate streams: n_pairs does not change r, and temperature reuses the same uniforms (a lower temperature
        # can only make each label agree more with r).
        fn_seq, item_seq, label_seq = np.random.SeedSequence(self.data_seed).spawn(3)
        reward = self._reward_fn(np.random.default_rng(fn_seq))
        x = np.random.default_rng(item_seq).normal(size=(self.n_pairs, 2, self.dim))
        r = reward(x)
        # sigmoid(z) = (1 + tanh(z / 2)) / 2, which cannot overflow at a tiny temperature.
        p_first = 0.5 * (1.0 + np.tanh((r[:, 0] - r[:, 1]) / (2.0 * self.temperature)))
        swap = np.random.default_rng(label_seq).random(self.n_pairs) >= p_first
        x[swap], r[swap] = x[swap][:, ::-1], r[swap][:, ::-1]
        idx = self._split_index(self.n_pairs, rng)
        pairs = {k: (x[i], r[i]) for k, i in idx.items()}
        return pairs, pairs["train"][0].reshape(-1, self.dim)


# --- from a labelled dataset ----------------------------------------------------------------------------------------

REGRESSION_DATASETS = tuple(name for name, kind in SKLEARN_DATASETS.items() if kind == REGRESSION)


class PreferenceFromDataset(PairTask):
    """Pairs of distinct items of a scikit-learn regression dataset; the item with the higher target is chosen
    (pairs with equal targets are left out). The targets, z-scored with train statistics, are the true rewards.

    The ITEMS are split first and pairs formed within each split, so no item of a val/test pair was seen in
    training. Each split's pairs are distinct (sampled without replacement from all of its untied item pairs);
    ``n_pairs`` is shared out by ``val_fraction``/``test_fraction`` like rows are.
    """

    def __init__(
        self,
        *,
        dataset: str = "diabetes",
        n_pairs: int = 4000,
        standardize: bool = True,
        pair_flip: float = 0.0,
        **common: Any,
    ) -> None:
        check_choice("dataset", dataset, REGRESSION_DATASETS)
        check_int("n_pairs", n_pairs, 1)
        check_bool("standardize", standardize)
        self.dataset, self.n_pairs = dataset, n_pairs
        self.default_name = f"{dataset}_preference"
        super().__init__(pair_flip=pair_flip, **common)
        self.standardize = standardize
        self.split_sizes(n_pairs)

    def _pairs(self, rng: np.random.Generator) -> tuple[Pairs, np.ndarray | None]:
        import sklearn.datasets

        x, y = getattr(sklearn.datasets, f"load_{self.dataset}")(return_X_y=True)
        items = self._split_index(len(y), rng)
        mean, std = _zscore_stats(y[items["train"]])
        r = (y - mean) / std
        wanted = dict(zip(SPLITS, self.split_sizes(self.n_pairs)))
        pairs = {}
        for split in SPLITS:
            ids = items[split]
            a, b = np.triu_indices(len(ids), k=1)
            a, b = ids[a], ids[b]
            untied = r[a] != r[b]
            a, b = a[untied], b[untied]
            if len(a) < wanted[split]:
                raise self._error(
                    f"task.n_pairs={self.n_pairs} asks for {wanted[split]} {split} pairs, but the {len(ids)} {split} "
                    f"items form only {len(a)} distinct pairs with different targets; lower task.n_pairs"
                )
            pick = rng.choice(len(a), size=wanted[split], replace=False)
            a, b = a[pick], b[pick]
            chosen, rejected = np.where(r[a] > r[b], a, b), np.where(r[a] > r[b], b, a)
            pairs[split] = (np.stack([x[chosen], x[rejected]], axis=1), np.stack([r[chosen], r[rejected]], axis=1))
        return pairs, x[items["train"]]


# --- the user's file ------------------------------------------------------------------------------------------------

EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class PreferenceFile(PairTask):
    """The user's preference data: one pair per row (JSON lines, CSV or Parquet) with the texts of a ``prompt``
    (optional), a ``chosen`` and a ``rejected`` response. Each item is ``[BOS] prompt [SEP] response [EOS]`` in byte
    tokens (``rmlab.tokenizer``; a long prompt is cut first), padded to ``max_length``. No true rewards (y is NaN).

    Rows are split by prompt: all the pairs of one prompt land in the same split (train, val or test), so a model is
    never tested on a prompt it was trained on; split sizes follow ``val_fraction``/``test_fraction`` up to one
    prompt's rows. Without a prompt column, rows are split at random. Every problem with the file is a ``DataError``
    naming it: the path at construction, the contents at load time.
    """

    input_type: ClassVar[str] = kinds.TOKENS
    true_reward: ClassVar[bool] = False

    def __init__(
        self,
        *,
        path: str,
        prompt_column: str | None = "prompt",
        chosen_column: str = "chosen",
        rejected_column: str = "rejected",
        max_length: int = 128,
        pair_flip: float = 0.0,
        **common: Any,
    ) -> None:
        if not isinstance(path, str | Path) or not str(path):
            raise ConfigError(f"task.path must be a file path, got {path!r}")
        for param, value in (("chosen_column", chosen_column), ("rejected_column", rejected_column)):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"task.{param} must be a column name, got {value!r}")
        if prompt_column is not None and (not isinstance(prompt_column, str) or not prompt_column):
            raise ConfigError(f"task.prompt_column must be a column name or null (no prompt), got {prompt_column!r}")
        columns = [c for c in (prompt_column, chosen_column, rejected_column) if c is not None]
        if len(set(columns)) != len(columns):
            raise ConfigError(f"task.prompt_column, chosen_column and rejected_column must differ, got {columns}")
        check_int("max_length", max_length, MIN_LENGTH)
        # Resolved now, so a later change of directory cannot change which file is read.
        self.path = Path(path).expanduser().absolute()
        self.default_name = self.path.stem
        self.prompt_column, self.chosen_column, self.rejected_column = prompt_column, chosen_column, rejected_column
        self.max_length = max_length
        super().__init__(pair_flip=pair_flip, **common)
        check_user_file(self.path, path, EXTENSIONS)

    def _error(self, message: str) -> DataError:
        return DataError(f"{self.path}: {message}")

    # Reading gives (column names, column -> values, where each row is in the file) for every format.

    def _read_jsonl(self) -> tuple[list[str], dict[str, list[Any]], list[str]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise self._error(f"is not UTF-8 text: {e}") from None
        records, where = [], []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue  # blank lines (a trailing newline, spacing) carry no pair
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                hint = " (a JSON array is not supported: write one object per line)" if line.lstrip()[:1] == "[" else ""
                raise self._error(f"line {number} is not valid JSON: {e.msg} at column {e.colno}{hint}") from None
            if not isinstance(record, dict):
                hint = " (a JSON array is not supported: write one object per line)" if isinstance(record, list) else ""
                raise self._error(f"line {number} must be a JSON object {{...}}, got {type(record).__name__}{hint}")
            records.append(record)
            where.append(f"line {number}")
        names = list(dict.fromkeys(k for record in records for k in record))
        return names, {c: [record.get(c) for record in records] for c in names}, where

    def _read_table(self, fmt: str) -> tuple[list[str], dict[str, list[Any]], list[str]]:
        import pandas as pd

        check_unique_columns(self.path, fmt, self._error)
        try:
            # Every cell as text, and an empty cell as "" (not NaN): "nan" or "123" are answers too.
            if fmt == "csv":
                df = pd.read_csv(self.path, dtype=str, keep_default_na=False)
            else:
                df = pd.read_parquet(self.path)
        except pd.errors.EmptyDataError:
            raise self._error("the file is empty") from None
        except (ValueError, OSError, UnicodeDecodeError) as e:  # parser errors, pyarrow's ArrowInvalid, ...
            raise self._error(f"could not be read as {fmt}: {e}") from e
        names = [str(c) for c in df.columns]
        df.columns = names
        return names, {c: df[c].tolist() for c in names}, [f"data row {i}" for i in range(1, len(df) + 1)]

    def _texts(self, data: dict[str, list[Any]], where: list[str], column: str, role: str) -> list[str]:
        """The column's values, each a non-blank string, or a DataError naming the first bad row."""
        empty = []
        for i, value in enumerate(data[column]):
            if isinstance(value, str):
                if not value.strip():
                    empty.append(i)
            elif value is None or (isinstance(value, float) and math.isnan(value)):
                empty.append(i)
            else:
                raise self._error(f"{role} column {column!r} holds {value!r} ({type(value).__name__}) in {where[i]}, "
                                  f"not text")
        if empty:
            hint = "; set task.prompt_column: null if the file has no prompts" if role == "prompt" else ""
            raise self._error(f"{role} column {column!r} has {len(empty)} empty values (missing, blank or null), e.g. "
                              f"in {where[empty[0]]}{hint}")
        return data[column]

    def _pairs(self, rng: np.random.Generator) -> tuple[Pairs, np.ndarray | None]:
        fmt = EXTENSIONS[self.path.suffix.lower()]
        names, data, where = self._read_jsonl() if fmt == "jsonl" else self._read_table(fmt)
        if not where:
            raise self._error(f"the file has no rows (columns: {', '.join(names)})" if names else "the file is empty")
        roles = {"prompt": self.prompt_column, "chosen": self.chosen_column, "rejected": self.rejected_column}
        roles = {role: column for role, column in roles.items() if column is not None}
        absent = [f"{role} column {column!r}" for role, column in roles.items() if column not in data]
        if absent:
            raise self._error(f"{', '.join(absent)} not found; available columns: {', '.join(names)}")
        texts = {role: self._texts(data, where, column, role) for role, column in roles.items()}
        same = [i for i, (c, r) in enumerate(zip(texts["chosen"], texts["rejected"])) if c == r]
        if same:
            raise self._error(f"{len(same)} rows have identical chosen and rejected text, e.g. {where[same[0]]}; "
                              f"a pair needs two different responses")

        prompts = texts.get("prompt")
        x = torch.stack(
            [batch_encode(texts[role], self.max_length, prompts) for role in ("chosen", "rejected")], dim=1
        ).numpy()
        r = np.full((len(x), 2), np.nan)
        # By prompt: the several response pairs of one prompt (the usual case in public preference sets) stay in one
        # split, so no test prompt was seen in training. Without prompts, by row.
        idx = self._split_index(len(x), rng) if prompts is None else self._split_by_group(prompts, rng, "prompt")
        return {k: (x[i], r[i]) for k, i in idx.items()}, None
