"""Media-like sessions in one worker process: allocations relaying numbered packets to a peer that reflects them.

One :class:`MediaSession` is a client allocation (natkit's
:class:`~natkit.stun.aio.TurnClient`) and its peer: the worker's
:class:`EchoPeer` (a plain UDP socket on this host) or a second allocation
(``peer="allocation"``, as two browsers through one TURN server). Every
packet carries :mod:`natkit.load.packet`'s header; the peer writes its
receive time into it and sends it back, so one returned packet gives the
round-trip time and both one-way transit times (one machine, one clock).

:class:`MediaLoad` paces all sessions of the worker from one timer: frames
are due at ``sessions / frame_interval`` per second in round-robin order,
which spreads the sessions' phases evenly (:class:`~natkit.load.stats.FrameClock`);
a worker that falls behind by more than 250 ms of frames skips them. What the
schedule offered but did not send is counted in packets (``not_sent``: frames
skipped, a full TCP/TLS queue, send() refused): a generator limit, not the server's.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING, Any

from ..errors import NatkitError
from ..model import TransportAddress
from . import packet
from .clients import allocated_client, outcome_of, ssl_context, writable
from .stats import FrameClock, Histogram, Jitter, SeqTracker

if TYPE_CHECKING:
    from ..stun.aio import TurnClient
    from ..stun.turn import PeerData
    from .config import LoadConfig

MAX_EPOCHS = 1024
SETUP_CONCURRENCY = 64
_now_ns = time.monotonic_ns
_unpack = packet.HEADER.unpack_from
_pack = packet.HEADER.pack
_HDR = packet.HEADER_SIZE


class EchoPeer:
    """A UDP socket on this host that sends every datagram back where it came from, with its receive time
    written in (:func:`natkit.load.packet.stamp`). ``counts``: datagrams received per source address."""

    def __init__(self, host: str, rcvbuf: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
            except OSError:
                pass
        self.sock.bind((host, 0))
        self.address = TransportAddress.of(self.sock.getsockname())
        self.counts: dict[tuple, int] = {}
        self.sent = 0
        self.send_errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._ready)

    def _ready(self) -> None:
        recv, send, counts = self.sock.recvfrom, self.sock.sendto, self.counts
        for _ in range(512):
            try:
                data, addr = recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            counts[addr] = counts.get(addr, 0) + 1
            if len(data) >= _HDR:
                out = bytearray(data)
                out[20:28] = _now_ns().to_bytes(8, "big")
                try:
                    send(out, addr)
                    self.sent += 1
                except OSError:
                    self.send_errors += 1

    def received_from(self, addr: TransportAddress | None) -> int:
        if addr is None:
            return 0
        return self.counts.get((addr.host, addr.port), 0)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


class MediaSession:
    """One call: client allocation ``a``, its peer (echo or allocation ``b``), counters."""

    __slots__ = ("a", "b", "bad", "control_received", "control_sent", "index", "jitter_fwd", "jitter_ret", "load",
                 "local", "peer_addr", "peer_received", "peer_sent", "relayed", "returned", "rtt", "send", "sent",
                 "seq", "setup_ms", "tracker")

    def __init__(self, index: int, load: MediaLoad) -> None:
        self.index = index
        self.load = load
        self.a: TurnClient | None = None
        self.b: TurnClient | None = None
        self.peer_addr: TransportAddress | None = None
        self.relayed: TransportAddress | None = None  # a's relayed address (kept after the release)
        self.local: str | None = None  # a's local transport address (coturn's "remote")
        self.send: Any = None
        self.seq = 0
        self.sent = 0
        self.returned = 0
        self.bad = 0
        self.peer_received = 0
        self.peer_sent = 0
        self.tracker = SeqTracker(load.packet_cap_per_session)
        self.jitter_fwd = Jitter()
        self.jitter_ret = Jitter()
        self.rtt = Histogram()
        self.setup_ms: float | None = None
        self.control_sent = 0  # requests sent by the client allocation (challenges and retries included)
        self.control_received = 0

    def count(self, reply: Any) -> Any:
        self.control_sent += reply.attempts  # each request of the call (challenge, retry) got one answer
        self.control_received += reply.attempts
        return reply

    def on_return(self, item: PeerData) -> None:
        now = _now_ns()
        data = item.data
        if len(data) < _HDR:
            self.bad += 1
            return
        _s, seq, ep, _flags, ts, tp = _unpack(data)
        if not self.tracker.add(seq):
            return
        self.returned += 1
        load = self.load
        rtt = (now - ts) // 1000
        self.rtt.add(rtt)
        if ep < MAX_EPOCHS:
            load.ep_returned[ep] += 1
            load.ep_rtt[ep].add(rtt)
        self.jitter_fwd.update((tp - ts) / 1000.0)
        self.jitter_ret.update((now - tp) / 1000.0)

    def on_peer(self, item: PeerData) -> None:
        """Peer allocation ``b``: reflect the packet toward ``a``'s relayed address with the receive time."""
        data = item.data
        self.peer_received += 1
        if len(data) < _HDR or self.b is None:
            return
        out = bytearray(data)
        out[20:28] = _now_ns().to_bytes(8, "big")
        try:
            self.b.send(self.relayed, bytes(out))
            self.peer_sent += 1
        except NatkitError:
            pass

    def result(self, echo: EchoPeer | None) -> dict:
        peer_received = echo.received_from(self.relayed) if echo is not None else self.peer_received
        return {
            "index": self.index, "sent": self.sent, "peer_received": peer_received,
            "peer_sent": peer_received if echo is not None else self.peer_sent, "returned": self.returned,
            "duplicates": self.tracker.duplicates, "reordered": self.tracker.reordered, "malformed": self.bad,
            "jitter_ms": self.jitter_fwd.value / 1000.0, "jitter_return_ms": self.jitter_ret.value / 1000.0,
            "rtt": self.rtt.to_dict(), "setup_ms": self.setup_ms, "local": self.local,
            "relayed": str(self.relayed) if self.relayed else None,
            "peer": str(self.peer_addr) if self.peer_addr else None,
            "control_sent": self.control_sent, "control_received": self.control_received,
        }


class MediaLoad:
    """The media sessions of one of ``workers`` worker processes."""

    def __init__(self, cfg: LoadConfig, workers: int, index: int = 0) -> None:
        self.cfg = cfg
        self.workers = workers
        self.index = index  # this worker's number: sessions i with i % workers == index are its
        self.traffic = cfg.traffic
        self.packet_budget = max(1, cfg.max_packets // workers)
        self.packet_cap_per_session = max(1024, int(self.traffic.pps * cfg.max_time) + 1024)
        self.ctx = ssl_context(cfg)
        self.echo: EchoPeer | None = None
        self.sessions: list[MediaSession] = []  # set up and sending
        self.failed: list[dict] = []  # setup failures
        self.errors: dict[str, int] = {}
        self.setup = Histogram()
        self.epoch = 0
        self.ep_sent = [0] * MAX_EPOCHS
        self.ep_returned = [0] * MAX_EPOCHS
        self.ep_rtt = [Histogram() for _ in range(MAX_EPOCHS)]
        self.sent = 0
        self.clock: FrameClock | None = None  # the schedule (offered, skipped), from the first pace()
        self.send_errors = 0  # packets send() refused
        self.retried = 0  # 437 on a fresh socket, allocated again on another
        self.backpressure = 0  # packets not sent: a TCP/TLS connection's queue was full
        self.capped = False
        self.running = True  # False: set up no more sessions
        self.sending = True
        self._active: list[MediaSession] | None = None  # None: every session sends
        self._limit: int | None = None
        self._rr = 0
        self._sizes = list(range(self.traffic.size_min, self.traffic.size_max + 1, max(1, (self.traffic.size_max - self.traffic.size_min) // 7 or 1)))
        self._pads = {s: bytes(max(0, s - _HDR)) for s in self._sizes}

    # ----------------------------------------------------------------- setup
    async def start(self) -> None:
        if self.cfg.peer == "echo":
            self.echo = EchoPeer(self.cfg.echo_host, self.cfg.rcvbuf)
            self.echo.start(asyncio.get_running_loop())

    async def grow(self, indices: list[int]) -> None:
        """Set up the sessions ``indices`` (at most :data:`SETUP_CONCURRENCY` at once); failures are counted."""
        sem = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def one(i: int) -> None:
            async with sem:
                await self._open(i)

        await asyncio.gather(*(one(i) for i in indices))

    async def _open(self, index: int) -> None:
        if not self.running:
            return
        cfg = self.cfg
        s = MediaSession(index, self)
        t0 = time.monotonic()
        try:
            s.a, reply, retried = await allocated_client(cfg, self.ctx, rcvbuf=cfg.rcvbuf // 4, who=str(index))
            self.retried += retried
            s.count(reply).raise_for_error(server=str(cfg.server), step="allocate")
            if cfg.peer == "allocation":
                s.b, reply, retried = await allocated_client(cfg, self.ctx, rcvbuf=cfg.rcvbuf // 4, who=f"{index}p")
                self.retried += retried
                reply.raise_for_error(server=str(cfg.server), step="allocate")
                s.peer_addr = s.b.relayed
                await self._bind(s.b, s.a.relayed, None)
                s.b.on_data = s.on_peer
            else:
                assert self.echo is not None
                s.peer_addr = self.echo.address
            await self._bind(s.a, s.peer_addr, s)
        except (NatkitError, OSError) as exc:
            code = outcome_of(exc)
            self.errors[code] = self.errors.get(code, 0) + 1
            self.failed.append({"index": index, "error": code, "message": str(exc)})
            await _close(s.a)
            await _close(s.b)
            return
        s.setup_ms = (time.monotonic() - t0) * 1000.0
        self.setup.add(int(s.setup_ms * 1000))
        s.a.on_data = s.on_return
        s.relayed = s.a.relayed
        try:
            s.local = str(s.a.conn.local_address)
        except (OSError, AttributeError, TypeError):
            s.local = None
        a, peer = s.a, s.peer_addr
        if cfg.send_indications:
            s.send = lambda payload: a.send(peer, payload)
        else:
            number = a.session.channel_for(peer)
            s.send = lambda payload: a.send_channel(number, payload)
        self.sessions.append(s)
        self._active = None

    async def _bind(self, client: TurnClient, peer: TransportAddress, s: MediaSession | None) -> None:
        reply = await (client.create_permission(peer) if self.cfg.send_indications else client.channel_bind(peer))
        if s is not None:
            s.count(reply)

    # --------------------------------------------------------------- sending
    async def pace(self) -> None:
        """Send frames until :meth:`stop_sending` or the packet budget is spent."""
        interval, k = self.traffic.frame_interval, self.traffic.packets_per_frame
        tick = min(0.002, interval / 4)
        clock = self.clock = FrameClock(interval, k, time.monotonic())
        sizes, pads = self._sizes, self._pads
        while self.sending:
            active = self._sending_sessions()
            n = len(active)
            due = clock.due(time.monotonic(), n)
            ep = self.epoch
            for _ in range(due):
                s = active[self._rr % n]
                self._rr += 1
                if not writable(s.a):
                    self.backpressure += k
                    continue
                ok = 0
                for _j in range(k):
                    payload = _pack(s.index, s.seq, ep, 0, _now_ns(), 0) + pads[sizes[s.seq % len(sizes)]]
                    s.seq += 1
                    try:
                        s.send(payload)
                    except NatkitError:
                        self.send_errors += 1
                        continue
                    ok += 1
                s.sent += ok
                self.sent += ok
                if ep < MAX_EPOCHS:
                    self.ep_sent[ep] += ok
            if self.sent >= self.packet_budget:
                self.capped = True
                self.sending = False
                break
            await asyncio.sleep(tick)

    @property
    def offered(self) -> int:
        """Packets the schedule asked for so far (sent or not)."""
        return self.clock.offered if self.clock is not None else 0

    @property
    def skipped(self) -> int:
        """Packets of the frames skipped because the worker fell more than 250 ms behind."""
        return self.clock.skipped if self.clock is not None else 0

    @property
    def not_sent(self) -> int:
        """Packets of the schedule that did not leave: skipped, held back by a full TCP/TLS queue, or refused by send()."""
        return self.skipped + self.backpressure + self.send_errors

    def set_active(self, sessions: int | None) -> None:
        """Send from this worker's share of ``sessions`` calls (None: all): a ramp steps down without tearing down.

        The share is as many sessions as numbers below ``sessions`` fall to this
        worker, its lowest-numbered set-up ones: a session refused earlier leaves
        no hole while others are set up.
        """
        self._limit = sessions
        self._active = None

    def _sending_sessions(self) -> list[MediaSession]:
        if self._limit is None:
            return self.sessions
        if self._active is None:
            share = max(0, -(-(self._limit - self.index) // self.workers))  # numbers i < limit with i % workers == index
            self._active = sorted(self.sessions, key=lambda s: s.index)[:share]
        return self._active

    def stop_sending(self) -> None:
        self.sending = False

    def halt(self) -> None:
        self.running = False
        self.sending = False

    # --------------------------------------------------------------- results
    def snapshot(self) -> dict:
        echo_recv = sum(self.echo.counts.values()) if self.echo is not None else sum(s.peer_received for s in self.sessions)
        last = min(self.epoch, MAX_EPOCHS - 1)
        return {
            "sessions": len(self.sessions), "sending": len(self._sending_sessions()), "failed": len(self.failed), "sent": self.sent, "offered": self.offered,
            "returned": sum(self.ep_returned), "peer_received": echo_recv, "skipped": self.skipped,
            "backpressure": self.backpressure, "send_errors": self.send_errors, "not_sent": self.not_sent,
            "retried_437": self.retried, "errors": dict(self.errors), "capped": self.capped,
            "epochs": {e: (self.ep_sent[e], self.ep_returned[e]) for e in range(last + 1) if self.ep_sent[e] or self.ep_returned[e]},
            "rtt": {e: self.ep_rtt[e].to_dict() for e in range(last + 1) if self.ep_rtt[e].count},
        }

    def results(self) -> dict:
        return {"sessions": [s.result(self.echo) for s in self.sessions], "failed": self.failed,
                "setup": self.setup.to_dict(), "echo_send_errors": self.echo.send_errors if self.echo else 0,
                "malformed": sum((s.a.malformed if s.a else 0) + (s.b.malformed if s.b else 0) for s in self.sessions)}

    async def release(self) -> tuple[int, int]:
        """Refresh LIFETIME 0 on every allocation; ``(released, failed)``."""
        sem = asyncio.Semaphore(SETUP_CONCURRENCY)
        ok = failed = 0

        async def one(client: TurnClient | None, s: MediaSession | None) -> None:
            nonlocal ok, failed
            if client is None:
                return
            async with sem:
                if await release(client, s):
                    ok += 1
                else:
                    failed += 1

        await asyncio.gather(*(one(s.a, s) for s in self.sessions), *(one(s.b, None) for s in self.sessions))
        if self.echo is not None:
            self.echo.close()
        return ok, failed


async def release(client: TurnClient, counted: Any = None, *, close: bool = True) -> bool:
    """Refresh LIFETIME 0 (RFC 8656 §8) and close (unless ``close`` is False); True when the server confirmed. Never raises."""
    try:
        if not client.session.allocated:
            return False
        try:
            reply = await client.refresh(0, check=False, timeout=min(client.timeout, 2.0))
        except NatkitError:
            return False
        if counted is not None:
            counted.count(reply)
        return reply.ok
    finally:
        if close:
            await _close(client)


async def _close(client: TurnClient | None) -> None:
    if client is not None:
        try:
            await client.close(release=False)
        except (NatkitError, OSError):
            pass
