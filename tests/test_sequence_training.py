"""Language models trained through the real run (rmlab.run.train -> Lightning -> SequenceModule.training_step) on a
tiny sequence task, checked through what MLflow stored and against an independent re-computation."""

import json
import math
import subprocess

import pytest
import torch
from mlflow.tracking import MlflowClient

from rmlab.build import build_components
from rmlab.errors import ConfigError, IncompatibleError
from rmlab.language_models import CausalLM
from rmlab.run import train
from rmlab.tokenizer import BOS, EOS, ByteTokenizer
from tests.conftest import PYTHON, REPO, cli_env, compose_config

SEARCH = f"hydra.searchpath=[file://{REPO}/tests/conf]"
TINY = [SEARCH, "task=tiny_reverse", "task.max_length=3", "reward=tiny_exact_match", "model=causal_lm",
        "model.width=64", "model.max_length=16", "optimizer.lr=3e-3", "generation.max_new_tokens=8",
        "trainer.enable_progress_bar=false", "trainer.num_threads=1"]


def tiny(*overrides: str) -> list[str]:
    """TINY then ``overrides``; a group swapped by them (``model=mlp``) drops TINY's keys of that group."""
    swapped = {o.split("=")[0] for o in overrides if "." not in o.split("=")[0]}
    kept = [o for o in TINY if "." not in o.split("=")[0] or o.split(".")[0] not in swapped]
    return kept + list(overrides)


def plain_greedy(lm, prompt: list[int], max_new: int) -> list[int]:
    """Greedy decoding written out: the whole sequence each step, one prompt at a time, no cache."""
    ids, out = list(prompt), []
    for _ in range(max_new):
        token = int(lm(torch.tensor([ids]))[0, -1].argmax())
        if token == EOS:
            break
        out.append(token)
        ids.append(token)
    return out


@pytest.mark.slow
def test_causal_lm_run_learns_and_mlflow_holds_rewards_perplexity_and_samples(workdir):
    cfg = compose_config(*TINY, "trainer.max_epochs=30", "trainer.check_val_every_n_epoch=10")
    results = train(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(results["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_id == results["run_id"]
    metrics = run.data.metrics
    assert results["test/reward"] >= 0.9  # reversing 2-3 letters is learned in 30 short epochs
    for split in ("val", "test"):
        for name in ("loss", "reward", "tiny_exact_match", "perplexity", "completion_length"):
            assert math.isfinite(metrics[f"{split}/{name}"]), f"{split}/{name}"
    history = client.get_metric_history(run.info.run_id, "val/reward")
    assert len(history) == 3  # every check_val_every_n_epoch=10 epochs
    assert metrics["val/best_reward"] == pytest.approx(max(m.value for m in history))
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 30
    assert "train/reward" not in metrics  # training does not generate

    # The sample tables: one per split, appended at each evaluation, each reward the exact match of its row.
    splits = build_components(cfg).task.load()
    tables = {}
    for split in ("val", "test"):
        path = client.download_artifacts(run.info.run_id, f"samples/{split}.json", str(workdir))
        stored = json.loads(open(path).read())
        tables[split] = [dict(zip(stored["columns"], row)) for row in stored["data"]]
    assert [row["epoch"] for row in tables["val"]] == [9] * 8 + [19] * 8 + [29] * 8
    assert len(tables["test"]) == 8 and "epoch" not in tables["test"][0]
    for split, rows in tables.items():
        assert [r["prompt"] for r in rows[:8]] == [e.prompt for e in splits[split][:8]]
        assert [r["reference"] for r in rows[:8]] == [e.completion for e in splits[split][:8]]
        assert all(r["reward"] == float(r["completion"] == r["reference"]) for r in rows)
    assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [
        {"path": "samples/val.json", "type": "table"}, {"path": "samples/test.json", "type": "table"}]

    # Independently: the best checkpoint's test perplexity and greedy exact match, recomputed with plain torch.
    state = torch.load(next(workdir.rglob("best.ckpt")), weights_only=True)["state_dict"]
    lm = CausalLM(width=64, max_length=16)
    lm.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    lm.eval()
    tokenizer = ByteTokenizer()
    nll, count, hits, generated = 0.0, 0, 0, 0
    with torch.no_grad():
        for example in splits["test"]:
            prompt = [BOS, *tokenizer.encode(example.prompt)]
            target = tokenizer.encode(example.completion) + [EOS]
            logits = lm(torch.tensor([prompt + target]))[0, len(prompt) - 1:-1]
            nll += torch.nn.functional.cross_entropy(logits, torch.tensor(target), reduction="sum").item()
            count += len(target)
            completion = plain_greedy(lm, prompt, 8)
            hits += tokenizer.decode(completion) == example.completion
            generated += min(len(completion) + 1, 8)  # + its EOS, unless cut at max_new_tokens
    n = len(splits["test"])
    assert metrics["test/perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert metrics["test/reward"] == pytest.approx(hits / n)
    assert metrics["test/completion_length"] == pytest.approx(generated / n)
    # Throughput in tokens: every real token of every training example, once per epoch.
    train_tokens = sum(len(tokenizer.encode(e.prompt + e.completion)) + 2 for e in splits["train"])
    assert results["perf_train_tokens_per_s"] * results["perf_fit_s"] == pytest.approx(30 * train_tokens)


@pytest.mark.parametrize("overrides", [["loss=gce"], ["loss=sce"], ["loss=nce_rce"], ["loss=focal"],
                                       ["loss.label_smoothing=0.1", "loss.average=sequence"],
                                       ["trainer.precision=bf16-mixed"], ["model.positions=learned"],
                                       ["generation=sample", "trainer.gradient_clip_val=1.0"]],
                         ids=lambda o: " ".join(o))
def test_token_losses_precisions_and_settings_train_through_the_run(workdir, overrides):
    results = train(compose_config(*TINY, *overrides, "trainer.max_epochs=2", "logger=none"))
    for name in ("test/loss", "test/reward", "test/perplexity", "val/best_reward"):
        assert math.isfinite(results[name]), name


def test_evaluation_numbers_do_not_depend_on_the_generation_batch_size(workdir):
    """val/test loss is the token mean over the split (for cross entropy, the log of the perplexity), not a mean of
    per-batch means that the evaluation batch size would change."""
    runs = [train(compose_config(*TINY, "trainer.max_epochs=1", f"generation.batch_size={size}"))
            for size in (64, 3)]
    for key in ("test/loss", "test/perplexity", "test/reward", "val/selected_reward"):
        assert runs[0][key] == pytest.approx(runs[1][key], rel=1e-5), key
    assert runs[0]["test/loss"] == pytest.approx(math.log(runs[0]["test/perplexity"]), rel=1e-5)


def test_sampled_evaluation_is_seeded(workdir):
    from rmlab.sequence_module import SequenceDataModule, SequenceModule

    parts = build_components(compose_config(*TINY, "generation=sample", "generation.temperature=3.0"))
    module = SequenceModule(parts.model, parts.loss, parts.reward, parts.info, optimizer={"name": "adam"},
                            max_epochs=1, log_every_n_steps=1, batch_size=16, generation=parts.generation)
    data = SequenceDataModule(parts.splits, 16, 8, seed=0)
    data.setup()
    first = module.evaluate("test", data.test_batches())
    again = module.evaluate("test", data.test_batches())
    assert first == again and math.isfinite(first["test/completion_length"])


@pytest.mark.parametrize("overrides,error,message", [
    (["model=mlp"], IncompatibleError, "model=mlp does not work on task=tiny_reverse: the task's inputs are 'text' "
                                       "but model=mlp accepts 'features'. Choices of model that work on "
                                       "task=tiny_reverse: causal_lm, hf_causal_lm"),
    (["model=text_transformer"], IncompatibleError, "Choices of model that work on task=tiny_reverse: causal_lm"),
    (["loss=mse"], IncompatibleError, "loss=mse does not work on task=tiny_reverse: the task's model outputs "
                                      "'sequence' but loss=mse accepts 'value', 'logits'. Choices of loss that work "
                                      "on task=tiny_reverse: cross_entropy, focal, gce, nce_rce, sce"),
    (["loss=bradley_terry"], IncompatibleError, "Choices of loss that work on task=tiny_reverse: cross_entropy"),
    (["reward=accuracy"], IncompatibleError, "Choices of reward that work on task=tiny_reverse: "),
    (["feedback=reinforce", "feedback.learn_sigma=true"], ConfigError,
     "feedback.sigma and feedback.learn_sigma set the Gaussian policy of value outputs"),
    (["feedback=grpo", "feedback.num_iterations=2", "trainer.accumulate_grad_batches=2"], ConfigError,
     "feedback.num_iterations=2 takes several optimizer steps per batch of generations"),
    (["feedback=grpo", "feedback.num_samples=1"], ConfigError, "feedback.num_samples must be an integer >= 2"),
    (["task=digits"], IncompatibleError, "Choices of model that work on task=digits: linear, mlp"),
    (["model.max_length=6"], ConfigError, "train examples are longer than model.max_length=6 tokens"),
    (["loss.class_weights=[1,2]"], ConfigError, "per-class weights do not apply to sequence tasks"),
    (["+generation.beams=2"], ConfigError, "generation has no option beams"),
    (["generation.top_p=0.9"], ConfigError, "only apply when sampling"),
    (["+model.vocab=300"], ConfigError, "model 'causal_lm' has no option vocab; its options are: width, depth"),
])
def test_what_cannot_work_fails_at_start_up_naming_what_does(workdir, overrides, error, message):
    cfg = compose_config(*tiny(*overrides), *(["reward=accuracy"] if overrides == ["task=digits"] else []))
    with pytest.raises(error) as caught:
        train(cfg)
    assert message in str(caught.value)
    assert not (workdir / "mlflow.db").exists()  # nothing tracked


@pytest.mark.slow
def test_command_line_refuses_an_incompatible_model_with_exit_code_2(workdir):
    done = subprocess.run([PYTHON, "-m", "rmlab", *tiny("model=mlp")], cwd=workdir, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "Choices of model that work on task=tiny_reverse: causal_lm, hf_causal_lm" in done.stderr


def test_gradient_accumulation_equals_a_larger_batch(workdir):
    """Two accumulated batches of 8 sequences take the step one batch of 16 takes (the same examples in the same
    order): each batch's loss is weighed by its share of the group's sequences, exact with per-sequence averaging."""
    common = [*TINY, "loss.average=sequence", "trainer.max_epochs=2", "logger=none"]
    accumulated = train(compose_config(*common, "task.batch_size=8", "trainer.accumulate_grad_batches=2"))
    large = train(compose_config(*common, "task.batch_size=16"))
    assert accumulated["test/loss"] == pytest.approx(large["test/loss"], rel=1e-4)
    assert accumulated["test/perplexity"] == pytest.approx(large["test/perplexity"], rel=1e-4)
    single = train(compose_config(*common, "task.batch_size=8"))
    assert single["test/loss"] != pytest.approx(large["test/loss"], rel=1e-4)  # the comparison can fail


def test_sample_tables_append_and_an_outage_drops_them_without_failing_the_run(workdir, monkeypatch, caplog):
    import logging

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    from rmlab.tracking import Tracker

    tracker = Tracker(None, "tables")
    tracker.start("r", {})
    tracker.log_table({"prompt": ["a="], "completion": ["a"]}, "samples/val.json")
    tracker.log_table({"prompt": ["b="], "completion": ["c"]}, "samples/val.json")
    real = tracker.client.log_table

    def down(*args, **kwargs):
        raise MlflowException("API request failed: Connection refused", TEMPORARILY_UNAVAILABLE)

    tracker.flush()
    monkeypatch.setattr(tracker.client, "log_table", down)
    with caplog.at_level(logging.WARNING, logger="rmlab"):
        tracker.log_table({"prompt": ["c="], "completion": ["c"]}, "samples/val.json")
        tracker.finish("FINISHED")
    assert "the sample rows for samples/val.json are not stored" in caplog.text
    client = MlflowClient(tracker.uri)
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    stored = json.loads(open(client.download_artifacts(tracker.run_id, "samples/val.json", str(workdir))).read())
    assert stored["data"] == [["a=", "a"], ["b=", "c"]]

    rejected = Tracker(None, "tables")
    rejected.start("r", {})

    def invalid(*args, **kwargs):
        raise MlflowException("bad table", INVALID_PARAMETER_VALUE)

    monkeypatch.setattr(rejected.client, "log_table", invalid)
    rejected.log_table({"prompt": ["a="]}, "samples/val.json")
    with pytest.raises(MlflowException, match="bad table"):
        rejected.finish("FINISHED")
    monkeypatch.setattr(rejected.client, "log_table", real)
    assert client.get_run(rejected.run_id).info.status == "FAILED"
