"""Which process owns a natkit resource, and whether it still runs.

A resource that lives only as long as the process that made it (the embedded
coturn of ``natkit check``, a test session's server) records its owner as a
PID plus that process's start time (field 22 of ``/proc/PID/stat``, clock
ticks since boot), so a recycled PID never passes for the owner. When the
owner is gone (SIGKILL, a crash, a closed terminal) the resource is an
orphan: nothing will ever stop it, and the next natkit that looks reaps it.
"""

from __future__ import annotations

import os
from pathlib import Path


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22); None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(data.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def current_owner() -> dict:
    """``{"owner_pid": ..., "owner_start": ...}`` for this process."""
    pid = os.getpid()
    return {"owner_pid": pid, "owner_start": process_start_time(pid)}


def owner_alive(owner_pid: int | None, owner_start: int | None) -> bool | None:
    """True when the recorded owner still runs, False when it is gone, None when nothing is recorded (persistent)."""
    if not owner_pid:
        return None
    start = process_start_time(int(owner_pid))
    return start is not None and (owner_start is None or start == owner_start)
