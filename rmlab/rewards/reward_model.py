"""``reward_model``: a frozen text reward model, trained by an rmlab preference run, as the reward of generations.

``init_from`` names the reward model (a run id, a run's output folder or a checkpoint file, read by
``rmlab.init_from`` as a policy's ``init_from`` is): it must be a model of a preference task on text (output kind
``pair``, token inputs: ``review_preference``, ``preference_file``, with ``model=text_transformer``), whose
checkpoint or logged model carries its model spec. Each completion is scored as the reward model scored items in
training: ``[BOS] prompt [SEP] completion [EOS]`` in byte tokens (without the prompt where the model was trained
without prompts), cut to the model's ``max_length`` as in training (the prompt loses its start first, then the
completion its end). The score is the model's raw scalar (a Bradley-Terry logit: only differences mean something).
The model is loaded when the reward is built (before any run is created: a bad ``init_from`` stops the command),
kept in eval mode with no gradient, and never trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rmlab.errors import ConfigError
from rmlab.kinds import PAIR, TOKENS
from rmlab.rewards.text import TextReward, check_choice, check_int_in
from rmlab.sequence import TextExample

DEVICES = ("cpu", "cuda")


class RewardModel(TextReward):
    """The score of each completion under a frozen text reward model (see the module docstring)."""

    default_name = "reward_model"

    def __init__(self, init_from: Any = None, tracking_uri: str | None = None, batch_size: int = 64,
                 device: str = "cpu", name: str | None = None) -> None:
        super().__init__(name)
        what = "reward.init_from"
        if init_from is None:
            raise ConfigError(f"{what} is required: the MLflow run id (or checkpoint path) of a text reward model, "
                              "trained e.g. with task=review_preference model=text_transformer loss=bradley_terry")
        if tracking_uri is not None and (not isinstance(tracking_uri, str) or not tracking_uri.strip()):
            raise ConfigError(f"reward {self.name!r}: tracking_uri must be null (the run's store) or a URI, got "
                              f"{tracking_uri!r}")
        self.batch_size = check_int_in(self.name, "batch_size", batch_size, 1, 1 << 20)
        self.device = torch.device(check_choice(self.name, "device", device, DEVICES))
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"reward {self.name!r}: device=cuda but torch sees no CUDA GPU here; use device=cpu")
        if not isinstance(init_from, str) or not init_from.strip():
            raise ConfigError(f"{what} must be an MLflow run id or a checkpoint path, got {init_from!r}")
        from rmlab.init_from import resolve

        try:
            found = resolve(init_from, tracking_uri)
        except ConfigError as err:  # its messages name init_from=...: say which one
            raise ConfigError(f"reward.{err}") from None
        spec = found.spec or {}
        if spec.get("output_kind") != PAIR or spec.get("input_type") != TOKENS:
            task = (found.task_config or {}).get("name", "?")
            trains = (f"trains a {spec.get('output_kind')!r} model on {spec.get('input_type')!r} inputs" if spec else
                      "trains no scorer of texts: a language model, a task of another kind, or a checkpoint written "
                      "before rmlab stored model specs")
            raise ConfigError(
                f"{what}={init_from}: {found.label} is not a text reward model (its task={task} {trains}); train one "
                "on text preference pairs, e.g. task=review_preference model=text_transformer loss=bradley_terry")
        self.source = found.label
        self.max_length = int(spec["max_length"])
        self.uses_prompt = bool(spec["prompt"])
        self.net = self._build(found, what, init_from)

    def _build(self, found: Any, what: str, init_from: str) -> torch.nn.Module:
        from rmlab.build import instantiate
        from rmlab.models import KindHead

        spec = found.spec
        net = instantiate("model", spec["network"], input_dim=spec["input_dim"], output_dim=spec["output_dim"])
        head = KindHead(net, PAIR)
        try:
            head.load_state_dict(found.state_dict)
        except RuntimeError as err:
            raise ConfigError(f"{what}={init_from}: the weights of {found.label} do not fit its model spec: "
                              f"{str(err).splitlines()[0]}") from None
        head.requires_grad_(False)
        return head.net.to(self.device).eval()  # the network scores single items

    def score(self, completions: Sequence[str], examples: Sequence[TextExample]) -> torch.Tensor:
        from rmlab.tokenizer import batch_encode

        self._check_batch(completions, examples)
        prompts = [e.prompt for e in examples] if self.uses_prompt else None
        out = []
        with torch.no_grad():
            for start in range(0, len(completions), self.batch_size):
                stop = start + self.batch_size
                ids = batch_encode(completions[start:stop], self.max_length,
                                   None if prompts is None else prompts[start:stop])
                out.append(self.net(ids.to(self.device)).squeeze(-1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)
