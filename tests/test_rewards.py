"""Rewards: every aggregate against scikit-learn / scipy / a numpy reference over several update() batches, the sign
convention, per-sample forms, state handling (reset, device and dtype moves, pickling) and the reward configs."""

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from scipy.stats import spearmanr
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
)
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torchmetrics import MetricCollection

from rmlab.errors import ConfigError
from rmlab.kinds import ALL_KINDS, LOGITS, PAIR, SEQUENCE, VALUE, TaskInfo
from rmlab.rewards import (
    AUROC,
    BLEU,
    F1,
    R2,
    Accuracy,
    AdaptedMetric,
    ChrF,
    CombinedReward,
    ExactMatch,
    Format,
    GoldReward,
    LabelAccuracy,
    NegECE,
    NegEditDistance,
    NegLength,
    NegMAE,
    NegMSE,
    Precision,
    PreferenceAccuracy,
    PreferenceNegECE,
    Recall,
    Reward,
    RewardMargin,
    RewardModel,
    RougeL,
    Spearman,
    TaskVerifier,
    TokenF1,
    TrueRewardSpearman,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "reward"
CLASSIFICATION = [Accuracy, F1, Precision, Recall, AUROC, NegECE]
REGRESSION = [NegMSE, NegMAE, R2, Spearman]
PREFERENCE = [PreferenceAccuracy, RewardMargin, TrueRewardSpearman, PreferenceNegECE]  # more in test_preference.py
BATCHES = (100, 250, 37, 213)  # uneven, so accumulation across update() calls is exercised


def clf_info(num_classes: int) -> TaskInfo:
    return TaskInfo(name="toy", output_kind=LOGITS, input_dim=4, num_classes=num_classes)


REG_INFO = TaskInfo(name="toy", output_kind=VALUE, input_dim=4)
PAIR_INFO = TaskInfo(name="toy", output_kind=PAIR, input_dim=4, true_reward=True)


def info_for(reward: Reward, num_classes: int = 4) -> TaskInfo:
    if PAIR in reward.accepts:
        return PAIR_INFO
    return clf_info(num_classes) if LOGITS in reward.accepts else REG_INFO


def clf_data(num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits mildly informative about the target, so no metric sits at a trivial value."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, (sum(BATCHES),), generator=g)
    logits = torch.randn(sum(BATCHES), num_classes, generator=g)
    logits += 1.5 * nn.functional.one_hot(target, num_classes)
    return logits, target


def reg_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(sum(BATCHES), generator=g) * 2 + 1
    pred = target + torch.randn(sum(BATCHES), generator=g)
    return pred, target


def accumulate(metric, output: torch.Tensor, target: torch.Tensor) -> float:
    for out, tgt in zip(output.split(BATCHES), target.split(BATCHES), strict=True):
        metric.update(out, tgt)
    value = metric.compute()
    assert value.ndim == 0
    return float(value)


def softmax_np(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.double(), dim=1).numpy()


def ece_reference(probs: np.ndarray, target: np.ndarray, n_bins: int = 15) -> float:
    """Top-label L1 ECE: equal-width bins [k/n, (k+1)/n) over the max probability, |acc - conf| weighted by size."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == target).astype(float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += abs(correct[in_bin].mean() - conf[in_bin].mean()) * in_bin.mean()
    return ece


# --- aggregates against references ---------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [2, 5])
@pytest.mark.parametrize(
    ("reward_cls", "reference"),
    [
        (Accuracy, lambda y, p: accuracy_score(y, p.argmax(1))),
        (F1, lambda y, p: f1_score(y, p.argmax(1), average="macro")),
        (Precision, lambda y, p: precision_score(y, p.argmax(1), average="macro")),
        (Recall, lambda y, p: recall_score(y, p.argmax(1), average="macro")),
    ],
)
def test_label_metrics_match_sklearn(reward_cls, reference, num_classes):
    logits, target = clf_data(num_classes)
    got = accumulate(reward_cls().metric(clf_info(num_classes)), logits, target)
    assert got == pytest.approx(reference(target.numpy(), softmax_np(logits)), abs=1e-6)


@pytest.mark.parametrize(
    ("reward_cls", "score"), [(F1, f1_score), (Precision, precision_score), (Recall, recall_score)]
)
def test_macro_scores_average_over_seen_classes_like_sklearn(reward_cls, score):
    # 5 classes: 0-2 occur as targets, 3 is predicted but never a target (precision 0/0 -> 0), 4 never occurs at all
    # (left out of the average, as sklearn does).
    logits, _ = clf_data(5)
    logits[:, 4] = -10.0
    target = torch.randint(0, 3, (len(logits),), generator=torch.Generator().manual_seed(1))
    got = accumulate(reward_cls().metric(clf_info(5)), logits, target)
    want = score(target.numpy(), logits.argmax(1).numpy(), average="macro", zero_division=0)
    assert got == pytest.approx(want, abs=1e-6)


def test_auroc_multiclass_matches_sklearn_ovr_macro():
    logits, target = clf_data(5)
    got = accumulate(AUROC().metric(clf_info(5)), logits, target)
    want = roc_auc_score(target.numpy(), softmax_np(logits), multi_class="ovr", average="macro")
    assert got == pytest.approx(want, abs=1e-6)


def test_auroc_binary_is_the_ovr_macro_of_two_classes():
    logits, target = clf_data(2)
    got = accumulate(AUROC().metric(clf_info(2)), logits, target)
    y, probs = target.numpy(), softmax_np(logits)
    assert got == pytest.approx(roc_auc_score(y, probs[:, 1]), abs=1e-6)
    ovr_macro = np.mean([roc_auc_score(y == k, probs[:, k]) for k in range(2)])
    assert got == pytest.approx(ovr_macro, abs=1e-6)


@pytest.mark.parametrize("num_classes", [2, 5])
def test_neg_ece_matches_numpy_reference(num_classes):
    logits, target = clf_data(num_classes)
    got = accumulate(NegECE().metric(clf_info(num_classes)), logits, target)
    assert got == pytest.approx(-ece_reference(softmax_np(logits), target.numpy()), abs=1e-5)
    got7 = accumulate(NegECE(n_bins=7).metric(clf_info(num_classes)), logits, target)
    assert got7 == pytest.approx(-ece_reference(softmax_np(logits), target.numpy(), 7), abs=1e-5)


def test_neg_ece_golden_value():
    # Confidences 0.95 (right), 0.85 (wrong), 0.75 (right), 0.65 (right); none on a bin edge.
    probs = torch.tensor([[0.95, 0.05], [0.85, 0.15], [0.25, 0.75], [0.35, 0.65]])
    target = torch.tensor([0, 1, 1, 1])
    logits = probs.log()  # softmax(log p) == p
    # 5 bins: [0.6, 0.8) holds 0.75, 0.65 -> acc 1, conf 0.7; [0.8, 1) holds 0.95, 0.85 -> acc 0.5, conf 0.9.
    # ECE = 0.5 * 0.3 + 0.5 * 0.4 = 0.35
    metric = NegECE(n_bins=5).metric(clf_info(2))
    metric.update(logits[:3], target[:3])
    metric.update(logits[3:], target[3:])
    assert float(metric.compute()) == pytest.approx(-0.35, abs=1e-6)
    # 15 bins: every sample alone in its bin -> (0.05 + 0.85 + 0.25 + 0.35) / 4 = 0.375
    metric = NegECE().metric(clf_info(2))
    metric.update(logits, target)
    assert float(metric.compute()) == pytest.approx(-0.375, abs=1e-6)


@pytest.mark.parametrize(
    ("reward_cls", "reference"),
    [
        (NegMSE, lambda y, p: -mean_squared_error(y, p)),
        (NegMAE, lambda y, p: -mean_absolute_error(y, p)),
        (R2, r2_score),
        (Spearman, lambda y, p: spearmanr(p, y).statistic),
    ],
)
def test_regression_metrics_match_references(reward_cls, reference):
    pred, target = reg_data()
    got = accumulate(reward_cls().metric(REG_INFO), pred, target)
    assert got == pytest.approx(reference(target.numpy(), pred.numpy()), rel=1e-5, abs=1e-6)


# --- sign and the maximum ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("reward_cls", "best"), [(Accuracy, 1), (F1, 1), (Precision, 1), (Recall, 1), (AUROC, 1)])
@pytest.mark.parametrize("num_classes", [2, 4])
def test_perfect_classifier_scores_the_maximum(reward_cls, best, num_classes):
    _, target = clf_data(num_classes)
    logits = 50.0 * nn.functional.one_hot(target, num_classes).float()
    assert accumulate(reward_cls().metric(clf_info(num_classes)), logits, target) == pytest.approx(best)


def test_neg_ece_is_at_most_zero_and_zero_when_perfect():
    logits, target = clf_data(3)
    assert accumulate(NegECE().metric(clf_info(3)), logits, target) < 0
    perfect = 50.0 * nn.functional.one_hot(target, 3).float()
    assert accumulate(NegECE().metric(clf_info(3)), perfect, target) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("reward_cls", "best"), [(NegMSE, 0.0), (NegMAE, 0.0), (R2, 1.0), (Spearman, 1.0)])
def test_perfect_regressor_scores_the_maximum_and_errors_are_negated(reward_cls, best):
    pred, target = reg_data()
    assert accumulate(reward_cls().metric(REG_INFO), target.clone(), target) == pytest.approx(best, abs=1e-6)
    assert accumulate(reward_cls().metric(REG_INFO), pred, target) < best


def test_every_metric_declares_higher_is_better():
    for reward_cls in CLASSIFICATION + REGRESSION:
        metric = reward_cls().metric(info_for(reward_cls()))
        assert isinstance(metric, AdaptedMetric) and metric.higher_is_better


# --- per-sample forms ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reward_cls", [Accuracy, NegMSE, NegMAE])
def test_per_sample_mean_is_the_aggregate(reward_cls):
    reward = reward_cls()
    assert reward.has_per_sample
    output, target = clf_data(4) if reward_cls is Accuracy else reg_data()
    per_sample = torch.cat([reward.per_sample(o, t) for o, t in zip(output.split(BATCHES), target.split(BATCHES))])
    assert per_sample.shape == (sum(BATCHES),)
    aggregate = accumulate(reward.metric(info_for(reward)), output, target)
    assert float(per_sample.mean()) == pytest.approx(aggregate, rel=1e-5)


def test_per_sample_values():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]])
    assert Accuracy().per_sample(logits, torch.tensor([0, 2])).tolist() == [1.0, 0.0]
    pred, target = torch.tensor([1.0, -2.0]), torch.tensor([3.0, -2.5])
    assert NegMSE().per_sample(pred, target).tolist() == [-4.0, -0.25]
    assert NegMAE().per_sample(pred, target).tolist() == [-2.0, -0.5]


@pytest.mark.parametrize("reward_cls", [F1, Precision, Recall, AUROC, NegECE, R2, Spearman])
def test_aggregate_only_rewards_have_no_per_sample_form(reward_cls):
    reward = reward_cls()
    assert not reward.has_per_sample
    with pytest.raises(NotImplementedError, match=reward.name):
        reward.per_sample(torch.zeros(2, 3), torch.zeros(2))


# --- metric state ------------------------------------------------------------------------------------------------


def sample_batch(reward: Reward, num_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    if PAIR in reward.accepts:
        pred, target = reg_data()
        return pred.reshape(-1, 2), target.reshape(-1, 2)
    return clf_data(num_classes) if LOGITS in reward.accepts else reg_data()


@pytest.mark.parametrize("reward_cls", CLASSIFICATION + REGRESSION)
def test_reset_clears_state(reward_cls):
    reward = reward_cls()
    info = info_for(reward, 3)
    output, target = sample_batch(reward)
    fresh = accumulate(reward.metric(info), output, target)
    metric = reward.metric(info)
    stale_output, stale_target = clf_data(3, seed=1) if LOGITS in reward.accepts else reg_data(seed=1)
    metric.update(stale_output[:300], stale_target[:300])
    metric.compute()
    metric.reset()
    assert not metric.update_called and not metric.inner.update_called
    assert accumulate(metric, output, target) == pytest.approx(fresh, abs=1e-6)


class _NoHostReads(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:  # .item(), bool(tensor), int(tensor)
            raise AssertionError("update() read a device value back to the host")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("num_classes", [2, 5])
@pytest.mark.parametrize("reward_cls", CLASSIFICATION + REGRESSION)
def test_update_never_syncs_with_the_host(reward_cls, num_classes):
    # On the meta device tensors have no data, so any read-back (.item(), .cpu(), a data-dependent shape) fails,
    # and torchmetrics takes its accelerator code paths (its CPU paths branch on data, harmlessly there).
    reward = reward_cls()
    metric = reward.metric(info_for(reward, num_classes)).to("meta")
    output, target = sample_batch(reward, num_classes)
    with _NoHostReads():
        for _ in range(2):
            metric.update(output[:16].to("meta"), target[:16].to("meta"))


def inner_states(metric: AdaptedMetric) -> list[torch.Tensor]:
    states = [getattr(metric.inner, key) for key in metric.inner._defaults]
    return [t for s in states for t in (s if isinstance(s, list) else [s])]


@pytest.mark.parametrize("reward_cls", CLASSIFICATION + REGRESSION)
def test_device_moves_reach_the_inner_metric_through_a_parent_module(reward_cls):
    reward = reward_cls()
    parent = nn.Module()
    parent.reward_metric = reward.metric(info_for(reward, 3))
    output, target = sample_batch(reward)
    parent.reward_metric.update(output[:50], target[:50])  # list ("cat") states are non-empty too
    parent.to("meta")
    states = inner_states(parent.reward_metric)
    assert states and all(t.device.type == "meta" for t in states)
    assert parent.reward_metric.device.type == "meta" and parent.reward_metric.inner.device.type == "meta"


def test_dtype_moves_reach_the_inner_metric():
    parent = nn.Module()
    parent.reward_metric = NegMSE().metric(REG_INFO)
    parent.to(torch.float64)  # Module.to converts metric states; .double()/.float() are no-ops on any torchmetric
    assert parent.reward_metric.inner.sum_squared_error.dtype == torch.float64
    metric = NegMAE().metric(REG_INFO).set_dtype(torch.float64)
    assert metric.inner.sum_abs_error.dtype == torch.float64


@pytest.mark.parametrize("reward_cls", CLASSIFICATION + REGRESSION)
def test_metric_takes_float64_output_after_module_double(reward_cls):
    reward = reward_cls()
    parent = nn.Module()
    parent.reward_metric = reward.metric(info_for(reward, 3))
    parent.double()
    output, target = sample_batch(reward)
    want = accumulate(reward.metric(info_for(reward, 3)), output, target)
    target64 = target.double() if target.is_floating_point() else target
    assert accumulate(parent.reward_metric, output.double(), target64) == pytest.approx(want, abs=1e-5)


def test_forward_returns_the_signed_batch_value_and_accumulates():
    pred, target = reg_data()
    metric = NegMSE().metric(REG_INFO)
    batch_value = metric(pred[:100], target[:100])
    assert float(batch_value) == pytest.approx(-mean_squared_error(target[:100], pred[:100]), rel=1e-5)
    assert metric._forward_cache is batch_value  # what Lightning logs for on_step=True
    metric(pred[100:], target[100:])
    assert float(metric.compute()) == pytest.approx(-mean_squared_error(target, pred), rel=1e-5)


def test_metrics_pickle_and_work_in_a_collection():
    logits, target = clf_data(3)
    collection = MetricCollection({"accuracy": Accuracy().metric(clf_info(3)), "auroc": AUROC().metric(clf_info(3))})
    collection.update(logits, target)
    values = {k: float(v) for k, v in pickle.loads(pickle.dumps(collection)).compute().items()}
    assert values["accuracy"] == pytest.approx(accuracy_score(target, logits.argmax(1)), abs=1e-6)
    assert values["auroc"] == pytest.approx(roc_auc_score(target, softmax_np(logits), multi_class="ovr"), abs=1e-6)
    assert float(copy.deepcopy(collection)["accuracy"].compute()) == pytest.approx(values["accuracy"])


# --- task checks and configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("reward_cls", CLASSIFICATION)
@pytest.mark.parametrize("num_classes", [None, 1])
def test_classification_rewards_need_two_classes(reward_cls, num_classes):
    info = clf_info(num_classes)
    with pytest.raises(ConfigError, match="num_classes"):
        reward_cls().check_task(info)
    with pytest.raises(ConfigError, match="num_classes"):
        reward_cls().metric(info)


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True, "15", None])
def test_invalid_n_bins_raises_config_error(n_bins):
    with pytest.raises(ConfigError, match=r"n_bins must be an integer >= 1, got") as err:
        NegECE(n_bins=n_bins)
    assert repr(n_bins) in str(err.value)


# Text rewards (output kind sequence) have their own config tests in test_text_rewards.py.
TEXT = [ExactMatch, TokenF1, BLEU, ChrF, RougeL, NegEditDistance, TaskVerifier, LabelAccuracy, GoldReward, NegLength,
        Format, RewardModel, CombinedReward]
YAMLS = [p for p in sorted(CONF.glob("*.yaml")) if SEQUENCE not in get_class(OmegaConf.load(p)._target_).accepts]


def test_reward_configs_cover_every_reward():
    targets = {OmegaConf.load(path)._target_ for path in CONF.glob("*.yaml")}
    assert targets == {f"rmlab.rewards.{cls.__name__}" for cls in CLASSIFICATION + REGRESSION + PREFERENCE + TEXT}


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_reward_config_instantiates(path):
    assert path.read_text().startswith(f"name: {path.stem}\n_target_: rmlab.rewards.")
    cfg = OmegaConf.load(path)
    name = cfg.pop("name")
    assert name == path.stem
    reward = instantiate(cfg, name=name)
    assert isinstance(reward, Reward) and reward.name == name
    assert reward.accepts and set(reward.accepts) <= set(ALL_KINDS)
    for key, value in cfg.items():  # every config key reaches the reward (no dead options)
        if key != "_target_":
            assert getattr(reward, key) == value
    info = info_for(reward, 3)
    reward.check_task(info)
    output, target = sample_batch(reward)
    assert torch.isfinite(reward.metric(info)(output, target))


def test_invalid_config_value_surfaces_as_config_error():
    cfg = OmegaConf.load(CONF / "neg_ece.yaml")
    cfg.pop("name")
    cfg.n_bins = 0
    with pytest.raises(Exception) as err:  # Hydra wraps the constructor's error in InstantiationException
        instantiate(cfg, name="neg_ece")
    cause = err.value if isinstance(err.value, ConfigError) else err.value.__cause__
    assert isinstance(cause, ConfigError) and "n_bins" in str(cause)
