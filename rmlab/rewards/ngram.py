"""Sentence-level BLEU and chrF (output kind ``sequence``), as sacreBLEU's ``sentence_bleu`` and ``sentence_chrf``
compute them, on a scale of [0, 1]:

    BLEU  ``bleu``  geometric mean of clipped word n-gram precisions (13a tokens) times a brevity penalty
    ChrF  ``chrf``  F-beta of character n-gram precision and recall (chrF++ with ``word_order: 2``)

Written here rather than taken from torchmetrics.text, whose sentence scores are poor rewards on short texts: its
BLEU returns 0 whenever one n-gram order has no match, smoothing or not (``"dog"`` against ``"dog"`` scores 0.0,
``"hello world"`` against ``"hello there world"`` 0.0), and its chrF averages over n-gram orders longer than the text
(``"dog"`` against ``"dog"`` scores 0.5). SacreBLEU scores these 1.0, 0.43 and 1.0: only the n-gram orders a sentence
has count (its *effective order*), and an order without a match is smoothed. This module follows sacreBLEU 2.x
exactly (the tests compare them) and needs nothing beyond the standard library.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import ClassVar

from rmlab.rewards.text import TextReward, check_bool, check_choice, check_int_in

SMOOTHING = ("exp", "floor", "add-k", "none")
SMOOTH_VALUE = {"floor": 0.1, "add-k": 1.0}  # sacreBLEU's defaults for the two methods that take a value
MAX_ORDER = 10

# mteval-v13a tokenisation, as sacreBLEU's ``13a`` (Western languages): punctuation and symbols split off, periods
# and commas except inside numbers, a dash after a digit.
_13A = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)
_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def tokenize_13a(line: str) -> list[str]:
    """The words of ``line`` as sacreBLEU's default ``13a`` tokenizer splits them."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, replacement in _13A:
        line = pattern.sub(replacement, line)
    return line.split()


def _ngrams(tokens: list[str] | str, n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(hypothesis: str, reference: str, *, max_order: int = 4, smooth: str = "exp",
                  lowercase: bool = False, tokenize: bool = True) -> float:
    """BLEU of one hypothesis against one reference in [0, 1], with sacreBLEU's effective order (orders the
    hypothesis is too short for are left out) and its smoothing methods (Chen and Cherry, 2014): ``exp`` (halve the
    floor at each order with no match; mteval's), ``floor`` (0.1 matches), ``add-k`` (1 added to every order > 1),
    ``none``."""
    prepare = (lambda s: s.lower()) if lowercase else (lambda s: s)
    split = tokenize_13a if tokenize else str.split
    hyp, ref = split(prepare(hypothesis.rstrip())), split(prepare(reference.rstrip()))
    correct, total = [0.0] * max_order, [0.0] * max_order
    for n in range(1, max_order + 1):
        hyp_ngrams, ref_ngrams = _ngrams(hyp, n), _ngrams(ref, n)
        correct[n - 1] = sum(min(count, ref_ngrams[g]) for g, count in hyp_ngrams.items())
        total[n - 1] = sum(hyp_ngrams.values())
    if not any(correct):
        return 0.0
    brevity = 1.0 if len(hyp) >= len(ref) else math.exp(1 - len(ref) / len(hyp))
    log_precisions, halvings = [], 1.0
    for n in range(1, max_order + 1):
        if smooth == "add-k" and n > 1:
            correct[n - 1] += SMOOTH_VALUE["add-k"]
            total[n - 1] += SMOOTH_VALUE["add-k"]
        if total[n - 1] == 0:
            break  # effective order: the hypothesis has no n-grams this long
        if correct[n - 1] > 0:
            precision = correct[n - 1] / total[n - 1]
        elif smooth == "exp":
            halvings *= 2
            precision = 1.0 / (halvings * total[n - 1])
        elif smooth == "floor":
            precision = SMOOTH_VALUE["floor"] / total[n - 1]
        else:
            precision = 0.0
        log_precisions.append(math.log(precision) if precision > 0 else -math.inf)
    return brevity * math.exp(sum(log_precisions) / len(log_precisions))


def _words_for_chrf(text: str) -> list[str]:
    """chrF++'s word split: a word's one leading or trailing punctuation mark becomes a word of its own."""
    words = []
    for w in text.split():
        if len(w) > 1 and w[-1] in _PUNCTUATION:
            words += [w[:-1], w[-1]]
        elif len(w) > 1 and w[0] in _PUNCTUATION:
            words += [w[0], w[1:]]
        else:
            words.append(w)
    return words


def sentence_chrf(hypothesis: str, reference: str, *, char_order: int = 6, word_order: int = 0, beta: int = 2,
                  lowercase: bool = False, whitespace: bool = False) -> float:
    """chrF (chrF++ with ``word_order`` 2) of one hypothesis against one reference in [0, 1]: precision and recall
    averaged over the character (and word) n-gram orders both texts have, combined into an F-beta score."""
    if lowercase:
        hypothesis, reference = hypothesis.lower(), reference.lower()
    hyp_chars, ref_chars = (hypothesis, reference) if whitespace else ("".join(hypothesis.split()),
                                                                       "".join(reference.split()))
    pairs = [(_ngrams(hyp_chars, n), _ngrams(ref_chars, n)) for n in range(1, char_order + 1)]
    hyp_words, ref_words = _words_for_chrf(hypothesis), _words_for_chrf(reference)
    pairs += [(_ngrams(hyp_words, n), _ngrams(ref_words, n)) for n in range(1, word_order + 1)]
    precision_sum = recall_sum = 0.0
    orders = 0
    for hyp_ngrams, ref_ngrams in pairs:
        n_hyp, n_ref = sum(hyp_ngrams.values()), sum(ref_ngrams.values())
        if n_hyp == 0 or n_ref == 0:
            continue  # effective order: an order one of the texts is too short for
        matches = sum(min(count, ref_ngrams[g]) for g, count in hyp_ngrams.items())
        precision_sum += matches / n_hyp
        recall_sum += matches / n_ref
        orders += 1
    if orders == 0 or precision_sum + recall_sum == 0:
        return 0.0
    precision, recall = precision_sum / orders, recall_sum / orders
    factor = beta**2
    return (1 + factor) * precision * recall / (factor * precision + recall)


class BLEU(TextReward):
    """Sentence BLEU of the completion against the reference, in [0, 1] (sacreBLEU's ``sentence_bleu`` / 100)."""

    default_name = "bleu"

    def __init__(self, max_order: int = 4, smooth: str = "exp", lowercase: bool = False, tokenize: bool = True,
                 name: str | None = None) -> None:
        super().__init__(name)
        self.max_order = check_int_in(self.name, "max_order", max_order, 1, MAX_ORDER)
        self.smooth = check_choice(self.name, "smooth", smooth, SMOOTHING)
        self.lowercase = check_bool(self.name, "lowercase", lowercase)
        self.tokenize = check_bool(self.name, "tokenize", tokenize)

    def _score(self, completion: str, reference: str) -> float:
        return sentence_bleu(completion, reference, max_order=self.max_order, smooth=self.smooth,
                             lowercase=self.lowercase, tokenize=self.tokenize)


class ChrF(TextReward):
    """Sentence chrF (chrF++ with ``word_order: 2``) of the completion against the reference, in [0, 1]
    (sacreBLEU's ``sentence_chrf`` / 100)."""

    default_name = "chrf"

    MAX_CHAR_ORDER: ClassVar[int] = 10

    def __init__(self, char_order: int = 6, word_order: int = 0, beta: int = 2, lowercase: bool = False,
                 whitespace: bool = False, name: str | None = None) -> None:
        super().__init__(name)
        self.char_order = check_int_in(self.name, "char_order", char_order, 1, self.MAX_CHAR_ORDER)
        self.word_order = check_int_in(self.name, "word_order", word_order, 0, 2)
        self.beta = check_int_in(self.name, "beta", beta, 1, 10)
        self.lowercase = check_bool(self.name, "lowercase", lowercase)
        self.whitespace = check_bool(self.name, "whitespace", whitespace)

    def _score(self, completion: str, reference: str) -> float:
        return sentence_chrf(completion, reference, char_order=self.char_order, word_order=self.word_order,
                             beta=self.beta, lowercase=self.lowercase, whitespace=self.whitespace)
