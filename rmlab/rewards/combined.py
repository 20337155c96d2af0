"""``combined``: a weighted sum of text rewards, each term also logged on its own.

    reward=combined 'reward.terms=[{name: reward_model, weight: 1.0, init_from: <run id>},
                                   {name: neg_length, weight: 0.01}]'

Each term is a mapping: ``name`` (a reward of ``conf/reward/`` that scores generated text), ``weight`` (a finite
number, not 0), optionally ``label`` (its metric name; default its ``name``; needed when two terms share a reward),
and any key of that reward, over the defaults of its config file (an unknown key is an error listing the reward's
keys). The combined score of a completion is ``sum_i weight_i * score_i``; a run logs it as ``{split}/reward`` (and
``{split}/combined``) and each term as ``{split}/<label>``. ``tracking_uri`` (default: the run's store) is where
``reward_model`` terms look their runs up, unless a term sets its own.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import OmegaConf

from rmlab.errors import ConfigError
from rmlab.kinds import SEQUENCE, TaskInfo
from rmlab.rewards.text import TextReward
from rmlab.sequence import TextExample

TERM_KEYS = ("name", "weight", "label")
LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
# Metric names a run logs itself under {split}/: a term's label must not shadow one.
RESERVED = ("reward", "loss", "perplexity", "completion_length", "gold_reward", "selected_reward", "selected_epoch",
            "best_reward", "last_reward", "score_mean", "score_std", "pg_loss", "sampled_reward", "baseline",
            "reward_std", "zero_std_groups", "kl", "kl_sequence", "entropy", "clip_fraction", "advantage_std")


class CombinedReward(TextReward):
    """A weighted sum of text rewards (see the module docstring)."""

    default_name = "combined"

    def __init__(self, terms: Any = None, tracking_uri: str | None = None, name: str | None = None) -> None:
        super().__init__(name)
        if not isinstance(terms, Sequence) or isinstance(terms, str) or not terms:
            raise ConfigError(f"reward {self.name!r}: terms must be a non-empty list of rewards with weights, e.g. "
                              "reward.terms=[{name: reward_model, weight: 1.0, init_from: <run id>}, "
                              f"{{name: neg_length, weight: 0.01}}]; got {terms!r}")
        self.rewards: list[TextReward] = []
        self.weights: list[float] = []
        self.labels: list[str] = []
        for i, term in enumerate(terms):
            reward, weight, label = self._term(f"reward.terms[{i}]", term, tracking_uri)
            if label in self.labels:
                raise ConfigError(f"reward.terms[{i}]: label {label!r} is used by another term; give each term of the "
                                  "same reward its own label (label: NAME), its metric name")
            self.rewards.append(reward)
            self.weights.append(weight)
            self.labels.append(label)
        if self.name in self.labels:
            raise ConfigError(f"reward {self.name!r}: a term's label may not be the combined reward's own name "
                              f"{self.name!r}")

    def _term(self, where: str, term: Any, tracking_uri: str | None) -> tuple[TextReward, float, str]:
        from rmlab.build import accepted_parameters, compatible_options, get_class, instantiate, option_config

        if not isinstance(term, Mapping):
            raise ConfigError(f"{where} must be a mapping {{name: <reward>, weight: <number>, ...}}, got {term!r}")
        choices = [n for n in compatible_options("reward", SEQUENCE) if n != self.default_name]
        option = term.get("name")
        if not isinstance(option, str) or option not in choices:
            raise ConfigError(f"{where}.name must be a reward of generated text, one of {', '.join(choices)}; got "
                              f"{option!r}")
        weight = term.get("weight")
        if not (isinstance(weight, numbers.Real) and not isinstance(weight, bool) and math.isfinite(weight)
                and weight != 0):
            raise ConfigError(f"{where}.weight must be a finite number other than 0, got {weight!r}")
        label = term.get("label", option)
        if not isinstance(label, str) or not LABEL.fullmatch(label) or label in RESERVED:
            raise ConfigError(f"{where}.label must be a metric name (a letter, then letters, digits, _ . -) other than "
                              f"{', '.join(RESERVED)}; got {label!r}")
        node = option_config("reward", option)  # not None: compatible_options listed it
        settings = {k: v for k, v in term.items() if k not in TERM_KEYS}
        params = accepted_parameters(get_class(node["_target_"]))
        unknown = sorted(k for k in settings if k not in params)
        if unknown:
            keys = [k for k in params if k != "name"]
            raise ConfigError(f"{where}: reward {option!r} has no option {', '.join(unknown)}; its options are: "
                              f"{', '.join(keys) or '(none)'} (and the term's own name, weight, label)")
        node = OmegaConf.merge(node, settings)
        if "tracking_uri" in params and "tracking_uri" not in settings:
            node["tracking_uri"] = tracking_uri  # the run's store, which the term's own file cannot see from here
        missing = sorted(OmegaConf.missing_keys(node))
        if missing:
            raise ConfigError(f"{where}: reward {option!r} needs {', '.join(missing)}: give it in the term "
                              f"({{name: {option}, weight: ..., {missing[0]}: ...}})")
        try:
            return instantiate("reward", node), float(weight), label
        except ConfigError as err:  # say which term: two terms may be of the same reward
            raise type(err)(f"{where}: {err}") from None

    @property
    def term_names(self) -> tuple[str, ...]:
        return tuple(self.labels)

    def check_task(self, info: TaskInfo) -> None:
        for reward in self.rewards:
            reward.check_task(info)

    def score_with_terms(self, completions: Sequence[str],
                         examples: Sequence[TextExample]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._check_batch(completions, examples)
        terms = {label: reward.score(completions, examples).float()
                 for label, reward in zip(self.labels, self.rewards)}
        total = torch.zeros(len(completions))
        for label, weight in zip(self.labels, self.weights):
            total = total + weight * terms[label]
        return total, terms

    def score(self, completions: Sequence[str], examples: Sequence[TextExample]) -> torch.Tensor:
        return self.score_with_terms(completions, examples)[0]
