"""Tiny real trainings on CPU, checked through what MLflow actually stored."""

import re
import signal

import pytest
import torch
from mlflow.tracking import MlflowClient

from rmlab.errors import NonFiniteLossError
from rmlab.losses.base import Loss
from rmlab.run import train
from rmlab.tracking import flatten
from tests.conftest import FAST, compose_config
from omegaconf import OmegaConf


def client_for(workdir):
    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


def only_run(workdir, experiment="rmlab"):
    client = client_for(workdir)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_run_is_tracked_completely(workdir):
    cfg = compose_config(*FAST, "loss=huber", "loss.delta=0.5", "seed=3")
    results = train(cfg)
    client, run = only_run(workdir)
    assert run.info.run_id == results["run_id"]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "digits-huber-accuracy-s3"
    # Every key of the resolved config is a param, with its full value.
    expected = flatten(OmegaConf.to_container(cfg, resolve=True))
    assert run.data.params == expected
    assert run.data.params["loss.delta"] == "0.5" and run.data.params["model.hidden_sizes"] == "[128, 128]"
    tags = run.data.tags
    assert (tags["task"], tags["loss"], tags["reward"], tags["seed"]) == ("digits", "huber", "accuracy", "3")
    assert tags["rmlab_version"] and "mlflow.source.git.commit" in tags
    # Epoch metrics for every split, the reward under its own name, and test values equal to what train() returned.
    metrics = run.data.metrics
    for split in ("train", "val"):
        for name in ("loss", "reward", "accuracy"):
            history = client.get_metric_history(run.info.run_id, f"{split}/{name}")
            assert len(history) == 2, f"{split}/{name}: one value per epoch"
    assert metrics["test/reward"] == pytest.approx(results["test/reward"])
    assert metrics["test/accuracy"] == metrics["test/reward"]
    assert metrics["val/best_reward"] == pytest.approx(max(
        m.value for m in client.get_metric_history(run.info.run_id, "val/reward")))
    steps = client.get_metric_history(run.info.run_id, "train/loss_step")
    assert [m.step for m in steps][:3] == [2, 4, 6]  # logged every log_every_n_steps=2 optimizer steps
    # Artifacts: the resolved config and the command line, in the store's folder beside mlflow.db.
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "command.txt"} <= artifacts
    assert (workdir / "mlartifacts").is_dir()
    stored = OmegaConf.create(client.download_artifacts(run.info.run_id, "config.yaml", str(workdir)) and
                              (workdir / "config.yaml").read_text())
    assert stored.loss.delta == 0.5


def test_default_run_reaches_standard_accuracy(workdir):
    results = train(compose_config("trainer.enable_progress_bar=false", "logger=none"))
    assert results["test/reward"] >= 0.95  # a standard MLP on digits reaches about 0.97


def test_huber_on_classification_trains_comparably(workdir):
    results = train(compose_config("trainer.enable_progress_bar=false", "logger=none", "loss=huber"))
    assert results["test/reward"] >= 0.93


def test_regression_task_trains(workdir):
    results = train(compose_config(*FAST, "task=diabetes", "loss=huber", "reward=r2", "logger=none",
                                   "trainer.max_epochs=20"))
    assert results["test/reward"] > 0.2  # r2 of a fitted model on diabetes (linear models reach about 0.45)


def test_same_seed_gives_identical_results(workdir):
    a = train(compose_config(*FAST, "logger=none"))
    b = train(compose_config(*FAST, "logger=none"))
    c = train(compose_config(*FAST, "logger=none", "seed=1"))
    assert a["test/loss"] == b["test/loss"]
    assert a["test/loss"] != c["test/loss"]


class NaNAfterSteps(Loss):
    """A loss that turns NaN after a few calls: stands in for a diverging run."""

    accepts = ("logits",)

    def __init__(self, after: int = 3) -> None:
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, output, target):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(output.float(), target)
        return loss * float("nan") if self.calls > self.after else loss


def test_nan_loss_stops_the_run_marked_failed(workdir):
    cfg = compose_config(*FAST, "loss=mse", "loss._target_=tests.test_training.NaNAfterSteps",
                         "+loss.after=3")
    with pytest.raises(NonFiniteLossError, match="train/loss became nan"):
        train(cfg)
    _, run = only_run(workdir)
    assert run.info.status == "FAILED"
    assert "NonFiniteLossError" in run.data.tags["error"]




def test_ctrl_c_marks_the_run_killed(workdir, monkeypatch):
    import pytorch_lightning as pl

    class CtrlC(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    import rmlab.run as run_module

    original = run_module.make_callbacks

    def with_ctrl_c(cfg, data):
        return original(cfg, data) + [CtrlC()]

    monkeypatch.setattr(run_module, "make_callbacks", with_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            train(compose_config(*FAST))
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after an interrupt
    _, run = only_run(workdir)
    assert run.info.status == "KILLED"


def test_logger_none_stores_nothing(workdir):
    results = train(compose_config(*FAST, "logger=none"))
    assert results["run_id"] is None
    assert not (workdir / "mlflow.db").exists()


def test_fast_dev_run_is_untracked(workdir):
    results = train(compose_config("trainer=debug"))
    assert results["run_id"] is None and "test/reward" in results


def test_chunked_steps_match_one_step_per_lightning_batch(workdir):
    """Running many optimizer steps inside one Lightning step must not change the maths."""
    one = train(compose_config(*FAST, "logger=none", "trainer.steps_per_chunk=1"))
    many = train(compose_config(*FAST, "logger=none", "trainer.steps_per_chunk=7"))
    assert one["test/loss"] == pytest.approx(many["test/loss"], rel=1e-6)
    assert one["val/best_reward"] == many["val/best_reward"]


def test_gradient_clipping_and_scheduler_take_effect(workdir):
    base = train(compose_config(*FAST, "logger=none"))
    clipped = train(compose_config(*FAST, "logger=none", "trainer.gradient_clip_val=0.01"))
    assert clipped["test/loss"] != base["test/loss"]
    decayed = train(compose_config(*FAST, "logger=none", "optimizer.scheduler.name=step",
                                   "optimizer.scheduler.step_size=1", "optimizer.scheduler.gamma=0.0001"))
    assert decayed["test/loss"] != base["test/loss"]


def test_limit_train_batches_counts_optimizer_steps(workdir):
    results = train(compose_config(*FAST, "trainer.limit_train_batches=3", "trainer.steps_per_chunk=2"))
    _, run = only_run(workdir)
    client = client_for(workdir)
    history = client.get_metric_history(run.info.run_id, "train/loss_step")
    assert max(m.step for m in history) == 6  # 2 epochs x 3 batches, whatever the chunk size
    assert results["perf/train_samples_per_s"] > 0


def test_best_weights_are_saved_and_tested(workdir):
    from rmlab.build import build_components

    cfg = compose_config(*FAST, "logger=none", "trainer.max_epochs=4")
    results = train(cfg)
    saved = list(workdir.rglob("best.ckpt"))
    assert len(saved) == 1
    checkpoint = torch.load(saved[0])
    assert checkpoint["val/reward"] == results["val/best_reward"]
    # The test metrics are those of the saved weights: evaluate them by hand.
    parts = build_components(cfg)
    state = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    parts.model.load_state_dict(state)
    test = parts.task.load()["test"]
    with torch.no_grad():
        accuracy = (parts.model(test.x).argmax(1) == test.y).float().mean().item()
    assert accuracy == pytest.approx(results["test/reward"], abs=1e-6)


def test_early_stopping_stops_after_patience_epochs_without_improvement(workdir):
    # A learning rate too small to move val/reward: the first epoch is the best, then `patience` stale ones.
    train(compose_config(*FAST, "trainer.max_epochs=20", "optimizer.lr=1e-12", "trainer.early_stopping.enabled=true",
                         "trainer.early_stopping.patience=3"))
    client, run = only_run(workdir)
    assert len(client.get_metric_history(run.info.run_id, "val/reward")) == 4


def test_validation_every_n_epochs(workdir):
    train(compose_config(*FAST, "trainer.max_epochs=5", "trainer.check_val_every_n_epoch=2"))
    client, run = only_run(workdir)
    epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val/reward")]
    assert len(epochs) == 3  # after epochs 2 and 4, and after the last one


def test_reward_feedback_run_logs_policy_gradient_terms(workdir):
    results = train(compose_config(*FAST, "feedback=reinforce", "feedback.loss_weight=0", "trainer.max_epochs=3"))
    client, run = only_run(workdir)
    metrics = run.data.metrics
    for name in ("train/pg_loss", "train/sampled_reward", "train/baseline"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 3, name
    # Pure reward-driven training learns: far above chance (0.1) after 3 epochs.
    assert results["test/reward"] > 0.4
    assert 0.0 <= metrics["train/sampled_reward"] <= 1.0


def test_preference_task_trains_and_logs_score_moments(workdir):
    results = train(compose_config(*FAST, "task=synthetic_preference", "task.n_pairs=1500", "loss=bradley_terry",
                                   "reward=true_reward_spearman", "trainer.max_epochs=5"))
    client, run = only_run(workdir)
    assert results["test/reward"] > 0.8  # scores agree with the hidden true reward
    for split in ("train", "val", "test"):
        assert f"{split}/score_mean" in run.data.metrics and run.data.metrics[f"{split}/score_std"] > 0


def test_text_reward_model_trains_on_a_users_jsonl(workdir):
    import json

    lines = [json.dumps({"prompt": f"question {i}", "chosen": f"a careful answer {i}", "rejected": "no"})
             for i in range(120)]
    (workdir / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    results = train(compose_config(*FAST, "task=preference_file", "task.path=pairs.jsonl", "task.max_length=32",
                                   "model=text_transformer", "model.width=32", "model.depth=1", "model.heads=2",
                                   "loss=bradley_terry", "reward=preference_accuracy", "trainer.max_epochs=4"))
    assert results["test/reward"] >= 0.9  # long careful answers vs "no": easy to learn


@pytest.mark.parametrize("clip", ["null", "0.05"])
def test_direct_steps_match_lightnings_wrappers(workdir, monkeypatch, clip):
    """Single-device fp32 steps bypass Lightning's backward/step wrappers; the maths must be the same."""
    from rmlab.module import ObjectiveModule

    overrides = [*FAST, "logger=none", f"trainer.gradient_clip_val={clip}"]
    direct = train(compose_config(*overrides))
    original = ObjectiveModule.on_train_start

    def through_lightning(self):
        original(self)
        assert self.direct_steps  # the default run takes the direct path
        self.direct_steps = False

    monkeypatch.setattr(ObjectiveModule, "on_train_start", through_lightning)
    wrapped = train(compose_config(*overrides))
    assert direct["test/loss"] == pytest.approx(wrapped["test/loss"], rel=1e-6)
    assert direct["val/best_reward"] == wrapped["val/best_reward"]


def test_bf16_mixed_precision_trains_through_lightnings_precision_plugin(workdir):
    results = train(compose_config(*FAST, "logger=none", "trainer.precision=bf16-mixed", "trainer.max_epochs=3"))
    assert results["test/reward"] > 0.8


@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
def test_true_precisions_evaluate_in_the_models_dtype(workdir, precision):
    results = train(compose_config(*FAST, "logger=none", f"trainer.precision={precision}"))
    assert results["test/reward"] > 0.5


def test_metrics_that_cannot_be_stored_fail_the_run(workdir, monkeypatch):
    from rmlab.tracking import Tracker

    tracker = Tracker(None, "broken", flush_every_s=3600)  # buffered until finish, however slow the machine
    tracker.start("r", {})

    def refuse(*args, **kwargs):
        raise RuntimeError("store down")

    # Before the metric is logged: on a loaded machine start() can outlast flush_every_s, and the metric would be
    # sent (successfully) by log_metrics itself.
    monkeypatch.setattr(tracker.client, "log_batch", refuse)
    tracker.log_metrics({"m": 1.0}, step=0)
    with pytest.raises(RuntimeError, match="store down"):
        tracker.finish("FINISHED")
    run = client_for(workdir).get_run(tracker.run_id)
    assert run.info.status == "FAILED" and "store down" in run.data.tags["error"]


@pytest.mark.parametrize("override,message", [
    ("trainer.limit_train_batches=1.5", "limit_train_batches must be null, a fraction in (0, 1]"),
    ("trainer.num_threads=0", "num_threads must be null or an integer >= 1"),
    ("trainer.strategy=ddp_spawn", "ddp_spawn is not supported yet"),
    ("trainer.fast_dev_run=0", "fast_dev_run must be true, false or a number of batches"),
])
def test_trainer_values_are_checked_before_training(workdir, override, message):
    from rmlab.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        train(compose_config(*FAST, override))
    assert not (workdir / "mlflow.db").exists()


def test_fast_dev_run_n_trains_n_batches(workdir):
    results = train(compose_config("trainer=debug", "trainer.fast_dev_run=3", "trainer.steps_per_chunk=2"))
    trained = results["perf/train_samples_per_s"] * results["perf/fit_s"]
    assert round(trained) == 3 * 64  # three batches of the digits task's 64, in chunks of two
    assert results["run_id"] is None


def test_multirun_device_counts():
    from rmlab.run import device_count

    assert device_count(1) == 1 and device_count("2") == 2 and device_count("0,1") == 2
    assert device_count([0, 1]) == 2 and device_count("auto") is None and device_count(-1) is None
