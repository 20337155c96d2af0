"""``init_from``: a run starts from an earlier run's best weights (by MLflow run id, output folder or checkpoint file),
for every output kind; a source that cannot be used is one line and exit code 2 before any run exists."""

import re
import subprocess
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from rmlab.build import build_components
from rmlab.errors import ConfigError
from rmlab.run import train
from rmlab.validate import validate_config
from tests.conftest import FAST, PYTHON, cli_env, compose_config
from tests.test_sequence_training import TINY

TABULAR = [*FAST, "task=wine", "model.hidden_sizes=[16]"]


def checkpoint_of(run_id: str, workdir: Path) -> Path:
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    return Path(client.download_artifacts(run_id, "checkpoints/best.ckpt", str(workdir)))


def model_weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)["state_dict"]
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def run_count(workdir: Path) -> int:
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    return sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())


@pytest.fixture
def tabular_run(workdir):
    """A finished wine run whose best checkpoint is an artifact (and in its output folder)."""
    return train(compose_config(*TABULAR, "logger.log_checkpoint=true"))


def test_a_tabular_run_starts_from_an_earlier_runs_weights_by_id_folder_or_file(workdir, tabular_run):
    run_id = tabular_run["run_id"]
    file = checkpoint_of(run_id, workdir)
    expected = model_weights(file)
    folder = Path(MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}").get_run(run_id)
                  .data.tags["rmlab.output_dir"])
    assert (folder / "checkpoints" / "best.ckpt").is_file()
    for source in (run_id, str(folder), str(file)):
        parts = build_components(compose_config(*TABULAR, f"init_from={source}"))
        loaded = parts.model.state_dict()
        assert loaded.keys() == expected.keys()
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), source
    fresh = build_components(compose_config(*TABULAR)).model.state_dict()
    assert not all(torch.equal(fresh[k], expected[k]) for k in expected)  # the comparison can fail

    # The run records its source.
    results = train(compose_config(*TABULAR, f"init_from={run_id}", "trainer.max_epochs=1"))
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(results["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["rmlab.init_from"] == f"run {run_id}"
    assert "rmlab.init_from" not in client.get_run(run_id).data.tags


def test_a_run_without_the_artifact_is_found_through_its_output_folder(workdir):
    # logger.log_checkpoint=false: no artifact; logger.log_model=false: no logged model to fall back on either
    plain = train(compose_config(*TABULAR, "logger.log_model=false"))
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    folder = Path(client.get_run(plain["run_id"]).data.tags["rmlab.output_dir"])
    parts = build_components(compose_config(*TABULAR, f"init_from={plain['run_id']}"))
    expected = model_weights(folder / "checkpoints" / "best.ckpt")
    assert all(torch.equal(parts.model.state_dict()[k], v) for k, v in expected.items())
    (folder / "checkpoints" / "best.ckpt").unlink()
    with pytest.raises(ConfigError, match=f"init_from={plain['run_id']}: the run has no checkpoints/best.ckpt "
                                          r"artifact \(run it with logger.log_checkpoint=true"):
        build_components(compose_config(*TABULAR, f"init_from={plain['run_id']}"))


def test_sources_that_cannot_be_used_are_start_up_errors(workdir, tabular_run):
    run_id = tabular_run["run_id"]
    file = checkpoint_of(run_id, workdir)
    not_torch = workdir / "notes.ckpt"
    not_torch.write_text("hello")
    needs_code = workdir / "code.ckpt"
    torch.save({"state_dict": {"model.x": torch.zeros(1)}, "extra": Path("x")}, needs_code)
    no_model = workdir / "no_model.ckpt"
    torch.save({"state_dict": {"loss_fn.w": torch.zeros(1)}}, no_model)
    hand_made = workdir / "hand_made.ckpt"  # no model config inside: checked by its tensors
    torch.save({"state_dict": {f"model.{k}": v[..., :3] if v.dim() == 2 else v
                               for k, v in model_weights(file).items()}}, hand_made)
    empty = workdir / "empty_run"
    empty.mkdir()
    cases = [
        (TABULAR, "/no/such/place", "init_from=/no/such/place: no such file or folder, and not an MLflow run id"),
        (TABULAR, "0" * 32, f"init_from={'0' * 32}: no run with this id in the MLflow store"),
        (TABULAR, str(not_torch), "is not a checkpoint torch can load with weights_only=True"),
        (TABULAR, str(needs_code), "is not a checkpoint torch can load with weights_only=True"),
        (TABULAR, str(no_model), "the checkpoint holds no model weights"),
        (TABULAR, str(empty), "the folder has no checkpoints/best.ckpt"),
        ([*TABULAR, "model.hidden_sizes=[8]"], run_id,
         f"init_from={run_id}: the model differs from run {run_id}'s: model.hidden_sizes=[16] (here [8])"),
        ([*FAST, "task=wine", "model=linear"], str(file), "trained model=mlp, this run builds model=linear"),
        ([*TABULAR, "model.dropout=0.5"], run_id, "weights do not fit this model (missing there: net.3.weight, "
                                                  "net.3.bias; not in this model: net.2.weight, net.2.bias) (model "
                                                  "settings that differ: model.dropout=0.0 (here 0.5))"),
        ([*TABULAR, "task=breast_cancer"], run_id, f"run {run_id}'s weights do not fit this model (shapes differ: "),
        (TABULAR, str(hand_made), "weights do not fit this model (shapes differ: net.0.weight (16, 3) there, "
                                  "(16, 13) here"),
    ]
    elsewhere = workdir / "other" / "mlflow.db"
    cases.append(([*TABULAR, f"logger.tracking_uri=sqlite:///{elsewhere}"], run_id,
                  f"init_from={run_id}: no MLflow store at {elsewhere} to look the run up in"))
    before = run_count(workdir)
    for overrides, source, message in cases:
        with pytest.raises(ConfigError) as caught:
            train(compose_config(*overrides, f"init_from={source}"))
        assert message in str(caught.value) and "\n" not in str(caught.value), source
    assert run_count(workdir) == before  # nothing was recorded
    assert not elsewhere.exists() and not elsewhere.parent.exists()  # and no store was created


def test_a_language_model_checks_its_shape_deciding_keys(workdir):
    sft = train(compose_config(*TINY, "trainer.max_epochs=1", "logger.log_checkpoint=true"))
    with pytest.raises(ConfigError, match=r"the model differs from run \w+'s: model.width=64 \(here 32\), "
                                          r"model.heads=4 \(here 2\)"):
        build_components(compose_config(*TINY, f"init_from={sft['run_id']}", "model.width=32", "model.heads=2"))
    parts = build_components(compose_config(*TINY, f"init_from={sft['run_id']}", "model.dropout=0.2"))
    expected = model_weights(checkpoint_of(sft["run_id"], workdir))
    assert all(torch.equal(parts.model.state_dict()[k], v) for k, v in expected.items())


@pytest.mark.parametrize("value,message", [
    ("123", "init_from must be null (fresh weights), an MLflow run id"),
    ("''", "init_from must be null"),
])
def test_init_from_values_are_validated(value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(compose_config(f"init_from={value}"))


@pytest.mark.slow
def test_command_line_refuses_an_incompatible_model_in_one_line_with_exit_code_2(workdir, tabular_run):
    run_id = tabular_run["run_id"]
    before = run_count(workdir)
    done = subprocess.run([PYTHON, "-m", "rmlab", *TABULAR[:-1], "model.hidden_sizes=[8]", f"init_from={run_id}"],
                          cwd=workdir, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [  # no download progress bar around it
        f"rmlab: error: init_from={run_id}: the model differs from run {run_id}'s: model.hidden_sizes=[16] (here [8]); "
        "use the same model settings (only dropout may differ)"]
    assert run_count(workdir) == before


def test_a_hugging_face_model_may_change_its_dropout_overrides_only(workdir):
    pytest.importorskip("transformers")
    hf = [o for o in TINY if not o.startswith("model.")] + [
        "model=hf_causal_lm", "model.config=gpt2", "model.width=16", "model.depth=1", "model.heads=2",
        "model.max_length=16", "logger=none"]
    train(compose_config(*hf, "trainer.max_epochs=1", "trainer.limit_train_batches=1"))
    file = next(workdir.rglob("best.ckpt"))
    parts = build_components(compose_config(*hf, f"init_from={file}", "+model.overrides.resid_pdrop=0.2"))
    expected = model_weights(file)
    assert all(torch.equal(parts.model.state_dict()[k], v) for k, v in expected.items())
    with pytest.raises(ConfigError, match=re.escape("model.overrides.n_inner=None (here 32)")):
        build_components(compose_config(*hf, f"init_from={file}", "+model.overrides.n_inner=32"))


def test_a_sweep_parent_gives_each_seed_its_own_childs_weights(workdir):
    """init_from=<a sweep's parent run id>: each job starts from the sweep's finished child with its own seed."""
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    children = {seed: train(compose_config(*TABULAR, "logger.log_checkpoint=true", f"seed={seed}"))["run_id"]
                for seed in (0, 1)}
    experiment = client.get_run(children[0]).info.experiment_id
    parent = client.create_run(experiment, tags={"rmlab.role": "parent"}).info.run_id
    for child in children.values():
        client.set_tag(child, "mlflow.parentRunId", parent)
    # A FAILED job of seed 1 (a first try) beside the finished one is not a candidate.
    failed = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
    client.log_param(failed, "seed", "1")
    client.set_terminated(failed, "FAILED")
    for seed, child in children.items():
        parts = build_components(compose_config(*TABULAR, f"init_from={parent}", f"seed={seed}"))
        expected = model_weights(checkpoint_of(child, workdir))
        assert all(torch.equal(parts.model.state_dict()[k], v) for k, v in expected.items()), seed
        assert parts.init_from == f"run {child} (seed {seed} of sweep {parent})"
    with pytest.raises(ConfigError, match=rf"init_from={parent}: the sweep \(parent run\) has no finished child run "
                                          r"with seed=5 \(finished children's seeds: 0, 1\)"):
        build_components(compose_config(*TABULAR, f"init_from={parent}", "seed=5"))
    # A re-run sweep whose job reused a finished run: the copy holds no weights, the run it reused does.
    rerun = client.create_run(experiment, tags={"rmlab.role": "parent"}).info.run_id
    copy = client.create_run(experiment, tags={"mlflow.parentRunId": rerun,
                                               "rmlab.reused_from": children[1]}).info.run_id
    client.log_param(copy, "seed", "1")
    client.set_terminated(copy, "FINISHED")
    parts = build_components(compose_config(*TABULAR, f"init_from={rerun}", "seed=1"))
    expected = model_weights(checkpoint_of(children[1], workdir))
    assert all(torch.equal(parts.model.state_dict()[k], v) for k, v in expected.items())
    assert parts.init_from == f"run {copy} (seed 1 of sweep {rerun})"
    # A sweep that varied more than the seed: two children with seed 0 is ambiguous.
    other = train(compose_config(*TABULAR, "logger.log_checkpoint=true", "optimizer.lr=0.01"))["run_id"]
    client.set_tag(other, "mlflow.parentRunId", parent)
    client.set_tag(other, "rmlab.overrides", "optimizer.lr=0.01 seed=0")
    with pytest.raises(ConfigError, match=r"has 2 finished child runs with seed=0 \(.*optimizer.lr=0.01 seed=0.*\)"
                                          r": it varied more than the seed; give one child's run id"):
        build_components(compose_config(*TABULAR, f"init_from={parent}"))
    # What a sweep checks once before its jobs: the parent exists and has a finished child; an empty one fails.
    from rmlab.init_from import check_source
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    check_source(parent, uri)
    empty = client.create_run(experiment, tags={"rmlab.role": "parent"}).info.run_id
    with pytest.raises(ConfigError, match=rf"init_from={empty}: the sweep \(parent run\) has no finished child run"):
        check_source(empty, uri)
    # A parent is no reward model either (the reward's lookup has no seed to pick a child by).
    from rmlab.init_from import resolve
    with pytest.raises(ConfigError, match="the run is a sweep's parent, which holds no weights"):
        resolve(parent, f"sqlite:///{workdir / 'mlflow.db'}")
