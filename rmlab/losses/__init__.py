"""Loss functions, one YAML per loss in ``conf/loss/`` (``_target_: rmlab.losses.<Class>``).

Pointwise (``pointwise.py``), accept ``value`` and ``logits`` (on logits: softmax probabilities vs one-hot targets,
summed over classes, mean over the batch):
    MSE (mse), MAE (mae), Huber (huber), SmoothL1 (smooth_l1), LogCosh (log_cosh)
Classification (``classification.py``), accept ``logits`` and, token-wise over the vocabulary, ``sequence``
(``tokens.py``: completion tokens only, ``average`` per token or per sequence):
    CrossEntropy (cross_entropy), Focal (focal), and the label-noise-robust GCE (gce), SCE (sce), NCERCE (nce_rce)
Pairwise (``pairwise.py``), accept ``pair`` (functions of the score difference chosen - rejected):
    BradleyTerry (bradley_terry), MarginRanking (hinge), LogExp (log_exp), IPO (ipo)
Preference optimisation of a language model (``preference_lm.py``), accept ``sequence_pair``:
    DPO (dpo; loss_type sigmoid | ipo | hinge), DPOIPO (dpo_ipo: DPO's ipo form), SimPO (simpo), ORPO (orpo)
"""

from rmlab.losses.base import Loss
from rmlab.losses.classification import GCE, NCERCE, SCE, CrossEntropy, Focal
from rmlab.losses.pairwise import IPO, BradleyTerry, LogExp, MarginRanking
from rmlab.losses.pointwise import MAE, MSE, Huber, LogCosh, PointwiseLoss, SmoothL1
from rmlab.losses.preference_lm import DPO, DPOIPO, ORPO, SimPO

__all__ = [
    "Loss",
    "PointwiseLoss",
    "MSE",
    "MAE",
    "Huber",
    "SmoothL1",
    "LogCosh",
    "CrossEntropy",
    "Focal",
    "GCE",
    "SCE",
    "NCERCE",
    "BradleyTerry",
    "MarginRanking",
    "LogExp",
    "IPO",
    "DPO",
    "DPOIPO",
    "SimPO",
    "ORPO",
]
