"""Reusing a FINISHED run instead of training again: only when everything that decides its numbers is the same.

The reuse key (``rmlab.provenance``) covers the resolved config, rmlab's own code and configs, the task's data file
and the library versions; the git commit of the current directory plays no part. A reused child carries the
original's params, result tags and the whole history of every metric.
"""

import shutil
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from rmlab import provenance
from rmlab.losses import CrossEntropy
from rmlab.run import train
from rmlab.tracking import Tracker
from tests.conftest import FAST, PYTHON, REPO, cli_env, compose_config


class MyCrossEntropy(CrossEntropy):
    """A user's own loss (a _target_ outside rmlab): its code is not in rmlab's digest."""


def csv_rows(shift: float = 0.0) -> str:
    return "a,b,label\n" + "".join(f"{i * 0.1 + shift},{(i * 7) % 5},{i % 3}\n" for i in range(300))


@pytest.fixture
def parent(workdir):
    tracker = Tracker(None, "rmlab")
    tracker.start("sweep-parent", {"rmlab.role": "parent"})
    return tracker.run_id


def client(workdir) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


def test_reuse_carries_the_whole_history_and_a_changed_data_file_trains_again(workdir, parent):
    data = workdir / "data.csv"
    data.write_text(csv_rows())
    cfg = compose_config(*FAST, "task=csv", f"task.path={data}", "task.target=label", "trainer.max_epochs=3",
                         "trainer.log_every_n_steps=1")
    first = train(cfg, parent_run_id=parent)
    again = train(cfg, parent_run_id=parent)
    assert again["reused_from"] == first["run_id"] and again["test/reward"] == first["test/reward"]

    store = client(workdir)
    original, copy = store.get_run(first["run_id"]), store.get_run(again["run_id"])
    assert copy.info.status == "FINISHED" and copy.data.tags["rmlab.reused_from"] == first["run_id"]
    assert copy.data.tags["mlflow.parentRunId"] == parent and copy.data.params == original.data.params
    assert copy.data.tags["rmlab.selection"] == original.data.tags["rmlab.selection"] == "best"
    assert set(copy.data.metrics) == set(original.data.metrics)
    for name in original.data.metrics:  # every step of every curve, not only the final values
        want = [(m.step, m.value) for m in store.get_metric_history(first["run_id"], name)]
        got = [(m.step, m.value) for m in store.get_metric_history(again["run_id"], name)]
        assert sorted(got) == sorted(want), name
    assert len(store.get_metric_history(again["run_id"], "val/reward")) == 3
    assert len(store.get_metric_history(again["run_id"], "train/loss_step")) == 3 * 4  # 4 steps an epoch

    data.write_text(csv_rows(shift=0.05))  # same name, same config, other contents
    changed = train(cfg, parent_run_id=parent)
    assert "reused_from" not in changed
    tags = store.get_run(changed["run_id"]).data.tags
    assert tags["rmlab.data_digest"] != original.data.tags["rmlab.data_digest"]
    assert tags["rmlab.reuse_key"] != original.data.tags["rmlab.reuse_key"]
    assert tags["rmlab.config_hash"] == original.data.tags["rmlab.config_hash"]


def test_a_component_from_outside_rmlab_is_never_reused(workdir, parent):
    cfg = compose_config(*FAST, "task=wine", "trainer.max_epochs=1", "loss._target_=tests.test_reuse.MyCrossEntropy")
    first = train(cfg, parent_run_id=parent)
    again = train(cfg, parent_run_id=parent)
    assert "reused_from" not in again
    tags = client(workdir).get_run(again["run_id"]).data.tags
    assert "rmlab.reuse_key" not in tags and "tests.test_reuse.MyCrossEntropy" in tags["rmlab.no_reuse"]
    assert first["run_id"] != again["run_id"]


def test_the_key_covers_code_config_data_and_versions(tmp_path, monkeypatch):
    (tmp_path / "d.csv").write_text(csv_rows())
    cfg = compose_config("task=csv", f"task.path={tmp_path / 'd.csv'}", "task.target=label")
    key = provenance.provenance(cfg)["rmlab.reuse_key"]
    assert provenance.provenance(compose_config("task=csv", f"task.path={tmp_path / 'd.csv'}", "task.target=label",
                                                "seed=1"))["rmlab.reuse_key"] != key
    monkeypatch.setattr(provenance, "dependency_versions", lambda: {"torch": "0.0"})
    assert provenance.provenance(cfg)["rmlab.reuse_key"] != key
    monkeypatch.undo()
    monkeypatch.setattr(provenance, "code_digest", lambda: "0" * 16)
    assert provenance.provenance(cfg)["rmlab.reuse_key"] != key
    versions = provenance.dependency_versions()
    assert {"python", "rmlab", "torch", "pytorch-lightning", "mlflow", "numpy", "scikit-learn"} <= set(versions)


@pytest.mark.slow
def test_outside_a_repository_a_change_to_rmlabs_code_trains_again(tmp_path):
    """A copy of rmlab in a folder that is no git repository: the same command is reused while the code is the same,
    and trained again after an edit (that git would not even see, there being no repository)."""
    src = tmp_path / "src"
    for part in ("rmlab", "conf", "hydra_plugins"):
        shutil.copytree(REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    work.mkdir()
    outside = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True)
    assert outside.returncode != 0, "the test folder must not be inside a git repository"
    env = {**cli_env(), "PYTHONPATH": str(src)}

    def sweep(name: str) -> dict:
        cmd = [PYTHON, "-m", "rmlab", "-m", "task=wine", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
               "trainer.num_threads=1", "seed=0", f"hydra.sweep.dir={work / name}"]
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        store = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
        runs = store.search_runs([e.experiment_id for e in store.search_experiments()],
                                 f"tags.`rmlab.sweep_dir` = '{work / name}' and tags.`rmlab.job_num` = '0'")
        assert len(runs) == 1
        return runs[0].data.tags

    first = sweep("s1")
    assert "mlflow.source.git.commit" not in first  # no repository: no git chip in the UI
    assert first["rmlab.code_digest"] == provenance.code_digest(src / "rmlab", src / "conf")
    same = sweep("s2")
    assert same.get("rmlab.reused_from"), "an unchanged code and config should be reused"
    with open(src / "rmlab" / "losses" / "classification.py", "a") as f:
        f.write("\n# an edit that changes no behaviour, but the code is not the one that ran\n")
    edited = sweep("s3")
    assert "rmlab.reused_from" not in edited
    assert edited["rmlab.code_digest"] != first["rmlab.code_digest"]
