"""A sweep job's config is composed once: Hydra's batch check composes it, the in-process launch reuses that. Runs
Hydra's own check (``Sweeper.validate_batch_is_legal``) against the real config loader, so a Hydra release that
changes either fails here rather than silently composing twice again."""

from types import SimpleNamespace

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext

from rmlab import compose_once
from rmlab.paths import CONFIG_DIR


def counted_loader():
    loader = GlobalHydra.instance().config_loader()
    calls = []
    original = loader.load_configuration

    def load_configuration(*args, **kwargs):
        calls.append(kwargs.get("overrides"))
        return original(*args, **kwargs)

    loader.load_configuration = load_configuration
    return loader, calls


def test_the_check_composes_and_the_launch_reuses_it():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        master = compose("config", return_hydra_config=True)
        loader, calls = counted_loader()
        assert compose_once.install(master)
        batch = [["task=wine", "seed=0"], ["task=digits", "seed=1"]]  # two combinations of groups: two compositions
        checker = SimpleNamespace(hydra_context=HydraContext(config_loader=loader, callbacks=None), config=master)
        Sweeper.validate_batch_is_legal(checker, batch)
        assert len(calls) == 2
        launched = [loader.load_sweep_config(master, overrides) for overrides in batch]
        assert len(calls) == 2 and [job.seed for job in launched] == [0, 1]
        assert [job.task.name for job in launched] == ["wine", "digits"]
        # Taken once: a later call makes a new config (from the kept composition of its groups, rmlab.compose_template).
        again = loader.load_sweep_config(master, ["task=wine", "seed=0"])
        assert len(calls) == 2 and again is not launched[0] and again.seed == 0 and again.task.name == "wine"
        assert loader._rmlab_templates.from_base == 3


def test_launchers_that_compose_in_their_workers_are_left_alone():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        master = compose("config", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        assert not compose_once.install(master)
        assert not getattr(loader, "_rmlab_compose_once", False)
