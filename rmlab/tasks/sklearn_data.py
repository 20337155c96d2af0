"""Datasets bundled with scikit-learn (no downloads): digits, breast_cancer, wine (classification), diabetes
(regression). One class; the YAML's ``dataset`` picks which."""

from functools import cache
from typing import Any

import numpy as np

from rmlab.tasks.base import CLASSIFICATION, REGRESSION, Task, check_choice

# Only the loaders that ship their data inside the sklearn wheel: fetch_* would download at run time.
DATASETS = {"digits": CLASSIFICATION, "breast_cancer": CLASSIFICATION, "wine": CLASSIFICATION, "diabetes": REGRESSION}


class SklearnTask(Task):
    """``sklearn.datasets.load_<dataset>``, split, standardised and corrupted by the ``Task`` base."""

    def __init__(self, *, dataset: str, **common: Any) -> None:
        check_choice("dataset", dataset, DATASETS)
        self.dataset = dataset
        self.kind = DATASETS[dataset]
        self.default_name = dataset
        super().__init__(**common)

    def _raw(self) -> tuple[np.ndarray, np.ndarray]:
        data, target, feature_names, target_names = _load(self.dataset)
        self.feature_names = list(feature_names)
        if self.kind == CLASSIFICATION:
            self.classes = list(target_names)
        return data, target


@cache
def _load(dataset: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[Any, ...]]:
    """``load_<dataset>()``, read once per process (each job of a sweep would read and parse the file again). The
    arrays are shared between runs, so they are read-only: the splits are copies."""
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{dataset}")()
    for array in (bunch.data, bunch.target):
        array.setflags(write=False)
    classes = bunch.get("target_names", ())  # regression sets have none
    return (bunch.data, bunch.target, tuple(str(name) for name in bunch.feature_names),
            tuple(name.item() if isinstance(name, np.generic) else name for name in classes))
