"""DPO (sigmoid, ipo, hinge), SimPO and ORPO on a language model's log-probs: each against its paper's formula on
hand-computed values, the gradient's direction, numerical stability, parameter validation, the implicit rewards the
pair rewards read, log-probs of a [chosen; rejected] batch, and the YAML configs. (Against TRL: test_policy_trl.py.)"""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rmlab.build import accepted_parameters, instantiate
from rmlab.errors import ConfigError
from rmlab.kinds import SEQUENCE_PAIR
from rmlab.losses import DPO, ORPO, SimPO
from rmlab.losses.preference_lm import PairLogps, log1mexp, pair_logps
from rmlab.rewards import PreferenceAccuracy
from rmlab.sequence import IGNORE_INDEX

CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"
# One pair: the policy's chosen completion (2 tokens) has log-prob -2, its rejected one (4 tokens) -3; the
# reference gives both -2.5. Log-ratios: +0.5 and -0.5, so h = 1.
POLICY = PairLogps(torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([2.0]), torch.tensor([4.0]))
REFERENCE = PairLogps(torch.tensor([-2.5]), torch.tensor([-2.5]), torch.tensor([2.0]), torch.tensor([4.0]))


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# -- the papers' formulas --------------------------------------------------------------------------------------------
def test_dpo_sigmoid_is_minus_log_sigmoid_of_beta_h():
    assert DPO(beta=0.1)(POLICY, REFERENCE).item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.1))))
    assert DPO(beta=2.0)(POLICY, REFERENCE).item() == pytest.approx(softplus(-2.0))


def test_conservative_dpo_label_smoothing():
    expected = 0.8 * softplus(-0.1) + 0.2 * softplus(0.1)  # (1 - eps) L(h) + eps L(-h)
    assert DPO(beta=0.1, label_smoothing=0.2)(POLICY, REFERENCE).item() == pytest.approx(expected)


def test_ipo_regresses_the_per_token_log_ratio_gap_to_one_over_two_beta():
    gap = 0.5 / 2 - (-0.5) / 4  # each log-ratio over its completion's token count
    assert DPO(beta=0.1, loss_type="ipo")(POLICY, REFERENCE).item() == pytest.approx((gap - 5.0) ** 2)
    assert DPO(beta=0.5, loss_type="ipo")(POLICY, REFERENCE).item() == pytest.approx((gap - 1.0) ** 2)


def test_hinge_is_max_zero_one_minus_beta_h():
    assert DPO(beta=0.1, loss_type="hinge")(POLICY, REFERENCE).item() == pytest.approx(0.9)
    assert DPO(beta=2.0, loss_type="hinge")(POLICY, REFERENCE).item() == 0.0


def test_simpo_uses_length_normalised_log_probs_and_a_margin():
    # mean token log-probs -1 (chosen) and -0.75 (rejected): beta * (-0.25) - gamma
    assert SimPO(beta=2.0, gamma=1.0)(POLICY).item() == pytest.approx(softplus(1.5))
    assert SimPO(beta=2.0, gamma=0.0, label_smoothing=0.1)(POLICY).item() == pytest.approx(
        0.9 * softplus(0.5) + 0.1 * softplus(-0.5))
    assert SimPO()(POLICY, None).item() == SimPO()(POLICY, REFERENCE).item()  # no reference used


def test_orpo_is_nll_plus_beta_times_the_odds_ratio_loss():
    p_c, p_r = math.exp(-1.0), math.exp(-0.75)  # per-token (geometric mean) probabilities
    log_odds_ratio = math.log((p_c / (1 - p_c)) / (p_r / (1 - p_r)))
    nll = 2.0 / 2  # the chosen completion's mean token NLL
    expected = nll + 0.1 * -math.log(1 / (1 + math.exp(-log_odds_ratio)))
    assert ORPO(beta=0.1)(POLICY).item() == pytest.approx(expected)
    torch.testing.assert_close(ORPO().log_odds_ratio(POLICY), torch.tensor([log_odds_ratio]))


def test_orpo_nll_is_the_mean_over_all_chosen_tokens_of_the_batch():
    pairs = PairLogps(torch.tensor([-2.0, -6.0]), torch.tensor([-3.0, -3.0]), torch.tensor([2.0, 3.0]),
                      torch.tensor([4.0, 4.0]))
    odds = ORPO(beta=1.0).log_odds_ratio(pairs)
    expected = 8.0 / 5 + torch.nn.functional.softplus(-odds).mean().item()
    assert ORPO(beta=1.0)(pairs).item() == pytest.approx(expected)


def test_log1mexp():
    x = torch.tensor([-1e-6, -0.1, -0.69, -0.7, -5.0, -50.0], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(x), torch.log(1 - torch.exp(x)))


# -- gradients and stability -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", [DPO(), DPO(loss_type="ipo"), DPO(loss_type="hinge"), DPO(label_smoothing=0.1),
                                  SimPO(), ORPO()], ids=["dpo", "ipo", "hinge", "cdpo", "simpo", "orpo"])
def test_the_gradient_raises_chosen_and_lowers_rejected(loss):
    chosen, rejected = torch.tensor([-4.0], requires_grad=True), torch.tensor([-3.0], requires_grad=True)
    loss(PairLogps(chosen, rejected, torch.tensor([2.0]), torch.tensor([4.0])), REFERENCE).backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()


@pytest.mark.parametrize("loss", [DPO(), DPO(loss_type="ipo"), DPO(loss_type="hinge"), SimPO(), ORPO()],
                         ids=["dpo", "ipo", "hinge", "simpo", "orpo"])
def test_extreme_log_probs_give_finite_losses_and_gradients(loss):
    # A 1e4-nat gap either way, and a completion the model is certain of (log-prob 0: ORPO's log(1 - p) edge).
    chosen = torch.tensor([0.0, -1e4, -1.0], requires_grad=True)
    rejected = torch.tensor([-1e4, 0.0, -1.0], requires_grad=True)
    counts = torch.tensor([3.0, 3.0, 1.0])
    ref = PairLogps(torch.zeros(3), torch.zeros(3), counts, counts)
    value = loss(PairLogps(chosen, rejected, counts, counts), ref)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()


def test_bf16_log_probs_give_a_float32_loss():
    half = PairLogps(*(t.bfloat16() for t in POLICY))
    value = DPO()(half, REFERENCE)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, DPO()(POLICY, REFERENCE))


# -- contract --------------------------------------------------------------------------------------------------------
def test_losses_declare_their_kind_and_whether_they_need_a_reference():
    assert DPO.accepts == SimPO.accepts == ORPO.accepts == (SEQUENCE_PAIR,)
    assert DPO.needs_reference and not SimPO.needs_reference and not ORPO.needs_reference
    with pytest.raises(ValueError, match="loss=dpo needs the reference"):
        DPO()(POLICY, None)


def test_implicit_rewards_feed_the_pair_rewards():
    pairs = PairLogps(torch.tensor([-2.0, -5.0]), torch.tensor([-3.0, -1.0]), torch.tensor([2.0, 2.0]),
                      torch.tensor([4.0, 4.0]))
    ref = PairLogps(torch.tensor([-2.5, -2.5]), torch.tensor([-2.5, -2.5]), pairs.chosen_tokens,
                    pairs.rejected_tokens)
    scores = DPO(beta=0.1).implicit_rewards(pairs, ref)
    torch.testing.assert_close(scores, torch.tensor([[0.05, -0.05], [-0.25, 0.15]]))
    accuracy = PreferenceAccuracy().per_sample(scores, torch.full((2, 2), math.nan))
    assert accuracy.tolist() == [1.0, 0.0]
    torch.testing.assert_close(SimPO(beta=2.0).implicit_rewards(pairs), torch.tensor([[-2.0, -1.5], [-5.0, -0.5]]))
    torch.testing.assert_close(ORPO(beta=0.1).implicit_rewards(pairs), torch.tensor([[-0.1, -0.075],
                                                                                     [-0.25, -0.025]]))
    assert not scores.requires_grad


def test_pair_logps_splits_a_chosen_then_rejected_batch():
    z = torch.tensor([0.0, math.log(2.0), math.log(3.0)])  # softmax (1/6, 2/6, 3/6)
    logits = z.expand(4, 3, 3)
    labels = torch.tensor([[IGNORE_INDEX, 2, 2], [IGNORE_INDEX, 1, IGNORE_INDEX],
                           [IGNORE_INDEX, 0, IGNORE_INDEX], [IGNORE_INDEX, 2, 1]])
    pairs = pair_logps(logits, labels)
    torch.testing.assert_close(pairs.chosen, torch.tensor([2 * math.log(0.5), math.log(1 / 3)]))
    torch.testing.assert_close(pairs.rejected, torch.tensor([math.log(1 / 6), math.log(0.5) + math.log(1 / 3)]))
    assert pairs.chosen_tokens.tolist() == [2.0, 1.0] and pairs.rejected_tokens.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="even number of rows"):
        pair_logps(logits[:3], labels[:3])


# -- validation and configs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, params, message", [
    (DPO, {"beta": 0.0}, "dpo: beta must be > 0, got 0.0"),
    (DPO, {"beta": math.inf}, "dpo: beta must be finite"),
    (DPO, {"beta": "0.1"}, "dpo: beta must be a number"),
    (DPO, {"loss_type": "robust"}, "dpo: loss_type must be one of sigmoid, ipo, hinge"),
    (DPO, {"label_smoothing": 0.5}, r"dpo: label_smoothing must be in \[0, 0.5\)"),
    (DPO, {"label_smoothing": 0.1, "loss_type": "ipo"}, "label_smoothing applies to loss_type=sigmoid only"),
    (SimPO, {"gamma": -0.1}, "simpo: gamma must be >= 0"),
    (SimPO, {"beta": -1}, "simpo: beta must be > 0"),
    (SimPO, {"label_smoothing": -0.1}, "simpo: label_smoothing"),
    (ORPO, {"beta": 0}, "orpo: beta must be > 0"),
    (ORPO, {"beta": True}, "orpo: beta must be a number"),
])
def test_bad_parameters_are_config_errors(cls, params, message):
    with pytest.raises(ConfigError, match=message):
        cls(**params)


@pytest.mark.parametrize("name, cls", [("dpo", DPO), ("simpo", SimPO), ("orpo", ORPO)])
def test_yaml_lists_every_param_with_the_class_defaults(name, cls):
    node = OmegaConf.load(CONF / f"{name}.yaml")
    params = {k: v for k, v in node.items() if k not in ("name", "_target_")}
    assert list(params) == accepted_parameters(cls)
    built, default = instantiate("loss", node), cls()
    assert all(getattr(built, k) == getattr(default, k) for k in params)
    node.margin = 1.0
    with pytest.raises(ConfigError, match=f"loss '{name}' has no option margin"):
        instantiate("loss", node)
