"""Reward feedback (REINFORCE): the estimator's expected gradient against the analytic gradient of E[reward] for each
policy (categorical, Bernoulli pair, Gaussian), with every baseline; baseline values on hand-made batches; variance
reduction; pure reward-driven training of small models; start-up checks; no host syncs; the config."""

import math
from pathlib import Path
from typing import ClassVar

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from rmlab.build import accepted_parameters, build_components, instantiate
from rmlab.errors import ConfigError, IncompatibleError
from rmlab.feedback import BASELINES, FeedbackOut, Reinforce
from rmlab.kinds import LOGITS, PAIR, VALUE, TaskInfo
from rmlab.rewards import AUROC, F1, R2, Accuracy, NegECE, NegMAE, NegMSE, Precision, Recall, Reward, Spearman
from tests.conftest import compose_config

YAML = Path(__file__).resolve().parents[1] / "conf" / "feedback" / "reinforce.yaml"
CLF = TaskInfo(name="toy_clf", output_kind=LOGITS, input_dim=2, num_classes=3)
REG = TaskInfo(name="toy_reg", output_kind=VALUE, input_dim=4)
PAIRS = TaskInfo(name="toy_pair", output_kind=PAIR, input_dim=4)
N = 20_000  # samples for expectations: estimator std ~ 1/sqrt(N) of the per-sample spread


class PairOrder(Reward):
    """1 when the chosen item is ranked first: a pair reward that depends only on order, as the contract asks."""

    accepts: ClassVar[tuple[str, ...]] = (PAIR,)
    has_per_sample: ClassVar[bool] = True

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output[:, 0] > output[:, 1]).to(output.dtype)


def bound(info: TaskInfo, reward: Reward, **params) -> Reinforce:
    feedback = Reinforce(**params)
    feedback.check(reward, info)
    return feedback


def pg_grad(feedback: Reinforce, output: torch.Tensor, target: torch.Tensor, reward: Reward) -> torch.Tensor:
    """Gradient of pg_loss wrt ``output`` (a leaf), after one warm-up call so a moving average has a past."""
    if feedback.baseline == "moving_average":
        feedback(output, target, reward)
    output.grad = None
    feedback(output, target, reward).pg_loss.backward()
    return output.grad


# -- the expected gradient is -grad E[reward] ------------------------------------------------------------------------
@pytest.mark.parametrize("baseline", BASELINES)
def test_categorical_gradient_matches_the_analytic_gradient_of_expected_accuracy(baseline):
    torch.manual_seed(0)
    logits = torch.tensor([[0.5, -0.3, 0.1]], requires_grad=True)
    y = torch.tensor([1])
    feedback = bound(CLF, Accuracy(), baseline=baseline, num_samples=N)
    p = logits.detach().softmax(-1)[0]
    # E[R] = p_y, so d E[R] / d logits = p_y (e_y - p); pg_loss estimates -E[R].
    expected = -p[1] * (torch.nn.functional.one_hot(y, 3)[0] - p)
    torch.testing.assert_close(pg_grad(feedback, logits, y, Accuracy())[0], expected, atol=0.015, rtol=0)


@pytest.mark.parametrize("baseline", BASELINES)
def test_pair_gradient_matches_the_analytic_gradient_of_the_bernoulli_preference(baseline):
    torch.manual_seed(0)
    scores = torch.tensor([[0.3, -0.2]], requires_grad=True)
    target = torch.full((1, 2), float("nan"))  # pair targets may hold no true rewards
    feedback = bound(PAIRS, PairOrder(), baseline=baseline, num_samples=N)
    d = 0.5
    slope = torch.sigmoid(torch.tensor(d)) * torch.sigmoid(torch.tensor(-d))  # E[R] = sigmoid(s_c - s_r)
    expected = torch.stack([-slope, slope])
    torch.testing.assert_close(pg_grad(feedback, scores, target, PairOrder())[0], expected, atol=0.01, rtol=0)


@pytest.mark.parametrize("baseline", BASELINES)
def test_gaussian_gradient_matches_the_analytic_gradient_of_expected_neg_mse(baseline):
    torch.manual_seed(0)
    mu, y, sigma = torch.tensor([0.7], requires_grad=True), torch.tensor([-0.4]), 0.5
    # More samples than the others: the score of log(sigma) is noisier (estimator std here ~ 0.016 either way).
    feedback = bound(REG, NegMSE(), baseline=baseline, num_samples=5 * N, sigma=sigma, learn_sigma=True)
    grad = pg_grad(feedback, mu, y, NegMSE())
    # E[-(a - y)^2] = -((mu - y)^2 + sigma^2): d/dmu = -2 (mu - y); d/dlog(sigma) = -2 sigma^2.
    torch.testing.assert_close(grad, 2 * (mu.detach() - y), atol=0.07, rtol=0)
    torch.testing.assert_close(feedback.log_sigma.grad, torch.tensor(2 * sigma**2), atol=0.07, rtol=0)


# -- baselines -------------------------------------------------------------------------------------------------------
# Logits with one dominant class: the sampled action is the argmax, so rewards are known: right, wrong, right, right.
SURE = torch.tensor([[60.0, 0, 0], [0, 60, 0], [0, 0, 60], [60, 0, 0]])
SURE_Y = torch.tensor([0, 0, 2, 0])


@pytest.mark.parametrize(
    ("baseline", "mean_baseline", "advantages"),
    [
        ("none", 0.0, [1, 0, 1, 1]),
        ("batch_mean", 0.75, [1 / 3, -1, 1 / 3, 1 / 3]),  # leave-one-out: b_j = (sum - R_j) / (B - 1)
        ("greedy", 0.75, [0, 0, 0, 0]),  # the greedy action is the sampled one
        ("moving_average", 0.75, [0.25, -0.75, 0.25, 0.25]),  # first batch: its own mean
    ],
)
def test_baseline_values_on_a_hand_made_batch(baseline, mean_baseline, advantages):
    out = bound(CLF, Accuracy(), baseline=baseline)(SURE, SURE_Y, Accuracy())
    assert isinstance(out, FeedbackOut)
    assert out.sampled_reward.item() == pytest.approx(0.75)
    assert out.baseline.item() == pytest.approx(mean_baseline)
    advantages = torch.tensor(advantages, dtype=torch.float32)
    assert out.advantage_std.item() == pytest.approx(advantages.std(correction=0).item())
    if baseline == "greedy":
        assert out.pg_loss.item() == 0.0  # no advantage, no push


def test_moving_average_follows_its_momentum_and_only_moves_in_training():
    feedback = bound(CLF, Accuracy(), baseline="moving_average", momentum=0.9)
    assert feedback(SURE, SURE_Y, Accuracy()).baseline.item() == pytest.approx(0.75)  # initialised to 0.75
    wrong = torch.tensor([1, 2, 0, 0])  # rewards 0, 0, 0, 1: mean 0.25
    assert feedback(SURE, wrong, Accuracy()).baseline.item() == pytest.approx(0.75)  # the past, not this batch
    assert feedback.average.item() == pytest.approx(0.9 * 0.75 + 0.1 * 0.25)
    feedback.eval()
    feedback(SURE, wrong, Accuracy())
    assert feedback.average.item() == pytest.approx(0.7)
    assert set(feedback.state_dict()) == {"average", "initialised"}  # a resumed run keeps its average


def test_batch_mean_is_leave_one_out_over_each_inputs_samples():
    feedback = bound(REG, NegMSE(), baseline="batch_mean", num_samples=3)
    rewards = torch.tensor([[1.0, 10.0], [2.0, 20.0], [6.0, 60.0]])  # (K=3 samples, B=2 inputs)
    b = feedback._baseline(rewards, NegMSE(), torch.zeros(2), torch.zeros(2))
    torch.testing.assert_close(b, torch.tensor([[4.0, 40.0], [3.5, 35.0], [1.5, 15.0]]))
    # One sample of one input: no other sample to average, so no baseline.
    single = bound(REG, NegMSE(), baseline="batch_mean")
    assert single._baseline(torch.tensor([[5.0]]), NegMSE(), torch.zeros(1), torch.zeros(1)).item() == 0.0


@pytest.mark.parametrize("baseline", ["batch_mean", "moving_average", "greedy"])
def test_baselines_reduce_the_variance_of_the_gradient(baseline):
    # A reward far from 0 (neg_mse with the mean 4 away from the target) is where a baseline matters. (With a 0/1
    # reward such as accuracy, subtracting E[R] can even add variance: the variance-optimal constant weights rewards
    # by the squared score, which is largest for rare actions.)
    rows, k = 2000, 8
    y = torch.full((rows,), 4.0)

    def row_gradients(name: str) -> torch.Tensor:
        torch.manual_seed(1)
        mu = torch.zeros(rows, requires_grad=True)
        return pg_grad(bound(REG, NegMSE(), baseline=name, num_samples=k), mu, y, NegMSE()) * rows

    plain, reduced = row_gradients("none"), row_gradients(baseline)
    assert reduced.mean().item() == pytest.approx(-8.0, abs=0.4)  # still unbiased: 2 (mu - y)
    assert reduced.var() < 0.25 * plain.var()


# -- learning from the reward alone ----------------------------------------------------------------------------------
def _train(model: torch.nn.Module, feedback: Reinforce, x, y, reward, steps: int, lr: float) -> None:
    opt = torch.optim.Adam([*model.parameters(), *feedback.parameters()], lr=lr)
    for _ in range(steps):
        out = model(x).squeeze(-1)
        total = feedback.combine(torch.tensor(float("nan")), feedback(out, y, reward).pg_loss)  # loss is unused
        opt.zero_grad()
        total.backward()
        opt.step()


def test_pure_reward_driven_classification_learns():
    torch.manual_seed(0)
    centers = torch.tensor([[3.0, 0.0], [-1.5, 2.6], [-1.5, -2.6]])
    y = torch.arange(3).repeat(100)
    x = centers[y] + 0.7 * torch.randn(300, 2)
    model = torch.nn.Linear(2, 3)
    feedback = bound(CLF, Accuracy(), loss_weight=0.0, baseline="batch_mean", num_samples=4)
    _train(model, feedback, x, y, Accuracy(), steps=200, lr=0.05)
    assert (model(x).argmax(-1) == y).float().mean() > 0.9


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_pure_reward_driven_regression_learns_and_a_learned_sigma_shrinks(learn_sigma):
    torch.manual_seed(0)
    x = torch.randn(200, 4)
    y = x @ torch.tensor([1.5, -2.0, 0.5, 1.0]) + 0.1 * torch.randn(200)
    model = torch.nn.Linear(4, 1)
    before = (model(x).squeeze(-1) - y).square().mean().item()
    feedback = bound(REG, NegMSE(), loss_weight=0.0, baseline="greedy", num_samples=4, sigma=1.0,
                     learn_sigma=learn_sigma)
    _train(model, feedback, x, y, NegMSE(), steps=300, lr=0.05)
    after = (model(x).squeeze(-1) - y).square().mean().item()
    assert after < 0.1 * before
    if learn_sigma:
        assert feedback.current_sigma().item() < 0.5


def test_combine_weights_the_terms_and_leaves_out_a_zero_weighted_one():
    loss, pg = torch.tensor(2.0), torch.tensor(3.0)
    assert Reinforce(loss_weight=0.5, feedback_weight=2.0).combine(loss, pg).item() == pytest.approx(7.0)
    assert Reinforce(loss_weight=0.0).combine(torch.tensor(float("inf")), pg).item() == pytest.approx(3.0)
    assert Reinforce(feedback_weight=0.0).combine(loss, torch.tensor(float("nan"))).item() == pytest.approx(2.0)


# -- precision and host syncs ----------------------------------------------------------------------------------------
class _NoHostReads(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:  # .item(), bool(tensor), int(tensor)
            raise AssertionError("feedback read a device value back to the host")
        return func(*args, **(kwargs or {}))


CASES = [
    (CLF, Accuracy(), lambda: (torch.randn(8, 3), torch.randint(0, 3, (8,)))),
    (REG, NegMAE(), lambda: (torch.randn(8), torch.randn(8))),
    (PAIRS, PairOrder(), lambda: (torch.randn(8, 2), torch.randn(8, 2))),
]


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize(("info", "reward", "batch"), CASES, ids=[LOGITS, VALUE, PAIR])
def test_forward_and_backward_never_sync_with_the_host(info, reward, batch, baseline):
    # On the meta device tensors have no data: any read-back (.item(), a data-dependent branch) fails.
    feedback = bound(info, reward, baseline=baseline, num_samples=2, learn_sigma=info is REG).to("meta")
    output, target = (t.to("meta") for t in batch())
    output.requires_grad_(True)
    with _NoHostReads():
        for _ in range(2):
            feedback(output, target, reward).pg_loss.backward()
    assert output.grad is not None


@pytest.mark.parametrize(("info", "reward", "batch"), CASES, ids=[LOGITS, VALUE, PAIR])
def test_bf16_autocast_output_gives_a_float32_loss_and_finite_gradients(info, reward, batch):
    torch.manual_seed(0)
    output, target = batch()
    output = output.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bound(info, reward, baseline="greedy")(output, target, reward)
    assert all(t.dtype == torch.float32 for t in out)
    out.pg_loss.backward()
    assert torch.isfinite(output.grad.float()).all()


# -- start-up checks -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reward", "info", "choices"),
    [(r, CLF, ["accuracy"]) for r in (F1, Precision, Recall, AUROC, NegECE)]
    + [(r, REG, ["neg_mae", "neg_mse"]) for r in (R2, Spearman)],
)
def test_check_rejects_a_reward_without_a_per_sample_form_and_names_those_that_work(reward, info, choices):
    with pytest.raises(IncompatibleError) as err:
        Reinforce().check(reward(), info)
    message = str(err.value)
    assert f"reward={reward().name}" in message
    listed = message.split("fed back on task=")[1].split(";")[0]
    assert all(name in listed for name in choices)
    assert not any(name in listed for name in ("f1", "auroc", "r2", "spearman", "neg_ece"))


class PairMargin(PairOrder):
    """Scores the size of the gap: what a sampled choice, (1, 0) or (0, 1), does not have."""

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return output[:, 0] - output[:, 1]


class Confidence(Accuracy):
    """Per sample the top softmax probability: depends on magnitudes, not only on the argmax."""

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return output.softmax(-1).amax(-1)


@pytest.mark.parametrize(("reward", "info"), [(PairMargin("pair_margin"), PAIRS), (Confidence("confidence"), CLF)])
def test_check_rejects_a_per_sample_reward_that_reads_magnitudes_a_sampled_action_lacks(reward, info):
    with pytest.raises(IncompatibleError, match="magnitudes") as err:
        Reinforce().check(reward, info)
    listed = str(err.value).split("fed back on task=")[1].split(";")[0]
    assert "reward_margin" not in listed and reward.name not in listed
    Reinforce().check(PairOrder(), PAIRS)  # order only: fine
    Reinforce().check(NegMAE(), REG)  # a sampled value is a value: any per-sample regression reward is fine


def test_check_rejects_an_unsupported_output_kind_and_a_sigma_to_learn_on_classes():
    with pytest.raises(ConfigError, match="'sequence'"):
        Reinforce().check(Accuracy(), TaskInfo(name="seq", output_kind="sequence", input_dim=8))
    with pytest.raises(ConfigError, match="learn_sigma"):
        Reinforce(learn_sigma=True).check(Accuracy(), CLF)
    with pytest.raises(RuntimeError, match="check"):
        Reinforce()(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), Accuracy())


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"loss_weight": -1.0}, "loss_weight must be a number >= 0, got -1.0"),
        ({"feedback_weight": -0.5}, "feedback_weight must be a number >= 0, got -0.5"),
        ({"loss_weight": 0, "feedback_weight": 0}, "both 0"),
        ({"baseline": "mean"}, "baseline must be one of none, batch_mean, moving_average, greedy, got 'mean'"),
        ({"momentum": 1.0}, "momentum must be in [0, 1), got 1.0"),
        ({"momentum": -0.1}, "momentum must be in [0, 1), got -0.1"),
        ({"num_samples": 0}, "num_samples must be an integer >= 1, got 0"),
        ({"num_samples": 2.5}, "num_samples must be an integer >= 1, got 2.5"),
        ({"sigma": 0.0}, "sigma must be a number > 0, got 0.0"),
        ({"sigma": math.nan}, "sigma must be a number > 0, got nan"),
        ({"learn_sigma": "yes"}, "learn_sigma must be true or false, got 'yes'"),
        ({"learn_sigma": True, "feedback_weight": 0}, "sigma gets no gradient"),
    ],
)
def test_invalid_params_raise_config_errors_naming_param_value_and_range(params, fragment):
    with pytest.raises(ConfigError) as err:
        Reinforce(**params)
    assert fragment in str(err.value)


# -- config ----------------------------------------------------------------------------------------------------------
def test_yaml_lists_every_param_with_the_class_defaults_and_instantiates():
    node = OmegaConf.load(YAML)
    assert node.name == "reinforce"
    params = {k: v for k, v in node.items() if k not in ("name", "_target_")}
    assert list(params) == accepted_parameters(Reinforce)  # every option, none dead
    built = hydra.utils.instantiate({k: v for k, v in node.items() if k != "name"})
    default = Reinforce()
    assert isinstance(built, Reinforce)
    assert {k: getattr(built, k) for k in params} == {k: getattr(default, k) for k in params}
    assert isinstance(instantiate("feedback", node), Reinforce)  # the build path: `name` is dropped there


def test_a_run_with_a_reward_that_cannot_be_fed_back_fails_at_build_time():
    with pytest.raises(IncompatibleError, match="accuracy"):
        build_components(compose_config("feedback=reinforce", "reward=f1", "task=synthetic_classification"))
    built = build_components(compose_config("feedback=reinforce", "task=synthetic_classification"))
    assert isinstance(built.feedback, Reinforce) and built.feedback.output_kind == LOGITS
