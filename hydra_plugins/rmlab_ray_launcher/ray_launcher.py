"""The ``rmlab_ray`` launcher: every job of a sweep runs as one Ray task, on a cluster or on a local Ray.

- Where: ``address`` as ``ray.init`` reads it. With no address, an existing Ray (``$RAY_ADDRESS``, or one that
  ``ray start`` started on this machine) is used if there is one; otherwise the sweep starts a local Ray of its own,
  sized by ``local_num_cpus`` / ``local_object_store_mb``, without the dashboard.
- What a job gets: its config is composed here, in the launching process, and shipped with the task, so the workers
  need rmlab installed but not the config files. Each job asks for ``num_cpus`` / ``num_gpus``; Ray gives torch
  ``num_cpus`` threads and hides the GPUs a job did not ask for. A job runs in the launching directory when the
  worker has it (a shared filesystem, as on SLURM), so a default ``./mlflow.db`` store, the sweep directory and the
  parent run id file are the launcher's; the MLflow variables of the launching process (tracking URI, credentials)
  travel with the task, never through ``runtime_env``, which Ray's dashboard shows.
- Failures: a job that raises is handled inside the job, as with every launcher (a FAILED child, the sweep goes on).
  A job whose worker dies (killed, out of memory, a lost node) cannot close its own run: the launcher closes it
  FAILED with Ray's reason in its ``error`` tag (``rmlab.lost_jobs``), returns None for it, and the sweep goes on.
  Ray does not start it again unless ``max_retries`` says so.
- Ctrl-C: the unfinished jobs are cancelled, which interrupts them, so their runs end KILLED as in one process.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)

# MLflow settings of the launching process that a job on another node must see too.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH")
# Ray's smallest object store.
MIN_OBJECT_STORE_MB = 75
# How long a Ctrl-C'd sweep waits for its cancelled jobs to close their runs.
CANCEL_GRACE_S = 30.0


def _refuse(message: str) -> None:
    """A bad launcher setting: one line and exit status 2, like every other config error (before any job ran)."""
    print(f"rmlab: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _number(name: str, value: Any, minimum: float, integer: bool = False, optional: bool = False) -> None:
    if optional and value is None:
        return
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < minimum:
        kind = "an integer" if integer else "a number"
        _refuse(f"hydra.launcher.{name} must be {kind} >= {minimum:g}{' or null' if optional else ''}, got {value!r}")


def run_on_worker(sweep_config: DictConfig, hydra_context: HydraContext, task_function: TaskFunction,
                  singleton_state: dict[Any, Any], cwd: str, env: dict[str, str]) -> JobReturn:
    """One job inside a Ray worker: Hydra's globals as in the launching process, then Hydra's ``run_job``."""
    setup_globals()
    Singleton.set_state(singleton_state)
    # A run id inherited from the worker's environment would make the job resume that run.
    os.environ.pop("MLFLOW_RUN_ID", None)
    os.environ.update(env)
    if os.path.isdir(cwd):
        os.chdir(cwd)
    HydraConfig.instance().set_config(sweep_config)
    return run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


def reason_of(err: BaseException) -> str:
    """One line from a Ray error: its type and the first line of its message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else 'no message'}"


class RmlabRayLauncher(Launcher):
    def __init__(self, address: str | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0,
                 max_retries: int = 0, local_num_cpus: int | None = None, local_object_store_mb: int | None = None,
                 runtime_env: Any = None) -> None:
        if address is not None and (not isinstance(address, str) or not address.strip()):
            _refuse(f"hydra.launcher.address must be null, auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
        _number("num_cpus", num_cpus, 0)
        _number("num_gpus", num_gpus, 0)
        _number("max_retries", max_retries, 0, integer=True)
        _number("local_num_cpus", local_num_cpus, 1, integer=True, optional=True)
        _number("local_object_store_mb", local_object_store_mb, MIN_OBJECT_STORE_MB, integer=True, optional=True)
        env = OmegaConf.to_container(runtime_env, resolve=True) if isinstance(runtime_env, DictConfig) else runtime_env
        if env is not None and not isinstance(env, dict):
            _refuse(f"hydra.launcher.runtime_env must be a mapping (working_dir, pip, env_vars, ...), got {env!r}")
        self.address = address
        self.num_cpus, self.num_gpus, self.max_retries = float(num_cpus), float(num_gpus), int(max_retries)
        self.local_num_cpus, self.local_object_store_mb = local_num_cpus, local_object_store_mb
        self.runtime_env = env or {}
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.where = ""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        try:
            import ray  # noqa: F401
        except ImportError:
            _refuse("hydra/launcher=rmlab_ray needs Ray: pip install 'rmlab[ray]'")
        self.where = self._connect()

    def _connect(self) -> str:
        """Attach to the Ray this sweep runs on; returns a few words saying which."""
        import ray

        if ray.is_initialized():
            return "the Ray this process is attached to"
        extra = {"runtime_env": self.runtime_env} if self.runtime_env else {}
        if self.address is None:
            try:
                # Public API for "is there a Ray to join?": "auto" finds one like a bare init() but never starts one.
                ray.init(address="auto", **extra)
                return "an existing Ray cluster"
            except ConnectionError:
                pass
            local = {"num_cpus": self.local_num_cpus,
                     "object_store_memory": None if self.local_object_store_mb is None
                     else self.local_object_store_mb * 1024 * 1024}
            ray.init(include_dashboard=False, **{k: v for k, v in local.items() if v is not None}, **extra)
            return "a local Ray started for this sweep"
        try:
            ray.init(address=self.address, **extra)
        except ConnectionError as err:
            print(f"rmlab: error: hydra.launcher.address={self.address}: no Ray cluster there ({err}). "
                  "Start one with `ray start --head`, or leave the address null for a local Ray", file=sys.stderr,
                  flush=True)
            sys.exit(1)
        return f"the Ray cluster at {self.address}"

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray

        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Ray ({self.where}) is launching {len(job_overrides)} jobs, {self.num_cpus:g} CPU and "
                 f"{self.num_gpus:g} GPU each; sweep output dir: {sweep_dir}")
        remote = ray.remote(run_on_worker)
        resources = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "max_retries": self.max_retries,
                     "retry_exceptions": False}
        # Shared by every task: stored once in Ray's object store rather than once per task.
        shared = [ray.put(self.hydra_context), ray.put(self.task_function), ray.put(Singleton.get_state())]
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        configs, refs = [], []
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
                sweep_config.hydra.job.num = idx
            configs.append(sweep_config)
            refs.append(remote.options(name=f"rmlab-job-{idx}", **resources).remote(sweep_config, *shared, os.getcwd(), env))
        returns: list[JobReturn | None] = [None] * len(refs)
        position = {ref: i for i, ref in enumerate(refs)}
        waiting = list(refs)
        try:
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                i = position[done[0]]
                try:
                    returns[i] = ray.get(done[0])
                except ray.exceptions.RayError as err:
                    returns[i] = self._lost(configs[i], list(job_overrides[i]), err)
        except (KeyboardInterrupt, SystemExit):
            self._cancel(waiting)
            raise
        return [r for r in returns if r is not None]

    def _lost(self, sweep_config: DictConfig, overrides: list[str], err: BaseException) -> JobReturn:
        """A job whose worker died: close its child run FAILED with the reason; the sweep goes on without it."""
        idx = int(sweep_config.hydra.job.num)
        reason = f"the job's Ray worker died: {reason_of(err)}"
        log.error(f"Job #{idx} ({' '.join(filter_overrides(overrides))}) failed: {reason}")
        task_cfg = copy.deepcopy(sweep_config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]  # what the job's task function would have seen
        if "logger" in task_cfg:  # an rmlab config: record the failure on its run
            from rmlab.lost_jobs import record_lost_job

            try:
                record_lost_job(task_cfg, str(self.config.hydra.sweep.dir), idx, overrides, reason)
            except Exception as record_err:  # the sweep goes on; the parent closes a RUNNING child itself
                log.error(f"Could not record job #{idx}'s failure: {type(record_err).__name__}: {record_err}")
        ret = JobReturn(overrides=overrides, cfg=task_cfg, hydra_cfg=None, working_dir=os.getcwd(),
                        task_name=str(sweep_config.hydra.job.name))
        # As for a job that fails inside: its run says FAILED, the sweeper sees no result (None).
        ret.status, ret.return_value = JobStatus.COMPLETED, None
        return ret

    def _cancel(self, waiting: list) -> None:
        """Interrupt the unfinished jobs (each then closes its run KILLED) and give them a moment to do it."""
        import ray

        for ref in waiting:
            ray.cancel(ref)
        deadline = time.monotonic() + CANCEL_GRACE_S
        while waiting and time.monotonic() < deadline:
            _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=max(0.0, deadline - time.monotonic()))
