"""The LightningModule that trains one (loss, reward) pair on a task, and logs its metrics.

Training uses manual optimisation over chunks: Lightning hands the module a chunk of consecutive batches (see
``rmlab.data``) and the module runs one optimizer step per batch, so Lightning's per-step machinery runs once per
chunk. Gradient clipping, mixed precision and DDP gradient sync still go through Lightning (``manual_backward``,
``clip_gradients``, the wrapped optimizer); the LR scheduler is stepped once per epoch.

Gradient accumulation (``accumulate_grad_batches`` = N): the gradients of N consecutive batches are summed and one
optimizer step (with its clipping) is taken on them. Each batch's loss is weighted by its share of the group's
samples, so a group's gradient is the gradient of the mean loss over all its samples, exactly what one batch N times
larger would give; the last group of an epoch takes the batches that are left (possibly fewer, and a short last
batch). Groups may span chunks. Steps (``global_step``, ``log_every_n_steps``, ``train/loss_step``) count optimizer
steps; ``train/loss_step`` is the group's mean loss.

Metrics: ``{split}/loss`` and ``{split}/reward`` (plus the reward under its own name, ``val/accuracy``), per epoch
for every split, and ``train/loss_step`` every ``log_every_n_steps`` optimizer steps. Everything is accumulated on the
device; the host reads values once per chunk and at epoch ends, never per step.
With reward feedback, ``train/pg_loss``, ``train/sampled_reward`` and ``train/baseline`` are logged too (epoch means),
and the optimised total is ``loss_weight * loss + feedback_weight * pg_loss``; ``train/loss`` stays the task loss so
runs with and without feedback compare. On pair tasks, ``{split}/score_mean`` and ``{split}/score_std`` of the
model's scores are logged each epoch, so reward drift is visible. A NaN or infinite training loss stops the run with
``NonFiniteLossError``.
"""

import math
import time
from contextlib import nullcontext
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
                 optimizer: dict[str, Any], max_epochs: int, log_every_n_steps: int, batch_size: int,
                 gradient_clip_val: float | None = None, feedback=None, accumulate_grad_batches: int = 1) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.batch_size = batch_size
        self.gradient_clip_val = gradient_clip_val
        self.accumulate_grad_batches = accumulate_grad_batches
        # Position in the epoch, for gradient accumulation: batches trained so far, samples in the epoch, and the
        # (loss x samples, samples) of the group in progress, on the host (read with the chunk's one sync).
        self._epoch_batches = 0
        self._epoch_samples: int | None = None
        self._group_loss = [0.0, 0]
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
        self.first_step_time: float | None = None  # wall clock of the first training step (start-up benchmark)
        self.samples_trained = 0
        self.epoch_metrics: dict[str, float] = {}
        self.direct_steps = False  # decided in on_train_start

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

    def _accumulate(self, split: str, output: Tensor, target: Tensor, loss_sum: Tensor) -> None:
        """Add a batch (or a whole training chunk) to the split's sums: ``loss_sum`` is the loss summed over its
        samples; the metric is updated once with all outputs."""
        index = SPLITS.index(split)
        row = self.loss_sums[index]
        row[0] += loss_sum.detach().float()
        row[1] += target.shape[0]
        output = output.detach().float()
        self.metrics[index].update(output, target)
        if self.track_scores:
            self.score_sums[index] += torch.stack([output.sum(), output.pow(2).sum()]) / 2

    def _end_epoch(self, split: str) -> None:
        """Compute the split's epoch metrics, read them in one host sync, and send them straight to the logger.

        Lightning's ``self.log`` costs about 0.5 ms a call (it moves its whole result collection each time), so only
        the progress bar's ``val/reward`` goes through it. The latest value of every metric stays in
        ``epoch_metrics``, where the epoch-end callbacks and ``rmlab.run`` read them.
        """
        index = SPLITS.index(split)
        total, count = self.loss_sums[index]
        values = {f"{split}/loss": total / count.clamp_min(1), f"{split}/reward": self.metrics[index].compute()}
        values[f"{split}/{self.reward.name}"] = values[f"{split}/reward"]
        if self.feedback is not None and split == "train":
            sums = self.feedback_sums / count.clamp_min(1)
            values.update({f"train/{term}": value for term, value in zip(FEEDBACK_TERMS, sums)})
        if self.track_scores:
            first, second = self.score_sums[index] / count.clamp_min(1)
            values[f"{split}/score_mean"] = first
            values[f"{split}/score_std"] = (second - first**2).clamp_min(0).sqrt()
        numbers = dict(zip(values, torch.stack([v.float().reshape(()) for v in values.values()]).tolist()))
        if self.logger is not None:
            self.logger.log_metrics({**numbers, "epoch": self.current_epoch}, step=self.global_step)
        self.epoch_metrics.update(numbers)
        if split == "val" and self.trainer.progress_bar_callback is not None:
            self.log("val/reward", numbers["val/reward"], prog_bar=True, logger=False)

    # -- training ------------------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._start_epoch("train")
        self._epoch_batches = 0
        self._group_loss = [0.0, 0]
        # Samples this rank trains on this epoch (rmlab.data.TensorBatches knows): where the last group ends.
        self._epoch_samples = getattr(self.trainer.train_dataloader, "samples", None)
        if self.accumulate_grad_batches > 1 and self._epoch_samples is None:
            raise TypeError("accumulate_grad_batches > 1 needs rmlab's TensorBatches as the training data (it knows "
                            "where an epoch ends)")

    def _group(self, size: int) -> tuple[bool, bool, float | None]:
        """For the next batch (``size`` samples): (first of its accumulation group, last of it, weight of its loss:
        its share of the group's samples; None without accumulation)."""
        n = self.accumulate_grad_batches
        index = self._epoch_batches
        self._epoch_batches += 1
        if n == 1:
            return True, True, None
        start = (index // n) * n * self.batch_size  # the group's first sample in the epoch
        group_samples = min(start + n * self.batch_size, self._epoch_samples) - start
        last = index % n == n - 1 or (index + 1) * self.batch_size >= self._epoch_samples
        return index % n == 0, last, size / group_samples

    def training_step(self, chunk: tuple[Tensor, Tensor], chunk_idx: int) -> None:
        xs, ys = chunk
        if self.first_step_time is None:
            self.first_step_time = time.time()
        self.samples_trained += ys.shape[0]
        optimizer = self.optimizers()
        outputs, losses, sizes, steps = [], [], [], []
        first_step = self.global_step
        for start in range(0, ys.shape[0], self.batch_size):
            x, y = xs[start:start + self.batch_size], ys[start:start + self.batch_size]
            first, last, weight = self._group(y.shape[0])
            output = self.model(x)
            loss = self.loss_fn(output, y)
            total = loss
            if self.feedback is not None:
                feedback = self.feedback(output, y, self.reward)
                total = self.feedback.combine(loss, feedback.pg_loss)
                terms = torch.stack([feedback.pg_loss.detach(), feedback.sampled_reward, feedback.baseline])
                self.feedback_sums += terms.float() * y.shape[0]
            if weight is not None:
                total = total * weight
            if first:
                optimizer.zero_grad(set_to_none=True)
            if self.direct_steps:
                total.backward()
                if last:
                    self._direct_step(optimizer)
            else:
                self.manual_backward(total)
                if last:
                    optimizer.step()  # clips in on_before_optimizer_step
            outputs.append(output.detach())
            losses.append(loss.detach())
            sizes.append(y.shape[0])
            steps.append(last)
        self._accumulate_chunk(torch.cat(outputs), ys, torch.stack(losses).float(), sizes, steps, first_step)

    def on_before_optimizer_step(self, optimizer) -> None:
        # Here, not right after manual_backward: under 16-mixed Lightning unscales the gradients just before this
        # hook, so the norm clipped is the true one, not one scaled by the loss scale.
        if self.gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")

    def on_train_start(self) -> None:
        # On one device in plain fp32/fp64 there is nothing for Lightning's backward and step wrappers to do (no
        # gradient scaler, no DDP sync), yet they cost about 60 us a step in hook dispatch: step directly there.
        from pytorch_lightning.plugins.precision import Precision
        from pytorch_lightning.strategies import SingleDeviceStrategy

        strategy = self.trainer.strategy
        self.direct_steps = type(strategy) is SingleDeviceStrategy and type(strategy.precision_plugin) is Precision

    def _direct_step(self, optimizer) -> None:
        if self.gradient_clip_val is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters(), self.gradient_clip_val)
        # The manual-optimisation loop's own step bookkeeping (it advances trainer.global_step).
        optimizer._on_before_step()
        optimizer.optimizer.step()
        optimizer._on_after_step()

    def _accumulate_chunk(self, outputs: Tensor, targets: Tensor, losses: Tensor, sizes: list[int],
                          steps: list[bool], first_step: int) -> None:
        """Book a whole chunk at once: one metric update, one loss sum, one host read (for the NaN check and the
        per-step log points). ``steps[i]``: batch i ended an optimizer step."""
        weights = torch.tensor(sizes, dtype=losses.dtype, device=losses.device)
        self._accumulate("train", outputs, targets, (losses * weights).sum())
        values = losses.tolist()  # the chunk's only sync
        step = first_step
        points = []  # (optimizer step, its mean loss over the group's samples)
        for value, size, ends in zip(values, sizes, steps):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"train/loss became {value} at step {step + 1} (epoch {self.current_epoch}); "
                    "the run is stopped. Try a lower optimizer.lr, trainer.gradient_clip_val, or precision=32-true."
                )
            self._group_loss[0] += value * size
            self._group_loss[1] += size
            if ends:
                step += 1
                # One batch: its own value, so a plain run logs exactly the loss it computed.
                mean = value if self._group_loss[1] == size else self._group_loss[0] / self._group_loss[1]
                points.append((step, mean))
                self._group_loss = [0.0, 0]
        if self.logger is not None:
            for step, value in points:
                if step % self.log_every_n_steps == 0:
                    self.logger.log_metrics({"train/loss_step": value}, step=step)
        if self.trainer.progress_bar_callback is not None and points:
            self.log("train/loss_step", points[-1][1], prog_bar=True, logger=False)

    def on_train_epoch_end(self) -> None:
        self._end_epoch("train")
        scheduler = self.lr_schedulers()
        if scheduler is not None:  # manual optimisation: Lightning leaves the scheduler to us
            scheduler.step()

    # -- evaluation ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str, batches) -> dict[str, float]:
        """Run ``split`` ("val" or "test") over ``batches`` in eval mode, log its metrics, return them.

        Called by ``rmlab.checkpoint.Validation`` at each epoch end and by ``rmlab.run`` for the test, instead of
        Lightning's evaluation loops, which cost about 4 ms of bookkeeping per epoch: more than evaluating a small
        model. Lightning's precision plugin still sets the autocast context.
        """
        was_training = self.training
        self.eval()
        self._start_epoch(split)
        context = self.trainer.precision_plugin.forward_context() if self._trainer is not None else nullcontext()
        with context:
            for x, y in batches:
                if self._trainer is not None:  # e.g. 64-true / bf16-true: the model's dtype, as Lightning's loops do
                    x = self.trainer.precision_plugin.convert_input(x)
                output = self.model(x)
                self._accumulate(split, output, y, self.loss_fn(output, y) * y.shape[0])
        self._end_epoch(split)
        self.train(was_training)
        return {k: v for k, v in self.epoch_metrics.items() if k.startswith(f"{split}/")}
