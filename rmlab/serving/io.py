"""The per-kind part of a served model: one small class per output kind.

A ``ModelIO`` class is chosen at export by the task's (output kind, input type) (``register``). At export,
``describe`` reads what the kind needs from the task (column names, standardisation statistics, class labels,
tokenizer settings) into a JSON-able spec; at load, an instance works from that spec alone: it rebuilds the network,
checks a table of raw inputs (one line naming the column and row of the first problem: ``DataError``), turns it into
tensors, and turns the network's output into a table of predictions in the user's units.

Kinds here: ``Classifier`` (logits: the label and a probability per class), ``Regressor`` (value: the prediction,
de-standardised), ``FeatureScorer`` (a reward model on feature vectors: a score per item), ``TextScorer`` (a reward
model on texts: a score per response, or both scores and P(chosen preferred) per pair). A language model adds its own
class (generation has its own inputs, outputs and parameters) and registers it for its kind.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rmlab import kinds
from rmlab.errors import DataError

if TYPE_CHECKING:  # pandas and mlflow are imported where a model is exported or served
    import pandas as pd
    from mlflow.types import Schema

BATCH_ROWS = 1024  # rows per forward pass when predicting, to bound memory on large files

_REGISTRY: dict[tuple[str, str], type[ModelIO]] = {}


def register(output_kind: str, input_type: str) -> Callable[[type[ModelIO]], type[ModelIO]]:
    """Class decorator: serve models of tasks with this output kind and input type with the decorated class."""

    def add(cls: type[ModelIO]) -> type[ModelIO]:
        _REGISTRY[(output_kind, input_type)] = cls
        return cls

    return add


def io_class_for(info: kinds.TaskInfo) -> type[ModelIO] | None:
    """The class that serves a task's model, or None where no kind of MLflow model exists for it yet."""
    return _REGISTRY.get((info.output_kind, info.input_type))


def load_io(spec: dict[str, Any]) -> ModelIO:
    """The ``ModelIO`` named in a saved spec (``module:qualname``, so classes outside rmlab load too)."""
    module, _, name = spec["io"].partition(":")
    return getattr(importlib.import_module(module), name)(spec)


def _rows(n: int) -> Iterator[slice]:
    for start in range(0, n, BATCH_ROWS):
        yield slice(start, min(start + BATCH_ROWS, n))


def _shown(value: Any) -> str:
    """A cell as a user would name it in a message."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "an empty cell"
    return repr(value.item() if isinstance(value, np.generic) else value)


def _column_type(values: list[Any]) -> str:
    """MLflow column type of a list of labels."""
    if all(isinstance(v, bool) for v in values):
        return "boolean"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "long"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "double"
    return "string"


class ModelIO:
    """Base class: the spec, the network rebuilt from it, and the interface every kind implements."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    # -- export side (the task is at hand) ------------------------------------------------------------------------

    @classmethod
    def describe(cls, task: Any, info: kinds.TaskInfo) -> dict[str, Any]:
        """What this kind needs from the task, JSON-able; stored in the spec beside the network config."""
        return {}

    def example(self, task: Any) -> pd.DataFrame:
        """A few raw input rows (the model's input example, shown in the UI and checked when the model is logged)."""
        raise NotImplementedError

    def input_schema(self) -> Schema:
        raise NotImplementedError

    def output_schema(self) -> Schema | None:
        return None

    # -- load side (only the spec) ---------------------------------------------------------------------------------

    def build(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """The network of the spec's model config, with ``state`` loaded, in eval mode."""
        from rmlab.build import instantiate
        from rmlab.models import KindHead

        spec = self.spec
        net = instantiate("model", spec["network"], input_dim=spec["input_dim"], output_dim=spec["output_dim"])
        head = KindHead(net, spec["output_kind"])
        head.load_state_dict(state)
        return head.eval()

    def check(self, frame: pd.DataFrame) -> None:
        """Raise ``DataError`` naming the first problem with the table (missing column, bad value)."""

    def predict(self, net: torch.nn.Module, frame: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        raise NotImplementedError


class FeatureIO(ModelIO):
    """Inputs are the task's feature columns, raw; standardised here with the train split's statistics."""

    @classmethod
    def describe(cls, task: Any, info: kinds.TaskInfo) -> dict[str, Any]:
        names = task.feature_names or [f"x{i}" for i in range(info.input_dim)]
        prep = task.preprocessing
        return {"features": [str(n) for n in names], "feature_mean": prep.get("feature_mean"),
                "feature_std": prep.get("feature_std")}

    @property
    def features(self) -> list[str]:
        return self.spec["features"]

    def input_schema(self) -> Schema:
        from mlflow.types import ColSpec, Schema

        return Schema([ColSpec("double", name) for name in self.features])

    def _raw_rows(self, x: np.ndarray) -> pd.DataFrame:
        """Standardised feature rows back in the user's units (rounded: float dust from the round trip is noise)."""
        import pandas as pd

        mean, std = self.spec.get("feature_mean"), self.spec.get("feature_std")
        if mean is not None:
            x = x * np.asarray(std) + np.asarray(mean)
        return pd.DataFrame(np.round(x.astype(np.float64), 6), columns=self.features)

    def example(self, task: Any) -> pd.DataFrame:
        x = task.load()["train"].x[:5].cpu().numpy()
        return self._raw_rows(x.reshape(-1, x.shape[-1])[:5])

    def check(self, frame: pd.DataFrame) -> None:
        self.matrix(frame)

    def matrix(self, frame: pd.DataFrame) -> torch.Tensor:
        """The table's feature columns as a standardised float32 (N, D) tensor; DataError on the first problem."""
        import pandas as pd

        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            shown = ", ".join(repr(c) for c in missing[:5]) + more
            expected = ", ".join(self.features[:8]) + (", ..." if len(self.features) > 8 else "")
            raise DataError(f"missing input column(s) {shown}; the model takes {len(self.features)} numeric columns: "
                            f"{expected}")
        columns = []
        for name in self.features:
            values = pd.to_numeric(frame[name], errors="coerce")
            bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan))
            if bad.any():
                row = int(np.argmax(bad.to_numpy()))
                raise DataError(f"column {name!r} has {int(bad.sum())} missing, non-numeric or infinite values, "
                                f"e.g. {_shown(frame[name].iloc[row])} in data row {row + 1}")
            columns.append(values.to_numpy(dtype=np.float64))
        x = np.stack(columns, axis=1) if columns else np.zeros((len(frame), 0))
        mean, std = self.spec.get("feature_mean"), self.spec.get("feature_std")
        if mean is not None:
            x = (x - np.asarray(mean)) / np.asarray(std)
        return torch.as_tensor(x, dtype=torch.float32)

    def outputs(self, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([net(x[rows]).float() for rows in _rows(len(x))]) if len(x) else net(x).float()


@register(kinds.LOGITS, kinds.FEATURES)
class Classifier(FeatureIO):
    """A class per row: ``prediction`` (the original label) and ``p_<label>``, the probability of each class."""

    @classmethod
    def describe(cls, task: Any, info: kinds.TaskInfo) -> dict[str, Any]:
        classes = task.classes if task.classes is not None else list(range(info.num_classes or 0))
        return {**super().describe(task, info), "classes": list(classes)}

    def output_schema(self) -> Schema:
        from mlflow.types import ColSpec, Schema

        classes = self.spec["classes"]
        return Schema([ColSpec(_column_type(classes), "prediction"),
                       *[ColSpec("double", f"p_{label}") for label in classes]])

    def predict(self, net: torch.nn.Module, frame: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import pandas as pd

        probs = self.outputs(net, self.matrix(frame)).softmax(-1).numpy()
        classes = self.spec["classes"]
        out = pd.DataFrame({"prediction": [classes[i] for i in probs.argmax(1)]}, index=frame.index)
        for i, label in enumerate(classes):
            out[f"p_{label}"] = probs[:, i].astype(np.float64)
        return out


@register(kinds.VALUE, kinds.FEATURES)
class Regressor(FeatureIO):
    """A value per row, ``prediction``, in the target's original units (the training targets were z-scored)."""

    @classmethod
    def describe(cls, task: Any, info: kinds.TaskInfo) -> dict[str, Any]:
        prep = task.preprocessing
        return {**super().describe(task, info), "target_mean": prep.get("target_mean"),
                "target_std": prep.get("target_std")}

    def output_schema(self) -> Schema:
        from mlflow.types import ColSpec, Schema

        return Schema([ColSpec("double", "prediction")])

    def predict(self, net: torch.nn.Module, frame: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import pandas as pd

        z = self.outputs(net, self.matrix(frame)).numpy().astype(np.float64)
        if self.spec.get("target_mean") is not None:
            z = z * self.spec["target_std"] + self.spec["target_mean"]
        return pd.DataFrame({"prediction": z}, index=frame.index)


@register(kinds.PAIR, kinds.FEATURES)
class FeatureScorer(FeatureIO):
    """A reward model on feature vectors: one item (its raw features) per row, answered with its ``score``."""

    def output_schema(self) -> Schema:
        from mlflow.types import ColSpec, Schema

        return Schema([ColSpec("double", "score")])

    def predict(self, net: torch.nn.Module, frame: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import pandas as pd

        # The pair head scores (B, 2, D); its network scores single items.
        scores = self.outputs(net.net, self.matrix(frame)).squeeze(-1).numpy().astype(np.float64)
        return pd.DataFrame({"score": scores}, index=frame.index)


@register(kinds.PAIR, kinds.TOKENS)
class TextScorer(ModelIO):
    """A reward model on texts, encoded by rmlab's byte tokenizer exactly as in training. A row is a pair
    (``prompt``, ``chosen``, ``rejected``: answered with ``chosen_score``, ``rejected_score`` and ``p_chosen`` =
    sigmoid(chosen_score - rejected_score), the Bradley-Terry probability that chosen is preferred) or one item
    (``prompt``, ``response``: answered with ``score``). ``prompt`` is left out for a model trained without prompts."""

    @classmethod
    def describe(cls, task: Any, info: kinds.TaskInfo) -> dict[str, Any]:
        return {"max_length": int(task.max_length), "prompt": task.prompt_column is not None}

    def _text_columns(self) -> list[str]:
        return (["prompt"] if self.spec["prompt"] else []) + ["chosen", "rejected", "response"]

    def input_schema(self) -> Schema:
        from mlflow.types import ColSpec, Schema

        # Optional columns: a pair (chosen + rejected) or one item (response) per row; check() enforces one of them.
        return Schema([ColSpec("string", name, required=name == "prompt") for name in self._text_columns()])

    def example(self, task: Any) -> pd.DataFrame:
        import pandas as pd

        from rmlab.tokenizer import SEP, decode

        ids = task.load()["train"].x[:3].cpu().tolist()  # (3, 2, L): chosen, rejected
        rows = []
        for chosen, rejected in ids:
            row = {}
            for role, item in (("chosen", chosen), ("rejected", rejected)):
                prompt, response = (item[: item.index(SEP)], item[item.index(SEP):]) if SEP in item else ([], item)
                row[role] = decode(response)
                if self.spec["prompt"]:
                    row["prompt"] = decode(prompt)
            rows.append(row)
        return pd.DataFrame(rows, columns=[c for c in self._text_columns() if c != "response"])

    def _texts(self, frame: pd.DataFrame, column: str) -> list[str]:
        values = frame[column].tolist()
        for i, value in enumerate(values):
            if not isinstance(value, str) or not value.strip():
                what = "empty" if isinstance(value, str) or value is None else f"{type(value).__name__} {value!r}"
                raise DataError(f"column {column!r} must hold non-empty text, got {what} in data row {i + 1}")
        return values

    def _mode(self, frame: pd.DataFrame) -> str:
        columns = set(frame.columns)
        prompt = "prompt, " if self.spec["prompt"] else ""
        wanted = f"{prompt}chosen, rejected (a pair per row) or {prompt}response (one item per row)"
        if self.spec["prompt"] and "prompt" not in columns:
            raise DataError(f"missing input column 'prompt' (the model was trained with prompts); it takes {wanted}; "
                            f"got columns: {', '.join(map(str, frame.columns))}")
        if {"chosen", "rejected"} <= columns:
            return "pair"
        if "response" in columns:
            return "item"
        raise DataError(f"the model takes columns {wanted}; got columns: {', '.join(map(str, frame.columns))}")

    def check(self, frame: pd.DataFrame) -> None:
        mode = self._mode(frame)
        for column in (["prompt"] if self.spec["prompt"] else []) + (
                ["chosen", "rejected"] if mode == "pair" else ["response"]):
            self._texts(frame, column)

    def _scores(self, net: torch.nn.Module, responses: list[str], prompts: list[str] | None) -> np.ndarray:
        from rmlab.tokenizer import batch_encode

        out = []
        with torch.no_grad():
            for rows in _rows(len(responses)):
                ids = batch_encode(responses[rows], self.spec["max_length"], None if prompts is None else prompts[rows])
                out.append(net.net(ids).squeeze(-1).float())
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)

    def predict(self, net: torch.nn.Module, frame: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import pandas as pd

        self.check(frame)
        prompts = self._texts(frame, "prompt") if self.spec["prompt"] else None
        if self._mode(frame) == "item":
            return pd.DataFrame({"score": self._scores(net, self._texts(frame, "response"), prompts)},
                                index=frame.index)
        chosen = self._scores(net, self._texts(frame, "chosen"), prompts)
        rejected = self._scores(net, self._texts(frame, "rejected"), prompts)
        return pd.DataFrame({"chosen_score": chosen, "rejected_score": rejected,
                             "p_chosen": 1.0 / (1.0 + np.exp(rejected - chosen))}, index=frame.index)
