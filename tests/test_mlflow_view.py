"""What a user sees of a run in MLflow: the epoch axis, the metric names, the datasets, the user and git tags, params as
typed, the default experiment, the logged model; checked through what the store holds."""

import json
import shutil
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from rmlab.errors import ConfigError
from rmlab.run import SELECTION_KEYS, train
from rmlab.tracking import run_page_url, typed_params
from tests.conftest import FAST, compose_config


def stored_run(workdir, run_id):
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    return client, client.get_run(run_id)


def test_epoch_axis_has_one_point_per_epoch_and_none_for_the_test(workdir):
    results = train(compose_config(*FAST, "task=wine", "trainer.max_epochs=3", "logger.log_model=false"))
    client, run = stored_run(workdir, results["run_id"])
    epochs = client.get_metric_history(run.info.run_id, "epoch")
    val = client.get_metric_history(run.info.run_id, "val/loss")
    # One point per epoch, numbered as Lightning does (0..N-1), at the steps where train and val values were logged.
    assert [m.value for m in epochs] == [0, 1, 2]
    assert [m.step for m in epochs] == [m.step for m in val] == sorted({m.step for m in epochs})
    assert [m.step for m in epochs] == [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    # The test values sit at the last step, with no extra epoch point there or after.
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test/loss")] == [epochs[-1].step]
    assert run.data.metrics["epoch"] == 2


def test_timings_are_not_charted_first_and_the_clock_time_is_a_tag(workdir):
    results = train(compose_config(*FAST, "task=wine", "logger.log_model=false"))
    _, run = stored_run(workdir, results["run_id"])
    metrics = set(run.data.metrics)
    # MLflow's UI sorts chart sections by the prefix before "/"; "perf/" came before "train/" and "val/". Without a
    # prefix they go in the last section.
    assert {"perf_fit_s", "perf_train_samples_per_s"} <= metrics
    assert not [m for m in metrics if m.startswith("perf/") or "unix" in m]
    assert float(run.data.tags["rmlab.first_step_unix"]) > 1.6e9


def test_datasets_are_logged_per_split_with_source_digest_and_corruption(workdir):
    noisy = train(compose_config(*FAST, "task=wine", "task.label_noise=0.3", "trainer.max_epochs=1",
                                 "logger.log_model=false"))
    clean = train(compose_config(*FAST, "task=wine", "trainer.max_epochs=1", "logger.log_model=false"))
    client, run = stored_run(workdir, noisy["run_id"])
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"}
    assert {i.tags[0].key for i in run.inputs.dataset_inputs} == {"mlflow.data.context"}
    profiles = {split: json.loads(d.profile) for split, d in inputs.items()}
    assert sum(p["rows"] for p in profiles.values()) == 178  # wine's rows, split three ways
    assert profiles["train"]["split_sizes"] == {s: p["rows"] for s, p in profiles.items()}
    assert profiles["train"]["label_noise"] == 0.3 and profiles["train"]["corrupted"]
    assert profiles["val"]["corrupted"] and not profiles["test"]["corrupted"]  # corrupt_val=true; test stays clean
    train_set = inputs["train"]
    assert train_set.name == "wine" and train_set.source_type == "code"
    assert json.loads(train_set.source)["tags"]["dataset"] == "wine"
    assert "tensorspec" in train_set.schema
    # The noise changed the train labels (so the digest) but not the clean test split.
    _, other = stored_run(workdir, clean["run_id"])
    other_inputs = {i.tags[0].value: i.dataset for i in other.inputs.dataset_inputs}
    assert other_inputs["train"].digest != train_set.digest
    assert other_inputs["test"].digest == inputs["test"].digest


def test_a_user_file_is_the_dataset_source(workdir):
    rows = ["a,b,label"] + [f"{i % 7},{(i * 3) % 5},{i % 2}" for i in range(60)]
    (workdir / "mine.csv").write_text("\n".join(rows) + "\n")
    results = train(compose_config(*FAST, "task=csv", "task.path=mine.csv", "task.target=label",
                                   "trainer.max_epochs=1", "logger.log_model=false"))
    _, run = stored_run(workdir, results["run_id"])
    dataset = run.inputs.dataset_inputs[0].dataset
    assert dataset.name == "mine.csv" and dataset.source_type == "local"
    assert json.loads(dataset.source) == {"uri": str(workdir / "mine.csv")}


def test_user_tag_and_a_git_chip_only_inside_a_repository(workdir):
    results = train(compose_config(*FAST, "task=wine", "trainer.max_epochs=1", "logger.log_model=false"))
    _, run = stored_run(workdir, results["run_id"])
    assert run.data.tags["mlflow.user"]
    assert "mlflow.source.git.commit" not in run.data.tags  # not a repository: no chip reading "unknown"
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=workdir, check=True)
    (workdir / "note.txt").write_text("x")
    subprocess.run([*git, "add", "note.txt"], cwd=workdir, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=workdir, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True).stdout.strip()
    results = train(compose_config(*FAST, "task=wine", "trainer.max_epochs=1", "logger.log_model=false"))
    _, run = stored_run(workdir, results["run_id"])
    assert run.data.tags["mlflow.source.git.commit"] == head


def test_floats_in_params_read_as_typed():
    params = {"optimizer.lr": "0.0001", "loss.delta": "1e-05", "seed": "3", "task.label_noise": "0.2",
              "model.hidden_sizes": "[128, 128]"}
    typed = typed_params(params, ["optimizer.lr=1e-4", "+loss.delta=1e-5", "seed=03", "task.label_noise=0.2",
                                  "model.hidden_sizes=[128,128]", "trainer.max_epochs=5"])
    assert typed == {**params, "optimizer.lr": "1e-4", "loss.delta": "1e-5"}
    # A typed value that is a different number never replaces the stored one.
    assert typed_params({"optimizer.lr": "0.001"}, ["optimizer.lr=1e-4"]) == {"optimizer.lr": "0.001"}


def test_default_experiment_is_the_task_and_experiment_wins():
    assert compose_config().experiment == "digits"
    assert compose_config("task=synthetic_preference").experiment == "synthetic_preference"
    assert compose_config("task=wine", "experiment=study").experiment == "study"


@pytest.mark.parametrize("override, message", [
    ("logger.log_model=maybe", "logger.log_model must be true or false"),
    ("logger.register_as=a/b", "logger.register_as must be null or a model name"),
    ("logger.register_as=''", "logger.register_as must be null or a model name"),
])
def test_model_logging_keys_are_checked(workdir, override, message):
    with pytest.raises(ConfigError, match=message):
        train(compose_config(*FAST, override))
    assert not (workdir / "mlflow.db").exists()  # refused before anything was created


def test_registering_needs_a_logged_model(workdir):
    with pytest.raises(ConfigError, match="logger.log_model=false logs none"):
        train(compose_config(*FAST, "logger.log_model=false", "logger.register_as=m"))


def test_the_run_holds_its_tested_model_linked_with_the_test_metrics(workdir):
    # A store that is not MLflow's default (./mlflow.db): registering must not depend on MLflow's global store.
    store = f"sqlite:///{workdir / 'elsewhere.db'}"
    results = train(compose_config(*FAST, "task=wine", "trainer.max_epochs=2", "logger.register_as=wine-mlp",
                                   f"logger.tracking_uri={store}"))
    assert not (workdir / "mlflow.db").exists()
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    run = client.get_run(results["run_id"])
    [output] = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert model.name == "model" and model.source_run_id == run.info.run_id and model.status == "READY"
    assert {m.key: m.value for m in model.metrics} == pytest.approx(
        {k: v for k, v in results.items() if k.startswith("test/") or k in SELECTION_KEYS})
    assert {"test/reward", "val/selected_reward"} <= {m.key for m in model.metrics}
    # Linking the metrics to the model left the run's own history with one test point.
    assert len(client.get_metric_history(run.info.run_id, "test/reward")) == 1
    [version] = client.search_model_versions("name = 'wine-mlp'")
    assert version.run_id == run.info.run_id and version.source == model.artifact_location


def test_the_result_links_the_run_page_in_the_model_training_view(workdir, capsys):
    results = train(compose_config(*FAST, "task=wine", "trainer.max_epochs=1", "logger.log_model=false"))
    _, run = stored_run(workdir, results["run_id"])
    page = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert f"run page     {page}?workflowType=machine_learning" in capsys.readouterr().out
    assert run_page_url("http://mlflow.lab:8080/", "3", "abc") == (
        "http://mlflow.lab:8080/#/experiments/3/runs/abc?workflowType=machine_learning")
    assert run_page_url("postgresql://db/mlflow", "3", "abc") is None


def test_a_sweep_value_reads_as_typed():
    # Hydra hands a sweep job its value rewritten (0.0001); the sweep's own override still has the typed text.
    params = {"optimizer.lr": "0.0001", "loss.q": "0.7"}
    overrides = ["optimizer.lr=0.0001", "loss.q=0.7", "optimizer.lr=1e-3,1e-4", "loss.q=choice(0.5,0.7)"]
    assert typed_params(params, overrides) == {"optimizer.lr": "1e-4", "loss.q": "0.7"}


def test_text_example_splits_are_described_as_tables():
    from mlflow.data.code_dataset_source import CodeDatasetSource

    from rmlab.lineage import _described
    from rmlab.sequence import TextExample

    split = [TextExample("2+2=", "4", {"answer": 4}), TextExample("1+1=", "2")]
    described, shapes = _described(split, "arithmetic", CodeDatasetSource({}))
    assert shapes == {"columns": ["prompt", "completion", "meta"]} and "mlflow_colspec" in described["schema"]
    other, _ = _described(split[:1], "arithmetic", CodeDatasetSource({}))
    assert other["digest"] != described["digest"]
