"""Start-up of a sequence task's run: the language model, the generation settings, and the task's examples
tokenised with the model's tokenizer, all checked before anything is tracked (called by ``rmlab.build``). A task of
preference pairs (``sequence_pair``) goes the same way, its pairs tokenised by ``rmlab.sequence_pairs``.

The task, loss and reward are already built and checked against the ``sequence`` kind there; this adds what only
sequence tasks need, and the reward feedback (``feedback=reinforce|rloo|grpo``: a ``rmlab.policy`` algorithm, which
``rmlab.sequence_module.SequenceModule`` runs in its training step).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmlab.errors import ConfigError, IncompatibleError
from rmlab.generation_config import GenerationConfig
from rmlab.kinds import SEQUENCE, SEQUENCE_PAIR, TaskInfo
from rmlab.sequence_data import tokenize_split
from rmlab.sequence_pairs import tokenize_pairs


def build_sequence(cfg: DictConfig, task: Any, info: TaskInfo, loss: Any, reward: Any):
    """``Components`` of a sequence task's run (``model`` is the language model itself, no output head)."""
    from rmlab.build import Components, check_model_input, initialise_model, instantiate

    feedback = build_feedback(cfg, reward, info)
    generation = GenerationConfig.from_config(OmegaConf.to_container(cfg.generation, resolve=True))
    check_model_input(cfg.model, info)
    model = instantiate("model", cfg.model)
    # Preference pairs (sequence_pair) are tokenised as two sequence splits, chosen and rejected (rmlab.sequence_pairs).
    tokenize = tokenize_pairs if info.output_kind == SEQUENCE_PAIR else tokenize_split
    splits = {name: tokenize(examples, model.tokenizer, model.max_length, name, info.name)
              for name, examples in task.load().items()}
    return Components(task=task, info=info, model=model, loss=loss, reward=reward, feedback=feedback,
                      generation=generation, splits=splits, init_from=initialise_model(cfg, model))


def build_feedback(cfg: DictConfig, reward: Any, info: TaskInfo) -> Any:
    """The feedback of a sequence task's run (None for ``feedback=none``), checked against the reward and trainer."""
    if cfg.feedback.name == "none":
        return None
    from rmlab.build import instantiate
    from rmlab.policy import as_policy

    if info.output_kind != SEQUENCE:
        raise IncompatibleError(
            f"feedback={cfg.feedback.name} does not work on task={info.name}: reward feedback samples completions of "
            f"a 'sequence' task's prompts, and task={info.name} outputs {info.output_kind!r} (on preference pairs the "
            f"loss is the optimisation: dpo, simpo, orpo). Choices of feedback that work on task={info.name}: none")
    feedback = instantiate("feedback", cfg.feedback)
    feedback.check(reward, info)
    algorithm = as_policy(feedback)
    if algorithm.num_iterations > 1 and cfg.trainer.accumulate_grad_batches > 1:
        raise ConfigError(
            f"feedback.num_iterations={algorithm.num_iterations} takes several optimizer steps per batch of "
            f"generations, trainer.accumulate_grad_batches={cfg.trainer.accumulate_grad_batches} one step over "
            "several batches; set one of them to 1")
    return feedback
