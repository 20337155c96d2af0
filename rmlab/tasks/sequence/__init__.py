"""Sequence tasks (output kind ``sequence``): prompt -> completion examples for language models.

``base.SequenceTask`` owns what every sequence task shares: parameter checks, the split (grouped by prompt, so a
prompt never appears in two splits), completion corruption of train (and val) examples, and ``info``. A subclass
implements ``_examples() -> list[TextExample]``; one with a checkable answer overrides ``verify``.

- ``generated.GeneratedTask``: ``n_examples`` distinct prompts from a generator seeded by ``data_seed``.
- ``labels.LabelledTask``: text classification (the label is the completion), with label noise.
- ``procedural``: ``copy``, ``reverse``, ``sort``, ``addition``; ``reasoning_gym``: reasoning-gym's generators.
- template versions of five uses: ``sentiment`` (``text_classification``), ``qa``, ``translation``,
  ``summarisation``, ``dialogue``; their vocabularies live in ``words``.
- ``reviews``: ``review_writing``, whose generations a hidden gold function scores (``review_gold``: the
  known-reward family, shared with the pair task ``review_preference``).
- ``files``: the user's ``completion_file`` and ``text_classification_file``.
"""

from rmlab.tasks.sequence.base import SequenceTask
from rmlab.tasks.sequence.dialogue import Dialogue
from rmlab.tasks.sequence.files import CompletionFile, TextClassificationFile
from rmlab.tasks.sequence.generated import GeneratedTask
from rmlab.tasks.sequence.labels import LabelledTask
from rmlab.tasks.sequence.procedural import Addition, Copy, Reverse, Sort
from rmlab.tasks.sequence.qa import QuestionAnswering
from rmlab.tasks.sequence.reasoning_gym import ReasoningGym
from rmlab.tasks.sequence.reviews import ReviewWriting
from rmlab.tasks.sequence.sentiment import TextClassification
from rmlab.tasks.sequence.summarisation import Summarisation
from rmlab.tasks.sequence.translation import Translation

__all__ = [
    "Addition",
    "CompletionFile",
    "Copy",
    "Dialogue",
    "GeneratedTask",
    "LabelledTask",
    "QuestionAnswering",
    "ReasoningGym",
    "Reverse",
    "ReviewWriting",
    "SequenceTask",
    "Sort",
    "Summarisation",
    "TextClassification",
    "TextClassificationFile",
    "Translation",
]
