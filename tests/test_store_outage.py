"""A tracking store that is down or goes away, in-process and in seconds: the clear error at start, the bounded retry of
the buffered metrics, the unsent-metrics file and its replay, the points count; and credentials kept out of everything
rmlab records. The same against a real ``mlflow server`` on PostgreSQL is in test_server.py."""

from __future__ import annotations

import json
import logging
import subprocess
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from rmlab import replay, spool
from rmlab.credentials import redact
from rmlab.errors import MetricsNotStored, StoreUnreachable
from rmlab.tracking import POINTS_TAG, Tracker
from tests.conftest import PYTHON, cli_env
from tests.servers import free_port

SECRET = "s3cr3t-Pa55"


def stored_points(client: MlflowClient, run_id: str) -> int:
    run = client.get_run(run_id)
    return sum(len(client.get_metric_history(run_id, key)) for key in run.data.metrics)


@pytest.mark.parametrize("text, expected", [
    (f"http://alice:{SECRET}@10.0.0.5:5000", "http://alice:***@10.0.0.5:5000"),
    (f"postgresql+psycopg://mlflow:{SECRET}@db:5432/mlflow", "postgresql+psycopg://mlflow:***@db:5432/mlflow"),
    (f"https://u:p@ss:{SECRET}@host/api", "https://u:***@host/api"),  # an unescaped @ in the password
    (f"https://{SECRET}@host", "https://***@host"),  # a token as the user
    (f"python -m rmlab logger.tracking_uri=http://a:{SECRET}@h:1 seed=1", "python -m rmlab logger.tracking_uri=http://a:***@h:1 seed=1"),
    (f"sqlite:///db?password={SECRET}&mode=ro", "sqlite:///db?password=***&mode=ro"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("someone@example.com 0.001 a=b", "someone@example.com 0.001 a=b"),
])
def test_redact_masks_passwords_in_uris(text, expected):
    assert redact(text) == expected


def test_credentials_never_reach_params_tags_text_or_artifacts(workdir):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    tracker = Tracker(uri, "secrets")
    tracker.start("r", {"command": f"python -m rmlab logger.tracking_uri=http://bob:{SECRET}@h:5000"})
    tracker.log_params({"logger.tracking_uri": f"http://bob:{SECRET}@h:5000", "optimizer.lr": "0.001"})
    tracker.set_tags({"note": f"postgresql://bob:{SECRET}@db/x"})
    tracker.log_text(f"tracking_uri: http://bob:{SECRET}@h:5000\n", "config.yaml")
    (workdir / "multirun.yaml").write_text(f"overrides: [logger.tracking_uri=http://bob:{SECRET}@h:5000]\n")
    tracker.log_artifact(workdir / "multirun.yaml")
    (workdir / "weights.ckpt").write_bytes(b"\x00binary " + SECRET.encode())  # not text: uploaded as it is
    tracker.log_artifact(workdir / "weights.ckpt")
    tracker.finish("FAILED", error=f"MlflowException: API request to http://bob:{SECRET}@h:5000/api failed")

    run = MlflowClient(uri).get_run(tracker.run_id)
    recorded = json.dumps([run.data.params, run.data.tags])
    assert SECRET not in recorded and "bob:***@h:5000" in recorded
    assert run.data.params["optimizer.lr"] == "0.001"
    folder = workdir / "down"
    folder.mkdir()
    MlflowClient(uri).download_artifacts(tracker.run_id, "", str(folder))
    assert SECRET not in (folder / "config.yaml").read_text() + (folder / "multirun.yaml").read_text()
    assert "bob:***@h" in (folder / "multirun.yaml").read_text()
    assert (folder / "weights.ckpt").read_bytes() == (workdir / "weights.ckpt").read_bytes()
    assert SECRET in (workdir / "multirun.yaml").read_text()  # the local file itself is left alone


def test_server_down_at_start_is_an_error_within_seconds():
    uri = f"http://alice:{SECRET}@127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(StoreUnreachable) as raised:
        Tracker(uri, "x")
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert "is not reachable (connection refused)" in message and "alice:***@127.0.0.1" in message
    assert SECRET not in message and "\n" not in message


@pytest.mark.slow
def test_cli_with_a_server_down_exits_2_with_one_line(tmp_path):
    port = free_port()
    done = subprocess.run([PYTHON, "-m", "rmlab", "task=wine", "trainer.max_epochs=1"], cwd=tmp_path,
                          env=cli_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"rmlab: error: tracking server http://127.0.0.1:{port} is not reachable (connection refused). Start it, or "
        "point logger.tracking_uri or MLFLOW_TRACKING_URI at a running one")
    assert "Traceback" not in done.stderr and not (tmp_path / "mlflow.db").exists()


class Outage:
    """Stands in for the store's log_batch: the first ``failures`` calls fail as MLflow reports a server that does not
    answer (a 503), then the real call goes through."""

    def __init__(self, real, failures: int, code=TEMPORARILY_UNAVAILABLE):
        self.real, self.failures, self.code, self.calls = real, failures, code, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise MlflowException("API request to /api/2.0/mlflow/runs/log-batch failed: Connection refused",
                                  self.code)
        return self.real(*args, **kwargs)


def test_store_back_within_retry_s_loses_nothing(workdir, monkeypatch, caplog):
    tracker = Tracker(None, "blip", flush_every_s=1000, retry_s=60)
    tracker.start("r", {})
    outage = Outage(tracker.client.log_batch, failures=2)
    monkeypatch.setattr(tracker.client, "log_batch", outage)
    with caplog.at_level(logging.WARNING, logger="rmlab"):
        for step in range(50):
            tracker.log_metrics({"train/loss": 1.0 / (step + 1), "epoch": step // 10}, step=step)
        tracker.finish("FINISHED")
    client = MlflowClient(tracker.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and stored_points(client, tracker.run_id) == 50 + 50
    assert run.data.tags[POINTS_TAG] == "100"
    assert outage.calls == 3
    assert "does not answer (connection refused); retrying the metrics for up to 60 s" in caplog.text
    assert "answers again" in caplog.text


def test_epoch_logged_again_at_the_same_step_is_sent_once(workdir):
    tracker = Tracker(None, "dedup")
    tracker.start("r", {})
    tracker.log_metrics({"train/loss": 0.5, "epoch": 0.0}, step=3)
    tracker.log_metrics({"val/loss": 0.7, "epoch": 0.0}, step=3)  # what Lightning does at an epoch's end
    tracker.log_metrics({"val/loss": 0.6, "epoch": 1.0}, step=6)
    tracker.finish("FINISHED")
    client = MlflowClient(tracker.uri)
    assert [m.step for m in client.get_metric_history(tracker.run_id, "epoch")] == [3, 6]
    assert client.get_run(tracker.run_id).data.tags[POINTS_TAG] == "5" == str(stored_points(client, tracker.run_id))


def test_a_request_the_store_rejects_is_not_retried(workdir, monkeypatch):
    tracker = Tracker(None, "rejected", flush_every_s=1000, retry_s=60)
    tracker.start("r", {})
    outage = Outage(tracker.client.log_batch, failures=10, code=INVALID_PARAMETER_VALUE)
    monkeypatch.setattr(tracker.client, "log_batch", outage)
    tracker.log_metrics({"m": 1.0}, step=0)
    started = time.monotonic()
    with pytest.raises(MlflowException):
        tracker.finish("FINISHED")
    assert time.monotonic() - started < 10 and outage.calls == 1
    monkeypatch.undo()
    assert MlflowClient(tracker.uri).get_run(tracker.run_id).info.status == "FAILED"


def test_store_gone_for_good_spools_then_replay_stores_and_closes(workdir, monkeypatch, capsys):
    tracker = Tracker(None, "outage", flush_every_s=0.0001, retry_s=0.5)
    tracker.start("r", {})
    tracker.log_metrics({"train/loss": 9.0}, step=0)  # stored before the outage
    tracker.flush()
    assert tracker.sent_point("train/loss", 0).value == 9.0
    outage = Outage(tracker.client.log_batch, failures=10**9)
    monkeypatch.setattr(tracker.client, "log_batch", outage)
    for step in range(1, 31):
        tracker.log_metrics({"train/loss": 1.0 / step}, step=step)
    started = time.monotonic()
    with pytest.raises(MetricsNotStored) as raised:
        tracker.finish("FINISHED")
    assert time.monotonic() - started < 10  # bounded by retry_s, plus one more try at the end
    # Points kept for the unsent-metrics file are in no store: nothing may be linked to them as stored.
    assert tracker.sent_point("train/loss", 30) is None
    message = str(raised.value)
    path = tracker.unsent_path
    assert "\n" not in message and f"30 metric points of run {tracker.run_id} are kept in {path}" in message
    assert f"python -m rmlab.replay {path}" in message and path.parent == workdir
    header, points = spool.read(path)
    assert (header["status"], header["points_sent_before"], len(points)) == ("FINISHED", 1, 30)

    monkeypatch.undo()  # the server is back
    client = MlflowClient(tracker.uri)
    assert client.get_run(tracker.run_id).info.status == "RUNNING"
    assert replay.main([str(path), "--tracking-uri", tracker.uri]) == 0
    assert f"replayed 30 metric points into run {tracker.run_id}" in capsys.readouterr().out
    run = client.get_run(tracker.run_id)
    history = [m.value for m in client.get_metric_history(tracker.run_id, "train/loss")]
    assert run.info.status == "FINISHED" and sorted(history) == sorted([9.0] + [1.0 / s for s in range(1, 31)])
    assert not path.exists() and path.with_name(path.name + ".replayed").exists()
    assert replay.main([str(path)]) == 2  # replayed already: nothing is stored twice


def test_replay_needs_the_credentials_it_never_wrote(workdir, capsys):
    path = spool.write(workdir / "u.jsonl", uri=f"http://alice:{SECRET}@127.0.0.1:9", run_id="abc", experiment="e",
                       status="FINISHED", error=None, sent=0, metrics=[])
    assert SECRET not in path.read_text()
    assert replay.main([str(path)]) == 2
    assert "needed credentials, which rmlab never writes to disk" in capsys.readouterr().err
    assert replay.main([str(path), "--tracking-uri", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "is not reachable (connection refused)" in capsys.readouterr().err
    (workdir / "bad.jsonl").write_text('{"format": "other"}\n')
    assert replay.main([str(workdir / "bad.jsonl")]) == 2
    assert "not an rmlab unsent-metrics file" in capsys.readouterr().err


def test_final_tags_and_skipped_uploads_of_a_run_whose_store_went_away(workdir, monkeypatch, capsys, caplog):
    """After training a run records tags and uploads its model and checkpoint. With the store gone for good, the
    tags wait in the unsent-metrics file (replay stores them) and the uploads are skipped with a warning, instead of
    failing the run."""
    tracker = Tracker(None, "late", flush_every_s=0.0001, retry_s=0.3)
    tracker.start("r", {})
    tracker.log_metrics({"train/loss": 1.0}, step=0)
    tracker.flush()
    outage = Outage(tracker.client.log_batch, failures=10**9)
    monkeypatch.setattr(tracker.client, "log_batch", outage)
    tracker.log_metrics({"train/loss": 0.5}, step=1)
    assert tracker.drain() is False and tracker.store_away  # given up after retry_s
    tracker.set_final_tags({"rmlab.selection": "best"})
    uploads = []
    with caplog.at_level(logging.WARNING, logger="rmlab"):
        assert tracker.upload("the MLflow model", uploads.append, "model") is None
    assert uploads == [] and f"the MLflow model of run {tracker.run_id} is not stored" in caplog.text
    with pytest.raises(MetricsNotStored):
        tracker.finish("FINISHED")
    header, _ = spool.read(tracker.unsent_path)
    assert header["tags"] == {"rmlab.selection": "best"} and header["not_stored"] == ["the MLflow model"]

    monkeypatch.undo()
    assert replay.main([str(tracker.unsent_path), "--tracking-uri", tracker.uri]) == 0
    assert "not replayable: the MLflow model" in capsys.readouterr().out
    run = MlflowClient(tracker.uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["rmlab.selection"] == "best"
    assert run.data.tags[POINTS_TAG] == "2"


def test_final_tags_travel_with_the_last_batch_and_an_upload_the_store_refuses_is_skipped(workdir, monkeypatch):
    tracker = Tracker(None, "late-ok", flush_every_s=1000)
    tracker.start("r", {})
    tracker.set_final_tags({"rmlab.selection": "last"})
    assert "rmlab.selection" not in tracker.get().data.tags  # held back until the run closes

    def down(*args):
        raise MlflowException("API request to /api/2.0/mlflow-artifacts failed: Connection refused",
                              TEMPORARILY_UNAVAILABLE)

    assert tracker.upload("the checkpoint best.ckpt", down) is None and tracker.not_stored == ["the checkpoint best.ckpt"]
    with pytest.raises(ZeroDivisionError):  # not the store: a bug, raised as it is
        tracker.upload("x", lambda: 1 / 0)
    tracker.finish("FINISHED")
    run = tracker.get()
    assert run.info.status == "FINISHED" and run.data.tags["rmlab.selection"] == "last"


def logged_model(tracker: Tracker) -> str:
    return tracker.client.create_logged_model(tracker.experiment_id, name="model", source_run_id=tracker.run_id).model_id


def test_a_waiting_test_point_is_linked_to_the_model_in_the_final_batch_without_a_write_of_its_own(workdir, monkeypatch):
    tracker = Tracker(None, "links", flush_every_s=3600)
    tracker.start("r", {})
    tracker.log_metrics({"train/loss": 2.0}, step=0)
    tracker.drain()  # sent: only a re-log can link it
    tracker.log_metrics({"test/reward": 0.75, "train/loss": 1.0}, step=3)
    model_id = logged_model(tracker)
    writes = []
    log_batch = tracker.client.log_batch
    monkeypatch.setattr(tracker.client, "log_batch", lambda *a, **kw: writes.append(kw) or log_batch(*a, **kw))
    keys = ["test/reward", "train/loss", "val/best_reward"]
    assert tracker.link_waiting(model_id, keys, step=0) == keys  # nothing waits at step 0 (train/loss: sent)
    assert tracker.link_waiting(model_id, ["test/reward", "val/best_reward"], step=3) == ["val/best_reward"]
    assert writes == []
    tracker.finish("FINISHED")
    assert len(writes) == 1  # the final batch: the points, the link, the closing tags
    linked = tracker.client.get_logged_model(model_id).metrics
    assert [(m.key, m.value, m.step) for m in linked] == [("test/reward", 0.75, 3)]
    assert [m.value for m in tracker.client.get_metric_history(tracker.run_id, "test/reward")] == [0.75]
    assert stored_points(tracker.client, tracker.run_id) == 3


def test_a_linked_point_kept_for_the_unsent_metrics_file_is_linked_when_replayed(workdir, monkeypatch):
    tracker = Tracker(None, "links", flush_every_s=3600, retry_s=0.2)
    tracker.start("r", {})
    tracker.log_metrics({"test/reward": 0.5, "train/loss": 1.0}, step=1)
    model_id = logged_model(tracker)
    assert tracker.link_waiting(model_id, ["test/reward"], step=1) == []
    monkeypatch.setattr(tracker.client, "log_batch", Outage(tracker.client.log_batch, failures=10**9))
    with pytest.raises(MetricsNotStored):
        tracker.finish("FINISHED")
    header, points = spool.read(tracker.unsent_path)
    assert {(p.key, p.model_id) for p in points} == {("test/reward", model_id), ("train/loss", None)}
    assert header["format"] == spool.LINKED_FORMAT
    monkeypatch.undo()
    assert replay.main([str(tracker.unsent_path), "--tracking-uri", tracker.uri]) == 0
    client = MlflowClient(tracker.uri)
    assert [(m.key, m.value) for m in client.get_logged_model(model_id).metrics] == [("test/reward", 0.5)]
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_a_model_whose_test_metrics_cannot_be_stored_is_never_ready(workdir, monkeypatch):
    """The test point is already on its way to the store (sent as soon as logged) when the model is logged; the
    store then goes away: the model ends FAILED and the run says it is not stored, never READY without its metrics."""
    from rmlab.build import build_components
    from rmlab.serving.export import _link_metrics, log_model
    from tests.conftest import compose_config

    cfg = compose_config("task=wine", "trainer.max_epochs=1")
    parts = build_components(cfg)
    tracker = Tracker(None, "links", flush_every_s=0.0, retry_s=0.3)
    tracker.start("r", {})
    tracker.log_metrics({"test/reward": 0.25}, step=2)
    model_id = logged_model(tracker)
    _link_metrics(tracker, model_id, 2, {"test/reward": 0.25})  # the store is up: linked once the point is stored
    assert [(m.key, m.value) for m in tracker.client.get_logged_model(model_id).metrics] == [("test/reward", 0.25)]
    assert [m.value for m in tracker.client.get_metric_history(tracker.run_id, "test/reward")] == [0.25]

    monkeypatch.setattr(tracker.client, "log_batch", Outage(tracker.client.log_batch, failures=10**9))
    tracker.log_metrics({"test/reward": 0.5}, step=3)
    assert tracker.upload("the MLflow model", log_model, tracker, cfg, parts, 3, {"test/reward": 0.5}) is None
    assert tracker.not_stored == ["the MLflow model"]
    models = tracker.client.search_logged_models([tracker.experiment_id])
    assert sorted(m.status for m in models) == ["FAILED", "PENDING"]  # ours, and the one made by hand above
