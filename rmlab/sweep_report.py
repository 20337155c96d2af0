"""What a sweep reports when it closes: the summary table (csv, markdown), the plot, the best cell, the uploads.

``SweepReport`` is called by the parent run's lifecycle (``rmlab.sweep_parent``) with the children as they ended;
it writes ``summary.{csv,md,png}`` into the sweep directory, uploads them (and ``multirun.yaml``,
``optimization_results.yaml``) to the parent, logs ``best/*`` and the best-cell tags, prints the table, and returns
the number of failed jobs. ``rmlab.summary`` does the maths and the formatting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rmlab.sweep_options import SweepOptions

log = logging.getLogger("rmlab")


@dataclass
class SweepReport:
    sweep_dir: Path
    run_name: str
    optuna: dict[str, Any] | None = None  # objective and direction of an rmlab_optuna sweep
    fixed: list[str] = field(default_factory=list)  # keys the sweep sets to one value: never a summary column
    options: SweepOptions = field(default_factory=SweepOptions)  # the preset's extra columns and figure

    def __call__(self, tracker: Any, children: list, status_of: dict[str, str], notes: list[str]) -> int:
        """Write summary.{csv,md,png} to the sweep dir and the parent, log the best cell; return the failure count.
        ``notes`` (jobs that never started, runs left to other hosts) are added to the markdown and printed."""
        from rmlab import summary
        from rmlab.sweep import _job_record

        trials = self.optuna is not None
        objective = self.optuna["objective"] if trials else summary.SELECTION_METRIC
        maximize = self.optuna["maximize"] if trials else True
        metrics = list(dict.fromkeys([*summary.METRICS, objective, *self.options.metrics]))
        records = [_job_record(run, status_of[run.info.run_id]) for run in children]
        notes = notes + summary.missing_metrics(records, self.options.metrics)
        searched = [k for r in records for k in r.overrides if k not in self.fixed] if trials else []
        keys, cells = summary.build_cells(records, metrics, trials=trials, searched=searched)
        if trials:
            cells = summary.sort_trials(cells, objective, maximize)
        failures = sum(c.failed for c in cells)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        table = summary.markdown(keys, cells, metrics)
        best = summary.best_cell(cells, objective, maximize)
        lines = [f"# {self.run_name}", "", f"{self.sweep_dir}: {len(children)} jobs, {failures} failed.",
                 *notes, "", table, ""]
        tags: dict[str, str] = {}
        if best is not None:
            best_test = best.mean("test/reward")
            tags = {"best_cell": f"trial={best.trial} {best.label()}" if trials else best.label(),
                    "best_val_reward": f"{best.mean(objective):.6g}",
                    "best_test_reward": "" if best_test is None else f"{best_test:.6g}"}
            lines.append(f"Best ({'highest' if maximize else 'lowest'} mean {objective}): {tags['best_cell']}, "
                         f"{objective} {best.mean(objective):.3f}, test/reward "
                         + ("n/a" if best_test is None else f"{best_test:.3f}"))
            tracker.log_metrics({"best/val_reward": best.mean(objective),
                                 **({"best/test_reward": best_test} if best_test is not None else {})}, step=0)
        errors = [f"- job {r.data.tags.get('rmlab.job_num', '?')} ({r.data.tags.get('rmlab.overrides', '')}): "
                  f"{status_of[r.info.run_id]}, {r.data.tags.get('error') or _error_of(tracker, r)}"
                  for r in children if status_of[r.info.run_id] != "FINISHED"]
        if errors:
            lines += ["", "Failed jobs:", *errors]
        results = self.sweep_dir / "optimization_results.yaml"
        if trials and results.is_file():
            # This sweep's trials are a part of the study when it resumed one: give the study's best as well.
            study = OmegaConf.load(results)
            tags.update({"study_best_trial": str(study.best_trial), "study_best_value": str(study.best_value)})
            lines.append(f"Study {study.study_name!r} best: trial {study.best_trial}, {objective} "
                         f"{study.best_value}")
        files = {name: self.sweep_dir / name for name in ("summary.csv", "summary.md", "summary.png")}
        if self.options.plot == "overoptimisation":
            from rmlab.overoptimisation import report

            try:
                found, section = report(tracker.client, children, status_of, keys, self.sweep_dir, self.run_name)
            except Exception as err:  # the normal summary still goes up
                log.error(f"Over-optimisation report failed: {type(err).__name__}: {err}")
                found, section = {}, [f"No over-optimisation report: {type(err).__name__}: {err}"]
            files.update(found)
            lines += ["", *section]
        text = "\n".join(lines) + "\n"
        summary.write_csv(keys, cells, files["summary.csv"], metrics)
        files["summary.md"].write_text(text)
        try:
            summary.plot(keys, cells, files["summary.png"], metric=objective if trials else "test/reward",
                         title=self.run_name, maximize=maximize)
        except ImportError as err:  # matplotlib comes with mlflow; without it there is no plot, only the tables
            log.warning(f"No summary plot: {err}")
            files.pop("summary.png")
        for path in files.values():
            tracker.log_artifact(path)
        for extra in ("multirun.yaml", "optimization_results.yaml"):
            if (self.sweep_dir / extra).is_file():
                tracker.log_artifact(self.sweep_dir / extra)
        tracker.set_tags(tags)
        tracker.flush()
        print("rmlab sweep summary:\n" + text, flush=True)
        return failures


def _error_of(tracker: Any, run: Any) -> str:
    """The error a child recorded after the children were listed (a run closed while the sweep was closing)."""
    try:
        return tracker.get(run.info.run_id).data.tags.get("error", "no error recorded")
    except Exception:
        return "no error recorded"
