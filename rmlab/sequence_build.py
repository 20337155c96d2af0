"""Start-up of a sequence task's run: the language model, the generation settings, and the task's examples
tokenised with the model's tokenizer, all checked before anything is tracked (called by ``rmlab.build``). A task of
preference pairs (``sequence_pair``) goes the same way, its pairs tokenised by ``rmlab.sequence_pairs``.

The task, loss and reward are already built and checked against the ``sequence`` kind there; this adds what only
sequence tasks need. Reward feedback is refused: the policy-optimisation step (``rmlab.policy``) is not wired into
training yet.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmlab.errors import IncompatibleError
from rmlab.generation_config import GenerationConfig
from rmlab.kinds import SEQUENCE_PAIR, TaskInfo
from rmlab.sequence_data import tokenize_split
from rmlab.sequence_pairs import tokenize_pairs


def build_sequence(cfg: DictConfig, task: Any, info: TaskInfo, loss: Any, reward: Any):
    """``Components`` of a sequence task's run (``model`` is the language model itself, no output head)."""
    from rmlab.build import Components, check_model_input, instantiate

    if cfg.feedback.name != "none":
        raise IncompatibleError(
            f"feedback={cfg.feedback.name} does not work on task={info.name} yet: policy optimisation of a language "
            "model (rmlab.policy) is not wired into training on sequence tasks. Choices of feedback that work on "
            f"task={info.name}: none")
    generation = GenerationConfig.from_config(OmegaConf.to_container(cfg.generation, resolve=True))
    check_model_input(cfg.model, info)
    model = instantiate("model", cfg.model)
    # Preference pairs (sequence_pair) are tokenised as two sequence splits, chosen and rejected (rmlab.sequence_pairs).
    tokenize = tokenize_pairs if info.output_kind == SEQUENCE_PAIR else tokenize_split
    splits = {name: tokenize(examples, model.tokenizer, model.max_length, name, info.name)
              for name, examples in task.load().items()}
    return Components(task=task, info=info, model=model, loss=loss, reward=reward, feedback=None,
                      generation=generation, splits=splits)
