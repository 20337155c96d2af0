"""The Lightning side of sequence tasks: ``SequenceModule`` (training and evaluation of a language model) and
``SequenceDataModule`` (a task's tokenised splits on the training device).

``SequenceModule`` is an ``ObjectiveModule``: the same chunked manual optimisation (one optimizer step per batch of
a chunk, or per ``accumulate_grad_batches`` batches, each batch weighed by its share of the group's sequences;
clipping, precision, DDP through Lightning), the same loss bookkeeping, NaN check and per-step logging. What
differs is what a batch is (``rmlab.sequence_data``) and what evaluation does:

- ``{split}/loss``: the loss, teacher-forced on the reference completions;
- ``{split}/perplexity``: exp of the mean negative log-likelihood of the reference completion tokens (whatever the
  loss is);
- ``{split}/reward`` (and under the reward's own name): the reward of completions generated for the split's
  prompts with the ``generation`` settings, scored against the examples; it selects the best checkpoint;
- ``{split}/completion_length``: mean generated tokens per completion (EOS included);
- ``{split}/<term>`` for each term of a combined reward, and ``{split}/gold_reward`` on a task with a hidden true
  reward (``rmlab.rewards.extras``): means over the split's completions;
- a table of sample generations (prompt, completion, reference, reward, and gold_reward where the task has one;
  for val also the epoch, numbered as the ``epoch`` metric) for the split's first ``generation.log_samples``
  examples, appended to the run's ``samples/<split>.json`` at each evaluation.

Without feedback training never generates, so the training split logs ``train/loss`` only (a reward on training
prompts would cost a generation pass over the whole training set every epoch). With reward feedback
(``feedback=reinforce|rloo|grpo``, ``rmlab.sequence_policy``) each training batch is a batch of prompts: the step
samples completions, scores them with the reward and updates the policy, and logs every ``log_every_n_steps``
optimizer steps ``train/loss_step`` and the policy step's metrics as ``train/<name>`` (``sampled_reward``,
``reward_std``, ``kl``, ``kl_sequence``, ``entropy``, ``completion_length``, ``zero_std_groups``, ``clip_fraction``,
``pg_loss``, ``advantage_std``: those of the generation batch that ended the step), and per epoch ``train/reward``
(the reward of the epoch's sampled completions) beside ``train/loss``. Validation and test stay greedy (the
``generation`` settings) and select checkpoints as without feedback.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from rmlab.data import limited_batches
from rmlab.errors import NonFiniteLossError
from rmlab.generation import GenerationConfig, decode, generate
from rmlab.kinds import TaskInfo
from rmlab.module import SPLITS, ObjectiveModule
from rmlab.rewards.extras import GOLD, extra_names, score_with_extras
from rmlab.sequence import IGNORE_INDEX
from rmlab.sequence_data import EvalBatches, PromptChunk, TokenChunk, TokenizedSplit, TrainBatches

TOKEN_TERMS = ("nll", "tokens", "generated", "completions")
REFERENCE_POLICY_KEY = "rmlab_reference_policy"  # the frozen reference policy's weights in a checkpoint


class SequenceModule(ObjectiveModule):
    """A language model + a token-level loss + a text reward (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, loss: torch.nn.Module, reward: Any, info: TaskInfo,
                 optimizer: dict[str, Any], max_epochs: int, log_every_n_steps: int, batch_size: int,
                 generation: GenerationConfig, gradient_clip_val: float | None = None,
                 accumulate_grad_batches: int = 1, feedback: Any = None) -> None:
        super().__init__(model, loss, reward, info, optimizer=optimizer, max_epochs=max_epochs,
                         log_every_n_steps=log_every_n_steps, batch_size=batch_size,
                         gradient_clip_val=gradient_clip_val, accumulate_grad_batches=accumulate_grad_batches,
                         feedback=feedback)
        # The frozen reference policy (reward feedback only), made as training starts. Kept in __dict__, out of the
        # module tree: neither trained, nor saved with the module, nor counted as its parameters.
        self.__dict__["reference_policy"] = None
        self._saved_reference: dict[str, Tensor] | None = None
        self._policy_logged_step = 0  # the optimizer step of the last per-step log point (reward feedback)
        self.generation = generation
        self.info = info
        self.tokenizer = model.tokenizer
        self.tokens_trained = 0
        # Per split: summed NLL of the reference tokens, their count, generated tokens, generated completions.
        self.register_buffer("token_sums", torch.zeros(len(SPLITS), len(TOKEN_TERMS)), persistent=False)
        # Per split: the sums of the extras logged beside the reward (a combined reward's terms, the gold reward).
        self.extra_names = extra_names(reward, info)
        self.register_buffer("extra_sums", torch.zeros(len(SPLITS), len(self.extra_names)), persistent=False)

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model(ids, attention_mask)

    @property
    def policy(self):
        """The policy-optimisation algorithm of the run's feedback (None without feedback)."""
        if self.feedback is None:
            return None
        from rmlab.policy import as_policy

        return as_policy(self.feedback)

    # -- training ------------------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        super().on_train_start()
        self._policy_logged_step = self.global_step
        if self.feedback is not None and self.reference_policy is None:
            from rmlab.sequence_policy import frozen_copy

            reference = frozen_copy(self.model)
            if self._saved_reference is not None:  # a resumed run: the reference of the run's start
                reference.load_state_dict(self._saved_reference)
                self._saved_reference = None
            self.__dict__["reference_policy"] = reference

    # A resumed run must keep the reference policy of the run's start (the init_from or fresh weights), not take the
    # resumed weights as a new one: its weights travel in Lightning's checkpoint (tensors: weights_only=True loads).
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.reference_policy is not None:
            checkpoint[REFERENCE_POLICY_KEY] = {k: v.detach().cpu() for k, v in
                                                self.reference_policy.state_dict().items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._saved_reference = checkpoint.get(REFERENCE_POLICY_KEY)

    def training_step(self, chunk: TokenChunk, chunk_idx: int) -> None:
        if self.feedback is not None:
            self._policy_training_step(chunk)
            return
        ids, labels, widths, tokens = chunk
        if self.first_step_time is None:
            self.first_step_time = time.time()
        self.samples_trained += ids.shape[0]
        self.tokens_trained += tokens
        optimizer = self.optimizers()
        losses, sizes, steps = [], [], []
        first_step = self.global_step
        for step, width in enumerate(widths):
            start = step * self.batch_size
            x = ids[start:start + self.batch_size, :width]
            y = labels[start:start + self.batch_size, :width]
            loss = self.loss_fn(self.model(x), y)
            steps.append(self._optimize(optimizer, loss, x.shape[0]))
            losses.append(loss.detach())
            sizes.append(x.shape[0])
        self._accumulate_chunk(None, labels, torch.stack(losses).float(), sizes, steps, first_step)

    def _policy_training_step(self, chunk: PromptChunk) -> None:
        """Reward feedback: each batch of the chunk is a batch of prompts (``rmlab.sequence_policy``)."""
        from rmlab.sequence_policy import run_policy_batch

        if self.first_step_time is None:
            self.first_step_time = time.time()
        self.samples_trained += chunk.ids.shape[0]
        self.tokens_trained += chunk.tokens
        optimizer = self.optimizers()
        algorithm = self.policy
        full = chunk.prompt_ids.shape[1]
        step = self.global_step
        batches: list[tuple[int, int, Tensor, dict[str, Tensor]]] = []  # (rows, step after it, loss, metrics)
        for index, (width, prompt_width) in enumerate(zip(chunk.widths, chunk.prompt_widths)):
            rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
            x, y = chunk.ids[rows, :width], chunk.labels[rows, :width]
            out = run_policy_batch(self, algorithm, self.reference_policy, x, y,
                                   chunk.prompt_ids[rows, full - prompt_width:],
                                   chunk.prompt_mask[rows, full - prompt_width:], chunk.examples[rows], optimizer)
            self.metrics[0].update(out.rewards)
            step += out.steps
            batches.append((x.shape[0], step, out.loss, out.metrics))
        self._book_policy_chunk(chunk.labels, batches)

    def _book_policy_chunk(self, labels: Tensor, batches: list[tuple[int, int, Tensor, dict[str, Tensor]]]) -> None:
        """The chunk's loss sums, NaN check and per-step log points, with one host read."""
        names = sorted({name for *_, metrics in batches for name in metrics})
        rows = torch.tensor([size for size, *_ in batches], dtype=torch.float32, device=labels.device)
        losses = torch.stack([loss.float() for _, _, loss, _ in batches])
        self._accumulate("train", None, labels, (losses * rows).sum())
        table = torch.stack([torch.stack([loss.float(), *(m.get(n, loss.new_tensor(math.nan)).float()
                                                          for n in names)]) for _, _, loss, m in batches])
        values = table.tolist()  # the chunk's only sync
        for (_, step, _, _), (loss, *metrics) in zip(batches, values):
            pg_loss = metrics[names.index("pg_loss")] if "pg_loss" in names else 0.0
            if not (math.isfinite(loss) and math.isfinite(pg_loss)):
                what, value = ("train/loss", loss) if not math.isfinite(loss) else ("train/pg_loss", pg_loss)
                raise NonFiniteLossError(
                    f"{what} became {value} at step {step} (epoch {self.current_epoch}); the run is stopped. Try a "
                    "lower optimizer.lr, trainer.gradient_clip_val, a smaller feedback.epsilon, or precision=32-true.")
        start = self._policy_logged_step
        for (_, step, _, _), (loss, *metrics) in zip(batches, values):
            # Log the batch that crossed a multiple of log_every_n_steps (a batch may take several steps).
            if step // self.log_every_n_steps > start // self.log_every_n_steps:
                point = {"train/loss_step": loss, **{f"train/{n}": v for n, v in zip(names, metrics)
                                                    if math.isfinite(v)}}
                if self.logger is not None:
                    self.logger.log_metrics(point, step=step)
            start = step
        self._policy_logged_step = start
        if self.trainer.progress_bar_callback is not None and values:
            self.log("train/sampled_reward", values[-1][1 + names.index("sampled_reward")], prog_bar=True,
                     logger=False)

    def _accumulate(self, split: str, output: Tensor | None, target: Tensor, loss_sum: Tensor,
                    count: Tensor | None = None) -> None:
        """Add ``loss_sum`` (summed over ``count`` units: by default the ``target`` rows) to the split's loss; the
        reward is booked apart."""
        row = self.loss_sums[SPLITS.index(split)]
        row[0] += loss_sum.detach().float()
        row[1] += target.shape[0] if count is None else count

    def _start_epoch(self, split: str) -> None:
        super()._start_epoch(split)
        self.token_sums[SPLITS.index(split)].zero_()
        self.extra_sums[SPLITS.index(split)].zero_()

    def _epoch_values(self, split: str) -> dict[str, Tensor]:
        index = SPLITS.index(split)
        total, count = self.loss_sums[index]
        values = {f"{split}/loss": total / count.clamp_min(1)}
        if split == "train" and self.feedback is not None:  # the reward of the completions sampled this epoch
            values["train/reward"] = self.metrics[index].compute()
        if split != "train":
            nll, tokens, generated, completions = self.token_sums[index]
            reward = self.metrics[index].compute()
            values.update({f"{split}/reward": reward, f"{split}/{self.reward.name}": reward,
                           f"{split}/perplexity": (nll / tokens.clamp_min(1)).exp(),
                           f"{split}/completion_length": generated / completions.clamp_min(1)})
            for name, total in zip(self.extra_names, self.extra_sums[index]):
                values[f"{split}/{name}"] = total / completions.clamp_min(1)
        return values

    # -- evaluation ----------------------------------------------------------------------------------------------
    def _begin_evaluation(self, split: str) -> tuple[bool, int, Any, torch.Generator | None, dict[str, list]]:
        """Put the module in eval mode and start the split's sums; return (was training, the split's index, the
        precision context, the sampling generator, the empty sample table)."""
        was_training = self.training
        self.eval()
        self._start_epoch(split)
        trainer = self._trainer
        context = trainer.precision_plugin.forward_context() if trainer is not None else nullcontext()
        generator = None
        if self.generation.do_sample:  # the same draws at every evaluation, so evaluations compare
            generator = torch.Generator(self.device).manual_seed(self.generation.seed)
        rows: dict[str, list] = {"prompt": [], "completion": [], "reference": [], "reward": []}
        if self.info.gold is not None:
            rows[GOLD] = []
        if split == "val":  # the test split is evaluated once, on the best weights
            rows = {"epoch": [], **rows}
        return was_training, SPLITS.index(split), context, generator, rows

    @torch.no_grad()
    def evaluate(self, split: str, batches: EvalBatches) -> dict[str, float]:
        """Teacher-forced loss and perplexity, then generation scored by the reward, over the whole ``split``; logs
        the metrics and the sample table, returns the metrics."""
        was_training, index, context, generator, rows = self._begin_evaluation(split)
        with context:
            for batch in batches:
                logits = self.model(batch.ids)
                loss = self.loss_fn(logits, batch.labels)
                # Weighted by the batch's completion tokens (the loss is their mean), so that {split}/loss is the
                # token mean over the split whatever generation.batch_size cuts it into.
                tokens = (batch.labels != IGNORE_INDEX).sum()
                self._accumulate(split, None, batch.labels, loss * tokens, count=tokens)
                nll = F.cross_entropy(logits.float().flatten(0, 1), batch.labels.flatten(), reduction="sum",
                                      ignore_index=IGNORE_INDEX)
                out = generate(self.model, batch.prompt_ids, batch.prompt_mask, **self.generation.sampling(),
                               generator=generator)
                completions = decode(self.tokenizer, out)
                scores, extras = self._score_generations(index, completions, batch.examples)
                self.token_sums[index] += torch.stack([
                    nll, (batch.labels != IGNORE_INDEX).sum().float(), out.mask.sum().float(),
                    torch.tensor(float(len(completions)), device=self.device)])
                self._collect_samples(rows, batch.examples, completions, scores, extras.get(GOLD))
        self._end_epoch(split)
        self._log_samples(split, rows)
        self.train(was_training)
        return {k: v for k, v in self.epoch_metrics.items() if k.startswith(f"{split}/")}

    def _score_generations(self, index: int, completions: list[str], examples: list) -> tuple[Tensor, dict]:
        """Score a batch of generated ``completions`` with the reward and book them in the split's metric; the
        reward's extra values (a combined reward's terms, the gold reward) are booked too, and returned."""
        scores, extras = score_with_extras(self.reward, self.info, completions, examples)
        self.metrics[index].update(scores.to(self.device, torch.float32))
        if extras:
            self.extra_sums[index] += torch.stack([extras[n].sum() for n in self.extra_names]).to(self.device)
        return scores, extras

    def _collect_samples(self, rows: dict[str, list], examples, completions: list[str], scores: Tensor,
                         gold: Tensor | None = None) -> None:
        room = self.generation.log_samples - len(rows["prompt"])
        if room <= 0:
            return
        epoch = self.current_epoch if self._trainer is not None else 0
        values = scores[:room].tolist()
        if gold is not None:
            rows[GOLD] += gold[:room].tolist()
        for example, completion, value in zip(examples[:room], completions[:room], values):
            if "epoch" in rows:
                rows["epoch"].append(epoch)
            rows["prompt"].append(example.prompt)
            rows["completion"].append(completion)
            rows["reference"].append(example.completion)
            rows["reward"].append(float(value))

    def _log_samples(self, split: str, rows: dict[str, list]) -> None:
        log_table = getattr(self.logger, "log_table", None)
        if rows["prompt"] and log_table is not None:
            log_table(rows, f"samples/{split}.json")


class SequenceDataModule(pl.LightningDataModule):
    """A sequence task's tokenised splits, moved to the trainer's device once, served as slices."""

    def __init__(self, splits: dict[str, TokenizedSplit], batch_size: int, eval_batch_size: int, seed: int,
                 steps_per_chunk: int = 1, limit_train_batches: int | float | None = None,
                 prompts: bool = False) -> None:
        super().__init__()
        self.prompts = prompts  # training chunks carry prompts and examples (reward feedback)
        self.host_splits = splits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.steps_per_chunk = steps_per_chunk
        self.limit_train_batches = limit_train_batches
        self.splits: dict[str, TokenizedSplit] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.splits = {name: split.to(device) for name, split in self.host_splits.items()}

    def train_dataloader(self) -> TrainBatches:
        split = self.splits["train"]
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        total = -(-len(split) // (world * self.batch_size))
        fast = int(trainer.fast_dev_run) if trainer is not None else 0
        limit = fast or limited_batches(self.limit_train_batches, total)
        return self._train_batches(split, self.batch_size, seed=self.seed, steps_per_chunk=self.steps_per_chunk,
                                   max_batches=limit, rank=rank, world_size=world)

    def _train_batches(self, split: Any, batch_size: int, **settings: Any) -> TrainBatches:
        """The training batches of ``split`` (a pair task's data module serves pairs instead)."""
        return TrainBatches(split, batch_size, prompts=self.prompts, **settings)

    # Evaluation runs in the module (SequenceModule.evaluate), whole on every rank, as for the other kinds.
    def val_batches(self) -> EvalBatches:
        return EvalBatches(self.splits["val"], self.eval_batch_size)

    def test_batches(self) -> EvalBatches:
        self.setup()
        return EvalBatches(self.splits["test"], self.eval_batch_size)
