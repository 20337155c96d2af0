"""The known-reward text family: the gold function on hand-made reviews, the Bradley-Terry labels of
``review_preference`` against the gold scores, leak-free splits, and the ``review_writing`` view sharing the gold."""

import math

import numpy as np
import pytest
import torch

from rmlab.errors import ConfigError, IncompatibleError
from rmlab.rewards import GoldReward
from rmlab.sequence import TextExample
from rmlab.tasks import ReviewPreference
from rmlab.tasks.sequence import Addition, ReviewWriting
from rmlab.tasks.sequence.review_gold import MALFORMED, gold_score
from rmlab.tokenizer import decode


@pytest.mark.parametrize("text, value", [
    ("the soup was good", 1.0),
    ("the soup was awful", -1.0),
    ("the soup was green", 0.0),
    ("the soup was very tasty", 1.5),
    ("the soup was not good", -1.0),
    ("the soup was not very good", -1.5),
    ("the soup was not green", 0.0),
    ("  the soup is awful\n", -1.0),  # surrounding whitespace ignored; "is" reads as "was"
    ("the soup was very tasty but the staff was rude", (1.5 - 1.0) / 2),
    ("the pizza was good and the soup was rather dull", (1.0 - 1.5) / 2),  # the thing may come second
    ("the soup was good and the soup was good and the soup was good", 1.0),  # repeating praise does not pay
    # Not a review of the soup: malformed.
    ("the pizza was good", MALFORMED),
    ("the soup was good good", MALFORMED),
    ("the soup was yummy", MALFORMED),
    ("The soup was good", MALFORMED),
    ("the soup was good and", MALFORMED),
    ("the soup  was good", MALFORMED),
    ("the soup was good and the spaceship was good", MALFORMED),
    ("good good great excellent", MALFORMED),
    ("", MALFORMED),
])
def test_gold_score_on_hand_made_reviews(text, value):
    assert gold_score("soup", text) == pytest.approx(value)


def test_pairs_follow_bradley_terry_of_the_gold_scores():
    temperature = 0.5
    task = ReviewPreference(n_pairs=20000, temperature=temperature, data_seed=3)
    prompts, pairs, gold = task.draw()
    things = [p.split("review of the ")[1].split(" by ")[0] for p in prompts]
    # The stored gold scores are the gold function of the texts, chosen first.
    for i in range(0, 20000, 997):
        assert tuple(gold[i]) == (gold_score(things[i], pairs[i][0]), gold_score(things[i], pairs[i][1]))
    d = gold[:, 0] - gold[:, 1]
    gap = np.round(np.abs(d), 6)
    checked = 0
    for value in np.unique(gap[gap > 0]):
        rows = gap == value
        n = int(rows.sum())
        if n < 300:
            continue
        expected = 1.0 / (1.0 + math.exp(-value / temperature))  # P(the better review is chosen)
        observed = float((d[rows] > 0).mean())
        assert abs(observed - expected) < 4 * math.sqrt(expected * (1 - expected) / n), (value, n, observed, expected)
        checked += 1
    assert checked >= 4
    # Over all pairs, the share where the worse review was chosen is Bradley-Terry's (a deterministic label would
    # give 0).
    untied = gap > 0
    worse = 1.0 / (1.0 + np.exp(gap[untied] / temperature))
    assert (d[untied] < 0).mean() == pytest.approx(worse.mean(), abs=4 * math.sqrt(worse.mean() / untied.sum()))


def test_splits_are_grouped_by_prompt_and_carry_the_gold_scores():
    task = ReviewPreference(n_pairs=600, split_seed=1, with_prompt=True)
    splits = task.load()
    assert task.info.output_kind == "pair" and task.info.input_type == "tokens" and task.info.true_reward
    prompts = {}
    for name, split in splits.items():
        assert split.x.shape[1:] == (2, 128) and split.x.dtype == torch.int64
        texts = [decode(item).split(": ", 1) for item in split.x[:, 0]]
        prompts[name] = {t[0] for t in texts}
        for (prompt, review), y in zip(texts[:20], split.y[:20, 0].tolist()):
            thing = prompt.split("review of the ")[1].split(" by ")[0]
            assert gold_score(thing, review) == pytest.approx(y)
    assert not prompts["train"] & prompts["val"] and not prompts["train"] & prompts["test"]
    assert not prompts["val"] & prompts["test"]
    assert sum(len(s) for s in splits.values()) == 600


def test_pair_flip_swaps_train_pairs_only():
    clean = ReviewPreference(n_pairs=2000).load()
    noisy = ReviewPreference(n_pairs=2000, pair_flip=0.3, corrupt_val=False).load()
    assert torch.equal(clean["test"].x, noisy["test"].x) and torch.equal(clean["val"].x, noisy["val"].x)
    swapped = (noisy["train"].x[:, 0] != clean["train"].x[:, 0]).any(dim=1).float().mean().item()
    assert swapped == pytest.approx(0.3, abs=0.05)


def test_review_preference_refuses_bad_settings():
    with pytest.raises(ConfigError, match=r"task.max_length=40 is too short: the longest prompt \+ review takes \d+ "
                                          r"tokens; set task.max_length=\d+ or more"):
        ReviewPreference(n_pairs=50, max_length=40).load()
    for key, value in (("max_clauses", 0), ("max_clauses", 5), ("temperature", 0.0), ("negation", 1.5),
                       ("n_pairs", 0), ("temperature", float("nan"))):
        with pytest.raises(ConfigError, match=f"task.{key} must be"):
            ReviewPreference(**{key: value})


def test_review_writing_shares_the_gold_function():
    task = ReviewWriting(n_examples=60)
    splits = task.load()
    info = task.info
    assert info.gold is not None and info.verifier is None
    for example in splits["train"][:10]:
        assert example.prompt.startswith("review of the ") and example.prompt.endswith(": ")
        assert info.gold(example.completion, example) == gold_score(example.meta["thing"], example.completion)
        assert info.gold(example.completion, example) > MALFORMED  # the references are well-formed reviews
    assert Addition(n_examples=10).info.gold is None


def test_gold_reward_scores_with_the_task_and_is_refused_elsewhere():
    task = ReviewWriting(n_examples=30)
    example = TextExample("review of the soup by Anna on Monday: ", "the soup was good", {"thing": "soup"})
    reward = GoldReward()
    with pytest.raises(RuntimeError, match="call check_task"):
        reward.score(["x"], [example])
    reward.check_task(task.info)
    got = reward.score(["the soup was very good", "the soup was not good", "soup soup"], [example] * 3)
    assert got.tolist() == [1.5, -1.0, MALFORMED]
    with pytest.raises(IncompatibleError, match=r"reward=gold does not work on task=addition: it needs a task with a "
                                                r"hidden true reward"):
        GoldReward().check_task(Addition(n_examples=10).info)


def test_items_leave_the_prompt_out_by_default():
    with_prompt = ReviewPreference(n_pairs=200, with_prompt=True).load()
    without = ReviewPreference(n_pairs=200).load()
    for name in ("train", "val", "test"):
        assert torch.equal(with_prompt[name].y, without[name].y)  # the same pairs in the same splits
        for full, bare in zip(with_prompt[name].x[:20, 0], without[name].x[:20, 0]):
            assert decode(full).endswith(decode(bare)) and decode(bare).startswith("the ")
            assert decode(full).startswith("review of the ")
