"""Sweeps end to end: the MLflow parent run, its children, the summary, failures, reuse on re-run, parallel and
submitit launchers, Optuna resume, Ctrl-C; plus the summary maths and the sweep presets, in-process.

Each sweep is a real ``python -m rmlab -m ...`` subprocess in its own directory (store: ``./mlflow.db`` there). A sweep
pays ~5 s of imports before its first job, so the module starts every sweep the selected tests need at once, in a
thread pool, and each test waits for its own (about 70 s of wall time on 2 cores for all of them).
"""

from __future__ import annotations

import csv
import itertools
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from rmlab import summary
from rmlab.sweep import PARENT_RUN_FILE, SweepCallback
from tests.conftest import PYTHON, REPO, cli_env, compose_config

# One torch thread per job: the sweeps run side by side, and spinning OpenMP threads would only fight for the cores.
FAST = ["task=wine", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.num_threads=1"]
GRID = ["loss=cross_entropy,gce", "seed=0,1"]
LR_SPACE = "optimizer.lr=tag(log, interval(1e-4, 1e-2))"
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Sweep:
    cwd: Path
    sweep_dir: Path
    rc: int
    out: str
    seconds: float

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=f"sqlite:///{self.cwd / 'mlflow.db'}")

    def runs(self) -> tuple[list, list]:
        """(parents, children) in the store, oldest first."""
        client = self.client
        ids = [e.experiment_id for e in client.search_experiments()]
        runs = sorted(client.search_runs(ids, max_results=1000), key=lambda r: r.info.start_time)
        parents = [r for r in runs if r.data.tags.get("rmlab.role") == "parent"]
        return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]

    def parent(self):
        """This sweep's parent run (the one whose sweep directory is this sweep's)."""
        found = [p for p in self.runs()[0] if p.data.tags["rmlab.sweep_dir"] == str(self.sweep_dir)]
        assert len(found) == 1, self.out
        return found[0]

    def children(self, parent) -> list:
        return [c for c in self.runs()[1] if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]

    def artifact(self, run, name: str) -> Path:
        return Path(self.client.download_artifacts(run.info.run_id, name, str(self.cwd)))


def run_sweep(cwd: Path, *args: str, sweep_dir: str = "sweep", wait: bool = True):
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [PYTHON, "-m", "rmlab", "-m", *FAST, f"hydra.sweep.dir={cwd / sweep_dir}", *args]
    start = time.perf_counter()
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    proc = subprocess.run(cmd, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300)
    return Sweep(cwd, cwd / sweep_dir, proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start)


def grid_then_rerun(cwd: Path) -> tuple[Sweep, Sweep]:
    """The 2 x 2 grid, then the same command again (into another sweep dir): everything is reused."""
    return run_sweep(cwd, *GRID), run_sweep(cwd, *GRID, sweep_dir="again")


def optuna_resume(cwd: Path) -> tuple[Sweep, Sweep]:
    first = run_sweep(cwd, "hydra/sweeper=rmlab_optuna", "hydra.sweeper.n_trials=3", LR_SPACE, sweep_dir="s1")
    second = run_sweep(cwd, "hydra/sweeper=rmlab_optuna", "hydra.sweeper.n_trials=4", LR_SPACE, sweep_dir="s2")
    return first, second


def interrupted(cwd: Path) -> Sweep:
    """A long sweep, Ctrl-C'd once its first job's run is RUNNING."""
    start = time.perf_counter()
    proc = run_sweep(cwd, "trainer.max_epochs=100000", "seed=0,1", wait=False)
    client = None  # created once the sweep has made the store: a client initialises a fresh sqlite file itself
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if not (cwd / "sweep" / PARENT_RUN_FILE).is_file():
            continue
        client = client or MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
        ids = [e.experiment_id for e in client.search_experiments()]
        if client.search_runs(ids, "tags.`rmlab.job_num` = '0' and attributes.status = 'RUNNING'"):
            break
    proc.send_signal(signal.SIGINT)
    try:  # generous: on a loaded 2-core machine closing the job and the parent can take a while
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the sweep did not end within 180 s of Ctrl-C; its output:\n{out}") from None
    return Sweep(cwd, cwd / "sweep", proc.returncode, out, time.perf_counter() - start)


# Scenario -> (function, tests that need it). Only the scenarios of the selected tests are started.
SCENARIOS = {
    "grid": (grid_then_rerun, ("test_grid_parent_children_and_summary", "test_rerun_reuses_finished_jobs")),
    "joblib": (lambda cwd: run_sweep(cwd, *GRID, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
               ("test_parallel_joblib_sweep_on_fresh_store_loses_nothing",)),
    "failing": (lambda cwd: (run_sweep(cwd, "optimizer.lr=1e-3,-1"),
                             run_sweep(cwd, "loss=gce,hubber", sweep_dir="typo"),
                             run_sweep(cwd / "trainer", "trainer.strategy=auto,bogus_strategy")),
                ("test_failed_job_is_counted_and_sweep_goes_on",)),
    "optuna": (optuna_resume, ("test_optuna_sweep_resumes_study_with_one_parent_per_sweep",)),
    "submitit": (lambda cwd: run_sweep(cwd, "loss=cross_entropy,gce", "hydra/launcher=submitit_local"),
                 ("test_submitit_local_launcher",)),
    "interrupted": (interrupted, ("test_ctrl_c_closes_parent_killed",)),
}


@pytest.fixture(scope="module")
def sweeps(request, tmp_path_factory) -> dict[str, Future]:
    selected = {item.name for item in request.session.items if item.module is sys.modules[__name__]}
    needed = [name for name, (_, tests) in SCENARIOS.items() if selected & set(tests)]
    root = tmp_path_factory.mktemp("sweeps")
    # A few at a time: on 2 cores more sweeps side by side only add contention.
    pool = ThreadPoolExecutor(max_workers=max(1, min(len(needed), (os.cpu_count() or 1) + 1)))
    # A rerun has to follow its grid, so the pair is one scenario.
    futures = {name: pool.submit(SCENARIOS[name][0], root / name) for name in needed}
    yield futures
    pool.shutdown(wait=True)


def finished_ok(sweep: Sweep) -> None:
    assert sweep.rc == 0, sweep.out
    assert "Traceback" not in sweep.out and "job failed" not in sweep.out, sweep.out


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- end to end --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_grid_parent_children_and_summary(sweeps):
    sweep, _ = sweeps["grid"].result()
    finished_ok(sweep)
    parent = sweep.parent()
    tags = parent.data.tags
    assert parent.info.status == "FINISHED" and tags["rmlab.role"] == "parent" and tags["failures"] == "0"
    assert tags["rmlab.sweep_dir"] == str(sweep.sweep_dir) and "loss=cross_entropy,gce" in tags["command"]
    assert tags["sweep_id"] == parent.info.run_id  # unique per invocation, even in a reused folder
    assert (sweep.sweep_dir / PARENT_RUN_FILE).read_text().strip() == parent.info.run_id
    assert parent.data.params["sweep.launcher"] == "basic"

    children = sweep.children(parent)
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    cells = {(c.data.params["loss.name"], c.data.params["seed"]) for c in children}
    assert cells == {("cross_entropy", "0"), ("cross_entropy", "1"), ("gce", "0"), ("gce", "1")}
    assert all(c.data.tags["sweep_id"] == parent.info.run_id for c in children)
    assert all(c.data.tags["rmlab.sweep_dir"] == str(sweep.sweep_dir) for c in children)

    rows = read_csv(sweep.artifact(parent, "summary.csv"))
    assert [r["loss"] for r in rows] == ["cross_entropy", "gce"] and "seed" not in rows[0]
    for row in rows:
        mine = [c for c in children if c.data.params["loss.name"] == row["loss"]]
        assert row["n"] == "2" and row["failed"] == "0" and row["reward"] == "accuracy"
        for metric in summary.METRICS:
            values = np.array([c.data.metrics[metric] for c in mine])
            assert float(row[f"{metric}_mean"]) == pytest.approx(values.mean(), abs=1e-9)
            assert float(row[f"{metric}_std"]) == pytest.approx(values.std(ddof=1), abs=1e-9)
    assert sweep.artifact(parent, "summary.png").read_bytes().startswith(PNG)
    assert "±" in sweep.artifact(parent, "summary.md").read_text()
    for name in ("summary.csv", "summary.md", "summary.png"):
        assert (sweep.sweep_dir / name).is_file()

    # The best cell is chosen on validation; its test number is reported beside it.
    best = max(rows, key=lambda r: float(r["val/selected_reward_mean"]))
    assert tags["best_cell"] == f"loss={best['loss']}"
    assert float(tags["best_test_reward"]) == pytest.approx(float(best["test/reward_mean"]), rel=1e-5)
    assert parent.data.metrics["best/val_reward"] == pytest.approx(float(best["val/selected_reward_mean"]))
    assert "rmlab sweep summary:" in sweep.out


@pytest.mark.slow
def test_rerun_reuses_finished_jobs(sweeps):
    first, again = sweeps["grid"].result()
    finished_ok(again)
    old = {c.info.run_id: c for c in first.children(first.parent())}
    parent = again.parent()
    children = again.children(parent)
    assert parent.info.status == "FINISHED" and len(children) == 4
    for child in children:
        original = old[child.data.tags["rmlab.reused_from"]]
        assert child.info.status == "FINISHED"
        assert child.data.metrics["test/reward"] == original.data.metrics["test/reward"]
    assert not list(again.sweep_dir.rglob("*.ckpt")), "a reused job trained again"
    assert len(again.runs()[0]) == 2


@pytest.mark.slow
def test_parallel_joblib_sweep_on_fresh_store_loses_nothing(sweeps):
    sweep = sweeps["joblib"].result()
    finished_ok(sweep)
    parent = sweep.parent()
    children = sweep.children(parent)
    assert parent.info.status == "FINISHED" and parent.data.tags["failures"] == "0"
    assert parent.data.tags["rmlab.launcher"] == "joblib" and parent.data.params["sweep.launcher.n_jobs"] == "2"
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["rmlab.job_num"] for c in children} == {"0", "1", "2", "3"}
    assert all("test/reward" in c.data.metrics for c in children)


@pytest.mark.slow
def test_failed_job_is_counted_and_sweep_goes_on(sweeps):
    sweep, typo, trainer = sweeps["failing"].result()
    assert sweep.rc == 1, sweep.out  # a job failed: the command says so
    parent = sweep.parent()
    assert parent.info.status == "FINISHED" and parent.data.tags["failures"] == "1"
    by_lr = {c.data.tags["rmlab.overrides"].split("optimizer.lr=")[1]: c for c in sweep.children(parent)}
    assert by_lr["0.001"].info.status == "FINISHED"  # Hydra hands the job its value rewritten ...
    assert by_lr["0.001"].data.params["optimizer.lr"] == "1e-3"  # ... the param reads as typed (multirun.yaml)
    assert by_lr["-1"].info.status == "FAILED" and "optimizer.lr" in by_lr["-1"].data.tags["error"]
    rows = {r["optimizer.lr"]: r for r in read_csv(sweep.sweep_dir / "summary.csv")}
    assert (rows["-1"]["n"], rows["-1"]["failed"], rows["-1"]["test/reward_mean"]) == ("0", "1", "")
    assert (rows["0.001"]["n"], rows["0.001"]["failed"]) == ("1", "0")
    assert rows["0.001"]["test/reward_std"] == ""  # one seed: no std
    assert "Failed jobs:" in (sweep.sweep_dir / "summary.md").read_text()
    assert parent.data.tags["best_cell"] == "optimizer.lr=0.001"
    # An unknown option stops the sweep before any job (Hydra composes them all first) and leaves no parent behind.
    assert typo.rc == 2 and "rmlab: error: Could not find 'loss/hubber'" in typo.out
    assert len(sweep.runs()[0]) == 1 and not (typo.sweep_dir / PARENT_RUN_FILE).exists()
    # A job whose Trainer cannot be built (an unknown strategy) is a FAILED child too, counted by its parent.
    parent = trainer.parent()
    assert parent.data.tags["failures"] == "1"
    by_strategy = {c.data.tags["rmlab.overrides"].split("trainer.strategy=")[1]: c for c in trainer.children(parent)}
    assert by_strategy["bogus_strategy"].info.status == "FAILED"
    assert "strategy" in by_strategy["bogus_strategy"].data.tags["error"]


@pytest.mark.slow
def test_optuna_sweep_resumes_study_with_one_parent_per_sweep(sweeps):
    import optuna

    first, second = sweeps["optuna"].result()
    finished_ok(first)
    finished_ok(second)
    study = optuna.load_study(study_name="rmlab", storage=f"sqlite:///{first.cwd / 'optuna.db'}")
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    parents = first.runs()[0]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    assert [len(first.children(p)) for p in parents] == [3, 1]
    assert parents[0].data.tags["rmlab.sweeper"] == "rmlab_optuna"

    rows = read_csv(first.sweep_dir / "summary.csv")  # trials, best first, with the searched key as a column
    values = [float(r["val/selected_reward_mean"]) for r in rows]
    assert values == sorted(values, reverse=True) and len(rows) == 3
    assert sorted(r["trial"] for r in rows) == ["0", "1", "2"] and all(r["optimizer.lr"] for r in rows)
    assert "task" not in rows[0]  # fixed on the command line: not a column
    resumed = read_csv(second.sweep_dir / "summary.csv")
    assert [r["trial"] for r in resumed] == ["3"] and resumed[0]["optimizer.lr"]
    assert parents[1].data.tags["study_best_value"] == str(study.best_value)


@pytest.mark.slow
def test_submitit_local_launcher(sweeps):
    sweep = sweeps["submitit"].result()
    assert sweep.rc == 0, sweep.out
    parent = sweep.parent()
    children = sweep.children(parent)
    assert parent.info.status == "FINISHED" and parent.data.tags["rmlab.launcher"] == "submitit_local"
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)


@pytest.mark.slow
def test_ctrl_c_closes_parent_killed(sweeps):
    sweep = sweeps["interrupted"].result()
    assert sweep.rc == 130, sweep.out
    parent = sweep.parent()
    assert parent.info.status == "KILLED", sweep.out
    assert "SIGINT" in parent.data.tags["error"] and parent.data.tags["failures"] == "1"
    children = sweep.children(parent)
    assert [c.info.status for c in children] == ["KILLED"]  # job 0 was stopped; job 1 never started
    assert (sweep.sweep_dir / "summary.csv").is_file()


# -- summary maths, in-process -----------------------------------------------------------------------------------


def record(overrides: str, status: str = "FINISHED", **metrics: float) -> summary.JobRecord:
    names = {"test": "test/reward", "val": "val/selected_reward", "loss": "test/loss"}
    return summary.JobRecord(summary.parse_overrides(overrides), status,
                             {names[k]: v for k, v in metrics.items()}, reward="accuracy")


RECORDS = [
    record("task=wine loss=ce task.label_noise=0.0 seed=0", test=0.9, val=0.8, loss=0.3),
    record("task=wine loss=ce task.label_noise=0.0 seed=1", test=0.7, val=0.9, loss=0.5),
    record("task=wine loss=ce task.label_noise=0.4 seed=0", test=0.5, val=0.5, loss=1.0),
    record("task=wine loss=ce task.label_noise=0.4 seed=1", status="FAILED"),
    record("task=wine loss=gce task.label_noise=0.0 seed=0", test=0.8, val=0.95, loss=0.4),
    record("task=wine loss=gce task.label_noise=0.4 seed=0", test=0.75, val=0.7, loss=0.6),
]


def test_cells_group_seeds_with_sample_std():
    keys, cells = summary.build_cells(RECORDS)
    assert keys == ["loss", "task.label_noise"]  # task is fixed, seed is grouped
    assert [c.label() for c in cells] == ["loss=ce task.label_noise=0.0", "loss=ce task.label_noise=0.4",
                                          "loss=gce task.label_noise=0.0", "loss=gce task.label_noise=0.4"]
    first = cells[0]
    assert (first.n, first.failed) == (2, 0)
    assert first.stats["test/reward"] == pytest.approx((0.8, np.std([0.9, 0.7], ddof=1)))
    assert (cells[1].n, cells[1].failed, cells[1].stats["test/reward"]) == (1, 1, (0.5, None))
    # Selected on validation: gce at 0.0 has the best val (0.95) though ce at 0.0 has the best test.
    assert summary.best_cell(cells).label() == "loss=gce task.label_noise=0.0"


def test_csv_markdown_and_every_plot_shape(tmp_path):
    keys, cells = summary.build_cells(RECORDS)
    summary.write_csv(keys, cells, tmp_path / "s.csv")
    rows = read_csv(tmp_path / "s.csv")
    assert list(rows[0])[:5] == ["loss", "task.label_noise", "reward", "n", "failed"]
    assert rows[1]["test/reward_std"] == "" and float(rows[0]["test/reward_mean"]) == pytest.approx(0.8)
    table = summary.markdown(keys, cells)
    assert "| ce | 0.0 | accuracy | 2 | 0 | 0.800 ± 0.141 | 0.850 ± 0.071 | 0.400 ± 0.141 |" in table
    one_key = summary.build_cells([r for r in RECORDS if r.overrides["task.label_noise"] == "0.0"])
    words = summary.build_cells([record("loss=ce reward=f1", test=1.0), record("loss=gce reward=accuracy", test=0.5)])
    trials = summary.build_cells([record("optimizer.lr=0.00123456789", test=0.3, val=0.4),
                                  record("optimizer.lr=0.01", status="FAILED")], trials=True)
    for i, (k, c) in enumerate([(keys, cells), one_key, words, trials, summary.build_cells([RECORDS[3]])]):
        if i == 3:
            for n, cell in enumerate(c):
                cell.trial = n
        summary.plot(k, c, tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").read_bytes().startswith(PNG)
    assert "| 0 | 0.001235 |" in summary.markdown(*trials)


def test_optuna_trials_are_rows_sorted_by_objective():
    records = [record("x=1 seed=0", val=0.2), record("x=2 seed=0", status="FAILED"), record("x=3 seed=0", val=0.9)]
    keys, cells = summary.build_cells(records, trials=True, searched=["x"])
    assert keys == ["x"]
    assert [c.values["x"] for c in summary.sort_trials(cells, "val/selected_reward", maximize=True)] == ["3", "1", "2"]
    assert [c.values["x"] for c in summary.sort_trials(cells, "val/selected_reward", maximize=False)] == ["1", "3", "2"]
    # A resumed study's single trial still shows its searched key.
    assert summary.build_cells(records[:1], trials=True, searched=["x"])[0] == ["x"]


def test_callback_carries_no_state_to_remote_jobs():
    callback = SweepCallback()
    callback.parent = threading.Lock()  # stands in for the open parent run, which cannot travel
    clone = pickle.loads(pickle.dumps(callback))
    assert clone.parent is None


# -- presets, in-process -----------------------------------------------------------------------------------------


GRID_PRESETS = {
    "loss_grid": ("loss_grid", "digits", 36),
    "noise_robustness": ("noise_robustness", "digits", 75),
    "preference_robustness": ("preference_robustness", "synthetic_preference", 27),
}


@pytest.mark.parametrize("preset", sorted(GRID_PRESETS))
def test_grid_preset_composes_and_every_cell_builds(preset):
    from rmlab.build import build_components

    experiment, task, jobs = GRID_PRESETS[preset]
    cfg = _compose_hydra(f"sweep={preset}")
    assert cfg.experiment == experiment and cfg.task.name == task
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    assert params["seed"] == ["0", "1", "2"] and np.prod([len(v) for v in params.values()]) == jobs
    # Every cell (seeds aside) passes the start-up checks, so a long sweep does not fail on its 40th job.
    keys = [k for k in params if k != "seed"]
    for values in itertools.product(*(params[k] for k in keys)):
        build_components(compose_config(f"sweep={preset}", *(f"{k}={v}" for k, v in zip(keys, values))))


def _compose_hydra(*overrides: str):
    from hydra import compose, initialize_config_dir

    from rmlab.paths import CONFIG_DIR

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_optuna_preset_space_parses():
    from hydra_plugins.rmlab_optuna_sweeper.optuna_sweeper import parse_params

    cfg = _compose_hydra("sweep=optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("RmlabOptunaSweeper")
    assert (sweeper.n_trials, sweeper.direction, sweeper.objective) == (20, "maximize", "val/selected_reward")
    assert sweeper.study_name == "optuna-digits-cross_entropy" and cfg.experiment == "optuna"
    searched, fixed = parse_params([f"{k}={v}" for k, v in sweeper.params.items()])
    assert set(searched) == {"optimizer.lr", "optimizer.weight_decay", "model.hidden_sizes", "loss.label_smoothing"}
    assert searched["optimizer.lr"].distribution.log and not fixed
    assert searched["model.hidden_sizes"].override("model.hidden_sizes", "[64,64]") == "model.hidden_sizes=[64,64]"


def test_command_line_beats_preset_and_callback_is_registered():
    cfg = _compose_hydra("sweep=noise_robustness", "task=wine", "experiment=mine")
    assert (cfg.task.name, cfg.experiment) == ("wine", "mine")
    assert cfg.hydra.callbacks.rmlab_sweep._target_ == "rmlab.sweep.SweepCallback"
    assert _compose_hydra().experiment == "digits"  # no preset: the group is optional; one experiment per task
    assert (REPO / "sweeps").resolve() == (REPO / "conf" / "sweep").resolve()
