"""What happens at the end of each training epoch: validation, then the best weights, early stopping and pruning.

``Validation`` runs the validation split through ``ObjectiveModule.evaluate`` (Lightning's own validation loop costs
about 4 ms of bookkeeping per epoch, more than a small model's evaluation), then acts on ``val/reward``:
- keeps the weights with the best value in memory: Lightning's ModelCheckpoint writes a full checkpoint (optimizer,
  loops, callbacks) every time the metric improves, which on small models costs more than training; here an
  improvement copies the module's tensors on the device, and ``best.ckpt`` is written once, after fit;
- stops training after ``patience`` epochs without an improvement of at least ``min_delta`` (early stopping);
- reports the value to the job's Optuna trial and stops a trial the study's pruner gives up on.

A NaN or infinite ``val/reward`` is the worst value there is: it never becomes the best (``score > nan`` is never
true, so a NaN kept as best would freeze the selection), any finite value beats it, and it counts as a validation
without improvement for early stopping.

**Selection.** The weights that are tested, and the validation reward that goes with them, come from the same epoch
(``selected()``): with ``keep_best`` the best epoch's (tag ``rmlab.selection=best``), else the last validated epoch's
(``last``; also when no validation gave a finite value). ``rmlab.run`` logs that value as ``val/selected_reward``,
the metric sweeps and the Optuna objective select on.
"""

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

MONITOR = "val/reward"


class Validation(pl.Callback):
    def __init__(self, val_batches, every_n_epochs: int = 1, keep_best: bool = True, patience: int | None = None,
                 min_delta: float = 0.0, optuna_cfg: Any = None) -> None:
        self.val_batches = val_batches  # a callable returning the validation batches
        self.every_n_epochs = every_n_epochs
        self.keep_best = keep_best
        self.patience, self.min_delta = patience, min_delta
        self.optuna_cfg = optuna_cfg
        self.best_score: float | None = None  # finite, or None while no validation gave a finite value
        self.best_epoch: int | None = None
        self.last_score: float | None = None
        self.last_epoch: int | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.stale_epochs = 0

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs and not last:
            return
        score = module.evaluate("val", self.val_batches())[MONITOR]
        self.last_score, self.last_epoch = score, epoch
        finite = math.isfinite(score)  # NaN and +-inf are the worst value: never the best
        first = self.best_score is None
        # Early stopping counts only improvements of at least min_delta (as Lightning's EarlyStopping does) ...
        significant = finite and (first or score > self.best_score + self.min_delta)
        self.stale_epochs = 0 if significant else self.stale_epochs + 1
        # ... while any improvement updates the best weights.
        if finite and (first or score > self.best_score):
            self.best_score, self.best_epoch = score, epoch
            if self.keep_best:
                self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        if self.patience is not None and self.stale_epochs >= self.patience:
            trainer.should_stop = True
        if self.optuna_cfg:
            self._prune(score, epoch)

    # Lightning saves and restores a callback's state with the run's checkpoint (rmlab.last_checkpoint): an
    # interrupted run resumes with the best-so-far weights and scores it had.
    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "last_score": self.last_score,
                "last_epoch": self.last_epoch, "stale_epochs": self.stale_epochs, "state": self.state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score, self.best_epoch = state_dict["best_score"], state_dict["best_epoch"]
        self.last_score, self.last_epoch = state_dict["last_score"], state_dict["last_epoch"]
        self.stale_epochs = state_dict["stale_epochs"]
        self.state = state_dict["state"]

    def _prune(self, score: float, epoch: int) -> None:
        from hydra_plugins.rmlab_optuna_sweeper import report_and_should_prune

        if report_and_should_prune(self.optuna_cfg, epoch, score):
            import optuna

            raise optuna.TrialPruned(f"{MONITOR}={score:.4f} at epoch {epoch}")

    def selected(self) -> tuple[str, float | None, int | None]:
        """(selection, val/reward, epoch) of the weights that are tested: ``best`` when the best weights were kept,
        else ``last`` (the weights training ended with, and the last validation's value)."""
        if self.keep_best and self.state is not None:
            return "best", self.best_score, self.best_epoch
        return "last", self.last_score, self.last_epoch

    def restore(self, module: pl.LightningModule) -> None:
        """Load the best weights back into ``module`` (no-op if none were kept)."""
        if self.state is not None:
            module.load_state_dict(self.state)

    def save(self, path: Path, extra: dict[str, Any] | None = None) -> Path | None:
        """Write the best weights with their epoch and score (and ``extra`` entries: plain values, loadable with
        ``weights_only=True``); returns the file, or None if none were kept."""
        if self.state is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {k: v.cpu() for k, v in self.state.items()}, "epoch": self.best_epoch,
                    MONITOR: self.best_score, **(extra or {})}, path)
        return path
