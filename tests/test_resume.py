"""resume=<run id>: a run interrupted by SIGTERM in the middle of an epoch, resumed from its last.ckpt into the same
MLflow run, ends with exactly the weights, optimizer state and metrics of the same run never interrupted; and every
run that cannot be resumed is refused in one line before anything is created.

Dropout, REINFORCE feedback with a moving-average baseline (the global random state and a buffer) and a cosine
schedule make every piece of state matter. About 40 s on 2 cores.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from rmlab.errors import ConfigError
from rmlab.resume import LAST_TAG, RESUMED_TAG
from rmlab.run import train
from rmlab.signals import Interrupted
from rmlab.tracking import POINTS_TAG
from tests.conftest import PYTHON, REPO, cli_env, compose_config

# wine: 124 training rows in batches of 16, 8 optimizer steps an epoch.
RUN = ["task=wine", "task.batch_size=16", "trainer.max_epochs=5", "trainer.enable_progress_bar=false",
       "trainer.num_threads=1", "trainer.steps_per_chunk=1", "trainer.log_every_n_steps=1", "model.dropout=0.2",
       "feedback=reinforce", "feedback.baseline=moving_average", "optimizer.scheduler.name=cosine",
       "logger.log_model=false", "trainer.checkpoint.min_interval_s=0"]
STEPS_PER_EPOCH = 8


def interrupted(cfg, step: int, module: type | None = None) -> bool:
    """Train ``cfg``, sending this process SIGTERM when training reaches optimizer step ``step``; returns whether a
    last.ckpt existed then."""
    from rmlab.last_checkpoint import LastCheckpoint
    from rmlab.module import ObjectiveModule

    module = module or ObjectiveModule
    original = module.training_step
    existed = []

    def training_step(self, chunk, chunk_idx):
        if self.global_step == step and not existed:
            existed.extend(c.path.is_file() for c in self.trainer.callbacks if isinstance(c, LastCheckpoint))
            signal.raise_signal(signal.SIGTERM)
        return original(self, chunk, chunk_idx)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(Interrupted):
        patch.setattr(module, "training_step", training_step)
        train(cfg)
    return any(existed)


CTRL_C_AT_STEP = """
import os, runpy, signal, sys
from rmlab.module import ObjectiveModule

step = int(sys.argv.pop(1))
original = ObjectiveModule.training_step

def training_step(self, chunk, chunk_idx):
    if self.global_step == step:
        os.kill(os.getpid(), signal.SIGINT)
    return original(self, chunk, chunk_idx)

ObjectiveModule.training_step = training_step
runpy.run_module("rmlab", run_name="__main__", alter_sys=True)
"""


def ctrl_c_in_a_process(workdir: Path, overrides: list[str], step: int) -> None:
    """``python -m rmlab overrides`` in a process of its own, which receives SIGINT (Ctrl-C) when training reaches
    optimizer step ``step``: it must exit 130, as a shell reports a process stopped by Ctrl-C."""
    done = subprocess.run([PYTHON, "-c", CTRL_C_AT_STEP, str(step), *overrides], cwd=workdir, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr[-3000:]
    assert "rmlab: saved the state after epoch" in done.stdout + done.stderr


def histories(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    run = client.get_run(run_id)
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
            for key in run.data.metrics if not key.startswith("perf_")}


def only_run(client: MlflowClient, experiment: str):
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


def tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a last.ckpt (weights, optimizer, the best-so-far weights) by its path in the file; loading it
    with weights_only=True is part of the contract."""
    state = torch.load(checkpoint, weights_only=True)
    flat = {}

    def walk(node, path):
        if isinstance(node, torch.Tensor):
            flat[path] = node
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk({k: state[k] for k in ("state_dict", "optimizer_states", "lr_schedulers", "callbacks")}, "")
    return flat


def assert_resumed_equals_whole(workdir: Path, overrides: list[str], module: type | None = None,
                                cut_with: list[str] | None = None, ctrl_c: bool = False) -> None:
    """Train ``overrides`` whole; train them again (``cut_with``, if given: the same run under other free keys),
    interrupted in the middle of an epoch past the first (by SIGTERM in this process, or with ``ctrl_c`` by SIGINT in
    a process of its own), then resumed: the same run, the same numbers."""
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    whole = train(compose_config(*overrides, "experiment=whole"))
    whole_run = client.get_run(whole["run_id"])
    steps = max(s for s, _ in histories(client, whole["run_id"])["train/loss_step"])
    epochs = int(whole_run.data.params["trainer.max_epochs"])
    per_epoch = steps // epochs
    at = epochs // 2 * per_epoch + per_epoch // 2  # in the middle of an epoch past the first
    assert per_epoch >= 4

    if ctrl_c:
        ctrl_c_in_a_process(workdir, [*(cut_with or overrides), "experiment=cut"], at)
    else:
        written_before = interrupted(compose_config(*(cut_with or overrides), "experiment=cut"), at, module)
        assert written_before == (cut_with is None)  # without an epoch-end write, the interrupt alone wrote the file
    cut = only_run(client, "cut")
    run_id = cut.info.run_id
    signame = "SIGINT" if ctrl_c else "SIGTERM"
    assert cut.info.status == "KILLED" and cut.data.tags["error"] == f"interrupted ({signame})"
    last = Path(cut.data.tags[LAST_TAG])
    kept = torch.load(last, weights_only=True)["global_step"]
    if cut_with is None:
        assert kept == epochs // 2 * per_epoch  # the last whole epoch
    else:  # the last whole epoch, or an earlier one whose snapshot came too soon after the last (SNAPSHOT_SHARE)
        assert kept % per_epoch == 0 and per_epoch <= kept <= epochs // 2 * per_epoch
    assert max(s for s, _ in histories(client, run_id)["train/loss_step"]) > at - 1  # the cut epoch logged steps

    resumed = train(compose_config(*overrides, "experiment=cut", f"resume={run_id}", "logger.flush_every_s=0.5"))
    assert resumed["run_id"] == run_id and len(client.search_runs([cut.info.experiment_id])) == 1
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert run.data.tags[RESUMED_TAG] == str(last) and run.data.params == cut.data.params

    # The same numbers, exactly: every metric at every step (the interrupted epoch's steps stored once), the test
    # results, the final and the best weights, the optimizer's and the scheduler's state.
    assert histories(client, run_id) == histories(client, whole["run_id"])
    assert {k: v for k, v in resumed.items() if not k.startswith("perf_") and k != "run_id"} == {
        k: v for k, v in whole.items() if not k.startswith("perf_") and k != "run_id"}
    assert run.data.tags[POINTS_TAG] == whole_run.data.tags[POINTS_TAG]
    ours, theirs = tensors(last), tensors(Path(whole_run.data.tags[LAST_TAG]))
    assert ours.keys() == theirs.keys() and any("callbacks" in k for k in ours)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_the_uninterrupted_run(workdir):
    assert_resumed_equals_whole(workdir, RUN)


@pytest.mark.slow
def test_an_interrupt_saves_the_last_whole_epoch_that_the_interval_did_not_write(workdir):
    """With the default min_interval_s (30 s) these short runs write no last.ckpt at epoch ends: the interrupt writes
    the snapshot of the last whole epoch, exactly what an epoch-end write would have held."""
    every_epoch = "trainer.checkpoint.min_interval_s=0"
    assert every_epoch in RUN
    assert_resumed_equals_whole(workdir, RUN, cut_with=[o for o in RUN if o != every_epoch])


def test_snapshots_take_a_bounded_share_of_training_and_a_write_makes_them_stale(tmp_path):
    from rmlab.last_checkpoint import SNAPSHOT, SNAPSHOT_SHARE, WRITE, LastCheckpoint

    keeper = LastCheckpoint(tmp_path / "last.ckpt", every_n_epochs=1, min_interval_s=30)
    start = keeper._since
    assert keeper._decide(start + 0.001) == SNAPSHOT  # the first is always taken
    keeper._kept_at, keeper._snapshot_s = start + 1, 0.002  # one taken at 1 s, which cost 2 ms
    assert keeper._decide(start + 1 + 0.5 * 0.002 / SNAPSHOT_SHARE) is None
    assert keeper._decide(start + 1 + 1.01 * 0.002 / SNAPSHOT_SHARE) == SNAPSHOT
    assert keeper._decide(start + 30) == WRITE
    assert keeper.save_snapshot() is None and not keeper.path.exists()  # nothing kept: nothing written


@pytest.mark.slow
def test_ctrl_c_saves_the_last_whole_epoch_too(workdir):
    """Ctrl-C (SIGINT to a real process: Lightning catches it and exits through SystemExit) writes the snapshot too."""
    assert_resumed_equals_whole(workdir, RUN, cut_with=[o for o in RUN if "min_interval_s" not in o], ctrl_c=True)


@pytest.mark.slow
def test_a_run_that_fails_after_a_whole_epoch_saves_it_too(workdir):
    from rmlab.module import ObjectiveModule

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    original = ObjectiveModule.training_step

    def training_step(self, chunk, chunk_idx):
        if self.global_step == STEPS_PER_EPOCH + 2:
            raise RuntimeError("broken on purpose")
        return original(self, chunk, chunk_idx)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(RuntimeError, match="broken on purpose"):
        patch.setattr(ObjectiveModule, "training_step", training_step)
        train(compose_config(*[o for o in RUN if "min_interval_s" not in o], "experiment=f"))
    run = only_run(client, "f")
    assert run.info.status == "FAILED" and "broken on purpose" in run.data.tags["error"]
    assert torch.load(run.data.tags[LAST_TAG], weights_only=True)["global_step"] == STEPS_PER_EPOCH


@pytest.mark.slow
def test_a_language_model_run_resumes_exactly_too(workdir):
    """A causal LM with sampled evaluation: its own batch order, generation seeds and token metrics."""
    from rmlab.sequence_module import SequenceModule

    tiny = [f"hydra.searchpath=[file://{REPO}/tests/conf]", "task=tiny_reverse", "task.max_length=3",
            "reward=tiny_exact_match", "model=causal_lm", "model.width=32", "model.max_length=16",
            "generation=sample", "generation.max_new_tokens=6", "trainer.max_epochs=3", "trainer.steps_per_chunk=1",
            "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "trainer.num_threads=1",
            "logger.log_model=false", "trainer.checkpoint.min_interval_s=0"]
    assert_resumed_equals_whole(workdir, tiny, SequenceModule)


@pytest.mark.slow
def test_a_policy_gradient_run_resumes_exactly_with_its_start_as_the_reference(workdir):
    """RLOO with a KL leash: the resumed run keeps the reference policy of the run's start (the weights it had before
    its first step), not the resumed weights, so every KL value and update equals the uninterrupted run's."""
    from rmlab.sequence_module import SequenceModule

    tiny = [f"hydra.searchpath=[file://{REPO}/tests/conf]", "task=tiny_reverse", "task.max_length=3",
            "reward=tiny_exact_match", "model=causal_lm", "model.width=32", "model.max_length=16",
            "feedback=rloo", "feedback.num_samples=2", "feedback.max_new_tokens=4", "feedback.beta=0.1",
            "feedback.loss_weight=1.0", "generation.max_new_tokens=4", "trainer.max_epochs=3",
            "trainer.steps_per_chunk=1", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
            "trainer.num_threads=1", "logger.log_model=false", "trainer.checkpoint.min_interval_s=0"]
    assert_resumed_equals_whole(workdir, tiny, SequenceModule)


@pytest.mark.slow
def test_what_cannot_be_resumed_is_one_line_before_anything_is_created(workdir):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    short = [o for o in RUN if not o.startswith("feedback")] + ["trainer.max_epochs=2", "experiment=e"]
    finished = train(compose_config(*short))["run_id"]
    interrupted(compose_config(*short), STEPS_PER_EPOCH + 2)
    killed = [r for r in client.search_runs([client.get_experiment_by_name("e").experiment_id])
              if r.info.status == "KILLED"][0].info.run_id
    # In its first epoch, before min_interval_s (default 30) of training: no whole epoch, no last.ckpt.
    interrupted(compose_config(*[o for o in short if "min_interval_s" not in o]), 2)
    early = [r for r in client.search_runs([client.get_experiment_by_name("e").experiment_id])
             if r.info.status == "KILLED" and r.info.run_id != killed][0].info.run_id
    runs_before = len(client.search_runs([client.get_experiment_by_name("e").experiment_id]))

    cases = [
        ([*short, "resume=0123abcd"], "resume=0123abcd: no such run in the tracking store"),
        ([*short, f"resume={finished}"], "the run is FINISHED; only an interrupted run (KILLED or FAILED)"),
        ([*short, f"resume={early}"], "does not exist (it is written at the end of an epoch once"),
        ([*short, f"resume={killed}", "optimizer.lr=0.01"],
         "the config differs from the run's in keys that decide the result (optimizer.lr: 0.001 -> 0.01)"),
        ([o for o in short if not o.startswith("logger.")] + [f"resume={killed}", "logger=none"],
         "resume= continues a tracked run"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError) as raised:
            train(compose_config(*overrides))
        assert message in str(raised.value) and "\n" not in str(raised.value)
    assert len(client.search_runs([client.get_experiment_by_name("e").experiment_id])) == runs_before
    assert client.get_run(killed).info.status == "KILLED"

    # On the command line: exit status 2 and that one line.
    done = subprocess.run([PYTHON, "-m", "rmlab", *short, f"resume={killed}", "seed=1"], cwd=workdir,
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    line = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and line.startswith(
        f"rmlab: error: resume={killed}: the config differs from the run's in keys that decide the result (") and (
        "; seed: 0 -> 1;" in line)
    # A setting that only changes how the run is named or recorded is free.
    resumed = train(compose_config(*short, f"resume={killed}", "run_name=again", "logger.log_model=true"))
    assert resumed["run_id"] == killed and client.get_run(killed).info.status == "FINISHED"


def test_resume_and_every_n_epochs_are_validated():
    from rmlab.validate import validate_config

    for override, message in [("resume=12", "resume must be null or the MLflow run id"),
                              ("resume='a b'", "resume must be null or the MLflow run id"),
                              ("trainer.checkpoint.every_n_epochs=-1",
                               "trainer.checkpoint.every_n_epochs must be an integer >= 0"),
                              ("trainer.checkpoint.min_interval_s=-1",
                               "trainer.checkpoint.min_interval_s must be a number >= 0")]:
        with pytest.raises(ConfigError, match=message):
            validate_config(compose_config("task=wine", override))
