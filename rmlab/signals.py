"""Ctrl-C and SIGTERM in an rmlab process: which signal arrived, and what it does at this moment.

Whatever is open in the process (a run, a sweep job, a sweep's parent run) pushes a *policy* with ``handling`` for
as long as it is open; the innermost policy decides what a signal does:

- ``stop_now``: raise ``Interrupted`` at once. It is a ``KeyboardInterrupt``, so code that cleans up after Ctrl-C
  (Lightning's trainer, joblib, Hydra) does so for SIGTERM too;
- ``record_only``: remember the signal and carry on (while a run is being closed, so that the close completes);
- any other callable ``policy(signum)``: the run's graceful stop during training, the sweep's drain of its jobs.

Every signal is recorded (``received_since``) before the policy runs, so a caller can tell afterwards that a
``SystemExit`` raised by a library (Lightning exits with status 1 after Ctrl-C) was really an interrupt. An interrupted
command exits with 128 + the signal number: 130 for Ctrl-C, 143 for SIGTERM, as a shell reports a killed process.

Handlers are installed only in the main thread (Python delivers signals there), only while a policy is pushed, and
never over a signal someone chose to ignore (a background job started with ``&`` ignores SIGINT). A handler that was
there before (a cluster launcher's) is still called first.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)

Policy = Callable[[int], None]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the command; ``exit_code`` is what the process should exit with."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted ({self.name})")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def stop_now(signum: int) -> None:
    raise Interrupted(signum)


def record_only(signum: int) -> None:
    """Remember the signal (``received_since``) and go on."""


_received: list[int] = []  # every signal handled in this process, in order
_policies: list[Policy] = []
_previous: dict[int, Any] = {}  # the handlers ours replaced, restored when the last policy is popped


def mark() -> int:
    """A position in the record of signals, for ``received_since``."""
    return len(_received)


def received_since(position: int) -> int | None:
    """The first signal handled after ``position`` (see ``mark``), else None."""
    return _received[position] if len(_received) > position else None


def last_received() -> int | None:
    return _received[-1] if _received else None


def name(signum: int) -> str:
    return signal.Signals(signum).name


def _handle(signum: int, frame: Any) -> None:
    _received.append(signum)
    previous = _previous.get(signum)
    if callable(previous) and previous is not signal.default_int_handler:
        previous(signum, frame)
    (_policies[-1] if _policies else stop_now)(signum)


def _install() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN or current is _handle:
            continue
        _previous[signum] = current
        signal.signal(signum, _handle)


def _restore() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in list(_previous.items()):
        if signal.getsignal(signum) is _handle:
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        del _previous[signum]


@contextmanager
def handling(policy: Policy) -> Iterator[None]:
    """Apply ``policy`` to Ctrl-C and SIGTERM inside the block (the innermost block's policy wins)."""
    if not _policies:
        _install()
    _policies.append(policy)
    try:
        yield
    finally:
        _policies.remove(policy)
        if not _policies:
            _restore()


def installed() -> bool:
    """Whether rmlab's handler receives SIGTERM in this process now."""
    return signal.getsignal(signal.SIGTERM) is _handle
