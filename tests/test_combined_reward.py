"""``combined`` (a weighted sum of text rewards, each term kept apart), ``neg_length`` and ``format``: values on
hand-made completions, every key of a term validated, and the shape Hydra overrides give."""

import pytest
import torch

from rmlab.build import build_components
from rmlab.errors import ConfigError
from rmlab.rewards import CombinedReward, ExactMatch, Format, NegLength, RewardModel
from rmlab.rewards.extras import GOLD, extra_names, score_with_extras
from rmlab.sequence import TextExample
from rmlab.tasks.sequence import ReviewWriting
from rmlab.tasks.sequence.review_gold import gold_score
from tests.conftest import compose_config
from tests.lm_fixtures import reward_model_checkpoint

EXAMPLES = [TextExample("q: ", "abc"), TextExample("q: ", "12"), TextExample("q: ", "x y")]
COMPLETIONS = ["abc", " 123 ", "x  y"]


def test_neg_length_and_format_on_hand_made_completions():
    assert NegLength().score(COMPLETIONS, EXAMPLES).tolist() == [-3.0, -5.0, -4.0]
    assert Format(pattern="[0-9]+").score(COMPLETIONS, EXAMPLES).tolist() == [0.0, 1.0, 0.0]  # stripped, whole text
    assert Format(pattern="[a-z]").score(COMPLETIONS, EXAMPLES).tolist() == [0.0, 0.0, 0.0]  # fullmatch, not search
    for pattern, message in ((None, "pattern must be a regular expression"), ("", "pattern must be"),
                             ("[0-9", "is not a valid regular expression")):
        with pytest.raises(ConfigError, match=message):
            Format(pattern=pattern)


def test_combined_is_the_weighted_sum_and_keeps_each_term():
    reward = CombinedReward(terms=[{"name": "exact_match", "weight": 2.0},
                                   {"name": "neg_length", "weight": 0.1},
                                   {"name": "format", "weight": -0.5, "label": "digits", "pattern": "[0-9]+"},
                                   {"name": "exact_match", "weight": 1.0, "label": "em_none", "normalize": "none"}])
    total, terms = reward.score_with_terms(COMPLETIONS, EXAMPLES)
    assert reward.term_names == ("exact_match", "neg_length", "digits", "em_none")
    em = ExactMatch().score(COMPLETIONS, EXAMPLES)
    length = NegLength().score(COMPLETIONS, EXAMPLES)
    digits = Format(pattern="[0-9]+").score(COMPLETIONS, EXAMPLES)
    em_none = ExactMatch(normalize="none").score(COMPLETIONS, EXAMPLES)
    for name, expected in zip(reward.term_names, (em, length, digits, em_none)):
        assert torch.equal(terms[name], expected), name
    torch.testing.assert_close(total, 2.0 * em + 0.1 * length - 0.5 * digits + em_none)
    torch.testing.assert_close(reward.score(COMPLETIONS, EXAMPLES), total)
    assert reward.rewards[3].normalize == "none" and reward.rewards[2].pattern.pattern == "[0-9]+"


@pytest.mark.parametrize("terms, message", [
    (None, "terms must be a non-empty list of rewards with weights"),
    ([], "terms must be a non-empty list"),
    ("neg_length", "terms must be a non-empty list"),
    (["neg_length"], r"reward.terms\[0\] must be a mapping"),
    ([{"weight": 1.0}], r"reward.terms\[0\].name must be a reward of generated text, one of .*neg_length"),
    ([{"name": "accuracy", "weight": 1.0}], r"reward.terms\[0\].name must be a reward of generated text"),
    ([{"name": "combined", "weight": 1.0}], r"reward.terms\[0\].name must be a reward of generated text"),
    ([{"name": "neg_length"}], r"reward.terms\[0\].weight must be a finite number other than 0, got None"),
    ([{"name": "neg_length", "weight": 0}], r"weight must be a finite number other than 0, got 0"),
    ([{"name": "neg_length", "weight": float("inf")}], r"weight must be a finite number"),
    ([{"name": "neg_length", "weight": True}], r"weight must be a finite number"),
    ([{"name": "neg_length", "weight": "1"}], r"weight must be a finite number"),
    ([{"name": "neg_length", "weight": 1, "label": "gold_reward"}], r"label must be a metric name .* other than"),
    ([{"name": "neg_length", "weight": 1, "label": "a b"}], r"label must be a metric name"),
    ([{"name": "neg_length", "weight": 1}, {"name": "neg_length", "weight": 2}],
     r"reward.terms\[1\]: label 'neg_length' is used by another term"),
    ([{"name": "neg_length", "weight": 1, "label": "combined"}], "may not be the combined reward's own name"),
    ([{"name": "exact_match", "weight": 1, "normalise": "none"}],
     r"reward.terms\[0\]: reward 'exact_match' has no option normalise; its options are: normalize"),
    ([{"name": "exact_match", "weight": 1, "normalize": "upper"}],
     r"reward.terms\[0\]: reward 'exact_match': normalize must be one of none, strip, squad"),
    ([{"name": "neg_length", "weight": 1}, {"name": "reward_model", "weight": 1, "init_from": "nope.ckpt"}],
     r"reward.terms\[1\]: reward.init_from=nope.ckpt: no such file or folder"),
    ([{"name": "format", "weight": 1}], r"reward.terms\[0\]: reward 'format' needs pattern: give it in the term"),
    ([{"name": "reward_model", "weight": 1}], r"reward.terms\[0\]: reward 'reward_model' needs init_from"),
])
def test_every_key_of_a_term_is_checked(terms, message):
    with pytest.raises(ConfigError, match=message):
        CombinedReward(terms=terms)


def test_hydra_overrides_express_the_terms_and_reward_model_terms_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = reward_model_checkpoint(tmp_path / "rm.ckpt")
    cfg = compose_config("task=review_writing", "task.n_examples=50", "model=causal_lm", "model.width=16",
                         "model.depth=1", "model.heads=2", "reward=combined",
                         f"reward.terms=[{{name: reward_model, weight: 1.0, init_from: {checkpoint}}}, "
                         "{name: neg_length, weight: 0.01}]")
    parts = build_components(cfg)
    reward = parts.reward
    assert isinstance(reward, CombinedReward) and isinstance(reward.rewards[0], RewardModel)
    assert extra_names(reward, parts.info) == ("reward_model", "neg_length", GOLD)
    examples = parts.task.load()["val"][:3]
    completions = ["the soup was good", examples[1].completion, "nonsense"]
    total, extras = score_with_extras(reward, parts.info, completions, examples)
    own = RewardModel(init_from=str(checkpoint)).score(completions, examples)
    torch.testing.assert_close(extras["reward_model"], own)
    torch.testing.assert_close(total, own + 0.01 * NegLength().score(completions, examples))
    assert extras[GOLD].tolist() == [gold_score(e.meta["thing"], c) for c, e in zip(completions, examples)]


def test_a_plain_reward_has_no_terms_and_gold_only_where_the_task_has_one():
    review = ReviewWriting(n_examples=20)
    examples = review.load()["train"][:2]
    score, extras = score_with_extras(NegLength(), review.info, ["a", "bb"], examples)
    assert score.tolist() == [-1.0, -2.0] and list(extras) == [GOLD]
    from rmlab.tasks.sequence import Reverse

    assert extra_names(NegLength(), Reverse(n_examples=20).info) == ()
