"""Feeding a task's tensors to Lightning: device-resident splits, batches as slices, no per-sample collation.

Small datasets fit on the training device, so each epoch does one gather (a seeded permutation) and then hands out
contiguous slices, which are views: a batch costs no copy and no host-device transfer. Training batches are grouped
into chunks of ``steps_per_chunk`` batches: Lightning sees one "batch" per chunk, and the module runs one optimizer
step per batch inside it, so Lightning's per-step overhead (hooks, logging bookkeeping, about 0.5 ms) is paid once per
chunk instead of once per optimizer step.
"""

from collections.abc import Iterator

import pytorch_lightning as pl
import torch
from torch import Tensor


class TensorBatches:
    """An iterable of (x, y) chunks over tensors that already live on the training device.

    Each chunk holds ``steps_per_chunk`` consecutive batches of ``batch_size`` (the last may be shorter).
    ``shuffle``: a new permutation each epoch from a generator seeded with ``seed``, so batch order is reproducible.
    ``max_batches``: stop an epoch after this many batches (limit_train_batches, fast_dev_run).
    ``rank``/``world_size``: under data parallelism each rank takes its own contiguous share of every permutation.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool, seed: int = 0, steps_per_chunk: int = 1,
                 max_batches: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.rank, self.world_size = rank, world_size
        per_rank = len(x) // world_size if world_size > 1 else len(x)
        batches = -(-per_rank // batch_size)
        if max_batches is not None:
            batches = min(batches, max_batches)
        self.samples = min(per_rank, batches * batch_size)
        self.chunk = steps_per_chunk * batch_size
        self.per_rank = per_rank

    def __len__(self) -> int:
        return -(-self.samples // self.chunk)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        x, y = self.x, self.y
        if self.shuffle:
            perm = torch.randperm(len(x), generator=self.generator).to(x.device, non_blocking=True)
            x, y = x[perm], y[perm]
        offset = self.rank * self.per_rank
        for start in range(offset, offset + self.samples, self.chunk):
            stop = min(start + self.chunk, offset + self.samples)
            yield x[start:stop], y[start:stop]


def limited_batches(limit: int | float | None, total: int) -> int | None:
    """Batches per epoch for Lightning-style ``limit_train_batches``: a count, a fraction of ``total``, or None."""
    if limit is None:
        return None
    if isinstance(limit, float) and limit <= 1.0:
        return max(1, int(limit * total))
    return int(limit)


class TaskDataModule(pl.LightningDataModule):
    """Wraps an rmlab Task: moves its splits to the trainer's device once and serves index-slice batches."""

    def __init__(self, task, seed: int, steps_per_chunk: int = 1, limit_train_batches: int | float | None = None,
                 eval_batch_size: int = 1024) -> None:
        super().__init__()
        self.task = task
        self.seed = seed
        self.steps_per_chunk = steps_per_chunk
        self.limit_train_batches = limit_train_batches
        self.eval_batch_size = max(eval_batch_size, task.batch_size)
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.splits = {name: (split.x.to(device), split.y.to(device)) for name, split in self.task.load().items()}

    def train_dataloader(self) -> TensorBatches:
        x, y = self.splits["train"]
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        total = -(-len(x) // (world * self.task.batch_size))
        fast = int(trainer.fast_dev_run) if trainer is not None else 0  # fast_dev_run=n: n batches (true: 1)
        limit = fast or limited_batches(self.limit_train_batches, total)
        return TensorBatches(x, y, self.task.batch_size, shuffle=True, seed=self.seed,
                             steps_per_chunk=self.steps_per_chunk, max_batches=limit, rank=rank, world_size=world)

    # Evaluation is run by the module itself (ObjectiveModule.evaluate), whole on every rank: the metrics are then
    # exact without a cross-rank reduction. Not Lightning's val/test dataloader hooks on purpose (see rmlab.checkpoint).
    def val_batches(self) -> TensorBatches:
        return TensorBatches(*self.splits["val"], self.eval_batch_size, shuffle=False)

    def test_batches(self) -> TensorBatches:
        self.setup()
        return TensorBatches(*self.splits["test"], self.eval_batch_size, shuffle=False)
