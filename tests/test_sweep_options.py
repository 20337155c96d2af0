"""The keys a sweep preset sets on the ``rmlab_sweep`` callback (extra summary columns, an extra plot): checked when
Hydra builds the callback, one line and exit code 2 before anything exists; the extra columns summarised like the
fixed ones, and a note for a column no job logged."""

import subprocess

import pytest
from omegaconf import OmegaConf

from rmlab import summary
from rmlab.errors import Abort, ConfigError
from rmlab.sweep import SweepCallback
from rmlab.sweep_options import SweepOptions, sweep_options
from tests.conftest import PYTHON, cli_env


def test_valid_options_keep_their_order_and_a_repeated_name_is_one_column():
    options = sweep_options(metrics=OmegaConf.create(["test/gold_reward", "train/kl", "test/gold_reward"]),
                            plot="overoptimisation")
    assert options == SweepOptions(("test/gold_reward", "train/kl"), "overoptimisation")
    assert sweep_options() == SweepOptions() and sweep_options(metrics=[]).metrics == ()
    assert SweepCallback(metrics=["val/loss"]).options.metrics == ("val/loss",)


@pytest.mark.parametrize(("options", "message"), [
    ({"colour": "red"}, r"^hydra.callbacks.rmlab_sweep.colour is not a key of the sweep callback: valid keys: "
                        r"metrics, plot$"),
    ({"metrics": "train/kl"}, r"metrics must be a list of metric names, each train/<name>, val/<name> or "
                              r"test/<name> .*got 'train/kl'$"),
    ({"metrics": ["gold_reward"]}, r"metrics: 'gold_reward' is not a metric name: each must be train/<name>"),
    ({"metrics": ["test/"]}, r"'test/' is not a metric name"),
    ({"metrics": [3]}, r"3 is not a metric name"),
    ({"metrics": ["train/kl", "test/reward"]}, r"metrics: test/reward is a column of every summary already"),
    ({"plot": "overoptimization"}, r"plot must be null or one of overoptimisation; got 'overoptimization'$"),
    ({"plot": True}, r"plot must be null or one of overoptimisation; got True$"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message) as caught:
        sweep_options(**options)
    assert "\n" not in str(caught.value)
    # Hydra builds the callback: the error passes through its instantiate (which would wrap an Exception) unchanged.
    with pytest.raises(Abort) as aborted:
        SweepCallback(**options)
    assert str(aborted.value.error) == str(caught.value)


def test_bad_option_on_the_command_line_stops_before_anything_is_created(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "rmlab", "-m", "task=wine", "seed=0,1", f"hydra.sweep.dir={tmp_path / 's'}",
                           "hydra.callbacks.rmlab_sweep.metrics=[gold]"], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "rmlab: error: hydra.callbacks.rmlab_sweep.metrics: 'gold' is not a metric name: each must be train/<name>, "
        "val/<name> or test/<name> (e.g. [test/gold_reward, train/kl])"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no sweep folder, no store, no outputs


@pytest.mark.parametrize("args,message", [
    (["sweep=policy_study", "init_from=0123456789abcdef0123456789abcdef"],
     "rmlab: error: init_from=0123456789abcdef0123456789abcdef: no MLflow store at {store} to look the run up in"),
    (["sweep=policy_study", "init_from=no/such/file.ckpt"],
     "rmlab: error: init_from=no/such/file.ckpt: no such file or folder, and not an MLflow run id"),
    (["sweep=overoptimisation"], "rmlab: error: reward.init_from is required by reward=reward_model: give the run id"),
    (["sweep=overoptimisation", "reward.init_from=nothing"], "rmlab: error: reward.init_from=nothing: no such file"),
])
def test_a_sweep_checks_the_runs_it_starts_from_once_before_any_job(tmp_path, args, message):
    """A wrong init_from (or reward.init_from) given once for a whole sweep stops it with one line and exit code 2,
    before anything is created, instead of failing every job."""
    proc = subprocess.run([PYTHON, "-m", "rmlab", "-m", *args, f"hydra.sweep.dir={tmp_path / 's'}"], cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(store=tmp_path / "mlflow.db")), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no sweep folder, no store, no outputs


def test_extra_columns_are_summarised_like_the_fixed_ones_and_a_missing_one_is_noted(tmp_path):
    def job(beta: str, seed: int, status: str = "FINISHED", **metrics: float) -> summary.JobRecord:
        return summary.JobRecord({"feedback.beta": beta, "seed": str(seed)}, status,
                                 {"test/reward": 0.5, **{k.replace("__", "/"): v for k, v in metrics.items()}})

    records = [job("0", 0, train__kl=0.2, test__gold_reward=1.0), job("0", 1, train__kl=0.4, test__gold_reward=2.0),
               job("0.1", 0, train__kl=0.1), job("0.1", 1, "FAILED", train__kl=9.0)]
    metrics = [*summary.METRICS, "train/kl", "test/gold_reward", "val/typo"]
    keys, cells = summary.build_cells(records, metrics)
    assert cells[0].stats["train/kl"] == pytest.approx((0.3, 0.1414213562))
    assert cells[1].stats["train/kl"] == (0.1, None)  # the failed seed's value is not counted
    assert cells[1].stats["test/gold_reward"] == (None, None)
    table = summary.markdown(keys, cells, metrics)
    assert table.splitlines()[0].endswith("| train/kl | test/gold_reward | val/typo |")
    assert table.splitlines()[2].endswith("| 0.300 ± 0.141 | 1.500 ± 0.707 |  |")
    summary.write_csv(keys, cells, tmp_path / "s.csv", metrics)
    assert "train/kl_mean,train/kl_std" in (tmp_path / "s.csv").read_text().splitlines()[0]
    assert summary.missing_metrics(records, ["train/kl", "test/gold_reward", "val/typo"]) == [
        "No finished job logged val/typo: its column is blank."]
    assert summary.missing_metrics([records[3]], ["val/typo"]) == []  # nothing finished: nothing to say


def test_a_swept_source_is_left_to_each_job(tmp_path):
    """reward.init_from given several values (two reward models compared in one sweep) is each job's own: the
    start-up check neither asks for it nor checks the first; each job checks its own (here: both missing files)."""
    proc = subprocess.run([PYTHON, "-m", "rmlab", "-m", "sweep=overoptimisation", "reward.init_from=no/a.ckpt,no/b.ckpt",
                           "trainer.num_threads=1",
                           f"hydra.sweep.dir={tmp_path / 's'}"], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # the jobs failed, the sweep ran them
    assert "is required" not in out
    assert "reward.init_from=no/a.ckpt: no such file" in out and "reward.init_from=no/b.ckpt: no such file" in out


def test_summary_options_of_an_untracked_sweep_are_said_unused(caplog):
    from hydra import compose, initialize_config_dir

    from rmlab.paths import CONFIG_DIR
    from rmlab.sweep import SweepCallback

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        master = compose("config", overrides=["logger=none", "hydra/launcher=joblib"], return_hydra_config=True)
        callback = SweepCallback(metrics=["train/kl"])
        with caplog.at_level("WARNING", logger="rmlab"):
            callback.on_multirun_start(master)
            callback.on_multirun_end(master)
    assert "hydra.callbacks.rmlab_sweep.metrics and .plot are not used" in caplog.text
    assert callback.parent is None


def test_a_listed_column_no_job_logged_is_said_in_the_sweeps_summary(workdir):
    from rmlab.sweep_options import SweepOptions
    from rmlab.sweep_report import SweepReport
    from rmlab.tracking import Tracker

    parent = Tracker(None, "report", flush_every_s=3600)
    parent.start("sweep", {})
    children = []
    for seed in (0, 1):
        child = Tracker(None, "report", flush_every_s=3600)
        child.start(f"job{seed}", {"rmlab.overrides": f"seed={seed}", "reward": "accuracy"})
        child.log_metrics({"test/reward": 0.5 + seed / 10, "val/selected_reward": 0.5, "train/kl": 0.1 * seed},
                          step=1)
        child.finish("FINISHED")
        children.append(child.get())
    report = SweepReport(workdir / "sweep", "sweep-report", options=SweepOptions(("train/kl", "val/typo")))
    assert report(parent, children, {c.info.run_id: "FINISHED" for c in children}, []) == 0
    text = (workdir / "sweep" / "summary.md").read_text()
    assert "No finished job logged val/typo: its column is blank." in text
    assert "| train/kl | val/typo |" in text and "| 0.050 ± 0.071 |  |" in text
    parent.finish("FINISHED")
