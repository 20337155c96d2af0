"""Feeding a task's tensors to Lightning: device-resident splits, batches as slices, no per-sample collation.

Small datasets fit on the training device, so each epoch does one gather (a seeded permutation) and then hands out
contiguous slices, which are views: a batch costs no copy and no host-device transfer.
"""

from collections.abc import Iterator

import pytorch_lightning as pl
import torch
from torch import Tensor


class TensorBatches:
    """An iterable of (x, y) batches over tensors that already live on the training device.

    ``shuffle``: a new permutation each epoch from a generator seeded with ``seed``, so batch order is reproducible.
    ``rank``/``world_size``: under data parallelism each rank takes its own contiguous share of every permutation.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.rank, self.world_size = rank, world_size
        self.per_rank = len(x) // world_size if world_size > 1 else len(x)

    def __len__(self) -> int:
        return -(-self.per_rank // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        x, y = self.x, self.y
        if self.shuffle:
            perm = torch.randperm(len(x), generator=self.generator).to(x.device, non_blocking=True)
            x, y = x[perm], y[perm]
        if self.world_size > 1:
            start = self.rank * self.per_rank
            x, y = x[start:start + self.per_rank], y[start:start + self.per_rank]
        for start in range(0, self.per_rank, self.batch_size):
            yield x[start:start + self.batch_size], y[start:start + self.batch_size]


class TaskDataModule(pl.LightningDataModule):
    """Wraps an rmlab Task: moves its splits to the trainer's device once and serves index-slice batches."""

    def __init__(self, task, seed: int, eval_batch_size: int = 1024) -> None:
        super().__init__()
        self.task = task
        self.seed = seed
        self.eval_batch_size = max(eval_batch_size, task.batch_size)
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.splits = {name: (split.x.to(device), split.y.to(device)) for name, split in self.task.load().items()}

    def _batches(self, split: str, batch_size: int, shuffle: bool) -> TensorBatches:
        x, y = self.splits[split]
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        # Evaluation runs whole on every rank: the metrics are then exact without a cross-rank reduction.
        if not shuffle:
            rank, world = 0, 1
        return TensorBatches(x, y, batch_size, shuffle, seed=self.seed, rank=rank, world_size=world)

    def train_dataloader(self) -> TensorBatches:
        return self._batches("train", self.task.batch_size, shuffle=True)

    def val_dataloader(self) -> TensorBatches:
        return self._batches("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> TensorBatches:
        return self._batches("test", self.eval_batch_size, shuffle=False)
