"""REINFORCE, RLOO and GRPO on sequences: their configs (every key validated, YAMLs = class signatures), start-up
checks, rollouts and losses on hand-computed values, ``feedback=reinforce`` binding its sequence algorithm, and the
shared step: its expected gradient against the analytic gradient of the expected reward, and small policies that
learn from a reward through it."""

import math
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from rmlab.build import accepted_parameters, instantiate
from rmlab.errors import ConfigError, IncompatibleError
from rmlab.feedback import Reinforce
from rmlab.kinds import LOGITS, SEQUENCE, TaskInfo
from rmlab.policy import GRPO, RLOO, SequenceReinforce, as_policy, completion_logprobs, policy_step
from rmlab.rewards import Accuracy, Reward

CONF = Path(__file__).resolve().parents[1] / "conf" / "feedback"
SEQ = TaskInfo(name="toy_seq", output_kind=SEQUENCE, input_dim=0, input_type="text")
CLF = TaskInfo(name="toy_clf", output_kind=LOGITS, input_dim=2, num_classes=3)
ALGORITHMS = {"grpo": GRPO, "rloo": RLOO}


class TextScore(Reward):
    """A per-sample sequence reward, as the text rewards are."""

    accepts: ClassVar[tuple[str, ...]] = (SEQUENCE,)
    has_per_sample: ClassVar[bool] = True


class TextAggregate(Reward):
    """A sequence reward without a per-sample form."""

    accepts: ClassVar[tuple[str, ...]] = (SEQUENCE,)


# -- configs ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_yaml_lists_every_param_with_the_class_defaults(name):
    node = OmegaConf.load(CONF / f"{name}.yaml")
    assert node.name == name
    params = {k: v for k, v in node.items() if k not in ("name", "_target_")}
    cls = ALGORITHMS[name]
    assert list(params) == accepted_parameters(cls)  # every option, none dead
    built, default = instantiate("feedback", node), cls()
    assert isinstance(built, cls)
    assert repr(built) == repr(default)
    for key in ("num_samples", "beta", "kl_estimator", "kl_in", "num_iterations", "epsilon", "epsilon_high",
                "entropy_coef", "loss_weight", "feedback_weight"):
        assert getattr(built, key) == getattr(default, key)
    assert built.sampling == default.sampling


def test_sequence_reinforce_takes_the_reinforce_yaml_keys():
    """``feedback=reinforce`` on a sequence task builds a SequenceReinforce from the shared reinforce.yaml: every key
    of that class is in the YAML (with its default), and the YAML's other keys are the tabular-only ones."""
    node = OmegaConf.load(CONF / "reinforce.yaml")
    yaml_keys = [k for k in node if k not in ("name", "_target_")]
    sequence_keys = accepted_parameters(SequenceReinforce)
    assert set(sequence_keys) <= set(yaml_keys)
    assert set(yaml_keys) - set(sequence_keys) == {"sigma", "learn_sigma"}
    defaults = SequenceReinforce()
    for key in ("loss_weight", "feedback_weight", "baseline", "momentum", "num_samples", "beta", "kl_estimator",
                "kl_in", "entropy_coef"):
        assert node[key] == getattr(defaults, key), key
    for key, value in defaults.sampling.items():
        assert node[key] == value, key


def test_unknown_keys_are_rejected_with_the_valid_ones():
    node = OmegaConf.load(CONF / "grpo.yaml")
    node.clip = 0.3
    with pytest.raises(ConfigError, match=r"feedback 'grpo' has no option clip; its options are: num_samples, beta"):
        instantiate("feedback", node)


BAD = [
    ("grpo", {"num_samples": 1}, "num_samples must be an integer >= 2, got 1"),
    ("rloo", {"num_samples": 1.5}, "num_samples must be an integer >= 2"),
    ("grpo", {"num_samples": True}, "num_samples must be an integer"),
    ("grpo", {"beta": -0.1}, "beta must be a finite number >= 0, got -0.1"),
    ("rloo", {"beta": math.nan}, "beta must be a finite number >= 0"),
    ("grpo", {"beta": True}, "beta must be a finite number"),
    ("grpo", {"kl_estimator": "k4"}, "kl_estimator must be one of k1, k2, k3"),
    ("rloo", {"kl_in": "advantage"}, "kl_in must be one of reward, loss"),
    ("grpo", {"num_iterations": 0}, "num_iterations must be an integer >= 1"),
    ("grpo", {"epsilon": 0.0}, r"epsilon must be a finite number in \(0, 1\)"),
    ("rloo", {"epsilon": 1.0}, r"epsilon must be a finite number in \(0, 1\)"),
    ("grpo", {"epsilon_high": 0.0}, "epsilon_high must be a finite number > 0"),
    ("grpo", {"epsilon_high": math.inf}, "epsilon_high must be a finite number > 0"),
    ("grpo", {"scale_rewards": "prompt"}, "scale_rewards must be one of group, batch, none"),
    ("grpo", {"loss_type": "sum"}, "loss_type must be one of grpo, bnpo, dr_grpo, dapo"),
    ("rloo", {"normalize_advantages": "yes"}, "normalize_advantages must be true or false"),
    ("grpo", {"entropy_coef": -0.01}, "entropy_coef must be a finite number >= 0"),
    ("grpo", {"loss_weight": -1}, "loss_weight must be a finite number >= 0"),
    ("rloo", {"loss_weight": 0, "feedback_weight": 0}, "both 0: nothing would be trained"),
    ("grpo", {"entropy_coef": 0.1, "feedback_weight": 0, "loss_weight": 1}, "entropy bonus is part of the policy"),
    ("grpo", {"temperature": 0}, "temperature must be a finite number > 0"),
    ("rloo", {"top_k": -1}, "top_k must be an integer >= 0"),
    ("grpo", {"top_p": 0.0}, r"top_p must be a finite number in \(0, 1\]"),
    ("grpo", {"top_p": 1.5}, r"top_p must be a finite number in \(0, 1\]"),
    ("rloo", {"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ("reinforce", {"baseline": "median"}, "baseline must be one of none, batch_mean, moving_average, greedy"),
    ("reinforce", {"momentum": 1.0}, r"momentum must be a finite number in \[0, 1\)"),
]


@pytest.mark.parametrize("name, params, message", BAD, ids=[f"{n}-{next(iter(p))}" for n, p, _ in BAD])
def test_bad_values_are_config_errors_naming_the_key(name, params, message):
    cls = {"reinforce": SequenceReinforce, **ALGORITHMS}[name]
    with pytest.raises(ConfigError, match=message):
        cls(**params)


def test_reinforce_yaml_validates_the_sequence_keys_at_construction():
    with pytest.raises(ConfigError, match="feedback.kl_estimator must be one of k1, k2, k3"):
        Reinforce(kl_estimator="k9")
    with pytest.raises(ConfigError, match="feedback.top_p"):
        Reinforce(top_p=2.0)


# -- start-up checks -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [GRPO, RLOO])
def test_check_refuses_non_sequence_tasks_and_rewards_without_a_per_sample_form(cls):
    with pytest.raises(IncompatibleError, match=r"trains language models on sequence tasks, but task=toy_clf "
                                                r"outputs 'logits'. Choices of feedback that work on task=toy_clf: "
                                                r"reinforce$"):
        cls().check(Accuracy(), CLF)
    with pytest.raises(IncompatibleError, match="has no per-sample form"):
        cls().check(TextAggregate(), SEQ)
    with pytest.raises(IncompatibleError, match="does not score the completions of a 'sequence' task"):
        cls().check(Accuracy(), SEQ)
    cls().check(TextScore(), SEQ)


def test_feedback_reinforce_binds_a_sequence_algorithm_on_sequence_tasks():
    feedback = Reinforce(baseline="moving_average", num_samples=4, beta=0.1, kl_in="loss", kl_estimator="k3",
                         loss_weight=0.5, temperature=0.8)
    with pytest.raises(TypeError, match="not bound to a sequence task"):
        as_policy(feedback)
    feedback.check(TextScore(), SEQ)
    algorithm = as_policy(feedback)
    assert isinstance(algorithm, SequenceReinforce)
    assert (algorithm.baseline, algorithm.num_samples, algorithm.beta, algorithm.kl_in, algorithm.kl_estimator,
            algorithm.loss_weight, algorithm.temperature) == ("moving_average", 4, 0.1, "loss", "k3", 0.5, 0.8)
    assert "sequence.average" in feedback.state_dict()  # the moving average is saved with the run
    with pytest.raises(RuntimeError, match="policy_step"):
        feedback(torch.zeros(2, 3), torch.zeros(2), TextScore())
    with pytest.raises(IncompatibleError, match="no per-sample form"):
        Reinforce().check(TextAggregate(), SEQ)


def test_reinforce_keys_of_the_other_kind_are_refused():
    with pytest.raises(ConfigError, match=r"feedback.beta=0.1, feedback.top_k=5: KL, entropy and sampling keys "
                                          r"apply to sequence tasks .* task=toy_clf outputs 'logits'"):
        Reinforce(beta=0.1, top_k=5).check(Accuracy(), CLF)
    with pytest.raises(ConfigError, match="feedback.sigma and feedback.learn_sigma .* sequence task"):
        Reinforce(sigma=0.3).check(TextScore(), SEQ)
    with pytest.raises(ConfigError, match="feedback.sigma and feedback.learn_sigma"):
        Reinforce(learn_sigma=True).check(TextScore(), SEQ)


# -- rollouts and losses on hand-computed values ---------------------------------------------------------------------
MASK = torch.tensor([[True, True], [True, False]])


def test_rloo_with_the_kl_in_the_reward():
    """Two samples of one prompt; per-token k1 = old - ref, summed per completion, beta 0.5 off the reward."""
    old = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]])  # -9 is off the mask
    ref = torch.tensor([[-1.5, -1.0], [-1.0, -3.0]])
    algorithm = RLOO(num_samples=2, beta=0.5)
    rollout = algorithm.rollout(torch.tensor([1.0, 0.0]), MASK, old, ref)
    # KL per completion: (0.5 - 1.0) = -0.5 and 0.5; shaped rewards 1.25 and -0.25; advantages +-1.5.
    torch.testing.assert_close(rollout.advantages, torch.tensor([1.5, -1.5]))
    torch.testing.assert_close(rollout.stats["kl"], torch.tensor(0.0))  # (0.5 - 1.0 + 0.5) / 3 tokens
    torch.testing.assert_close(rollout.stats["kl_sequence"], torch.tensor(0.0))
    assert rollout.num_tokens.item() == 3
    # First update (logps == old): loss -mean(A * ratio) = 0, gradient -A / 2 on every completion token.
    logps = old.masked_fill(~MASK, 0.0).clone().requires_grad_()
    out = algorithm.loss(logps, rollout)
    out.loss.backward()
    torch.testing.assert_close(out.loss, torch.tensor(0.0))
    torch.testing.assert_close(logps.grad, torch.tensor([[-0.75, -0.75], [0.75, 0.0]]))
    assert out.metrics["clip_fraction"].item() == 0.0


def test_grpo_with_the_kl_in_the_loss():
    old = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    ref = old + math.log(2.0)  # every token twice as likely under the reference: k3 = 2 - 1 - ln 2 per token
    algorithm = GRPO(num_samples=2, beta=0.1, loss_type="bnpo")
    rollout = algorithm.rollout(torch.tensor([1.0, 0.0]), MASK, old, ref)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)  # (r - 0.5) / (group std + 1e-4)
    torch.testing.assert_close(rollout.advantages, torch.tensor([a, -a]))
    assert "kl" not in rollout.stats  # with the KL in the loss, the loss logs the current policy's
    logps = old.clone().requires_grad_()
    out = algorithm.loss(logps, rollout)
    k3 = 1 - math.log(2.0)
    # bnpo over 3 tokens: (-(a + a - a) + 0.1 * 3 * k3) / 3
    torch.testing.assert_close(out.loss, torch.tensor((-a + 0.3 * k3) / 3))
    torch.testing.assert_close(out.metrics["kl"], torch.tensor(k3))
    out.loss.backward()
    # d k3 / d logp = 1 - exp(ref - logp) = -1 per token.
    torch.testing.assert_close(logps.grad, torch.tensor([[-a - 0.1, -a - 0.1], [a - 0.1, 0.0]]) / 3)


def test_a_kl_is_logged_when_a_reference_is_given_with_beta_zero():
    rollout = GRPO(num_samples=2).rollout(torch.tensor([1.0, 0.0]), MASK, torch.zeros(2, 2),
                                          torch.full((2, 2), -1.0))
    torch.testing.assert_close(rollout.stats["kl"], torch.tensor(math.exp(-1) - 1 + 1))  # k3 at log r = -1
    # The KL changed nothing: beta is 0.
    torch.testing.assert_close(rollout.advantages, torch.tensor([0.5, -0.5]) / (math.sqrt(0.5) + 1e-4))


def test_rollout_statistics():
    rewards = torch.tensor([1.0, 1.0, 0.0, 3.0])
    mask = torch.tensor([[True, True, True], [True, False, False], [True, True, False], [True, False, False]])
    stats = RLOO(num_samples=2, beta=0.0).rollout(rewards, mask, torch.zeros(4, 3)).stats
    torch.testing.assert_close(stats["sampled_reward"], torch.tensor(1.25))
    torch.testing.assert_close(stats["reward_std"], torch.tensor(rewards.std().item()))
    torch.testing.assert_close(stats["completion_length"], torch.tensor(7 / 4))
    torch.testing.assert_close(stats["zero_std_groups"], torch.tensor(0.5))
    assert "kl" not in stats


@pytest.mark.parametrize("baseline, k, expected", [
    ("none", 1, [1.0, 0.0, 3.0, 2.0]),
    ("batch_mean", 1, [1 - 5 / 3, 0 - 6 / 3, 3 - 3 / 3, 2 - 4 / 3]),  # the batch's other completions
    ("batch_mean", 2, [1.0, -1.0, 1.0, -1.0]),  # the prompt's other sample
    ("greedy", 2, [1 - 0.5, 0 - 0.5, 3 - 2.5, 2 - 2.5]),  # each prompt's greedy completion scored 0.5 and 2.5
])
def test_reinforce_baselines(baseline, k, expected):
    algorithm = SequenceReinforce(baseline=baseline, num_samples=k)
    assert algorithm.needs_greedy == (baseline == "greedy")
    greedy = torch.tensor([0.5, 2.5]) if baseline == "greedy" else None
    rollout = algorithm.rollout(torch.tensor([1.0, 0.0, 3.0, 2.0]), torch.ones(4, 1, dtype=torch.bool),
                                torch.zeros(4, 1), greedy_rewards=greedy)
    torch.testing.assert_close(rollout.advantages, torch.tensor(expected))


def test_reinforce_moving_average_moves_in_training_only():
    algorithm = SequenceReinforce(baseline="moving_average", momentum=0.5)
    mask, old = torch.ones(2, 1, dtype=torch.bool), torch.zeros(2, 1)
    first = algorithm.rollout(torch.tensor([1.0, 3.0]), mask, old)  # the first batch is its own baseline: 2
    torch.testing.assert_close(first.advantages, torch.tensor([-1.0, 1.0]))
    second = algorithm.rollout(torch.tensor([6.0, 6.0]), mask, old)  # baseline 2, then 0.5 * 2 + 0.5 * 6 = 4
    torch.testing.assert_close(second.advantages, torch.tensor([4.0, 4.0]))
    algorithm.eval()
    for _ in range(2):
        torch.testing.assert_close(algorithm.rollout(torch.tensor([0.0, 0.0]), mask, old).advantages,
                                   torch.tensor([-4.0, -4.0]))


def test_reinforce_loss_is_minus_advantage_times_sequence_logprob():
    algorithm = SequenceReinforce(baseline="none")
    old = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    rollout = algorithm.rollout(torch.tensor([2.0, -1.0]), MASK, old)
    logps = old.clone().requires_grad_()
    algorithm.loss(logps, rollout).loss.backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[-1.0, -1.0], [0.5, 0.0]]))  # -A / B per token


def test_missing_inputs_are_errors():
    with pytest.raises(ValueError, match="needs the reference"):
        RLOO(num_samples=2, beta=0.1).rollout(torch.zeros(2), MASK, torch.zeros(2, 2))
    rollout = GRPO(num_samples=2).rollout(torch.zeros(2), MASK, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="needs the token entropies"):
        GRPO(num_samples=2, entropy_coef=0.1).loss(torch.zeros(2, 2), rollout)
    with pytest.raises(ValueError, match="greedy completion"):
        SequenceReinforce(baseline="greedy").rollout(torch.zeros(2), MASK, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="needs the task loss"):
        RLOO(loss_weight=1.0).combine(None, torch.tensor(1.0))


def test_combine_weighs_the_task_loss_and_the_policy_loss():
    pg = torch.tensor(2.0)
    assert GRPO().combine(None, pg).item() == 2.0
    assert GRPO(loss_weight=0.5, feedback_weight=2.0).combine(torch.tensor(3.0), pg).item() == 5.5
    assert GRPO(loss_weight=0.5, feedback_weight=0.0).combine(torch.tensor(3.0), torch.tensor(math.inf)).item() == 1.5


def test_rollout_select_keeps_the_generation_batch_token_count():
    rollout = GRPO(num_samples=2).rollout(torch.tensor([1.0, 0.0]), MASK, torch.zeros(2, 2))
    part = rollout.select(slice(1, 2))
    assert part.completion_mask.tolist() == [[True, False]] and part.advantages.shape == (1,)
    assert part.num_tokens.item() == 3


# -- the shared step -------------------------------------------------------------------------------------------------
class Bandit(nn.Module):
    """A 'language model' whose next-token logits are one parameter vector at every position."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(logits))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.theta.expand(*ids.shape, -1)


BANDIT_REWARD = torch.tensor([0.0, 1.0, 3.0, -1.0])


def bandit_grad(algorithm, temperature: float, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    model = Bandit([0.3, -0.2, 0.1, 0.5])

    def generate(ids, mask, greedy):
        probs = torch.softmax(model.theta.detach() / temperature, -1)
        if greedy:
            tokens = probs.argmax().expand(ids.shape[0])
        else:
            tokens = torch.multinomial(probs, ids.shape[0], replacement=True)
        return tokens.unsqueeze(1), torch.ones(ids.shape[0], 1, dtype=torch.bool)

    def score(ids, mask, prompt_index):
        return BANDIT_REWARD[ids[:, 0]]

    def update(loss):
        model.theta.grad = None
        loss.backward()

    policy_step(algorithm, torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool),
                generate=generate, score=score, policy=model, update=update)
    return model.theta.grad


@pytest.mark.parametrize("make", [
    lambda k, t: SequenceReinforce(baseline="none", num_samples=k, temperature=t),
    lambda k, t: SequenceReinforce(baseline="batch_mean", num_samples=k, temperature=t),
    lambda k, t: SequenceReinforce(baseline="greedy", num_samples=k, temperature=t),
    lambda k, t: RLOO(num_samples=k, beta=0.0, temperature=t),
    lambda k, t: GRPO(num_samples=k, scale_rewards="none", loss_type="grpo", temperature=t),
], ids=["reinforce-none", "reinforce-batch_mean", "reinforce-greedy", "rloo", "grpo-unscaled"])
def test_the_step_gradient_estimates_minus_the_gradient_of_the_expected_reward(make):
    """With p = softmax(theta / T): d E[r] / d theta = p * (r - E[r]) / T. The step's gradient, over 40,000 sampled
    completions, is its negative (GRPO's mean includes the sample: biased by 1/K, negligible here)."""
    temperature, k = 0.7, 40_000
    theta = torch.tensor([0.3, -0.2, 0.1, 0.5])
    p = torch.softmax(theta / temperature, -1)
    expected = -p * (BANDIT_REWARD - (p * BANDIT_REWARD).sum()) / temperature
    grad = bandit_grad(make(k, temperature), temperature)
    torch.testing.assert_close(grad, expected, atol=0.025, rtol=0)


class Bigram(nn.Module):
    """A tiny language model: the next token's logits depend on the current token only."""

    def __init__(self, vocab: int = 5) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(vocab, vocab))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


EOS, TARGET, NEW_TOKENS = 0, 3, 4


def sampler(model: Bigram, temperature: float):
    def generate(ids, mask, greedy):
        tokens, keep = [], []
        done = torch.zeros(ids.shape[0], dtype=torch.bool)
        for _ in range(NEW_TOKENS):
            logits = model(ids, mask)[:, -1].detach() / temperature
            token = logits.argmax(-1) if greedy else torch.distributions.Categorical(logits=logits).sample()
            keep.append(~done)  # up to and including the first EOS
            tokens.append(token)
            done = done | (token == EOS)
            ids = torch.cat([ids, token.unsqueeze(1)], 1)
        return torch.stack(tokens, 1), torch.stack(keep, 1)

    return generate


def share_of_target(ids, mask, prompt_index=None):
    return ((ids == TARGET) & mask).sum(1).float() / NEW_TOKENS


def train(algorithm, steps: int, reference: nn.Module | None = None, seed: int = 0):
    torch.manual_seed(seed)
    model = Bigram()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    generate = sampler(model, algorithm.temperature)

    def update(loss):
        optimizer.zero_grad()
        algorithm.combine(None, loss).backward()
        optimizer.step()

    history = []
    for _ in range(steps):
        prompts = torch.randint(1, 5, (4, 2))
        metrics = policy_step(algorithm, prompts, torch.ones_like(prompts, dtype=torch.bool), generate=generate,
                              score=share_of_target, policy=model, update=update, reference=reference)
        history.append({k: v.item() for k, v in metrics.items()})
    return model, history


@pytest.mark.parametrize("algorithm", [
    SequenceReinforce(baseline="batch_mean", num_samples=4, loss_weight=0.0),
    RLOO(num_samples=4, beta=0.0, num_iterations=2),
    GRPO(num_samples=4, num_iterations=2, epsilon_high=0.28),
], ids=["reinforce", "rloo", "grpo"])
def test_a_small_policy_learns_the_rewarded_token_through_the_step(algorithm):
    """Uniform at the start (reward about 1/5 per token): after 40 steps most tokens are the rewarded one."""
    _, history = train(algorithm, steps=40)
    assert history[0]["sampled_reward"] < 0.35
    assert sum(h["sampled_reward"] for h in history[-5:]) / 5 > 0.8
    assert {"pg_loss", "clip_fraction", "entropy", "completion_length", "reward_std", "advantage_std"} <= set(
        history[-1])
    assert history[-1]["entropy"] < history[0]["entropy"]


def test_the_kl_penalty_keeps_the_policy_near_its_reference():
    reference = Bigram()  # the start: uniform
    _, free = train(GRPO(num_samples=4, beta=0.0), steps=30, reference=reference)
    _, leashed = train(GRPO(num_samples=4, beta=1.0), steps=30, reference=reference)
    assert free[-1]["kl"] > 0.6  # beta 0: the reference only measures the drift
    assert leashed[-1]["kl"] < 0.3
    assert sum(h["sampled_reward"] for h in leashed[-5:]) < sum(h["sampled_reward"] for h in free[-5:])


def test_the_step_calls_greedy_generation_once_per_prompt_and_needs_a_reference_when_beta_is_set():
    model = Bigram()
    calls = []
    base = sampler(model, 1.0)

    def generate(ids, mask, greedy):
        calls.append((ids.shape[0], greedy))
        return base(ids, mask, greedy)

    prompts = torch.randint(1, 5, (3, 2))
    ones = torch.ones_like(prompts, dtype=torch.bool)
    policy_step(SequenceReinforce(baseline="greedy", num_samples=2), prompts, ones, generate=generate,
                score=share_of_target, policy=model, update=lambda loss: loss.backward())
    assert calls == [(6, False), (3, True)]
    with pytest.raises(ValueError, match="needs a reference policy"):
        policy_step(RLOO(num_samples=2), prompts, ones, generate=generate, score=share_of_target, policy=model,
                    update=lambda loss: loss.backward())


# -- precision and host syncs ----------------------------------------------------------------------------------------
class _NoHostReads(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:  # .item(), bool(tensor), int(tensor)
            raise AssertionError("the policy objective read a device value back to the host")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("algorithm", [
    SequenceReinforce(baseline="moving_average", num_samples=2, beta=0.1),
    RLOO(num_samples=2, normalize_advantages=True, kl_in="loss", kl_estimator="k3", entropy_coef=0.01),
    GRPO(num_samples=2, beta=0.1, scale_rewards="batch", loss_type="dr_grpo", entropy_coef=0.01),
    GRPO(num_samples=2, beta=0.1, kl_in="reward", loss_type="dapo"),
], ids=["reinforce", "rloo", "grpo-dr", "grpo-dapo"])
def test_rollout_and_loss_never_sync_with_the_host(algorithm):
    # On the meta device tensors have no data: any read-back (.item(), a data-dependent branch) fails.
    algorithm = algorithm.to("meta")
    meta = {"device": "meta"}
    mask = torch.ones(4, 3, dtype=torch.bool, **meta)
    logps = torch.zeros(4, 3, **meta, requires_grad=True)
    entropy = torch.zeros(4, 3, **meta, requires_grad=True)
    with _NoHostReads():
        for _ in range(2):
            rollout = algorithm.rollout(torch.zeros(4, **meta), mask, logps.detach(), torch.zeros(4, 3, **meta))
            algorithm.loss(logps, rollout, entropy).loss.backward()
    assert logps.grad is not None


def test_the_objective_is_float32_under_bf16_autocast():
    torch.manual_seed(0)
    head = nn.Linear(4, 7)
    x = torch.randn(4, 3, 4)
    ids = torch.randint(0, 7, (4, 3))
    mask = torch.ones(4, 3, dtype=torch.bool)
    algorithm = GRPO(num_samples=2, beta=0.1, num_iterations=2)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25])

    def run(logits):
        logps, entropy = completion_logprobs(torch.cat([logits[:, :1], logits], 1), 1, ids, mask, 1.0, "grad")
        rollout = algorithm.rollout(rewards, mask, logps.detach() + 0.1, logps.detach() - 0.2)
        return algorithm.loss(logps, rollout, entropy).loss

    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x)
        assert logits.dtype == torch.bfloat16
        value = run(logits)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    torch.testing.assert_close(value, run(logits.detach().float()))
