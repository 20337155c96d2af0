"""Bad input is a one-line error naming the problem (and the valid choices), before anything is created, and before
torch loads where no torch is needed to tell.

In-process: every listed bad value raises ConfigError from ``train`` with no store left behind. Through the CLI: the
same commands print one line and exit 2, seeds included (checked before seeding), and a config error imports no
torch.
"""

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from rmlab.errors import ConfigError
from rmlab.run import train
from rmlab.validate import validate_config
from tests.conftest import FAST, PYTHON, cli_env, compose_config

BAD = [
    # unknown keys where there is no _target_ to check them against, listing the valid ones
    ("+trainer.accumulate_grad_batchs=4", "trainer has no option accumulate_grad_batchs; its options are: accelerator, "
                                          "devices"),
    ("+optimizer.momentumm=0.5", "optimizer 'adam' has no option momentumm; its options are: name, lr, weight_decay, "
                                 "scheduler, betas"),
    ("+logger.foo=1", "logger 'mlflow' has no option foo; its options are: name, tracking_uri, log_checkpoint"),
    ("+trainer.early_stopping.paitence=3", "trainer.early_stopping has no option paitence; its options are: enabled, "
                                           "patience, min_delta"),
    ("+feedback.weight=1", "feedback 'none' has no option weight; its options are: name"),
    ("+sed=3", "unknown key sed at the top of the config; the top-level keys are: task, model"),
    # values of the wrong type or not finite
    ("optimizer.lr=true", "optimizer.lr must be a number > 0, got True"),
    ("optimizer.lr=inf", "optimizer.lr must be a number > 0, got inf"),
    ("optimizer.weight_decay=inf", "optimizer.weight_decay must be a number >= 0, got inf"),
    ("trainer.deterministic=abc", "trainer.deterministic must be true, false or warn, got 'abc'"),
    ("optimizer.betas=ab", "optimizer.betas must be two numbers in [0, 1)"),
    ("optimizer.betas=5", "optimizer.betas must be two numbers in [0, 1)"),
    ("optimizer.scheduler.step_size=abc", "optimizer.scheduler.step_size must be an integer >= 1, got 'abc'"),
    ("optimizer.scheduler.gamma=abc", "optimizer.scheduler.gamma must be a number in (0, 1], got 'abc'"),
    ("optimizer.scheduler.min_lr=abc", "optimizer.scheduler.min_lr must be a number >= 0, got 'abc'"),
    ("trainer.gradient_clip_val=abc", "trainer.gradient_clip_val must be null or a number > 0, got 'abc'"),
    ("trainer.gradient_clip_val=nan", "trainer.gradient_clip_val must be null or a number > 0, got nan"),
    ("trainer.devices=abc", "trainer.devices must be an integer >= 1, -1 (all devices), auto, or a list of device ids"),
    ("trainer.devices=0", "trainer.devices must be an integer >= 1, -1 (all devices), auto"),
    ("trainer.early_stopping.patience=abc", "trainer.early_stopping.patience must be an integer >= 1, got 'abc'"),
    ("trainer.early_stopping.min_delta=abc", "trainer.early_stopping.min_delta must be a number >= 0, got 'abc'"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be an integer >= 1, got 0"),
    ("trainer.enable_progress_bar=3", "trainer.enable_progress_bar must be true or false, got 3"),
    ("logger.flush_every_s=true", "logger.flush_every_s must be a number > 0, got True"),
    ("model.hidden_sizes=5", "model.hidden_sizes must be a list of positive integers (e.g. [128, 128], or [] for "
                             "none), got 5"),
    ("model.dropout=abc", "model.dropout must be a number in [0, 1), got 'abc'"),
    # root keys: seeds are checked before anything is seeded, and named as `seed`
    ("seed=abc", "seed must be an integer in [0, 4294967295], got 'abc'"),
    ("seed=1.5", "seed must be an integer in [0, 4294967295], got 1.5"),
    ("seed=null", "seed must be an integer in [0, 4294967295], got None"),
    ("seed=18446744073709551616", "seed must be an integer in [0, 4294967295], got 18446744073709551616"),
    ("seed=-5", "seed must be an integer in [0, 4294967295], got -5"),
    ("experiment=''", "experiment must be a non-empty name (the MLflow experiment), got ''"),
    ("experiment=null", "experiment must be a non-empty name (the MLflow experiment), got None"),
    ("task=csv", "task.path and task.target are required: give task.path=... task.target=... on the command line"),
]
SGD = [("optimizer.momentum=abc", "optimizer.momentum must be a number in [0, 1), got 'abc'"),
       ("+optimizer.betas=[0.9,0.99]", "optimizer 'sgd' has no option betas; its options are: name, lr, weight_decay, "
                                       "scheduler, momentum, nesterov")]


@pytest.mark.parametrize("override, message", BAD + [(f"optimizer=sgd {o}", m) for o, m in SGD],
                         ids=[o for o, _ in BAD] + [f"sgd {o}" for o, _ in SGD])
def test_bad_values_are_config_errors_before_anything_is_created(workdir, override, message):
    with pytest.raises(ConfigError) as err:
        train(compose_config(*FAST, *override.split()))
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlartifacts").exists()


def test_a_missing_task_path_alone_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"^task\.path is required: give task\.path=\.\.\. on the command line$"):
        validate_config(compose_config("task=csv", "task.target=label"))


def test_a_gpu_that_is_not_there_is_refused_before_the_store_exists(workdir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=r"trainer\.accelerator=gpu but this machine has no CUDA GPU visible to "
                                          r"torch .*; use trainer\.accelerator=cpu"):
        train(compose_config(*FAST, "trainer.accelerator=gpu"))
    assert not (workdir / "mlflow.db").exists()


@pytest.mark.parametrize("override, named", [
    ("generation.max_new_tokens=3", "generation.max_new_tokens=3"),
    ("generation=sample", "generation.do_sample=True"),
    ("generation.seed=5", "generation.seed=5"),
])
def test_generation_settings_on_a_task_that_generates_nothing_are_refused(workdir, override, named):
    """Nothing silently ignored: the generation group only acts on language-model tasks."""
    with pytest.raises(ConfigError, match=rf"{re.escape(named)}.* does not apply to task=wine: .*outputs 'logits'"):
        train(compose_config(*FAST, "task=wine", override))
    assert not (workdir / "mlflow.db").exists()


def test_gradient_accumulation_is_a_trainer_option(workdir):
    results = train(compose_config(*FAST, "logger=none", "task=wine", "trainer.accumulate_grad_batches=2"))
    assert results["test/reward"] > 0


# --- through the command line ------------------------------------------------------------------------------------

CLI_BAD = [o for o, _ in BAD] + ["optimizer=sgd optimizer.momentum=abc",
                                 "optimizer.scheduler.name=step optimizer.scheduler.step_size=abc"]


@pytest.mark.slow
def test_every_bad_input_is_one_line_and_exit_code_2(tmp_path):
    def run(override: str):
        folder = tmp_path / re.sub(r"\W+", "_", override)
        folder.mkdir()
        # The bad override last, so that it wins over the settings that keep a wrongly accepted run short.
        quick = ["trainer.enable_progress_bar=false", "trainer.max_epochs=1"]
        done = subprocess.run([PYTHON, "-m", "rmlab", *quick, *override.split()],
                              cwd=folder, env=cli_env(), capture_output=True, text=True, timeout=300)
        return override, folder, done

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(run, CLI_BAD))
    for override, folder, done in outcomes:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, f"{override}: {done.stdout}{done.stderr}"
        assert len(lines) == 1 and lines[0].startswith("rmlab: error: "), f"{override}: {done.stderr}"
        assert "Traceback" not in done.stdout + done.stderr
        assert not (folder / "mlflow.db").exists(), override


@pytest.mark.slow
def test_a_csv_with_a_huge_integer_is_one_line_and_exit_code_2(tmp_path):
    (tmp_path / "big.csv").write_text("a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(30)) + "1" * 400 + ",0\n")
    done = subprocess.run([PYTHON, "-m", "rmlab", "task=csv", "task.path=big.csv", "task.target=label"],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"rmlab: error: {tmp_path / 'big.csv'}: feature column 'a' holds a number too large for a float in data row "
        f"31 (11111111111111111111..., 400 characters)"]
    assert not (tmp_path / "mlflow.db").exists()


def test_a_config_error_is_reported_before_torch_loads(tmp_path):
    """What needs no torch is checked before torch (and scikit-learn) are imported: the error comes in about a second,
    not the several seconds those imports take."""
    done = subprocess.run([PYTHON, "-X", "importtime", "-m", "rmlab", "optimizer.lr=-1"], cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "rmlab: error: optimizer.lr must be a number > 0, got -1" in done.stderr
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "sklearn" not in imported and "numpy" not in imported
