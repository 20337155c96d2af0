"""Which process a run belongs to, and whether that process still exists.

Every run rmlab opens records its process as tags: ``rmlab.host`` (the host name), ``rmlab.pid`` and
``rmlab.process_start`` (the process's start time in clock ticks since boot, from ``/proc``; empty where there is no
``/proc``). Host + pid + start time name one process even after the pid is reused. A run still RUNNING whose process
is gone was killed (``kill -9``, out of memory, a lost node) and will never be closed by it: ``rmlab.tidy`` closes it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

HOST_TAG, PID_TAG, START_TAG = "rmlab.host", "rmlab.pid", "rmlab.process_start"


def host() -> str:
    return socket.gethostname()


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ("" where /proc is not available)."""
    fields = _stat(pid)
    return fields[19] if fields else ""


def identity(pid: int | None = None) -> dict[str, str]:
    """The tags that name this process (or process ``pid`` on this host)."""
    pid = os.getpid() if pid is None else pid
    return {HOST_TAG: host(), PID_TAG: str(pid), START_TAG: start_time(pid)}


def pid_alive(pid: int, started: str = "") -> bool:
    """Whether process ``pid`` on this host exists, is not a zombie, and (if known) started at ``started``."""
    if os.path.isdir("/proc/self"):
        fields = _stat(pid)
        if fields is None or fields[0] in ("Z", "X"):  # a killed worker stays a zombie until its parent reaps it
            return False
        return not started or fields[19] == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def recorded_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process a run recorded (its tags) still exists: None when that cannot be told from here (another
    host, or a run that recorded no process)."""
    if tags.get(HOST_TAG) != host() or not tags.get(PID_TAG, "").isdigit():
        return None
    return pid_alive(int(tags[PID_TAG]), tags.get(START_TAG, ""))
