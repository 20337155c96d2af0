"""The rmlab_optuna Hydra sweeper, end to end on a toy Hydra app (no training): trials, resume, failures, objectives,
grid search over config groups, pruning from inside the jobs.

Each sweep is a real ``python app.py ... -m`` subprocess, so plugin discovery through the ``hydra_plugins``
namespace is part of what is tested. A sweep costs about a second of CPU to start (imports, a new sqlite study) and
~0.1 s per trial, so the module starts all of them at once in a thread pool and each test waits for its own; those
tests are marked slow (about 16 s of CPU in all). The in-process tests take under a second.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import textwrap
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest

# Hydra's plugin scan executes plugin modules a second time (without sys.modules), so the sweeper's exception class
# may come from another module object than the one imported here: match on the shared base, rmlab's ConfigError.
from rmlab.errors import ConfigError
import yaml
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hydra_plugins.rmlab_optuna_sweeper.optuna_sweeper import (
    RmlabOptunaSweeper,
    default_storage,
    parse_params,
    report_and_should_prune,
)
from tests.conftest import PYTHON, cli_env

APP = '''
import sys
import hydra, optuna
from hydra_plugins.rmlab_optuna_sweeper import report_and_should_prune

@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    score = -(cfg.x - 0.3) ** 2
    if cfg.mode == "dict":
        return {"val/selected_reward": score, "test/reward": 10.0}
    if cfg.mode == "group":
        return cfg.loss.bonus + cfg.n
    if cfg.mode == "flaky":
        if cfg.x == 0.2: return float("nan")
        if cfg.x == 0.5: return None
        if cfg.x == 0.7: sys.exit(3)
        if cfg.x == 0.9: raise RuntimeError("diverged")
    if cfg.mode == "prune":
        # The first two trials learn; later ones get worse each step, so the median pruner stops them at step 1.
        good = cfg.optuna.trial_number < 2
        for step in range(4):
            value = step if good else -step
            if report_and_should_prune(cfg.optuna, step, value):
                raise optuna.TrialPruned()
        return value
    return score

if __name__ == "__main__":
    main()
'''

CONFIGS = {
    "config.yaml": "defaults:\n  - loss: gce\n  - _self_\nx: 0.5\nn: 1\nseed: 0\nmode: float\n",
    "loss/gce.yaml": "name: gce\nbonus: 0.0\n",
    "loss/sce.yaml": "name: sce\nbonus: 1.0\n",
}
SWEEPER = "hydra/sweeper=rmlab_optuna"


class Sweep:
    """One sweep's outcome: exit code, output, its working directory (default storage lives there)."""

    def __init__(self, cwd: Path, proc: subprocess.CompletedProcess) -> None:
        self.cwd, self.rc, self.out = cwd, proc.returncode, proc.stdout + proc.stderr

    def study(self, storage: str | None = None) -> optuna.Study:
        return optuna.load_study(study_name="rmlab", storage=storage or f"sqlite:///{self.cwd / 'optuna.db'}")

    def results(self, sweep_dir: str = "sweep") -> dict:
        return yaml.safe_load((self.cwd / sweep_dir / "optimization_results.yaml").read_text())


def run_sweep(app: Path, cwd: Path, *args: str, sweep_dir: str = "sweep") -> Sweep:
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [PYTHON, str(app), SWEEPER, f"hydra.sweep.dir={sweep_dir}", *args, "-m"]
    proc = subprocess.run(cmd, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=120)
    return Sweep(cwd, proc)


def resume_chain(app: Path, cwd: Path) -> tuple[Sweep, Sweep, Sweep]:
    """3 trials; then an interrupted trial left RUNNING; then n_trials=5; then n_trials=5 again (nothing to do)."""
    storage = f"sqlite:///{cwd / 'study.db'}"
    common = (f"hydra.sweeper.storage={storage}", "hydra.sweeper.sampler.name=random", "x=interval(0,1)")
    first = run_sweep(app, cwd, "hydra.sweeper.n_trials=3", *common, sweep_dir="s1")
    optuna.load_study(study_name="rmlab", storage=storage).ask()  # a sweep killed while trial 3 ran
    second = run_sweep(app, cwd, "hydra.sweeper.n_trials=5", *common, sweep_dir="s2")
    third = run_sweep(app, cwd, "hydra.sweeper.n_trials=5", *common, sweep_dir="s3")
    return first, second, third


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Future]:
    root = tmp_path_factory.mktemp("optuna_sweeper")
    for name, text in CONFIGS.items():
        (root / "conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "conf" / name).write_text(text)
    app = root / "app.py"
    app.write_text(textwrap.dedent(APP))
    grid = "hydra.sweeper.sampler.name=grid"
    scenarios = {
        "basic": ("hydra.sweeper.n_trials=6", "+hydra.sweeper.params.x='interval(0,1)'"),
        "flaky": (grid, "mode=flaky", "x=choice(0.1,0.2,0.3,0.5,0.7,0.9)"),
        "groups": (grid, "mode=group", "+hydra.sweeper.params.loss='choice(gce,sce)'", "n=range(1,3)"),
        "dict_minimize": (grid, "mode=dict", "hydra.sweeper.direction=minimize", "x=choice(0.1,0.3,0.9)"),
        "missing_key": ("mode=dict", "hydra.sweeper.objective=val/nope", "x=interval(0,1)"),
        "prune": (
            "mode=prune", "hydra.sweeper.n_trials=4", "hydra.sweeper.pruner.name=median",
            "hydra.sweeper.pruner.n_startup_trials=2", "hydra.sweeper.pruner.n_warmup_steps=1", "x=interval(0,1)",
        ),
    }
    pool = ThreadPoolExecutor(max_workers=len(scenarios) + 1)
    futures = {name: pool.submit(run_sweep, app, root / name, *args) for name, args in scenarios.items()}
    futures["resume"] = pool.submit(resume_chain, app, root / "resume")
    yield futures
    pool.shutdown(wait=True)


def states(study: optuna.Study) -> dict[int, str]:
    return {t.number: t.state.name for t in study.trials}


@pytest.mark.slow
def test_trials_run_and_best_is_sensible(sweeps):
    sweep = sweeps["basic"].result()
    assert sweep.rc == 0, sweep.out
    study = sweep.study()  # default storage: optuna.db in the working directory (no MLflow URI set)
    values = [t.value for t in study.trials]
    assert len(values) == 6 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert all(-0.49 <= v <= 0 for v in values)  # x sampled inside interval(0,1)
    assert study.best_value == max(values) > -0.02  # 6 seeded draws: one lands near x=0.3
    results = sweep.results()
    assert results["best_value"] == study.best_value and results["best_params"] == study.best_params
    assert results["trials"] == {"COMPLETE": 6, "PRUNED": 0, "FAIL": 0}
    assert all(f"Trial {i} COMPLETE: value=" in sweep.out for i in range(6))
    assert f"Best trial {study.best_trial.number}: val/selected_reward=" in sweep.out


@pytest.mark.slow
def test_resume_runs_only_missing_trials_and_fails_stale_ones(sweeps):
    first, second, third = sweeps["resume"].result()
    assert first.rc == second.rc == third.rc == 0, first.out + second.out + third.out
    study = second.study(f"sqlite:///{second.cwd / 'study.db'}")
    assert states(study) == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE", 3: "FAIL", 4: "COMPLETE"}
    assert "Trial 3 was left running by an earlier sweep: marked FAIL" in second.out
    assert "1 to run" in second.out and "0 to run" in third.out
    # The resumed sampler is reseeded, so it does not redraw the first run's points.
    xs = [t.params["x"] for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(set(xs)) == 4
    assert third.results("s3")["trials"] == {"COMPLETE": 4, "PRUNED": 0, "FAIL": 1}


@pytest.mark.slow
def test_failed_jobs_are_fail_and_the_sweep_goes_on(sweeps):
    sweep = sweeps["flaky"].result()
    assert sweep.rc == 0, sweep.out
    by_x = {t.params["x"]: t.state.name for t in sweep.study().trials}
    # nan, None, sys.exit() and an exception are failures; the grid (6 points) caps n_trials (default 20).
    assert by_x == {0.1: "COMPLETE", 0.2: "FAIL", 0.3: "COMPLETE", 0.5: "FAIL", 0.7: "FAIL", 0.9: "FAIL"}
    assert "RuntimeError: diverged" in sweep.out and "returned NaN" in sweep.out and "sys.exit(3)" in sweep.out
    assert sweep.results()["best_params"] == {"x": 0.3}


@pytest.mark.slow
def test_grid_over_config_group_choice_and_range(sweeps):
    sweep = sweeps["groups"].result()
    assert sweep.rc == 0, sweep.out
    study = sweep.study()
    got = {(t.params["loss"], t.params["n"]): t.value for t in study.trials}
    assert got == {("gce", 1): 1.0, ("gce", 2): 2.0, ("sce", 1): 2.0, ("sce", 2): 3.0}
    # The plain override on the command line reached every job.
    overrides = [yaml.safe_load(p.read_text()) for p in (sweep.cwd / "sweep").glob("*/.hydra/overrides.yaml")]
    assert len(overrides) == 4 and all("mode=group" in o for o in overrides)


@pytest.mark.slow
def test_dict_return_uses_the_objective_key_and_minimize(sweeps):
    sweep = sweeps["dict_minimize"].result()
    assert sweep.rc == 0, sweep.out
    study = sweep.study()
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert sorted(t.value for t in study.trials) == pytest.approx([-0.36, -0.04, 0.0])  # val/selected_reward, not 10.0
    assert study.best_params == {"x": 0.9} and study.best_value == pytest.approx(-0.36)


@pytest.mark.slow
def test_missing_objective_key_stops_the_sweep_naming_the_keys(sweeps):
    sweep = sweeps["missing_key"].result()
    assert sweep.rc != 0
    assert "'val/nope' is not among the returned keys: val/selected_reward, test/reward" in sweep.out
    assert states(sweep.study()) == {0: "FAIL"}


@pytest.mark.slow
def test_pruning_from_inside_the_job(sweeps):
    sweep = sweeps["prune"].result()
    assert sweep.rc == 0, sweep.out
    trials = sweep.study().trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    assert [t.last_step for t in trials] == [3, 3, 1, 1]  # pruned right after the warm-up step
    assert trials[0].intermediate_values == {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0}


def make_sweeper(**changes) -> RmlabOptunaSweeper:
    args = dict(direction="maximize", n_trials=1, n_jobs=1, storage=None, study_name="s", objective="o", params={},
                sampler={"name": "tpe", "seed": None}, pruner={"name": "none"})
    args.update(changes)
    for key in ("sampler", "pruner"):
        args[key] = OmegaConf.create(args[key])
    sweeper = RmlabOptunaSweeper(**args)
    sweeper.config = OmegaConf.create({})
    return sweeper


def test_param_syntax_maps_to_optuna_distributions():
    searched, fixed = parse_params(
        [
            "lr=tag(log, interval(1e-5, 1e-1))",
            "width=int(interval(16, 256))",
            "depth=range(1, 5)",
            "loss=choice(gce, 'a b', [1,2])",
            "p=interval(0, 1)",
            "seed=3",
            "p=0.5",  # a later plain override of a searched key wins (the command line over the config)
        ]
    )
    d = {k: v.distribution for k, v in searched.items()}
    assert d["lr"] == optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)
    assert d["width"] == optuna.distributions.IntDistribution(16, 256)
    assert d["depth"] == optuna.distributions.IntDistribution(1, 4) and searched["depth"].grid == [1, 2, 3, 4]
    assert d["loss"] == optuna.distributions.CategoricalDistribution(["gce", "a b", "[1,2]"])
    # Each choice goes back to the job as override text that Hydra parses to the original value.
    assert [searched["loss"].override("loss", c) for c in ("gce", "a b", "[1,2]")] == [
        "loss=gce", "loss=a\\ b", "loss=[1,2]"
    ]
    assert searched["lr"].override("lr", 1e-05) == "lr=1e-05"
    assert fixed == {"seed": "seed=3", "p": "p=0.5"}


def test_grid_rejects_an_interval_naming_the_param(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweeper = make_sweeper(sampler={"name": "grid", "seed": None}, params={"n": "range(1,3)"})
    with pytest.raises(ConfigError, match="grid cannot walk the interval of 'x'"):
        sweeper.sweep(["x=interval(0,1)"])
    assert not (tmp_path / "optuna.db").exists()  # refused before any study was created


def test_default_storage_sits_beside_the_mlflow_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_storage(None) == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    assert default_storage(None) == f"sqlite:///{tmp_path.resolve() / 'store' / 'optuna.db'}"
    # rmlab's logger.tracking_uri comes before the environment, as in rmlab.tracking.
    config = OmegaConf.create({"logger": {"tracking_uri": "sqlite:///runs/mlflow.db"}})
    assert default_storage(config) == f"sqlite:///{tmp_path.resolve() / 'runs' / 'optuna.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")
    assert default_storage(None) == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"


def test_unknown_names_are_config_errors(monkeypatch):
    make_sweeper()
    with pytest.raises(ConfigError, match="direction='up': choose one of maximize, minimize"):
        make_sweeper(direction="up")
    with pytest.raises(ConfigError, match="sampler.name='nsga'"):
        make_sweeper(sampler={"name": "nsga", "seed": None})
    with pytest.raises(ConfigError, match="pruner.name='asha'"):
        make_sweeper(pruner={"name": "asha"})
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # as if cmaes were not installed
    with pytest.raises(ConfigError, match="cmaes needs the cmaes package"):
        make_sweeper(sampler={"name": "cmaes", "seed": None})


def test_report_outside_a_sweep_never_prunes():
    assert report_and_should_prune(None, 0, math.nan) is False
