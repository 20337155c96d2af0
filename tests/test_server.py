"""A team tracking server, for real: PostgreSQL (Debian's package, installed if missing) and ``mlflow server`` on it,
both started here on loopback. A parallel sweep writes to it with a password in the URI; what PostgreSQL holds is read
back with SQL; the password appears nowhere rmlab records or logs. Then the server is stopped in the middle of a run
and started again, and the run's unsent metrics are replayed into it.

About 2 minutes on 2 cores (the server's own start-up is a good part of it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from rmlab.tracking import POINTS_TAG, flatten
from tests.conftest import PYTHON, cli_env, compose_config
from tests.servers import MlflowServer, Postgres, ensure_postgres, scratch_dir

pytestmark = [pytest.mark.server, pytest.mark.slow]

SECRET = "pw-Team-7f3a"
FAST = ["task=wine", "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "trainer.num_threads=1"]


@pytest.fixture(scope="module")
def team():
    pytest.importorskip("psycopg")
    try:
        ensure_postgres()
    except RuntimeError as err:
        pytest.skip(str(err))
    root = scratch_dir("rmlab-team-")
    postgres = Postgres(root / "pg").start()
    server = None
    try:
        server = MlflowServer(postgres.create_database("mlflow"), root / "server").start()
        yield postgres, server
    finally:
        if server is not None:
            server.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


def with_password(url: str) -> str:
    return url.replace("http://", f"http://alice:{SECRET}@")


def sql(postgres: Postgres, query: str, *args) -> list[tuple]:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=postgres.port, user=postgres.user, password=postgres.password,
                         dbname="mlflow") as conn:
        return conn.execute(query, args).fetchall()


def test_parallel_sweep_lands_in_postgres_and_the_password_nowhere(team, tmp_path):
    postgres, server = team
    sweep_dir = tmp_path / "sweep"
    done = subprocess.run(
        [PYTHON, "-m", "rmlab", "-m", *FAST, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2,3",
         "experiment=team", f"logger.tracking_uri={with_password(server.url)}", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]

    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name("team")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("rmlab.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and parents[0].data.tags["failures"] == "0"
    assert sorted(c.data.params["seed"] for c in children) == ["0", "1", "2", "3"]

    # What PostgreSQL holds, read with SQL rather than through MLflow.
    expected_params = len(flatten(OmegaConf.to_container(compose_config(*FAST, "experiment=team"), resolve=True)))
    for child in children:
        run_id = child.info.run_id
        [(status,)] = sql(postgres, "SELECT status FROM runs WHERE run_uuid = %s", run_id)
        [(points,)] = sql(postgres, "SELECT count(*) FROM metrics WHERE run_uuid = %s", run_id)
        [(params,)] = sql(postgres, "SELECT count(*) FROM params WHERE run_uuid = %s", run_id)
        assert status == "FINISHED"
        assert points == int(child.data.tags[POINTS_TAG]) > 20  # every point the job sent is stored
        assert params == expected_params
        assert child.data.params["logger.tracking_uri"] == with_password(server.url).replace(SECRET, "***")

    # The password: not in params, tags or artifacts of any run, not in the output or the log files.
    for run in runs:
        assert SECRET not in json.dumps([run.data.params, run.data.tags])
        folder = tmp_path / "artifacts" / run.info.run_id
        folder.mkdir(parents=True)
        client.download_artifacts(run.info.run_id, "", str(folder))
        for path in folder.rglob("*"):
            assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path
        if run.data.tags.get("rmlab.role") != "parent":  # uploaded through the server, its password in the URI
            assert (folder / "config.yaml").is_file() and (folder / "command.txt").is_file()
            [output] = run.outputs.model_outputs  # its model's files went up through the server too
            assert client.get_logged_model(output.model_id).status == "READY"
    assert SECRET not in out
    logs = list(sweep_dir.rglob("*.log"))
    assert logs and not [p for p in logs if SECRET in p.read_text()]
    assert list((tmp_path / "artifacts" / parents[0].info.run_id).glob("multirun.yaml"))


def test_server_gone_mid_run_then_back_replays_and_closes_the_run(team, tmp_path):
    postgres, server = team
    client = MlflowClient(server.url)
    run = subprocess.Popen(
        [PYTHON, "-m", "rmlab", "task=wine", "trainer.max_epochs=300", "trainer.enable_progress_bar=false",
         "trainer.num_threads=1", "experiment=outage", "logger.flush_every_s=0.2", "logger.retry_s=3"],
        cwd=tmp_path, env=cli_env(MLFLOW_TRACKING_URI=with_password(server.url)), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        # Stop the server once the run has stored its first metrics; the run is paused meanwhile, so that it is still
        # training when the server is gone, however fast the machine.
        deadline = time.monotonic() + 300
        run_id = None
        while time.monotonic() < deadline and run.poll() is None:
            found = client.search_runs([e.experiment_id for e in client.search_experiments()
                                        if e.name == "outage"]) if run_id is None else [client.get_run(run_id)]
            if found and found[0].data.metrics:
                run_id = found[0].info.run_id
                break
            time.sleep(0.2)
        assert run_id is not None, "the run stored no metrics"
        os.kill(run.pid, signal.SIGSTOP)
        try:
            server.stop()
        finally:
            os.kill(run.pid, signal.SIGCONT)
        out, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, out[-3000:]
    assert "does not answer (connection refused); retrying the metrics for up to 3 s (logger.retry_s)" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("rmlab: run failed: the tracking store http://alice:***@127.0.0.1") and SECRET not in out
    spool_file = Path(last.split("python -m rmlab.replay ")[1])
    assert spool_file.is_file() and SECRET not in spool_file.read_text()

    server.start()  # the same port, the same PostgreSQL database
    assert client.get_run(run_id).info.status == "RUNNING"
    replayed = subprocess.run([PYTHON, "-m", "rmlab.replay", str(spool_file)], cwd=tmp_path,
                              env=cli_env(MLFLOW_TRACKING_URI=with_password(server.url)), capture_output=True,
                              text=True, timeout=300)
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    assert f"into run {run_id} at http://alice:***@127.0.0.1" in replayed.stdout and SECRET not in replayed.stdout
    stored = client.get_run(run_id)
    [(points,)] = sql(postgres, "SELECT count(*) FROM metrics WHERE run_uuid = %s", run_id)
    assert stored.info.status == "FINISHED" and "test/reward" in stored.data.metrics
    assert points == int(stored.data.tags[POINTS_TAG])
    # What the run recorded after training came with the replay; the model upload was skipped, and both say so.
    assert stored.data.tags["rmlab.selection"] == "best" and float(stored.data.tags["rmlab.first_step_unix"]) > 0
    assert "the MLflow model of run" in out and "is not stored" in out
    assert "not replayable: the MLflow model" in replayed.stdout
