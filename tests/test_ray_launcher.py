"""``hydra/launcher=rmlab_ray`` end to end: a sweep on a local Ray the launcher starts, then the same sweep again on a
Ray "cluster" the test starts with ``ray start --head``: parent and child runs, a job whose worker dies (a FAILED child
with Ray's reason, the sweep goes on), and resume (the finished jobs are reused, not trained again).

Each Ray is kept small (2 CPUs, a 100 MB object store, no dashboard) and private to the test (its own RAY_TMPDIR, so
``address=null`` can never join another Ray on the machine). About a minute on 2 cores.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hydra_plugins.rmlab_ray_launcher.ray_launcher import RmlabRayLauncher
from rmlab.losses.base import Loss
from tests.conftest import PYTHON, cli_env

pytest.importorskip("ray")

FAST = ["task=wine", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.num_threads=1"]
SMALL_RAY = ["hydra/launcher=rmlab_ray", "hydra.launcher.local_num_cpus=2", "hydra.launcher.local_object_store_mb=100"]


class DyingLoss(Loss):
    """A loss whose first call kills its own process, as the kernel's OOM killer would: nothing in it can react."""

    accepts = ("logits",)

    def forward(self, output, target):
        os.kill(os.getpid(), signal.SIGKILL)


def dying_config_dir(root: Path) -> Path:
    (root / "loss").mkdir(parents=True, exist_ok=True)
    (root / "loss" / "dying.yaml").write_text("name: dying\n_target_: tests.test_ray_launcher.DyingLoss\n")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sweep(cwd: Path, env: dict[str, str], sweep_dir: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [PYTHON, "-m", "rmlab", f"--config-dir={dying_config_dir(cwd / 'conf')}", "-m", *FAST, *SMALL_RAY,
           f"hydra.sweep.dir={cwd / sweep_dir}", "loss=cross_entropy,gce,dying", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=420)


def runs_of(client: MlflowClient, sweep_dir: Path) -> tuple:
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, max_results=1000)
    parent = [r for r in runs if r.data.tags.get("rmlab.role") == "parent"
              and r.data.tags["rmlab.sweep_dir"] == str(sweep_dir)]
    assert len(parent) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    return parent[0], {c.data.params.get("loss.name", c.data.tags.get("loss")): c for c in children}


@pytest.mark.slow
def test_ray_sweep_local_then_cluster_with_dead_worker_and_resume(tmp_path):
    # A short private temp dir: Ray's socket paths must stay under 107 characters.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    # Ray's token auth with a token of the test's own (not ~/.ray/auth_token, shared by everything on the machine);
    # RAY_AUTH_MODE=token because a driver given an explicit address only sends a token when told to.
    env = cli_env(RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")

    first = sweep(tmp_path, env, "local")
    out = first.stdout + first.stderr
    assert first.returncode == 1, out[-4000:]  # a job failed (the dying one): exit 1, as with every launcher
    assert "a local Ray started for this sweep" in out
    parent, children = runs_of(client, tmp_path / "local")
    assert parent.info.status == "FINISHED" and parent.data.tags["failures"] == "1", out[-4000:]
    assert parent.data.tags["rmlab.launcher"] == "rmlab_ray"
    assert sorted(children) == ["cross_entropy", "dying", "gce"]
    for name in ("cross_entropy", "gce"):
        assert children[name].info.status == "FINISHED" and "test/reward" in children[name].data.metrics
    dead = children["dying"]
    assert dead.info.status == "FAILED"
    assert "Ray worker died" in dead.data.tags["error"] and "WorkerCrashedError" in dead.data.tags["error"]
    assert "Failed jobs:" in (tmp_path / "local" / "summary.md").read_text()

    # The same sweep again, on a Ray cluster the test started: the finished jobs are reused, the dying one dies again.
    port = free_port()
    head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
                             "--num-cpus=2", "--object-store-memory=100000000", "--include-dashboard=false",
                             "--disable-usage-stats", "--block"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        second = sweep(tmp_path, env, "cluster", f"hydra.launcher.address=127.0.0.1:{port}")
    finally:
        head.terminate()  # `ray start --block` drains the node and stops what it started
        try:
            head.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # its own process group: only what the test started
            head.communicate()
    out = second.stdout + second.stderr
    assert second.returncode == 1, out[-4000:]
    assert f"the Ray cluster at 127.0.0.1:{port}" in out
    parent2, again = runs_of(client, tmp_path / "cluster")
    assert parent2.info.status == "FINISHED" and parent2.data.tags["failures"] == "1"
    for name in ("cross_entropy", "gce"):
        assert again[name].data.tags["rmlab.reused_from"] == children[name].info.run_id
    assert again["dying"].info.status == "FAILED" and "Ray worker died" in again["dying"].data.tags["error"]


def test_bad_launcher_setting_stops_the_sweep_before_any_job(tmp_path):
    """Checked when Hydra builds the launcher, before any job: exit 2, one line, no run left behind."""
    done = subprocess.run([PYTHON, "-m", "rmlab", "-m", *FAST, "hydra/launcher=rmlab_ray", "hydra.launcher.num_cpus=-1"],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "rmlab: error: hydra.launcher.num_cpus must be a number >= 0, got -1" in done.stderr
    assert "Traceback" not in done.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize("setting, words", [
    ({"num_gpus": float("nan")}, "num_gpus must be a number >= 0, got nan"),
    ({"max_retries": 1.5}, "max_retries must be an integer >= 0, got 1.5"),
    ({"local_num_cpus": 0}, "local_num_cpus must be an integer >= 1 or null, got 0"),
    ({"local_object_store_mb": 10}, "local_object_store_mb must be an integer >= 75 or null, got 10"),
    ({"address": " "}, "address must be null, auto, HOST:PORT or ray://HOST:PORT"),
    ({"runtime_env": ["pip"]}, "runtime_env must be a mapping"),
])
def test_each_launcher_setting_is_checked(setting, words, capsys):
    with pytest.raises(SystemExit) as stopped:
        RmlabRayLauncher(**setting)
    assert stopped.value.code == 2
    assert f"rmlab: error: hydra.launcher.{words}" in capsys.readouterr().err


def test_launcher_config_is_registered():
    from hydra import compose, initialize_config_dir

    from rmlab.paths import CONFIG_DIR

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("config", overrides=["hydra/launcher=rmlab_ray", "hydra.launcher.num_gpus=1"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("RmlabRayLauncher")
    assert (launcher.address, launcher.num_cpus, launcher.num_gpus, launcher.max_retries) == (None, 1.0, 1.0, 0)
