"""TRL's own loss code run on given tensors, as the reference for rmlab's policy and preference losses (tests only).

TRL computes its losses inside trainer methods that also run the model. Each helper below builds the trainer
*without* ``__init__`` (``object.__new__``), sets only the attributes the method reads, and feeds it our tensors
through a stand-in model (or a patched log-prob method). This leans on TRL internals on purpose, all in this one
file: when TRL renames an attribute or method, the helper raises ``AttributeError`` naming it (nothing here has a
fallback), and ``test_trl_reference_internals`` in ``tests/test_policy_trl.py`` fails first.
"""

from __future__ import annotations

import os
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # CPO and ORPO live in trl.experimental, which warns

from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402
from trl.trainer.rloo_trainer import RLOOTrainer  # noqa: E402

# The private members used below, checked for existence by the canary test.
INTERNALS = {
    GRPOTrainer: ("_compute_loss", "_get_per_token_logps_and_entropies"),
    RLOOTrainer: ("_compute_loss", "_get_per_token_logps_and_entropies"),
    DPOTrainer: ("_compute_loss",),
    CPOTrainer: ("cpo_loss",),
    ORPOTrainer: ("odds_ratio_loss",),
}


class _Accelerator:
    """One process: gathers and reductions are the identity."""

    num_processes = 1
    sync_gradients = True
    device = torch.device("cpu")

    def gather(self, x: Tensor) -> Tensor:
        return x

    gather_for_metrics = gather

    def reduce(self, x: Tensor, reduction: str = "sum") -> Tensor:
        return x


class _Model:
    """Stands in for ``self.model``: TRL reads only ``training`` (train vs eval metrics)."""

    training = True


def _metrics(trainer: Any) -> dict[str, float]:
    return {name: values[-1] for name, values in trainer._metrics["train"].items()}


def _policy_trainer(cls: type, *, logps: Tensor, entropy: Tensor, epsilon: float, epsilon_high: float,
                    **attributes: Any) -> Any:
    trainer = object.__new__(cls)
    trainer.model = _Model()
    trainer.accelerator = _Accelerator()
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer.aux_loss_enabled = False
    trainer.epsilon_low, trainer.epsilon_high = epsilon, epsilon_high
    for name, value in attributes.items():
        setattr(trainer, name, value)
    # The model's forward is replaced by our per-token log-probs and entropies.
    trainer._get_per_token_logps_and_entropies = lambda *args, **kwargs: (logps, entropy, None)
    return trainer


def _completion_inputs(mask: Tensor) -> dict[str, Tensor]:
    b, n = mask.shape
    return {"prompt_ids": torch.zeros(b, 1, dtype=torch.long), "prompt_mask": torch.ones(b, 1, dtype=torch.long),
            "completion_ids": torch.zeros(b, n, dtype=torch.long), "completion_mask": mask.long()}


def grpo_loss(*, logps: Tensor, old_logps: Tensor, ref_logps: Tensor | None, entropy: Tensor, mask: Tensor,
              advantages: Tensor, beta: float, epsilon: float, epsilon_high: float, loss_type: str,
              max_completion_length: int, entropy_coef: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """``GRPOTrainer._compute_loss`` (one process, no gradient accumulation) and its logged metrics."""
    trainer = _policy_trainer(
        GRPOTrainer, logps=logps, entropy=entropy, epsilon=epsilon, epsilon_high=epsilon_high, beta=beta,
        loss_type=loss_type, max_completion_length=max_completion_length, top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, importance_sampling_level="token", use_vllm=False,
        current_gradient_accumulation_steps=1, _entropy_bonus_enabled=entropy_coef > 0, entropy_coef=entropy_coef,
        use_adaptive_entropy=False,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1))
    inputs = {**_completion_inputs(mask), "advantages": advantages, "old_per_token_logps": old_logps,
              "num_items_in_batch": mask.sum()}
    if ref_logps is not None:
        inputs["ref_per_token_logps"] = ref_logps
    loss = trainer._compute_loss(None, inputs)
    return loss, _metrics(trainer)


def rloo_loss(*, logps: Tensor, old_logps: Tensor, entropy: Tensor, mask: Tensor, advantages: Tensor,
              epsilon: float, epsilon_high: float) -> tuple[Tensor, dict[str, float]]:
    """``RLOOTrainer._compute_loss``: the clipped ratio of whole-completion probabilities, and its metrics."""
    trainer = _policy_trainer(RLOOTrainer, logps=logps, entropy=entropy, epsilon=epsilon, epsilon_high=epsilon_high)
    inputs = {**_completion_inputs(mask), "advantages": advantages,
              "old_logps": (old_logps * mask).sum(1)}
    loss = trainer._compute_loss(None, inputs)
    return loss, _metrics(trainer)


def dpo_loss(*, chosen: Tensor, rejected: Tensor, chosen_mask: Tensor, rejected_mask: Tensor, ref_chosen: Tensor,
             ref_rejected: Tensor, beta: float, loss_type: str) -> Tensor:
    """``DPOTrainer._compute_loss`` with precomputed reference log-probs. ``chosen``/``rejected`` are per-token
    log-probs (B, N) of the completions (0 off their masks); the stand-in model returns them as TRL's fused LM head
    would (one position shifted: TRL scores ``input_ids[1:]``)."""
    per_token = torch.cat([chosen, rejected], 0)
    completion_mask = torch.cat([chosen_mask, rejected_mask], 0).long()
    b, n = per_token.shape
    # Sequence of n + 1 ids: the prompt's last token, then the n completion tokens (TRL shifts by one).
    completion_mask = torch.cat([torch.zeros(b, 1, dtype=torch.long), completion_mask], 1)
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros(b, n), mean_logits=torch.zeros(b, n),
                              is_top1=torch.zeros(b, n, dtype=torch.bool))

    def model(**kwargs: Any) -> SimpleNamespace:
        return outputs

    model.training = True  # type: ignore[attr-defined]
    trainer = object.__new__(DPOTrainer)
    trainer.model = model
    trainer.accelerator = _Accelerator()
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer.aux_loss_enabled = False
    trainer.ld_alpha = None
    trainer.precompute_ref_logps = True
    trainer.f_divergence_type = "reverse_kl"
    trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
    trainer.beta = beta
    trainer.label_smoothing = 0.0
    trainer.use_weighting = False
    trainer._total_train_tokens, trainer._tp_size = 0, 1
    inputs = {"input_ids": torch.zeros(b, n + 1, dtype=torch.long), "attention_mask": torch.ones(b, n + 1),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    return trainer._compute_loss(model, inputs, return_outputs=False)


def cpo_losses(*, chosen: Tensor, rejected: Tensor, beta: float, loss_type: str, label_smoothing: float = 0.0,
               simpo_gamma: float = 0.0) -> Tensor:
    """``CPOTrainer.cpo_loss``: per-pair losses of a function of ``chosen - rejected`` (the sigmoid form is
    conservative DPO's when given log-ratios; the simpo form SimPO's when given mean token log-probs)."""
    trainer = object.__new__(CPOTrainer)
    trainer.alpha, trainer.beta, trainer.loss_type = 0.0, beta, loss_type
    trainer.label_smoothing, trainer.simpo_gamma = label_smoothing, simpo_gamma
    trainer.accelerator = _Accelerator()
    losses, _, _ = trainer.cpo_loss(chosen, rejected)
    return losses


def orpo_odds_ratio_term(*, chosen: Tensor, rejected: Tensor, beta: float) -> Tensor:
    """``ORPOTrainer.odds_ratio_loss``'s ``beta * log sigmoid(log odds ratio)`` per pair (TRL subtracts its mean)."""
    trainer = object.__new__(ORPOTrainer)
    trainer.beta = beta
    trainer.accelerator = _Accelerator()
    losses, *_ = trainer.odds_ratio_loss(chosen, rejected)
    return losses
