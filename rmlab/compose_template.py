"""Compose a sweep job from a kept composition of its config groups when the jobs differ only in values.

Hydra composes every job from scratch: it reads and merges about twenty YAML files and builds the defaults tree,
about 62 ms a job on this project's 2-core machine (a fifth of a default run's training). The jobs of a sweep
usually share their config groups and differ in values (``seed=0,1,2``, ``optimizer.lr=...``), and Hydra applies
value overrides last, to the merged config. So ``Templates.compose`` composes once with Hydra's own
``load_sweep_config`` and the job's overrides other than its values (the *base*), keeps that config, and for every
job with the same other overrides: copies the base, applies the job's values with Hydra's own function
(``ConfigLoaderImpl._apply_overrides_to_config``, same checks and errors), and records the overrides as Hydra does
(``hydra.overrides.task`` in command-line order, ``hydra.job.override_dirname``, the working directory, the
variables of ``hydra.job.env_copy``, the resolver cache of the sweep's config). About 5 ms a job instead of 62
(``bench/sweep_job_parts.py``).

A *value* is what Hydra itself applies after the merge (its config overrides): an override whose key is not a config
group and not under ``hydra``, of any kind (``key=``, ``+key=``, ``++key=``, ``~key``; Optuna's trials add
``++optuna.*``). Hydra applies them in their command-line order, and so does the copy; an error (an unknown key, a
bad value) is Hydra's own. The job's other overrides (config groups, ``hydra.*``) make the base and its key. A dict
given to a config group, a sweep that adds config search paths (``hydra.searchpath``), and a config file changed
since the base was composed (the files of every ``file://`` config source are fingerprinted, 0.4 ms) are composed
by Hydra as before.

This rests on internals of Hydra 1.3 (``ConfigLoaderImpl._apply_overrides_to_config``, ``get_overrides_dirname``,
the order of ``load_configuration``'s steps); tests compare the result with Hydra's own composition, key for key,
over rmlab's config groups, presets and override kinds, so a Hydra release that changes them fails there.
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

MAX_BASES = 32  # distinct combinations of config groups kept per process (a sweep over groups has a few)

Compose = Callable[[DictConfig, list[str]], DictConfig]


class Templates:
    """``compose(master, overrides)``: what ``loader.load_sweep_config`` returns, from a kept base when it can."""

    def __init__(self, loader: Any, load_sweep_config: Compose) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.loader = loader
        self.hydra_compose = load_sweep_config
        self.parser = OverridesParser.create()
        self.bases: OrderedDict[tuple, DictConfig] = OrderedDict()
        self.composed_by_hydra = 0  # counted for the tests
        self.from_base = 0

    def compose(self, master: DictConfig, overrides: list[str]) -> DictConfig:
        job = self._parse(master, overrides)
        if job is None:
            self.composed_by_hydra += 1
            return self.hydra_compose(master, overrides)
        parsed, groups, values = job
        key = (master.hydra.job.config_name, tuple(master.hydra.overrides.hydra),
               tuple(o.input_line for o in groups), self._sources_state())
        base = self.bases.get(key)
        if base is None:
            self.composed_by_hydra += 1
            base = self.hydra_compose(master, [o.input_line for o in groups])
            self.bases[key] = base
            while len(self.bases) > MAX_BASES:
                self.bases.popitem(last=False)
        else:
            self.bases.move_to_end(key)
        self.from_base += 1
        return self._with_values(master, base, parsed, groups, values)

    def _parse(self, master: DictConfig, overrides: list[str]) -> tuple[list, list, list] | None:
        """The job's overrides parsed: (all of them in order, all but its values, its values); None when Hydra must
        compose it: a dict given to a config group, a sweep override, or config search paths added."""
        if list(master.hydra.searchpath):
            return None
        parsed = self.parser.parse_overrides(list(overrides))
        groups, values = [], []
        for override in parsed:
            key = override.key_or_group
            if override.is_sweep_override() or key == "hydra" or key.startswith("hydra.searchpath"):
                return None
            if override.is_hydra_override():
                groups.append(override)  # set in the base, like the sweep's own hydra overrides
            elif not self.loader.repository.group_exists(key):
                values.append(override)  # Hydra's config overrides: applied in order, whatever their kind
            elif isinstance(override.value(), dict):
                return None  # Hydra takes a dict on a group as a config override too: left to it
            else:
                groups.append(override)  # a group's choice, added or removed: decides the defaults list
        return parsed, groups, values

    def _with_values(self, master: DictConfig, base: DictConfig, parsed: list, groups: list,
                     values: list) -> DictConfig:
        """A copy of ``base`` with the job's values applied and its overrides recorded as Hydra records them."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

        cfg = copy.deepcopy(base)
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        app = [o for o in parsed if not o.is_hydra_override()]
        recorded = list(cfg.hydra.overrides.task)  # what the config had, then the base's own overrides
        in_base = len([o for o in groups if not o.is_hydra_override()])
        cfg.hydra.overrides.task = recorded[:len(recorded) - in_base] + [o.input_line for o in app]
        naming = cfg.hydra.job.config.override_dirname
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=app, exclude_keys=naming.exclude_keys, item_sep=naming.item_sep, kv_sep=naming.kv_sep)
        with open_dict(cfg.hydra):
            for key in cfg.hydra.job.env_copy:  # read at each composition, as Hydra does
                cfg.hydra.job.env_set[key] = os.environ[key]
        cfg.hydra.runtime.cwd = os.getcwd()
        OmegaConf.copy_cache(from_config=master, to_config=cfg)
        return cfg

    def _sources_state(self) -> tuple:
        """Every file of the ``file://`` config sources, with its size and modification time."""
        state = []
        for source in self.loader.repository.get_sources():
            if source.scheme() != "file":
                continue
            for folder, _, files in os.walk(source.path):
                for name in sorted(files):
                    try:
                        stat = os.stat(os.path.join(folder, name))
                    except OSError:
                        continue
                    state.append((folder, name, stat.st_mtime_ns, stat.st_size))
        return tuple(state)
