"""The LightningModule that trains one (loss, reward) pair on a task, and logs what DESIGN.md names.

Metrics: ``{split}/loss`` and ``{split}/reward`` (plus the reward under its own name, ``val/accuracy``), per epoch
for every split, and ``train/loss`` per step every ``log_every_n_steps``. Everything is accumulated on the device;
the host reads values only when it logs them (every ``log_every_n_steps`` steps and at epoch ends), never per step.
With reward feedback, ``train/pg_loss``, ``train/sampled_reward`` and ``train/baseline`` are logged too (epoch means),
and the optimised total is ``loss_weight * loss + feedback_weight * pg_loss``; ``train/loss`` stays the task loss so
runs with and without feedback compare. On pair tasks, ``{split}/score_mean`` and ``{split}/score_std`` of the
model's scores are logged each epoch, so reward drift is visible. A NaN or infinite training loss stops the run with
``NonFiniteLossError``.
"""

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from rmlab.errors import NonFiniteLossError
from rmlab.kinds import PAIR, TaskInfo
from rmlab.optim import build_optimizer

SPLITS = ("train", "val", "test")
FEEDBACK_TERMS = ("pg_loss", "sampled_reward", "baseline")


class ObjectiveModule(pl.LightningModule):
    """model + loss + reward (+ optional reward feedback) as one LightningModule."""

    def __init__(self, model: torch.nn.Module, loss: torch.nn.Module, reward, info: TaskInfo,
                 optimizer: dict[str, Any], max_epochs: int, log_every_n_steps: int, feedback=None) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss
        self.reward = reward
        self.feedback = feedback
        self.optimizer_cfg = optimizer
        self.max_epochs = max_epochs
        self.log_every_n_steps = log_every_n_steps
        # A list, not a ModuleDict: "train" would clash with nn.Module.train.
        self.metrics = torch.nn.ModuleList([reward.metric(info) for _ in SPLITS])
        # Per split: (sum of loss x batch size, sample count), on the device, read once per logging interval or
        # epoch. Separate rows because validation runs inside the training epoch.
        self.register_buffer("loss_sums", torch.zeros(len(SPLITS), 2), persistent=False)
        # Feedback terms (training only) and, on pair tasks, the first two moments of the scores per split: sums
        # weighted by batch size, divided by the sample count at epoch end.
        self.register_buffer("feedback_sums", torch.zeros(len(FEEDBACK_TERMS)), persistent=False)
        self.track_scores = info.output_kind == PAIR
        self.register_buffer("score_sums", torch.zeros(len(SPLITS), 2), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def configure_optimizers(self) -> dict[str, Any]:
        return build_optimizer(self.parameters(), self.optimizer_cfg, self.max_epochs)

    # -- shared accumulation ------------------------------------------------------------------------------------
    def _start_epoch(self, split: str) -> None:
        index = SPLITS.index(split)
        self.loss_sums[index].zero_()
        self.score_sums[index].zero_()
        self.metrics[index].reset()
        if split == "train":
            self.feedback_sums.zero_()

    def _accumulate(self, split: str, output: Tensor, target: Tensor, loss: Tensor) -> None:
        n = target.shape[0]
        index = SPLITS.index(split)
        row = self.loss_sums[index]
        row[0] += loss.detach().float() * n
        row[1] += n
        output = output.detach().float()
        self.metrics[index].update(output, target)
        if self.track_scores:
            self.score_sums[index] += torch.stack([output.sum(), output.pow(2).sum()]) / 2

    def _end_epoch(self, split: str) -> None:
        total, count = self.loss_sums[SPLITS.index(split)]
        mean_loss = total / count.clamp_min(1)
        if split == "train":
            self._check_finite(mean_loss)
        reward = self.metrics[SPLITS.index(split)].compute()
        values = {f"{split}/loss": mean_loss.float(), f"{split}/reward": reward.float()}
        values[f"{split}/{self.reward.name}"] = values[f"{split}/reward"]
        if self.feedback is not None and split == "train":
            sums = self.feedback_sums / count.clamp_min(1)
            values.update({f"train/{term}": value for term, value in zip(FEEDBACK_TERMS, sums)})
        if self.track_scores:
            first, second = self.score_sums[SPLITS.index(split)] / count.clamp_min(1)
            values[f"{split}/score_mean"] = first
            values[f"{split}/score_std"] = (second - first**2).clamp_min(0).sqrt()
        self.log_dict(values, on_step=False, on_epoch=True, prog_bar=split != "test")

    def _check_finite(self, loss: Tensor) -> None:
        if not torch.isfinite(loss):  # one host sync, at a logging step or an epoch end only
            raise NonFiniteLossError(
                f"train/loss became {float(loss)} by step {self.global_step} (epoch {self.current_epoch}); "
                "the run is stopped. Try a lower optimizer.lr, trainer.gradient_clip_val, or precision=32-true."
            )

    # -- training ------------------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._start_epoch("train")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        output = self.model(x)
        loss = self.loss_fn(output, y)
        total = loss
        if self.feedback is not None:
            feedback = self.feedback(output, y, self.reward)
            total = self.feedback.combine(loss, feedback.pg_loss)
            terms = torch.stack([feedback.pg_loss.detach(), feedback.sampled_reward, feedback.baseline])
            self.feedback_sums += terms.float() * y.shape[0]
        self._accumulate("train", output, y, loss)
        if (self.global_step + 1) % self.log_every_n_steps == 0:
            self._check_finite(self.loss_sums[0, 0])
            # Lightning sends on_step values to the logger on exactly these steps.
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return total

    def on_train_epoch_end(self) -> None:
        self._end_epoch("train")

    # -- evaluation ----------------------------------------------------------------------------------------------
    def _eval_step(self, split: str, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        output = self.model(x)
        self._accumulate(split, output, y, self.loss_fn(output, y))

    def on_validation_epoch_start(self) -> None:
        self._start_epoch("val")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._end_epoch("val")

    def on_test_epoch_start(self) -> None:
        self._start_epoch("test")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._end_epoch("test")
