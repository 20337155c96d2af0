"""Compose each sweep job's config once, not twice.

Hydra's sweepers compose every job of a batch to check it (``Sweeper.validate_batch_is_legal``: a typo stops the sweep
before its first job), then an in-process launcher (``basic``, ``rmlab_ray``) composes each job again to run it. At
about 0.15 s a composition that was half of a small sweep job's overhead. ``install`` memoises the launching process's
``ConfigLoader.load_sweep_config``: a composition made by the check is kept, and the launch takes it (once: it is
removed then). Launchers that compose in their own workers (joblib, submitit) are left alone. The compositions
themselves start from a kept composition of the job's config groups where the jobs differ only in values
(``rmlab.compose_template``).

Hydra offers no hook for this, so it rests on two details of Hydra 1.3, both checked by a test: the loader that
``GlobalHydra`` holds is the one the sweeper and the launcher use, and the check calls ``load_sweep_config`` from a
function named ``validate_batch_is_legal``. If either changes, jobs are composed twice again, as before.
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig

IN_PROCESS_LAUNCHERS = ("basic", "rmlab_ray")
CHECKER = "validate_batch_is_legal"


def install(config: DictConfig) -> bool:
    """Memoise the sweep's config loader when its launcher composes in this process; True if it did."""
    if config.hydra.runtime.choices.get("hydra/launcher") not in IN_PROCESS_LAUNCHERS:
        return False
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        return False
    loader = GlobalHydra.instance().config_loader()
    if getattr(loader, "_rmlab_compose_once", False):
        return True
    from rmlab.compose_template import Templates

    templates = Templates(loader, loader.load_sweep_config)
    checked: dict[tuple[str, ...], DictConfig] = {}

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> Any:
        key = tuple(sweep_overrides)
        if _called_by_the_check():
            checked[key] = templates.compose(master_config, sweep_overrides)
            return checked[key]
        kept = checked.pop(key, None)
        return kept if kept is not None else templates.compose(master_config, sweep_overrides)

    loader.load_sweep_config = load_sweep_config
    loader._rmlab_templates = templates
    loader._rmlab_compose_once = True
    return True


def _called_by_the_check() -> bool:
    """Whether ``load_sweep_config`` was called by Hydra's batch check (the caller's caller of our wrapper)."""
    return sys._getframe(2).f_code.co_name == CHECKER
