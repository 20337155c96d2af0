"""Runs under concurrency, interruption and failure, on real processes: several commands on one fresh store, signals
sent to a run, a sweep and its workers, a worker killed with SIGKILL, a failing job, a run whose process died.

Every check reads back what MLflow stored (statuses, tags, metrics) and the exit code a scheduler or a shell sees.
The process scenarios pay seconds of imports each, so the module starts the ones the selected tests need at once,
a few at a time, and each test waits for its own. Polls have generous deadlines: a loaded 2-core machine is slow,
never wrong.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import PYTHON, cli_env

WINE = ["task=wine", "trainer.enable_progress_bar=false", "trainer.num_threads=1"]
LONG = "trainer.max_epochs=100000"
SIGNALLING = ["loss=mse", "loss._target_=tests.fault_helpers.SignalAfterSteps", "+loss.after=20"]
DEADLINE_S = 300


@dataclass
class Done:
    """A finished command: exit code and output."""

    rc: int
    out: str
    seconds: float = 0.0


@dataclass
class Scenario:
    cwd: Path
    results: dict = field(default_factory=dict)
    procs: list = field(default_factory=list)  # the commands it started (see ``start``)

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.cwd / 'mlflow.db'}"

    def client(self):
        from rmlab.store import open_client  # takes the store's lock, so it never races a command creating it

        return open_client(self.uri)

    def runs(self) -> list:
        client = self.client()
        ids = [e.experiment_id for e in client.search_experiments()]
        return sorted(client.search_runs(ids, max_results=1000), key=lambda r: r.info.start_time)

    def parents(self) -> list:
        return [r for r in self.runs() if r.data.tags.get("rmlab.role") == "parent"]

    def children(self, parent) -> list:
        return [r for r in self.runs() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def command(*args: str) -> list[str]:
    return [PYTHON, "-m", "rmlab", *args]


def run(cmd: list[str], cwd: Path, timeout: float = DEADLINE_S) -> Done:
    cwd.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    return Done(proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start)


def start(scenario: Scenario, cmd: list[str], cwd: Path | None = None) -> subprocess.Popen:
    """Start a command in its own process group (its joblib workers join it), so that ``stop`` can end it with
    everything it started if the scenario fails half-way (a sweep of 100000 epochs must not outlive its test)."""
    cwd = cwd or scenario.cwd
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    scenario.procs.append(proc)
    return proc


def stop(scenario: Scenario) -> None:
    for proc in scenario.procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate(timeout=60)


def finish(proc: subprocess.Popen, timeout: float = DEADLINE_S) -> Done:
    out, _ = proc.communicate(timeout=timeout)
    return Done(proc.returncode, out)


def wait_for_running_children(scenario: Scenario, proc: subprocess.Popen, count: int, job_num: str | None = None):
    """Poll the store until ``count`` children (job ``job_num`` if given) are RUNNING; return them."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if not list(scenario.cwd.glob("multirun/*/*/mlflow_parent_run_id")) and not list(
                scenario.cwd.glob("sweep*/mlflow_parent_run_id")):
            continue  # the store exists once the parent does
        running = [r for r in scenario.runs() if r.info.status == "RUNNING" and "mlflow.parentRunId" in r.data.tags
                   and (job_num is None or r.data.tags.get("rmlab.job_num") == job_num)]
        if len(running) >= count:
            return running
    out = proc.communicate(timeout=60)[0] if proc.poll() is not None else "(still running)"
    raise AssertionError(f"no {count} RUNNING children in time: {out}")


# -- scenarios ---------------------------------------------------------------------------------------------------

OPEN_STORE = """
import sys
from rmlab.store import open_client, get_or_create_experiment
uri = sys.argv[1]
client = open_client(uri)
experiment = get_or_create_experiment(client, uri, "together")
run = client.create_run(experiment, run_name=sys.argv[2])
client.set_terminated(run.info.run_id, "FINISHED")
"""


def fresh_store(scenario: Scenario) -> None:
    """Four processes open one fresh store at once, three rounds; then four rmlab runs on another fresh store."""
    rounds = []
    for attempt in range(3):
        folder = scenario.cwd / f"round{attempt}"
        folder.mkdir(parents=True)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        procs = [subprocess.Popen([PYTHON, "-c", OPEN_STORE, uri, f"p{i}"], cwd=folder, env=cli_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(4)]
        rounds.append((uri, [finish(p) for p in procs]))
    scenario.results["rounds"] = rounds
    cli = scenario.cwd / "cli"
    procs = [start(scenario, command(*WINE, "trainer.max_epochs=1", f"seed={seed}"), cli) for seed in range(4)]
    scenario.results["cli"] = [finish(p) for p in procs]


def same_second(scenario: Scenario) -> None:
    """Two sweeps started together, each in its default sweep folder, with different experiments."""
    procs = [start(scenario, command("-m", *WINE, "trainer.max_epochs=1", f"loss={loss}", "seed=0,1",
                                     f"experiment={loss}_study")) for loss in ("gce", "sce")]
    scenario.results["sweeps"] = [finish(p) for p in procs]


def interrupted_sweep(scenario: Scenario) -> None:
    """Job 0 finishes, job 1 runs long; a second sweep asks for the same folder meanwhile; SIGTERM stops the first."""
    sweep_dir = scenario.cwd / "sweep"
    proc = start(scenario, command("-m", *WINE, "trainer.max_epochs=1,100000", f"hydra.sweep.dir={sweep_dir}"))
    wait_for_running_children(scenario, proc, 1, job_num="1")
    scenario.results["same_dir"] = run(command("-m", *WINE, "seed=5,6", f"hydra.sweep.dir={sweep_dir}"),
                                       scenario.cwd / "other")
    proc.send_signal(signal.SIGTERM)
    scenario.results["sweep"] = finish(proc)


def single_signals(scenario: Scenario) -> None:
    """A single run signals itself mid-training: SIGTERM, then Ctrl-C, then SIGTERM twice (stop at once)."""
    quiet = "logger.flush_every_s=3600"  # nothing reaches the store before the run closes unless it is flushed then
    scenario.results["sigterm"] = run(command(*WINE, LONG, *SIGNALLING, quiet, "experiment=sigterm"), scenario.cwd)
    scenario.results["sigint"] = run(command(*WINE, LONG, *SIGNALLING, "+loss.signal_name=SIGINT", quiet,
                                             "experiment=sigint"), scenario.cwd)
    scenario.results["twice"] = run(command(*WINE, LONG, *SIGNALLING, "+loss.repeat=2", quiet, "experiment=twice"),
                                    scenario.cwd)


def job_exception(scenario: Scenario) -> None:
    """A sweep whose second job raises an exception no check expects, before its run exists."""
    scenario.results["sweep"] = run(command(
        "-m", *WINE, "trainer.max_epochs=1", "loss=mse", "loss._target_=tests.fault_helpers.BrokenLoss",
        "+loss.broken=false,true", f"hydra.sweep.dir={scenario.cwd / 'sweep'}"), scenario.cwd)


JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", LONG, "seed=0,1,2,3"]


def killed_worker(scenario: Scenario) -> None:
    """A joblib sweep of 4 long jobs, 2 at a time; one worker is killed with SIGKILL (as out of memory would)."""
    proc = start(scenario, command("-m", *WINE, *JOBLIB, f"hydra.sweep.dir={scenario.cwd / 'sweep'}"))
    running = wait_for_running_children(scenario, proc, 2)
    os.kill(int(running[0].data.tags["rmlab.pid"]), signal.SIGKILL)
    scenario.results["sweep"] = finish(proc)


def joblib_ctrl_c(scenario: Scenario) -> None:
    """A joblib sweep of 4 long jobs, 2 at a time; Ctrl-C (SIGINT) to the launching process only."""
    proc = start(scenario, command("-m", *WINE, *JOBLIB, f"hydra.sweep.dir={scenario.cwd / 'sweep'}"))
    scenario.results["pids"] = {int(r.data.tags["rmlab.pid"]) for r in wait_for_running_children(scenario, proc, 2)}
    proc.send_signal(signal.SIGINT)
    scenario.results["sweep"] = finish(proc)


SCENARIOS = {
    "fresh_store": (fresh_store, ("test_concurrent_first_commands_on_a_fresh_store",)),
    "same_second": (same_second, ("test_sweeps_started_together_never_share_a_folder",)),
    "interrupted_sweep": (interrupted_sweep, ("test_interrupted_sweep_is_summarised_and_its_folder_is_its_own",)),
    "single_signals": (single_signals, ("test_signals_on_a_single_run_close_it_killed_with_the_shells_exit_code",)),
    "job_exception": (job_exception, ("test_unexpected_exception_in_a_job_is_a_failed_child_and_fails_the_sweep",)),
    "killed_worker": (killed_worker, ("test_killed_joblib_worker_leaves_no_running_child",)),
    "joblib_ctrl_c": (joblib_ctrl_c, ("test_ctrl_c_on_a_joblib_sweep_stops_dispatching",)),
}


@pytest.fixture(scope="module")
def scenarios(request, tmp_path_factory) -> dict[str, Future]:
    selected = {item.name for item in request.session.items if item.module is sys.modules[__name__]}
    needed = [name for name, (_, tests) in SCENARIOS.items() if selected & set(tests)]
    root = tmp_path_factory.mktemp("faults")
    pool = ThreadPoolExecutor(max_workers=3)  # more side by side on 2 cores only adds contention

    def play(name: str) -> Scenario:
        scenario = Scenario(root / name)
        scenario.cwd.mkdir()
        try:
            SCENARIOS[name][0](scenario)
        finally:
            stop(scenario)  # what it started and left running: nothing, unless it failed half-way
        return scenario

    futures = {name: pool.submit(play, name) for name in needed}
    yield futures
    pool.shutdown(wait=True)


def no_traceback(done: Done) -> None:
    assert "Traceback" not in done.out, done.out


# -- tests -------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_first_commands_on_a_fresh_store(scenarios):
    scenario = scenarios["fresh_store"].result()
    for uri, results in scenario.results["rounds"]:
        for done in results:
            assert done.rc == 0, done.out
        from rmlab.store import open_client

        client = open_client(uri)
        runs = client.search_runs([client.get_experiment_by_name("together").experiment_id])
        assert sorted(r.info.run_name for r in runs) == ["p0", "p1", "p2", "p3"]
    for done in scenario.results["cli"]:
        assert done.rc == 0, done.out
        no_traceback(done)
    cli = Scenario(scenario.cwd / "cli")
    assert sorted((r.data.tags["seed"], r.info.status) for r in cli.runs()) == [
        (str(seed), "FINISHED") for seed in range(4)]
    from rmlab.init_from import OUTPUT_DIR_TAG

    # Started in the same second, each wrote its own output folder (checkpoints, log, .hydra files).
    assert len({r.data.tags[OUTPUT_DIR_TAG] for r in cli.runs()}) == 4
    assert not list((scenario.cwd / "cli").glob("*alembic_tmp*"))


@pytest.mark.slow
def test_sweeps_started_together_never_share_a_folder(scenarios):
    scenario = scenarios["same_second"].result()
    for done in scenario.results["sweeps"]:
        assert done.rc == 0, done.out
    parents = scenario.parents()
    assert len(parents) == 2
    folders = {p.data.tags["rmlab.sweep_dir"] for p in parents}
    assert len(folders) == 2 and all(Path(f).is_dir() for f in folders)
    assert len({p.data.tags["sweep_id"] for p in parents}) == 2
    for parent in parents:
        children = scenario.children(parent)
        loss = parent.data.tags["rmlab.overrides"].split("loss=")[1].split()[0]
        assert sorted(c.data.tags["seed"] for c in children) == ["0", "1"]
        assert {c.data.tags["loss"] for c in children} == {loss}
        assert {c.data.tags["sweep_id"] for c in children} == {parent.info.run_id}
        assert {c.data.tags["rmlab.sweep_dir"] for c in children} == {parent.data.tags["rmlab.sweep_dir"]}
        assert parent.data.tags["failures"] == "0"


@pytest.mark.slow
def test_interrupted_sweep_is_summarised_and_its_folder_is_its_own(scenarios):
    scenario = scenarios["interrupted_sweep"].result()
    # A second sweep asking for the folder of a running sweep is refused before it creates anything.
    same_dir = scenario.results["same_dir"]
    assert same_dir.rc == 2 and "is used by another sweep that is still running" in same_dir.out, same_dir.out
    assert "parent run None" not in same_dir.out
    assert not (scenario.cwd / "other" / "mlflow.db").exists()
    done = scenario.results["sweep"]
    assert done.rc == 143, done.out
    (parent,) = scenario.parents()
    tags = parent.data.tags
    assert parent.info.status == "KILLED" and tags["error"] == "interrupted (SIGTERM)", tags
    assert tags["failures"] == "1" and "summary failed" not in tags["error"]
    # The summary of the job that finished is on the parent: it was written before interpreter shutdown.
    assert tags["best_cell"] and float(tags["best_val_reward"]) > 0 and "best/val_reward" in parent.data.metrics
    assert "rmlab sweep summary:" in done.out and "1 failed" in done.out
    children = scenario.children(parent)
    assert [(c.data.tags["rmlab.job_num"], c.info.status) for c in children] == [("0", "FINISHED"), ("1", "KILLED")]
    assert (scenario.cwd / "sweep" / "summary.csv").is_file()


@pytest.mark.slow
def test_signals_on_a_single_run_close_it_killed_with_the_shells_exit_code(scenarios):
    scenario = scenarios["single_signals"].result()
    for name, code, signame in (("sigterm", 143, "SIGTERM"), ("sigint", 130, "SIGINT"), ("twice", 143, "SIGTERM")):
        done = scenario.results[name]
        assert done.rc == code, done.out
        no_traceback(done)
        client = scenario.client()
        (run,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert run.info.status == "KILLED" and run.data.tags["error"] == f"interrupted ({signame})"
        # Metrics buffered for an hour were flushed when the run closed: the epochs before the signal are stored.
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) >= 1
        assert run.data.tags["rmlab.pid"].isdigit() and run.data.tags["rmlab.host"]


@pytest.mark.slow
def test_unexpected_exception_in_a_job_is_a_failed_child_and_fails_the_sweep(scenarios):
    scenario = scenarios["job_exception"].result()
    done = scenario.results["sweep"]
    assert done.rc == 1, done.out
    (parent,) = scenario.parents()
    assert parent.info.status == "FINISHED" and parent.data.tags["failures"] == "1"
    children = {c.data.tags["rmlab.job_num"]: c for c in scenario.children(parent)}
    assert sorted(children) == ["0", "1"]
    assert children["0"].info.status == "FINISHED"
    assert children["1"].info.status == "FAILED"
    assert children["1"].data.tags["error"] == "RuntimeError: broken on purpose"
    assert "2 jobs, 1 failed" in (scenario.cwd / "sweep" / "summary.md").read_text()


@pytest.mark.slow
def test_killed_joblib_worker_leaves_no_running_child(scenarios):
    scenario = scenarios["killed_worker"].result()
    done = scenario.results["sweep"]
    assert done.rc == 1, done.out
    assert "a worker process died" in done.out and "Traceback" not in done.out
    (parent,) = scenario.parents()
    assert parent.info.status == "FAILED" and "worker process died" in parent.data.tags["error"]
    children = scenario.children(parent)
    assert len(children) == 2 and {c.info.status for c in children} == {"FAILED"}
    assert all("its process ended without closing the run" in c.data.tags["error"] for c in children)
    assert not [r for r in scenario.runs() if r.info.status == "RUNNING"]
    summary = (scenario.cwd / "sweep" / "summary.md").read_text()
    assert "2 of 4 jobs never started" in summary and "Run the same command again" in summary


@pytest.mark.slow
def test_ctrl_c_on_a_joblib_sweep_stops_dispatching(scenarios):
    scenario = scenarios["joblib_ctrl_c"].result()
    done = scenario.results["sweep"]
    assert done.rc == 130, done.out
    (parent,) = scenario.parents()
    assert parent.info.status == "KILLED" and parent.data.tags["error"] == "interrupted (SIGINT)"
    children = scenario.children(parent)
    # The two jobs running when Ctrl-C came were stopped and closed their own runs; the two queued never started.
    assert sorted(c.data.tags["rmlab.job_num"] for c in children) == ["0", "1"]
    assert {c.info.status for c in children} == {"KILLED"}
    # Each closed its own run when the sweep sent it SIGTERM (or, on a machine too loaded for them to close within
    # the sweep's grace period, the sweep closed it once joblib had stopped it).
    assert {c.data.tags["error"] for c in children} <= {"interrupted (SIGTERM)",
                                                         "its process was stopped with the interrupted sweep"}
    assert not [r for r in scenario.runs() if r.info.status == "RUNNING"]
    assert "2 of 4 jobs never started" in (scenario.cwd / "sweep" / "summary.md").read_text()
    from rmlab.processes import pid_alive

    assert not any(pid_alive(pid) for pid in scenario.results["pids"])
