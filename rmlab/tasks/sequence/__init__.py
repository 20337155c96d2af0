"""Sequence tasks (output kind ``sequence``): prompt -> completion examples for language models.

``base.SequenceTask`` owns what every sequence task shares: parameter checks, the split (grouped by prompt, so a
prompt never appears in two splits), completion corruption of train (and val) examples, and ``info``. A subclass
implements ``_examples() -> list[TextExample]``.
"""

from rmlab.tasks.sequence.base import SequenceTask

__all__ = ["SequenceTask"]
