"""Lightning's external callback factories, looked up once per process instead of at every ``Trainer``.

Each ``pytorch_lightning.Trainer`` asks ``importlib.metadata.entry_points`` for the group
``pytorch_lightning.callbacks_factory``, which reads the metadata of every installed distribution: 4 ms of the
4.5 ms a Trainer cost on this project's machine (216 distributions installed), paid again by every job of a sweep.
The installed distributions do not change under a running process, so ``install`` keeps the answer per group: the
factories found are still called for every Trainer (each gets new callbacks), as Lightning does.

Lightning reads the function through its private module ``lightning_fabric.utilities.registry``; a test fails if it
stops doing so (the lookup is then simply paid again, as before).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata
from typing import Any


def install() -> None:
    """Make Lightning's lookup of callback factories a per-process one (idempotent)."""
    from lightning_fabric.utilities import registry

    registry.entry_points = entry_points


def entry_points(**selection: Any) -> Any:
    """``importlib.metadata.entry_points``, the answer for one group kept for the life of the process."""
    if set(selection) == {"group"}:
        return metadata.EntryPoints(_group(selection["group"]))  # a copy: the kept answer is nobody's to change
    return metadata.entry_points(**selection)


@lru_cache(maxsize=None)
def _group(group: str) -> Any:
    return metadata.entry_points(group=group)
