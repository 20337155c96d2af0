"""Sweeps as MLflow sees them: one parent run per multirun, each job a child run.

The launching process opens the parent run (``SweepCallback.on_multirun_start``) before any job starts, after creating
the store and the experiment once (a fresh sqlite store opened by parallel jobs fails: docs/design.md), and writes its
id to ``<sweep dir>/mlflow_parent_run_id``; each job reads that file, so the link works for every launcher whose jobs
see the sweep directory (in-process, joblib, submitit).

When every job has returned (``on_multirun_end``) the callback reads the parent's children back, writes the summary
(``rmlab.summary``: one row per cell of seeds) into the sweep directory and onto the parent, and closes the parent
FINISHED with a ``failures`` tag. A sweep that stops early (Ctrl-C, SIGTERM, an error in the sweeper) never reaches
that hook, so an exit hook closes the parent instead, KILLED (interrupted) or FAILED, with the summary of what ran;
a sweep that stopped before any job ran (Hydra could not compose a job: a typo) leaves no parent behind.
"""

from __future__ import annotations

import atexit
import logging
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("rmlab")

PARENT_RUN_FILE = "mlflow_parent_run_id"


def parent_run_id(sweep_dir: str | Path) -> str | None:
    """The parent run of the sweep writing to ``sweep_dir``, if its callback opened one."""
    path = Path(sweep_dir) / PARENT_RUN_FILE
    return path.read_text().strip() if path.is_file() else None


# Tags of a run that describe its result (which weights were tested), carried over with its metrics when reused.
RESULT_TAGS = ("rmlab.selection",)


def reuse_finished_run(tracker, cfg, run_name: str, tags: dict[str, str], parent_run_id: str) -> dict | None:
    """If a run with this job's reuse key (``rmlab.provenance``: config, rmlab's code, the data file, library
    versions) already FINISHED in the experiment (an interrupted sweep re-run), record a child of the new sweep that
    points at it (tag ``rmlab.reused_from``) and carries its params, result tags and the full history of every metric
    (each step, as the original logged it), and return its final metrics; else None. The job is then not trained
    again. A job without a reuse key is always trained."""
    from mlflow.entities import Metric, Param

    key = tags.get("rmlab.reuse_key")
    if not key:
        return None
    tracker.experiment_id = tracker.experiment_id or _experiment_id(tracker)
    if tracker.experiment_id is None:
        return None
    client = tracker.client
    found = client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`rmlab.reuse_key` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        return None
    original = found[0]
    history = [Metric(m.key, m.value, m.timestamp, m.step) for name in sorted(original.data.metrics)
               for m in client.get_metric_history(original.info.run_id, name)]
    carried = {k: v for k, v in original.data.tags.items() if k in RESULT_TAGS}
    tracker.start(run_name, {**tags, **carried, "rmlab.reused_from": original.info.run_id},
                  parent_run_id=parent_run_id)
    try:
        client.log_batch(tracker.run_id, params=[Param(k, v) for k, v in original.data.params.items()],
                         metrics=history, synchronous=True)
    except BaseException as err:
        tracker.finish("FAILED", error=f"copying the reused run failed: {type(err).__name__}: {err}")
        raise
    tracker.finish("FINISHED")
    return {**dict(original.data.metrics), "run_id": tracker.run_id, "reused_from": original.info.run_id}


def _experiment_id(tracker) -> str | None:
    found = tracker.client.get_experiment_by_name(tracker.experiment)
    return found.experiment_id if found else None


def _job_record(run, status: str):
    """What the summary needs from a child run: its overrides (tag ``rmlab.overrides``), status, metrics, reward."""
    from rmlab.summary import JobRecord, parse_overrides

    tags = run.data.tags
    trial = run.data.params.get("optuna.trial_number", tags.get("rmlab.job_num", -1))  # Optuna's number, if any
    return JobRecord(parse_overrides(tags.get("rmlab.overrides", "")), status, dict(run.data.metrics),
                     reward=tags.get("reward", ""), trial=int(float(trial)))


class SweepCallback(Callback):
    """Hydra callback (registered in conf/config.yaml): one MLflow parent run per multirun, closed with a summary.

    Runs in the launching process only. Its state (the parent run, signal handlers) stays there: Hydra pickles the
    callbacks to remote jobs (joblib, submitit), which need nothing from it but the parent id file.
    """

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.uri: str | None = None
        self.experiment: str | None = None
        self.sweep_dir: Path | None = None
        self.run_name: str | None = None
        self.optuna: dict[str, Any] | None = None  # objective and direction of an rmlab_optuna sweep
        self.fixed: list[str] = []
        self._signal: str | None = None  # the signal that stopped the sweep, if one did
        self._previous: dict[int, Any] = {}

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from rmlab import compose_once

        compose_once.install(config)  # each job's config composed once, not twice (checked, then launched)
        if config.logger.name != "mlflow" or config.trainer.get("fast_dev_run"):
            return  # jobs are untracked (see rmlab.run.train): a parent would stay empty
        from rmlab.provenance import git_commit
        from rmlab.tracking import Tracker, resolve_tracking_uri

        import rmlab

        self.uri = resolve_tracking_uri(config.logger.tracking_uri)
        self.experiment = str(config.experiment)
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        choices = config.hydra.runtime.choices
        sweeper, launcher = choices.get("hydra/sweeper"), choices.get("hydra/launcher")
        if sweeper == "rmlab_optuna":
            self.optuna = {"objective": str(config.hydra.sweeper.objective),
                           "maximize": config.hydra.sweeper.direction == "maximize"}
        overrides = list(config.hydra.overrides.task)
        # Keys the sweep sets to one value: never a column of the summary, even in an Optuna sweep where every
        # other key of a trial's overrides was searched.
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.fixed = [o.get_key_element() for o in OverridesParser.create().parse_overrides(overrides)
                      if not o.is_sweep_override()]
        # Creating the store and the experiment here, before any job starts, is what keeps parallel jobs from racing
        # to create a fresh sqlite schema (docs/design.md).
        tracker = Tracker(self.uri, self.experiment)
        # Hydra's default sweep dir ends in <date>/<time>: a bare time would not tell two days' sweeps apart.
        name = self.sweep_dir.name
        if name.replace("-", "").isdigit():
            name = f"{self.sweep_dir.parent.name}_{name}"
        self.run_name = f"sweep-{self.experiment}-{name}"
        self.run_id = tracker.start(self.run_name, {
            "sweep_id": str(self.sweep_dir), "rmlab.role": "parent",
            "command": shlex.join(["python", "-m", "rmlab", "-m", *overrides]),
            "rmlab.overrides": " ".join(overrides), "rmlab.sweeper": str(sweeper), "rmlab.launcher": str(launcher),
            "rmlab_version": rmlab.__version__, "mlflow.source.git.commit": git_commit(),
            "mlflow.source.name": "rmlab"})
        try:
            params = {"sweep.sweeper": sweeper, "sweep.launcher": launcher, "sweep.overrides": " ".join(overrides)}
            # What a preset sweeps is not in the overrides (only `sweep=NAME` is): record the search space too.
            sweeper_cfg = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
            params.update({f"sweep.params.{k}": v for k, v in (sweeper_cfg.pop("params", None) or {}).items()})
            params.update({f"sweep.{k}": v for k, v in sweeper_cfg.items() if k in (
                "n_trials", "n_jobs", "direction", "objective", "study_name", "storage")})
            params.update({f"sweep.launcher.{k}": v for k, v in (config.hydra.launcher or {}).items()
                           if k in ("n_jobs", "partition", "gpus_per_node", "timeout_min", "cpus_per_task")})
            tracker.log_params({k: "" if v is None else v for k, v in params.items()})
            self.sweep_dir.mkdir(parents=True, exist_ok=True)
            (self.sweep_dir / PARENT_RUN_FILE).write_text(self.run_id + "\n")
        except BaseException as err:
            tracker.finish("FAILED", error=f"{type(err).__name__}: {err}")
            self.run_id = None
            raise
        atexit.register(self._stopped_early)
        self._watch_signals()
        from rmlab.credentials import redact

        log.info(f"Sweep parent run {self.run_id} in {redact(self.uri)} (experiment {self.experiment!r})")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.run_id is None:
            return
        self._close("FINISHED", fail_running=True)
        # Only now: an interrupt while closing still leaves the exit hook to close the parent.
        atexit.unregister(self._stopped_early)
        self._restore_signals()

    # -- ending ----------------------------------------------------------------------------------------------------

    def _close(self, status: str, fail_running: bool = False, error: str | None = None) -> None:
        """Summarise the children onto the parent and close it with ``status``."""
        from rmlab.tracking import Tracker

        run_id = self.run_id
        tracker = Tracker(self.uri, self.experiment)
        tracker.run_id = run_id
        try:
            children = self._children(tracker.client, run_id)
            status_of = {run.info.run_id: run.info.status for run in children}
            if fail_running:
                # Every job has returned, so a child still RUNNING lost its process (killed worker, node failure).
                for child, child_status in status_of.items():
                    if child_status == "RUNNING":
                        tracker.client.set_tag(child, "error", "the job ended without closing its run")
                        tracker.client.set_terminated(child, "FAILED")
                        status_of[child] = "FAILED"
            failures = self._summarise(tracker, children, status_of)
            tracker.set_tags({"failures": str(failures), **({"error": error} if error else {})})
        except Exception as err:  # the parent must still be closed
            log.error(f"Sweep summary failed: {type(err).__name__}: {err}")
            tracker.set_tags({"error": f"summary failed: {type(err).__name__}: {err}"})
        tracker.client.set_terminated(run_id, status)
        self.run_id = None

    def _stopped_early(self) -> None:
        """Exit hook: the sweep ended without ``on_multirun_end`` (Ctrl-C, SIGTERM, an error in the sweeper)."""
        if self.run_id is None:
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        if not self._signal and not self._children(client, self.run_id):
            # No job ran: a composition error (a typo in a key or an option) that Hydra reported. Like a bad command
            # line for a single run, it leaves no run behind.
            client.delete_run(self.run_id)
            (self.sweep_dir / PARENT_RUN_FILE).unlink(missing_ok=True)
            self.run_id = None
            return
        reason = f"interrupted ({self._signal})" if self._signal else "stopped before its end (see the error above)"
        print(f"rmlab: sweep {reason}: closing parent run {self.run_id}", flush=True)
        self._close("KILLED" if self._signal else "FAILED", error=reason)

    def _watch_signals(self) -> None:
        """Remember a Ctrl-C or SIGTERM (so the parent ends KILLED, not FAILED); SIGTERM, which would end the process
        without running exit hooks, becomes SystemExit. Only default handlers are replaced."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            if signal.getsignal(signum) is default:
                self._previous[signum] = default
                signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal = signal.Signals(signum).name
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def _restore_signals(self) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous)
        self._previous = {}

    # -- summary ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _children(client, run_id: str) -> list:
        """Every child of the parent, in every experiment (a sweep may vary ``experiment``), oldest job first."""
        ids = [e.experiment_id for e in client.search_experiments()]
        runs, token = [], None
        while True:
            page = client.search_runs(ids, filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
                                      max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                break
        return sorted(runs, key=lambda r: (int(r.data.tags.get("rmlab.job_num", 0)), r.info.start_time))

    def _summarise(self, tracker, children: list, status_of: dict[str, str]) -> int:
        """Write summary.{csv,md,png} to the sweep dir and the parent, log the best cell; return the failure count."""
        from rmlab import summary

        trials = self.optuna is not None
        objective = self.optuna["objective"] if trials else summary.SELECTION_METRIC
        maximize = self.optuna["maximize"] if trials else True
        metrics = list(summary.METRICS) + ([objective] if objective not in summary.METRICS else [])
        records = [_job_record(run, status_of[run.info.run_id]) for run in children]
        searched = [k for r in records for k in r.overrides if k not in self.fixed] if trials else []
        keys, cells = summary.build_cells(records, metrics, trials=trials, searched=searched)
        if trials:
            cells = summary.sort_trials(cells, objective, maximize)
        failures = sum(c.failed for c in cells)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        table = summary.markdown(keys, cells, metrics)
        best = summary.best_cell(cells, objective, maximize)
        lines = [f"# {self.run_name}", "", f"{self.sweep_dir}: {len(children)} jobs, {failures} failed.",
                 "", table, ""]
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
                  f"{status_of[r.info.run_id]}, {r.data.tags.get('error', 'no error recorded')}"
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
        text = "\n".join(lines) + "\n"
        files = {name: self.sweep_dir / name for name in ("summary.csv", "summary.md", "summary.png")}
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
