"""The over-optimisation report of a sweep (``plot: overoptimisation``): the curves, table and verdict on plain data
against an independent pandas computation, and one tiny real sweep of policies trained by GRPO against a reward
model, whose parent run gets the plot and the CSV of the children's own metric histories."""

from __future__ import annotations

import csv
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from rmlab import overoptimisation as oo
from rmlab.overoptimisation import ChildSeries
from tests.conftest import PYTHON, cli_env
from tests.lm_fixtures import reward_model_checkpoint

STEPS = range(20)


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def child(beta: str, seed: int, kl, proxy, gold, skip: tuple[int, ...] = ()) -> ChildSeries:
    series = {name: {s: float(f(s, seed)) for s in STEPS if s not in skip}
              for name, f in zip(oo.METRICS, (kl, proxy, gold))}
    return ChildSeries({"feedback.beta": beta}, series)


# beta=0: the proxy keeps rising while the gold peaks at step 10 and falls (over-optimised); beta=0.05: the gold
# peaks and falls but the proxy falls too; beta=0.5: the gold only rises. Seed 1 lacks steps 3 and 4 of beta=0.
CHILDREN = [
    child("0.5", 0, lambda s, k: 0.01 * s, lambda s, k: 0.02 * s + k, lambda s, k: 0.01 * s),
    child("0", 0, lambda s, k: 0.3 * s, lambda s, k: 0.05 * s, lambda s, k: -((s - 10) ** 2) / 50),
    child("0", 1, lambda s, k: 0.3 * s + 0.1, lambda s, k: 0.05 * s + 0.1, lambda s, k: -((s - 10) ** 2) / 50 + 0.2,
          skip=(3, 4)),
    child("0.05", 0, lambda s, k: 0.1 * s, lambda s, k: -0.01 * (s - 10) ** 2, lambda s, k: -((s - 10) ** 2) / 50),
    child("0.5", 1, lambda s, k: 0.01 * s, lambda s, k: 0.02 * s + k, lambda s, k: 0.01 * s),
]


def reference(children: list[ChildSeries]) -> dict[str, pd.DataFrame]:
    """Per beta: seed mean per step over the steps every seed logged, then a centred rolling mean of 5 (min 1
    point), computed by pandas."""
    rows = [{"beta": c.values["feedback.beta"], "step": s, **{m: c.series[m][s] for m in oo.METRICS}}
            for c in children for s in c.series[oo.KL]]
    frame = pd.DataFrame(rows)
    seeds = frame.groupby("beta")["step"].transform(lambda steps: steps.value_counts().max())
    logged = frame.groupby(["beta", "step"])["step"].transform("count")
    frame = frame[logged == seeds].groupby(["beta", "step"]).mean().reset_index()
    out = {}
    for beta, group in frame.groupby("beta"):
        group = group.sort_values("step").reset_index(drop=True)
        for m in oo.METRICS:
            group[m + "_s"] = group[m].rolling(5, center=True, min_periods=1).mean()
        out[beta] = group
    return out


def test_curves_table_and_verdict_match_an_independent_computation(tmp_path):
    curves = oo.build_curves(CHILDREN)
    assert [c.label() for c in curves] == ["feedback.beta=0", "feedback.beta=0.05", "feedback.beta=0.5"]  # by value
    assert [c.seeds for c in curves] == [2, 1, 2]
    ref = reference(CHILDREN)
    for curve in curves:
        expected = ref[curve.values["feedback.beta"]]
        assert curve.steps == expected["step"].tolist()
        for name, metric in (("kl", oo.KL), ("proxy", oo.PROXY), ("gold", oo.GOLD)):
            np.testing.assert_allclose(getattr(curve, name), expected[metric], rtol=1e-12)
            np.testing.assert_allclose(curve.smoothed(name), expected[metric + "_s"], rtol=1e-12)
    assert 3 not in curves[0].steps and 4 not in curves[0].steps  # only seed 0 logged them: left out

    outcomes = [oo.outcome(c) for c in curves]
    assert [o.overoptimised for o in outcomes] == [True, False, False]
    assert [(o.gold_rose, o.gold_fell, o.proxy_rose) for o in outcomes] == [
        (True, True, True), (True, True, False), (True, False, False)]
    zero = ref["0"]
    peak = zero[oo.GOLD + "_s"].idxmax()
    assert outcomes[0].peak_gold == pytest.approx(zero[oo.GOLD + "_s"][peak])
    assert outcomes[0].kl_at_peak == pytest.approx(zero[oo.KL + "_s"][peak])
    assert outcomes[0].final_proxy == pytest.approx(zero[oo.PROXY + "_s"].iloc[-1])
    assert outcomes[0].final_kl == pytest.approx(zero[oo.KL + "_s"].iloc[-1])
    assert oo.verdict(curves) == (
        "Over-optimisation: the proxy reward kept rising while the gold reward peaked and fell for feedback.beta=0, "
        "not for feedback.beta=0.05 (the proxy did not rise after the gold reward's peak); feedback.beta=0.5 (the "
        "gold reward did not fall after its peak).")
    lines = oo.table(curves).splitlines()
    assert lines[0] == ("| feedback.beta | seeds | steps | final KL | final proxy | final gold | peak gold | "
                        "KL at peak gold | over-optimised |")
    assert lines[2] == (f"| 0 | 2 | 18 | {outcomes[0].final_kl:.3f} | {outcomes[0].final_proxy:.3f} | "
                        f"{outcomes[0].final_gold:.3f} | {outcomes[0].peak_gold:.3f} | {outcomes[0].kl_at_peak:.3f} "
                        "| yes |")

    oo.write_csv(curves, tmp_path / "o.csv")
    rows = read_csv(tmp_path / "o.csv")
    assert len(rows) == 58 and rows[0]["feedback.beta"] == "0" and rows[0]["seeds"] == "2"
    assert [float(r["sqrt_kl_smoothed"]) for r in rows[:18]] == pytest.approx(np.sqrt(zero[oo.KL + "_s"]))

    fig = oo.figure(curves, "title")
    gold_ax, proxy_ax = fig.axes
    smoothed = [line for line in gold_ax.get_lines() if line.get_linestyle() == "-"]
    assert [line.get_label() for line in smoothed] == [f"{c.label()} (n={c.seeds})" for c in curves]
    np.testing.assert_allclose(smoothed[0].get_xdata(), np.sqrt(zero[oo.KL + "_s"]))
    np.testing.assert_allclose(smoothed[0].get_ydata(), zero[oo.GOLD + "_s"])
    proxy_lines = [line for line in proxy_ax.get_lines() if line.get_linestyle() == "-"]
    np.testing.assert_allclose(proxy_lines[0].get_ydata(), zero[oo.PROXY + "_s"])
    assert "sqrt(KL" in gold_ax.get_xlabel() and oo.GOLD in gold_ax.get_ylabel()


def noisy_cell(shape, sd: float, seed: int, steps: int = 120, seeds: int = 3) -> oo.Curve:
    """A cell of ``seeds`` runs whose KL and proxy rise steadily and whose gold follows ``shape`` (of x in [0, 1)),
    each point with Gaussian noise of ``sd``."""
    rng = np.random.default_rng(seed)
    x = np.arange(steps) / steps
    children = []
    for _ in range(seeds):
        curves = (5 * x, x, shape(x))
        series = {m: dict(enumerate((c + rng.normal(0, sd, steps)).tolist())) for m, c in zip(oo.METRICS, curves)}
        children.append(ChildSeries({"b": "0"}, series))
    return oo.build_curves(children)[0]


@pytest.mark.parametrize("shape", [lambda x: 1 - np.exp(-5 * x), lambda x: 0 * x, lambda x: -x],
                         ids=["plateau", "flat", "falling"])
def test_noise_alone_is_not_called_over_optimisation(shape):
    """A gold reward that rises to a plateau, stays flat or only falls, under noise, while the proxy rises: the
    verdict says no (the highest point of a noisy curve is no peak to fall from)."""
    calls = [oo.outcome(noisy_cell(shape, sd, seed)).overoptimised for sd in (0.1, 0.3, 0.6) for seed in range(30)]
    assert sum(calls) <= 1, f"{sum(calls)} of {len(calls)} noisy cells called over-optimised"


def test_a_noisy_peak_is_found():
    found = [oo.outcome(noisy_cell(lambda x: 4 * x * (1 - x), 0.1, seed)) for seed in range(20)]
    assert all(o.overoptimised for o in found)
    assert all(0.35 < o.kl_at_peak / 5 < 0.65 for o in found)  # the peak of 4x(1-x) is at x = 0.5, KL = 2.5
    drop = oo.outcome(noisy_cell(lambda x: -x, 0.1, 0))
    assert drop.why_not() == "the gold reward did not rise from its start: no peak to fall from"


def test_negative_kl_counts_as_zero_and_no_data_says_so():
    curves = oo.build_curves([child("0", 0, lambda s, k: -0.01, lambda s, k: s, lambda s, k: s)])
    x = oo.figure(curves).axes[0].get_lines()[1].get_xdata()
    assert list(x) == [0.0] * 20
    assert oo.build_curves([ChildSeries({"b": "0"}, {oo.KL: {0: 1.0}, oo.PROXY: {1: 1.0}, oo.GOLD: {0: 1.0}})]) == []
    assert oo.verdict([]).startswith("No over-optimisation verdict: no finished job logged train/kl_sequence")
    assert oo.smooth([1.0, 2.0, 3.0, 4.0], 3) == [1.5, 2.0, 3.0, 3.5]
    assert not math.isnan(oo.smooth([5.0], 5)[0])


POLICY = ["task=review_writing", "task.n_examples=60", "task.batch_size=8", "task.max_clauses=1", "model=causal_lm",
          "model.width=32", "model.depth=1", "model.max_length=96", "generation.max_new_tokens=16", "feedback=grpo",
          "feedback.num_samples=4", "feedback.max_new_tokens=16", "trainer.max_epochs=1", "trainer.num_threads=1",
          "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "reward=reward_model"]


@pytest.mark.slow
def test_tiny_sweep_against_a_reward_model_gets_the_plot_on_its_parent(tmp_path):
    """2 betas x 2 seeds of GRPO against a small random reward model (a proxy unlike the gold reward): about 30 s."""
    checkpoint = reward_model_checkpoint(tmp_path / "rm.ckpt", max_length=64, prompt=False)
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run([PYTHON, "-m", "rmlab", "-m", *POLICY, f"reward.init_from={checkpoint}",
                           "feedback.beta=0,0.5", "seed=0,1", f"hydra.sweep.dir={sweep_dir}",
                           "hydra.callbacks.rmlab_sweep.plot=overoptimisation",
                           "hydra.callbacks.rmlab_sweep.metrics=[test/gold_reward,train/kl]"],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(r for r in runs if r.data.tags.get("rmlab.role") == "parent")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert parent.data.params["sweep.plot"] == "overoptimisation"
    assert parent.data.params["sweep.metrics"] == "test/gold_reward,train/kl"
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"overoptimisation.png", "overoptimisation.csv", "summary.md", "summary.csv"} <= names
    local = Path(client.download_artifacts(parent.info.run_id, "overoptimisation.png", str(tmp_path)))
    assert local.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # The CSV's points are the children's own per-step histories, averaged over the seeds per step.
    histories = [ChildSeries({"feedback.beta": c.data.params["feedback.beta"]},
                             {m: {p.step: p.value for p in client.get_metric_history(c.info.run_id, m)}
                              for m in oo.METRICS}) for c in children]
    ref = reference(histories)
    rows = read_csv(client.download_artifacts(parent.info.run_id, "overoptimisation.csv", str(tmp_path)))
    for beta, expected in ref.items():
        mine = [r for r in rows if r["feedback.beta"] == beta]
        assert [int(r["step"]) for r in mine] == expected["step"].tolist() and len(mine) >= 5
        for column, metric in (("kl", oo.KL), ("proxy", oo.PROXY), ("gold", oo.GOLD)):
            np.testing.assert_allclose([float(r[column]) for r in mine], expected[metric], rtol=1e-9)
        np.testing.assert_allclose([float(r["gold_smoothed"]) for r in mine], expected[oo.GOLD + "_s"], rtol=1e-9)
    # The proxy is the reward model, not the gold reward.
    assert any(abs(float(r["proxy"]) - float(r["gold"])) > 1e-3 for r in rows)

    text = (sweep_dir / "summary.md").read_text()
    assert "## Over-optimisation" in text and "| feedback.beta | seeds | steps | final KL |" in text
    assert "\nOver-optimisation: " in text
    summary_rows = {r["feedback.beta"]: r for r in read_csv(sweep_dir / "summary.csv")}
    for beta, row in summary_rows.items():
        mine = [c for c in children if c.data.params["feedback.beta"] == beta]
        for metric in ("train/kl", "test/gold_reward"):
            values = [c.data.metrics[metric] for c in mine]
            assert float(row[f"{metric}_mean"]) == pytest.approx(np.mean(values), abs=1e-9)
            assert float(row[f"{metric}_std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-9)
