"""A sweep job composed from a kept base (``rmlab.compose_template``) is the config Hydra composes for it: compared
key for key (unresolved and resolved, with the flags that make unknown keys errors) over rmlab's groups, its sweep
presets' real job lists, value kinds, Hydra's own overrides and the overrides left to Hydra; and errors are Hydra's."""

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from rmlab.compose_template import Templates
from rmlab.paths import CONFIG_DIR


def same_config(got, expected) -> None:
    assert OmegaConf.to_yaml(got) == OmegaConf.to_yaml(expected)
    for cfg in (got, expected):  # what a launcher sets before the job runs (some values interpolate it)
        with open_dict(cfg):
            cfg.hydra.job.num, cfg.hydra.job.id, cfg.hydra.runtime.output_dir = 0, "0", "/out"
    assert resolved(got) == resolved(expected)
    assert OmegaConf.is_struct(got) and OmegaConf.is_struct(expected)
    assert OmegaConf.is_readonly(got.hydra) == OmegaConf.is_readonly(expected.hydra)
    assert got.hydra.job.override_dirname == expected.hydra.job.override_dirname
    assert list(got.hydra.overrides.task) == list(expected.hydra.overrides.task)


def resolved(cfg) -> dict:
    whole = OmegaConf.to_container(cfg, resolve=True)
    return {key: value for key, value in whole.items() if key != "hydra"}


def compare(jobs, master_overrides=(), config_dir=CONFIG_DIR) -> Templates:
    """Compose every job both ways (Hydra first, then the templates) and compare; returns the templates."""
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        master = compose("config", overrides=list(master_overrides), return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        templates = Templates(loader, loader.load_sweep_config)
        for job in jobs:
            same_config(templates.compose(master, list(job)), loader.load_sweep_config(master, list(job)))
        return templates


def preset_jobs(*command: str) -> list[list[str]]:
    """The job override lists Hydra's basic sweeper makes for a command's overrides plus its preset's params."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        master = compose("config", overrides=list(command), return_hydra_config=True)
    params = [f"{k}={v}" for k, v in (master.hydra.sweeper.params or {}).items()]
    parsed = OverridesParser.create().parse_overrides([*command, *params])
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def test_jobs_that_differ_in_values_are_composed_once_and_match_hydra():
    jobs = [["task=wine", f"seed={s}", f"optimizer.lr={lr}", "trainer.max_epochs=2"]
            for s in (0, 1) for lr in (0.01, "1e-3")]
    templates = compare(jobs)
    assert templates.composed_by_hydra == 1 and templates.from_base == 4


@pytest.mark.parametrize("command", [["sweep=policy_study"], ["sweep=preference_study"], ["sweep=loss_grid"],
                                     ["sweep=noise_robustness"], ["sweep=lm_tasks"]])
def test_the_presets_jobs_match_hydra(command):
    everything = preset_jobs(*command)
    jobs = everything[::max(1, len(everything) // 8)]  # at most about 8 of them, spread over the grid
    assert len(jobs) > 1
    templates = compare(jobs, master_overrides=command)
    groups = {tuple(o for o in job if o.split("=")[0] in ("feedback", "loss", "task", "model", "reward"))
              for job in jobs}
    assert templates.composed_by_hydra == len(groups)  # one base per combination of config groups


def test_value_kinds_and_hydra_overrides_match_hydra():
    compare([
        ["seed=3", "model.hidden_sizes=[32,16]", "run_name=null", "experiment='my study'"],
        ["seed=4", "model.hidden_sizes=[]", "run_name='${task.name}-x'", "experiment=other"],
        ["seed=5", "model.dropout=0.25", "model.activation=gelu", "trainer.checkpoint.every_n_epochs=0"],
        ["hydra.job.chdir=true", "seed=6"],
        ["seed=7", "trainer.checkpoint={every_n_epochs: 2, min_interval_s: 0}"],
    ], master_overrides=["hydra.job.chdir=false", "trainer.num_threads=1"])


def test_every_kind_of_config_override_matches_hydra_and_a_dict_on_a_group_is_left_to_it():
    templates = compare([["+extra=1", "seed=0"], ["~experiment", "seed=1"], ["++seed=2", "++optuna.trial_number=3"],
                         ["+extra=2", "~experiment", "seed=3"], ["task=wine", "+loss.delta=1.5", "seed=4"]])
    assert templates.from_base == 5 and templates.composed_by_hydra == 2  # digits, then wine
    assert compare([["task={name: renamed}"]]).from_base == 0
    groups = compare([["+loss@other=gce", "seed=1"], ["+loss@other=gce", "seed=2"]])  # a second loss config
    assert (groups.composed_by_hydra, groups.from_base) == (1, 2)


def test_an_unknown_key_or_a_bad_value_is_hydras_error():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        master = compose("config", return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        templates = Templates(loader, loader.load_sweep_config)
        templates.compose(master, ["seed=0"])  # the base exists: the next ones are applied to a copy of it
        for job in (["seed=1", "optimizer.nope=1"], ["seed=1", "loss=nope"], ["seed=1", "model.hidden_sizes.x=1"],
                    ["seed=1", "model.dropout=[1"]):
            with pytest.raises(Exception) as ours:
                templates.compose(master, job)
            with pytest.raises(Exception) as hydras:
                loader.load_sweep_config(master, job)
            assert type(ours.value) is type(hydras.value) and str(ours.value) == str(hydras.value)
            assert str(ours.value.__cause__) == str(hydras.value.__cause__)


def test_a_config_file_changed_between_two_jobs_is_read_again(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, conf)
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        master = compose("config", return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        templates = Templates(loader, loader.load_sweep_config)
        assert templates.compose(master, ["seed=0"]).model.dropout == 0.0
        mlp = Path(conf / "model" / "mlp.yaml")
        mlp.write_text(mlp.read_text().replace("dropout: 0.0", "dropout: 0.5"))  # the same size: its time tells
        again = templates.compose(master, ["seed=1"])
        assert again.model.dropout == 0.5
        same_config(again, loader.load_sweep_config(master, ["seed=1"]))
    assert templates.composed_by_hydra == 2


def test_the_base_is_never_handed_out():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        master = compose("config", return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        templates = Templates(loader, loader.load_sweep_config)
        first = templates.compose(master, ["seed=0"])
        first.optimizer.lr = 123.0  # a launcher or job changing its config changes no other job's
        second = templates.compose(master, ["seed=1"])
        assert second.optimizer.lr != 123.0 and second is not first


def test_the_variables_hydra_copies_are_read_for_every_job(monkeypatch):
    monkeypatch.setenv("RMLAB_TEST_COPIED", "a")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        master = compose("config", overrides=["hydra.job.env_copy=[RMLAB_TEST_COPIED]"], return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        templates = Templates(loader, loader.load_sweep_config)
        assert templates.compose(master, ["seed=0"]).hydra.job.env_set.RMLAB_TEST_COPIED == "a"
        monkeypatch.setenv("RMLAB_TEST_COPIED", "b")
        job = templates.compose(master, ["seed=1"])
        assert job.hydra.job.env_set.RMLAB_TEST_COPIED == "b" and templates.from_base == 2
        same_config(job, loader.load_sweep_config(master, ["seed=1"]))
