"""Every shipped sequence task x every reward: a compatible pair trains and evaluates through the real run (one short
epoch of causal_lm, generation on val and test), an incompatible one fails at start-up naming the rewards that work."""

import math

import pytest
from omegaconf import OmegaConf

from rmlab.build import build_components
from rmlab.errors import IncompatibleError
from rmlab.paths import CONFIG_DIR
from rmlab.run import train
from tests.conftest import compose_config
from tests.test_config import sequence_task_overrides, text_reward_overrides


def options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


SEQUENCE_TASKS = [o for o in options("task")
                  if OmegaConf.load(CONFIG_DIR / "task" / f"{o}.yaml")._target_.startswith("rmlab.tasks.sequence.")]
TINY = ["model=causal_lm", "model.width=16", "model.depth=1", "model.heads=2", "loss=cross_entropy", "logger=none",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false",
        "trainer.num_threads=1", "generation.max_new_tokens=6", "generation.log_samples=2"]


def test_every_sequence_task_is_in_the_grid():
    assert {"copy", "reverse", "sort", "addition", "text_classification", "qa", "translation", "summarisation",
            "dialogue", "completion_file", "text_classification_file", "review_writing"} <= set(SEQUENCE_TASKS)


@pytest.mark.slow
@pytest.mark.parametrize("task", SEQUENCE_TASKS)
def test_sequence_grid(task, workdir):
    overrides = [f"task={task}", *sequence_task_overrides(task, workdir), *TINY]
    trained, refused = [], []
    for reward in options("reward"):
        cfg = compose_config(*overrides, f"reward={reward}", *text_reward_overrides(reward, workdir))
        try:
            build_components(cfg)
        except IncompatibleError as err:
            assert f"reward={reward} does not work on task={cfg.task.name}" in str(err), str(err)
            refused.append(reward)
            continue
        results = train(cfg)
        for name in ("test/loss", "test/reward", "test/perplexity", "test/completion_length", "val/best_reward"):
            assert math.isfinite(results[name]), f"{task}/{reward}: {name} = {results[name]}"
        assert results[f"test/{reward}"] == results["test/reward"]
        trained.append(reward)
    assert {"exact_match", "token_f1", "bleu", "chrf", "rouge_l", "neg_edit_distance", "neg_length", "format",
            "combined", "reward_model"} <= set(trained)
    assert {"accuracy", "neg_mse", "preference_accuracy"} <= set(refused)
