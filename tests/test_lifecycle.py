"""The run lifecycle in-process: signal policies, how an ending is classified, process identity, closing runs whose
process is gone (``rmlab.tidy``), the store's checks. Real signals are sent to the test process itself."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from rmlab import processes, signals
from rmlab.signals import Interrupted
from tests.conftest import FAST, PYTHON, cli_env, compose_config


def store(workdir) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


# -- signals -------------------------------------------------------------------------------------------------------


def test_signal_policies_nest_and_the_previous_handlers_come_back():
    before = {s: signal.getsignal(s) for s in signals.SIGNALS}
    mark = signals.mark()
    with signals.handling(signals.record_only):
        os.kill(os.getpid(), signal.SIGTERM)  # recorded, nothing raised: the outer policy only records
        assert signals.received_since(mark) == signal.SIGTERM
        with signals.handling(signals.stop_now), pytest.raises(Interrupted) as stopped:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes of the main thread
                pass
        assert stopped.value.exit_code == 130 and stopped.value.name == "SIGINT"
        assert isinstance(stopped.value, KeyboardInterrupt)  # what Lightning, joblib and Hydra clean up after
    assert {s: signal.getsignal(s) for s in signals.SIGNALS} == before


def test_ending_recognises_exceptions_by_class():
    import optuna
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from rmlab.lifecycle import ending

    assert ending(None, None) == ("FINISHED", None, None)
    assert ending(ValueError("bad"), None) == ("FAILED", "ValueError: bad", None)
    assert ending(optuna.TrialPruned("epoch 3"), None) == ("KILLED", "pruned by Optuna: epoch 3", None)
    # Lightning stops its loop with a bare SystemExit (status 0) after SIGTERM: it must still read as SIGTERM.
    assert ending(SIGTERMException(), None) == ("KILLED", "interrupted (SIGTERM)", signal.SIGTERM)
    # After Ctrl-C Lightning exits with status 1: the recorded signal says what it was.
    assert ending(SystemExit(1), signal.SIGINT) == ("KILLED", "interrupted (SIGINT)", signal.SIGINT)
    assert ending(Interrupted(signal.SIGTERM), None)[2] == signal.SIGTERM
    assert ending(KeyboardInterrupt(), None)[0] == "KILLED"


def test_sigterm_outside_training_closes_the_run_killed_with_its_metrics(workdir, monkeypatch):
    """SIGTERM during the test evaluation (after fit, where Lightning has no handler): KILLED, exit code 143, and
    metrics buffered for an hour are flushed when the run closes."""
    from rmlab.module import ObjectiveModule
    from rmlab.run import train

    original = ObjectiveModule.evaluate

    def evaluate(self, split, batches):
        if split == "test":
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, split, batches)

    monkeypatch.setattr(ObjectiveModule, "evaluate", evaluate)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped:
        train(compose_config(*FAST, "logger.flush_every_s=3600"))
    assert stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is handler
    client = store(workdir)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "KILLED" and run.data.tags["error"] == "interrupted (SIGTERM)"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 2  # both epochs, flushed at close
    assert run.data.tags["rmlab.pid"] == str(os.getpid())


# -- processes -----------------------------------------------------------------------------------------------------


def test_process_identity_tells_a_gone_process_from_a_live_one():
    me = processes.identity()
    assert me[processes.HOST_TAG] == processes.host() and me[processes.PID_TAG] == str(os.getpid())
    assert processes.recorded_alive(me) is True
    # Another start time is another process that got the same pid.
    if me[processes.START_TAG]:
        assert processes.recorded_alive({**me, processes.START_TAG: str(int(me[processes.START_TAG]) + 1)}) is False
    ended = subprocess.Popen([PYTHON, "-c", "pass"])
    ended.wait()
    assert processes.pid_alive(ended.pid) is False
    zombie = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"])
    try:
        zombie.kill()
        deadline = time.monotonic() + 30
        while processes.pid_alive(zombie.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not processes.pid_alive(zombie.pid)  # killed, not yet reaped (a zombie): gone
    finally:
        zombie.wait()
    assert processes.recorded_alive({**me, processes.HOST_TAG: "another-host"}) is None
    assert processes.recorded_alive({}) is None


# -- closing runs whose process is gone ----------------------------------------------------------------------------

ORPHAN = """
import sys, time
from rmlab import processes
from rmlab.store import get_or_create_experiment, open_client
uri, name = sys.argv[1], sys.argv[2]
client = open_client(uri)
run = client.create_run(get_or_create_experiment(client, uri, "tidy"), run_name=name, tags=processes.identity())
print(run.info.run_id, flush=True)
time.sleep(600)
"""


def orphan(workdir, name: str) -> str:
    """A run whose process is killed with SIGKILL: it stays RUNNING."""
    proc = subprocess.Popen([PYTHON, "-c", ORPHAN, f"sqlite:///{workdir / 'mlflow.db'}", name], cwd=workdir,
                            env=cli_env(), stdout=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().strip()
    proc.kill()
    proc.wait()
    assert run_id, "the orphan's process did not create its run"
    return run_id


def test_tidy_closes_runs_whose_process_is_gone(workdir):
    from rmlab.store import get_or_create_experiment, open_client

    gone = orphan(workdir, "killed")
    client = open_client(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = get_or_create_experiment(client, f"sqlite:///{workdir / 'mlflow.db'}", "tidy")
    alive = client.create_run(experiment, run_name="alive", tags=processes.identity()).info.run_id
    remote = client.create_run(experiment, run_name="remote", tags={
        processes.HOST_TAG: "another-host", processes.PID_TAG: "1", processes.START_TAG: ""}).info.run_id

    def tidy(*args):
        return subprocess.run([PYTHON, "-m", "rmlab.tidy", *args], cwd=workdir, env=cli_env(), capture_output=True,
                              text=True, timeout=120)

    dry = tidy("--dry-run")
    assert dry.returncode == 0 and f"would close FAILED (process gone): {gone}" in dry.stdout, dry.stderr
    assert client.get_run(gone).info.status == "RUNNING"
    done = tidy()
    assert done.returncode == 0, done.stderr
    assert f"closed FAILED (process gone): {gone}" in done.stdout
    assert f"left RUNNING (process alive): {alive}" in done.stdout and remote in done.stdout
    closed = client.get_run(gone)
    assert closed.info.status == "FAILED" and "ended without closing the run" in closed.data.tags["error"]
    assert client.get_run(alive).info.status == "RUNNING" and client.get_run(remote).info.status == "RUNNING"
    by_id = tidy("--close", remote, "--status", "KILLED")
    assert by_id.returncode == 0 and client.get_run(remote).info.status == "KILLED"
    client.set_terminated(alive, "FINISHED")
    missing = tidy("--tracking-uri", f"sqlite:///{workdir / 'none.db'}")
    assert missing.returncode == 2 and "no MLflow store" in missing.stderr


def test_a_tracked_run_closes_the_runs_left_open_by_dead_processes(workdir):
    from rmlab.run import train

    gone = orphan(workdir, "killed")
    train(compose_config(*FAST, "task=wine"))
    run = store(workdir).get_run(gone)
    assert run.info.status == "FAILED" and "closed by a later rmlab command" in run.data.tags["error"]


# -- the store ---------------------------------------------------------------------------------------------------


def test_experiment_names_never_put_artifacts_outside_mlartifacts(workdir):
    from rmlab.run import train
    from rmlab.store import slug

    assert [slug(n) for n in ("..", ".", "a/../b", "v1.2", "")] == ["experiment", "experiment", "a_.._b", "v1.2",
                                                                     "experiment"]
    results = train(compose_config(*FAST, "task=wine", "experiment=.."))
    (config,) = [p for p in workdir.rglob("config.yaml") if results["run_id"] in p.parts]
    assert config.is_relative_to(workdir / "mlartifacts")


def test_unusable_store_is_one_line_before_anything_is_created(tmp_path):
    from rmlab.errors import StoreError
    from rmlab.store import check_writable, open_client

    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="is not a folder"):
        check_writable(f"sqlite:///{tmp_path / 'file' / 'sub' / 'mlflow.db'}")
    (tmp_path / "garbage.db").write_text("not a database")
    with pytest.raises(StoreError, match="cannot open the MLflow store") as err:
        open_client(f"sqlite:///{tmp_path / 'garbage.db'}")
    assert "\n" not in str(err.value)


def test_planned_jobs_counts_the_basic_sweepers_grid():
    from hydra import compose, initialize_config_dir

    from rmlab.paths import CONFIG_DIR
    from rmlab.sweep import planned_jobs

    from omegaconf import open_dict

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("config", overrides=["sweep=noise_robustness"], return_hydra_config=True)
    assert planned_jobs(cfg) == 5 * 5 * 3  # the preset's grid: 5 losses x 5 noise levels x 3 seeds
    with open_dict(cfg):  # as `-m sweep=noise_robustness loss=gce,sce task=wine` would set it
        cfg.hydra.overrides.task = ["sweep=noise_robustness", "loss=gce,sce", "task=wine"]
    assert planned_jobs(cfg) == 2 * 5 * 3


def test_store_lock_file_sits_beside_the_store(workdir):
    from rmlab.store import open_client

    open_client(f"sqlite:///{workdir / 'sub' / 'mlflow.db'}")
    assert (workdir / "sub" / ".mlflow.db.lock").is_file() and (workdir / "sub" / "mlflow.db").is_file()
