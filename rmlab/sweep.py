"""Sweeps as MLflow sees them: one parent run per multirun, each job a child run.

``SweepCallback`` (registered in conf/config.yaml) connects Hydra's multirun to the parent run: before any job it opens
the parent (``rmlab.sweep_parent``: the lifecycle, claiming the sweep folder, the signals while jobs run, closing) with
the sweep's tags, params and planned job count; when every job has returned it closes the parent, which summarises
the children (``rmlab.sweep_report``). A sweep that stops early (Ctrl-C, SIGTERM, a worker that died, an error in the
sweeper) never reaches ``on_multirun_end``: the entry point closes the parent then, before interpreter shutdown.

Each job finds its parent in ``<sweep dir>/mlflow_parent_run_id``, so the link works for every launcher whose jobs see
the sweep directory (in-process, joblib, submitit). A job whose resolved config already FINISHED in the experiment is
reused instead of trained again (``reuse_finished_run``).
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rmlab.sweep_options import SweepOptions
from rmlab.sweep_parent import PARENT_RUN_FILE, ParentRun, parent_run_id
from rmlab.sweep_report import SweepReport

log = logging.getLogger("rmlab")

__all__ = ["PARENT_RUN_FILE", "SweepCallback", "parent_run_id", "planned_jobs", "reuse_finished_run"]


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

    Runs in the launching process only. Its state (the parent run) stays there: Hydra pickles the callbacks to remote
    jobs (joblib, submitit), which need nothing from it but the parent id file.
    """

    def __init__(self, **options: Any) -> None:
        from rmlab.errors import Abort, ConfigError
        from rmlab.sweep_options import sweep_options

        self.parent: ParentRun | None = None
        try:
            # The preset's summary options (rmlab.sweep_options), checked when Hydra builds the callback: before the
            # sweep folder or any run exists.
            self.options = sweep_options(**options)
        except ConfigError as err:
            raise Abort(err) from err  # Hydra's instantiate would wrap an Exception in its own, many-line one

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from rmlab import collector, compose_once

        in_process = compose_once.install(config)  # each job's config composed once, not twice (checked, launched)
        from rmlab.errors import Abort, ConfigError

        try:
            _check_sources(config)
        except ConfigError as err:
            raise Abort(err) from err
        # Untracked jobs (see rmlab.run.train) get no parent: it would stay empty, and so no summary.
        tracked = config.logger.name == "mlflow" and not config.trainer.get("fast_dev_run")
        if not tracked and (self.options.metrics or self.options.plot):
            log.warning("rmlab: the sweep's jobs are untracked (logger=none or trainer.fast_dev_run): no summary, so "
                        "hydra.callbacks.rmlab_sweep.metrics and .plot are not used")
        if tracked:
            try:
                self.parent = _open_parent(config, self.options)
            except Exception as err:
                # Hydra turns an exception here into a warning and runs the sweep without its parent: stop instead.
                raise Abort(err) from err
        if in_process:  # the jobs run (basic) or are composed and awaited (rmlab_ray) in this process
            collector.freeze_for_sweep()  # its full collector passes then skip the libraries' objects

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from rmlab import collector

        if self.parent is not None:
            self.parent.close()
            self.parent = None
        collector.release()


def _check_sources(config: DictConfig) -> None:
    """The earlier runs every job of the sweep starts from (``init_from``, ``reward.init_from`` given once, not
    swept: a swept one is each job's to check), checked once before any job: a wrong id or path stops the sweep with one line instead
    of failing each of its jobs. Each job still reads (and fully checks) them itself."""
    from rmlab.errors import ConfigError
    from rmlab.init_from import check_source

    swept = _swept_keys(config)
    sources = [("", config, config.logger.get("tracking_uri"))]
    reward = config.get("reward")
    if isinstance(reward, DictConfig) and "init_from" in reward.keys():  # `in reward` is False for a missing value
        if OmegaConf.is_missing(reward, "init_from") and "reward.init_from" not in swept:
            raise ConfigError(f"reward.init_from is required by reward={reward.get('name')}: give the run id (or "
                              "checkpoint path) of the model it uses")
        sources.append(("reward.", reward, reward.get("tracking_uri")))
    for prefix, node, uri in sources:
        if {f"{prefix}init_from", f"{prefix}tracking_uri" if prefix else "logger.tracking_uri"} & swept:
            continue  # each job has its own: it checks it itself
        value = node.get("init_from")
        if isinstance(value, str) and value.strip():
            try:
                check_source(value, uri)
            except ConfigError as err:
                raise ConfigError(f"{prefix}{err}") from None


def _swept_keys(config: DictConfig) -> set[str]:
    """The keys the sweep gives several values: on the command line (``key=a,b``) or in a preset's sweeper params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    swept = {o.key_or_group.lstrip("+~") for o in parsed if o.is_sweep_override()}
    params = config.hydra.sweeper.get("params") or {}
    return swept | {str(key).lstrip("+~") for key in params}


def _open_parent(config: DictConfig, options: SweepOptions) -> ParentRun:
    """Open the parent run of the multirun ``config`` describes: its tags, params, report (with the preset's
    ``options``) and planned job count."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    import rmlab
    from rmlab.provenance import git_tags
    from rmlab.store import resolve_tracking_uri

    uri = resolve_tracking_uri(config.logger.tracking_uri)
    experiment = str(config.experiment)
    sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
    choices = config.hydra.runtime.choices
    sweeper, launcher = choices.get("hydra/sweeper"), choices.get("hydra/launcher")
    optuna = None
    if sweeper == "rmlab_optuna":
        optuna = {"objective": str(config.hydra.sweeper.objective),
                  "maximize": config.hydra.sweeper.direction == "maximize"}
    overrides = list(config.hydra.overrides.task)
    # Keys the sweep sets to one value: never a column of the summary, even in an Optuna sweep where every other key
    # of a trial's overrides was searched.
    fixed = [o.get_key_element() for o in OverridesParser.create().parse_overrides(overrides)
             if not o.is_sweep_override()]
    # The default sweep dir ends in <date>/<time>: a bare time would not tell two days' sweeps apart.
    name = sweep_dir.name
    if name.replace("-", "").isdigit():
        name = f"{sweep_dir.parent.name}_{name}"
    run_name = f"sweep-{experiment}-{name}"
    tags = {"rmlab.sweep_dir": str(sweep_dir), "rmlab.role": "parent",
            "command": shlex.join(["python", "-m", "rmlab", "-m", *overrides]),
            "rmlab.overrides": " ".join(overrides), "rmlab.sweeper": str(sweeper), "rmlab.launcher": str(launcher),
            "rmlab_version": rmlab.__version__, **git_tags(), "mlflow.source.name": "rmlab"}
    params: dict[str, Any] = {"sweep.sweeper": sweeper, "sweep.launcher": launcher,
                              "sweep.overrides": " ".join(overrides)}
    # What a preset sweeps is not in the overrides (only `sweep=NAME` is): record the search space too.
    sweeper_cfg = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
    params.update({f"sweep.params.{k}": v for k, v in (sweeper_cfg.pop("params", None) or {}).items()})
    params.update({f"sweep.{k}": v for k, v in sweeper_cfg.items() if k in (
        "n_trials", "n_jobs", "direction", "objective", "study_name", "storage")})
    if options.metrics:
        params["sweep.metrics"] = ",".join(options.metrics)
    if options.plot:
        params["sweep.plot"] = options.plot
    params.update({f"sweep.launcher.{k}": v for k, v in (config.hydra.launcher or {}).items()
                   if k in ("n_jobs", "partition", "gpus_per_node", "timeout_min", "cpus_per_task")})
    parent = ParentRun(uri, experiment, sweep_dir, run_name,
                       SweepReport(sweep_dir, run_name, optuna=optuna, fixed=fixed, options=options),
                       planned_jobs=_planned_or_none(config) if sweeper == "basic" else None)
    parent.open(tags, params)
    return parent


def planned_jobs(config: DictConfig) -> int:
    """How many jobs Hydra's basic sweeper runs for ``config``: the product of the sweeps' lengths over
    ``hydra.sweeper.params`` and the command line (a later override of a key replaces an earlier one)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    lengths: dict[str, int] = {}
    for override in OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task)):
        key = override.get_key_element()
        lengths[key] = len(list(override.sweep_string_iterator())) if override.is_sweep_override() else 1
    total = 1
    for length in lengths.values():
        total *= length
    return total


def _planned_or_none(config: DictConfig) -> int | None:
    try:
        return planned_jobs(config)
    except Exception:  # a sweep the basic sweeper itself rejects (an interval): it fails before any job
        return None
