"""Rewards: scores of model behaviour where higher is always better (see ``rmlab.rewards.base``).

Classification (output kind ``logits``):
    Accuracy   ``accuracy``   fraction of argmax hits; per sample
    F1         ``f1``         macro F1
    Precision  ``precision``  macro precision
    Recall     ``recall``     macro recall
    AUROC      ``auroc``      macro one-vs-rest AUROC on softmax probabilities (binary AUROC for 2 classes)
    NegECE     ``neg_ece``    negative expected calibration error (L1, ``n_bins`` equal-width bins)

Regression (output kind ``value``):
    NegMSE     ``neg_mse``    negative mean squared error; per sample
    NegMAE     ``neg_mae``    negative mean absolute error; per sample
    R2         ``r2``         coefficient of determination
    Spearman   ``spearman``   Spearman rank correlation

Preference (output kind ``pair``):
    PreferenceAccuracy  ``preference_accuracy``   fraction of pairs with chosen scored higher; per sample
    RewardMargin        ``reward_margin``         mean score margin chosen - rejected; per sample
    TrueRewardSpearman  ``true_reward_spearman``  Spearman of item scores with hidden true rewards (synthetic tasks)
    PreferenceNegECE    ``preference_neg_ece``    negative ECE of P(chosen wins) = sigmoid(margin)

Text (output kind ``sequence``: generated completions against the reference completion; every one per sample,
aggregated as the mean):
    ExactMatch       ``exact_match``        1 if the completion equals the reference (after ``normalize``)
    TokenF1          ``token_f1``           SQuAD token F1
    BLEU             ``bleu``               sentence BLEU (sacreBLEU's), in [0, 1]
    ChrF             ``chrf``               sentence chrF / chrF++ (sacreBLEU's), in [0, 1]
    RougeL           ``rouge_l``            ROUGE-L F-measure
    NegEditDistance  ``neg_edit_distance``  negative normalised character edit distance, in [-1, 0]
    TaskVerifier     ``verifier``           the task's own answer checker (tasks that have one)
    LabelAccuracy    ``label_accuracy``     the completion is the label (text classification tasks)
    GoldReward       ``gold``               the task's hidden true reward (known-reward tasks: ``review_writing``)
    NegLength        ``neg_length``         minus the completion's length in characters
    Format           ``format``             1 if the completion matches a regular expression
    RewardModel      ``reward_model``       a frozen text reward model trained by an rmlab preference run
    CombinedReward   ``combined``           a weighted sum of text rewards, each term logged on its own

Each has a config ``conf/reward/<name>.yaml``. ``AdaptedMetric`` (``rmlab.rewards.metrics``) is the shared
torchmetrics wrapper that takes raw model output and makes every aggregate higher-is-better.
"""

from rmlab.rewards.base import Reward
from rmlab.rewards.checked import GoldReward, LabelAccuracy, TaskVerifier
from rmlab.rewards.classification import AUROC, F1, Accuracy, NegECE, Precision, Recall
from rmlab.rewards.combined import CombinedReward
from rmlab.rewards.metrics import AdaptedMetric
from rmlab.rewards.ngram import BLEU, ChrF
from rmlab.rewards.preference import PreferenceAccuracy, PreferenceNegECE, RewardMargin, TrueRewardSpearman
from rmlab.rewards.regression import R2, NegMAE, NegMSE, Spearman
from rmlab.rewards.reward_model import RewardModel
from rmlab.rewards.surface import Format, NegLength
from rmlab.rewards.text import ExactMatch, NegEditDistance, RougeL, TextReward, TokenF1

__all__ = [
    "AUROC",
    "BLEU",
    "F1",
    "Format",
    "GoldReward",
    "R2",
    "Accuracy",
    "AdaptedMetric",
    "ChrF",
    "CombinedReward",
    "ExactMatch",
    "LabelAccuracy",
    "NegECE",
    "NegEditDistance",
    "NegLength",
    "NegMAE",
    "NegMSE",
    "Precision",
    "PreferenceAccuracy",
    "PreferenceNegECE",
    "Recall",
    "Reward",
    "RewardModel",
    "RewardMargin",
    "RougeL",
    "Spearman",
    "TaskVerifier",
    "TextReward",
    "TokenF1",
    "TrueRewardSpearman",
]
