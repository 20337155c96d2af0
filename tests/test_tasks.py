"""Tasks: splits, standardisation, corruption, the bundled/synthetic/file datasets, their errors and their YAMLs."""

import inspect
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rmlab.errors import ConfigError, DataError
from rmlab.tasks import FileTask, SklearnTask, SyntheticClassification, SyntheticRegression, Task
from rmlab.tasks.corruption import add_outliers, flip_labels

CONF = Path(__file__).resolve().parents[1] / "conf" / "task"


def small_cls(**kw) -> SyntheticClassification:
    return SyntheticClassification(**{"n_samples": 600, **kw})


def small_reg(**kw) -> SyntheticRegression:
    return SyntheticRegression(**{"n_samples": 600, **kw})


# --- splits ---------------------------------------------------------------------------------------------------------


def test_same_seed_same_splits_different_seed_different():
    a, b, c = (SklearnTask(dataset="wine", split_seed=s).load() for s in (3, 3, 4))
    for k in ("train", "val", "test"):
        assert torch.equal(a[k].x, b[k].x) and torch.equal(a[k].y, b[k].y)
    assert not torch.equal(a["test"].x, c["test"].x)


def test_load_is_cached():
    task = SklearnTask(dataset="wine")
    assert task.load() is task.load()


def test_split_sizes_and_dtypes():
    s = SklearnTask(dataset="digits", val_fraction=0.2, test_fraction=0.1).load()
    # round(1797 * 0.2) = 359, round(1797 * 0.1) = 180 (half up), train keeps the rest.
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (1797 - 359 - 180, 359, 180)
    assert s["train"].x.shape == (1258, 64) and s["train"].x.dtype == torch.float32
    assert s["train"].y.shape == (1258,) and s["train"].y.dtype == torch.int64


def test_splits_partition_rows_exactly():
    # A feature that is the row id makes overlap checks exact.
    x = np.arange(500, dtype=float)[:, None]

    class Ids(Task):
        kind = "classification"

        def _raw(self):
            return x, np.arange(500) % 5

    s = Ids(standardize=False).load()
    ids = [set(s[k].x[:, 0].long().tolist()) for k in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == set(range(500))
    # Stratified: each class keeps its 20% share in every split.
    for k in ("train", "val", "test"):
        assert torch.bincount(s[k].y, minlength=5).tolist() == [len(s[k]) // 5] * 5


def test_tiny_classes_fall_back_to_plain_split():
    class Tiny(Task):
        kind = "classification"

        def _raw(self):
            return np.random.default_rng(0).normal(size=(30, 2)), np.array([0] * 28 + [1, 2])

    s = Tiny().load()
    assert sum(len(v) for v in s.values()) == 30


# --- standardisation ------------------------------------------------------------------------------------------------


def test_standardisation_uses_train_stats_and_survives_constant_columns():
    rng = np.random.default_rng(0)
    x = np.c_[rng.normal(5, 3, size=(400, 3)), np.full(400, 7.0)]

    class Shifted(Task):
        kind = "regression"

        def _raw(self):
            return x, x[:, 0] * 2 + 100

    s = Shifted().load()
    tr = s["train"].x.double()
    assert torch.allclose(tr[:, :3].mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(tr[:, :3].std(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5)
    for k in s:
        assert torch.isfinite(s[k].x).all() and torch.all(s[k].x[:, 3] == 0)
    # val/test use the train mean/std: recompute from raw rows.
    raw = Shifted(standardize=False, standardize_target=False).load()
    mean, std = raw["train"].x.double().mean(0), raw["train"].x.double().std(0, unbiased=False)
    assert torch.allclose(s["test"].x[:, :3].double(), ((raw["test"].x.double() - mean) / std)[:, :3], atol=1e-5)
    # Targets too (regression): train targets z-scored, test with the same affine map.
    ytr = raw["train"].y.double()
    assert abs(s["train"].y.double().mean()) < 1e-5 and abs(s["train"].y.double().std(unbiased=False) - 1) < 1e-5
    expected = (raw["test"].y.double() - ytr.mean()) / ytr.std(unbiased=False)
    assert torch.allclose(s["test"].y.double(), expected, atol=1e-4)
    assert raw["train"].y.dtype == torch.float32 and float(raw["train"].y.mean()) > 50


# --- corruption: pure functions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_type", ["symmetric", "asymmetric"])
def test_flip_labels_rate_and_mapping(noise_type):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=100_000)
    out = flip_labels(y, 5, 0.3, noise_type, np.random.default_rng(1))
    flipped = out != y
    assert abs(flipped.mean() - 0.3) < 0.01
    if noise_type == "asymmetric":
        assert np.all(out[flipped] == (y[flipped] + 1) % 5)
    else:  # the wrong class is uniform over the 4 others
        shifts = (out[flipped] - y[flipped]) % 5
        assert np.allclose(np.bincount(shifts, minlength=5)[1:] / flipped.sum(), 0.25, atol=0.01)
    assert out is not y and out.dtype == y.dtype


def test_flip_labels_on_tensors_and_zero_rate():
    y = torch.arange(10) % 3
    assert torch.equal(flip_labels(y, 3, 0.0, "symmetric", np.random.default_rng(0)), y)
    out = flip_labels(y, 3, 0.99, "symmetric", np.random.default_rng(0))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    with pytest.raises(ConfigError, match="labels must be in"):
        flip_labels(np.array([0, 3]), 3, 0.1, "symmetric", np.random.default_rng(0))


def test_add_outliers_fraction_and_scale():
    y = np.zeros(100_000)
    out = add_outliers(y, 0.1, 10.0, np.random.default_rng(0))
    hit = out != 0
    assert hit.sum() == 10_000 and np.all(y == 0)
    assert abs(out[hit].std() - 10.0) < 0.3


# --- corruption: applied by the task --------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_type", ["symmetric", "asymmetric"])
def test_task_label_noise(noise_type):
    clean = SyntheticClassification(n_samples=20_000).load()
    noisy = SyntheticClassification(n_samples=20_000, label_noise=0.25, noise_type=noise_type).load()
    for k in ("train", "val"):
        assert torch.equal(clean[k].x, noisy[k].x)  # corruption does not move samples between splits
        changed = clean[k].y != noisy[k].y
        assert abs(changed.float().mean().item() - 0.25) < 0.02
        if noise_type == "asymmetric":
            assert torch.equal(noisy[k].y[changed], (clean[k].y[changed] + 1) % 4)
    assert torch.equal(clean["test"].y, noisy["test"].y)  # test labels always clean


def test_corrupt_val_false_keeps_val_clean_and_train_unchanged():
    clean = small_cls().load()
    on = small_cls(label_noise=0.4).load()
    off = small_cls(label_noise=0.4, corrupt_val=False).load()
    assert torch.equal(off["val"].y, clean["val"].y) and not torch.equal(on["val"].y, clean["val"].y)
    assert torch.equal(off["train"].y, on["train"].y)


def test_flip_y_corrupts_train_and_val_labels_but_never_test_labels():
    clean = small_cls().load()
    noisy = small_cls(flip_y=0.5).load()
    kept = small_cls(flip_y=0.5, corrupt_val=False).load()
    assert torch.equal(noisy["test"].y, clean["test"].y)  # scikit-learn's own flip_y would change these
    for split in ("train", "val", "test"):
        assert torch.equal(noisy[split].x, clean[split].x)  # the same rows in the same splits
    # A random class (any of the 4, its own included): about 0.5 * 3/4 of the labels change.
    changed = (noisy["train"].y != clean["train"].y).float().mean().item()
    assert 0.3 < changed < 0.45
    assert not torch.equal(noisy["val"].y, clean["val"].y) and torch.equal(kept["val"].y, clean["val"].y)
    assert torch.equal(kept["train"].y, noisy["train"].y)
    # Part of the data: the same rows flip whatever the run's seed.
    other_seed = (small_cls(flip_y=0.5, split_seed=3).load(), small_cls(split_seed=3).load())
    assert torch.equal(other_seed[0]["test"].y, other_seed[1]["test"].y)


def test_task_outliers():
    clean = small_reg(n_samples=10_000).load()
    noisy = small_reg(n_samples=10_000, outlier_fraction=0.2, outlier_scale=5.0).load()
    for k in ("train", "val"):
        diff = noisy[k].y - clean[k].y
        hit = diff != 0
        assert abs(hit.float().mean().item() - 0.2) < 0.002
        assert abs(diff[hit].std().item() - 5.0) < 0.5  # in target-std units (targets are standardised)
    assert torch.equal(clean["test"].y, noisy["test"].y)
    off = small_reg(n_samples=10_000, outlier_fraction=0.2, corrupt_val=False).load()
    assert torch.equal(off["val"].y, clean["val"].y)


def test_outliers_scale_with_raw_target_std_when_not_standardised():
    clean = small_reg(n_samples=10_000, standardize_target=False).load()
    noisy = small_reg(n_samples=10_000, standardize_target=False, outlier_fraction=0.5, outlier_scale=2.0).load()
    diff = (noisy["train"].y - clean["train"].y).double()
    ratio = diff[diff != 0].std() / clean["train"].y.double().std()
    assert abs(ratio.item() - 2.0) < 0.15


# --- info -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, expected",
    [
        (lambda: SklearnTask(dataset="digits"), ("digits", "logits", 64, 10)),
        (lambda: SklearnTask(dataset="breast_cancer"), ("breast_cancer", "logits", 30, 2)),
        (lambda: SklearnTask(dataset="wine"), ("wine", "logits", 13, 3)),
        (lambda: SklearnTask(dataset="diabetes"), ("diabetes", "value", 10, None)),
        (lambda: small_cls(n_features=7, n_informative=3), ("synthetic_classification", "logits", 7, 4)),
        (lambda: small_reg(n_features=5, n_informative=2), ("synthetic_regression", "value", 5, None)),
        (lambda: SklearnTask(dataset="wine", name="mine"), ("mine", "logits", 13, 3)),
    ],
)
def test_info(task, expected):
    info = task().info  # info loads lazily
    assert (info.name, info.output_kind, info.input_dim, info.num_classes) == expected


def test_regression_split_dtype():
    s = SklearnTask(dataset="diabetes").load()
    assert s["train"].y.dtype == torch.float32 and s["train"].y.shape == (len(s["train"]),)


def test_synthetic_data_seed_fixes_data_split_seed_moves_it():
    a = small_cls(split_seed=0, standardize=False).load()
    b = small_cls(split_seed=1, standardize=False).load()
    c = small_cls(data_seed=1, standardize=False).load()
    rows = lambda s: {tuple(r) for k in s for r in s[k].x.tolist()}  # noqa: E731
    assert not torch.equal(a["train"].x, b["train"].x)
    assert rows(a) == rows(b) and not rows(a) & rows(c)


def test_tasks_import_neither_lightning_nor_mlflow_nor_eager_data_libraries():
    import subprocess

    heavy = ("pytorch_lightning", "lightning", "mlflow", "sklearn", "pandas")
    code = f"import sys, rmlab.tasks; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- files ----------------------------------------------------------------------------------------------------------


def frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.integers(0, 5, size=n),
            "label": np.array(["cat", "ant", "bee"])[np.arange(n) % 3],
        }
    )


def test_csv_happy_path_maps_string_labels(tmp_path):
    path = tmp_path / "data.csv"
    frame().to_csv(path, index=False)
    task = FileTask(path=str(path), target="label")
    s = task.load()
    assert task.classes == ["ant", "bee", "cat"]
    assert task.info.num_classes == 3 and task.info.input_dim == 2 and task.info.name == "data"
    assert sum(len(v) for v in s.values()) == 60
    # Mapping follows sorted order: every row's label index names its original string.
    raw = FileTask(path=str(path), target="label", standardize=False, features=["b", "a"]).load()
    df = frame()
    for x, y in zip(raw["test"].x.tolist(), raw["test"].y.tolist()):
        match = df[(df.a.astype("float32") == np.float32(x[1])) & (df.b == x[0])]
        assert match.label.iloc[0] == ["ant", "bee", "cat"][y]


def test_parquet_regression_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frame().to_parquet(tmp_path / "d.pq")
    task = FileTask(path="d.pq", target="a", features=["b"], kind="regression", outlier_fraction=0.1)
    monkeypatch.chdir("/")  # resolved at construction
    info = task.info
    assert (info.output_kind, info.input_dim, info.num_classes) == ("value", 1, None)
    frame().to_parquet(tmp_path / "d.parquet")
    assert FileTask(path=str(tmp_path / "d.parquet"), target="label").info.num_classes == 3


def write(tmp_path, text: str, name: str = "bad.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, kw, match",
    [
        ("", {}, r"bad\.csv: the file is empty"),
        ("x,y\n", {}, r"bad\.csv: the file has no rows"),
        ("x,z\n1,2\n", {}, r"target column 'y' not found; available columns: x, z"),
        ("x,y\n1,0\n", {"features": ["x", "w"]}, r"feature column\(s\) 'w' not found; available columns: x, y"),
        ("x,y\n1,0\nabc,1\n2,0\n", {}, r"feature column 'x' has 1 non-numeric values, e.g. 'abc'"),
        ("x,y\n1,0\n,1\nnan,0\n", {}, r"feature column 'x' has 2 missing values"),
        ("x,y\n1,0\n2,\n", {}, r"target column 'y' has 1 missing values"),
        ("x,y\n" + "1,a\n" * 20, {}, r"single class \('a'\)"),
        ("x,y\n1,a\n2,b\n3,a\n", {}, r"bad\.csv: too few rows to split: 3 rows"),
        ("x,y\n1,a\n", {"kind": "regression"}, r"target column 'y' has 1 non-numeric values, e.g. 'a'"),
        ("x,y\ninf,1\n", {}, r"feature column 'x' has 1 infinite values"),
        ("y\n1\n2\n", {}, r"no feature columns"),
        # pandas would rename the second x to x.1 and train on it: refused, naming the column
        ("x,x,y\n1,2,0\n3,4,1\n", {}, r"column name\(s\) 'x' appear more than once in the header"),
        ("x,y\n1,0\n" + "9" * 400 + ",1\n2,0\n", {}, r"feature column 'x' holds a number too large for a float in "
                                                       r"data row 2 \(9999.*, 400 characters\)"),
    ],
)
def test_file_data_errors(tmp_path, text, kw, match):
    task = FileTask(path=write(tmp_path, text), target="y", **kw)
    with pytest.raises(DataError, match=match):
        task.load()


def test_file_path_errors(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: file not found .*relative paths resolve against"):
        FileTask(path=str(tmp_path / "nope.csv"), target="y")
    with pytest.raises(DataError, match=r"data\.txt: unknown file extension '\.txt'; valid: \.csv, \.parquet, \.pq"):
        FileTask(path=write(tmp_path, "x,y\n", "data.txt"), target="y")
    with pytest.raises(DataError, match="could not be read as parquet"):
        FileTask(path=write(tmp_path, "not parquet", "x.parquet"), target="y").load()


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"features": "x"}, "task.features must be null or a non-empty list"),
        ({"features": []}, "task.features must be null or a non-empty list"),
        ({"features": ["y"]}, "must not contain the target column 'y'"),
        ({"features": ["x", "x"]}, "lists a column twice"),
        ({"kind": "ranking"}, "task.kind must be one of classification, regression, got 'ranking'"),
        ({"target": ""}, "task.target must be a column name"),
    ],
)
def test_file_config_errors(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        FileTask(**{"path": write(tmp_path, "x,y\n1,0\n"), "target": "y", **kw})


# --- validation of common and task-specific parameters --------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"label_noise": 1.5}, r"task.label_noise must be in \[0, 1\), got 1.5"),
        ({"label_noise": -0.1}, r"task.label_noise must be in \[0, 1\), got -0.1"),
        ({"label_noise": 1.0}, r"task.label_noise must be in \[0, 1\)"),
        ({"noise_type": "pair"}, "task.noise_type must be one of symmetric, asymmetric, got 'pair'"),
        ({"val_fraction": 0.0}, r"task.val_fraction must be in \(0, 1\), got 0.0"),
        ({"test_fraction": 1.2}, r"task.test_fraction must be in \(0, 1\), got 1.2"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ task.test_fraction must be < 1"),
        ({"batch_size": 0}, "task.batch_size must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "task.batch_size must be an integer >= 1, got 2.5"),
        ({"split_seed": -1}, "task.split_seed must be an integer >= 0, got -1"),
        ({"standardize": "yes"}, "task.standardize must be true or false, got 'yes'"),
        ({"corrupt_val": 1}, "task.corrupt_val must be true or false"),
        ({"outlier_fraction": 0.1}, "task.outlier_fraction must be 0 on a classification task.*task.label_noise"),
        ({"standardize_target": False}, "task.standardize_target applies to regression targets only"),
        ({"name": ""}, "task.name must be a non-empty string"),
        ({"dataset": "iris"}, "task.dataset must be one of digits, breast_cancer, wine, diabetes, got 'iris'"),
    ],
)
def test_common_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        SklearnTask(**{"dataset": "wine", **kw})


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"label_noise": 0.2}, "task.label_noise must be 0 on a regression task.*task.outlier_fraction"),
        ({"outlier_fraction": 1.0}, r"task.outlier_fraction must be in \[0, 1\), got 1.0"),
        ({"outlier_scale": 0}, "task.outlier_scale must be > 0, got 0"),
        ({"outlier_scale": float("nan")}, "task.outlier_scale must be > 0"),
        ({"noise": -1.0}, "task.noise must be >= 0"),
        ({"n_informative": 30}, r"task.n_informative must be <= task.n_features \(20\), got 30"),
        ({"n_samples": 3}, "too few rows to split: 3 rows"),
        ({"data_seed": -2}, "task.data_seed must be an integer >= 0"),
    ],
)
def test_regression_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        SyntheticRegression(**kw)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"n_classes": 1}, "task.n_classes must be an integer >= 2, got 1"),
        ({"n_classes": 5, "n_informative": 2}, "task.n_classes=5 needs task.n_informative >= 4"),
        ({"class_sep": -1.0}, "task.class_sep must be >= 0"),
        ({"flip_y": 1.0}, r"task.flip_y must be in \[0, 1\)"),
        ({"n_features": 0}, "task.n_features must be an integer >= 1"),
    ],
)
def test_synthetic_classification_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        SyntheticClassification(**kw)


def test_unknown_key_is_rejected():
    with pytest.raises(TypeError, match="label_nosie"):
        SklearnTask(dataset="wine", label_nosie=0.1)


# --- YAML configs ---------------------------------------------------------------------------------------------------


def task_yaml(name: str, seed: int = 0, **overrides):
    cfg = OmegaConf.create({"task": OmegaConf.load(CONF / f"{name}.yaml"), "seed": seed})
    for k, v in overrides.items():
        cfg.task[k] = v
    return cfg.task


# Sequence tasks have their own config tests: test_sequence_tasks.py (rmlab.tasks.sequence) and
# test_preference_training.py (rmlab.tasks.sequence_preference).
YAMLS = sorted(p.stem for p in CONF.glob("*.yaml") if not OmegaConf.load(p)._target_.startswith(
    ("rmlab.tasks.sequence.", "rmlab.tasks.sequence_preference.")))


def test_expected_yamls_exist():
    expected = {"digits", "breast_cancer", "wine", "diabetes", "csv"}
    expected |= {"synthetic_classification", "synthetic_regression"}
    assert expected <= set(YAMLS)


@pytest.mark.parametrize("name", [n for n in YAMLS if n not in ("csv", "preference_file")])
def test_yaml_instantiates_and_loads(name):
    cfg = task_yaml(name, seed=5)
    assert list(cfg.keys())[:2] == ["name", "_target_"] and cfg.name == name
    task = instantiate(cfg)
    assert task.split_seed == 5 and task.name == name
    assert set(task.load()) == {"train", "val", "test"}
    no_name = OmegaConf.to_container(cfg, resolve=True)
    del no_name["name"]
    assert instantiate(no_name).info == task.info


def test_csv_yaml_instantiates(tmp_path):
    path = tmp_path / "t.csv"
    frame().to_csv(path, index=False)
    cfg = task_yaml("csv")
    assert OmegaConf.is_missing(cfg, "path") and OmegaConf.is_missing(cfg, "target")
    task = instantiate(task_yaml("csv", path=str(path), target="label", features=["a", "b"]))
    assert task.info.num_classes == 3 and task.info.name == "csv"


@pytest.mark.parametrize("name", YAMLS)
def test_yaml_keys_are_parameters_with_matching_defaults(name):
    """No dead options: every YAML key is a constructor parameter, and its default agrees with the code's."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cls = instantiate({"_target_": "hydra.utils.get_class", "path": cfg._target_})
    params = {**inspect.signature(Task.__init__).parameters, **inspect.signature(cls.__init__).parameters}
    for key in cfg:
        if key == "_target_":
            continue
        assert key in params, f"{name}.yaml: {key} is not a parameter of {cls.__name__}"
        default = params[key].default
        if key not in ("name", "split_seed") and default is not inspect.Parameter.empty:
            assert cfg[key] == default, f"{name}.yaml: {key}={cfg[key]!r} but the code default is {default!r}"
