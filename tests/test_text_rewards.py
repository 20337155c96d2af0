"""Text rewards against their reference implementations (sacreBLEU, rouge-score, nltk, the SQuAD v2.0 evaluation
script) on hand-made and generated examples; the per-sample / mean contract; start-up refusals; the reward configs."""

import collections
import re
import string
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torchmetrics import MeanMetric

from rmlab.build import instantiate
from rmlab.errors import ConfigError, IncompatibleError
from rmlab.kinds import SEQUENCE, SEQUENCE_PAIR, TaskInfo
from rmlab.rewards import (
    BLEU,
    ChrF,
    ExactMatch,
    LabelAccuracy,
    NegEditDistance,
    RougeL,
    TaskVerifier,
    TextReward,
    TokenF1,
)
from rmlab.rewards.ngram import SMOOTHING, tokenize_13a
from rmlab.sequence import TextExample
from rmlab.tasks.sequence import Addition, TextClassification

sacrebleu = pytest.importorskip("sacrebleu")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
nltk = pytest.importorskip("nltk")

CONF = Path(__file__).resolve().parents[1] / "conf" / "reward"
TEXT_REWARDS = {"exact_match": ExactMatch, "token_f1": TokenF1, "bleu": BLEU, "chrf": ChrF, "rouge_l": RougeL,
                "neg_edit_distance": NegEditDistance, "verifier": TaskVerifier, "label_accuracy": LabelAccuracy}
INFO = TaskInfo(name="toy", output_kind=SEQUENCE, input_dim=0)

# (hypothesis, reference): identical, near misses, short texts (shorter than the n-gram orders), punctuation, case,
# numbers, empty and whitespace-only hypotheses, unrelated texts.
PAIRS = [
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("the cat sat on the mat", "the cat sat on a mat"),
    ("hello world", "hello there world"),
    ("dog", "dog"),
    ("dog", "the dog"),
    ("a b c", "x y z"),
    ("The Big dog sees the small cat.", "the big dog sees the cat."),
    ("It costs $3,000.50 - or 3-4 times more!", "it costs $3,000.50, 3-4 times more"),
    ("vor gran ga miku o kura", "vor gran ga miku pim o rapi kura"),
    ("Anna organised a concert in Lima on Friday.", "Anna organised a concert in Lima on Friday"),
    ("Friday, Lima: Anna's concert", "Anna organised a concert in Lima on Friday."),
    ("the the the the", "the cat is on the mat"),
    ("(hi) there", "hi there"),
    ("", "some reference"),
    ("   ", "x"),
    ("dcba", "dcba "),
    ("579", "0579"),
]


def random_pairs(n=40, seed=0):
    """Word sequences over a small vocabulary, so n-grams overlap partially at every order."""
    rng = np.random.default_rng(seed)
    vocab = ["the", "cat", "dog", "sat", "on", "mat", "a", "big", "Red", ",", ".", "ran", "fast"]
    pairs = []
    for _ in range(n):
        ref = " ".join(rng.choice(vocab, size=rng.integers(1, 12)))
        hyp = " ".join(rng.choice(vocab, size=rng.integers(1, 12)))
        pairs.append((hyp, ref))
    return pairs


ALL_PAIRS = PAIRS + random_pairs()


def examples(references):
    return [TextExample(prompt=f"p{i}", completion=r) for i, r in enumerate(references)]


def scores(reward, pairs):
    hyps, refs = zip(*pairs)
    out = reward.score(list(hyps), examples(refs))
    assert out.dtype == torch.float32 and out.shape == (len(pairs),) and torch.isfinite(out).all()
    return out.double().numpy()


# --- BLEU and chrF against sacreBLEU ----------------------------------------------------------------------------------


def test_13a_tokenizer_matches_sacrebleu():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    reference = Tokenizer13a()
    lines = [h for pair in ALL_PAIRS for h in pair]
    lines += ["a-\nb &quot;q&quot; &amp; &lt;x&gt; <skipped>y", "1.5, 2,3 x.y 4-5"]
    for line in lines:
        assert tokenize_13a(line) == reference(line).split(), line


@pytest.mark.parametrize("smooth", SMOOTHING)
@pytest.mark.parametrize("max_order", [1, 2, 4])
@pytest.mark.parametrize("lowercase", [False, True])
@pytest.mark.parametrize("tokenize", [True, False])
def test_bleu_matches_sacrebleu_sentence_bleu(smooth, max_order, lowercase, tokenize):
    reward = BLEU(max_order=max_order, smooth=smooth, lowercase=lowercase, tokenize=tokenize)
    metric = sacrebleu.metrics.BLEU(smooth_method=smooth, max_ngram_order=max_order, lowercase=lowercase,
                                    tokenize="13a" if tokenize else "none", effective_order=True)
    expected = [metric.sentence_score(h, [r]).score / 100 for h, r in ALL_PAIRS]
    np.testing.assert_allclose(scores(reward, ALL_PAIRS), expected, rtol=1e-5, atol=1e-7)


def test_bleu_hand_values():
    # Exact answers score 1 however short (torchmetrics' sentence BLEU gives 0 here); no shared word scores 0.
    assert scores(BLEU(), [("dog", "dog"), ("a b c", "x y z"), ("", "x")]).tolist() == [1.0, 0.0, 0.0]
    # "hello world" vs "hello there world": 2/2 unigrams, 0/1 bigram (exp smoothing: 1/(2*1)), effective order 2,
    # brevity exp(1 - 3/2).
    expected = np.exp(1 - 3 / 2) * np.sqrt(1.0 * 0.5)
    assert scores(BLEU(), [("hello world", "hello there world")])[0] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("word_order", [0, 1, 2])
@pytest.mark.parametrize("char_order,beta", [(6, 2), (3, 1), (1, 3)])
@pytest.mark.parametrize("lowercase,whitespace", [(False, False), (True, False), (False, True)])
def test_chrf_matches_sacrebleu_sentence_chrf(word_order, char_order, beta, lowercase, whitespace):
    reward = ChrF(char_order=char_order, word_order=word_order, beta=beta, lowercase=lowercase, whitespace=whitespace)
    metric = sacrebleu.metrics.CHRF(char_order=char_order, word_order=word_order, beta=beta, lowercase=lowercase,
                                    whitespace=whitespace)
    expected = [metric.sentence_score(h, [r]).score / 100 for h, r in ALL_PAIRS]
    np.testing.assert_allclose(scores(reward, ALL_PAIRS), expected, rtol=1e-5, atol=1e-7)


def test_chrf_hand_values():
    assert scores(ChrF(), [("dog", "dog"), ("abc", "xyz")]).tolist() == [1.0, 0.0]
    # "ab" vs "abc": orders 1-2 count (the hypothesis has no 3-gram); P = (1 + 1) / 2, R = (2/3 + 1/2) / 2.
    p, r = 1.0, (2 / 3 + 1 / 2) / 2
    assert scores(ChrF(), [("ab", "abc")])[0] == pytest.approx(5 * p * r / (4 * p + r), rel=1e-6)


# --- ROUGE-L, edit distance, SQuAD ------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_l_matches_rouge_score(use_stemmer):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    pairs = ALL_PAIRS + [("running dogs ran", "the dog runs")]
    expected = [scorer.score(r, h)["rougeL"].fmeasure for h, r in pairs]
    np.testing.assert_allclose(scores(RougeL(use_stemmer=use_stemmer), pairs), expected, rtol=1e-6, atol=1e-7)
    if use_stemmer:  # the stemmer changes this pair's score, so the knob is live
        assert scores(RougeL(use_stemmer=True), pairs[-1:])[0] > scores(RougeL(), pairs[-1:])[0]


def test_rouge_l_stemmer_needs_nltk(monkeypatch):
    monkeypatch.setitem(sys.modules, "nltk", None)
    with pytest.raises(ConfigError, match=r"reward 'rouge_l': use_stemmer needs nltk: pip install nltk"):
        RougeL(use_stemmer=True)


def test_neg_edit_distance_matches_nltk():
    stripped = [(h.strip(), r.strip()) for h, r in ALL_PAIRS]
    expected = [-nltk.edit_distance(h, r) / max(len(h), len(r), 1) for h, r in stripped]
    got = scores(NegEditDistance(), ALL_PAIRS)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got.max() == 0.0 and got.min() >= -1.0
    assert scores(NegEditDistance(), [("kitten", "sitting")])[0] == pytest.approx(-3 / 7)


# The SQuAD v2.0 evaluation script's normalisation, exact match and F1, verbatim in substance.
def squad_normalize(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_em(prediction, truth):
    return float(squad_normalize(prediction) == squad_normalize(truth))


def squad_f1(prediction, truth):
    pred, gold = squad_normalize(prediction).split(), squad_normalize(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    same = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def test_token_f1_matches_squad_script():
    pairs = ALL_PAIRS + [("The Lima.", "lima"), ("in Lima, Peru", "Lima"), ("a", "the")]
    np.testing.assert_allclose(scores(TokenF1(), pairs), [squad_f1(h, r) for h, r in pairs], rtol=1e-6)


def test_exact_match_normalisations():
    pairs = ALL_PAIRS + [("The Lima.", "lima"), ("dcba\n", "dcba")]
    assert scores(ExactMatch(normalize="squad"), pairs).tolist() == [squad_em(h, r) for h, r in pairs]
    assert scores(ExactMatch(normalize="strip"), pairs).tolist() == [float(h.strip() == r.strip()) for h, r in pairs]
    assert scores(ExactMatch(normalize="none"), pairs).tolist() == [float(h == r) for h, r in pairs]
    # The three differ on these pairs, so each knob value is live.
    assert scores(ExactMatch(normalize="none"), [("dcba\n", "dcba")])[0] == 0.0
    assert scores(ExactMatch(normalize="strip"), [("dcba\n", "dcba"), ("The Lima.", "lima")]).tolist() == [1.0, 0.0]


# --- the contract: per sample, mean aggregate, task requirements ---------------------------------------------------


@pytest.mark.parametrize("name", [n for n in TEXT_REWARDS if n not in ("verifier", "label_accuracy")])
def test_per_sample_and_mean_metric(name):
    reward = TEXT_REWARDS[name]()
    assert reward.accepts == (SEQUENCE, SEQUENCE_PAIR) and reward.has_per_sample and isinstance(reward, TextReward)
    hyps, refs = zip(*ALL_PAIRS)
    batch = examples(refs)
    per_sample = reward.per_sample(list(hyps), batch)
    assert torch.equal(per_sample, reward.score(list(hyps), batch))
    metric = reward.metric(INFO)
    assert isinstance(metric, MeanMetric)
    for start in range(0, len(batch), 7):  # uneven batches
        metric.update(reward.score(list(hyps[start:start + 7]), batch[start:start + 7]))
    assert metric.compute().item() == pytest.approx(per_sample.double().mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="2 completions for 1 examples"):
        reward.score(["a", "b"], batch[:1])
    assert reward.score([], []).shape == (0,)


def test_identical_texts_score_best():
    texts = [r for _, r in ALL_PAIRS if r.strip()]
    for name, cls in TEXT_REWARDS.items():
        if name in ("verifier", "label_accuracy"):
            continue
        best = 0.0 if name == "neg_edit_distance" else 1.0
        assert (scores(cls(), [(t, t) for t in texts]) == best).all(), name


def test_verifier_uses_the_task_checker_and_is_refused_without_one():
    task = Addition(n_examples=30)
    batch = task.load()["train"][:3]
    reward = TaskVerifier(name="verifier")
    with pytest.raises(RuntimeError, match="call check_task"):
        reward.score(["1"], batch[:1])
    reward.check_task(task.info)
    answers = [str(e.meta["answer"]) for e in batch]
    got = reward.score(["0" + answers[0], answers[1] + "1", " " + answers[2] + "\n"], batch)
    assert got.tolist() == [1.0, 0.0, 1.0]  # numerically checked: a leading zero is right, exact_match says no
    assert ExactMatch().score(["0" + answers[0]], batch[:1]).item() == 0.0
    with pytest.raises(IncompatibleError, match=r"reward=verifier does not work on task=toy: it needs a task with its "
                                                r"own answer checker .* use reward=bleu, chrf, combined, "
                                                r"exact_match, format, neg_edit_distance, neg_length, reward_model, "
                                                r"rouge_l, token_f1 instead"):
        reward.check_task(INFO)


def test_verifier_scores_the_clean_answer_of_a_corrupted_example():
    task = Addition(n_examples=200, completion_noise=0.5)
    noisy = [e for e in task.load()["train"] if "clean" in e.meta]
    assert noisy
    reward = TaskVerifier()
    reward.check_task(task.info)
    assert reward.score([e.meta["clean"] for e in noisy], noisy).eq(1).all()
    assert ExactMatch().score([e.meta["clean"] for e in noisy], noisy).eq(0).all()


def test_label_accuracy_needs_labels():
    task = TextClassification(n_examples=50, neutral=True)
    reward = LabelAccuracy()
    reward.check_task(task.info)
    batch = task.load()["train"][:4]
    labels = [e.completion for e in batch]
    wrong = next(label for label in task.labels if label != labels[1])
    assert reward.score([labels[0] + " \n", wrong, "great", labels[3]], batch).tolist() == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(IncompatibleError, match=r"reward=label_accuracy does not work on task=toy: it needs a text "
                                                r"classification task \(a label set\)"):
        reward.check_task(INFO)
    with pytest.raises(IncompatibleError):
        reward.metric(INFO)


# --- configs ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TEXT_REWARDS))
def test_reward_config_builds_with_every_key_live(name):
    path = CONF / f"{name}.yaml"
    assert path.read_text().startswith(f"name: {name}\n_target_: rmlab.rewards.")
    cfg = OmegaConf.load(path)
    reward = instantiate("reward", cfg)
    assert isinstance(reward, TEXT_REWARDS[name]) and reward.name == name
    for key, value in cfg.items():
        if key not in ("name", "_target_"):
            assert getattr(reward, key) == value, key


INVALID = [
    ("exact_match", "normalize", "lower", r"normalize must be one of none, strip, squad, got 'lower'"),
    ("bleu", "max_order", 0, r"max_order must be an integer in \[1, 10\], got 0"),
    ("bleu", "max_order", 2.5, r"max_order must be an integer in \[1, 10\], got 2.5"),
    ("bleu", "smooth", "add-one", r"smooth must be one of exp, floor, add-k, none, got 'add-one'"),
    ("bleu", "lowercase", "yes", r"lowercase must be true or false, got 'yes'"),
    ("bleu", "tokenize", 1, r"tokenize must be true or false, got 1"),
    ("chrf", "char_order", 11, r"char_order must be an integer in \[1, 10\], got 11"),
    ("chrf", "word_order", 3, r"word_order must be an integer in \[0, 2\], got 3"),
    ("chrf", "beta", 0, r"beta must be an integer in \[1, 10\], got 0"),
    ("chrf", "beta", True, r"beta must be an integer in \[1, 10\], got True"),
    ("chrf", "lowercase", None, r"lowercase must be true or false, got None"),
    ("chrf", "whitespace", "no", r"whitespace must be true or false, got 'no'"),
    ("rouge_l", "use_stemmer", 0, r"use_stemmer must be true or false, got 0"),
]


@pytest.mark.parametrize("name,key,value,message", INVALID, ids=lambda v: str(v))
def test_invalid_reward_values_are_one_line_errors(name, key, value, message):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg[key] = value
    with pytest.raises(ConfigError, match=rf"^reward '{name}': {message}$"):
        instantiate("reward", cfg)


def test_unknown_reward_key_lists_the_valid_ones():
    cfg = OmegaConf.load(CONF / "bleu.yaml")
    cfg.smoothing = "exp"
    with pytest.raises(ConfigError, match=r"reward 'bleu' has no option smoothing; its options are: max_order, "
                                          r"smooth, lowercase, tokenize"):
        instantiate("reward", cfg)
