"""The math of policy optimisation on hand-computed values: token log-probs and entropies, the KL estimators,
advantages (leave-one-out, RLOO, GRPO), the clipped surrogate (values, gradients, a numerical gradient check) and the
loss_type aggregations."""

import math

import pytest
import torch

from rmlab.policy.advantages import (batch_leave_one_out, grpo_advantages, leave_one_out, rloo_advantages,
                                     unbiased_std, zero_std_groups)
from rmlab.policy.kl import kl_per_token
from rmlab.policy.logprobs import (completion_labels, masked_mean, sequence_logprobs, token_entropy,
                                   token_logprobs)
from rmlab.policy.objective import aggregate, clipped_surrogate
from rmlab.policy.step import completion_logprobs
from rmlab.sequence import IGNORE_INDEX

LN2, LN3 = math.log(2.0), math.log(3.0)
# One position whose softmax is (1/6, 2/6, 3/6).
Z = torch.tensor([0.0, LN2, LN3])


# -- log-probs and entropy -------------------------------------------------------------------------------------------
def test_token_logprobs_on_a_hand_computed_softmax():
    logits = torch.stack([Z, Z, Z]).unsqueeze(0)  # (1, 3, 3)
    labels = torch.tensor([[2, IGNORE_INDEX, 0]])
    logps, mask = token_logprobs(logits, labels)
    assert mask.tolist() == [[True, False, True]]
    torch.testing.assert_close(logps, torch.tensor([[math.log(0.5), 0.0, math.log(1 / 6)]]))
    # Temperature 2: p proportional to (1, sqrt 2, sqrt 3).
    logps, _ = token_logprobs(logits, labels, temperature=2.0)
    total = 1 + math.sqrt(2) + math.sqrt(3)
    torch.testing.assert_close(logps, torch.tensor([[math.log(math.sqrt(3) / total), 0.0, math.log(1 / total)]]))


def test_sequence_sums_and_means_count_only_scored_tokens():
    logits = torch.stack([Z, Z, Z]).unsqueeze(0).repeat(2, 1, 1)
    labels = torch.tensor([[2, 1, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    total, count = sequence_logprobs(logits, labels)
    torch.testing.assert_close(total, torch.tensor([math.log(0.5) + math.log(1 / 3), 0.0]))
    assert count.tolist() == [2.0, 0.0]
    mean, _ = sequence_logprobs(logits, labels, average=True)
    torch.testing.assert_close(mean, torch.tensor([(math.log(0.5) + math.log(1 / 3)) / 2, 0.0]))


def test_logprobs_are_float32_and_stable_for_huge_and_bf16_logits():
    logits = torch.tensor([[[1e4, 0.0, -1e4]]])
    logps, _ = token_logprobs(logits, torch.tensor([[1]]))
    assert logps.item() == -1e4 and logps.dtype == torch.float32
    half, _ = token_logprobs(torch.stack([Z]).unsqueeze(0).bfloat16(), torch.tensor([[2]]))
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, torch.tensor([[math.log(0.5)]]), atol=1e-2, rtol=0)
    assert torch.isfinite(token_entropy(logits)).all()


def test_entropy_on_hand_computed_distributions():
    expected = -(1 / 6 * math.log(1 / 6) + 1 / 3 * math.log(1 / 3) + 1 / 2 * math.log(1 / 2))
    torch.testing.assert_close(token_entropy(Z.view(1, 1, 3)), torch.tensor([[expected]]))
    uniform = torch.zeros(1, 1, 4)
    torch.testing.assert_close(token_entropy(uniform), torch.tensor([[math.log(4)]]))
    # A masked vocabulary entry (-inf) counts as probability 0: the entropy of (1/2, 1/2, 0) is ln 2.
    torch.testing.assert_close(token_entropy(torch.tensor([[[0.0, 0.0, -math.inf]]])), torch.tensor([[LN2]]))


def test_completion_labels_put_each_token_where_it_is_predicted():
    labels = completion_labels(3, torch.tensor([[7, 8, 9]]), torch.tensor([[True, True, False]]))
    assert labels.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7, 8, IGNORE_INDEX, IGNORE_INDEX]]
    with pytest.raises(ValueError, match="prompt_length"):
        completion_labels(0, torch.tensor([[7]]), torch.tensor([[True]]))


def test_completion_logprobs_agree_with_the_labels_contract():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 5, generator=g)
    ids = torch.tensor([[1, 2, 3, 4], [4, 0, 2, 2]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    direct, entropy = completion_logprobs(logits, 3, ids, mask, temperature=0.7, entropy="log")
    via_labels, scored = token_logprobs(logits, completion_labels(3, ids, mask), temperature=0.7)
    torch.testing.assert_close(direct, via_labels[:, 2:6])
    assert scored[:, 2:6].equal(mask)
    torch.testing.assert_close(entropy, token_entropy(logits, 0.7)[:, 2:6])


def test_masked_mean():
    torch.testing.assert_close(masked_mean(torch.tensor([1.0, 5.0, 9.0]), torch.tensor([True, False, True])),
                               torch.tensor(5.0))
    assert masked_mean(torch.tensor([1.0]), torch.tensor([False])).item() == 0.0


# -- KL estimators ---------------------------------------------------------------------------------------------------
def test_kl_estimators_on_a_hand_computed_token():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])  # log r = log(ref / pi) = -ln 2
    torch.testing.assert_close(kl_per_token(logp, ref, "k1"), torch.tensor([LN2]))
    torch.testing.assert_close(kl_per_token(logp, ref, "k2"), torch.tensor([LN2**2 / 2]))
    torch.testing.assert_close(kl_per_token(logp, ref, "k3"), torch.tensor([0.5 - 1 + LN2]))
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_per_token(logp, ref, "k4")


def test_k1_and_k3_are_unbiased_and_k3_is_never_negative():
    """E_{y ~ pi}[k(y)] over the whole vocabulary (exact, no sampling) equals KL(pi || ref) for k1 and k3."""
    pi = torch.tensor([0.5, 0.3, 0.15, 0.05])
    ref = torch.tensor([0.1, 0.2, 0.3, 0.4])
    kl = (pi * (pi / ref).log()).sum()
    for estimator in ("k1", "k3"):
        torch.testing.assert_close((pi * kl_per_token(pi.log(), ref.log(), estimator)).sum(), kl)
    assert (kl_per_token(pi.log(), ref.log(), "k1") < 0).any()  # k1 is unbiased but not pointwise >= 0
    assert (kl_per_token(pi.log(), ref.log(), "k3") >= 0).all()
    assert (pi * kl_per_token(pi.log(), ref.log(), "k2")).sum() != pytest.approx(kl.item())  # k2 is biased


def test_expected_gradients_of_the_estimators_in_the_loss():
    """Exact expectations over the vocabulary (the sampling weights pi detached, as for sampled tokens): k1's gradient
    averages to 0, k2's to the gradient of KL(pi || ref), k3's to that of KL(ref || pi)."""
    theta = torch.tensor([0.4, -0.3, 1.1, 0.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)

    def expected_grad(estimator):
        logp = torch.log_softmax(theta, -1)
        value = (logp.exp().detach() * kl_per_token(logp, ref.log(), estimator)).sum()
        return torch.autograd.grad(value, theta)[0]

    def grad_of(divergence):
        return torch.autograd.grad(divergence(torch.softmax(theta, -1)), theta)[0]

    torch.testing.assert_close(expected_grad("k1"), torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(expected_grad("k2"), grad_of(lambda p: (p * (p / ref).log()).sum()))
    torch.testing.assert_close(expected_grad("k3"), grad_of(lambda p: (ref * (ref / p).log()).sum()))


# -- advantages ------------------------------------------------------------------------------------------------------
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])  # two prompts, four samples each


def test_leave_one_out_baselines():
    torch.testing.assert_close(leave_one_out(REWARDS, 4),
                               torch.tensor([1 / 3, 2 / 3, 2 / 3, 1 / 3, 2.0, 2.0, 2.0, 2.0]))
    torch.testing.assert_close(batch_leave_one_out(torch.tensor([1.0, 2.0, 6.0])), torch.tensor([4.0, 3.5, 1.5]))
    assert batch_leave_one_out(torch.tensor([3.0])).tolist() == [0.0]
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out(REWARDS, 1)
    with pytest.raises(ValueError, match="multiple of the group size"):
        leave_one_out(REWARDS, 3)


def test_rloo_advantages_and_their_normalisation():
    advantages = rloo_advantages(REWARDS, 4)
    torch.testing.assert_close(advantages, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0, 0.0, 0.0, 0.0]))
    # The batch std of those advantages (Bessel): sqrt(4 * (2/3)^2 / 7).
    std = math.sqrt(4 * (2 / 3) ** 2 / 7)
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0]) / (std + 1e-4)
    torch.testing.assert_close(rloo_advantages(REWARDS, 4, normalize=True), expected)


def test_grpo_advantages_for_each_scale_rewards():
    group_std = math.sqrt(1 / 3)  # (1, 0, 0, 1): deviations 0.5, Bessel: sqrt(4 * 0.25 / 3)
    signs = torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    torch.testing.assert_close(grpo_advantages(REWARDS, 4, "group"), signs / torch.tensor(
        [group_std + 1e-4] * 4 + [1e-4] * 4))
    batch_std = unbiased_std(REWARDS).item()
    # mean 1.25: deviations -0.25 (twice), -1.25 (twice), 0.75 (four times)
    assert batch_std == pytest.approx(math.sqrt((2 * 0.25**2 + 2 * 1.25**2 + 4 * 0.75**2) / 7))
    torch.testing.assert_close(grpo_advantages(REWARDS, 4, "batch"), signs / (batch_std + 1e-4))
    torch.testing.assert_close(grpo_advantages(REWARDS, 4, "none"), signs)
    with pytest.raises(ValueError, match="group, batch, none"):
        grpo_advantages(REWARDS, 4, "prompt")


def test_zero_std_groups_counts_groups_without_a_signal():
    assert zero_std_groups(REWARDS, 4).item() == 0.5
    assert zero_std_groups(torch.tensor([1.0, 2.0, 3.0, 4.0]), 2).item() == 0.0


# -- the clipped surrogate -------------------------------------------------------------------------------------------
# (ratio, advantage) -> (loss, clipped, d loss / d logp) at epsilon 0.2, worked by hand from -min(rA, clip(r) A).
SURROGATE_CASES = [
    (1.5, 1.0, -1.2, True, 0.0),  # pushed past 1 + eps in the advantage's direction: clipped, no gradient
    (0.5, 1.0, -0.5, False, -0.5),  # below 1 - eps with A > 0: the unclipped term is the min, gradient -rA
    (0.5, -1.0, 0.8, True, 0.0),  # pushed below 1 - eps with A < 0: clipped
    (1.5, -1.0, 1.5, False, 1.5),  # above 1 + eps with A < 0: unclipped (pessimistic bound), gradient -rA
    (1.1, 2.0, -2.2, False, -2.2),  # inside the trust region
]


@pytest.mark.parametrize("ratio, advantage, loss, clipped, grad", SURROGATE_CASES)
def test_clipped_surrogate_values_and_gradients(ratio, advantage, loss, clipped, grad):
    old = torch.tensor([-1.0])
    logp = (old + math.log(ratio)).requires_grad_()
    value, r, was_clipped = clipped_surrogate(logp, old, torch.tensor([advantage]), 0.2)
    torch.testing.assert_close(value, torch.tensor([loss]))
    torch.testing.assert_close(r, torch.tensor([ratio]))
    assert was_clipped.item() == clipped
    value.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([grad]))


def test_epsilon_high_moves_only_the_upper_clip():
    old = torch.zeros(2)
    logp = torch.log(torch.tensor([1.5, 0.5]))
    value, _, clipped = clipped_surrogate(logp, old, torch.tensor([1.0, -1.0]), 0.2, epsilon_high=0.6)
    torch.testing.assert_close(value, torch.tensor([-1.5, 0.8]))  # 1.5 < 1.6 is inside; 0.5 < 0.8 still clipped
    assert clipped.tolist() == [False, True]


def test_no_clipping_is_plain_reinforce():
    old = torch.tensor([-1.0, -2.0])
    logp = old.clone().requires_grad_()
    advantages = torch.tensor([0.7, -0.3])
    value, _, clipped = clipped_surrogate(logp, old, advantages, None)
    value.sum().backward()
    torch.testing.assert_close(logp.grad, -advantages)  # ratio 1: -A grad log pi
    assert not clipped.any()


def test_clipped_surrogate_passes_a_numerical_gradient_check():
    """float64 finite differences against autograd, at ratios away from the clip boundaries (where the surrogate is
    not differentiable), on both sides of them and for both advantage signs."""
    old = torch.zeros(8, dtype=torch.float64)
    ratios = torch.tensor([0.5, 0.7, 0.95, 1.05, 1.15, 1.3, 1.6, 2.0], dtype=torch.float64)
    advantages = torch.tensor([1.0, -1.0, 0.5, -2.0, 1.5, 1.0, -0.5, -1.0], dtype=torch.float64)
    logp = ratios.log().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: clipped_surrogate(x, old, advantages, 0.2, 0.28)[0], (logp,))
    assert torch.autograd.gradcheck(lambda x: clipped_surrogate(x, old, advantages, None)[0], (logp,))


# -- aggregation -----------------------------------------------------------------------------------------------------
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[True, True, False], [True, False, False]])


@pytest.mark.parametrize("loss_type, expected", [
    ("grpo", (1.5 + 4.0) / 2),  # per-sequence means (1+2)/2 and 4/1, then their mean
    ("bnpo", 7 / 3),  # all scored tokens
    ("dapo", 7 / 10),  # over the generation batch's 10 tokens
    ("dr_grpo", 7 / (2 * 4)),  # over completions x max_new_tokens
])
def test_loss_type_aggregations(loss_type, expected):
    value = aggregate(PER_TOKEN, MASK, loss_type, max_new_tokens=4, num_tokens=torch.tensor(10))
    torch.testing.assert_close(value, torch.tensor(expected))


def test_dapo_without_a_generation_count_is_bnpo_and_unknown_types_fail():
    torch.testing.assert_close(aggregate(PER_TOKEN, MASK, "dapo"), aggregate(PER_TOKEN, MASK, "bnpo"))
    with pytest.raises(ValueError, match="max_new_tokens"):
        aggregate(PER_TOKEN, MASK, "dr_grpo")
    with pytest.raises(ValueError, match="grpo, bnpo, dr_grpo, dapo"):
        aggregate(PER_TOKEN, MASK, "sum")
