"""rmlab's root config composed in-process, as ``python -m rmlab <overrides>`` composes it, with no Hydra app running:
what tests, benchmarks and notebooks train from (``rmlab.run.train(compose(["task=wine"]))``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from rmlab.paths import CONFIG_DIR


def compose(overrides: Sequence[str] = (), config_dir: Path = CONFIG_DIR) -> DictConfig:
    """The root config (``config.yaml`` of ``config_dir``) with ``overrides`` applied."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        return hydra_compose("config", overrides=list(overrides))
