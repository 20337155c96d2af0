"""Which weights are tested, and which validation value is reported beside them: always the same epoch's.

With checkpointing on, the best epoch's weights are tested and ``val/selected_reward`` = ``val/best_reward``; with it
off, the last weights are tested and the value is the last validation's (``val/last_reward``; no ``val/best_reward``
that would pair one epoch's validation with another's test). A NaN or infinite validation reward is never the best.
"""

import math
from types import SimpleNamespace

import pytest
import torch
from mlflow.tracking import MlflowClient

from rmlab import summary
from rmlab.checkpoint import Validation
from rmlab.run import train
from tests.conftest import FAST, compose_config


def stored(workdir, run_id):
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    return client, client.get_run(run_id)


def test_checkpointing_off_selects_and_names_the_last_epoch(workdir):
    # A learning rate large enough that val/reward moves from epoch to epoch, so best and last differ.
    results = train(compose_config(*FAST, "task=wine", "trainer.max_epochs=6", "optimizer.lr=0.05",
                                   "trainer.checkpoint.enabled=false"))
    client, run = stored(workdir, results["run_id"])
    history = sorted(client.get_metric_history(run.info.run_id, "val/reward"), key=lambda m: m.step)
    last, best = history[-1].value, max(m.value for m in history)
    metrics = run.data.metrics
    assert metrics["val/selected_reward"] == metrics["val/last_reward"] == pytest.approx(last)
    assert metrics["val/selected_epoch"] == 5
    assert "val/best_reward" not in metrics and "val/best_reward" not in results
    assert run.data.tags["rmlab.selection"] == "last"
    assert results["val/selected_reward"] == pytest.approx(last)
    assert summary.SELECTION_METRIC == "val/selected_reward" and summary.SELECTION_METRIC in summary.METRICS
    assert best >= last


def test_checkpointing_on_selects_the_best_epoch(workdir):
    results = train(compose_config(*FAST, "task=wine", "trainer.max_epochs=4", "optimizer.lr=0.05"))
    client, run = stored(workdir, results["run_id"])
    history = client.get_metric_history(run.info.run_id, "val/reward")
    best = max(m.value for m in history)
    metrics = run.data.metrics
    assert metrics["val/selected_reward"] == metrics["val/best_reward"] == pytest.approx(best)
    assert "val/last_reward" not in metrics and run.data.tags["rmlab.selection"] == "best"


class Scripted:
    """A stand-in module whose validation reward follows a script, one value per epoch."""

    def __init__(self, scores):
        self.scores = iter(scores)
        self.weight = torch.zeros(1)

    def evaluate(self, split, batches):
        self.weight += 1  # the weights change every epoch: the kept state says which epoch it came from
        return {"val/reward": next(self.scores)}

    def state_dict(self):
        return {"weight": self.weight}


def run_validation(scores, keep_best=True, patience=None):
    validation = Validation(lambda: [], keep_best=keep_best, patience=patience)
    module = Scripted(scores)
    trainer = SimpleNamespace(current_epoch=0, max_epochs=len(scores), should_stop=False)
    for epoch in range(len(scores)):
        trainer.current_epoch = epoch
        validation.on_train_epoch_end(trainer, module)
        if trainer.should_stop:
            break
    return validation, trainer


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_val_reward_is_never_the_best(bad):
    validation, _ = run_validation([bad, 0.5, 0.4, bad, 0.45])
    assert (validation.best_score, validation.best_epoch) == (0.5, 1)
    assert validation.state["weight"].item() == 2  # the weights of epoch 1 (the second), not of the first
    assert validation.selected() == ("best", 0.5, 1)


def test_only_non_finite_val_rewards_test_the_last_weights():
    validation, _ = run_validation([math.nan, math.nan])
    assert validation.best_score is None and validation.state is None
    selection, score, epoch = validation.selected()
    assert selection == "last" and math.isnan(score) and epoch == 1


def test_a_non_finite_val_reward_counts_as_no_improvement_for_early_stopping():
    _, trainer = run_validation([0.5, math.nan, math.nan, 0.9], patience=2)
    assert trainer.should_stop and trainer.current_epoch == 2


def test_checkpointing_off_selects_the_last_validation():
    validation, _ = run_validation([0.2, 0.9, 0.3], keep_best=False)
    assert validation.selected() == ("last", 0.3, 2)
    assert validation.best_score == 0.9 and validation.state is None
