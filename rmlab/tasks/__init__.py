"""Tasks: the datasets a run trains and evaluates on, as plain classes (no Lightning; the run wraps them).

- ``base``: the ``Task`` contract (``load() -> {"train", "val", "test"}`` of ``Split``, ``info``), splitting,
  standardisation, and where corruption applies.
- ``corruption``: label noise and regression outliers as pure functions.
- ``sklearn_data``: datasets bundled with scikit-learn; ``synthetic``: generated ones; ``files``: the user's
  CSV/Parquet file.
- ``preference``: pair tasks (output kind ``pair``) for reward models: ``PairTask`` and the synthetic, from-dataset
  and user-file preference tasks; ``review_preference``: pairs of texts labelled from a known gold reward
  (``sequence.review_gold``: the known-reward family, shared with the sequence task ``review_writing``).

Adding a task: subclass ``Task``, set ``kind``, implement ``_raw() -> (X, y)``, add ``conf/task/<name>.yaml``.
"""

from rmlab.tasks.base import CLASSIFICATION, REGRESSION, Split, Task
from rmlab.tasks.files import FileTask
from rmlab.tasks.preference import PairTask, PreferenceFile, PreferenceFromDataset, SyntheticPreference
from rmlab.tasks.review_preference import ReviewPreference
from rmlab.tasks.sklearn_data import SklearnTask
from rmlab.tasks.synthetic import SyntheticClassification, SyntheticRegression

__all__ = [
    "CLASSIFICATION",
    "REGRESSION",
    "ReviewPreference",
    "FileTask",
    "PairTask",
    "PreferenceFile",
    "PreferenceFromDataset",
    "SklearnTask",
    "Split",
    "SyntheticClassification",
    "SyntheticPreference",
    "SyntheticRegression",
    "Task",
]
