"""Allocation workloads in one worker process: ``alloc`` (allocations per second) and ``hold`` (concurrent allocations).

Both use natkit's :class:`~natkit.stun.aio.TurnClient`, one fresh 5-tuple per
allocation, and count every answer by code instead of raising (``errors``:
``{"486": 3, "timeout": 1}``). Every allocation that succeeded is released
with Refresh LIFETIME 0 before the worker exits.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING

from ..errors import NatkitError
from ..model import TransportAddress
from .clients import allocated_client, outcome_of, ssl_context
from .media import _close, release
from .stats import Histogram

if TYPE_CHECKING:
    from ..stun.aio import TurnClient
    from .config import LoadConfig

QUARANTINE = 3.0  # s a released allocation's socket stays open, so its port is not reused at once (a reused
# 5-tuple meets the server's record of the allocation just deleted: 437 Allocation Mismatch)
RETRIED = "437 on a reused 5-tuple, retried"
REFUSALS = frozenset({"403", "437", "486", "508"})  # the server said no: the ceiling, not noise
MAX_CONSECUTIVE_FAILURES = 10
HOLD_CONCURRENCY = 32


def _peer(cfg: LoadConfig) -> TransportAddress:
    """The peer CreatePermission/ChannelBind name (nothing is sent to it): the echo host, a fixed port."""
    return TransportAddress(cfg.echo_host, 9)


class _Step:
    __slots__ = ("cycle", "errors", "latency", "offered", "ok", "started", "step_errors")

    def __init__(self) -> None:
        self.offered = 0
        self.started = 0
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.step_errors: dict[str, int] = {}  # CreatePermission / ChannelBind / release failures
        self.latency = Histogram()  # Allocate, µs (challenge included)
        self.cycle = Histogram()  # Allocate → release, µs

    def to_dict(self) -> dict:
        return {"offered": self.offered, "started": self.started, "ok": self.ok, "errors": dict(self.errors),
                "step_errors": dict(self.step_errors), "latency": self.latency.to_dict(), "cycle": self.cycle.to_dict()}


class AllocLoad:
    """Allocate → (CreatePermission + ChannelBind) → release cycles started at ``rate`` per second (open loop)."""

    def __init__(self, cfg: LoadConfig, workers: int, worker_index: int = 0) -> None:
        self.cfg = cfg
        self.ctx = ssl_context(cfg)
        self.max_in_flight = max(1, cfg.sessions // workers)
        self.rate = 0.0
        self.epoch = 0
        self.steps: dict[int, _Step] = {}
        self.in_flight = 0
        self.skipped = 0  # cycles due while max_in_flight were running: not started
        self.running = True
        self._tasks: set[asyncio.Task] = set()
        self._rebase = True
        self._quarantine: collections.deque[tuple[float, TurnClient]] = collections.deque()
        self._n = 0
        self.worker = worker_index

    def set_rate(self, rate: float, epoch: int) -> None:
        self.rate, self.epoch, self._rebase = rate, epoch, True
        self.steps.setdefault(epoch, _Step())

    async def arrivals(self) -> None:
        base_t, started = time.monotonic(), 0
        while self.running:
            now = time.monotonic()
            if self._rebase:
                base_t, started, self._rebase = now, 0, False
            due = int((now - base_t) * self.rate) - started
            started += due
            step = self.steps.setdefault(self.epoch, _Step())
            while self._quarantine and now - self._quarantine[0][0] > QUARANTINE:
                await _close(self._quarantine.popleft()[1])
            for _ in range(due):
                step.offered += 1
                if self.in_flight >= self.max_in_flight:
                    self.skipped += 1
                    continue
                step.started += 1
                self.in_flight += 1
                task = asyncio.ensure_future(self._cycle(step))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(0.002)

    async def _cycle(self, step: _Step) -> None:
        client: TurnClient | None = None
        t0 = time.monotonic()
        self._n += 1
        try:
            client, reply, retried = await allocated_client(self.cfg, self.ctx, who=f"{self.worker}.{self._n}")
            if retried:
                step.step_errors[RETRIED] = step.step_errors.get(RETRIED, 0) + 1
            if not reply.ok:
                code = str(reply.code)
                step.errors[code] = step.errors.get(code, 0) + 1
                return
            step.ok += 1
            step.latency.add(int((time.monotonic() - t0) * 1e6))
            if self.cfg.channel:
                for call in (client.create_permission, client.channel_bind):
                    r = await call(_peer(self.cfg), check=False)
                    if not r.ok:
                        key = f"{call.__name__} {r.code}"
                        step.step_errors[key] = step.step_errors.get(key, 0) + 1
            ok = await release(client, close=False)
            self._quarantine.append((time.monotonic(), client))
            client = None
            if not ok:
                step.step_errors["release"] = step.step_errors.get("release", 0) + 1
            step.cycle.add(int((time.monotonic() - t0) * 1e6))
        except (NatkitError, OSError) as exc:
            code = outcome_of(exc)
            step.errors[code] = step.errors.get(code, 0) + 1
        finally:
            self.in_flight -= 1
            if client is not None:
                await release(client)

    def halt(self) -> None:
        self.running = False

    async def stop(self) -> None:
        self.running = False
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.cfg.timeout + 2.0)
        while self._quarantine:
            await _close(self._quarantine.popleft()[1])

    def snapshot(self) -> dict:
        return {"in_flight": self.in_flight, "skipped": self.skipped, "rate": self.rate,
                "steps": {e: s.to_dict() for e, s in self.steps.items()}}

    def results(self) -> dict:
        return {}


class HoldLoad:
    """Open up to ``target`` allocations, keep them alive with Refresh (and a channel each), release them all."""

    def __init__(self, cfg: LoadConfig, workers: int, worker_index: int) -> None:
        self.cfg = cfg
        self.ctx = ssl_context(cfg)
        base, extra = divmod(cfg.sessions, workers)
        self.target = base + (1 if worker_index < extra else 0)
        self.rate = cfg.rate / workers if cfg.rate else None
        self.held: list[TurnClient] = []
        self.peak = 0
        self.attempts = 0
        self.errors: dict[str, int] = {}
        self.first_refusal: dict | None = None
        self.opening = True
        self.latency = Histogram()
        self.refreshes_ok = 0
        self.refreshes_failed: dict[str, int] = {}
        self.channels_failed: dict[str, int] = {}
        self.released = 0
        self.release_failed = 0
        self.retried = 0  # 437 on a fresh socket, allocated again on another (see clients.allocated_client)
        self.running = True
        self._n = 0
        self.worker = worker_index
        self._halt = asyncio.Event()
        self._refreshing: set[asyncio.Task] = set()

    def halt(self) -> None:
        """Open no more allocations and stop refreshing (what is held stays held until :meth:`stop`)."""
        self.running = False
        self._halt.set()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._halt.wait(), seconds)
        except TimeoutError:
            pass

    async def open_all(self) -> None:
        """Allocate until ``target`` are held, the server refuses (486, 508, 403, 437) or requests keep failing."""
        sem = asyncio.Semaphore(HOLD_CONCURRENCY)
        consecutive = 0
        stop = asyncio.Event()
        t0 = time.monotonic()

        async def one() -> None:
            nonlocal consecutive
            async with sem:
                if stop.is_set() or not self.running:
                    return
                self.attempts += 1
                code, reason = await self._open_one()
                if code is None:
                    consecutive = 0
                    return
                consecutive += 1
                self.errors[code] = self.errors.get(code, 0) + 1
                if self.first_refusal is None and (code in REFUSALS or code.startswith("local")):
                    self.first_refusal = {"code": code, "reason": reason, "held": len(self.held)}
                if code in REFUSALS or code.startswith("local") or consecutive >= MAX_CONSECUTIVE_FAILURES:
                    stop.set()

        tasks = []
        for i in range(self.target):
            if stop.is_set() or not self.running:
                break
            if self.rate:
                delay = t0 + i / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await sem.acquire()  # at most HOLD_CONCURRENCY waiting: the loop does not run ahead of the answers
            sem.release()
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
        self.opening = False

    async def _open_one(self) -> tuple[str | None, str]:
        client: TurnClient | None = None
        t0 = time.monotonic()
        self._n += 1
        try:
            client, reply, retried = await allocated_client(self.cfg, self.ctx, who=f"{self.worker}.{self._n}",
                                                            lifetime=self.cfg.lifetime)
            self.retried += retried
            if not reply.ok:
                await _close(client)
                return str(reply.code), reply.reason
            self.latency.add(int((time.monotonic() - t0) * 1e6))
            self.held.append(client)
            self.peak = max(self.peak, len(self.held))
            client = None
            if self.cfg.channel:
                await self._bind(self.held[-1])
            return None, ""
        except (NatkitError, OSError) as exc:
            if client is not None:
                await release(client)
            return outcome_of(exc), str(exc)

    async def _bind(self, client: TurnClient) -> None:
        try:
            r = await client.channel_bind(_peer(self.cfg), check=False)
            if not r.ok:
                self.channels_failed[str(r.code)] = self.channels_failed.get(str(r.code), 0) + 1
        except NatkitError as exc:
            code = outcome_of(exc)
            self.channels_failed[code] = self.channels_failed.get(code, 0) + 1

    async def keepalive(self) -> None:
        """Refresh every held allocation once per ``refresh_interval``, spread over the interval."""
        while self.running:
            clients = list(self.held)
            if not clients:
                await self._sleep(0.1)
                continue
            gap = self.cfg.refresh_interval / len(clients)
            for client in clients:
                await self._sleep(gap)
                if not self.running:
                    return
                task = asyncio.ensure_future(self._refresh(client))
                self._refreshing.add(task)
                task.add_done_callback(self._refreshing.discard)

    async def _refresh(self, client: TurnClient) -> None:
        try:
            r = await client.refresh(self.cfg.lifetime or client.session.lifetime, check=False)
            if r.ok:
                self.refreshes_ok += 1
            else:
                self.refreshes_failed[str(r.code)] = self.refreshes_failed.get(str(r.code), 0) + 1
            if self.cfg.channel:
                await self._bind(client)
        except NatkitError as exc:
            code = outcome_of(exc)
            self.refreshes_failed[code] = self.refreshes_failed.get(code, 0) + 1

    async def stop(self) -> None:
        """Release every held allocation (Refresh LIFETIME 0), after the refreshes in flight."""
        self.halt()
        if self._refreshing:
            await asyncio.wait(list(self._refreshing), timeout=self.cfg.timeout + 1.0)
        sem = asyncio.Semaphore(HOLD_CONCURRENCY * 2)

        async def one(client: TurnClient) -> None:
            async with sem:
                if await release(client):
                    self.released += 1
                else:
                    self.release_failed += 1

        held, self.held = self.held, []
        await asyncio.gather(*(one(c) for c in held))

    def snapshot(self) -> dict:
        return {"held": len(self.held), "peak": self.peak, "target": self.target, "attempts": self.attempts,
                "opening": self.opening, "errors": dict(self.errors), "first_refusal": self.first_refusal,
                "latency": self.latency.to_dict(), "refreshes_ok": self.refreshes_ok,
                "refreshes_failed": dict(self.refreshes_failed), "channels_failed": dict(self.channels_failed),
                "released": self.released, "release_failed": self.release_failed, "retried_437": self.retried}

    def results(self) -> dict:
        return {}
