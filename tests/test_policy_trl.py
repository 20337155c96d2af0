"""rmlab's policy and preference losses against Hugging Face TRL's own code on the same tensors: token log-probs and
entropies, the GRPO loss (every loss_type, KL in the loss, clip-higher, an entropy bonus) and its metrics, the RLOO
loss, DPO (sigmoid, ipo, hinge), conservative DPO's label smoothing, SimPO and ORPO's odds-ratio term. TRL's trainer
internals are reached in one place, ``tests/trl_reference.py``; the first test here fails if they move."""

import inspect

import pytest
import torch
from trl.trainer.utils import entropy_from_logits, nanstd, selective_log_softmax

from rmlab.losses.preference_lm import DPO, ORPO, PairLogps, SimPO
from rmlab.policy import GRPO, RLOO
from rmlab.policy.advantages import unbiased_std
from rmlab.policy.logprobs import token_entropy, token_logprobs
from tests import trl_reference
from tests.trl_reference import cpo_losses, dpo_loss, grpo_loss, orpo_odds_ratio_term, rloo_loss

B, N = 6, 5
MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0],
                     [1, 1, 1, 1, 1]]).bool()


def test_trl_reference_internals():
    """The TRL members ``trl_reference`` calls still exist and read the attributes it sets: a TRL upgrade that moves
    them fails here, by name, before any value comparison."""
    for cls, members in trl_reference.INTERNALS.items():
        for member in members:
            assert callable(getattr(cls, member, None)), f"TRL {cls.__name__}.{member} is gone"
    source = inspect.getsource(trl_reference.GRPOTrainer._compute_loss)
    for attribute in ("self.epsilon_low", "self.epsilon_high", "self.loss_type", "self.beta",
                      "self.max_completion_length", "old_per_token_logps", "ref_per_token_logps"):
        assert attribute in source, f"GRPOTrainer._compute_loss no longer reads {attribute}"


def rollout_tensors(seed: int = 0, spread: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    logps = (-2 * torch.rand(B, N, generator=g)).masked_fill(~MASK, 0.0)
    old = (logps + spread * torch.randn(B, N, generator=g)).masked_fill(~MASK, 0.0)
    ref = (logps + spread * torch.randn(B, N, generator=g)).masked_fill(~MASK, 0.0)
    entropy = torch.rand(B, N, generator=g)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 0.0])
    return logps, old, ref, entropy, rewards


# -- log-probs -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_and_entropy_match_trl(temperature):
    g = torch.Generator().manual_seed(1)
    logits = 4 * torch.randn(3, 7, 11, generator=g)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    ours, _ = token_logprobs(logits, labels, temperature)
    torch.testing.assert_close(ours, selective_log_softmax(logits, labels, temperature))
    torch.testing.assert_close(token_entropy(logits, temperature), entropy_from_logits(logits / temperature))


def test_unbiased_std_matches_trl_nanstd():
    values = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 7.0])
    torch.testing.assert_close(unbiased_std(values), nanstd(values))
    torch.testing.assert_close(unbiased_std(values.view(2, 3), dim=1), nanstd(values.view(2, 3), dim=1))


# -- GRPO ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_gradient_and_metrics_match_trl(loss_type, beta):
    logps, old, ref, entropy, rewards = rollout_tensors()
    algorithm = GRPO(num_samples=2, beta=beta, epsilon=0.2, epsilon_high=0.28, loss_type=loss_type,
                     max_new_tokens=N, num_iterations=2)
    rollout = algorithm.rollout(rewards, MASK, old, ref if beta else None)
    ours_logps = logps.clone().requires_grad_()
    ours = algorithm.loss(ours_logps, rollout, entropy)
    ours.loss.backward()
    trl_logps = logps.clone().requires_grad_()
    theirs, metrics = grpo_loss(logps=trl_logps, old_logps=old, ref_logps=ref if beta else None, entropy=entropy,
                                mask=MASK, advantages=rollout.advantages, beta=beta, epsilon=0.2, epsilon_high=0.28,
                                loss_type=loss_type, max_completion_length=N)
    theirs.backward()
    torch.testing.assert_close(ours.loss, theirs)
    torch.testing.assert_close(ours_logps.grad, trl_logps.grad)
    assert ours.metrics["clip_fraction"].item() == pytest.approx(metrics["clip_ratio/region_mean"])
    assert ours.metrics["clip_fraction"].item() > 0  # the case exercises clipping
    assert ours.metrics["entropy"].item() == pytest.approx(metrics["entropy"])
    if beta:
        assert ours.metrics["kl"].item() == pytest.approx(metrics["kl"])


def test_grpo_entropy_bonus_matches_trl():
    logps, old, _, entropy, rewards = rollout_tensors(seed=2)
    algorithm = GRPO(num_samples=2, entropy_coef=0.05, loss_type="grpo", num_iterations=2)
    rollout = algorithm.rollout(rewards, MASK, old)
    ours = algorithm.loss(logps, rollout, entropy)
    theirs, _ = grpo_loss(logps=logps, old_logps=old, ref_logps=None, entropy=entropy, mask=MASK,
                          advantages=rollout.advantages, beta=0.0, epsilon=0.2, epsilon_high=0.2, loss_type="grpo",
                          max_completion_length=N, entropy_coef=0.05)
    torch.testing.assert_close(ours.loss, theirs)


# -- RLOO ------------------------------------------------------------------------------------------------------------
def test_rloo_loss_gradient_and_metrics_match_trl():
    logps, old, _, entropy, rewards = rollout_tensors(seed=3, spread=0.1)
    algorithm = RLOO(num_samples=3, beta=0.0, epsilon=0.2, num_iterations=2)
    rollout = algorithm.rollout(rewards, MASK, old)
    ours_logps = logps.clone().requires_grad_()
    ours = algorithm.loss(ours_logps, rollout, entropy)
    ours.loss.backward()
    trl_logps = logps.clone().requires_grad_()
    theirs, metrics = rloo_loss(logps=trl_logps, old_logps=old, entropy=entropy, mask=MASK,
                                advantages=rollout.advantages, epsilon=0.2, epsilon_high=0.2)
    theirs.backward()
    torch.testing.assert_close(ours.loss, theirs)
    torch.testing.assert_close(ours_logps.grad, trl_logps.grad)
    assert ours.metrics["clip_fraction"].item() == pytest.approx(metrics["clip_ratio/region_mean"])
    assert ours.metrics["clip_fraction"].item() > 0
    assert ours.metrics["entropy"].item() == pytest.approx(metrics["entropy"])


# -- preference losses -----------------------------------------------------------------------------------------------
def preference_tensors():
    g = torch.Generator().manual_seed(4)
    chosen_mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]).bool()
    rejected_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]).bool()
    chosen = (-torch.rand(3, 4, generator=g)).masked_fill(~chosen_mask, 0.0)
    rejected = (-torch.rand(3, 4, generator=g)).masked_fill(~rejected_mask, 0.0)
    ref_chosen, ref_rejected = -2 * torch.rand(3, generator=g), -2 * torch.rand(3, generator=g)
    policy = PairLogps(chosen.sum(1), rejected.sum(1), chosen_mask.sum(1).float(), rejected_mask.sum(1).float())
    reference = PairLogps(ref_chosen, ref_rejected, policy.chosen_tokens, policy.rejected_tokens)
    trl_args = dict(chosen=chosen, rejected=rejected, chosen_mask=chosen_mask, rejected_mask=rejected_mask,
                    ref_chosen=ref_chosen, ref_rejected=ref_rejected)
    return policy, reference, trl_args


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_matches_trl(loss_type, beta):
    policy, reference, trl_args = preference_tensors()
    ours = DPO(beta=beta, loss_type=loss_type)(policy, reference)
    torch.testing.assert_close(ours, dpo_loss(**trl_args, beta=beta, loss_type=loss_type))


def test_dpo_label_smoothing_matches_trl_conservative_sigmoid():
    """TRL's DPO dropped label smoothing from its sigmoid loss; its CPO sigmoid loss keeps the conservative-DPO form
    as a function of the gap, which given log-ratios is DPO's."""
    policy, reference, _ = preference_tensors()
    ours = DPO(beta=0.3, label_smoothing=0.2)(policy, reference)
    theirs = cpo_losses(chosen=policy.chosen - reference.chosen, rejected=policy.rejected - reference.rejected,
                        beta=0.3, loss_type="sigmoid", label_smoothing=0.2).mean()
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_matches_trl(label_smoothing):
    policy, _, _ = preference_tensors()
    ours = SimPO(beta=2.0, gamma=0.7, label_smoothing=label_smoothing)(policy)
    theirs = cpo_losses(chosen=policy.mean_chosen(), rejected=policy.mean_rejected(), beta=2.0, loss_type="simpo",
                        simpo_gamma=0.7, label_smoothing=label_smoothing).mean()
    torch.testing.assert_close(ours, theirs)


def test_orpo_odds_ratio_term_matches_trl():
    policy, _, _ = preference_tensors()
    loss = ORPO(beta=0.25)
    nll = -policy.chosen.sum() / policy.chosen_tokens.sum()
    theirs = orpo_odds_ratio_term(chosen=policy.mean_chosen(), rejected=policy.mean_rejected(), beta=0.25)
    torch.testing.assert_close(loss(policy) - nll, -theirs.mean())
