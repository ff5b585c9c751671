"""How busy the generator and a local server are, read from Linux's /proc.

* :class:`CpuMeter`: CPU time of processes (and each of their threads)
  between two readings, as a percentage of one core
  (``/proc/PID/stat`` and ``/proc/PID/task/TID/stat``, utime + stime).
* :func:`udp_counters`: the kernel's UDP totals from ``/proc/net/snmp``
  (``RcvbufErrors``: datagrams dropped because a receive buffer was full,
  ``SndbufErrors``: sends refused for a full send buffer).
* :func:`udp_socket_drops`: per-socket drop counts from ``/proc/net/udp``
  and ``/proc/net/udp6`` (the ``drops`` column), keyed by socket inode, and
  :func:`socket_inodes` of a process, so drops are attributed to the
  generator's sockets or the server's.

Everything returns None or empty values where /proc is not there (not Linux,
another user's process): "not measured" is not "zero".
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
SATURATED_PCT = 80.0  # a worker above this share of one core cannot be trusted to pace its traffic


def _cpu_ticks(stat_path: str) -> int | None:
    try:
        text = Path(stat_path).read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def process_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` (all threads) in clock ticks, None when unreadable."""
    return _cpu_ticks(f"/proc/{pid}/stat")


def thread_ticks(pid: int) -> dict[int, int]:
    """utime + stime of each thread of ``pid`` in clock ticks."""
    out: dict[int, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        ticks = _cpu_ticks(f"/proc/{pid}/task/{tid}/stat")
        if ticks is not None:
            out[int(tid)] = ticks
    return out


def run_queue_ns(pid: int) -> int | None:
    """Nanoseconds the threads of ``pid`` spent runnable but waiting for a CPU (``/proc/PID/task/*/schedstat``)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total


class CpuMeter:
    """CPU use of a set of processes since :meth:`start` (or the previous :meth:`lap`).

    ``lap()`` returns ``{pid: (percent of one core, busiest thread's percent,
    percent of the time it waited for a CPU)}``: a process that waited much was
    starved by others on the host, not busy itself. A process that is gone or
    unreadable is left out.
    """

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = list(pids)
        self._t = 0.0
        self._proc: dict[int, int] = {}
        self._threads: dict[int, dict[int, int]] = {}
        self.start()

    def start(self) -> None:
        self._t = time.monotonic()
        self._proc = {p: t for p in self.pids if (t := process_ticks(p)) is not None}
        self._threads = {p: thread_ticks(p) for p in self.pids}
        self._waits = {p: run_queue_ns(p) for p in self.pids}

    def lap(self) -> dict[int, tuple[float, float, float | None]]:
        now = time.monotonic()
        wall = max(now - self._t, 1e-6)
        out: dict[int, tuple[float, float, float | None]] = {}
        procs: dict[int, int] = {}
        waits: dict[int, int | None] = {}
        threads: dict[int, dict[int, int]] = {}
        for pid in self.pids:
            ticks = process_ticks(pid)
            if ticks is None or pid not in self._proc:
                continue
            procs[pid] = ticks
            threads[pid] = thread_ticks(pid)
            before = self._threads.get(pid, {})
            busiest = max((t - before.get(tid, t) for tid, t in threads[pid].items()), default=0)
            waits[pid] = w1 = run_queue_ns(pid)
            w0 = self._waits.get(pid)
            waited = None if w1 is None or w0 is None else 100.0 * (w1 - w0) / 1e9 / wall
            out[pid] = (100.0 * (ticks - self._proc[pid]) / _TICK / wall, 100.0 * busiest / _TICK / wall, waited)
        self._t, self._proc, self._threads, self._waits = now, procs, threads, waits
        return out


def udp_counters(path: str = "/proc/net/snmp") -> dict[str, int] | None:
    """The ``Udp:`` line of ``/proc/net/snmp`` as a dict (``RcvbufErrors``, ``SndbufErrors`` ...)."""
    try:
        lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.startswith("Udp:")]
    except OSError:
        return None
    if len(lines) < 2:
        return None
    return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:])}


def udp_socket_drops(paths: tuple[str, ...] = ("/proc/net/udp", "/proc/net/udp6")) -> dict[int, tuple[int, int]]:
    """``{inode: (local port, drops)}`` of every UDP socket in this network namespace."""
    out: dict[int, tuple[int, int]] = {}
    for path in paths:
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 13:
                continue
            try:
                out[int(f[9])] = (int(f[1].rsplit(":", 1)[1], 16), int(f[-1]))
            except ValueError:
                continue
    return out


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets ``pid`` holds open (empty when unreadable)."""
    out: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def drops_of(pids: Iterable[int], table: dict[int, tuple[int, int]] | None = None) -> int | None:
    """Datagrams dropped so far on the UDP sockets the processes ``pids`` hold (None: unreadable)."""
    table = udp_socket_drops() if table is None else table
    inodes: set[int] = set()
    readable = False
    for pid in pids:
        if os.path.isdir(f"/proc/{pid}/fd"):
            readable = True
        inodes |= socket_inodes(pid)
    if not readable:
        return None
    return sum(table[i][1] for i in inodes if i in table)
