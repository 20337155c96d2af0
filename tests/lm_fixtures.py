"""Tiny sequence task and text reward for the language-model tests (the shipped ones live in rmlab.tasks.sequence and
rmlab.rewards.text; these keep the model tests independent of them). Configs: tests/conf/{task,reward}/."""

import numpy as np
import torch
from torchmetrics import MeanMetric

from rmlab.kinds import SEQUENCE
from rmlab.rewards.base import Reward
from rmlab.sequence import TextExample
from rmlab.tasks.sequence import SequenceTask

CONF = "tests/conf"


class TinyReverse(SequenceTask):
    """Reverse a random string of letters from a small alphabet: ``"abc="`` -> ``"cba"``."""

    default_name = "tiny_reverse"

    def __init__(self, *, n_examples: int = 200, min_length: int = 2, max_length: int = 4, alphabet: str = "abcd",
                 data_seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_examples, self.min_length, self.max_length = n_examples, min_length, max_length
        self.alphabet, self.data_seed = alphabet, data_seed

    def _examples(self) -> list[TextExample]:
        rng = np.random.default_rng(self.data_seed)
        out = []
        for _ in range(self.n_examples):
            length = int(rng.integers(self.min_length, self.max_length + 1))
            text = "".join(rng.choice(list(self.alphabet), length))
            out.append(TextExample(prompt=text + "=", completion=text[::-1]))
        return out


class TinyExactMatch(Reward):
    """1 where the completion equals the reference exactly."""

    accepts = (SEQUENCE,)
    has_per_sample = True

    def score(self, completions: list[str], examples: list[TextExample]) -> torch.Tensor:
        return torch.tensor([float(c == e.completion) for c, e in zip(completions, examples)], dtype=torch.float32)

    def metric(self, info):
        return MeanMetric()


def reward_model_checkpoint(path, width: int = 16, max_length: int = 160, seed: int = 0, prompt: bool = True):
    """A text reward model with random weights saved as a run's checkpoint is (the module's ``model.net.*`` weights
    beside the run config and model spec): what ``reward=reward_model reward.init_from=<path>`` loads, without a
    training run."""
    from rmlab.models import KindHead
    from rmlab.text_models import TextTransformer

    torch.manual_seed(seed)
    network = {"name": "text_transformer", "_target_": "rmlab.text_models.TextTransformer", "width": width,
               "depth": 1, "heads": 2, "dropout": 0.0, "ff_mult": 2}
    net = TextTransformer(max_length, 1, **{k: v for k, v in network.items() if k not in ("name", "_target_")})
    head = KindHead(net, "pair")
    spec = {"format": 1, "io": "rmlab.serving.io:TextScorer", "network": network, "input_dim": max_length,
            "output_dim": 1, "output_kind": "pair", "input_type": "tokens", "task": "review_preference",
            "max_length": max_length, "prompt": prompt}
    torch.save({"model_config": network, "task_config": {"name": "review_preference"}, "spec": spec,
                "state_dict": {f"model.{k}": v for k, v in head.state_dict().items()}, "epoch": 0}, path)
    return path
