"""The sweep summary plot: a value axis fitted to the data, every bar labelled with its value and seed count."""

import pytest

from rmlab import summary
from rmlab.summary import JobRecord


def records(values: dict[str, list[float]], key: str = "loss") -> list[JobRecord]:
    return [JobRecord({key: name, "seed": str(seed)}, "FINISHED", {"test/reward": v}, reward="accuracy")
            for name, seeds in values.items() for seed, v in enumerate(seeds)]


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_bars_fit_the_axis_to_the_data_and_state_value_and_n():
    keys, cells = summary.build_cells(records({"ce": [0.946, 0.95, 0.942], "gce": [0.933, 0.931]}))
    ax = summary.figure(keys, cells).axes[0]
    low, high = ax.get_ylim()
    # 0.946 against 0.933 must be visible: the axis spans the bars and their error bars, not 0..1.
    assert 0.9 < low < 0.93 and 0.95 < high < 0.98
    assert texts(ax) == ["0.946\nn=3", "0.932\nn=2"]
    assert "mean ± std over seeds" in ax.get_title()
    # Bars grow from the bottom of the axis, also for negative rewards.
    keys, cells = summary.build_cells(records({"a": [-0.52, -0.5], "b": [-0.41, -0.4]}))
    ax = summary.figure(keys, cells).axes[0]
    assert all(p.get_y() == pytest.approx(ax.get_ylim()[0]) and p.get_height() > 0 for p in ax.patches)


def test_horizontal_bars_and_lines_state_n():
    cells = summary.build_cells([JobRecord({"loss": loss, "reward": reward, "seed": str(s)}, "FINISHED",
                                           {"test/reward": 0.8 + 0.01 * s}, reward=reward)
                                 for loss in ("ce", "gce") for reward in ("f1", "accuracy") for s in range(2)])
    ax = summary.figure(*cells).axes[0]
    assert ax.get_xlim()[0] > 0.5 and texts(ax)[0] == "0.805 (n=2)"
    noise = [JobRecord({"loss": loss, "task.label_noise": str(n), "seed": str(s)}, "FINISHED",
                       {"test/reward": 0.97 - n * 0.5}, reward="accuracy")
             for loss in ("ce", "gce") for n in (0.0, 0.4) for s in range(3)]
    ax = summary.figure(*summary.build_cells(noise)).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["loss=ce (n=3)", "loss=gce (n=3)"]
    assert ax.get_ylim()[0] > 0.5  # fitted to 0.77..0.97
