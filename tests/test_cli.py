"""The command line as a user runs it: `python -m rmlab ...` in a fresh directory, read back with MLflow's client."""

import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rmlab.paths import CONFIG_DIR
from tests.conftest import PYTHON, cli_env, stop_group

FAST = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false"]


def rmlab(*args, cwd, env=None):
    return subprocess.run([PYTHON, "-m", "rmlab", *args], cwd=cwd, env=env or cli_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_cli_run_lands_in_mlflow_beside_the_command(tmp_path):
    done = rmlab("loss=huber", "reward=accuracy", *FAST, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "test/reward" in done.stdout and "dashboard    mlflow ui" in done.stdout
    assert (tmp_path / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("digits").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "digits-huber-accuracy-s0"
    assert run.data.params["loss.name"] == "huber" and run.data.params["trainer.max_epochs"] == "2"
    assert run.info.run_id in done.stdout
    assert {"test/loss", "test/reward", "test/accuracy", "val/reward", "train/loss"} <= set(run.data.metrics)
    command = (tmp_path / "mlartifacts").rglob("command.txt")
    assert "loss=huber" in next(command).read_text()
    assert run.info.artifact_uri.startswith(str(tmp_path / "mlartifacts")) or str(tmp_path) in run.info.artifact_uri


def test_incompatible_combination_fails_before_anything_is_recorded(tmp_path):
    done = rmlab("task=diabetes", "reward=accuracy", "loss=mse", cwd=tmp_path)
    assert done.returncode == 2
    assert "reward=accuracy does not work on task=diabetes" in done.stderr
    assert "neg_mse" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_unknown_group_option_names_the_choices(tmp_path):
    done = rmlab("loss=hubber", cwd=tmp_path)
    assert done.returncode == 2
    # One line, keeping Hydra's list of the available options.
    options = ", ".join(sorted(path.stem for path in (CONFIG_DIR / "loss").glob("*.yaml")))
    assert done.stderr.strip().splitlines() == [
        f"rmlab: error: Could not find 'loss/hubber'. Available options in 'loss': {options}"]
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("override,line", [
    ("loss.deltaa=1", "loss.deltaa is not a key of loss (cross_entropy): valid keys: name, label_smoothing, "
                      "class_weights"),
    ("loss=huber loss.delt=2", "loss.delt is not a key of loss (huber): did you mean loss.delta? valid keys: name, "
                               "delta"),
    ("losss=huber", "losss is not a key of the config: did you mean loss? valid keys: task, model, loss, reward, "
                    "feedback, generation, optimizer, trainer, logger, seed, experiment, run_name"),
    ("sed=3", "sed is not a key of the config: did you mean seed?"),
    # A sweep over options: the option without the key is named, not the first one.
    ("-m loss=huber,mse loss.delta=0.5", "loss.delta is not a key of loss (mse): valid keys: name"),
    ("hydra.job.env_copy=[RMLAB_NOT_SET_X]", "hydra.job.env_copy names RMLAB_NOT_SET_X, which is not set in the "
                                             "environment"),
    ("-m seed=0,1 hydra.job.env_copy=[RMLAB_NOT_SET_X]", "hydra.job.env_copy names RMLAB_NOT_SET_X"),
    ("seed=[", "no viable alternative at input '['"),
    ("-m --cfg job", "Only one of --run, --multirun, --cfg, --info and --shell_completion can be specified"),
])
def test_hydra_errors_are_one_line_with_exit_code_2(tmp_path, override, line):
    done = rmlab(*override.split(), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rmlab: error: {line}"), done.stderr
    assert not any(tmp_path.iterdir())  # nothing created: no store, no output folder


def unwritable_folder(tmp_path):
    """A folder this process cannot write: a read-only one, or for root (who ignores permissions) /proc/sys."""
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    folder = Path("/proc/sys")
    if not folder.is_dir() or os.access(folder, os.W_OK):
        pytest.skip("no folder that root cannot write")
    return folder


@pytest.mark.parametrize("case", ["cwd", "cwd_with_run_dir_elsewhere", "tracking_uri"])
def test_unwritable_places_are_one_line_errors_at_once(tmp_path, case):
    folder = unwritable_folder(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args, cwd = {"cwd": ([], folder),
                 "cwd_with_run_dir_elsewhere": ([f"hydra.run.dir={elsewhere / 'out'}"], folder),
                 "tracking_uri": ([f"logger.tracking_uri=sqlite:///{folder / 'sub' / 'x.db'}"], elsewhere)}[case]
    started = time.monotonic()
    done = rmlab("task=wine", "trainer.max_epochs=1", *args, cwd=cwd)
    assert time.monotonic() - started < 60  # MLflow alone retries for about two minutes
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("rmlab: error: cannot"), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not list(elsewhere.rglob("mlflow.db"))


@pytest.mark.parametrize("override,message", [
    ("loss.delta=-1", "delta must be > 0, got -1"),
    ("task.label_noise=1.5", "task.label_noise must be in [0, 1), got 1.5"),
    ("trainer.precision=17", "trainer.precision must be one of 32-true"),
    ("optimizer.lr=0", "optimizer.lr must be a number > 0, got 0"),
])
def test_invalid_value_is_a_clear_error(tmp_path, override, message):
    done = rmlab("loss=huber", override, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_user_config_dir_adds_a_loss_with_their_own_class(tmp_path):
    (tmp_path / "my_losses.py").write_text(textwrap.dedent('''
        import torch
        from rmlab.losses.base import Loss

        class Cubic(Loss):
            accepts = ("value", "logits")

            def __init__(self, scale: float = 1.0):
                super().__init__()
                self.scale = scale

            def forward(self, output, target):
                if output.ndim == 2:
                    target = torch.nn.functional.one_hot(target, output.shape[1]).float()
                    output = output.softmax(-1)
                return self.scale * (output.float() - target).abs().pow(3).sum(-1).mean() if output.ndim == 2 \\
                    else self.scale * (output.float() - target).abs().pow(3).mean()
    '''))
    (tmp_path / "myconf" / "loss").mkdir(parents=True)
    (tmp_path / "myconf" / "loss" / "cubic.yaml").write_text("name: cubic\n_target_: my_losses.Cubic\nscale: 2.0\n")
    env = cli_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    done = rmlab("--config-dir", str(tmp_path / "myconf"), "loss=cubic", *FAST, "logger=none", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "cubic" in done.stdout and "test/reward" in done.stdout
    # The incompatibility message lists the user's loss among the choices, found on Hydra's search path.
    bad = rmlab("--config-dir", str(tmp_path / "myconf"), "loss=cross_entropy", "task=diabetes", "reward=neg_mse",
                cwd=tmp_path, env=env)
    assert "cubic" in bad.stderr.split("Choices of loss")[1]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_mlflow_ui_started_in_the_directory_shows_the_run(tmp_path):
    import json
    import time
    import urllib.request

    done = rmlab("trainer.max_epochs=1", "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    port = free_port()
    # The interpreter running the tests, not whatever `mlflow` is first on PATH (a venv need not be activated).
    # Its own process group: the server's uvicorn workers are stopped with it.
    server = subprocess.Popen([PYTHON, "-m", "mlflow", "ui", "--port", str(port)], cwd=tmp_path, env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def get(path):
        with urllib.request.urlopen(base + path, timeout=60) as response:
            return response.read().decode()

    try:
        deadline = time.time() + 90
        while True:
            try:
                experiments = json.loads(get("/api/2.0/mlflow/experiments/get-by-name?experiment_name=digits"))
                break
            except OSError:
                assert time.time() < deadline, "mlflow ui did not answer"
                time.sleep(1)
        exp_id = experiments["experiment"]["experiment_id"]
        request = urllib.request.Request(base + "/api/2.0/mlflow/runs/search", method="POST",
                                         data=json.dumps({"experiment_ids": [exp_id]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            run = json.loads(response.read())["runs"][0]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert params["task.name"] == "digits" and "test/reward" in metrics
        run_id = run["info"]["run_id"]
        listed = json.loads(get(f"/ajax-api/2.0/mlflow/artifacts/list?run_uuid={run_id}"))
        assert {f["path"] for f in listed["files"]} >= {"config.yaml", "command.txt"}
        assert "trainer.max_epochs=1" in get(f"/get-artifact?path=command.txt&run_uuid={run_id}")
    finally:
        stop_group(server)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_records_one_run(tmp_path):
    """Lightning's DDP launcher re-runs the command in a second process; only rank 0 tracks and saves."""
    done = rmlab("trainer.devices=2", "trainer.strategy=ddp", "trainer.max_epochs=2",
                 "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert {"test/reward", "val/reward", "train/loss"} <= set(runs[0].data.metrics)
    assert len(list(tmp_path.rglob("best.ckpt"))) == 1
