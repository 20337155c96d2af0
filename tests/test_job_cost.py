"""What a run (and each job of a sweep) does once instead of every time: MLflow's requirement check skipped while the
model is saved (its pins come from the installed packages), the sweep's saved overrides read once per version of the
file, a scikit-learn dataset read once per process; each still gives the same result."""

import os

import mlflow.pyfunc
import numpy as np
import pytest
from mlflow.utils import environment
from omegaconf import OmegaConf

from rmlab.serving import export
from rmlab.tasks.sklearn_data import SklearnTask


class Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def checks_seen(monkeypatch) -> list:
    """Replace MLflow's requirement check with a recorder of the requirements it is given."""
    seen = []
    monkeypatch.setattr(environment, "warn_dependency_requirement_mismatches", seen.append)
    return seen


@pytest.mark.filterwarnings("ignore:.*type hints.*:UserWarning")  # MLflow's advice for the stand-in model above
def test_mlflow_checks_requirements_where_rmlab_skips_the_check(tmp_path, monkeypatch):
    # The private function rmlab stands in for is the one MLflow's save_model calls: if MLflow moves or renames it,
    # this fails (and rmlab's models would pay for the check again).
    seen = checks_seen(monkeypatch)
    mlflow.pyfunc.save_model(str(tmp_path / "plain"), python_model=Constant(), pip_requirements=export.requirements())
    assert len(seen) == 1 and any(r.startswith("torch==") for r in seen[0])
    with export._no_requirement_check():
        mlflow.pyfunc.save_model(str(tmp_path / "skipped"), python_model=Constant(),
                                 pip_requirements=export.requirements())
    assert len(seen) == 1  # not called again
    assert environment.warn_dependency_requirement_mismatches == seen.append  # put back afterwards
    # The requirements are still written in full.
    assert (tmp_path / "skipped" / "requirements.txt").read_text() == (tmp_path / "plain" / "requirements.txt").read_text()


def test_the_skipped_check_could_not_have_found_a_mismatch():
    from mlflow.utils.requirements_utils import _check_requirement_satisfied

    assert [r for r in export.requirements() if _check_requirement_satisfied(r) is not None] == []


def test_a_yaml_file_is_parsed_once_per_version_of_the_file(tmp_path, monkeypatch):
    from rmlab.paths import read_yaml

    saved = tmp_path / "multirun.yaml"
    saved.write_text("hydra:\n  overrides:\n    task:\n    - optimizer.lr=1e-3,1e-4\n")
    loads = []
    load = OmegaConf.load
    monkeypatch.setattr(OmegaConf, "load", lambda path: loads.append(path) or load(path))
    assert read_yaml(saved) == read_yaml(saved) == {"hydra": {"overrides": {"task": ["optimizer.lr=1e-3,1e-4"]}}}
    assert len(loads) == 1
    saved.write_text("hydra:\n  overrides:\n    task:\n    - optimizer.lr=1e-2,1e-5\n    - seed=${x}\n")
    os.utime(saved, ns=(saved.stat().st_atime_ns, saved.stat().st_mtime_ns + 1))
    assert read_yaml(saved)["hydra"]["overrides"]["task"] == ["optimizer.lr=1e-2,1e-5", "seed=${x}"]
    assert len(loads) == 2


def test_a_dataset_read_once_per_process_gives_the_same_splits_and_stays_unchanged():
    first = SklearnTask(dataset="wine", split_seed=3).load()
    again = SklearnTask(dataset="wine", split_seed=3).load()
    other = SklearnTask(dataset="wine", split_seed=4).load()
    for split in ("train", "val", "test"):
        assert np.array_equal(first[split].x.numpy(), again[split].x.numpy())
    assert not np.array_equal(first["train"].y.numpy(), other["train"].y.numpy())
    data, *_ = SklearnTask(dataset="wine", split_seed=3)._raw()
    with pytest.raises(ValueError, match="read-only"):
        data[0, 0] = 1.0  # shared between runs: nobody may change it
    import sklearn.datasets

    assert np.array_equal(data, sklearn.datasets.load_wine().data)


def test_a_command_run_in_process_leaves_the_garbage_collector_working():
    """The collector passes are skipped only at interpreter shutdown (gc.freeze as an exit hook): a caller that
    catches the command's SystemExit still has cycles collected."""
    import gc

    from rmlab.exits import run_command

    before = gc.get_freeze_count()
    with pytest.raises(SystemExit):
        run_command(lambda: None)
    assert gc.get_freeze_count() == before
    cycle = [[]]
    cycle[0].append(cycle)
    del cycle
    assert gc.collect() > 0


def sweep_start_and_end(*overrides: str) -> tuple[int, int]:
    """The collector's frozen-object count after the sweep callback's start, and after its end (untracked jobs: no
    parent run is opened)."""
    import gc

    from hydra import compose, initialize_config_dir

    from rmlab.paths import CONFIG_DIR
    from rmlab.sweep import SweepCallback

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        master = compose("config", overrides=["logger=none", *overrides], return_hydra_config=True)
        callback = SweepCallback()
        callback.on_multirun_start(master)
        try:
            started = gc.get_freeze_count()
            cycle = [[]]  # made after the freeze: still collected during the sweep
            cycle[0].append(cycle)
            del cycle
            assert gc.collect() > 0
        finally:
            callback.on_multirun_end(master)
        return started, gc.get_freeze_count()


def test_a_sweep_in_this_process_leaves_the_libraries_out_of_full_collections_until_it_ends():
    import gc

    assert gc.get_freeze_count() == 0
    started, ended = sweep_start_and_end()
    assert started > 100_000  # torch, Lightning, Hydra, OmegaConf: loaded by this test session
    assert ended == 0


def test_a_sweep_in_worker_processes_or_a_heap_frozen_by_the_caller_is_left_alone():
    import gc

    assert sweep_start_and_end("hydra/launcher=joblib") == (0, 0)
    gc.freeze()
    try:
        theirs = gc.get_freeze_count()
        started, ended = sweep_start_and_end()
        assert 0 < ended <= started <= theirs  # nothing frozen on top (objects freed leave it), theirs not released
    finally:
        gc.unfreeze()


def callback_factory():
    """A Lightning callback factory, as a package would register one under the entry point group."""
    import pytorch_lightning as pl

    return [type("FromFactory", (pl.Callback,), {})()]


def test_lightnings_callback_factories_are_looked_up_once_and_still_called_for_every_trainer(monkeypatch, request):
    from importlib import metadata

    import pytorch_lightning as pl
    from lightning_fabric.utilities import registry

    from rmlab import callback_factories

    group = "pytorch_lightning.callbacks_factory"
    found = metadata.EntryPoints([metadata.EntryPoint(name="rmlab-test", value=f"{__name__}:callback_factory",
                                                      group=group)])
    lookups = []
    monkeypatch.setattr(metadata, "entry_points", lambda **kw: lookups.append(kw) or found)
    monkeypatch.setattr(registry, "entry_points", registry.entry_points)  # put back after the test
    callback_factories._group.cache_clear()
    request.addfinalizer(callback_factories._group.cache_clear)  # later Trainers must not find the test's factory
    callback_factories.install()
    trainers = [pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                           enable_model_summary=False) for _ in range(3)]
    made = [[c for c in t.callbacks if type(c).__name__ == "FromFactory"] for t in trainers]
    assert [len(m) for m in made] == [1, 1, 1] and made[0][0] is not made[1][0]  # a new one for every Trainer
    assert lookups == [{"group": group}]  # Lightning asked through registry.entry_points, once


def test_a_sweep_that_fails_still_puts_the_frozen_objects_back():
    """Hydra skips the sweep callback's end when the sweep raises: the command's own exit puts them back."""
    import gc

    from rmlab import collector
    from rmlab.exits import run_command

    def failing_sweep():
        assert collector.freeze_for_sweep()
        raise RuntimeError("a sweeper's bug")

    with pytest.raises(SystemExit):
        run_command(failing_sweep)
    assert gc.get_freeze_count() == 0
