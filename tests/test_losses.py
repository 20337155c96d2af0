"""Losses: values against torch.nn.functional or the paper's formula (plus hand-computed golden values), parameter
validation, task checks, finite gradients, bf16 autocast, and every conf/loss YAML instantiating."""

import math
from pathlib import Path

import hydra.utils
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from rmlab import losses
from rmlab.errors import ConfigError
from rmlab.kinds import LOGITS, PAIR, SEQUENCE_PAIR, VALUE, TaskInfo
from rmlab.losses import GCE, MAE, MSE, NCERCE, SCE, CrossEntropy, Focal, Huber, LogCosh, SmoothL1

CONF_LOSS = Path(__file__).resolve().parents[1] / "conf" / "loss"
B, C = 16, 5

# The 2-class golden example: logits [0, ln 3] -> softmax p = [1/4, 3/4].
GOLD_LOGITS = torch.tensor([[0.0, math.log(3.0)]])
Y1 = torch.tensor([1])  # target class 1: p_y = 3/4
Y0 = torch.tensor([0])  # target class 0: p_y = 1/4


def _value_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, generator=g) * 3, torch.randn(B, generator=g) * 3


def _logits_batch(seed: int = 0, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, generator=g) * scale, torch.randint(0, C, (B,), generator=g)


def _pointwise_on_probs(ref, logits: torch.Tensor, target: torch.Tensor, **kw) -> torch.Tensor:
    """The pointwise-on-logits contract spelled with F: sum over classes and batch, divided by B."""
    probs, onehot = logits.softmax(-1), F.one_hot(target, logits.shape[-1]).float()
    return ref(probs, onehot, reduction="sum", **kw) / logits.shape[0]


POINTWISE_REFS = [
    (MSE(), F.mse_loss, {}),
    (MAE(), F.l1_loss, {}),
    (Huber(delta=0.7), F.huber_loss, {"delta": 0.7}),
    (Huber(), F.huber_loss, {"delta": 1.0}),
    (SmoothL1(beta=0.3), F.smooth_l1_loss, {"beta": 0.3}),
    (SmoothL1(), F.smooth_l1_loss, {"beta": 1.0}),
]
POINTWISE_IDS = ["mse", "mae", "huber-0.7", "huber", "smooth_l1-0.3", "smooth_l1"]


# --- values -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss, ref, kw", POINTWISE_REFS, ids=POINTWISE_IDS)
def test_pointwise_matches_functional_on_values(loss, ref, kw) -> None:
    out, tgt = _value_batch()
    torch.testing.assert_close(loss(out, tgt), ref(out, tgt, **kw))


@pytest.mark.parametrize("loss, ref, kw", POINTWISE_REFS, ids=POINTWISE_IDS)
def test_pointwise_matches_functional_on_logits(loss, ref, kw) -> None:
    out, tgt = _logits_batch()
    torch.testing.assert_close(loss(out, tgt), _pointwise_on_probs(ref, out, tgt, **kw))


def test_log_cosh_matches_definition_and_is_stable() -> None:
    out, tgt = _value_batch()
    torch.testing.assert_close(LogCosh()(out, tgt), torch.log(torch.cosh(out - tgt)).mean())
    logits, y = _logits_batch()
    d = logits.softmax(-1) - F.one_hot(y, C).float()
    torch.testing.assert_close(LogCosh()(logits, y), torch.log(torch.cosh(d)).sum(-1).mean())
    # log cosh(1) = ln((e + 1/e) / 2) = ln(1.5430806) = 0.4337808 (hand)
    torch.testing.assert_close(LogCosh()(torch.tensor([1.0]), torch.tensor([0.0])), torch.tensor(0.4337808))
    # cosh(1000) overflows float32; log cosh(+-1000) = 1000 - ln 2 = 999.3068528
    big = LogCosh()(torch.tensor([1000.0, -1000.0]), torch.zeros(2))
    torch.testing.assert_close(big, torch.tensor(1000.0 - math.log(2.0)))


def test_pointwise_golden_values_on_logits() -> None:
    # p = [1/4, 3/4], y = 1, one-hot [0, 1]: residuals [1/4, -1/4]
    # mae = 1/4 + 1/4 = 0.5 = 2 (1 - p_y);  mse = 1/16 + 1/16 = 0.125
    torch.testing.assert_close(MAE()(GOLD_LOGITS, Y1), torch.tensor(0.5))
    torch.testing.assert_close(MSE()(GOLD_LOGITS, Y1), torch.tensor(0.125))
    # huber(delta=0.1): |d| = 1/4 >= 0.1 -> 0.1 (0.25 - 0.05) = 0.02 per class, 0.04 summed
    torch.testing.assert_close(Huber(delta=0.1)(GOLD_LOGITS, Y1), torch.tensor(0.04))


def test_mae_on_logits_is_ghosh_mae() -> None:
    out, tgt = _logits_batch()
    p_y = out.softmax(-1).gather(1, tgt[:, None]).squeeze(1)
    torch.testing.assert_close(MAE()(out, tgt), (2 * (1 - p_y)).mean())


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5, 3.0, 1.5]])
def test_cross_entropy_matches_functional(smoothing: float, weights: list[float] | None) -> None:
    out, tgt = _logits_batch()
    w = None if weights is None else torch.tensor(weights)
    expected = F.cross_entropy(out, tgt, weight=w, label_smoothing=smoothing)
    torch.testing.assert_close(CrossEntropy(label_smoothing=smoothing, class_weights=weights)(out, tgt), expected)


def _log_py(out: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    return out.log_softmax(-1).gather(1, tgt[:, None]).squeeze(1)


def test_focal_matches_formula() -> None:
    out, tgt = _logits_batch()
    log_py = _log_py(out, tgt)
    p_y = log_py.exp()
    torch.testing.assert_close(Focal(gamma=2.0)(out, tgt), (-(1 - p_y) ** 2 * log_py).mean())
    alpha = [0.1, 0.2, 0.3, 0.4, 0.5]
    expected = (-torch.tensor(alpha)[tgt] * (1 - p_y) ** 2 * log_py).mean()
    torch.testing.assert_close(Focal(gamma=2.0, alpha=alpha)(out, tgt), expected)
    # gamma = 0, no alpha: cross entropy
    torch.testing.assert_close(Focal(gamma=0.0)(out, tgt), F.cross_entropy(out, tgt))


def _sigmoid_focal(logit: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """torchvision.ops.sigmoid_focal_loss (Lin et al. eq. 5 with alpha_t), written out, mean reduction."""
    t = target.float()
    p = torch.sigmoid(logit)
    ce = F.binary_cross_entropy_with_logits(logit, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return (alpha_t * ce * (1 - p_t) ** gamma).mean()


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.75, 0.0), (0.5, 1.5)])
def test_focal_scalar_alpha_is_lins_class_balance_on_two_classes(alpha: float, gamma: float) -> None:
    g = torch.Generator().manual_seed(3)
    out, tgt = torch.randn(64, 2, generator=g) * 2, torch.randint(0, 2, (64,), generator=g)
    # Two softmax logits are one sigmoid logit, their difference: the loss is torchvision's sigmoid focal loss.
    expected = _sigmoid_focal(out[:, 1] - out[:, 0], tgt, alpha, gamma)
    torch.testing.assert_close(Focal(gamma=gamma, alpha=alpha)(out, tgt), expected)
    # Not a rescaling: class 1's samples weigh alpha, class 0's 1 - alpha.
    ones, zeros = tgt == 1, tgt == 0
    plain = Focal(gamma=gamma)
    weighted = Focal(gamma=gamma, alpha=alpha)
    torch.testing.assert_close(weighted(out[ones], tgt[ones]), alpha * plain(out[ones], tgt[ones]))
    torch.testing.assert_close(weighted(out[zeros], tgt[zeros]), (1 - alpha) * plain(out[zeros], tgt[zeros]))


def test_focal_scalar_alpha_on_more_classes_asks_for_per_class_weights() -> None:
    focal = Focal(alpha=0.25)
    focal.check_task(TaskInfo("toy", LOGITS, input_dim=4, num_classes=2))
    with pytest.raises(ConfigError, match=r"task 'toy' has 3 classes; give one weight per class instead, e\.g\. "
                                          r"loss\.alpha=\[1\.0, 1\.0, 1\.0\]"):
        focal.check_task(TaskInfo("toy", LOGITS, input_dim=4, num_classes=3))


def test_focal_golden() -> None:
    # y = 1, p_y = 3/4: (1/4)^2 * ln(4/3) = 0.0625 * 0.2876821 = 0.0179801
    torch.testing.assert_close(Focal(gamma=2.0)(GOLD_LOGITS, Y1), torch.tensor(0.0179801))
    # y = 0, p_y = 1/4: (3/4)^2 * ln 4 = 0.5625 * 1.3862944 = 0.7797906
    torch.testing.assert_close(Focal(gamma=2.0)(GOLD_LOGITS, Y0), torch.tensor(0.7797906))


def test_gce_matches_formula_and_golden() -> None:
    out, tgt = _logits_batch()
    p_y = _log_py(out, tgt).exp()
    torch.testing.assert_close(GCE(q=0.7)(out, tgt), ((1 - p_y**0.7) / 0.7).mean())
    # q = 1 is MAE on probabilities, halved
    torch.testing.assert_close(GCE(q=1.0)(out, tgt), MAE()(out, tgt) / 2)
    # q -> 0 approaches cross entropy
    torch.testing.assert_close(GCE(q=1e-4)(out, tgt), F.cross_entropy(out, tgt), rtol=1e-3, atol=1e-3)
    # y = 1, q = 0.5: (1 - sqrt(3/4)) / 0.5 = 2 (1 - 0.8660254) = 0.2679492
    torch.testing.assert_close(GCE(q=0.5)(GOLD_LOGITS, Y1), torch.tensor(0.2679492))


def _rce(out: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """RCE as Wang et al. write it: -sum_k p_k log(clamp(onehot_k, 1e-4))."""
    onehot = F.one_hot(tgt, out.shape[-1]).float().clamp(min=1e-4)
    return -(out.softmax(-1) * onehot.log()).sum(-1)


def test_sce_matches_formula_and_golden() -> None:
    out, tgt = _logits_batch()
    expected = (0.3 * F.cross_entropy(out, tgt, reduction="none") + 0.7 * _rce(out, tgt)).mean()
    torch.testing.assert_close(SCE(alpha=0.3, beta=0.7)(out, tgt), expected)
    # y = 1: CE = ln(4/3) = 0.2876821; RCE = -ln(1e-4) * (1 - 3/4) = 9.2103404 / 4 = ln 10 = 2.3025851
    # alpha = 0.1, beta = 1: 0.0287682 + 2.3025851 = 2.3313533
    torch.testing.assert_close(SCE()(GOLD_LOGITS, Y1), torch.tensor(2.3313533))


def test_nce_rce_matches_formula_and_golden() -> None:
    out, tgt = _logits_batch()
    log_probs = out.log_softmax(-1)
    nce = -_log_py(out, tgt) / -log_probs.sum(-1)
    expected = (0.5 * nce + 2.0 * _rce(out, tgt)).mean()
    torch.testing.assert_close(NCERCE(alpha=0.5, beta=2.0)(out, tgt), expected)
    # y = 1: NCE = ln(4/3) / (ln 4 + ln(4/3)) = 0.2876821 / 1.6739764 = 0.1718555; RCE = ln 10 = 2.3025851
    # alpha = beta = 1: 0.1718555 + 2.3025851 = 2.4744406
    torch.testing.assert_close(NCERCE()(GOLD_LOGITS, Y1), torch.tensor(2.4744406))


# --- validation -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs, fragment",
    [
        (Huber, {"delta": -1.0}, "huber: delta must be > 0, got -1.0"),
        (Huber, {"delta": 0}, "delta must be > 0"),
        (Huber, {"delta": "big"}, "delta must be a number"),
        (Huber, {"delta": float("nan")}, "delta must be finite"),
        (SmoothL1, {"beta": 0.0}, "smooth_l1: beta must be > 0, got 0.0"),
        (CrossEntropy, {"label_smoothing": 1.0}, "label_smoothing must be in [0, 1), got 1.0"),
        (CrossEntropy, {"label_smoothing": -0.1}, "label_smoothing must be in [0, 1)"),
        (CrossEntropy, {"class_weights": [1.0, 0.0]}, "class_weights must be a list of floats > 0"),
        (CrossEntropy, {"class_weights": []}, "class_weights must be null or a non-empty list"),
        (CrossEntropy, {"class_weights": 2.0}, "class_weights must be null or a non-empty list"),
        (Focal, {"gamma": -0.5}, "focal: gamma must be >= 0, got -0.5"),
        (Focal, {"alpha": 0.0}, "alpha must be null, a float in (0, 1)"),
        (Focal, {"alpha": 1.0}, "alpha must be null, a float in (0, 1)"),
        (Focal, {"alpha": 1.5}, "alpha must be null, a float in (0, 1)"),
        (Focal, {"alpha": [1.0, -1.0]}, "alpha must be a list of floats > 0"),
        (GCE, {"q": 0.0}, "gce: q must be in (0, 1], got 0.0"),
        (GCE, {"q": 1.2}, "q must be in (0, 1]"),
        (SCE, {"alpha": -0.1}, "sce: alpha must be >= 0, got -0.1"),
        (SCE, {"beta": -1.0}, "sce: beta must be >= 0"),
        (SCE, {"alpha": 0.0, "beta": 0.0}, "must not both be 0"),
        (NCERCE, {"alpha": -1.0}, "nce_rce: alpha must be >= 0"),
        (NCERCE, {"beta": -1.0}, "nce_rce: beta must be >= 0"),
        (NCERCE, {"alpha": 0, "beta": 0}, "must not both be 0"),
    ],
)
def test_invalid_params_raise_config_error(cls, kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        cls(**kwargs)
    assert fragment in str(err.value)


@pytest.mark.parametrize("loss", [CrossEntropy(class_weights=[1.0, 2.0]), Focal(alpha=[0.5, 0.5])])
def test_weight_length_mismatch_fails_check_task(loss) -> None:
    loss.check_task(TaskInfo("toy", LOGITS, input_dim=4, num_classes=2))
    with pytest.raises(ConfigError, match="has 2 entries but task 'toy' has 3 classes"):
        loss.check_task(TaskInfo("toy", LOGITS, input_dim=4, num_classes=3))


# --- gradients, autocast ----------------------------------------------------------------------------------------------

ALL_LOSSES = [
    MSE(), MAE(), Huber(), SmoothL1(), LogCosh(),
    CrossEntropy(label_smoothing=0.1, class_weights=[1.0, 2.0, 1.0, 1.0, 0.5]),
    Focal(), Focal(gamma=0.5, alpha=[1.0, 2.0, 1.0, 1.0, 0.5]), GCE(), SCE(), NCERCE(),
]  # fmt: skip


def _cases(loss: losses.Loss) -> list[tuple[torch.Tensor, torch.Tensor]]:
    cases = []
    if VALUE in loss.accepts:
        cases += [_value_batch(), (torch.tensor([1e4, -1e4, 0.0]), torch.zeros(3))]
    if LOGITS in loss.accepts:
        # scale 100: saturated softmax, p_y exactly 0 or 1 in float32
        cases += [_logits_batch(), _logits_batch(scale=100.0)]
    return cases


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda l: type(l).__name__)
def test_gradients_finite(loss: losses.Loss) -> None:
    for out, tgt in _cases(loss):
        out = out.clone().requires_grad_(True)
        value = loss(out, tgt)
        assert value.dim() == 0 and torch.isfinite(value)
        value.backward()
        assert torch.isfinite(out.grad).all()


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda l: type(l).__name__)
def test_bf16_autocast(loss: losses.Loss) -> None:
    for out, tgt in _cases(loss)[:1]:
        layer = torch.nn.Linear(out.shape[-1] if out.dim() == 2 else 1, out.shape[-1] if out.dim() == 2 else 1)
        x = out if out.dim() == 2 else out[:, None]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            head = layer(x)
            assert head.dtype == torch.bfloat16
            head = head if out.dim() == 2 else head.squeeze(-1)
            value = loss(head, tgt)
        assert value.dtype == torch.float32 and torch.isfinite(value)
        value.backward()
        assert torch.isfinite(layer.weight.grad).all()
        # the same as the float32 loss on the bf16 head's values
        torch.testing.assert_close(value, loss(head.detach().float(), tgt))


# --- configs ----------------------------------------------------------------------------------------------------------

YAMLS = sorted(CONF_LOSS.glob("*.yaml"))


def test_every_loss_class_has_a_yaml() -> None:
    targets = {OmegaConf.load(p)["_target_"] for p in YAMLS}
    classes = {f"rmlab.losses.{n}" for n in losses.__all__ if n not in ("Loss", "PointwiseLoss")}
    assert targets == classes


def _pair_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (B, 2) = (chosen, rejected) and the pair task's target: the items' true rewards, NaN when unknown."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 2, generator=g) * 3, torch.full((B, 2), float("nan"))


def _sequence_pair_batch():
    """Summed log-probs of (chosen, rejected) completions and their token counts: the policy's, and the frozen
    reference's as the target."""
    from rmlab.losses.preference_lm import PairLogps

    counts_c, counts_r = torch.tensor([3.0, 5.0, 2.0]), torch.tensor([4.0, 5.0, 6.0])
    policy = PairLogps(torch.tensor([-2.0, -4.0, -1.0]), torch.tensor([-3.0, -6.0, -5.0]), counts_c, counts_r)
    reference = PairLogps(torch.tensor([-2.5, -4.0, -1.5]), torch.tensor([-2.5, -5.0, -4.0]), counts_c, counts_r)
    return policy, reference


def _yaml_reference(name: str, cfg, out, tgt) -> torch.Tensor:
    """Each loss's formula written from its paper / torch.nn.functional, with the YAML's own parameter values."""
    if name in ("mse", "mae", "huber", "smooth_l1", "log_cosh"):
        d = out - tgt
        return {"mse": lambda: F.mse_loss(out, tgt), "mae": lambda: F.l1_loss(out, tgt),
                "huber": lambda: F.huber_loss(out, tgt, delta=cfg.delta),
                "smooth_l1": lambda: F.smooth_l1_loss(out, tgt, beta=cfg.beta),
                "log_cosh": lambda: torch.log(torch.cosh(d)).mean()}[name]()
    if name == "cross_entropy":
        return F.cross_entropy(out, tgt, label_smoothing=cfg.label_smoothing)
    if name in ("focal", "gce", "sce", "nce_rce"):
        log_py = _log_py(out, tgt)
        p_y = log_py.exp()
        ce, rce = -log_py, -math.log(1e-4) * (1 - p_y)
        if name == "focal":
            return (-(1 - p_y) ** cfg.gamma * log_py).mean()
        if name == "gce":
            return ((1 - p_y ** cfg.q) / cfg.q).mean()
        if name == "sce":
            return (cfg.alpha * ce + cfg.beta * rce).mean()
        nce = ce / -out.log_softmax(-1).sum(-1)
        return (cfg.alpha * nce + cfg.beta * rce).mean()
    if name == "dpo":  # Rafailov et al. 2023, sigmoid form: -log sigmoid(beta * (log-ratio chosen - rejected))
        h = (out.chosen - tgt.chosen) - (out.rejected - tgt.rejected)
        return -torch.log(torch.sigmoid(cfg.beta * h)).mean()
    if name == "dpo_ipo":  # Azar et al. 2023 on per-token log-ratios: (gap - 1/(2 beta))^2
        gap = (out.chosen - tgt.chosen) / out.chosen_tokens - (out.rejected - tgt.rejected) / out.rejected_tokens
        return ((gap - 1 / (2 * cfg.beta)) ** 2).mean()
    if name == "simpo":  # Meng et al. 2024: length-normalised, margin gamma
        a_c, a_r = out.chosen / out.chosen_tokens, out.rejected / out.rejected_tokens
        return -torch.log(torch.sigmoid(cfg.beta * (a_c - a_r) - cfg.gamma)).mean()
    if name == "orpo":  # Hong et al. 2024: NLL of chosen + beta * -log sigmoid(log odds ratio)
        a_c, a_r = out.chosen / out.chosen_tokens, out.rejected / out.rejected_tokens
        odds = lambda a: torch.exp(a) / (1 - torch.exp(a))  # noqa: E731
        nll = -out.chosen.sum() / out.chosen_tokens.sum()
        return nll - cfg.beta * torch.log(torch.sigmoid(torch.log(odds(a_c) / odds(a_r)))).mean()
    d = out[:, 0] - out[:, 1]
    if name == "bradley_terry":
        return -F.logsigmoid(d - cfg.margin).mean()
    if name == "hinge":
        return F.margin_ranking_loss(out[:, 0], out[:, 1], torch.ones(len(d)), margin=cfg.margin)
    if name == "log_exp":
        return torch.log1p(torch.exp(-d)).mean()
    if name == "ipo":
        return ((d - 1 / (2 * cfg.beta)) ** 2).mean()
    raise AssertionError(f"no reference for loss {name!r}: add one")


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_yaml_instantiates_and_computes_its_formula(path: Path) -> None:
    """Every conf/loss YAML builds its class, and on inputs of its own output kind gives the value of its formula
    with the YAML's parameters (pair losses get (chosen, rejected) scores, not class logits)."""
    cfg = OmegaConf.load(path)
    assert list(cfg.keys())[:2] == ["name", "_target_"] and cfg.name == path.stem
    spec = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "name"])
    loss = hydra.utils.instantiate(spec)
    assert isinstance(loss, losses.Loss) and loss.accepts
    kind = loss.accepts[0]
    batches = {VALUE: _value_batch, LOGITS: _logits_batch, PAIR: _pair_batch, SEQUENCE_PAIR: _sequence_pair_batch}
    out, tgt = batches[kind]()
    value = loss(out, tgt)
    assert value.ndim == 0 and torch.isfinite(value)
    torch.testing.assert_close(value, _yaml_reference(path.stem, cfg, out, tgt))
    assert value.item() != pytest.approx(0.0, abs=1e-3)  # a real value, not a degenerate zero


def test_yaml_lists_arrive_as_listconfig() -> None:
    cfg = OmegaConf.load(CONF_LOSS / "focal.yaml")
    cfg.pop("name")
    cfg.alpha = [0.1, 0.2, 0.3, 0.2, 0.2]
    focal = hydra.utils.instantiate(cfg)
    assert focal.alpha_per_class.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.2, 0.2])
    cfg = OmegaConf.load(CONF_LOSS / "cross_entropy.yaml")
    cfg.pop("name")
    cfg.class_weights = [1.0, 2.0]
    assert hydra.utils.instantiate(cfg).class_weights.tolist() == [1.0, 2.0]


def test_a_dpo_variants_errors_name_the_loss_the_user_chose():
    from rmlab.errors import ConfigError
    from rmlab.losses.preference_lm import DPOIPO

    with pytest.raises(ConfigError, match=r"^dpo_ipo: beta must be > 0"):
        DPOIPO(beta=-1.0)
