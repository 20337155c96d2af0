"""Keep the weights with the best ``val/reward``, in memory during training, on disk once at the end.

Lightning's ModelCheckpoint writes a full checkpoint (optimizer, loops, callbacks) every time the monitored metric
improves; on small models that I/O costs more than the training itself. Here an improvement only copies the
module's tensors on the device; the file ``best.ckpt`` (weights, epoch, score) is written once, after fit.
"""

from pathlib import Path

import pytorch_lightning as pl
import torch


class BestWeights(pl.Callback):
    """Tracks the best value of ``monitor`` (higher is better) and the module's weights at that epoch."""

    def __init__(self, monitor: str = "val/reward") -> None:
        self.monitor = monitor
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def restore(self, module: pl.LightningModule) -> None:
        """Load the best weights back into ``module`` (no-op if validation never ran)."""
        if self.state is not None:
            module.load_state_dict(self.state)

    def save(self, path: Path) -> Path | None:
        """Write the best weights with their epoch and score; returns the file, or None if there is nothing yet."""
        if self.state is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {k: v.cpu() for k, v in self.state.items()}, "epoch": self.best_epoch,
                    self.monitor: self.best_score}, path)
        return path
