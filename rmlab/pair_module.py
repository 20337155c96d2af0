"""The Lightning side of ``sequence_pair`` tasks: ``PreferenceModule`` (preference optimisation of a language model
on offline pairs: ``loss=dpo|simpo|orpo``) and ``PairDataModule`` (the tokenised pairs on the training device).

``PreferenceModule`` is a ``SequenceModule`` (so an ``ObjectiveModule``: the same chunked manual optimisation,
gradient accumulation, clipping, precision, NaN check and logging); what differs is the step and the evaluation:

- a batch of B pairs is one forward pass over ``[chosen rows; rejected rows]`` (2B, T), read as the summed
  completion log-probs of both (``rmlab.losses.preference_lm.pair_logps``), and the loss compares them with the
  **reference policy's**: the model's own weights when training starts (its initial weights, or those it was
  started from). The reference log-probs of every pair of every split are computed **once**, in one no-grad pass in
  eval mode before the first epoch (``cache_reference``), and looked up by pair index at each step; a
  reference-free loss (``simpo``, ``orpo``) computes none. The cache is saved in Lightning checkpoints, so a run
  resumed from one keeps its original reference;
- every split logs ``{split}/loss`` and the loss's implicit reward model's ``{split}/implicit_accuracy`` (share of
  pairs whose chosen completion scores above the rejected one) and ``{split}/implicit_margin`` (mean chosen minus
  rejected score; DPO: beta x log-ratio, SimPO/ORPO: beta x mean token log-prob), train ones from the training
  steps' own forward passes;
- with a text reward, val and test also generate a completion for each prompt, scored against the chosen completion
  (``{split}/reward``, which selects the best checkpoint), with ``{split}/completion_length`` and the sample table,
  as on sequence tasks; with a pair reward (``preference_accuracy``, ``reward_margin``, ``preference_neg_ece``)
  nothing is generated: the reward reads the implicit rewards of every split's pairs, train included, as it reads a
  reward model's scores. ``{split}/perplexity`` is that of the chosen completions either way.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor

from rmlab.generation import decode, generate
from rmlab.kinds import PAIR
from rmlab.losses.preference_lm import PairLogps, pair_logps
from rmlab.module import SPLITS
from rmlab.rewards.extras import GOLD
from rmlab.sequence_module import SequenceDataModule, SequenceModule
from rmlab.sequence_pairs import PairChunk, PairEvalBatches, PairTrainBatches, TokenizedPairs, as_rows

IMPLICIT_TERMS = ("implicit_accuracy", "implicit_margin")
REFERENCE_KEY = "rmlab_reference_logps"  # where a checkpoint keeps the cached reference log-probs


def _rows(logps: PairLogps, index: Tensor | slice) -> PairLogps:
    return PairLogps(*(t[index] for t in logps))


class PreferenceModule(SequenceModule):
    """A language model + a preference loss on pairs + a reward: a text reward on its generations, or a pair reward
    on the loss's implicit rewards (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.needs_reference = bool(getattr(self.loss_fn, "needs_reference", False))
        # A pair reward (preference_accuracy, reward_margin, ...) scores the loss's implicit rewards, on every split
        # and without generating; a text reward scores generations on val and test.
        self.scores_pairs = PAIR in getattr(self.reward, "accepts", ())
        # Split -> the reference policy's PairLogps of every pair, in the split's order, on the device.
        self.reference: dict[str, PairLogps] = {}
        self.reference_passes = 0  # forward passes spent on the reference (one per batch of pairs, once)
        self.register_buffer("implicit_sums", torch.zeros(len(SPLITS), len(IMPLICIT_TERMS)), persistent=False)

    # -- the reference ------------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        super().on_train_start()
        if self.reference:  # restored from a checkpoint (a resumed run): the reference of the original start
            self.reference = {split: PairLogps(*(t.to(self.device) for t in logps))
                              for split, logps in self.reference.items()}
        elif self.needs_reference:
            data = self.trainer.datamodule
            self.cache_reference(data.splits, data.eval_batch_size)

    # A resumed run must keep the reference of the run's start, not take the resumed weights as a new one: the cache
    # travels in Lightning's checkpoint (tensors only, so it loads with weights_only=True).
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.reference:
            checkpoint[REFERENCE_KEY] = {split: {name: t.detach().cpu() for name, t in logps._asdict().items()}
                                         for split, logps in self.reference.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(REFERENCE_KEY)
        if saved:
            self.reference = {split: PairLogps(**fields) for split, fields in saved.items()}

    @torch.no_grad()
    def cache_reference(self, splits: dict[str, TokenizedPairs], batch_size: int) -> None:
        """The current weights' log-probs of every pair of ``splits``, kept as the frozen reference policy's."""
        was_training = self.training
        self.eval()  # no dropout: the reference is a fixed function of the pairs
        trainer = self._trainer
        context = trainer.precision_plugin.forward_context() if trainer is not None else nullcontext()
        with context:
            for name, split in splits.items():
                parts = []
                for batch in PairEvalBatches(split, batch_size):
                    parts.append(pair_logps(self.model(as_rows(batch.ids)), as_rows(batch.labels)))
                    self.reference_passes += 1
                self.reference[name] = PairLogps(*(torch.cat(t) for t in zip(*parts)))
        self.train(was_training)

    def _reference(self, split: str, rows: Tensor | slice) -> PairLogps | None:
        if not self.needs_reference:
            return None
        if split not in self.reference:
            raise RuntimeError(f"loss needs the reference log-probs of the {split} split: call cache_reference first")
        return _rows(self.reference[split], rows)

    # -- training ------------------------------------------------------------------------------------------------
    def training_step(self, chunk: PairChunk, chunk_idx: int) -> None:  # type: ignore[override]
        ids, labels, index, widths, tokens = chunk
        if self.first_step_time is None:
            self.first_step_time = time.time()
        self.samples_trained += ids.shape[0]
        self.tokens_trained += tokens
        optimizer = self.optimizers()
        losses, sizes, steps, scores = [], [], [], []
        first_step = self.global_step
        for step, width in enumerate(widths):
            rows = slice(step * self.batch_size, (step + 1) * self.batch_size)
            logps = pair_logps(self.model(as_rows(ids[rows, :, :width])), as_rows(labels[rows, :, :width]))
            reference = self._reference("train", index[rows])
            loss = self.loss_fn(logps, reference)
            scores.append(self.loss_fn.implicit_rewards(logps, reference))
            steps.append(self._optimize(optimizer, loss, logps.chosen.shape[0]))
            losses.append(loss.detach())
            sizes.append(logps.chosen.shape[0])
        self._book_implicit("train", torch.cat(scores))
        if self.scores_pairs:
            self._score_pairs("train", torch.cat(scores))
        self._accumulate_chunk(None, index, torch.stack(losses).float(), sizes, steps, first_step)

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def _book_implicit(self, split: str, scores: Tensor) -> None:
        margin = (scores[:, 0] - scores[:, 1]).float()
        self.implicit_sums[SPLITS.index(split)] += torch.stack([(margin > 0).float().sum(), margin.sum()])

    def _score_pairs(self, split: str, scores: Tensor) -> None:
        self.metrics[SPLITS.index(split)].update(scores, torch.full_like(scores, float("nan")))

    def _start_epoch(self, split: str) -> None:
        super()._start_epoch(split)
        self.implicit_sums[SPLITS.index(split)].zero_()

    def _epoch_values(self, split: str) -> dict[str, Tensor]:
        values = super()._epoch_values(split)
        index = SPLITS.index(split)
        count = self.loss_sums[index][1].clamp_min(1)
        values.update({f"{split}/{term}": value / count
                       for term, value in zip(IMPLICIT_TERMS, self.implicit_sums[index])})
        if self.scores_pairs:
            values.pop(f"{split}/completion_length", None)  # nothing was generated
            reward = self.metrics[index].compute()
            values.update({f"{split}/reward": reward, f"{split}/{self.reward.name}": reward})
        return values

    # -- evaluation ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str, batches: PairEvalBatches) -> dict[str, float]:  # type: ignore[override]
        """Teacher-forced loss, implicit rewards and the chosen completions' perplexity, then generation scored by the
        reward, over the whole ``split``; logs the metrics and the sample table, returns the metrics."""
        was_training, index, context, generator, rows = self._begin_evaluation(split)
        with context:
            for batch in batches:
                size = batch.ids.shape[0]
                logps = pair_logps(self.model(as_rows(batch.ids)), as_rows(batch.labels))
                reference = self._reference(split, slice(batch.start, batch.start + size))
                self._accumulate(split, None, batch.ids, self.loss_fn(logps, reference) * size)
                implicit = self.loss_fn.implicit_rewards(logps, reference)
                self._book_implicit(split, implicit)
                if self.scores_pairs:
                    self._score_pairs(split, implicit)
                    self.token_sums[index, :2] += torch.stack([-logps.chosen.sum(), logps.chosen_tokens.sum()])
                    continue
                out = generate(self.model, batch.prompt_ids, batch.prompt_mask, **self.generation.sampling(),
                               generator=generator)
                completions = decode(self.tokenizer, out)
                scores, extras = self._score_generations(index, completions, batch.examples)
                self.token_sums[index] += torch.stack([
                    -logps.chosen.sum(), logps.chosen_tokens.sum(), out.mask.sum().float(),
                    torch.tensor(float(len(completions)), device=self.device)])
                self._collect_samples(rows, batch.examples, completions, scores, extras.get(GOLD))
        self._end_epoch(split)
        self._log_samples(split, rows)
        self.train(was_training)
        return {k: v for k, v in self.epoch_metrics.items() if k.startswith(f"{split}/")}


class PairDataModule(SequenceDataModule):
    """A ``sequence_pair`` task's tokenised pairs, moved to the trainer's device once, served as slices."""

    def _train_batches(self, split: Any, batch_size: int, **settings: Any) -> PairTrainBatches:  # type: ignore[override]
        return PairTrainBatches(split, batch_size, **settings)

    def val_batches(self) -> PairEvalBatches:  # type: ignore[override]
        return PairEvalBatches(self.splits["val"], self.eval_batch_size)

    def test_batches(self) -> PairEvalBatches:  # type: ignore[override]
        self.setup()
        return PairEvalBatches(self.splits["test"], self.eval_batch_size)
