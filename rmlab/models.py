"""Networks, and the head that shapes a network's output into the task's output kind.

A model class takes ``input_dim`` and ``output_dim`` (filled in from the task) plus its own hyperparameters from
``conf/model/*.yaml``. ``KindHead`` adapts it: ``logits`` keeps (B, C), ``value`` squeezes (B, 1) to (B,), and
``pair`` scores both items of a (B, 2, D) pair with the same network, giving (B, 2) = (chosen, rejected).
"""

from collections.abc import Sequence

from torch import Tensor, nn

from rmlab.errors import check
from rmlab.validate import is_int, is_real
from rmlab.kinds import LOGITS, PAIR, VALUE, TaskInfo

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU}


class MLP(nn.Sequential):
    """Fully connected network: [Linear -> activation -> dropout] per hidden layer, then a Linear output layer."""

    def __init__(self, input_dim: int, output_dim: int, hidden_sizes=(128, 128), activation: str = "relu",
                 dropout: float = 0.0) -> None:
        check(isinstance(hidden_sizes, Sequence) and not isinstance(hidden_sizes, str)
              and all(is_int(h) and h >= 1 for h in hidden_sizes),
              f"model.hidden_sizes must be a list of positive integers (e.g. [128, 128], or [] for none), "
              f"got {hidden_sizes!r}")
        hidden_sizes = list(hidden_sizes)
        check(activation in ACTIVATIONS,
              f"model.activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        check(is_real(dropout) and 0.0 <= dropout < 1.0, f"model.dropout must be a number in [0, 1), got {dropout!r}")
        layers: list[nn.Module] = []
        width = input_dim
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, output_dim))
        super().__init__(*layers)


class Linear(nn.Linear):
    """One linear layer: logistic regression for classification, linear regression for values."""

    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__(input_dim, output_dim)


class KindHead(nn.Module):
    """Wraps a network so its output has the shape the task's output kind promises."""

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net = net
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == LOGITS:
            return self.net(x)
        if self.kind == VALUE:
            return self.net(x).squeeze(-1)
        # PAIR: x is (B, 2, ...); one forward over both items keeps the batch a single matmul.
        batch = x.shape[0]
        return self.net(x.flatten(0, 1)).reshape(batch, 2)


def output_dim(info: TaskInfo) -> int:
    """Width of the network's last layer for a task: C logits, or one scalar (a value, or one item's score)."""
    return info.num_classes if info.output_kind == LOGITS else 1


__all__ = ["MLP", "Linear", "KindHead", "output_dim", "ACTIVATIONS", "PAIR"]
