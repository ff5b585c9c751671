"""The coordinator of a load run: worker processes, the profile's steps, self-measurement, the report.

:func:`run_load` is the library entry point. It checks the server with one
allocation first (so a wrong password is exit 5, not a report full of
401s), starts the workers (:mod:`natkit.load.worker`, one process each,
forked), drives the profile, and always ends the same way, also on Ctrl-C
(KeyboardInterrupt) or when the hard time limit passes: every worker is told
to stop, drains, releases what it allocated (Refresh LIFETIME 0) and sends its
final counters, which become the report (``interrupted`` set when cut short).
A second Ctrl-C while the workers release makes the coordinator stop
waiting: the workers still release on their own.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_conns
from typing import Any

from ..errors import NatkitError
from .config import HARD_MAX_SESSIONS, MEDIA_PROFILES, LoadConfig
from .stats import Histogram
from .sysmon import SATURATED_PCT, CpuMeter, drops_of, udp_counters, udp_socket_drops

ProgressFn = Callable[[dict], None]
FD_RESERVE = 96  # files a worker keeps free beyond its sessions' sockets (437 retries while 64 set up at once)
FINAL_TIMEOUT = 15.0  # s beyond the request timeout to wait for the workers' final counters


class TimeUp(Exception):
    """The run's hard time limit (``max_time``) passed."""


class WorkerFailed(Exception):
    """A worker reported an error it could not count (a bug): the run ends, the report says which."""


class Run:
    """The state of one run on the coordinator's side."""

    def __init__(self, cfg: LoadConfig, progress: ProgressFn | None = None) -> None:
        self.cfg = cfg
        self.progress = progress
        self.nworkers = cfg.worker_count(os.cpu_count() or 1)
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self.pids: list[int] = []
        self.snaps: list[dict] = []
        self.snap_t: list[float] = []
        self.finals: list[dict | None] = []
        self.grown = 0
        self.started = time.time()
        self.t0 = time.monotonic()
        self.interrupted = False
        self.time_up = False
        self.steps: list[Any] = []
        self.notes: list[str] = []
        self.worker_errors: list[str] = []
        self.phase = "starting"
        self.send_start: float | None = None
        self.send_end: float | None = None
        self.hold_seconds = 0.0
        self.cpu_total: CpuMeter | None = None
        self.cpu_result: dict[int, tuple[float, float, float | None]] = {}
        self._last_progress = 0.0
        self._udp0: dict | None = None
        self._drops0: tuple[int | None, int | None] = (None, None)
        self._have = 0  # sessions asked for so far (drive.grow_to)
        self.ramp_result: tuple[int | None, int | None] = (None, None)  # a media ramp: (last passing, first failing) sessions
        self.ramp_capped: str | None = None  # why the ramp stopped at session_cap() with every step passing
        self.fd_limits: list[tuple[int, int] | None] = []  # per worker: (open-files limit, files open when ready)
        self._gen_drops: int | None = None  # the workers' own socket drops, summed (None: not every worker knows)
        self.read_server_log: Callable[[], Any] | None = None  # run_load's read_server_log

    # ------------------------------------------------------------ processes
    def start(self) -> None:
        from . import worker

        ctx = multiprocessing.get_context("fork")
        for i in range(self.nworkers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker.main, args=(child, self.cfg, i, self.nworkers), name=f"natkit-load-{i}", daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
            self.pids.append(proc.pid or 0)
            self.snaps.append({})
            self.snap_t.append(0.0)
            self.finals.append(None)
            self.fd_limits.append(None)
        ready = 0
        deadline = time.monotonic() + 20.0
        while ready < self.nworkers and time.monotonic() < deadline:
            ready += sum(1 for m in self.pump(0.5) if m.get("type") == "ready")
        pids = list(self.pids) + ([self.cfg.server_pid] if self.cfg.server_pid else [])
        self.cpu_total = CpuMeter(pids + [os.getpid()])
        self._udp0 = udp_counters()
        self.loadavg0 = os.getloadavg()[0]
        self._drops0 = self._drops()

    def _drops(self) -> tuple[int | None, int | None]:
        table = udp_socket_drops()
        gen = drops_of(self.pids, table)
        srv = drops_of([self.cfg.server_pid], table) if self.cfg.server_pid else None
        return gen, srv

    def send(self, i: int, msg: dict) -> None:
        try:
            self.conns[i].send(msg)
        except (BrokenPipeError, OSError):
            pass

    def broadcast(self, msg: dict) -> None:
        for i in range(self.nworkers):
            self.send(i, msg)

    def pump(self, timeout: float) -> list[dict]:
        """Read what the workers sent within ``timeout`` seconds; returns the messages."""
        out: list[dict] = []
        live = [c for c, f in zip(self.conns, self.finals) if f is None and not c.closed]
        if not live:
            time.sleep(max(0.0, timeout))
            return out
        for conn in wait_conns(live, timeout):
            assert isinstance(conn, Connection)
            i = self.conns.index(conn)
            try:
                while conn.poll():
                    msg = conn.recv()
                    out.append(msg)
                    self._take(i, msg)
            except (EOFError, OSError):
                conn.close()
        self._report_progress()
        return out

    def _take(self, i: int, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "ready" and msg.get("fd_limit"):
            self.fd_limits[i] = (int(msg["fd_limit"]), int(msg.get("fds_open") or 0))
        if kind in ("snap", "grown", "final"):
            self.snaps[i] = msg["data"]
            self.snap_t[i] = msg.get("t", time.monotonic())
        if kind == "grown":
            self.grown += 1
        if kind == "final":
            self.finals[i] = msg
        if kind == "error":
            self.worker_errors.append(f"worker {i}: {msg.get('message')}")

    def wait(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Pump for ``seconds`` (or until ``until()``); raises :class:`TimeUp` past ``max_time``."""
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if now - self.t0 > self.cfg.max_time:
                self.time_up = True
                raise TimeUp()
            if self.worker_errors:
                raise WorkerFailed(self.worker_errors[0])
            if (until is not None and until()) or now >= end:
                return
            self.pump(min(0.1, end - now))

    def fresh(self, after: float, timeout: float = 2.0) -> None:
        """Wait until every worker sent a snapshot taken after ``after`` (monotonic time)."""
        self.wait(timeout, lambda: all(t > after for t in self.snap_t))

    # ------------------------------------------------------------- counters
    def total(self, key: str) -> int:
        return sum(int(s.get(key, 0) or 0) for s in self.snaps)

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.snaps:
            for k, v in (s.get("errors") or {}).items():
                out[k] = out.get(k, 0) + v
        return out

    def epoch(self, e: int) -> tuple[int, int, Histogram]:
        """Media epoch ``e`` over all workers: (sent, returned, RTT histogram in µs)."""
        sent = returned = 0
        rtt = Histogram()
        for s in self.snaps:
            pair = (s.get("epochs") or {}).get(e)
            if pair:
                sent += pair[0]
                returned += pair[1]
            h = (s.get("rtt") or {}).get(e)
            if h:
                rtt.merge(Histogram.from_dict(h))
        return sent, returned, rtt

    def alloc_step(self, e: int) -> dict:
        """Alloc epoch ``e`` over all workers: offered, started, ok, errors, latency (Histogram)."""
        out: dict[str, Any] = {"offered": 0, "started": 0, "ok": 0, "errors": {}, "step_errors": {}, "latency": Histogram()}
        for s in self.snaps:
            st = (s.get("steps") or {}).get(e)
            if not st:
                continue
            for key in ("offered", "started", "ok"):
                out[key] += st[key]
            for key in ("errors", "step_errors"):
                for k, v in st[key].items():
                    out[key][k] = out[key].get(k, 0) + v
            out["latency"].merge(Histogram.from_dict(st["latency"]))
        return out

    # ------------------------------------------------------------- progress
    def _report_progress(self, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < 0.25:
            return
        self._last_progress = now
        self.progress(self.progress_state())

    def progress_state(self) -> dict:
        state: dict[str, Any] = {"phase": self.phase, "elapsed": time.monotonic() - self.t0, "profile": self.cfg.profile}
        if self.cfg.profile in MEDIA_PROFILES:
            sent, returned = self.total("sent"), self.total("returned")
            state.update(sessions=self.total("sending"), sent=sent, returned=returned, failed=self.total("failed"),
                         loss_pct=None)
            if self.steps:
                last = self.steps[-1]
                state.update(loss_pct=last.loss_pct, rtt_ms_p99=last.rtt_ms_p99)
        elif self.cfg.profile == "hold":
            state.update(held=self.total("held"), attempts=self.total("attempts"), errors=self.errors())
        else:
            state.update(in_flight=self.total("in_flight"), steps=len(self.steps))
            if self.steps:
                last = self.steps[-1]
                state.update(rate=last.achieved_per_s, latency_ms_p99=last.latency_ms_p99, errors=last.errors)
        return state

    # ----------------------------------------------------------------- stop
    def stop(self) -> None:
        """Tell every worker to stop; collect their final counters; reap the processes."""
        self.phase = "releasing"
        self._report_progress(force=True)
        if self.send_start is not None and self.send_end is None:
            self.send_end = time.monotonic()
        self.broadcast({"op": "stop"})
        deadline = time.monotonic() + self.cfg.timeout * 3 + FINAL_TIMEOUT
        try:
            while any(f is None for f in self.finals) and time.monotonic() < deadline:
                if all(c.closed for c, f in zip(self.conns, self.finals) if f is None):
                    break
                self.pump(0.2)
        except KeyboardInterrupt:
            self.notes.append("a second Ctrl-C: stopped waiting for the workers' final counters")
        if self.cpu_total is not None:
            self.cpu_result = self.cpu_total.lap()
        for proc in self.procs:
            proc.join(timeout=2.0)
            if proc.is_alive():
                proc.terminate()  # the worker's SIGTERM: stop and release
                proc.join(timeout=self.cfg.timeout + 3.0)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=2.0)
        for conn in self.conns:
            conn.close()

    def drops(self) -> dict:
        gen, srv = self._drops()
        g0, s0 = self._drops0
        udp = udp_counters()
        out = {"generator": None if gen is None or g0 is None else max(0, gen - g0),
               "server": None if srv is None or s0 is None else max(0, srv - s0)}
        if udp and self._udp0:
            out["rcvbuf_errors"] = udp.get("RcvbufErrors", 0) - self._udp0.get("RcvbufErrors", 0)
            out["sndbuf_errors"] = udp.get("SndbufErrors", 0) - self._udp0.get("SndbufErrors", 0)
        return out

    def session_cap(self) -> tuple[int, str]:
        """The most media sessions this run can set up, and why: natkit's :data:`HARD_MAX_SESSIONS`, or the
        workers' open-files limit (one socket per allocation, two per call with ``peer="allocation"``; the files
        open when the worker started and :data:`FD_RESERVE` for 437 retries and setup in flight kept free)."""
        cap, why = HARD_MAX_SESSIONS, f"natkit's hard cap of {HARD_MAX_SESSIONS:,} sessions"
        per = 2 if self.cfg.peer == "allocation" else 1
        known = [f for f in self.fd_limits if f is not None]
        if known and len(known) == self.nworkers:
            limit = min(lim for lim, _ in known)
            fd_cap = self.nworkers * max(1, min((lim - used - FD_RESERVE) // per for lim, used in known))
            if fd_cap < cap:
                cap, why = fd_cap, (f"the generator's open-files limit ({limit:,} per worker x {self.nworkers} workers, "
                                    f"{per} socket{'s' if per > 1 else ''} per call)")
        return cap, why

    def saturated(self, cpu: dict[int, tuple[float, float, float | None]]) -> float | None:
        """The busiest worker's CPU % when above :data:`SATURATED_PCT`, else None."""
        busiest = max((cpu[p][0] for p in self.pids if p in cpu), default=0.0)
        return busiest if busiest > SATURATED_PCT else None


def preflight(cfg: LoadConfig) -> None:
    """Fail fast when the server is unreachable or refuses the credentials, without allocating anything.

    A Refresh outside an allocation goes through coturn's authentication (401
    challenge, then the signed request) and is answered 437 Allocation
    Mismatch when the credentials are good; no allocation, no quota slot used
    (an Allocate here would hold a quota slot until the server deletes it).
    Raises :class:`~natkit.errors.ServerUnreachable` (4) or
    :class:`~natkit.errors.AuthenticationRefused` (5).
    """
    import asyncio

    from ..stun.turn import AUTH_CODES
    from .clients import open_client, ssl_context
    from .media import _close

    async def check() -> None:
        client = await open_client(cfg, ssl_context(cfg), who="preflight")
        try:
            reply = await client.call(client.session.refresh(600), step="preflight")
            if reply.code in AUTH_CODES:
                raise reply.error(server=str(cfg.server), step="preflight")
        finally:
            await _close(client)

    asyncio.run(check())


def run_load(cfg: LoadConfig, *, progress: ProgressFn | None = None, check_first: bool = True,
             read_server_log: Callable[[], Any] | None = None) -> Any:
    """Run ``cfg`` and return its :class:`~natkit.load.report.LoadReport`.

    ``progress`` receives a small dict of live figures a few times a second.
    ``read_server_log`` returns the server's log lines (else ``cfg.server_log``
    is read): its limits and, for a coturn started with ``-v``, the per-session
    usage lines checked against natkit's own counts (``report.cross_check``).
    Raises :class:`~natkit.errors.UsageError` for a bad configuration and,
    with ``check_first``, the pre-flight allocation's error. Ctrl-C
    (KeyboardInterrupt) ends the run early; the report says so.
    """
    from . import drive
    from .build import build_report

    cfg.validate()
    if check_first:
        preflight(cfg)
    run = Run(cfg, progress)
    run.read_server_log = read_server_log
    try:
        try:
            run.start()
            run.phase = "running"
            drive.DRIVERS[cfg.profile](run)
        except KeyboardInterrupt:
            run.interrupted = True
            run.notes.append("interrupted (Ctrl-C): the figures cover the run until then")
        except TimeUp:
            run.notes.append(f"the hard time limit ({cfg.max_time:g} s) ended the run")
        except WorkerFailed:
            pass  # in the report's failures already
    finally:
        try:
            run.stop()
        except KeyboardInterrupt:
            run.interrupted = True
    return build_report(run)


__all__ = ["NatkitError", "Run", "TimeUp", "preflight", "run_load"]
