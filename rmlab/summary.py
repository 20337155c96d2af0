"""A sweep's summary table, built from its jobs' outcomes: one row per cell, written as CSV, Markdown and a PNG plot.

A *cell* is a job's overrides without ``seed=...``: the jobs of a cell differ only by seed, so the cell's row holds the
mean and the sample standard deviation (ddof=1, blank below two runs) of each metric over its finished runs. Columns
are the overrides that vary across the sweep (``loss``, ``task.label_noise``), the reward, ``n`` (finished runs) and
``failed``. In an Optuna sweep every trial is its own cell, listed best first by the study's objective.

Everything here works on plain data (``JobRecord``), so it is tested without MLflow; ``rmlab.sweep`` reads the runs.
"""

from __future__ import annotations

import csv
import math
import shlex
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The validation reward of the weights each run tested (its best epoch, or its last with checkpointing off): the
# metric a sweep selects on, so the selection and the test numbers beside it always come from the same weights.
SELECTION_METRIC = "val/selected_reward"
METRICS = ("test/reward", SELECTION_METRIC, "test/loss")
SEED_KEYS = ("seed", "+seed", "++seed")


@dataclass
class JobRecord:
    """What the summary needs from one child run."""

    overrides: dict[str, str]  # key -> value text, as the job got them on its command line
    status: str  # FINISHED, FAILED, KILLED, ...
    metrics: dict[str, float]
    reward: str = ""
    trial: int | None = None  # Optuna trial number (or Hydra job number)


@dataclass
class Cell:
    values: dict[str, str]  # varying key -> value
    reward: str
    n: int = 0
    failed: int = 0
    stats: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # metric -> (mean, std)
    trial: int | None = None

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values.items()) or "all"

    def mean(self, metric: str) -> float | None:
        return self.stats.get(metric, (None, None))[0]


def parse_overrides(text: str) -> dict[str, str]:
    """``"loss=gce 'task.path=my data.csv'"`` -> ``{"loss": "gce", "task.path": "my data.csv"}``: the children's
    ``rmlab.overrides`` tag, quoted as a shell would (``shlex.join``), so a value with a space stays one override."""
    try:
        items = shlex.split(text)
    except ValueError:  # not shell-quoted (a run from before overrides were quoted): whitespace-separated
        items = text.split()
    pairs = (item.split("=", 1) for item in items if "=" in item)
    return {key: value for key, value in pairs}


def varying_keys(records: Sequence[JobRecord], group_seeds: bool = True, searched: Sequence[str] = ()) -> list[str]:
    """Override keys whose value differs between jobs, or that were ``searched`` (an Optuna space, even when one trial
    ran), in first-seen order; seed is left out when seeds are grouped."""
    keys: list[str] = []
    for record in records:
        keys += [k for k in record.overrides if k not in keys]
    return [k for k in keys if (k in searched or len({r.overrides.get(k, "") for r in records}) > 1)
            and not (group_seeds and k in SEED_KEYS)]


def missing_metrics(records: Sequence[JobRecord], metrics: Sequence[str]) -> list[str]:
    """A note for each asked-for metric that no finished job logged (a misspelt name, or a task without it): its
    column stays blank, and the summary says why."""
    done = [r for r in records if r.status == "FINISHED"]
    return [f"No finished job logged {m}: its column is blank." for m in metrics
            if done and not any(m in r.metrics for r in done)]


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def build_cells(records: Sequence[JobRecord], metrics: Sequence[str] = METRICS, trials: bool = False,
                searched: Sequence[str] = ()) -> tuple[list[str], list[Cell]]:
    """(varying keys, cells). Grid: one cell per distinct non-seed override set, in job order. Trials: one per job."""
    keys = varying_keys(records, group_seeds=not trials, searched=searched)
    groups: dict[tuple, list[JobRecord]] = {}
    for i, record in enumerate(records):
        ident = (i,) if trials else tuple(record.overrides.get(k, "") for k in keys)
        groups.setdefault(ident, []).append(record)
    cells = []
    for members in groups.values():
        done = [r for r in members if r.status == "FINISHED"]
        cell = Cell(values={k: members[0].overrides.get(k, "") for k in keys},
                    reward=",".join(sorted({r.reward for r in members if r.reward})),
                    n=len(done), failed=len(members) - len(done), trial=members[0].trial if trials else None)
        cell.stats = {m: _stats([r.metrics[m] for r in done if m in r.metrics]) for m in metrics}
        cells.append(cell)
    return keys, cells


def best_cell(cells: Sequence[Cell], metric: str = SELECTION_METRIC, maximize: bool = True) -> Cell | None:
    """The cell selected by ``metric`` (validation, never test: test numbers must not choose)."""
    scored = [c for c in cells if c.mean(metric) is not None]
    if not scored:
        return None
    return (max if maximize else min)(scored, key=lambda c: c.mean(metric))


def sort_trials(cells: list[Cell], objective: str, maximize: bool) -> list[Cell]:
    """Best first; trials without a value last."""
    sign = -1.0 if maximize else 1.0
    return sorted(cells, key=lambda c: (c.mean(objective) is None, sign * (c.mean(objective) or 0.0)))


def _columns(keys: Sequence[str], cells: Sequence[Cell]) -> list[str]:
    """Leading columns: trial (Optuna), the varying keys, and the reward unless it is already a varying key."""
    lead = ["trial"] if cells and cells[0].trial is not None else []
    return lead + list(keys) + ([] if "reward" in keys else ["reward"])


def _lead_values(keys: Sequence[str], cell: Cell) -> list[str]:
    return ([str(cell.trial)] if cell.trial is not None else []) + [cell.values[k] for k in keys] + (
        [] if "reward" in keys else [cell.reward])


def write_csv(keys: Sequence[str], cells: Sequence[Cell], path: Path, metrics: Sequence[str] = METRICS) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(_columns(keys, cells) + ["n", "failed"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
        for cell in cells:
            numbers = ["" if v is None else repr(v) for m in metrics for v in cell.stats[m]]
            out.writerow(_lead_values(keys, cell) + [cell.n, cell.failed] + numbers)


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def _short(value: str) -> str:
    """A sampled float (Optuna's 0.0026938830192854116) in 4 significant digits; anything else as it is."""
    try:
        return value if float(value).is_integer() or len(value) <= 8 else f"{float(value):.4g}"
    except ValueError:
        return value


def markdown(keys: Sequence[str], cells: Sequence[Cell], metrics: Sequence[str] = METRICS) -> str:
    """A Markdown table, "mean ± std" over seeds, 3 decimals (the CSV keeps every digit)."""
    head = _columns(keys, cells) + ["n", "failed"] + list(metrics)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells:
        lead = [_short(v) for v in _lead_values(keys, cell)]
        row = lead + [str(cell.n), str(cell.failed)] + [_pm(*cell.stats[m]) for m in metrics]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _numeric(values: Sequence[str]) -> bool:
    try:
        [float(v) for v in values]
        return True
    except ValueError:
        return False


def _fitted(low: float, high: float) -> tuple[float, float]:
    """Axis limits around [low, high] with a margin, and room above for the value labels: the differences between
    cells (0.946 against 0.933) are what the plot is for, so the axis does not start at 0."""
    span = high - low or max(abs(high), 1.0) * 0.05
    return low - 0.25 * span, high + 0.45 * span


def _n_text(cells: Sequence[Cell]) -> str:
    counts = sorted({c.n for c in cells})
    return f"n={counts[0]}" if len(counts) == 1 else f"n={counts[0]}-{counts[-1]}"


def figure(keys: Sequence[str], cells: Sequence[Cell], metric: str = "test/reward", title: str = "",
           maximize: bool = True):
    """The summary plot as a matplotlib Figure (``plot`` writes it).

    Optuna trials: ``metric`` per trial with the running best. Two varying keys, one numeric: ``metric`` against it,
    one line per value of the other (the robustness figure), the seeds per line in the legend. One key: bars.
    Otherwise: horizontal bars per cell. Bars and error bars are the mean and sample std over each cell's finished
    seeds; every bar is labelled with its value and its number of seeds ``n``, and the value axis is fitted to the data
    (it does not start at 0)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend to set, no figure to close

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.grid(True, axis="both", alpha=0.3)
    ax.set_axisbelow(True)
    reward = next((c.reward for c in cells if c.reward), "")
    label = f"{metric} ({reward})" if reward else metric
    shown = [c for c in cells if c.mean(metric) is not None]
    numeric = [k for k in keys if _numeric([c.values[k] for c in cells])]
    means = [c.mean(metric) for c in shown]
    stds = [c.stats[metric][1] or 0.0 for c in shown]
    spread = "mean ± std over seeds"
    if cells and cells[0].trial is not None:
        shown.sort(key=lambda c: c.trial)
        ys = [c.mean(metric) for c in shown]
        ax.plot([c.trial for c in shown], ys, "o", label="trial")
        best = max if maximize else min
        ax.plot([c.trial for c in shown], [best(ys[: i + 1]) for i in range(len(ys))], "-", label="best so far")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set(xlabel="trial", ylabel=label)
        ax.legend()
        spread = ""
    elif len(keys) == 2 and numeric:
        x_key = max(numeric, key=lambda k: len({c.values[k] for c in cells}))
        line_key = next(k for k in keys if k != x_key)
        for name in dict.fromkeys(c.values[line_key] for c in cells):
            line = sorted((c for c in shown if c.values[line_key] == name), key=lambda c: float(c.values[x_key]))
            if line:
                ax.errorbar([float(c.values[x_key]) for c in line], [c.mean(metric) for c in line],
                            yerr=[c.stats[metric][1] or 0.0 for c in line], marker="o", capsize=3,
                            label=f"{line_key}={name} ({_n_text(line)})")
        ax.set_xticks(sorted({float(c.values[x_key]) for c in shown}))
        ax.set(xlabel=x_key, ylabel=label)
        if shown:
            ax.legend(fontsize="small")
    elif len(keys) == 1:
        low, high = _fitted(min(m - s for m, s in zip(means, stds)), max(m + s for m, s in zip(means, stds))) \
            if shown else (0.0, 1.0)
        # Bars grow from the bottom of the fitted axis, so a negative reward's bar does not hang from the top.
        bars = ax.bar(range(len(shown)), [m - low for m in means], bottom=low, yerr=stds, capsize=3)
        ax.bar_label(bars, labels=[f"{m:.3f}\nn={c.n}" for m, c in zip(means, shown)], padding=3, fontsize="small")
        ax.set_ylim(low, high)
        ax.set_xticks(range(len(shown)), [c.values[keys[0]] for c in shown], rotation=30, ha="right")
        ax.set(xlabel=keys[0], ylabel=label)
    else:
        low, high = _fitted(min(m - s for m, s in zip(means, stds)), max(m + s for m, s in zip(means, stds))) \
            if shown else (0.0, 1.0)
        bars = ax.barh(range(len(shown)), [m - low for m in means], left=low, xerr=stds, capsize=3)
        ax.bar_label(bars, labels=[f"{m:.3f} (n={c.n})" for m, c in zip(means, shown)], padding=3, fontsize="small")
        ax.set_xlim(low, high)
        ax.set_yticks(range(len(shown)), [c.label() for c in shown])
        ax.invert_yaxis()
        ax.set(xlabel=label)
    if not shown:
        ax.text(0.5, 0.5, f"no finished run has {metric}", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("\n".join(t for t in (title, spread) if t), fontsize="medium")
    return fig


def plot(keys: Sequence[str], cells: Sequence[Cell], path: Path, metric: str = "test/reward",
         title: str = "", maximize: bool = True) -> None:
    """Write the summary plot (see ``figure``) as a PNG."""
    figure(keys, cells, metric, title, maximize).savefig(path, dpi=120)
