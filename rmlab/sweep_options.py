"""What a sweep preset may ask of its summary: the keys of the ``rmlab_sweep`` Hydra callback, checked at sweep start.

``hydra.callbacks.rmlab_sweep`` (conf/config.yaml) takes, beside its ``_target_``:

- ``metrics``: extra columns of the summary, each ``train/<name>``, ``val/<name>`` or ``test/<name>`` (a child's last
  logged value of that metric, summarised as mean ± std over seeds like the fixed columns, which it may not repeat);
- ``plot``: an extra figure for the parent run: null, or ``overoptimisation`` (``rmlab.overoptimisation``).

Any other key, or a value of the wrong form, stops the command before anything is created (no sweep folder, no run),
with one line naming the problem and the valid forms (exit code 2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rmlab.errors import ConfigError

PREFIX = "hydra.callbacks.rmlab_sweep"
KEYS = ("metrics", "plot")
PLOTS = ("overoptimisation",)
STAGES = ("train", "val", "test")
_METRIC = re.compile(rf"({'|'.join(STAGES)})/[A-Za-z0-9_][A-Za-z0-9_./-]*")
_METRIC_FORMS = "train/<name>, val/<name> or test/<name> (e.g. [test/gold_reward, train/kl])"


@dataclass(frozen=True)
class SweepOptions:
    metrics: tuple[str, ...] = field(default_factory=tuple)  # extra summary columns, in the preset's order
    plot: str | None = None  # an extra figure of the parent run (one of PLOTS)


def sweep_options(metrics: Any = None, plot: Any = None, **unknown: Any) -> SweepOptions:
    """The callback's keys as Hydra passes them (a ListConfig or a list), checked; raises ConfigError."""
    if unknown:
        name = min(unknown)
        raise ConfigError(f"{PREFIX}.{name} is not a key of the sweep callback: valid keys: {', '.join(KEYS)}")
    return SweepOptions(_metrics(metrics), _plot(plot))


def _metrics(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    from omegaconf import ListConfig, OmegaConf

    items = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
    if isinstance(items, str) or not isinstance(items, Sequence):
        raise ConfigError(f"{PREFIX}.metrics must be a list of metric names, each {_METRIC_FORMS}; got {value!r}")
    from rmlab.summary import METRICS

    for item in items:
        if not isinstance(item, str) or not _METRIC.fullmatch(item):
            raise ConfigError(f"{PREFIX}.metrics: {item!r} is not a metric name: each must be {_METRIC_FORMS}")
        if item in METRICS:
            raise ConfigError(f"{PREFIX}.metrics: {item} is a column of every summary already ({', '.join(METRICS)}): "
                              "list only extra ones")
    return tuple(dict.fromkeys(items))  # a name listed twice is one column


def _plot(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value in PLOTS):
        return value
    raise ConfigError(f"{PREFIX}.plot must be null or one of {', '.join(PLOTS)}; got {value!r}")


def from_config(callback: Mapping[str, Any]) -> SweepOptions:
    """The options of a composed ``hydra.callbacks.rmlab_sweep`` node (its ``_target_`` aside)."""
    return sweep_options(**{str(k): v for k, v in callback.items() if k != "_target_"})
