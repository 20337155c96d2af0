"""Every option of every config group composes, builds and validates; the packaged configs ship in the wheel."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from rmlab.build import build_components, group_options
from rmlab.errors import ConfigError, IncompatibleError
from rmlab.paths import CONFIG_DIR
from tests.conftest import PYTHON, REPO, cli_env, compose_config

GROUPS = ["task", "model", "loss", "reward", "feedback", "optimizer", "trainer", "logger", "generation"]
# Which task each option needs so that the combination is a compatible one.
REGRESSION_ONLY = {"neg_mse", "neg_mae", "r2", "spearman"}
PAIR = ["task=synthetic_preference", "loss=bradley_terry", "reward=preference_accuracy"]
PAIR_OPTIONS = {
    "task": {"synthetic_preference", "diabetes_preference"},
    "loss": {"bradley_terry", "hinge", "log_exp", "ipo"},
    "reward": {"preference_accuracy", "reward_margin", "true_reward_spearman", "preference_neg_ece"},
}
NEED_A_PATH = {"csv", "preference_file"}
# Policy optimisation trains language models: built on a sequence task (and refused on tabular ones, below).
SEQUENCE_FEEDBACK = {"grpo", "rloo"}
# Preference optimisation of a language model: its losses and tasks (output kind sequence_pair) build together.
SEQUENCE_PAIR_LOSSES = {"dpo", "dpo_ipo", "simpo", "orpo"}
SEQUENCE_PAIR_TASKS = {"reverse_preference", "addition_preference", "preference_completion_file"}
# Sequence tasks (the file tasks given a file, reasoning_gym a dataset) build with a language model and a text reward;
# their own configs are tested in test_sequence_tasks.py.
SEQUENCE_TASKS = {"copy", "reverse", "sort", "addition", "reasoning_gym", "text_classification", "qa", "translation",
                  "summarisation", "dialogue", "completion_file", "text_classification_file", "review_writing"}
LM = ["model=causal_lm", "model.width=16", "model.depth=1", "model.heads=2"]
LANGUAGE_MODELS = {"causal_lm": LM,
                   "hf_causal_lm": ["model=hf_causal_lm", "model.config=gpt2", "model.width=16", "model.depth=1",
                                    "model.heads=2", "model.max_length=64"]}
# Text rewards, each on a task it works on (the others: any sequence task).
TEXT_REWARDS = {"exact_match", "token_f1", "bleu", "chrf", "rouge_l", "neg_edit_distance", "verifier",
                "label_accuracy", "gold", "neg_length", "format", "reward_model", "combined"}
TEXT_REWARD_TASK = {"verifier": "addition", "label_accuracy": "text_classification", "gold": "review_writing"}


def text_reward_values(option, tmp_path):
    """The values a text reward needs besides its defaults (a pattern, terms, a reward model)."""
    if option == "format":
        return {"pattern": "[a-z]+"}
    if option == "combined":
        return {"terms": [{"name": "exact_match", "weight": 1.0}, {"name": "neg_length", "weight": 0.01}]}
    if option == "reward_model":
        from tests.lm_fixtures import reward_model_checkpoint

        return {"init_from": str(reward_model_checkpoint(tmp_path / "rm.ckpt"))}
    return {}


def text_reward_overrides(option, tmp_path):
    """``text_reward_values`` as command-line overrides."""
    import json

    def value(v):  # Hydra's override grammar: quoted strings, flow-style lists and mappings
        if isinstance(v, str):
            return json.dumps(v).replace('"', "'")
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {value(x)}" for k, x in v.items()) + "}"
        return repr(v)

    return [f"reward.{key}={value(v)}" for key, v in text_reward_values(option, tmp_path).items()]


def options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_root_defaults():
    cfg = compose_config()
    assert cfg.task.name == "digits" and cfg.model.name == "mlp" and cfg.loss.name == "cross_entropy"
    assert cfg.reward.name == "accuracy" and cfg.optimizer.name == "adam" and cfg.logger.name == "mlflow"
    assert cfg.feedback.name == "none" and cfg.seed == 0 and cfg.experiment == "digits"


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_builds(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "task" and option == "csv":
        path = tmp_path / "data.csv"
        path.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
        overrides += [f"task.path={path}", "task.target=label"]
    if group == "task" and option in ("diabetes", "synthetic_regression"):
        overrides += ["loss=mse", "reward=neg_mse"]
    if group == "reward" and option in REGRESSION_ONLY:
        overrides += ["task=diabetes", "loss=mse"]
    if option in PAIR_OPTIONS.get(group, ()):
        overrides += [o for o in PAIR if not o.startswith(f"{group}=")]
    if (group, option) in (("task", "preference_file"), ("model", "text_transformer")):
        path = tmp_path / "prefs.jsonl"
        path.write_text("".join(f'{{"prompt": "q{i}", "chosen": "y{i}", "rejected": "n{i}"}}\n' for i in range(40)))
        extra = ["task=preference_file", "model=text_transformer", *PAIR[1:]]
        overrides += [o for o in extra if o not in overrides] + [f"task.path={path}"]
    if group == "model" and option in LANGUAGE_MODELS:
        overrides = ["task=reverse", "task.n_examples=100", "reward=exact_match", *LANGUAGE_MODELS[option]]
    if group == "task" and option in SEQUENCE_TASKS:
        overrides += [*sequence_task_overrides(option, tmp_path), *LM, "reward=exact_match"]
    if group == "task" and option in SEQUENCE_PAIR_TASKS:
        overrides += [*sequence_task_overrides(option, tmp_path), *LM, "loss=dpo", "reward=exact_match"]
    if group == "loss" and option in SEQUENCE_PAIR_LOSSES:
        overrides += ["task=reverse_preference", "task.n_examples=100", *LM, "reward=exact_match"]
    if group == "reward" and option in TEXT_REWARDS:
        overrides += [f"task={TEXT_REWARD_TASK.get(option, 'reverse')}", "task.n_examples=100", *LM,
                      *text_reward_overrides(option, tmp_path)]
    if (group, option) == ("task", "review_preference"):
        overrides += ["task.n_pairs=200", "model=text_transformer", "model.width=16", "model.heads=2",
                      "loss=bradley_terry", "reward=preference_accuracy"]
    if group == "feedback" and option in SEQUENCE_FEEDBACK:
        overrides += ["task=reverse", "task.n_examples=100", "reward=exact_match", *LM]
    if group == "generation":  # acts on language-model tasks only (refused elsewhere: test_validation.py)
        overrides += ["task=reverse", "task.n_examples=100", "reward=exact_match", *LM]
    cfg = compose_config(*overrides)
    if (group, option) == ("trainer", "gpu") and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="trainer.accelerator=gpu but this machine has no CUDA GPU"):
            build_components(cfg)  # refused before anything is created, not by Lightning once the run is open
        return
    parts = build_components(cfg)
    assert parts.info.output_kind in parts.loss.accepts
    if group == "feedback" and option != "none":
        from rmlab.policy import as_policy

        assert parts.info.output_kind != "sequence" or as_policy(parts.feedback).name == option


@pytest.mark.parametrize("option", sorted(SEQUENCE_FEEDBACK))
def test_policy_feedback_is_refused_on_tabular_tasks_naming_what_works(option):
    with pytest.raises(IncompatibleError, match=f"feedback={option} trains language models on sequence tasks, but "
                                                "task=digits outputs 'logits'. Choices of feedback that work on "
                                                "task=digits: reinforce"):
        build_components(compose_config(f"feedback={option}"))


def sequence_task_overrides(option, tmp_path):
    if option == "reasoning_gym":
        pytest.importorskip("reasoning_gym")
        return ["task.dataset=spell_backward", "task.n_examples=30"]
    if option == "completion_file":
        path = tmp_path / "sft.jsonl"
        path.write_text("".join(f'{{"prompt": "q{i}", "completion": "a{i}"}}\n' for i in range(40)))
        return [f"task.path={path}"]
    if option == "preference_completion_file":
        path = tmp_path / "prefs.jsonl"
        path.write_text("".join(f'{{"prompt": "q{i}", "chosen": "a{i}", "rejected": "b{i}"}}\n' for i in range(40)))
        return [f"task.path={path}"]
    if option == "text_classification_file":
        path = tmp_path / "labels.csv"
        path.write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(40)))
        return [f"task.path={path}"]
    return ["task.n_examples=100"]


def test_group_options_lists_packaged_configs():
    assert set(group_options("loss")) == set(options("loss"))
    assert group_options("loss")["huber"] == "rmlab.losses.Huber"


def test_config_names_match_file_names():
    for group in ("task", "model", "loss", "reward", "logger", "feedback", "optimizer", "generation"):
        for option in options(group):
            cfg = compose_config(f"{group}={option}") if group != "task" or option not in NEED_A_PATH else None
            if cfg is not None:
                assert cfg[group].name == option, f"{group}/{option}.yaml has name {cfg[group].name!r}"


def test_unknown_key_in_component_is_named():
    with pytest.raises(ConfigError, match=r"loss 'huber' has no option deltaa; its options are: delta"):
        build_components(compose_config("loss=huber", "+loss.deltaa=2"))


@pytest.mark.slow
def test_wheel_carries_the_configs(tmp_path):
    subprocess.run([PYTHON, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(REPO)], check=True, env=cli_env(), cwd=tmp_path, capture_output=True)
    wheel = next(tmp_path.glob("rmlab-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "rmlab/conf/config.yaml" in names
    # Every package of the checkout (a subpackage left out of pyproject's list would be missing from installs).
    for init in (REPO / "rmlab").rglob("__init__.py"):
        assert init.relative_to(REPO).as_posix() in names
    assert "hydra_plugins/rmlab_optuna_sweeper/__init__.py" in names
    assert "hydra_plugins/rmlab_ray_launcher/ray_launcher.py" in names
    assert "rmlab/conf/loss/huber.yaml" in names and "rmlab/conf/hydra/job_logging/rmlab.yaml" in names
    expected = {f"rmlab/conf/{p.relative_to(CONFIG_DIR)}" for p in CONFIG_DIR.rglob("*.yaml")}
    assert expected <= names
    # Installed from the wheel (outside the checkout), rmlab finds its configs inside the package.
    target = tmp_path / "site"
    subprocess.run([PYTHON, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {**cli_env(), "PYTHONPATH": str(target)}
    where = subprocess.run([PYTHON, "-c", "import rmlab.paths as p; print(p.CONFIG_DIR)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True)
    assert where.stdout.strip() == str(target / "rmlab" / "conf")
    shown = subprocess.run([PYTHON, "-m", "rmlab", "--cfg", "job", "loss=huber", "sweep=noise_robustness"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert "name: huber" in shown.stdout and "experiment: noise_robustness" in shown.stdout


@pytest.mark.slow
def test_plain_editable_install_finds_the_sweeper_plugin(tmp_path):
    """`pip install -e .` with no flags (setuptools' PEP 660 editable mode, which hides namespace packages from
    Hydra's plugin scan) in a fresh virtual environment: `sweep=optuna` composes and runs."""
    import site
    import sysconfig

    source = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((REPO / name).read_bytes())
    venv = tmp_path / "venv"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python"))
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies (and pip) come from this interpreter's site-packages as plain path entries: their .pth files,
    # among them the editable install of the checkout under test, are not processed, so only the new install
    # provides rmlab.
    Path(purelib, "dependencies.pth").write_text("\n".join([*site.getsitepackages(), sysconfig.get_paths()["purelib"]]))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MLFLOW_")}
    installed = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e",
                                str(source)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = subprocess.run([python, "-c", "import rmlab; print(rmlab.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True)
    assert found.stdout.strip() == str(source / "rmlab" / "__init__.py")
    shown = subprocess.run([python, "-m", "rmlab", "sweep=optuna", "--cfg", "hydra"], cwd=elsewhere, env=env,
                           capture_output=True, text=True)
    assert shown.returncode == 0 and "RmlabOptunaSweeper" in shown.stdout, shown.stderr
    swept = subprocess.run([python, "-m", "rmlab", "-m", "sweep=optuna", "task=wine", "trainer.max_epochs=1",
                            "trainer.enable_progress_bar=false", "hydra.sweeper.n_trials=1", "logger=none"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert swept.returncode == 0, swept.stderr[-3000:]
    (results,) = elsewhere.rglob("optimization_results.yaml")
    assert "COMPLETE: 1" in results.read_text()


def test_config_checks_import_neither_lightning_nor_mlflow():
    """--help, --cfg and a config error answer without the heavy imports (Lightning alone takes seconds)."""
    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from rmlab.paths import CONFIG_DIR\n"
        "from rmlab.build import build_components\n"
        "with initialize_config_dir(version_base='1.3', config_dir=str(CONFIG_DIR)):\n"
        "    build_components(compose('config', overrides=['loss=huber']))\n"
        "print(sorted(m for m in ('pytorch_lightning', 'lightning', 'mlflow', 'optuna') if m in sys.modules))\n"
    )
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=cli_env(), check=True)
    assert done.stdout.strip() == "[]"
    helped = subprocess.run([PYTHON, "-X", "importtime", "-m", "rmlab", "--help"], capture_output=True, text=True,
                            env=cli_env(), check=True)
    assert "torch" not in {line.split("|")[-1].strip() for line in helped.stderr.splitlines()}
