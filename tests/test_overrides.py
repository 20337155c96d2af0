"""A sweep job's overrides travel as a structured value: a value with a space is still one override, in one cell."""

from types import SimpleNamespace

from rmlab import summary
from rmlab.provenance import run_tags
from rmlab.sweep import _job_record
from tests.conftest import compose_config


def child(overrides: list[str], job: int, test_reward: float):
    cfg = compose_config()
    context = {"multirun": True, "sweep_dir": "/sweeps/s", "job_num": job, "overrides": overrides}
    tags = {**run_tags(cfg, context), "reward": "accuracy"}
    return SimpleNamespace(data=SimpleNamespace(tags=tags, params={}, metrics={"test/reward": test_reward}))


def test_values_with_spaces_group_into_their_own_cells():
    runs = [child(["run_name='first try'", "seed=0"], 0, 0.5), child(["run_name='first try'", "seed=1"], 1, 0.7),
            child(["run_name='second try'", "seed=0"], 2, 0.9)]
    assert summary.parse_overrides(runs[0].data.tags["rmlab.overrides"]) == {"run_name": "'first try'", "seed": "0"}
    records = [_job_record(run, "FINISHED") for run in runs]
    keys, cells = summary.build_cells(records)
    assert keys == ["run_name"]
    assert [(c.values["run_name"], c.n) for c in cells] == [("'first try'", 2), ("'second try'", 1)]
    assert cells[0].mean("test/reward") == 0.6


def test_tags_written_before_quoting_still_parse():
    assert summary.parse_overrides("loss=gce seed=1") == {"loss": "gce", "seed": "1"}
    assert summary.parse_overrides("x=it's") == {"x": "it's"}  # not shell-quoted: split on whitespace
