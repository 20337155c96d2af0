"""Reward over-optimisation in a sweep (Gao et al. 2022): the gold and the proxy reward against the KL to the reference.

A sweep whose preset sets ``hydra.callbacks.rmlab_sweep.plot: overoptimisation`` (e.g. a policy trained by feedback
against a reward model, several ``feedback.beta``) gets, on its parent run and in its folder:

- ``overoptimisation.png``: x = sqrt(KL), KL being ``train/kl_sequence`` (the KL of each sampled completion to the
  reference policy, summed over its tokens, mean over the step's completions; in nats), as Gao et al. plot it
  (negative estimates, which the k1 estimator can give, count as 0); y = ``train/gold_reward`` (left) and
  ``train/sampled_reward``, the proxy being optimised (right), both on the same sampled completions. One colour per
  cell (the sweep's varying keys other than seed: the swept coefficient);
- ``overoptimisation.csv``: every plotted point, raw and smoothed;
- a section of ``summary.md``: per cell the final KL, proxy and gold, the peak gold and the KL at that peak, and one
  computed sentence saying for which cells the proxy kept rising while the gold reward peaked and fell.

Each cell's curve: at every logged step, the mean over the seeds that logged all three metrics at that step; then a
centred moving average over ``WINDOW`` logged steps (fewer at the ends), applied alike to KL, proxy and gold. "Final"
is the last smoothed point, "peak" the highest smoothed gold. A change counts (the gold "fell" after its peak, the
proxy "rose" after the gold's peak) when it exceeds ``CHANGE`` times that curve's own range, so noise that smoothing
left does not.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KL, PROXY, GOLD = "train/kl_sequence", "train/sampled_reward", "train/gold_reward"
METRICS = (KL, PROXY, GOLD)
WINDOW = 5  # logged steps in the centred moving average
CHANGE = 0.05  # a fall or rise counts when larger than this share of the curve's range


@dataclass
class ChildSeries:
    """One finished child: its cell (varying key -> value, seed left out) and each metric's history (step -> value)."""

    values: dict[str, str]
    series: dict[str, dict[int, float]]


@dataclass
class Curve:
    """A cell's seed-averaged curve: the raw per-step means, and the smoothed ones the plot and the table use."""

    values: dict[str, str]
    seeds: int  # children pooled
    steps: list[int]
    kl: list[float]
    proxy: list[float]
    gold: list[float]
    window: int = WINDOW

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values.items()) or "all"

    def smoothed(self, name: str) -> list[float]:
        return smooth(getattr(self, name), self.window)


@dataclass
class Outcome:
    final_kl: float
    final_proxy: float
    final_gold: float
    peak_gold: float
    kl_at_peak: float
    gold_fell: bool  # the smoothed gold ended below its peak by more than CHANGE of its range
    proxy_rose: bool  # the smoothed proxy ended above its value at the gold's peak by more than CHANGE of its range

    @property
    def overoptimised(self) -> bool:
        return self.gold_fell and self.proxy_rose


def smooth(values: Sequence[float], window: int = WINDOW) -> list[float]:
    """Centred moving average over ``window`` points, the window shrinking at the ends (no padding)."""
    half = max(window, 1) // 2
    return [math.fsum(values[max(0, i - half): i + half + 1]) / len(values[max(0, i - half): i + half + 1])
            for i in range(len(values))]


def build_curves(children: Sequence[ChildSeries], window: int = WINDOW) -> list[Curve]:
    """One curve per cell, in first-seen order (by value when the cells differ in one numeric key)."""
    groups: dict[tuple, list[ChildSeries]] = {}
    for child in children:
        groups.setdefault(tuple(child.values.items()), []).append(child)
    curves = []
    for members in groups.values():
        points: dict[int, list[tuple[float, float, float]]] = {}
        for child in members:
            common = set.intersection(*(set(child.series.get(m, {})) for m in METRICS))
            for step in common:
                points.setdefault(step, []).append(tuple(child.series[m][step] for m in METRICS))
        steps = sorted(points)
        if not steps:
            continue
        means = [[math.fsum(p[i] for p in points[s]) / len(points[s]) for s in steps] for i in range(3)]
        curves.append(Curve(dict(members[0].values), len(members), steps, *means, window=window))
    keys = list(curves[0].values) if curves else []
    if len(keys) == 1 and all(_number(c.values[keys[0]]) is not None for c in curves):
        curves.sort(key=lambda c: _number(c.values[keys[0]]))
    return curves


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _range(values: Sequence[float]) -> float:
    return max(values) - min(values)


def outcome(curve: Curve) -> Outcome:
    kl, proxy, gold = (curve.smoothed(n) for n in ("kl", "proxy", "gold"))
    peak = max(range(len(gold)), key=gold.__getitem__)  # the first highest point
    return Outcome(final_kl=kl[-1], final_proxy=proxy[-1], final_gold=gold[-1], peak_gold=gold[peak],
                   kl_at_peak=kl[peak], gold_fell=gold[peak] - gold[-1] > CHANGE * _range(gold) > 0,
                   proxy_rose=proxy[-1] - proxy[peak] > CHANGE * _range(proxy) > 0)


def verdict(curves: Sequence[Curve]) -> str:
    """One sentence: for which cells the proxy kept rising while the gold reward peaked and fell, and why not for
    the others."""
    if not curves:
        return "No over-optimisation verdict: no finished job logged " + ", ".join(METRICS) + " at a common step."
    yes, no = [], []
    for curve in curves:
        found = outcome(curve)
        if found.overoptimised:
            yes.append(curve.label())
        else:
            why = "the gold reward did not fall after its peak" if not found.gold_fell else \
                "the proxy did not rise after the gold reward's peak"
            no.append(f"{curve.label()} ({why})")
    parts = []
    if yes:
        parts.append(f"the proxy reward kept rising while the gold reward peaked and fell for {', '.join(yes)}")
    if no:
        parts.append(f"not for {'; '.join(no)}" if yes else f"no cell over-optimised: {'; '.join(no)}")
    return "Over-optimisation: " + ", ".join(parts) + "."


def table(curves: Sequence[Curve]) -> str:
    keys = list(curves[0].values) if curves else []
    head = [*keys, "seeds", "steps", "final KL", "final proxy", "final gold", "peak gold", "KL at peak gold",
            "over-optimised"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for curve in curves:
        found = outcome(curve)
        numbers = (found.final_kl, found.final_proxy, found.final_gold, found.peak_gold, found.kl_at_peak)
        row = [*curve.values.values(), str(curve.seeds), str(len(curve.steps)), *(f"{v:.3f}" for v in numbers),
               "yes" if found.overoptimised else "no"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_csv(curves: Sequence[Curve], path: Path) -> None:
    keys = list(curves[0].values) if curves else []
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*keys, "seeds", "step", "kl", "proxy", "gold", "kl_smoothed", "sqrt_kl_smoothed",
                      "proxy_smoothed", "gold_smoothed"])
        for curve in curves:
            smoothed = [curve.smoothed(n) for n in ("kl", "proxy", "gold")]
            for i, step in enumerate(curve.steps):
                out.writerow([*curve.values.values(), curve.seeds, step, repr(curve.kl[i]), repr(curve.proxy[i]),
                              repr(curve.gold[i]), repr(smoothed[0][i]), repr(math.sqrt(max(smoothed[0][i], 0.0))),
                              repr(smoothed[1][i]), repr(smoothed[2][i])])


def figure(curves: Sequence[Curve], title: str = ""):
    """Gold (left) and proxy (right) reward against sqrt(KL), one colour per cell, the gold peak marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5), layout="constrained")
    gold_ax, proxy_ax = fig.subplots(1, 2, sharex=True)
    colours = [f"C{i % 10}" for i in range(len(curves))]
    for curve, colour in zip(curves, colours):
        kl, proxy, gold = (curve.smoothed(n) for n in ("kl", "proxy", "gold"))
        x = [math.sqrt(max(v, 0.0)) for v in kl]
        raw_x = [math.sqrt(max(v, 0.0)) for v in curve.kl]
        label = f"{curve.label()} (n={curve.seeds})"
        for ax, raw, line in ((gold_ax, curve.gold, gold), (proxy_ax, curve.proxy, proxy)):
            ax.plot(raw_x, raw, ".", color=colour, alpha=0.25, markersize=3)
            ax.plot(x, line, "-", color=colour, label=label)
        peak = max(range(len(gold)), key=gold.__getitem__)
        gold_ax.plot([x[peak]], [gold[peak]], "*", color=colour, markersize=11)
    for ax, name in ((gold_ax, f"gold reward ({GOLD})"), (proxy_ax, f"proxy reward ({PROXY})")):
        ax.grid(True, alpha=0.3)
        ax.set(xlabel="sqrt(KL to the reference, nats per completion)", ylabel=name)
    if curves:
        gold_ax.legend(fontsize="small")
    else:
        gold_ax.text(0.5, 0.5, "no finished run logged " + ", ".join(METRICS), ha="center", va="center",
                     transform=gold_ax.transAxes)
    fig.suptitle("\n".join(t for t in (title, f"mean over seeds per step, moving average over {WINDOW} logged "
                                              "steps; * = peak gold") if t), fontsize="medium")
    return fig


def read(client: Any, runs: Sequence[Any], status_of: Mapping[str, str], keys: Sequence[str]) -> list[ChildSeries]:
    """The three metrics' histories of the FINISHED children that logged them all: 3 reads per such child, none for
    the others."""
    from rmlab.summary import parse_overrides

    found = []
    for run in runs:
        if status_of.get(run.info.run_id) != "FINISHED" or not all(m in run.data.metrics for m in METRICS):
            continue
        overrides = parse_overrides(run.data.tags.get("rmlab.overrides", ""))
        series = {m: {p.step: p.value for p in client.get_metric_history(run.info.run_id, m)} for m in METRICS}
        found.append(ChildSeries({k: overrides.get(k, "") for k in keys}, series))
    return found


def report(client: Any, runs: Sequence[Any], status_of: Mapping[str, str], keys: Sequence[str], sweep_dir: Path,
           title: str) -> tuple[dict[str, Path], list[str]]:
    """Write overoptimisation.{csv,png} into ``sweep_dir``; return them (to upload) and the summary's section."""
    import logging

    curves = build_curves(read(client, runs, status_of, keys))
    lines = ["## Over-optimisation", "",
             f"x = sqrt({KL}), proxy = {PROXY}, gold = {GOLD}; per cell the mean over seeds at each logged step, "
             f"moving average over {WINDOW} logged steps. KL in nats per completion.", ""]
    if not curves:
        return {}, lines + [verdict(curves)]
    files = {"overoptimisation.csv": sweep_dir / "overoptimisation.csv"}
    write_csv(curves, files["overoptimisation.csv"])
    try:
        path = sweep_dir / "overoptimisation.png"
        figure(curves, title).savefig(path, dpi=120)
        files["overoptimisation.png"] = path
    except ImportError as err:  # matplotlib comes with mlflow; without it only the tables
        logging.getLogger("rmlab").warning(f"No over-optimisation plot: {err}")
    return files, lines + [table(curves), "", verdict(curves)]
