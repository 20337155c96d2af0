"""What a run trained on, as MLflow datasets: one dataset input per split (train, val, test).

Each input carries what a user needs to tell two runs' data apart in ``mlflow ui`` (the runs table's Dataset column,
the run's Datasets panel):
- name: the task (the file name for a user's file);
- digest: of the split's arrays as the model saw them (after the split, standardisation and corruption), so a
  different seed, noise level or file gives a different digest;
- source: the file path (``local``), or the generator and its settings (``code``: loader, ``data_seed``, sizes);
- schema: the features' and targets' dtypes and shapes (the columns, for a task whose splits are text examples);
- profile: the split, the three split sizes, how the split was drawn, and the corruption settings, with whether this
  split was corrupted (test never is).

The split is the dataset input's context tag (``mlflow.data.context``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")
# Task keys that corrupt labels (and so which splits they touch), the split's own keys, and keys that say nothing
# about the data; every other task key describes where the data comes from.
CORRUPTION_KEYS = ("label_noise", "noise_type", "outlier_fraction", "outlier_scale", "pair_flip", "completion_noise",
                   "corrupt_val")
SPLIT_KEYS = ("split_seed", "val_fraction", "test_fraction")
NOT_DATA_KEYS = ("name", "_target_", "batch_size")


def _corrupted(split: str, task_cfg: Mapping[str, Any]) -> bool:
    """Whether the split's labels went through a corruption knob that is switched on."""
    active = any(isinstance(task_cfg.get(k), (int, float)) and not isinstance(task_cfg.get(k), bool)
                 and task_cfg.get(k) > 0 for k in ("label_noise", "outlier_fraction", "pair_flip", "completion_noise"))
    return active and (split == "train" or (split == "val" and bool(task_cfg.get("corrupt_val", True))))


def source_of(task_cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(MLflow source type, source) of a task's data: a user's file, or the loader/generator and its settings."""
    path = task_cfg.get("path")
    if path:
        return "local", {"uri": str(Path(str(path)).expanduser().absolute())}
    settings = {k: v for k, v in task_cfg.items()
                if k not in CORRUPTION_KEYS + SPLIT_KEYS + NOT_DATA_KEYS}
    return "code", {"tags": {"task": str(task_cfg.get("_target_", "")),
                             **{k: json.dumps(v) if not isinstance(v, str) else v for k, v in settings.items()}}}


def _described(data: Any, name: str, source: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """MLflow's description of one split (its digest and schema) and its shapes: tensors (``Split``: features and
    targets) through ``from_numpy``, examples (a list of dataclasses, e.g. text prompts and completions) as a table
    through ``from_pandas``. The source given here is a placeholder: rmlab's own replaces it."""
    import mlflow.data

    if hasattr(data, "x") and hasattr(data, "y"):
        x, y = data.x.cpu().numpy(), data.y.cpu().numpy()
        dataset = mlflow.data.from_numpy(x, targets=y, name=name, source=source)
        return dataset.to_dict(), {"features_shape": list(x.shape), "targets_shape": list(y.shape)}
    import pandas as pd

    rows = [{k: v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v, default=str)
             for k, v in dataclasses.asdict(item).items()} if dataclasses.is_dataclass(item) else {"item": str(item)}
            for item in data]
    frame = pd.DataFrame(rows)
    return mlflow.data.from_pandas(frame, name=name, source=source).to_dict(), {"columns": list(frame.columns)}


def split_datasets(task: Any, task_cfg: Mapping[str, Any]) -> list:
    """The task's three splits as MLflow ``DatasetInput``s (see the module docstring)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.entities import Dataset, DatasetInput, InputTag

    splits = task.load()
    sizes = {name: len(splits[name]) for name in SPLITS}
    source_type, source = source_of(task_cfg)
    path = task_cfg.get("path")
    name = Path(str(path)).name if path else str(task_cfg.get("name") or task.name)
    inputs = []
    for split in SPLITS:
        described, shapes = _described(splits[split], name, CodeDatasetSource({}))
        profile = {
            "split": split, "rows": sizes[split], "split_sizes": sizes, **shapes,
            **{k: task_cfg[k] for k in SPLIT_KEYS if k in task_cfg},
            **{k: task_cfg[k] for k in CORRUPTION_KEYS if k in task_cfg},
            "corrupted": _corrupted(split, task_cfg),
        }
        dataset = Dataset(name=name, digest=described["digest"], source_type=source_type, source=json.dumps(source),
                          schema=described["schema"], profile=json.dumps(profile))
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", split)]))
    return inputs
