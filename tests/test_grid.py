"""The full task x loss x reward grid: every combination either trains or fails with the clear incompatibility error.

No third outcome: a crash, a NaN, or a silently wrong shape fails this test. The incompatible combinations must name
the compatible choices; the compatible ones train for three optimizer steps through the real ``ObjectiveModule``
(Lightning fit, chunked steps, the reward's metric, REINFORCE feedback wherever the reward can be fed back), each loss
and each reward of a task at least once.
"""

import math

import pytest
from omegaconf import OmegaConf

from rmlab.build import build_components, compatible_options
from rmlab.errors import IncompatibleError
from rmlab.paths import CONFIG_DIR
from tests.conftest import compose_config
from tests.test_config import text_reward_values


def options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


FILE_TASKS = {"csv", "preference_file"}


def task_overrides(task, tmp_path_factory):
    if task == "csv":
        path = tmp_path_factory.mktemp("csv") / "data.csv"
        path.write_text("a,b,label\n" + "".join(f"{i * 0.1},{(i * 7) % 5},{i % 3}\n" for i in range(60)))
        return [f"task.path={path}", "task.target=label"]
    if task == "preference_file":
        path = tmp_path_factory.mktemp("pref") / "pairs.jsonl"
        rows = [f'{{"prompt": "q{i}", "chosen": "good answer {i}", "rejected": "bad {i}"}}\n' for i in range(60)]
        path.write_text("".join(rows))
        return [f"task.path={path}", "model=text_transformer", "model.width=16", "model.depth=1", "model.heads=2",
                "task.max_length=24"]
    return []


SMALL = {"synthetic_classification": ["task.n_samples=300"], "synthetic_regression": ["task.n_samples=300"],
         "synthetic_preference": ["task.n_pairs=300"], "diabetes_preference": ["task.n_pairs=300"],
         "review_preference": ["task.n_pairs=300", "model=text_transformer", "model.width=16", "model.depth=1",
                               "model.heads=2"]}


# Sequence and sequence_pair tasks need a language model: their grids are test_sequence_grid.py and
# test_preference_training.py; every loss x reward is tried here on the others.
SEQUENCE_TASKS = {o for o in options("task")
                  if OmegaConf.load(CONFIG_DIR / "task" / f"{o}.yaml")._target_.startswith(
                      ("rmlab.tasks.sequence.", "rmlab.tasks.sequence_preference."))}


@pytest.mark.parametrize("task", [t for t in options("task") if t not in SEQUENCE_TASKS])
def test_grid(task, tmp_path_factory):
    # Composing once per task and swapping in each loss/reward YAML (leaf configs with no defaults list) is what
    # compose would give, 60 ms faster per cell; test_config composes every option through Hydra itself.
    cfg = compose_config(f"task={task}", *task_overrides(task, tmp_path_factory), *SMALL.get(task, []))
    reward_dir = tmp_path_factory.mktemp("reward")  # where a reward model checkpoint for reward=reward_model goes
    working, refused = [], 0
    for loss in options("loss"):
        for reward in options("reward"):
            cfg.loss = OmegaConf.load(CONFIG_DIR / "loss" / f"{loss}.yaml")
            cfg.reward = OmegaConf.load(CONFIG_DIR / "reward" / f"{reward}.yaml")
            cfg.reward.update(text_reward_values(reward, reward_dir))
            try:
                build_components(cfg)
            except IncompatibleError as err:
                message = str(err)
                # Names the task and the way out (the compatible choices, or what to use instead).
                assert f"task={task}" in message and ("Choices of" in message or "use reward=" in message), message
                refused += 1
                continue
            working.append((loss, reward))
    assert working, f"no loss x reward combination works on {task}"
    assert refused > 0
    # Train through the real ObjectiveModule training step: every working loss and every working reward at least
    # once (paired round-robin: the module uses them independently), with the reward fed back (REINFORCE) wherever
    # the reward has a per-sample form.
    losses = list(dict.fromkeys(loss for loss, _ in working))
    rewards = list(dict.fromkeys(reward for _, reward in working))
    pairs = [(losses[i % len(losses)], rewards[i % len(rewards)]) for i in range(max(len(losses), len(rewards)))]
    fed_back = 0
    for loss, reward in pairs:
        if (loss, reward) not in working:
            loss = next(l for l, r in working if r == reward)
        cfg.loss = OmegaConf.load(CONFIG_DIR / "loss" / f"{loss}.yaml")
        cfg.reward = OmegaConf.load(CONFIG_DIR / "reward" / f"{reward}.yaml")
        cfg.reward.update(text_reward_values(reward, reward_dir))
        cfg.feedback = OmegaConf.load(CONFIG_DIR / "feedback" / "reinforce.yaml")
        try:
            parts = build_components(cfg)
            fed_back += 1
        except IncompatibleError:  # this reward cannot be fed back (no per-sample form)
            cfg.feedback = OmegaConf.load(CONFIG_DIR / "feedback" / "none.yaml")
            parts = build_components(cfg)
        train_through_module(parts, cfg, f"{task}/{loss}/{reward}/feedback={cfg.feedback.name}")
    assert fed_back > 0


STEPS = 3  # optimizer steps per combination, in two chunks (2 + 1): the chunk boundary is crossed


def train_through_module(parts, cfg, label):
    """A real Lightning fit of ObjectiveModule for STEPS batches, then a validation pass: the loss, the reward's
    metric and the feedback all run as in a real run, and every number they produce is finite."""
    import pytorch_lightning as pl

    from rmlab.data import TaskDataModule
    from rmlab.module import ObjectiveModule
    from rmlab.run import quiet_lightning

    quiet_lightning()
    module = ObjectiveModule(parts.model, parts.loss, parts.reward, parts.info,
                             optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True), max_epochs=1,
                             log_every_n_steps=1, batch_size=16, feedback=parts.feedback)
    parts.task.batch_size = 16
    data = TaskDataModule(parts.task, seed=0, steps_per_chunk=2, limit_train_batches=STEPS)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)  # a NaN or infinite loss raises NonFiniteLossError
    assert trainer.global_step == STEPS, label
    values = {**module.epoch_metrics, **module.evaluate("val", data.val_batches())}
    names = ["train/loss", "train/reward", "val/loss", "val/reward"]
    if parts.feedback is not None:
        names += ["train/pg_loss", "train/sampled_reward", "train/baseline"]
    for name in names:
        assert math.isfinite(values[name]), f"{label}: {name} = {values[name]}"


def test_incompatible_message_lists_exactly_the_compatible_losses():
    with pytest.raises(IncompatibleError) as info:
        build_components(compose_config("task=diabetes", "loss=cross_entropy", "reward=neg_mse"))
    listed = str(info.value).split("that work on task=diabetes: ")[1].split(", ")
    assert listed == compatible_options("loss", "value")
    assert "mse" in listed and "huber" in listed and "cross_entropy" not in listed


def test_a_model_that_cannot_read_the_inputs_names_the_ones_that_can(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(f'{{"prompt": "q{i}", "chosen": "yes {i}", "rejected": "no"}}\n' for i in range(30)))
    cfg = compose_config("task=preference_file", f"task.path={path}", "loss=bradley_terry",
                         "reward=preference_accuracy", "model=mlp")
    with pytest.raises(IncompatibleError, match=r"model=mlp does not work on task=preference_file: the task's inputs "
                                                r"are 'tokens' .* Choices of model that work on task=preference_file: "
                                                r"text_transformer$"):
        build_components(cfg)
