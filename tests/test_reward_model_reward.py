"""A trained text reward model as the reward of a language model (``reward=reward_model``), loaded by
``rmlab.init_from`` from a run id or a checkpoint: its scores equal the reward model's own (MLflow's pyfunc
model of the same run), a sequence run on the known-reward task logs it with the gold reward beside it, and every
bad ``init_from`` is a one-line start-up error that creates nothing."""

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from rmlab.build import build_components, instantiate
from rmlab.errors import ConfigError
from rmlab.init_from import resolve
from rmlab.models import KindHead
from rmlab.predict import _store, load
from rmlab.rewards import RewardModel
from rmlab.run import train
from rmlab.sequence import TextExample
from rmlab.tasks.sequence.review_gold import gold_score
from rmlab.tokenizer import batch_encode
from tests.conftest import PYTHON, cli_env, compose_config
from tests.lm_fixtures import reward_model_checkpoint

RM = ["task=review_preference", "task.n_pairs=300", "model=text_transformer", "model.width=32", "model.depth=1",
      "loss=bradley_terry", "reward=preference_accuracy", "trainer.max_epochs=2", "trainer.num_threads=1",
      "trainer.enable_progress_bar=false"]
POLICY = ["task=review_writing", "task.n_examples=60", "model=causal_lm", "model.width=32", "model.depth=1",
          "model.max_length=160", "generation.max_new_tokens=24", "generation.log_samples=64", "trainer.max_epochs=1",
          "trainer.num_threads=1", "trainer.enable_progress_bar=false"]
EXAMPLE = TextExample("review of the soup by Anna on Monday: ", "the soup was good", {"thing": "soup"})
TEXTS = ["the soup was very good", "the soup was awful but the staff was nice", "soup soup soup", " ",
         "the soup was not green and the pizza was quite tasty " * 6]  # the last is longer than max_length


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    """A tiny reward model trained on review_preference: (workdir, store URI, run id, local checkpoint path)."""
    workdir = tmp_path_factory.mktemp("rm")
    saved_cwd, saved_env = os.getcwd(), {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("MLFLOW_")}
    os.chdir(workdir)
    try:
        results = train(compose_config(*RM))
    finally:
        os.chdir(saved_cwd)
        os.environ.update(saved_env)
    checkpoint = next(workdir.glob("outputs/**/checkpoints/best.ckpt"))
    return workdir, f"sqlite:///{workdir / 'mlflow.db'}", results["run_id"], checkpoint


@pytest.fixture
def in_store(reward_run, monkeypatch):
    """Run in the reward run's folder (its store is the default one there)."""
    workdir = reward_run[0]
    monkeypatch.chdir(workdir)
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    return reward_run


def own_scores(store: str, run_id: str, texts: list[str]) -> list[float]:
    """The reward model's scores as its run's MLflow model gives them (``mlflow.pyfunc``, the served form)."""
    with _store(store):
        model = load(f"runs:/{run_id}/model", store)
    frame = pd.DataFrame({"response": texts})  # trained without prompts (review_preference's default)
    return model.predict(frame)["score"].tolist()


@pytest.mark.slow
def test_reward_model_scores_equal_the_trained_models_own(in_store):
    _, store, run_id, checkpoint = in_store
    texts = [t for t in TEXTS if t.strip()]  # the served model refuses blank text; the reward scores it
    expected = torch.tensor(own_scores(store, run_id, texts), dtype=torch.float32)
    by_id = RewardModel(init_from=run_id)
    by_path = RewardModel(init_from=str(checkpoint), batch_size=2)  # several batches
    for reward in (by_id, by_path):
        got = reward.score(texts, [EXAMPLE] * len(texts))
        assert got.dtype == torch.float32 and got.shape == (len(texts),)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert not any(p.requires_grad for p in reward.net.parameters()) and not reward.net.training
    assert by_id.source == f"run {run_id}" and by_path.source == str(checkpoint.resolve())
    assert by_id.score([], []).shape == (0,)
    # Trained without prompts, the model does not read them: another prompt gives the same scores.
    other = TextExample("review of the pizza by Leo on Friday: ", "x", {"thing": "pizza"})
    torch.testing.assert_close(by_id.score(texts, [other] * len(texts)), by_id.score(texts, [EXAMPLE] * len(texts)))


@pytest.mark.parametrize("prompt", [True, False])
def test_completions_are_encoded_as_the_reward_model_read_items_in_training(prompt, tmp_path):
    checkpoint = reward_model_checkpoint(tmp_path / "rm.ckpt", max_length=48, prompt=prompt)
    reward = RewardModel(init_from=str(checkpoint), batch_size=3)
    examples = [EXAMPLE, TextExample("review of the pizza by Leo on Friday: ", "x", {"thing": "pizza"})] * 3
    texts = TEXTS + ["the pizza was good"]
    found = resolve(str(checkpoint), None)
    head = KindHead(instantiate("model", found.spec["network"], input_dim=48, output_dim=1), "pair")
    head.load_state_dict(found.state_dict)
    head.eval()
    ids = batch_encode(texts, 48, [e.prompt for e in examples] if prompt else None)  # the pair tasks' encoding
    with torch.no_grad():
        expected = head.net(ids).squeeze(-1)
    torch.testing.assert_close(reward.score(texts, examples), expected)
    swapped = reward.score(texts, examples[1:] + examples[:1])
    # The prompt matters exactly when the model was trained with it.
    assert torch.allclose(swapped, expected, rtol=1e-5, atol=1e-6) != prompt


@pytest.mark.slow
def test_loader_reads_the_model_from_every_source(in_store):
    """The run id finds the checkpoint in the run's output folder; with that folder gone (another machine), the
    run's logged MLflow model; a checkpoint path is read directly. All give the same weights, spec and configs."""
    workdir, store, run_id, checkpoint = in_store
    by_id, by_path = resolve(run_id, store), resolve(str(checkpoint), None)
    aside = workdir / "elsewhere"
    checkpoint.parent.parent.rename(aside)  # the output folder the run's tag names is no longer there
    try:
        by_model = resolve(run_id, store)
        assert isinstance(RewardModel(init_from=run_id), RewardModel)
    finally:
        aside.rename(checkpoint.parent.parent)
    for found in (by_id, by_path, by_model):
        assert found.task_config["name"] == "review_preference" and found.model_config["width"] == 32
        assert found.spec["max_length"] == 128 and found.spec["prompt"] is False
        assert sorted(found.state_dict) == sorted(by_id.state_dict)
        assert all(k.startswith("net.") for k in found.state_dict)
        for key in by_id.state_dict:
            assert torch.equal(by_id.state_dict[key], found.state_dict[key])
    assert by_id.label == by_model.label == f"run {run_id}" and by_path.label == str(checkpoint.resolve())


@pytest.mark.slow
def test_sequence_run_scores_generations_with_the_reward_model_and_logs_the_gold_reward(in_store):
    workdir, store, run_id, _ = in_store
    results = train(compose_config(*POLICY, "reward=reward_model", f"reward.init_from={run_id}"))
    client = MlflowClient(store)
    run = client.get_run(results["run_id"])
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    local = Path(client.download_artifacts(run.info.run_id, "samples/test.json", str(workdir)))
    table = json.loads(local.read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert table["columns"] == ["prompt", "completion", "reference", "reward", "gold_reward"]
    assert len(rows) == 6  # every test prompt: log_samples is larger than the split
    examples = [TextExample(r["prompt"], r["reference"], {"thing": r["prompt"].split(" ")[3]}) for r in rows]
    completions = [r["completion"] for r in rows]
    # Recomputed independently: a fresh reward model on the logged completions, and the gold function.
    rescored = RewardModel(init_from=run_id).score(completions, examples)
    torch.testing.assert_close(torch.tensor([r["reward"] for r in rows]), rescored, rtol=1e-5, atol=1e-5)
    gold = [gold_score(e.meta["thing"], c) for e, c in zip(examples, completions)]
    assert [r["gold_reward"] for r in rows] == pytest.approx(gold)
    assert metrics["test/reward"] == pytest.approx(rescored.mean().item(), abs=1e-5)
    assert metrics["test/reward_model"] == metrics["test/reward"]
    assert metrics["test/gold_reward"] == pytest.approx(sum(gold) / len(gold))
    assert "val/gold_reward" in metrics
    # The language model's own checkpoint loads through the same loader (init_from of a policy), and is refused as
    # a reward model.
    checkpoint = max(workdir.glob("outputs/**/checkpoints/best.ckpt"), key=lambda p: p.stat().st_mtime)
    found = resolve(str(checkpoint), None)
    assert found.spec is None and found.task_config["name"] == "review_writing"
    lm = instantiate("model", found.model_config)
    lm.load_state_dict(found.state_dict)  # strict: every key of the language model, nothing else
    with pytest.raises(ConfigError, match=r"is not a text reward model \(its task=review_writing"):
        RewardModel(init_from=str(checkpoint))


@pytest.mark.slow
def test_combined_reward_logs_each_term_and_their_weighted_sum(in_store):
    _, store, run_id, _ = in_store
    terms = (f"reward.terms=[{{name: reward_model, weight: 1.0, init_from: {run_id}}}, "
             "{name: neg_length, weight: 0.01}, {name: format, weight: 0.5, label: starts_right, pattern: 'the .*'}]")
    results = train(compose_config(*POLICY, "reward=combined", terms))
    metrics = MlflowClient(store).get_run(results["run_id"]).data.metrics
    for split in ("val", "test"):
        total = (metrics[f"{split}/reward_model"] + 0.01 * metrics[f"{split}/neg_length"]
                 + 0.5 * metrics[f"{split}/starts_right"])
        assert metrics[f"{split}/reward"] == pytest.approx(total, abs=1e-5)
        assert metrics[f"{split}/combined"] == metrics[f"{split}/reward"]
        assert f"{split}/gold_reward" in metrics


# --- errors: one line, before anything is created ------------------------------------------------------------------


def test_bad_init_from_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cases = [
        ("0123456789abcdef0123456789abcdef", r"reward.init_from=0123456789abcdef0123456789abcdef: no MLflow store at "
                                             r".*mlflow.db to look the run up in"),
        ("no/such/best.ckpt", r"reward.init_from=no/such/best.ckpt: no such file or folder, and not an MLflow run "
                              r"id"),
        ("", r"reward.init_from must be an MLflow run id or a checkpoint path, got ''"),
        (None, r"reward.init_from is required"),
    ]
    for init_from, message in cases:
        with pytest.raises(ConfigError, match=message) as caught:
            RewardModel(init_from=init_from)
        assert "\n" not in str(caught.value)
    assert not (tmp_path / "mlflow.db").exists()  # looking a run up created no store
    not_torch = tmp_path / "notes.ckpt"
    not_torch.write_text("hello")
    with pytest.raises(ConfigError, match="reward.init_from=.*notes.ckpt is not a checkpoint torch can load"):
        RewardModel(init_from=str(not_torch))
    old = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"model.net.w": torch.zeros(1)}, "epoch": 0}, old)
    with pytest.raises(ConfigError, match=r"is not a text reward model \(its task=\? trains no scorer of texts: .* "
                                          r"or a checkpoint written before rmlab stored model specs\)"):
        RewardModel(init_from=str(old))
    tabular = tmp_path / "tabular.ckpt"
    torch.save({"state_dict": {"model.net.w": torch.zeros(1)}, "task_config": {"name": "synthetic_preference"},
                "spec": {"output_kind": "pair", "input_type": "features"}}, tabular)
    with pytest.raises(ConfigError, match=r"is not a text reward model \(its task=synthetic_preference trains a "
                                          r"'pair' model on 'features' inputs\)"):
        RewardModel(init_from=str(tabular))
    for key, value, message in (("batch_size", 0, "batch_size must be an integer"),
                                ("device", "tpu", "device must be one of cpu, cuda"),
                                ("tracking_uri", "", "tracking_uri must be null")):
        with pytest.raises(ConfigError, match=message):
            RewardModel(init_from=str(tabular), **{key: value})


def test_runs_that_hold_no_reward_model_are_refused(in_store):
    workdir, store, _, _ = in_store
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("review_preference").experiment_id
    empty = client.create_run(experiment).info.run_id
    client.set_terminated(empty, "FAILED")
    with pytest.raises(ConfigError, match=f"reward.init_from={empty}: the run has no checkpoints/best.ckpt artifact"):
        RewardModel(init_from=empty)
    with pytest.raises(ConfigError, match="reward.init_from=f{32}: no run with this id in the MLflow store"):
        RewardModel(init_from="f" * 32)


def test_a_language_model_run_is_not_a_reward_model(in_store):
    workdir = in_store[0]
    checkpoint = workdir / "lm.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1)}, "task_config": {"name": "reverse"}, "spec": None},
               checkpoint)
    cfg = compose_config(*POLICY, "reward=reward_model", f"reward.init_from={checkpoint}")
    with pytest.raises(ConfigError, match=r"is not a text reward model \(its task=reverse trains no scorer of texts"):
        build_components(cfg)


@pytest.mark.slow
def test_command_line_exits_2_with_one_line_and_creates_no_run(in_store):
    workdir, store, _, _ = in_store
    client = MlflowClient(store)
    before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    done = subprocess.run([PYTHON, "-m", "rmlab", *POLICY, "reward=reward_model", f"reward.init_from={'e' * 32}"],
                          cwd=workdir, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"reward.init_from={'e' * 32}: no run with this id in the MLflow store" in lines[0]
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == before
    assert not (workdir / "outputs" / "review_writing").exists()


@pytest.mark.slow
def test_policy_feedback_against_the_reward_model_logs_proxy_terms_and_gold_per_step(in_store):
    """feedback=grpo on review_writing optimises a combined reward (the reward model plus a length penalty): every
    logged step holds each term and the gold reward of the same sampled completions, and the optimised reward is
    the terms' weighted sum."""
    _, store, run_id, _ = in_store
    terms = (f"reward.terms=[{{name: reward_model, weight: 1.0, init_from: {run_id}}}, "
             "{name: neg_length, weight: 0.01}]")
    results = train(compose_config(*POLICY, "reward=combined", terms, "feedback=grpo", "feedback.num_samples=2",
                                   "feedback.max_new_tokens=8", "trainer.limit_train_batches=3",
                                   "trainer.log_every_n_steps=1", "task.batch_size=4"))
    client = MlflowClient(store)
    history = {name: {m.step: m.value for m in client.get_metric_history(results["run_id"], f"train/{name}")}
               for name in ("sampled_reward", "reward_model", "neg_length", "gold_reward")}
    assert len(history["sampled_reward"]) == 3
    for step, sampled in history["sampled_reward"].items():
        assert sampled == pytest.approx(history["reward_model"][step] + 0.01 * history["neg_length"][step], abs=1e-5)
        assert -2.0 <= history["gold_reward"][step] <= 1.5
        assert -8.0 <= history["neg_length"][step] <= 0  # at most 8 new byte tokens: at most 8 characters
