"""The ``rmlab_optuna`` Hydra sweeper: an Optuna 5 study driven by ask/tell, one Hydra job per trial.

What it owns:
- the search space: ``hydra.sweeper.params`` plus sweeps on the command line, in Hydra's sweep syntax; plain
  overrides on the command line (``loss=gce``) pass through to every trial;
- the study: created or resumed (``load_if_exists``) in a persistent storage, by default ``optuna.db`` beside the
  MLflow sqlite store. ``n_trials`` is the study's total: a rerun runs only the missing trials, after marking the
  trials an interrupted sweep left RUNNING as FAIL;
- the outcome of each job: its return value (a float, or a dict read at ``objective``) is told to the study; a job
  that raises, returns None or NaN is a FAIL and the sweep goes on; a job that raises ``optuna.TrialPruned`` is PRUNED;
- pruning inside the jobs: each job gets ``++optuna.{study_name,storage,trial_number,objective,pruner}``, and
  ``report_and_should_prune`` (called per epoch from the job) reopens the trial in the storage. This is why pruning
  needs a storage every job can open (the default sqlite file; a database server for jobs on other machines);
- ``optimization_results.yaml`` (best params and value) in the sweep directory, as the official plugin writes.

One sweep per study at a time: a second concurrent sweep would see the first one's running trials as stale.
Optuna is imported inside the functions because Hydra imports every plugin module at start-up.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from rmlab.errors import ConfigError

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

log = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("none", "median", "hyperband")


class SweepConfigError(ConfigError):
    """The sweeper's configuration cannot work (unknown name, grid over an interval, objective key not returned)."""


@dataclass
class SearchParam:
    """One searched override: its Optuna distribution, the values a grid walks, the override text of each choice."""

    distribution: BaseDistribution
    grid: list[Any] | None  # None for intervals: a grid cannot enumerate them
    texts: dict[Any, str] | None = None  # choice value -> override text (lists, escaped strings); None for numbers

    def override(self, key: str, value: Any) -> str:
        return f"{key}={self.texts[value] if self.texts is not None else value}"


def _search_param(override: Override) -> SearchParam:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    sweep = override.value()
    if override.is_choice_sweep():
        texts: dict[Any, str] = {}
        for element in sweep.list:
            text = Override._get_value_element_as_str(element)
            # Optuna stores primitives; a list or dict choice is stored as its override text.
            texts[element if isinstance(element, (str, int, float, bool)) else text] = text
        choices = list(texts)
        return SearchParam(CategoricalDistribution(choices), choices, texts)
    if override.is_range_sweep():
        # Sorted: shuffle() means nothing to a sampler, and a stable order keeps a resumed study's space identical.
        values = sorted(override.sweep_iterator())
        if not values:
            raise SweepConfigError(f"hydra.sweeper.params: {override.input_line} is an empty range")
        step = abs(sweep.step)
        if all(isinstance(v, int) for v in values):
            return SearchParam(IntDistribution(values[0], values[-1], step=step), values)
        return SearchParam(FloatDistribution(values[0], values[-1], step=step), values)
    if override.is_interval_sweep():
        is_log = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):  # int(interval(...))
            return SearchParam(IntDistribution(sweep.start, sweep.end, log=is_log), None)
        return SearchParam(FloatDistribution(float(sweep.start), float(sweep.end), log=is_log), None)
    raise SweepConfigError(f"hydra.sweeper.params: {override.input_line} is not a choice, range or interval sweep")


def parse_params(arguments: Sequence[str]) -> tuple[dict[str, SearchParam], dict[str, str]]:
    """Overrides -> (searched key -> SearchParam, fixed key -> override line). A later override of a key wins."""
    searched: dict[str, SearchParam] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key = override.get_key_element()
        searched.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            searched[key] = _search_param(override)
        else:
            assert override.input_line is not None
            fixed[key] = override.input_line
    return searched, fixed


def default_storage(config: DictConfig | None) -> str:
    """sqlite:///<dir>/optuna.db beside the MLflow sqlite store (logger.tracking_uri, else $MLFLOW_TRACKING_URI),
    else in the current directory, so that a study lives next to the runs it produced."""
    uri = (OmegaConf.select(config, "logger.tracking_uri") if config is not None else None) or os.environ.get(
        "MLFLOW_TRACKING_URI", ""
    )
    directory = Path.cwd()
    if uri.startswith("sqlite:///"):
        directory = Path(uri[len("sqlite:///"):]).parent
    return f"sqlite:///{directory.resolve() / 'optuna.db'}"


def make_sampler(name: str, seed: int | None, grid: Mapping[str, list[Any]]) -> optuna.samplers.BaseSampler:
    import optuna

    if name == "grid":
        return optuna.samplers.GridSampler(dict(grid), seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(cfg: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    import optuna

    name = (cfg or {}).get("name", "none")
    warmup = int((cfg or {}).get("n_warmup_steps", 0))
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int((cfg or {}).get("n_startup_trials", 5)), n_warmup_steps=warmup
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup))
    return optuna.pruners.NopPruner()


def _tell(study: optuna.Study, trial: optuna.Trial | int, state: Any, value: float | None = None) -> None:
    try:
        study.tell(trial, value, state=state, skip_if_finished=True)
    except RuntimeError as err:
        # GridSampler calls study.stop() once the grid is used up, which raises outside study.optimize(); the trial
        # has been stored by then.
        if "Study.stop" not in str(err):
            raise


@functools.lru_cache(maxsize=4)
def _job_study(storage: str, study_name: str, pruner: tuple[tuple[str, Any], ...]) -> optuna.Study:
    # Opened once per job process, not per epoch: each load_study builds an engine and checks the schema (~30 ms).
    # Reusing it is safe: Optuna's storage cache keeps only finished trials and rereads the running ones.
    import optuna

    return optuna.load_study(study_name=study_name, storage=storage, pruner=make_pruner(dict(pruner)))


def report_and_should_prune(cfg_optuna: Mapping[str, Any] | None, step: int, value: float) -> bool:
    """Report ``value`` at ``step`` for the job's trial and say whether the study's pruner stops it.

    ``cfg_optuna`` is the job's ``optuna`` config node (added by the sweeper); None (not in an Optuna sweep) reports
    nothing and never prunes. The caller raises ``optuna.TrialPruned`` when this returns True.
    """
    if not cfg_optuna:
        return False
    import optuna

    pruner = tuple(sorted(dict(cfg_optuna.get("pruner") or {}).items()))
    study = _job_study(str(cfg_optuna["storage"]), str(cfg_optuna["study_name"]), pruner)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(cfg_optuna["trial_number"]))
    trial = optuna.trial.Trial(study, trial_id)
    trial.report(float(value), int(step))
    return trial.should_prune()


class RmlabOptunaSweeper(Sweeper):
    """Runs ``n_trials`` (total) trials of an Optuna study, ``n_jobs`` at a time, through Hydra's launcher."""

    def __init__(
        self,
        direction: str,
        n_trials: int,
        n_jobs: int,
        sampler: DictConfig,
        storage: str | None,
        study_name: str,
        objective: str,
        params: DictConfig | None,
        pruner: DictConfig,
    ) -> None:
        for key, value, choices in (
            ("direction", direction, DIRECTIONS),
            ("sampler.name", sampler.name, SAMPLERS),
            ("pruner.name", pruner.name, PRUNERS),
        ):
            if value not in choices:
                raise SweepConfigError(f"hydra.sweeper.{key}={value!r}: choose one of {', '.join(choices)}")
        # Optuna imports cmaes only when it first samples, after a trial has been opened: check before anything runs.
        if sampler.name == "cmaes" and importlib.util.find_spec("cmaes") is None:
            raise SweepConfigError("hydra.sweeper.sampler.name=cmaes needs the cmaes package: pip install cmaes")
        if n_trials < 1 or n_jobs < 1:
            raise SweepConfigError(f"hydra.sweeper: n_trials ({n_trials}) and n_jobs ({n_jobs}) must be >= 1")
        self.direction = direction
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.sampler_cfg = sampler
        self.storage = storage
        self.study_name = study_name
        self.objective = objective
        self.params = dict(params or {})
        self.pruner_cfg = OmegaConf.to_container(pruner)
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        searched, fixed = parse_params([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        total, grid = self.n_trials, None
        if self.sampler_cfg.name == "grid":
            grid = self._grid(searched)
            total = min(total, math.prod(len(values) for values in grid.values()))
        storage = self.storage or default_storage(self.config)
        study, done = self._open_study(storage)
        seed = self.sampler_cfg.seed if self.sampler_cfg.seed is not None else OmegaConf.select(self.config, "seed")
        seed = seed + done if isinstance(seed, int) else None  # a resumed study must not redraw the first run's points
        study.sampler = make_sampler(self.sampler_cfg.name, seed, grid or {})
        log.info(
            f"Study {self.study_name!r} in {storage}: {self.direction} {self.objective!r}, sampler "
            f"{self.sampler_cfg.name} (seed {seed}), {done} trials done, {max(0, total - done)} to run"
        )
        job_info = [
            f"++optuna.{key}={Override._get_value_element_as_str(value)}"
            for key, value in (("study_name", self.study_name), ("storage", storage), ("objective", self.objective),
                               ("pruner", self.pruner_cfg))
        ]
        distributions = {key: param.distribution for key, param in searched.items()}
        while done < total:
            trials = [study.ask(distributions) for _ in range(min(self.n_jobs, total - done))]
            batch = [
                [searched[k].override(k, v) for k, v in trial.params.items()]
                + list(fixed.values())
                + job_info
                + [f"++optuna.trial_number={trial.number}"]
                for trial in trials
            ]
            self._run_batch(study, trials, batch)
            done += len(trials)
        self._report(study, storage)

    def _grid(self, searched: Mapping[str, SearchParam]) -> dict[str, list[Any]]:
        for key, param in searched.items():
            if param.grid is None:
                raise SweepConfigError(
                    f"hydra.sweeper.sampler.name=grid cannot walk the interval of {key!r}: use choice() or range()"
                )
        return {key: param.grid for key, param in searched.items() if param.grid is not None}

    def _open_study(self, storage: str) -> tuple[optuna.Study, int]:
        """Create or resume the study; return it with the number of its finished trials (what n_trials counts)."""
        import optuna
        from optuna.trial import TrialState

        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            direction=self.direction,
            pruner=make_pruner(self.pruner_cfg),
            load_if_exists=True,
        )
        if study.direction.name.lower() != self.direction:
            raise SweepConfigError(
                f"study {self.study_name!r} in {storage} was created to {study.direction.name.lower()}, not to "
                f"{self.direction}: use another study_name"
            )
        # Trials still RUNNING belong to an interrupted sweep (nothing will ever finish them): fail them so they count.
        for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            _tell(study, stale.number, TrialState.FAIL)
            log.warning(f"Trial {stale.number} was left running by an earlier sweep: marked FAIL")
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        return study, len(study.get_trials(deepcopy=False, states=finished))

    def _run_batch(self, study: optuna.Study, trials: list[optuna.Trial], batch: list[list[str]]) -> None:
        """Launch one batch of jobs and tell the study how each trial ended."""
        from optuna.trial import TrialState

        try:
            if self.job_idx == 0:
                # Compose the first batch here: a launcher that composes remotely (submitit) would report a typo only
                # from the cluster. Later batches differ only in values, so they skip this second composition.
                self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
        except SystemExit as err:
            # A job that calls sys.exit() escapes Hydra's per-job error handling: its batch is lost, not the sweep.
            for trial in trials:
                _tell(study, trial, TrialState.FAIL)
            log.error(f"Trials {[t.number for t in trials]} FAIL: a job exited (sys.exit({err.code}))")
            self.job_idx += len(trials)
            return
        except BaseException:
            # Composition errors, Ctrl-C: stop, but leave no trial RUNNING behind.
            for trial in trials:
                _tell(study, trial, TrialState.FAIL)
            raise
        self.job_idx += len(trials)
        config_error: SweepConfigError | None = None
        for trial, ret in zip(trials, returns):
            try:
                state, value, note = self._outcome(ret)
            except SweepConfigError as err:
                state, value, note, config_error = TrialState.FAIL, None, str(err), err
            _tell(study, trial, state, value)
            log.info(f"Trial {trial.number} {state.name}: {note} params={trial.params}")
        if config_error is not None:
            raise config_error  # after telling the whole batch, so that no trial stays RUNNING

    def _outcome(self, ret: JobReturn) -> tuple[Any, float | None, str]:
        """(state, value, a note for the log) of one finished job."""
        import optuna
        from optuna.trial import TrialState

        if ret.status != JobStatus.COMPLETED:
            err = ret._return_value
            if isinstance(err, optuna.TrialPruned):
                return TrialState.PRUNED, None, "pruned"
            log.error("A job failed:", exc_info=err if isinstance(err, BaseException) else None)
            return TrialState.FAIL, None, f"{type(err).__name__}: {err}"
        result = ret._return_value
        if isinstance(result, Mapping):
            if self.objective not in result:
                raise SweepConfigError(
                    f"hydra.sweeper.objective={self.objective!r} is not among the returned keys: "
                    f"{', '.join(map(str, result)) or 'none'}"
                )
            result = result[self.objective]
        try:
            value = float(result)
        except (TypeError, ValueError):
            return TrialState.FAIL, None, f"returned {result!r}, not a number"
        if math.isnan(value):
            return TrialState.FAIL, None, "returned NaN"
        return TrialState.COMPLETE, value, f"value={value:.6g}"

    def _report(self, study: optuna.Study, storage: str) -> None:
        from optuna.trial import TrialState

        counts = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState if s.is_finished()}
        results: dict[str, Any] = {"name": "rmlab_optuna", "study_name": study.study_name, "storage": storage,
                                   "objective": self.objective, "direction": self.direction, "trials": counts,
                                   "best_trial": None, "best_params": None, "best_value": None}
        if counts["COMPLETE"]:
            best = study.best_trial
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
            log.info(f"Best trial {best.number}: {self.objective}={best.value:.6g} params={best.params}")
        else:
            log.warning(f"No trial of study {study.study_name!r} completed ({counts})")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
