"""Config schema of the ``rmlab_ray`` launcher, registered as ``hydra/launcher=rmlab_ray``.

This module imports no Ray: Hydra imports every plugin module at start-up, and ``--help`` should not pay for Ray.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class RmlabRayLauncherConf:
    _target_: str = "hydra_plugins.rmlab_ray_launcher.ray_launcher.RmlabRayLauncher"
    # null: ray.init()'s own choice ($RAY_ADDRESS, else the Ray that `ray start` last started on this machine, else a
    # new local Ray for this sweep). "auto": an existing cluster, an error if there is none. "HOST:6379": that
    # cluster's head; "ray://HOST:10001": through the Ray client.
    address: Optional[str] = None
    # Resources each job asks for; Ray starts a job when a node has them free. Torch uses num_cpus threads.
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    # Times Ray starts a job again after its worker died. 0: a job that dies is a FAILED child run at once.
    max_retries: int = 0
    # Only when the sweep starts its own local Ray (no cluster found): the CPUs it may use (null: all of this
    # machine's) and the size of its object store in MB (null: Ray's default; jobs return only small results).
    local_num_cpus: Optional[int] = None
    local_object_store_mb: Optional[int] = None
    # Ray runtime environment of the jobs, passed to ray.init: {working_dir: ., pip: [...], env_vars: {...}}.
    runtime_env: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/launcher", name="rmlab_ray", node=RmlabRayLauncherConf, provider="rmlab_ray_launcher"
)
