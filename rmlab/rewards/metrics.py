"""The one piece of machinery every reward shares: ``AdaptedMetric``, a torchmetrics wrapper that takes RAW model
output, adapts it for the metric inside (softmax, positive-class probability, or nothing) and flips the sign of error
metrics, so every reward's ``compute()`` is higher-is-better.

The wrapped torchmetrics object keeps all state, device placement and distributed sync; the wrapper holds no state of
its own (it subclasses ``WrapperMetric``, which turns off the wrapper's own update/compute bookkeeping) and only
forwards. Transforms are module-level functions, not lambdas, so metrics pickle (DDP spawn, deepcopy).
"""

from collections.abc import Callable
import torch
from torchmetrics import Metric

from rmlab.errors import check
from torchmetrics.wrappers.abstract import WrapperMetric

Transform = Callable[[torch.Tensor], torch.Tensor]


def _prob_dtype(output: torch.Tensor) -> torch.dtype:
    # Under mixed precision logits arrive in half/bf16; probabilities that coarse create ties that skew AUROC and
    # ECE, so compute them in at least float32 (float64 stays float64).
    return torch.promote_types(output.dtype, torch.float32)


def softmax(output: torch.Tensor) -> torch.Tensor:
    """Class probabilities from logits (B, C).

    Needed explicitly: torchmetrics only applies softmax when some value lies outside [0, 1], so a batch of raw
    logits that happens to fall inside [0, 1] would silently be read as probabilities.
    """
    return torch.softmax(output, dim=1, dtype=_prob_dtype(output))


def positive_class_prob(output: torch.Tensor) -> torch.Tensor:
    """P(class 1) from two-class logits (B, 2): the score a binary AUROC ranks by."""
    return torch.softmax(output, dim=1, dtype=_prob_dtype(output))[:, 1]


class AdaptedMetric(WrapperMetric):
    """``sign * inner(transform(output), target)``, accumulated by ``inner``.

    ``update`` / ``forward`` / ``compute`` / ``reset`` delegate to ``inner``; device moves reach it because it is a
    child module (``Metric._apply`` recurses). ``set_dtype`` is forwarded explicitly since torchmetrics guards each
    metric's dtype separately. ``forward`` stores its batch value in ``_forward_cache``, which Lightning reads when a
    metric object is logged with ``on_step=True``.
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, inner: Metric, transform: Transform | None = None, sign: float = 1.0) -> None:
        super().__init__()
        if sign not in (1.0, -1.0):
            raise ValueError(f"sign must be +1 or -1, got {sign}")
        self.inner = inner
        self.transform = transform
        self.sign = float(sign)

    def _adapt(self, output: torch.Tensor) -> torch.Tensor:
        return output if self.transform is None else self.transform(output)

    def _signed(self, value: torch.Tensor) -> torch.Tensor:
        return value if self.sign > 0 else -value

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate a batch of raw model output and targets (no host sync)."""
        self.inner.update(self._adapt(output), target)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Accumulate the batch and return its own (signed) value; costs a per-batch compute, prefer ``update``."""
        self._forward_cache = self._signed(self.inner(self._adapt(output), target))
        return self._forward_cache

    def compute(self) -> torch.Tensor:
        """The signed aggregate over everything since the last reset: higher is better."""
        return self._signed(self.inner.compute())

    def reset(self) -> None:
        super().reset()
        self.inner.reset()

    def set_dtype(self, dst_type: str | torch.dtype) -> "AdaptedMetric":
        super().set_dtype(dst_type)
        self.inner.set_dtype(dst_type)
        return self

    @property
    def update_called(self) -> bool:
        # The wrapper's own counter never moves (WrapperMetric skips it); the inner metric's is the truth.
        return self.inner.update_called

    def extra_repr(self) -> str:
        return f"transform={getattr(self.transform, '__name__', None)}, sign={self.sign:+g}"


def check_bins(reward_name: str, n_bins: object) -> int:
    """Validate a calibration reward's ``n_bins`` (an integer >= 1) and return it."""
    check(isinstance(n_bins, int) and not isinstance(n_bins, bool) and n_bins >= 1,
          f"reward {reward_name!r}: n_bins must be an integer >= 1, got {n_bins!r}")
    return n_bins
