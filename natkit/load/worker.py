"""One load worker process: an asyncio loop running its share of the sessions, steered over a pipe.

The coordinator (:mod:`natkit.load.runner`) sends commands; the worker
answers with snapshots of its counters every :data:`SNAPSHOT_INTERVAL`
seconds and a final message once everything it allocated is released.

=====================================  ===========================================
command                                what the worker does
=====================================  ===========================================
``{"op": "grow", "indices": [...]}``    media: set up these sessions, answer ``grown``
``{"op": "epoch", "epoch": e}``         media: packets sent from now on carry epoch e
``{"op": "active", "sessions": n}``     media: only sessions numbered below n send
``{"op": "rate", "rate": r, ...}``      alloc: start cycles at r per second (epoch e)
``{"op": "open"}``                      hold: open the allocations, then keep them alive
``{"op": "stop"}``                      stop sending, drain, release, send ``final``
=====================================  ===========================================

The worker ignores SIGINT (Ctrl-C reaches the whole process group; the
coordinator decides), takes SIGTERM and SIGHUP as "stop" (release, report,
exit), and stops by itself when the pipe closes (the coordinator died) or its
hard time limit passes: it never outlives a run and always releases what it
allocated.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from .config import LoadConfig

SNAPSHOT_INTERVAL = 0.25  # s
DRAIN = 0.5  # s to wait for packets in flight after the last send


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def _fds_open() -> int:
    """Files this process has open (0 when /proc cannot tell)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def main(conn: Connection, cfg: LoadConfig, index: int, workers: int) -> None:
    """The worker process's entry point."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the coordinator decides
    fd_limit = raise_fd_limit()
    try:
        asyncio.run(Worker(conn, cfg, index, workers, fd_limit).run())
    finally:
        conn.close()


class Worker:
    def __init__(self, conn: Connection, cfg: LoadConfig, index: int, workers: int, fd_limit: int) -> None:
        self.conn = conn
        self.cfg = cfg
        self.index = index
        self.workers = workers
        self.fd_limit = fd_limit
        self.load: Any = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._pipe_open = True
        self._arrivals = False
        self._drops0: int | None = None

    def _send(self, msg: dict) -> None:
        if not self._pipe_open:
            return
        try:
            self.conn.send(msg)
        except (BrokenPipeError, EOFError, OSError):
            self._pipe_open = False
            self._stop.set()

    async def run(self) -> None:
        from .alloc import AllocLoad, HoldLoad
        from .media import MediaLoad

        loop = asyncio.get_running_loop()
        profile = self.cfg.profile
        if profile == "alloc":
            self.load = AllocLoad(self.cfg, self.workers, self.index)
        elif profile == "hold":
            self.load = HoldLoad(self.cfg, self.workers, self.index)
        else:
            self.load = MediaLoad(self.cfg, self.workers, self.index)
            await self.load.start()
        from .sysmon import drops_of

        self._drops0 = drops_of([os.getpid()])
        loop.add_reader(self.conn.fileno(), self._commands)
        for sig in (signal.SIGTERM, signal.SIGHUP):  # a group-wide SIGTERM (timeout, systemd): stop, release, report
            loop.add_signal_handler(sig, self._stop.set)
        deadline = loop.call_later(self.cfg.max_time + 5.0, self._stop.set)  # the hard limit, even without the coordinator
        self._send({"type": "ready", "pid": os.getpid(), "fd_limit": self.fd_limit, "fds_open": _fds_open()})
        snapshots = asyncio.ensure_future(self._snapshots())
        try:
            await self._stop.wait()
        finally:
            deadline.cancel()
            loop.remove_reader(self.conn.fileno())
            await self._finish()
            snapshots.cancel()

    def _commands(self) -> None:
        try:
            while self.conn.poll():
                self._command(self.conn.recv())
        except (EOFError, OSError):
            self._pipe_open = False
            self._stop.set()

    def _command(self, msg: dict) -> None:
        op = msg.get("op")
        load = self.load
        if op == "stop":
            self._stop.set()
        elif op == "grow":
            self._spawn(self._grow(msg["indices"]))
        elif op == "epoch":
            load.epoch = msg["epoch"]
        elif op == "rate":
            load.set_rate(msg["rate"], msg["epoch"])
            if not self._arrivals:
                self._arrivals = True
                self._spawn(load.arrivals())
        elif op == "active":
            load.set_active(msg["sessions"])
        elif op == "open":
            self._spawn(load.open_all())
            self._spawn(load.keepalive())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task) -> None:
        """A workload task that raised is a bug: the coordinator learns it, and this worker stops."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self._send({"type": "error", "message": f"{exc.__class__.__name__}: {exc}"})
        self._stop.set()

    async def _grow(self, indices: list[int]) -> None:
        first = not self.load.sessions and not self.load.failed
        await self.load.grow(indices)
        if first:
            self._spawn(self.load.pace())
        self._send({"type": "grown", "data": self.load.snapshot()})

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL)
            self._send({"type": "snap", "t": time.monotonic(), "data": self.load.snapshot()})

    async def _finish(self) -> None:
        """Stop starting anything, let what is in flight end (bounded), release everything, report."""
        load = self.load
        load.halt()
        if hasattr(load, "stop_sending"):
            await asyncio.sleep(DRAIN)  # packets in flight arrive and are counted
        from .sysmon import drops_of

        now = drops_of([os.getpid()])  # before the sockets close
        drops = None if now is None or self._drops0 is None else max(0, now - self._drops0)
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=self.cfg.timeout * 3 + 2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        released: tuple[int, int] = (0, 0)
        if hasattr(load, "release"):
            released = await load.release()
        else:
            await load.stop()
            if hasattr(load, "released"):
                released = (load.released, load.release_failed)
        self._send({"type": "final", "data": load.snapshot(), "results": load.results(), "released": released, "drops": drops})
