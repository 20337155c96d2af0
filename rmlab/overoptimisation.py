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

Each cell's curve: at every logged step that every seed of the cell logged (all three metrics), the mean over the
seeds; then a centred moving average over ``WINDOW`` logged steps (fewer at the ends), applied alike to KL, proxy and
gold, which the plot draws. "Final" is the last smoothed point, "peak" the highest smoothed gold.

The verdict is a test against the curve's own noise, not a share of its range. sigma, a curve's per-step noise, is the
standard deviation of its raw means around their moving average (scaled up by 1 / sqrt(1 - 1/WINDOW), what the
average's own point takes away). A change between two stretches of ``WINDOW`` raw points (the start, the points
around the gold's peak, the end) counts when it exceeds ``SIGMAS`` standard errors of such a difference,
sigma * sqrt(2 / WINDOW). A cell is over-optimised when its gold **rose** from the start to the peak, then **fell**
from the peak to the end, while its proxy **rose** from the gold's peak to the end. A gold reward that only falls
from the start, or only plateaus, is not called over-optimisation, whatever the noise (tested on simulated curves).
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
SIGMAS = 3.0  # a rise or fall counts when larger than this many standard errors of a difference of window means


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
    gold_rose: bool  # the gold around its peak is above its start, beyond noise
    gold_fell: bool  # the gold at the end is below its peak, beyond noise
    proxy_rose: bool  # the proxy at the end is above its value around the gold's peak, beyond noise

    @property
    def overoptimised(self) -> bool:
        return self.gold_rose and self.gold_fell and self.proxy_rose

    def why_not(self) -> str:
        if not self.gold_rose:
            return "the gold reward did not rise from its start: no peak to fall from"
        if not self.gold_fell:
            return "the gold reward did not fall after its peak"
        return "the proxy did not rise after the gold reward's peak"


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
        # Steps every seed logged (all three metrics): a mean over a changing set of seeds would jump where one is
        # missing.
        steps = sorted(set.intersection(*(set(child.series.get(m, {})) for child in members for m in METRICS)))
        if not steps:
            continue
        means = [[math.fsum(child.series[m][s] for child in members) / len(members) for s in steps] for m in METRICS]
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


def noise(raw: Sequence[float], window: int = WINDOW) -> float:
    """A curve's per-step noise: the standard deviation of its points around their moving average, scaled up by
    1 / sqrt(1 - 1/window) (each average holds its own point, which pulls it towards the point)."""
    if len(raw) < 2:
        return math.inf
    residuals = [r - m for r, m in zip(raw, smooth(raw, window))]
    return math.sqrt(math.fsum(r * r for r in residuals) / (len(raw) - 1) / max(1 - 1 / max(window, 2), 1e-9))


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def outcome(curve: Curve) -> Outcome:
    kl, proxy, gold = (curve.smoothed(n) for n in ("kl", "proxy", "gold"))
    peak = max(range(len(gold)), key=gold.__getitem__)  # the first highest point
    w, half = curve.window, curve.window // 2
    start, around, end = slice(0, w), slice(max(0, peak - half), peak + half + 1), slice(-w, None)
    gold_se = noise(curve.gold, w) * math.sqrt(2 / w)
    proxy_se = noise(curve.proxy, w) * math.sqrt(2 / w)
    at_peak = _mean(curve.gold[around])
    # A stretch compares with another only where they do not overlap: a peak among the first points has nothing
    # to rise from, one among the last nothing to fall to.
    after_start, before_end = peak - half >= w, peak + half < len(gold) - w
    return Outcome(final_kl=kl[-1], final_proxy=proxy[-1], final_gold=gold[-1], peak_gold=gold[peak],
                   kl_at_peak=kl[peak],
                   gold_rose=after_start and at_peak - _mean(curve.gold[start]) > SIGMAS * gold_se,
                   gold_fell=before_end and at_peak - _mean(curve.gold[end]) > SIGMAS * gold_se,
                   proxy_rose=before_end and _mean(curve.proxy[end]) - _mean(curve.proxy[around]) > SIGMAS * proxy_se)


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
            no.append(f"{curve.label()} ({found.why_not()})")
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
