"""Per-token estimators of the KL divergence KL(pi || pi_ref) from samples of pi (Schulman 2020, "Approximating KL
divergence").

With ``log_r = log pi_ref(y) - log pi(y)`` at a sampled token ``y ~ pi``:

- ``k1 = -log_r``: unbiased, but one sample can be negative; its expectation is the KL.
- ``k2 = log_r^2 / 2``: biased (low bias when the two are close), always >= 0.
- ``k3 = exp(log_r) - 1 - log_r``: unbiased and always >= 0 (TRL's GRPO uses it in the loss).

Used as a penalty in the loss, an estimator's gradient matters, not only its value. On samples of the current policy
(per token, given the prefix): grad k1 = grad log pi, whose expectation is 0, so k1 in the loss does not pull
towards the reference; E[grad k2] = grad KL(pi || ref), the reverse KL's gradient; E[grad k3] = grad KL(ref || pi),
the forward KL's (Tang & Munos 2025). k3 in the loss (TRL's GRPO) or k1 in the reward (TRL's RLOO, where it acts
through the advantage) are the usual choices.
"""

from __future__ import annotations

import torch
from torch import Tensor

ESTIMATORS = ("k1", "k2", "k3")


def kl_per_token(logps: Tensor, ref_logps: Tensor, estimator: str) -> Tensor:
    """Per-token KL estimate (same shape as the inputs) of the policy ``logps`` against the reference's."""
    log_r = ref_logps - logps
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r.square()
    if estimator == "k3":
        # expm1 keeps exp(x) - 1 - x accurate for small x (where the two log-probs nearly agree).
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
