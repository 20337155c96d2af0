"""One run: seed, validate and build everything, then track, fit, test, and close the run with its status.

Nothing is recorded until the whole config has been checked (``rmlab.build``), so a bad command line never leaves a
run behind. The run then goes through ``rmlab.lifecycle.RunLifecycle``, which opens it, handles Ctrl-C and SIGTERM,
and closes it on every path: FINISHED, FAILED (with the error), or KILLED (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import logging
import os
import random
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from rmlab.console import compact_config, result_block
from rmlab.errors import ConfigError
from rmlab.kinds import SEQUENCE, SEQUENCE_PAIR
from rmlab.provenance import command_line, command_overrides, job_context, run_name, run_tags
from rmlab.validate import validate_config

if TYPE_CHECKING:
    from rmlab.build import Components
    from rmlab.resume import ResumePoint

log = logging.getLogger("rmlab")
# torch, numpy and the component modules are imported inside the functions that need them, so that rmlab.validate
# reports a config error without waiting for them to load.


def seed_all(seed: int) -> None:
    """Seed Python, numpy and torch (``seed`` is validated first: an integer in [0, 2**32 - 1])."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def output_dir() -> Path:
    """Hydra's output folder for this job; a fresh ./outputs/<date>/<time> outside a Hydra app (tests, notebooks)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # HydraConfig not set
        return Path.cwd() / "outputs" / datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")


def set_threads(cfg: DictConfig, context: dict[str, Any]) -> None:
    """torch intra-op threads: trainer.num_threads, or the cores shared evenly among the jobs that run at once
    (so a joblib sweep does not oversubscribe the machine)."""
    threads = cfg.trainer.num_threads
    jobs = context.get("parallel_jobs", 1)
    if threads is None and jobs != 1:
        cores = os.cpu_count() or 1
        threads = max(1, cores // (cores if jobs < 1 else jobs))
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))


def quiet_lightning() -> None:
    """Lightning sets its loggers to INFO on import (device banners, tips); rmlab prints its own summary."""
    import warnings

    for name in ("pytorch_lightning", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def make_trainer(cfg: DictConfig, callbacks: list, loggers: list, out: Path):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Checkpoint

    from rmlab import callback_factories

    quiet_lightning()
    callback_factories.install()  # each job of a sweep would read every installed package's entry points again

    t = cfg.trainer
    try:
        return pl.Trainer(
            accelerator=t.accelerator, devices=t.devices, precision=t.precision, max_epochs=t.max_epochs,
            strategy=t.strategy, deterministic=t.deterministic,
            log_every_n_steps=1,
            fast_dev_run=t.fast_dev_run,
            # rmlab logs per-step metrics itself (rmlab.module), so Lightning's log_every_n_steps has nothing to gate.
            enable_progress_bar=t.enable_progress_bar, enable_model_summary=False, num_sanity_val_steps=0,
            # Lightning refuses a Checkpoint callback (rmlab's last.ckpt) unless checkpointing is enabled, and adds
            # its own ModelCheckpoint only when there is none.
            enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks), logger=loggers or False,
            callbacks=callbacks,
            default_root_dir=str(out),
        )
    except Exception as err:  # Lightning's MisconfigurationException and friends, before anything is tracked
        raise ConfigError(f"trainer: {err}") from err


def make_callbacks(cfg: DictConfig, data) -> list:
    """The run's callbacks: the epoch-end validation (best weights, early stopping, pruning) first."""
    from rmlab.checkpoint import Validation

    stop = cfg.trainer.early_stopping
    return [Validation(data.val_batches, every_n_epochs=cfg.trainer.check_val_every_n_epoch,
                       keep_best=bool(cfg.trainer.checkpoint.enabled),
                       patience=stop.patience if stop.enabled else None, min_delta=stop.min_delta,
                       optuna_cfg=cfg.get("optuna"))]


def device_count(devices: Any) -> int | None:
    """How many devices a trainer.devices value asks for; None for "auto" or -1 (all there are)."""
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return None
        return len([d for d in text.split(",") if d.strip()]) if "," in text else int(text)
    if isinstance(devices, int):
        return None if devices == -1 else devices
    return len(devices)


def validate_for_context(cfg: DictConfig, context: dict[str, Any]) -> None:
    """Refuse what silently misbehaves inside a multirun: DDP re-runs the whole command line in every rank, which then
    starts its own sweep (with an Optuna sweeper, ranks of one group trained different configs: docs/design.md)."""
    count = device_count(cfg.trainer.devices)
    if context.get("multirun") and (count is None or count > 1):
        raise ConfigError(
            f"trainer.devices={cfg.trainer.devices} inside a multirun: DDP re-runs the command line in each rank, "
            "which would start its own sweep. Use trainer.devices=1 and run jobs in parallel instead "
            "(hydra/launcher=joblib, or submitit_slurm with one GPU per job)"
        )


def global_rank() -> int:
    """This process's rank under Lightning's DDP launcher, which re-runs the command with these variables set."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))


def train(cfg: DictConfig, parent_run_id: str | None = None) -> dict[str, Any]:
    """Run one experiment described by a composed config. Returns the test metrics, ``val/selected_reward`` (the
    validation reward of the tested weights, see ``selection_metrics``) and the MLflow ``run_id`` (None when
    untracked). Raises ConfigError before anything is recorded if the config is bad (inside a sweep,
    ``rmlab.jobs.sweep_job`` records the failed job as a FAILED child run so the sweep's summary counts it)."""
    context = job_context()
    # One MLflow run per experiment: under DDP only rank 0 tracks (every rank runs this function).
    tracked = cfg.logger.get("name") == "mlflow" and not cfg.trainer.get("fast_dev_run") and global_rank() == 0
    if parent_run_id is None and tracked and context["multirun"]:
        from rmlab.sweep_parent import parent_run_id as sweep_parent

        parent_run_id = sweep_parent(context["sweep_dir"])
    context["parent_run_id"] = parent_run_id
    validate_config(cfg)  # before seeding (a seed of 2**64 must be a config error) and before torch loads
    if tracked:  # an unwritable store is reported now, in one line, not after minutes of MLflow's retries
        from rmlab.store import check_writable, resolve_tracking_uri

        check_writable(resolve_tracking_uri(cfg.logger.tracking_uri))
    validate_for_context(cfg, context)
    point = resume_point_of(cfg, context)  # resume=: checked before anything is created
    seed_all(cfg.seed)
    from rmlab.build import build_components

    parts: Components = build_components(cfg, validated=True)
    set_threads(cfg, context)
    log.info(compact_config(cfg))

    tracker = None
    tags = run_tags(cfg, context) if tracked else {}  # once: it hashes the config and asks git
    if tracked:
        from rmlab.tracking import Tracker

        tracker = Tracker(cfg.logger.tracking_uri, cfg.experiment, cfg.logger.flush_every_s, cfg.logger.retry_s)
        if parent_run_id:
            from rmlab.sweep import reuse_finished_run

            reused = reuse_finished_run(tracker, cfg, run_name(cfg), tags, parent_run_id)
            if reused is not None:
                print(result_block(reused, parts.reward.name, reused["run_id"], tracker.uri, _dashboard(tracker),
                                   _run_page(tracker)))
                return reused
        elif not context["multirun"]:
            from rmlab.tidy import close_orphans

            for run_id in close_orphans(tracker.client):
                log.warning(f"rmlab: closed run {run_id} FAILED: its process ended without closing it")
    results = _fit_and_test(cfg, parts, tracker, tags, parent_run_id, point)
    if global_rank() == 0:
        print(result_block(results, parts.reward.name, results["run_id"], tracker.uri if tracker else None,
                           _dashboard(tracker), _run_page(tracker)))
    return results


def _fit_and_test(cfg: DictConfig, parts: Components, tracker, tags: dict[str, str],
                  parent_run_id: str | None, point: ResumePoint | None = None) -> dict[str, Any]:
    from rmlab.lifecycle import RunLifecycle

    module, data = _module_and_data(cfg, parts)
    out = output_dir()
    last = last_checkpoint_path(cfg, out, point)
    if point is not None:  # the same run goes on: its tags stay, but for this process and its output folder
        from rmlab.resume import LAST_TAG, RESUMED_TAG

        tags = {RESUMED_TAG: str(point.checkpoint), **({LAST_TAG: str(last)} if last is not None else {})}
    tags = {**tags, **source_tags(parts, out)}
    life = RunLifecycle(tracker, run_name(cfg), tags, parent_run_id, reopen=point.run_id if point else None)
    keeper = last_checkpoint_callbacks(cfg, last)
    callbacks = make_callbacks(cfg, data) + keeper
    if keeper:
        life.on_stop.append(lambda: save_last_on_stop(keeper[0], tracker))
    validation = callbacks[0]
    loggers = []
    if tracker is not None:
        from rmlab.tracking import TrackerLogger

        loggers.append(TrackerLogger(tracker))
    trainer = make_trainer(cfg, [*callbacks, life.lightning_callback()], loggers, out)

    datasets = _datasets(cfg, parts.task) if tracker is not None else None  # digests: before the run exists
    with life:  # the run exists from here on, and is closed with its status whatever happens
        if tracker is not None and point is None:  # a resumed run has them already
            _record_config(tracker, cfg, datasets, last)
        if last is not None:  # in the job's log, where a requeued job (SLURM) finds it
            since = f" goes on from {point.checkpoint}" if point is not None else ""
            log.info(f"rmlab: run {life.run_id}{since}; if it is interrupted, continue it with resume={life.run_id}")
        started = time.perf_counter()
        trainer.fit(module, datamodule=data, **fit_from(point))
        fit_s = time.perf_counter() - started
        validation.restore(module)  # test the weights with the best val/reward (if kept)
        results: dict[str, Any] = module.evaluate("test", data.test_batches())
        results.update(selection_metrics(validation))
        extra = checkpoint_extra(cfg, parts)
        saved = validation.save(out / "checkpoints" / "best.ckpt", extra) if trainer.is_global_zero else None
        if tracker is not None and cfg.logger.log_checkpoint and saved is not None:
            tracker.upload(f"the checkpoint {saved.name}", tracker.log_artifact, saved, "checkpoints")
        # Throughput of the whole fit (training, per-epoch validation, logging): what the benchmark compares.
        results["perf_fit_s"] = fit_s
        results["perf_train_samples_per_s"] = module.samples_trained / fit_s
        if getattr(module, "tokens_trained", 0):  # sequence tasks
            results["perf_train_tokens_per_s"] = module.tokens_trained / fit_s
        if tracker is not None:
            tracker.set_final_tags({"rmlab.selection": validation.selected()[0]})
            _log_outcome(tracker, cfg, parts, results, trainer.global_step, module.first_step_time)
    results["run_id"] = life.run_id
    return results


def source_tags(parts: Components, out: Path) -> dict[str, str]:
    """Where the run's weights start from (``init_from``) and its output folder (where ``init_from=<this run's id>``
    finds the best checkpoint when it was not logged as an artifact)."""
    from rmlab.init_from import OUTPUT_DIR_TAG, TAG

    tags = {OUTPUT_DIR_TAG: str(out.resolve())}
    if parts.init_from is not None:
        tags[TAG] = parts.init_from
    return tags


def checkpoint_extra(cfg: DictConfig, parts: Components) -> dict[str, Any]:
    """Saved in ``best.ckpt`` beside the weights: the model config, which ``init_from`` checks a later run against,
    the task config, and where the task's kind has a served form the model spec (sizes, a text model's settings:
    what ``reward=reward_model`` rebuilds a reward model from)."""
    from rmlab.init_from import checkpoint_meta
    from rmlab.serving.export import model_spec
    from rmlab.serving.io import io_class_for

    io_cls = io_class_for(parts.info)
    return checkpoint_meta(OmegaConf.to_container(cfg.model, resolve=True),
                           task_config=OmegaConf.to_container(cfg.task, resolve=True),
                           spec=model_spec(cfg, parts, io_cls) if io_cls is not None else None)


# -- resuming an interrupted run (resume=<run id>) ------------------------------------------------------------------


def resume_point_of(cfg: DictConfig, context: dict[str, Any]) -> ResumePoint | None:
    """The run ``resume=`` names and its last.ckpt (None without ``resume``); ConfigError (exit status 2) when it
    cannot be continued with this config (``rmlab.resume``). Reads the store, creates nothing."""
    if cfg.get("resume") is None:
        return None
    if context.get("multirun"):
        raise ConfigError("resume= continues one run: it cannot be part of a multirun (-m)")
    if cfg.logger.get("name") != "mlflow" or cfg.trainer.get("fast_dev_run"):
        raise ConfigError("resume= continues a tracked run: it needs logger=mlflow and no trainer.fast_dev_run")
    from rmlab.resume import resume_point
    from rmlab.server import bound_http_retries, check_reachable, is_http
    from rmlab.store import open_client, resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(cfg.logger.tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ConfigError(f"resume={cfg.resume}: no such run: the tracking store {uri} does not exist")
    if is_http(uri):
        bound_http_retries()
        check_reachable(uri)
    # Under DDP the other ranks start once rank 0 has reopened the run: RUNNING, in a live process, is right then.
    return resume_point(cfg, open_client(uri), check_status=global_rank() == 0)


def last_checkpoint_path(cfg: DictConfig, out: Path, point: ResumePoint | None) -> Path | None:
    """Where this run writes its last.ckpt: none for an untracked run (nothing could resume it) or with
    ``trainer.checkpoint.every_n_epochs=0``; a resumed run goes on writing the file it resumed from. Under DDP every
    rank takes part in writing it (rank 0 writes), though only rank 0 tracks the run."""
    tracked = cfg.logger.get("name") == "mlflow" and not cfg.trainer.get("fast_dev_run")
    if not tracked or not cfg.trainer.checkpoint.every_n_epochs:
        return None
    return point.checkpoint if point is not None else out / "checkpoints" / "last.ckpt"


def last_checkpoint_callbacks(cfg: DictConfig, path: Path | None) -> list:
    if path is None:
        return []
    from rmlab.last_checkpoint import LastCheckpoint

    every = cfg.trainer.checkpoint
    return [LastCheckpoint(path, every.every_n_epochs, every.min_interval_s)]


def save_last_on_stop(keeper, tracker) -> None:
    """A run that stops before its end (an interrupt, an error) writes the last whole epoch whose last.ckpt write the
    interval skipped (``rmlab.last_checkpoint``); the tag that points to the file goes with the final metrics, which
    reach the store, or the unsent-metrics file when the store is away."""
    epoch = keeper.save_snapshot()
    if epoch is None:
        return
    log.warning(f"rmlab: saved the state after epoch {epoch} in {keeper.path}")
    if tracker is not None and tracker.run_id is not None:
        from rmlab.resume import LAST_TAG

        tracker.set_final_tags({LAST_TAG: str(keeper.path)})


def fit_from(point: ResumePoint | None) -> dict[str, Any]:
    """``Trainer.fit``'s arguments that continue from the run's last.ckpt (loaded with ``weights_only=True``)."""
    return {} if point is None else {"ckpt_path": str(point.checkpoint), "weights_only": True}


def _module_and_data(cfg: DictConfig, parts: Components):
    """The LightningModule and the DataModule of the task's output kind."""
    common = dict(optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True), max_epochs=cfg.trainer.max_epochs,
                  log_every_n_steps=cfg.trainer.log_every_n_steps, batch_size=parts.task.batch_size,
                  gradient_clip_val=cfg.trainer.gradient_clip_val,
                  accumulate_grad_batches=cfg.trainer.accumulate_grad_batches)
    if parts.info.output_kind == SEQUENCE_PAIR:
        from rmlab.pair_module import PairDataModule, PreferenceModule

        module = PreferenceModule(parts.model, parts.loss, parts.reward, parts.info, generation=parts.generation,
                                  **common)
        data = PairDataModule(parts.splits, parts.task.batch_size, parts.generation.batch_size, seed=cfg.seed,
                              steps_per_chunk=cfg.trainer.steps_per_chunk,
                              limit_train_batches=cfg.trainer.limit_train_batches)
        return module, data
    if parts.info.output_kind == SEQUENCE:
        from rmlab.sequence_module import SequenceDataModule, SequenceModule

        module = SequenceModule(parts.model, parts.loss, parts.reward, parts.info, generation=parts.generation,
                                feedback=parts.feedback, **common)
        data = SequenceDataModule(parts.splits, parts.task.batch_size, parts.generation.batch_size, seed=cfg.seed,
                                  steps_per_chunk=cfg.trainer.steps_per_chunk,
                                  limit_train_batches=cfg.trainer.limit_train_batches,
                                  prompts=parts.feedback is not None)
        return module, data
    from rmlab.data import TaskDataModule
    from rmlab.module import ObjectiveModule

    module = ObjectiveModule(parts.model, parts.loss, parts.reward, parts.info, feedback=parts.feedback, **common)
    data = TaskDataModule(parts.task, seed=cfg.seed, steps_per_chunk=cfg.trainer.steps_per_chunk,
                          limit_train_batches=cfg.trainer.limit_train_batches)
    return module, data


SELECTION_KEYS = ("val/selected_reward", "val/selected_epoch", "val/best_reward", "val/last_reward")


def selection_metrics(validation) -> dict[str, float]:
    """The validation reward of the tested weights, under one name for every run (``val/selected_reward``, what
    sweeps select on) and under a name that says which epoch it is: ``val/best_reward`` (the best weights were kept
    and tested) or ``val/last_reward`` (trainer.checkpoint.enabled=false: the last weights)."""
    selection, score, epoch = validation.selected()
    if score is None:  # no validation ran
        return {}
    return {"val/selected_reward": score, "val/selected_epoch": epoch, f"val/{selection}_reward": score}


def _log_outcome(tracker, cfg: DictConfig, parts: Components, results: dict[str, Any], step: int,
                 first_step_time: float | None) -> None:
    """After the test: the final metrics, the first step's wall clock (a tag: a timestamp is no metric to chart), and
    the tested weights as the run's MLflow model (``logger.log_model``). Tags travel with the final metrics, so a run
    whose store went away gets them when it is replayed."""
    final = {k: v for k, v in results.items() if k in SELECTION_KEYS or k.startswith("perf_")}
    tracker.log_metrics(final, step=step)
    if first_step_time is not None:
        tracker.set_final_tags({"rmlab.first_step_unix": f"{first_step_time:.3f}"})
    if cfg.logger.log_model:
        from rmlab.serving.export import log_model

        # The test metrics wait in the tracker's buffer: they are linked there, and stored once with the final batch.
        linked = {k: v for k, v in results.items() if k.startswith("test/") or k in SELECTION_KEYS}
        # A store that went away: the model is skipped (with a warning), the metrics wait for rmlab.replay.
        tracker.upload("the MLflow model", log_model, tracker, cfg, parts, step, linked,
                       register_as=cfg.logger.register_as)


def _dashboard(tracker) -> str | None:
    if tracker is None:
        return None
    from rmlab.tracking import dashboard_command

    return dashboard_command(tracker.uri)


def _run_page(tracker) -> str | None:
    if tracker is None or tracker.run_id is None:
        return None
    from rmlab.tracking import run_page_url

    return run_page_url(tracker.uri, tracker.experiment_id, tracker.run_id)


def _datasets(cfg: DictConfig, task) -> list:
    """The run's datasets, one per split (``rmlab.lineage``), with their digests."""
    from rmlab.lineage import split_datasets

    return split_datasets(task, OmegaConf.to_container(cfg.task, resolve=True))


def _record_config(tracker, cfg: DictConfig, datasets: list, last: Path | None = None) -> None:
    """Record everything known before training on the open run: params (numbers as the user typed them), the
    datasets, the resolved config, the command, and where its last.ckpt will be (if it writes one)."""
    from rmlab.tracking import flatten, typed_params

    tags = {}
    if last is not None:
        from rmlab.resume import LAST_TAG

        tags[LAST_TAG] = str(last)
    tracker.log_params(typed_params(flatten(OmegaConf.to_container(cfg, resolve=True)), command_overrides()), tags)
    tracker.log_inputs(datasets)
    tracker.log_texts({"config.yaml": OmegaConf.to_yaml(cfg, resolve=True), "command.txt": command_line() + "\n"})
