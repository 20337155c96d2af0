"""``checkpoints/last.ckpt``: everything an interrupted run needs to go on exactly where its last whole epoch ended.

``LastCheckpoint`` is a Lightning ``Checkpoint`` callback: Lightning calls it at an epoch's end after the module's own
epoch-end hook (the train metrics logged, the scheduler stepped) and after ``rmlab.checkpoint.Validation``, so the
file holds a whole epoch. Every ``every_n_epochs`` epochs, once at least ``min_interval_s`` seconds of training have
passed since the last write (or the start: a write costs about 10 ms even for a small MLP, as much as an epoch of a
small model, so short runs write none), it writes Lightning's own checkpoint (``Trainer.
save_checkpoint``: weights, optimizer, scheduler, the loops' epoch and step, each callback's ``state_dict``, among
them Validation's best-so-far weights and scores) with its own state added: the random states of Python, numpy and
torch (CPU and CUDA) and the generator that orders the training batches, and whether training was stopping (early
stopping). ``Trainer.fit(ckpt_path=..., weights_only=True)`` restores it; every value is a tensor, a number, a string
or a list or dict of them, so the file loads with ``torch.load(..., weights_only=True)``.

At an epoch end whose write the interval skips, it keeps instead a *snapshot* in memory: exactly what the write would
have saved (Lightning's checkpoint, captured on its way to the file, its tensors copied to the host). A run that stops
before its end (SIGTERM, Ctrl-C, an error: ``save_snapshot``, which ``rmlab.run`` calls before the run is closed) writes
that snapshot, so it loses the epoch it was in and little more. A snapshot costs a fraction of a write (about 0.5 ms
on a small MLP, ``bench/last_checkpoint.py``), which is still a quarter of an epoch of the smallest tasks: so that
snapshots take at most ``SNAPSHOT_SHARE`` of training, one is skipped while less than ``1 / SNAPSHOT_SHARE`` times the
last one's cost has passed since it (the first is always taken). Epochs longer than that (about 25 ms) are each
kept.

Only whole epochs are saved: a run stopped in the middle of an epoch resumes at the start of that epoch, which makes
the resumed run train exactly the batches, in the same order, with the same random draws, as a run that was never
interrupted.
"""

from __future__ import annotations

import copy
import random
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning.callbacks import Checkpoint

WRITE, SNAPSHOT = "write", "snapshot"
SNAPSHOT_SHARE = 0.02  # of training time, at most, spent on snapshots (see the module docstring)


def rng_state() -> dict[str, Any]:
    """The random states of Python, numpy and torch, as tensors, numbers and lists (``weights_only`` loads them)."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(words, dtype=torch.int64), "gauss_next": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class LastCheckpoint(Checkpoint):
    """Write ``path`` every ``every_n_epochs`` epochs (see the module docstring); restore its extra state on resume."""

    def __init__(self, path: Path, every_n_epochs: int, min_interval_s: float = 0.0) -> None:
        self.path = Path(path)
        self.every_n_epochs = every_n_epochs
        self.min_interval_s = min_interval_s
        self._since = time.monotonic()  # of the last write, or of the start of training
        self._kept_at = self._since  # of the last write or snapshot, or of the start of training
        self._snapshot_s = 0.0  # what the last snapshot cost
        self._trainer: pl.Trainer | None = None
        self._restored: dict[str, Any] | None = None
        self._snapshot: tuple[CheckpointIO, dict[str, Any]] | None = None  # (rank 0's writer, the checkpoint)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        # Every rank must take the same decision (writing and snapshots are collective): rank 0's clock decides, as in
        # Lightning's own ModelCheckpoint(train_time_interval=...).
        decision = trainer.strategy.broadcast(self._decide(time.monotonic()))
        if decision == WRITE:
            self.save(trainer)
            self._since = self._kept_at = time.monotonic()
            self._snapshot = None  # the file is newer
        elif decision == SNAPSHOT:
            started = time.monotonic()
            self.snapshot(trainer)
            self._kept_at = time.monotonic()
            self._snapshot_s = self._kept_at - started

    def _decide(self, now: float) -> str | None:
        if now - self._since >= self.min_interval_s:
            return WRITE
        if now - self._kept_at >= self._snapshot_s / SNAPSHOT_SHARE:
            return SNAPSHOT
        return None

    def save(self, trainer: pl.Trainer) -> None:
        """Write the checkpoint: every rank takes part, the global rank 0 writes. Lightning writes it atomically (a
        temporary file, then a rename), so an interruption while it is written leaves the previous one whole."""
        trainer.save_checkpoint(self.path)

    def snapshot(self, trainer: pl.Trainer) -> None:
        """Keep in memory what ``save`` would write now (every rank takes part, as in ``save``; rank 0 keeps it)."""
        with capturing(trainer.strategy) as captured:
            trainer.save_checkpoint(self.path)
        if captured:  # rank 0
            self._snapshot = (captured[0], captured[1])

    def save_snapshot(self) -> int | None:
        """Write the snapshot of the last epoch whose write the interval skipped, if there is one newer than the file;
        returns that epoch (numbered from 0), None if nothing was written. Rank 0 alone (the others hold none), without
        waiting for the other ranks: it is called when the run stops, where they may be gone."""
        if self._snapshot is None:
            return None
        checkpoint_io, checkpoint = self._snapshot
        checkpoint_io.save_checkpoint(checkpoint, self.path)
        self._snapshot = None
        return int(checkpoint["epoch"])

    def state_dict(self) -> dict[str, Any]:
        loader = self._trainer.train_dataloader if self._trainer is not None else None
        generator = getattr(loader, "generator", None)
        return {"rng": rng_state(), "batch_order": generator.get_state() if generator is not None else None,
                "should_stop": bool(self._trainer.should_stop) if self._trainer is not None else False}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict  # applied once training starts, after Lightning has built the training batches

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._since = self._kept_at = time.monotonic()
        if self._restored is None:
            return
        state, self._restored = self._restored, None
        generator = getattr(trainer.train_dataloader, "generator", None)
        if generator is not None and state["batch_order"] is not None:
            generator.set_state(state["batch_order"])
        trainer.should_stop = trainer.should_stop or state["should_stop"]
        set_rng_state(state["rng"])


@contextmanager
def capturing(strategy: Any) -> Iterator[list]:
    """Inside the block, what the strategy's ``CheckpointIO`` is given to write is kept instead, its tensors copied
    to the host, in the list yielded (as ``[the real CheckpointIO, checkpoint]``; empty on ranks that write nothing).
    Swapping the strategy's ``checkpoint_io`` (a public setter) lets Lightning build the checkpoint exactly as for
    the file, with its own hooks, without calling its private checkpoint builder."""
    real = strategy.checkpoint_io
    captured: list = []
    strategy.checkpoint_io = _Capture(real, captured)
    try:
        yield captured
    finally:
        strategy.checkpoint_io = real


class _Capture(CheckpointIO):
    def __init__(self, real: CheckpointIO, into: list) -> None:
        self.real, self.into = real, into

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        self.into[:] = [self.real, host_copy(checkpoint)]

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        raise RuntimeError("rmlab.last_checkpoint: nothing is loaded while a snapshot is taken")

    def remove_checkpoint(self, path: Any) -> None:
        raise RuntimeError("rmlab.last_checkpoint: nothing is removed while a snapshot is taken")


_IMMUTABLE = (bool, int, float, complex, str, bytes)


def host_copy(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """A copy of a checkpoint that shares nothing with the training state: each tensor copied to the host (once, if
    it appears twice), containers rebuilt, anything else deep-copied (the module's weights and the optimizer's
    moments change in place as training goes on; a copy on the host spares the accelerator's memory)."""
    if value is None or type(value) in _IMMUTABLE:  # most leaves: the loops' counters, the optimizer's settings
        return value
    memo = {} if memo is None else memo
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            memo[id(value)] = value.detach().to("cpu", copy=True)
        return memo[id(value)]
    if type(value) in (dict, OrderedDict):
        copied = type(value)()
        for key, item in value.items():
            copied[key] = host_copy(item, memo)
        return copied
    if type(value) in (list, tuple):
        return type(value)(host_copy(item, memo) for item in value)
    return copy.deepcopy(value)
