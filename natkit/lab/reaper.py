"""A subreaper for the browser driver: nothing a browser starts outlives the driver.

``python -m natkit.lab.reaper PROGRAM ARGS...`` runs ``PROGRAM`` (Playwright's
Node.js driver) as its child, with the same standard streams, after marking
itself the *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``, Linux 3.4+).
Chromium leaves orphans on Linux: its crashpad handler double-forks into a new
session when the browser starts, and the zygotes (and what they forked) lose
their parent when the browser process exits before them. Without a subreaper
they are re-parented to PID 1 and are still exiting, or zombies waiting for
PID 1, after the driver has reported the browser closed. Here they are
re-parented to this process instead; when ``PROGRAM`` exits, every descendant
left is killed (SIGKILL: the driver has closed its browsers already) and reaped,
and only then does this process exit, with ``PROGRAM``'s code (128+N for a
signal). So whoever waits for the driver (``Playwright.stop()``) waits for
every browser process too.

SIGINT is ignored (Ctrl-C reaches the whole foreground process group: natkit
stops the driver in order, and the driver ignores SIGINT too); SIGTERM and
SIGHUP are passed on to ``PROGRAM``. Cleaning up is bounded (:data:`REAP_TIMEOUT`).

The Firefox agent (:mod:`natkit.lab.firefox`) uses :func:`set_subreaper` and
:func:`reap_all` in its own process the same way: Firefox's content processes
and the fork server's children outlive the browser process too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
#: Seconds the supervisor spends killing and reaping what the driver left before it gives up.
REAP_TIMEOUT = 10.0


def set_subreaper() -> bool:
    """Make this process the child subreaper of its descendants; False where the kernel cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(root: int) -> list[int]:
    """PIDs below ``root`` (from the parent links in /proc/PID/stat), zombies included."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def reap_all(timeout: float = REAP_TIMEOUT) -> None:
    """Kill every descendant and reap every child until none is left (or ``timeout``).

    A process's children are re-parented here before it can be reaped, so once
    ``waitpid`` reports no child at all, no descendant is left.
    """
    deadline = time.monotonic() + timeout
    me = os.getpid()
    while time.monotonic() < deadline:
        for pid in descendants(me):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        time.sleep(0.005)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m natkit.lab.reaper PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_subreaper()
    try:
        child = subprocess.Popen(argv)
    except OSError as exc:
        print(f"natkit.lab.reaper: cannot run {argv[0]}: {exc}", file=sys.stderr)
        return 127
    # the protocol pipes belong to the driver: hold no copy of them
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    code = child.wait()
    reap_all()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
