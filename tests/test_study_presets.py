"""The study presets (policy_study, preference_study, overoptimisation): each composes with valid summary options,
plans its grid, and every cell builds; the commands in each header compose, and the SFT they start from has the
study's own model and task settings (what init_from needs); loss=dpo_ipo is loss=dpo loss.loss_type=ipo."""

from __future__ import annotations

import math
import re
import shlex
import subprocess

import pytest
from omegaconf import OmegaConf

from rmlab.build import build_components, instantiate
from rmlab.paths import CONFIG_DIR
from rmlab.sweep import planned_jobs
from rmlab.sweep_options import SweepOptions, from_config
from tests.conftest import PYTHON, cli_env, compose_config
from tests.lm_fixtures import reward_model_checkpoint
from tests.test_sweeps import _compose_hydra

STUDIES = {
    "policy_study": ("reverse", {"feedback": ["none", "grpo", "rloo"]},
                     SweepOptions(("train/kl",))),
    "preference_study": ("reverse_preference",
                         {"loss": ["dpo", "dpo_ipo", "simpo"], "optimizer.lr": ["1e-5", "5e-5", "5e-4"]},
                         SweepOptions(("test/implicit_accuracy", "test/perplexity"))),
    "overoptimisation": ("review_writing", {"feedback.beta": ["0", "0.02", "0.1", "0.5"]},
                         SweepOptions(("test/gold_reward", "train/kl"), "overoptimisation")),
}
SMALL = ["trainer.num_threads=1"]


def header_commands(preset: str) -> list[list[str]]:
    """The ``python -m rmlab ...`` commands of a preset's header comment, as argument lists (continuations joined)."""
    text = (CONFIG_DIR / "sweep" / f"{preset}.yaml").read_text()
    comment = "\n".join(line[1:] for line in text.splitlines() if line.startswith("#"))
    joined = comment.replace("\\\n", " ")
    return [shlex.split(m) for m in re.findall(r"python -m rmlab[^\n]*", joined)]


def composable(args: list[str], tmp_path) -> list[str]:
    """A header command's overrides, composable in-process: placeholders filled, each sweep at its first value."""
    fills = {"RM_RUN_ID": str(reward_model_checkpoint(tmp_path / "rm.ckpt", max_length=128,
                                                                  prompt=False)),
             "SFT_PARENT_RUN_ID": "0123456789abcdef0123456789abcdef"}
    out = []
    for arg in args[3:]:
        if arg == "-m":
            continue
        for placeholder, value in fills.items():
            arg = arg.replace(placeholder, value)
        key, _, value = arg.partition("=")
        out.append(f"{key}={value.split(',')[0]}" if "[" not in value else arg)
    return out


@pytest.mark.parametrize("preset", sorted(STUDIES))
def test_study_preset_plans_its_grid_and_every_cell_builds(preset, tmp_path):
    task, swept, options = STUDIES[preset]
    cfg = _compose_hydra(f"sweep={preset}")
    assert cfg.experiment == preset and cfg.task.name == task
    assert from_config(cfg.hydra.callbacks.rmlab_sweep) == options
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    assert params == {**swept, "seed": ["0", "1", "2"]}
    assert planned_jobs(cfg) == 3 * math.prod(len(values) for values in swept.values())
    extra = ([f"reward.init_from={reward_model_checkpoint(tmp_path / 'rm.ckpt', max_length=128, prompt=False)}"]
             if preset == "overoptimisation" else [])
    for key, values in swept.items():  # every value of each swept key (the others at their first value)
        others = [f"{k}={v[0]}" for k, v in swept.items() if k != key]
        for value in values:
            build_components(compose_config(f"sweep={preset}", f"{key}={value}", *others, *extra, *SMALL))


@pytest.mark.parametrize("preset", sorted(STUDIES))
def test_header_commands_compose_and_the_sft_has_the_studys_model_and_task(preset, tmp_path):
    commands = header_commands(preset)
    assert len(commands) >= 2 and all(c[:3] == ["python", "-m", "rmlab"] for c in commands)
    overrides = [composable(c, tmp_path) for c in commands]
    *before, study = [_compose_hydra(*o) for o in overrides]
    for command in overrides:  # each builds (the earlier run the study starts from aside): no job fails at start-up
        build_components(compose_config(*(o for o in command if not o.startswith("init_from=")), *SMALL))
    assert study.experiment == preset and study.init_from == "0123456789abcdef0123456789abcdef"
    sft = before[-1]  # the step just before the study
    assert sft.feedback.name == "none" and sft.init_from is None and sft.loss.name == "cross_entropy"
    # init_from loads weights into the study's model: the SFT's model config must be the same.
    assert OmegaConf.to_container(sft.model) == OmegaConf.to_container(study.model)
    if sft.task.name == study.task.name:  # the same prompts and splits (the split follows each job's seed)
        assert OmegaConf.to_container(sft.task) == OmegaConf.to_container(study.task)
    else:  # SFT on reverse for the pairs of reverse_preference: the same strings
        assert [sft.task[k] for k in ("alphabet", "min_length", "max_length", "n_examples")] == \
            [study.task[k] for k in ("alphabet", "min_length", "max_length", "n_examples")]
    if preset == "overoptimisation":
        rm = before[0]
        assert rm.task.name == "review_preference" and rm.model.name == "text_transformer"
        assert rm.loss.name == "bradley_terry"


def test_dpo_ipo_is_dpo_with_the_ipo_loss_type(tmp_path):
    alias = instantiate("loss", compose_config("task=reverse_preference", "model=causal_lm", "loss=dpo_ipo").loss)
    spelled = instantiate("loss", compose_config("task=reverse_preference", "model=causal_lm", "loss=dpo",
                                                 "loss.loss_type=ipo").loss)
    assert isinstance(alias, type(spelled)) and alias.loss_type == spelled.loss_type == "ipo"
    assert (alias.beta, alias.label_smoothing) == (spelled.beta, spelled.label_smoothing)
    # It has no loss_type to change: setting one is a one-line start-up error naming the keys it has.
    done = subprocess.run([PYTHON, "-m", "rmlab", "task=reverse_preference", "model=causal_lm", "loss=dpo_ipo",
                           "loss.loss_type=sigmoid"], capture_output=True, text=True, env=cli_env(), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "rmlab: error: loss.loss_type is not a key of loss (dpo_ipo): valid keys: name, beta"


def test_the_readmes_study_commands_are_the_presets_header_commands():
    """The README lists each study's commands as the preset headers have them (which the tests above build)."""
    readme = (CONFIG_DIR.parent / "README.md").read_text()
    block = readme[readme.index("The three studies start from earlier runs"):readme.index("`init_from` checks that")]
    listed = [shlex.split(m) for m in re.findall(r"python -m rmlab[^\n]*", block.replace("\\\n", " "))]
    headers = [command for preset in STUDIES for command in header_commands(preset)]
    assert len(listed) == 6 and all(command in headers for command in listed), listed
