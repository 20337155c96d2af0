"""Python's garbage collector and the objects the libraries made: left out of its full passes where that is safe.

torch, Lightning, MLflow and Hydra make about 700,000 objects when they are imported, and they live as long as the
process. Each full pass of the collector walks every one of them: 0.3 to 0.5 s on this project's 2-core machine.

- **In a sweep run in one process** (the ``basic`` and ``rmlab_ray`` launchers), Python starts a full pass whenever
  the objects that survived since the last one reach a quarter of those it kept: in a 12-job sweep of default runs,
  one pass of 0.47 s fell between two jobs, as much as a fifth of a job's training. ``freeze_for_sweep`` (once the
  sweep's parent run is open, before its first job) moves the objects that exist then into the collector's permanent
  generation: later passes walk only what the jobs made, and every job's cycles are still collected. What was garbage
  at that moment (33 objects measured there) is kept until ``release``, at the sweep's end, which puts every frozen
  object back in the collector's care: a caller that runs the command in-process keeps a working collector. A
  process where something else froze objects is left alone.
- **At interpreter shutdown** Python's collector passes walk every object again (1.5 to 3 s after a command's last
  line, paid by every command and, in a sweep, spread over its jobs). ``skip_final_collections`` registers
  ``gc.freeze`` as the first exit hook, so that it runs after every other one: those passes skip the objects, and the
  process's end releases them. Nothing is frozen while the interpreter goes on.
"""

from __future__ import annotations

import atexit
import gc

_frozen_here = False  # whether freeze_for_sweep froze the heap (and release has not yet put it back)


def freeze_for_sweep() -> bool:
    """Leave the objects that exist now out of the collector's passes until ``release``; True if it did."""
    global _frozen_here
    if _frozen_here or gc.get_freeze_count():
        return False
    gc.freeze()
    _frozen_here = True
    return True


def release() -> None:
    """Put back in the collector's care what ``freeze_for_sweep`` froze (nothing if it froze nothing)."""
    global _frozen_here
    if _frozen_here:
        gc.unfreeze()
        _frozen_here = False


def skip_final_collections() -> None:
    """``gc.freeze`` as the last thing the interpreter does before its shutdown's collector passes."""
    atexit.unregister(gc.freeze)  # once per process, whatever the number of commands
    atexit.register(gc.freeze)
