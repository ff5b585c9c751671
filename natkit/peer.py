"""``natkit peer``: meet another peer through the signaling server and check the path between them.

:func:`peer` joins a room of a natkit signaling server
(:mod:`natkit.signaling`), negotiates with whoever is there (the peer that
joins second offers, see :mod:`natkit.signaling.protocol`), and runs the
same checks as :func:`natkit.relay.relay_check`, but between two machines
(or a machine and a browser):

1. a pre-flight Allocate when a TURN server is given (same diagnosis and
   exit codes as relay-check);
2. offer/answer through the room; the remote side may trickle candidates
   (browsers do), aiortc sends its candidates in the SDP;
3. over the data channel ``natkit`` (JSON text, see :data:`PROTOCOL`) both
   sides echo each other's ``ping``; each side measures its own round trips,
   sends a bulk payload for a throughput figure, optionally a file
   (``--send``, SHA-256 checked by the receiver), measures incoming media
   (``--media`` on the other side), then reports ``done`` with its verdict;
4. optionally a line chat (``--chat``) until end of input.

The report (:class:`PeerReport`) has relay-check's fields (so the same
renderer shows it) plus the room, roles, the remote verdict, the file
transfer and the media measurement.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import (
    CheckFailed,
    Failure,
    InternalError,
    NatkitError,
    NoPeer,
    NoRelayConnectivity,
    UsageError,
    exit_code_for,
)
from .relay import Preflight, preflight_allocate, tls_context
from .webrtc.metrics import (
    CandidateInfo,
    PathMetrics,
    parse_candidates,
    with_candidates,
)
from .webrtc.session import (
    PeerSetup,
    measure,
    resolve_ice_servers,
    rto_from_rtt,
    selected_pairs,
)

if TYPE_CHECKING:
    import ssl

    from .media import MediaReport

SCHEMA = "natkit.peer/2"
AGENT = "natkit-peer/1"
CHANNEL = "natkit"
CHUNK = 16 * 1024
HIGH_WATER = 1024 * 1024  # bytes queued in the data channel before the sender waits

PROTOCOL = """Data channel messages (JSON text; binary messages carry bulk or file bytes):
hello {agent, role, chat, media}        ping {seq, data} -> pong {seq, data}
bulk {bytes} + binary... -> bulk-ok {bytes}
file {name, size, sha256} + binary... -> file-ok {name, bytes, sha256, match}
chat {text}   chat-end {} -> chat-end-ack {}   done {report: {ok, agent, selected, echoed, sent}} -> done-ack {}
A side closes only after its "done" (with --chat: its "chat-end") was acknowledged, or 3 s passed."""


@dataclasses.dataclass(frozen=True)
class PeerOptions:
    """What :func:`peer` does. Times in seconds, sizes in bytes.

    ``signal``: ``ws://HOST:PORT``; ``turn``/``stun``: server URIs (the
    first TURN URI gets the pre-flight Allocate); ``relay_only`` needs a TURN
    server. ``wait``: how long to wait for another peer; ``timeout``: budget
    for negotiation and the checks once a peer is there (a file transfer
    instead fails only after ``timeout`` seconds without progress).
    ``chat_input``: a file descriptor to read chat lines from (default stdin);
    ``on_event(line)``, ``on_progress(direction, done, total, seconds)`` and
    ``on_chat(line)`` are progress callbacks (the CLI prints them).
    """

    signal: str
    room: str
    turn: tuple[str, ...] = ()
    stun: tuple[str, ...] = ()
    username: str | None = None
    password: str | None = None
    relay_only: bool = False
    token: str | None = None
    messages: int = 20
    payload_bytes: int = 1_000_000
    send_file: str | None = None
    receive_dir: str | None = None
    chat: bool = False
    media: bool = False
    media_seconds: float = 5.0
    wait: float = 120.0
    timeout: float = 20.0
    verify_tls: bool = True
    cafile: str | None = None
    chat_input: int | None = None
    on_event: Callable[[str], None] | None = None
    on_progress: Callable[[str, int, int, float], None] | None = None
    on_chat: Callable[[str], None] | None = None


@dataclasses.dataclass(frozen=True)
class FileTransfer:
    """One file over the data channel. ``direction`` sent/received; ``ok``: the receiver's
    SHA-256 equals the sender's; ``throughput_mbps`` in MB/s (10^6 bytes/s)."""

    direction: str
    name: str
    bytes: int
    sha256: str
    ok: bool
    seconds: float
    throughput_mbps: float | None
    saved_to: str | None


@dataclasses.dataclass(frozen=True)
class RemoteVerdict:
    """The other side's ``done`` message, read defensively (it is remote input): None where absent or mistyped."""

    ok: bool | None
    agent: str | None
    echoed: int | None
    sent: int | None
    local_type: str | None  # the other side's nominated pair: its own candidate type
    remote_type: str | None

    @classmethod
    def of(cls, report: object) -> RemoteVerdict:
        d = report if isinstance(report, dict) else {}
        sel = d.get("selected")
        sel = sel if isinstance(sel, dict) else {}

        def typed(v, t):
            return v if isinstance(v, t) and not (t is int and isinstance(v, bool)) else None

        def cand_type(side: str) -> str | None:
            c = sel.get(side)
            return typed(c.get("type"), str) if isinstance(c, dict) else None

        agent = typed(d.get("agent"), str)
        return cls(typed(d.get("ok"), bool), agent[:64] if agent else None, typed(d.get("echoed"), int), typed(d.get("sent"), int),
                   cand_type("local"), cand_type("remote"))


@dataclasses.dataclass(frozen=True)
class PeerReport:
    """Result of :func:`peer` (JSON schema ``natkit.peer/2``): relay-check's shape, then the peer's fields.

    ``path`` is what this side measured (times in ms, throughput in MB/s):
    ``path.candidates`` have side ``local`` or ``remote``, ``path.selected``
    is ``{"local": SelectedPair | None}`` (this side's nominated pair).
    ``preflight`` is None without a TURN server. ``exit_code``: 0 when
    ``ok``, else the most severe failure's.
    """

    schema: str
    server: str  # the TURN URI pre-flighted, or "none"
    transport: str | None
    tls: bool
    username: str | None
    ok: bool
    exit_code: int
    preflight: Preflight | None
    path: PathMetrics
    failures: tuple[Failure, ...]
    duration_ms: float
    signal: str
    room: str
    role: str  # offerer or answerer
    peer_id: str
    remote_id: str | None
    remote_agent: str | None  # e.g. natkit-peer/1 or natkit-web/1
    relay_only: bool
    remote_report: RemoteVerdict | None  # the other side's verdict ("done" message)
    pings_answered: int  # the other side's pings we echoed
    file: FileTransfer | None
    chat_sent: int
    chat_received: int
    media_sent: bool
    media: MediaReport | None  # what we received, or None
    notes: tuple[str, ...]  # what was ignored on the way (e.g. mDNS candidates), not failures


# --------------------------------------------------------------------------- data channel session


class _FileSink:
    def __init__(self, name: str, size: int, sha256: str, receive_dir: str | None) -> None:
        self.name = _safe_name(name)
        self.size = size
        self.expected = sha256
        self.hash = hashlib.sha256()
        self.got = 0
        self.started = time.monotonic()
        self.fh = None
        self.path = None
        if receive_dir:
            self.path = _unique_path(Path(receive_dir), self.name)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self.fh = os.fdopen(fd, "wb")

    def feed(self, data: bytes) -> None:
        self.hash.update(data)
        self.got += len(data)
        if self.fh is not None:
            self.fh.write(data)

    def finish(self) -> FileTransfer:
        if self.fh is not None:
            self.fh.close()
        digest = self.hash.hexdigest()
        seconds = time.monotonic() - self.started
        ok = digest == self.expected and self.got == self.size
        if not ok and self.path is not None:
            bad = self.path.with_name(self.path.name + ".bad")
            self.path.rename(bad)
            self.path = bad
        return FileTransfer("received", self.name, self.got, digest, ok, seconds,
                            self.got / seconds / 1e6 if seconds > 0 else None, str(self.path) if self.path else None)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _safe_name(name: str) -> str:
    """A file name from a remote peer, made harmless: base name only, no leading dots, 1-128 safe characters."""
    base = re.split(r"[\\/]", str(name))[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(" .")[:128]
    return base or "received.bin"


def _unique_path(directory: Path, name: str) -> Path:
    path = directory / name
    n = 1
    while path.exists():
        path = directory / f"{name}.{n}"
        n += 1
    return path


class _Channel:
    """Our side of the data-channel protocol over one ``RTCDataChannel``."""

    def __init__(self, dc, opts: PeerOptions, role: str) -> None:
        self.dc = dc
        self.opts = opts
        self.role = role
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.pongs: dict[int, asyncio.Future] = {}
        self.bulk_ok: asyncio.Future = loop.create_future()
        self.file_ok: asyncio.Future = loop.create_future()
        self.remote_done: asyncio.Future = loop.create_future()
        self.done_acked = asyncio.Event()  # the other side got our "done"
        self.remote_chat_end = asyncio.Event()
        self.chat_end_acked = asyncio.Event()  # the other side got our "chat-end" (so every chat line before it)
        self.closed = asyncio.Event()
        self.last_activity = time.monotonic()
        self.remote_hello: dict = {}
        self.bulk_left: int | None = None  # bytes of an announced bulk payload still to come
        self.file_sink: _FileSink | None = None  # the file being received
        self.received_file: FileTransfer | None = None
        self.pings_answered = 0
        self.chat_received = 0
        self.notes: list[str] = []
        dc.on("message", self._on_message)
        dc.on("close", self.closed.set)

    def send(self, obj: dict) -> None:
        if self.dc.readyState == "open":
            self.dc.send(json.dumps(obj, separators=(",", ":")))

    def _on_message(self, message) -> None:
        self.last_activity = time.monotonic()
        if isinstance(message, (bytes, bytearray)):
            self._on_binary(bytes(message))
            return
        try:
            m = json.loads(message)
        except ValueError:
            return
        if not isinstance(m, dict):
            return
        t = m.get("t")
        if t == "ping":
            self.pings_answered += 1
            self.send({"t": "pong", "seq": m.get("seq"), "data": m.get("data")})
        elif t == "pong":
            seq = m.get("seq")
            fut = self.pongs.pop(seq, None) if isinstance(seq, int) else None
            if fut is not None and not fut.done():
                fut.set_result(m.get("data"))
        elif t == "hello":
            self.remote_hello = m
        elif t == "bulk":
            n = m.get("bytes")
            n = n if isinstance(n, int) and not isinstance(n, bool) else 0  # remote input
            self.bulk_left, self.file_sink = (n if n > 0 else None), None
            if n <= 0:
                self.send({"t": "bulk-ok", "bytes": 0})
        elif t == "bulk-ok":
            if not self.bulk_ok.done():
                self.bulk_ok.set_result(time.monotonic())
        elif t == "file":
            try:
                sink = _FileSink(str(m.get("name")), int(m.get("size")), str(m.get("sha256")), self.opts.receive_dir)  # type: ignore[arg-type]  # a missing size: the TypeError below
            except (OSError, TypeError, ValueError) as exc:
                self.notes.append(f"cannot receive file {m.get('name')!r}: {exc}")
                return
            self.file_sink, self.bulk_left = sink, None
            self._event(f"receiving file {sink.name} ({sink.size} bytes)")
            if sink.size == 0:
                self._finish_file()
        elif t == "file-ok":
            if not self.file_ok.done():
                self.file_ok.set_result(m)
        elif t == "chat":
            self.chat_received += 1
            if self.opts.on_chat is not None:
                self.opts.on_chat(str(m.get("text"))[:10000])
        elif t == "chat-end":
            self.send({"t": "chat-end-ack"})
            self.remote_chat_end.set()
        elif t == "chat-end-ack":
            self.chat_end_acked.set()
        elif t == "done":
            self.send({"t": "done-ack"})
            if not self.remote_done.done():
                self.remote_done.set_result(m.get("report") if isinstance(m.get("report"), dict) else {})
        elif t == "done-ack":
            self.done_acked.set()

    def _on_binary(self, data: bytes) -> None:
        if self.bulk_left is not None:
            self.bulk_left -= len(data)
            if self.bulk_left <= 0:
                self.bulk_left = None
                self.send({"t": "bulk-ok", "bytes": len(data)})
        elif self.file_sink is not None:
            sink = self.file_sink
            sink.feed(data)
            if self.opts.on_progress is not None:
                self.opts.on_progress("received", sink.got, sink.size, time.monotonic() - sink.started)
            if sink.got >= sink.size:
                self._finish_file()

    def _finish_file(self) -> None:
        sink, self.file_sink = self.file_sink, None
        if sink is None:
            return
        self.received_file = sink.finish()
        f = self.received_file
        self.send({"t": "file-ok", "name": f.name, "bytes": f.bytes, "sha256": f.sha256, "match": f.ok})
        self._event(f"file {f.name}: {f.bytes} bytes, sha256 {'matches' if f.ok else 'DOES NOT match'}")

    def _event(self, line: str) -> None:
        if self.opts.on_event is not None:
            self.opts.on_event(line)

    async def drain(self, limit: int = HIGH_WATER) -> None:
        while self.dc.bufferedAmount > limit:
            if self.dc.readyState != "open":
                raise ConnectionError("the data channel closed")
            await asyncio.sleep(0.002)

    async def ping(self, seq: int, data: str, timeout: float) -> str | None:
        fut = self.loop.create_future()
        self.pongs[seq] = fut
        self.send({"t": "ping", "seq": seq, "data": data})
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self.pongs.pop(seq, None)
            return None

    async def echo(self, seq: int, timeout: float) -> tuple[str, str | None]:
        """One ping/pong round trip (:class:`natkit.webrtc.PathChannel`)."""
        data = os.urandom(24).hex()
        return data, await self.ping(seq, data, timeout)

    async def bulk(self, nbytes: int, timeout: float) -> tuple[float | None, str | None]:
        """:meth:`send_bulk` as a :class:`natkit.webrtc.PathChannel`."""
        mbps = await self.send_bulk(nbytes, timeout)
        return mbps, None if mbps is not None else f"bulk payload of {nbytes} bytes not acknowledged before the deadline"

    async def send_bulk(self, n: int, timeout: float) -> float | None:
        """Send ``n`` bytes; MB/s from the first byte to the receiver's ``bulk-ok``, or None on timeout."""
        chunk = os.urandom(CHUNK)
        self.send({"t": "bulk", "bytes": n})
        t0 = time.monotonic()
        sent = 0
        while sent < n:
            piece = chunk[: min(CHUNK, n - sent)]
            self.dc.send(piece)
            sent += len(piece)
            await self.drain()
        try:
            t1 = await asyncio.wait_for(self.bulk_ok, timeout)
        except TimeoutError:
            return None
        return n / max(1e-9, t1 - t0) / 1e6

    async def send_file(self, path: str, stall: float) -> FileTransfer:
        """Send a file, then wait for the receiver's SHA-256. Fails after ``stall`` seconds without progress."""
        p = Path(path)
        size = p.stat().st_size
        digest = await asyncio.to_thread(_sha256_file, p)  # a large file would stall the data channel
        self.send({"t": "file", "name": p.name, "size": size, "sha256": digest})
        t0 = time.monotonic()
        sent = 0
        last = time.monotonic()
        with open(p, "rb") as f:  # noqa: ASYNC230 - 16 KiB reads between sends
            while True:
                block = f.read(CHUNK)
                if not block:
                    break
                self.dc.send(block)
                sent += len(block)
                before = self.dc.bufferedAmount
                while self.dc.bufferedAmount > HIGH_WATER:
                    if self.dc.readyState != "open":
                        raise CheckFailed("the data channel closed during the file transfer", step="send")
                    if self.dc.bufferedAmount < before:
                        before, last = self.dc.bufferedAmount, time.monotonic()
                    elif time.monotonic() - last > stall:
                        raise CheckFailed(f"file transfer stalled for {stall:g}s", step="send")
                    await asyncio.sleep(0.002)
                last = time.monotonic()
                if self.opts.on_progress is not None:
                    self.opts.on_progress("sent", max(0, sent - self.dc.bufferedAmount), size, time.monotonic() - t0)
        # wait for the receiver's hash: it needs the rest of the queue, then hashes
        while not self.file_ok.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.file_ok), 0.2)
            except TimeoutError:
                if self.dc.readyState != "open":
                    break
                if self.opts.on_progress is not None:
                    self.opts.on_progress("sent", max(0, size - self.dc.bufferedAmount), size, time.monotonic() - t0)
                if time.monotonic() - max(last, self.last_activity) > stall and self.dc.bufferedAmount == 0:
                    break
                if self.dc.bufferedAmount:
                    last = time.monotonic()
        seconds = time.monotonic() - t0
        if not self.file_ok.done():
            return FileTransfer("sent", p.name, size, digest, False, seconds, None, None)
        ack = self.file_ok.result()
        ok = ack.get("sha256") == digest and ack.get("bytes") == size
        if self.opts.on_progress is not None:
            self.opts.on_progress("sent", size, size, seconds)
        return FileTransfer("sent", p.name, size, digest, ok, seconds, size / max(1e-9, seconds) / 1e6, None)


# --------------------------------------------------------------------------- signaling glue


class _Signals:
    """Reads the signaling connection in the background: offer/answer futures, trickled candidates."""

    def __init__(self, sig, role: str, remote_id: str | None) -> None:
        loop = asyncio.get_running_loop()
        self.sig = sig
        self.role = role
        self.remote_id = remote_id
        self.remote_meta: dict = {}
        self.offer: asyncio.Future = loop.create_future()
        self.answer: asyncio.Future = loop.create_future()
        self.gone: asyncio.Future = loop.create_future()  # the remote left: result is the reason
        self.pc = None
        self.ready = False  # remote description applied
        self.pending: list = []
        self.remote_candidates: list[CandidateInfo] = []
        self.notes: list[str] = []
        self.task = loop.create_task(self._run())

    def _fail_all(self, exc: BaseException) -> None:
        for fut in (self.offer, self.answer, self.gone):
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: not every future is awaited

    async def _run(self) -> None:
        try:
            while True:
                m = await self.sig.recv(None)
                t = m["type"]
                frm = m.get("from")
                if t == "peer-joined":
                    if self.remote_id is None:
                        self.remote_meta = m.get("meta") or {}
                elif t == "offer" and self.role == "answerer" and not self.offer.done():
                    if self.remote_id is None or frm == self.remote_id:
                        self.remote_id = frm
                        self.offer.set_result(m)
                elif t == "answer" and self.role == "offerer" and frm == self.remote_id and not self.answer.done():
                    self.answer.set_result(m)
                elif t == "candidate" and (self.remote_id is None or frm == self.remote_id):
                    await self._candidate(m.get("candidate"))
                elif t in ("bye", "peer-left") and (frm or m.get("id")) == self.remote_id and self.remote_id is not None:
                    if not self.gone.done():
                        self.gone.set_result(m.get("reason") or t)
                    for fut in (self.offer, self.answer):
                        if not fut.done():
                            fut.set_exception(CheckFailed(f"peer {self.remote_id} left during negotiation ({m.get('reason') or t})",
                                                          step="negotiation"))
                            fut.exception()
        except asyncio.CancelledError:
            raise
        except NatkitError as exc:
            self._fail_all(exc)
        except Exception as exc:  # noqa: BLE001 - a bug here must end the waits, not hang them
            self._fail_all(InternalError(f"signaling: {exc.__class__.__name__}: {exc}", step="signaling"))

    async def _candidate(self, c) -> None:
        if c is not None:
            line = str(c.get("candidate") or "")
            line = line.removeprefix("a=")
            if not line.strip():
                return  # an empty candidate: end of a generation
            try:
                info = parse_candidates("a=" + (line if line.startswith("candidate:") else "candidate:" + line), "remote")
            except Exception:  # noqa: BLE001 - remote input: aioice's parser raises several kinds
                self.notes.append(f"unparsable remote candidate {line[:80]!r}")
                return
            self.remote_candidates.extend(info)
        if not self.ready:
            self.pending.append(c)
        else:
            await _add_candidate(self.pc, c, self.notes)

    async def flush(self) -> None:
        self.ready = True
        pending, self.pending = self.pending, []
        for c in pending:
            await _add_candidate(self.pc, c, self.notes)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.wait([self.task], timeout=1.0)


async def _apply(pc, description, remote_id) -> None:
    """setRemoteDescription; an SDP aiortc cannot use is the peer's fault: :class:`CheckFailed`."""
    try:
        await pc.setRemoteDescription(description)
    except Exception as exc:  # noqa: BLE001 - remote input: whatever aiortc raises, the SDP was refused
        text = str(exc).splitlines()[0][:120] if str(exc) else exc.__class__.__name__
        raise CheckFailed(f"the {description.type} from peer {remote_id} was refused: {text}", step="negotiation") from None


async def _add_candidate(pc, c, notes: list[str]) -> None:
    import ipaddress

    from aiortc.sdp import candidate_from_sdp

    if c is None:
        await pc.addIceCandidate(None)
        return
    line = str(c.get("candidate") or "")
    line = line.removeprefix("a=")
    line = line.removeprefix("candidate:")
    try:
        cand = candidate_from_sdp(line)
        ipaddress.ip_address(cand.ip)
    except (AssertionError, ValueError, IndexError):
        notes.append(f"ignored remote candidate {line[:60]!r} (not an IP candidate: mDNS names cannot be resolved here)")
        return
    cand.sdpMid = c.get("sdpMid")
    cand.sdpMLineIndex = c.get("sdpMLineIndex")
    if cand.sdpMid is None and cand.sdpMLineIndex is None:
        cand.sdpMLineIndex = 0
    try:
        await pc.addIceCandidate(cand)
    except Exception as exc:  # noqa: BLE001 - remote input: a refused candidate is a note
        notes.append(f"remote candidate refused: {exc}")


# --------------------------------------------------------------------------- the operation


def _validate(o: PeerOptions) -> None:
    if not 1 <= o.messages <= 100_000:
        raise UsageError(f"--messages must be 1..100000, got {o.messages}")
    if not 0 <= o.payload_bytes <= 1_000_000_000:
        raise UsageError(f"--payload must be 0..1e9 bytes, got {o.payload_bytes}")
    if o.timeout <= 0 or o.wait <= 0:
        raise UsageError("--timeout and --wait must be positive")
    if not 0.5 <= o.media_seconds <= 600:
        raise UsageError(f"--media-seconds must be 0.5..600, got {o.media_seconds}")
    if o.relay_only and not o.turn:
        raise UsageError("--relay-only needs a --turn server")
    if o.turn and not (o.username and o.password):
        raise UsageError("--turn needs credentials: --secret-file FILE (or --secret S), or --user U --password-file FILE")
    if o.send_file is not None:
        p = Path(o.send_file)
        if not p.is_file() or not os.access(p, os.R_OK):
            raise UsageError(f"--send {o.send_file}: not a readable file")
    if o.receive_dir is not None and not Path(o.receive_dir).is_dir():
        raise UsageError(f"--receive {o.receive_dir}: not a directory")


@dataclasses.dataclass
class _Turn:
    """The TURN server of a peer run (the first --turn URI), after its pre-flight Allocate."""

    server: str = "none"
    transport: str | None = None
    tls: bool = False
    preflight: Preflight | None = None
    ssl_context: ssl.SSLContext | None = None


async def _preflight(o: PeerOptions, event: Callable[[str], None]) -> _Turn:
    if not o.turn:
        return _Turn()
    if o.username is None or o.password is None:  # _validate says so too
        raise UsageError("--turn needs credentials: --secret-file FILE (or --secret S), or --user U --password-file FILE")
    from .stun import resolve
    from .uri import parse_turn_uri

    uri = parse_turn_uri(o.turn[0])
    addr = await resolve(uri.host, uri.port, transport=uri.transport, timeout=o.timeout)
    ctx = tls_context(uri, verify=o.verify_tls, cafile=o.cafile)
    ms, relayed, mapped = await preflight_allocate(uri, addr, o.username, o.password, timeout=o.timeout, ssl_context=ctx)
    event(f"TURN {uri}: allocation in {ms:.1f} ms, relayed address {relayed}")
    return _Turn(str(uri), uri.transport, uri.secure, Preflight(ms, relayed, mapped), ctx)


class _Negotiation:
    """One side of offer/answer through the room, and the wait for the data channel.

    ``guarded`` awaits with a deadline and fails early when the remote leaves.
    """

    def __init__(self, o: PeerOptions, setup: PeerSetup, sig, signals: _Signals, role: str) -> None:
        from .media import MediaReceiver

        self.o, self.setup, self.sig, self.signals, self.role = o, setup, sig, signals, role
        self.loop = asyncio.get_running_loop()
        self.pc = setup.peer()
        self.receiver = MediaReceiver(self.pc)
        self.tracks: list = []
        self.channel_ready: asyncio.Future = self.loop.create_future()
        self.deadline = self.loop.time() + o.timeout
        self.gathering_ms: float | None = None
        self.c0 = 0.0

        # the message handler must be in place before the first message can arrive:
        # aiortc drops messages of a channel nobody listens to yet
        @self.pc.on("datachannel")
        def on_datachannel(dc) -> None:
            if dc.label == CHANNEL and not self.channel_ready.done():
                self.channel_ready.set_result(_Channel(dc, o, role))

    def left(self) -> float:
        return max(0.05, self.deadline - self.loop.time())

    async def guarded(self, aw, seconds: float, what: str):
        """Await ``aw`` for ``seconds``, failing early when the remote leaves."""
        gone = self.signals.gone
        task = asyncio.ensure_future(aw)
        done, _ = await asyncio.wait({task, gone}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        if gone in done:
            raise CheckFailed(f"peer {self.signals.remote_id} left during {what} ({gone.result()})", step=what)
        raise TimeoutError

    async def gather(self, make) -> None:
        g0 = time.monotonic()
        await asyncio.wait_for(self.pc.setLocalDescription(await make()), self.o.timeout)
        self.gathering_ms = (time.monotonic() - g0) * 1000.0

    async def offer(self) -> None:
        from aiortc import RTCSessionDescription

        from .media import add_receivers, add_senders

        o, pc, signals = self.o, self.pc, self.signals
        own_channel = _Channel(pc.createDataChannel(CHANNEL), o, self.role)
        if o.media:
            self.tracks = add_senders(pc)
        elif signals.remote_meta.get("media"):
            add_receivers(pc)
        self.setup.use_tls(pc)
        await self.gather(pc.createOffer)
        await self.sig.send({"type": "offer", "sdp": pc.localDescription.sdp, "to": signals.remote_id})
        try:
            answer = await self.guarded(signals.answer, self.left(), "negotiation")
        except TimeoutError:
            raise CheckFailed(f"no answer from peer {signals.remote_id} within {o.timeout:g}s", step="negotiation") from None
        signals.pc = pc
        self.c0 = time.monotonic()
        await _apply(pc, RTCSessionDescription(sdp=answer["sdp"], type="answer"), signals.remote_id)
        await signals.flush()
        self.channel_ready.set_result(own_channel)

    async def answer(self, event: Callable[[str], None]) -> None:
        from aiortc import RTCSessionDescription

        from .media import add_senders

        o, pc, signals = self.o, self.pc, self.signals
        try:
            offer = await asyncio.wait_for(asyncio.shield(signals.offer), o.wait)
        except TimeoutError:
            raise NoPeer(f"no peer offered in room {o.room!r} within {o.wait:g}s", step="wait",
                         hint="start the other peer (or open the test page) with the same --room") from None
        self.deadline = self.loop.time() + o.timeout
        event(f"offer from {signals.remote_id}")
        signals.pc = pc
        await _apply(pc, RTCSessionDescription(sdp=offer["sdp"], type="offer"), signals.remote_id)
        self.setup.use_tls(pc)
        await signals.flush()
        if o.media:
            self.tracks = add_senders(pc)
        await self.gather(pc.createAnswer)
        await self.sig.send({"type": "answer", "sdp": pc.localDescription.sdp, "to": signals.remote_id})
        self.c0 = time.monotonic()

    async def open_channel(self, server: str | None) -> tuple[_Channel, float]:
        """Wait for the data channel to open: ``(channel, connected_ms)``; :class:`NoRelayConnectivity` at the deadline."""
        try:
            channel = await self.guarded(self.channel_ready, self.left(), "connectivity")
            dc = channel.dc
            if dc.readyState != "open":
                opened = asyncio.Event()
                dc.on("open", opened.set)
                await self.guarded(opened.wait(), self.left(), "connectivity")
        except TimeoutError:
            raise NoRelayConnectivity(
                f"no candidate pair to peer {self.signals.remote_id} connected within {self.o.timeout:g}s (ICE state {self.pc.iceConnectionState})",
                server=server, step="connectivity",
                hint="both peers need a TURN server they can reach; with --relay-only both sides must gather relay candidates",
            ) from None
        return channel, (time.monotonic() - self.c0) * 1000.0


def _path_failures(path: PathMetrics, o: PeerOptions) -> list[Failure]:
    """natkit peer's rules on the path: a nominated pair; with --relay-only, relay candidates and a relayed local candidate."""
    pair = path.pair
    out = []
    if pair is None:
        out.append(Failure.check("selected_pair", "no nominated candidate pair"))
    elif o.relay_only and pair.local_type != "relay":
        out.append(Failure.check("selected_pair", f"relay only, but the nominated local candidate is {pair.local_type}"))
    return out


async def _remote_verdict(channel: _Channel, signals: _Signals, o: PeerOptions,
                          failures: list[Failure], notes: list[str]) -> RemoteVerdict | None:
    """Wait for the other side's ``done`` while it makes progress (it may still be sending a file)."""
    remote = None
    while True:
        try:
            remote = await asyncio.wait_for(asyncio.shield(channel.remote_done), 0.25)
            break
        except TimeoutError:
            if channel.closed.is_set() or signals.gone.done():
                failures.append(Failure.check("verdict", "the peer left before reporting its verdict"))
                break
            if time.monotonic() - channel.last_activity > o.timeout:
                failures.append(Failure.check("verdict", f"the peer sent no verdict within {o.timeout:g}s"))
                break
    if remote is None:
        return None
    verdict = RemoteVerdict.of(remote)
    if verdict.ok is False:
        failures.append(Failure.check("verdict", "the peer reported FAIL"))
    if not o.chat:
        # closing at once could drop our own "done" still queued in SCTP: wait for its ack
        try:
            await asyncio.wait_for(channel.done_acked.wait(), 3.0)
        except TimeoutError:
            notes.append("the peer did not acknowledge our verdict within 3 s")
    return verdict


def _file_failures(channel: _Channel, sent_file: FileTransfer | None) -> list[Failure]:
    out = []
    if sent_file is not None and not sent_file.ok:
        out.append(Failure.check("file", f"file {sent_file.name}: the receiver's SHA-256 does not match (or never came)"))
    got = channel.received_file
    if got is not None and not got.ok:
        out.append(Failure.check("file", f"received file {got.name}: SHA-256 does not match the sender's"))
    sink = channel.file_sink
    if sink is not None:
        out.append(Failure.check("file", f"file {sink.name} arrived incomplete ({sink.got}/{sink.size} bytes)"))
    return out


async def peer_async(o: PeerOptions) -> PeerReport:
    """See :func:`peer`."""
    _validate(o)
    from .signaling.client import SignalingClient, check_url

    started = time.monotonic()
    event = o.on_event or (lambda line: None)
    turn = await _preflight(o, event)
    ice_servers = await resolve_ice_servers(o.turn, o.stun, username=o.username, password=o.password, timeout=o.timeout)
    rto = rto_from_rtt(turn.preflight.allocation_ms) if turn.preflight is not None else None
    sig_ctx = None
    if check_url(o.signal).startswith("wss://"):
        from .stun import client_ssl_context

        sig_ctx = client_ssl_context(o.verify_tls, o.cafile)
    sig = SignalingClient(o.signal, timeout=min(10.0, o.timeout), ssl_context=sig_ctx)
    await sig.connect()
    signals = neg = None
    try:
        async with PeerSetup(ice_servers, relay_only=o.relay_only, rto=rto, ssl_context=turn.ssl_context) as setup:
            joined = await sig.join(o.room, token=o.token, meta={"agent": AGENT, "media": o.media, "chat": o.chat})
            role = "offerer" if joined.peers else "answerer"
            remote = joined.peers[0] if joined.peers else None
            signals = _Signals(sig, role, remote["id"] if remote else None)
            if remote:
                signals.remote_meta = remote.get("meta") or {}
                event(f"joined room {o.room!r} as {joined.id}; {remote['id']} is here: offering")
            else:
                event(f"joined room {o.room!r} as {joined.id}; waiting up to {o.wait:g}s for a peer")
            neg = _Negotiation(o, setup, sig, signals, role)
            try:
                return await _session(o, neg, turn, joined.id, started, event)
            finally:
                for t in neg.tracks:
                    t.stop()
                await neg.receiver.close()
    finally:
        if signals is not None:
            await signals.close()
        await sig.close(bye=True)


async def _session(o: PeerOptions, neg: _Negotiation, turn: _Turn, peer_id: str, started: float,
                   event: Callable[[str], None]) -> PeerReport:
    """Negotiate, measure, exchange verdicts and chat; the report of this side."""
    signals, pc = neg.signals, neg.pc
    if neg.role == "offerer":
        await neg.offer()
    else:
        await neg.answer(event)
    local_candidates = parse_candidates(pc.localDescription.sdp, "local")
    remote_sdp = pc.remoteDescription.sdp if pc.remoteDescription else ""
    channel, connected_ms = await neg.open_channel(turn.server if o.turn else None)
    channel.send({"t": "hello", "agent": AGENT, "role": neg.role, "chat": o.chat, "media": o.media})
    pair = selected_pairs({"local": pc})["local"]
    event(f"data channel open in {connected_ms:.0f} ms" + (f", pair {pair.describe()}" if pair else ""))

    path, failures = await measure(channel, peers={"local": pc}, candidates=local_candidates, messages=o.messages,
                                   payload_bytes=o.payload_bytes, deadline=neg.deadline, gathering_ms=neg.gathering_ms,
                                   connected_ms=connected_ms)
    sent_file = None
    if o.send_file:
        event(f"sending {o.send_file}")
        sent_file = await channel.send_file(o.send_file, stall=o.timeout)
    media_report = None
    if neg.receiver.receiving or signals.remote_meta.get("media") or channel.remote_hello.get("media"):
        event(f"measuring received media for {o.media_seconds:g}s")
        media_report = await neg.receiver.measure(o.media_seconds)
        failures += [Failure.check("media", f) for f in media_report.failures]
    failures += _path_failures(path, o)
    sel = path.pair
    channel.send({"t": "done", "report": {
        "ok": not failures and not (sent_file is not None and not sent_file.ok), "agent": AGENT,
        "echoed": path.messages_echoed, "sent": o.messages,
        "selected": None if sel is None else {"local": {"type": sel.local_type}, "remote": {"type": sel.remote_type}}}})

    notes: list[str] = []
    remote_report = await _remote_verdict(channel, signals, o, failures, notes)
    failures += _file_failures(channel, sent_file)
    notes.extend(channel.notes)
    chat_sent = await _chat(channel, o, signals) if o.chat else 0

    path = with_candidates(path, local_candidates + parse_candidates(remote_sdp, "remote") + signals.remote_candidates)
    if o.relay_only and not all(c.type == "relay" for c in local_candidates):
        failures.append(Failure.check("candidates", "a non-relay local candidate was gathered"))
    return PeerReport(
        schema=SCHEMA, server=turn.server, transport=turn.transport, tls=turn.tls, username=o.username,
        ok=not failures, exit_code=exit_code_for(failures), preflight=turn.preflight, path=path,
        failures=tuple(failures), duration_ms=(time.monotonic() - started) * 1000.0,
        signal=neg.sig.url, room=o.room, role=neg.role, peer_id=peer_id, remote_id=signals.remote_id,
        remote_agent=channel.remote_hello.get("agent") or signals.remote_meta.get("agent"),
        relay_only=o.relay_only, remote_report=remote_report, pings_answered=channel.pings_answered,
        file=sent_file or channel.received_file, chat_sent=chat_sent, chat_received=channel.chat_received,
        media_sent=bool(neg.tracks), media=media_report, notes=tuple(notes + signals.notes),
    )


async def _chat(channel: _Channel, o: PeerOptions, signals: _Signals) -> int:
    """Send lines read from ``o.chat_input`` (default stdin) until end of input; returns lines sent.

    Ends at end of input once the other side ended its chat (or does not
    chat), or when the other side leaves.
    """
    import sys

    loop = asyncio.get_running_loop()
    fd = o.chat_input if o.chat_input is not None else sys.stdin.fileno()
    lines: asyncio.Queue = asyncio.Queue()
    buf = bytearray()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            if buf:
                lines.put_nowait(buf.decode("utf-8", "replace"))
                buf.clear()
            lines.put_nowait(None)
            return
        buf.extend(data)
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            lines.put_nowait(line.decode("utf-8", "replace"))

    try:
        loop.add_reader(fd, readable)
    except (PermissionError, ValueError, OSError):  # e.g. a regular file: read it at once
        data = os.read(fd, 1 << 20)
        for line in data.decode("utf-8", "replace").splitlines():
            lines.put_nowait(line)
        lines.put_nowait(None)
        fd = None
    sent = 0
    if o.on_event:
        o.on_event("chat: type a line and Enter to send, Ctrl-D to end")
    closed = asyncio.ensure_future(channel.closed.wait())
    try:
        while True:
            get = asyncio.ensure_future(lines.get())
            done, _ = await asyncio.wait({get, signals.gone, closed}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                break
            line = get.result()
            if line is None:
                channel.send({"t": "chat-end"})
                if channel.remote_hello.get("chat"):  # let the other side finish typing
                    await _first_of([channel.remote_chat_end, channel.closed], signals.gone)
                if channel.remote_hello.get("agent") == AGENT:
                    # closing at once could drop our last lines still queued in SCTP: wait for the ack
                    await _first_of([channel.chat_end_acked, channel.closed], signals.gone, timeout=3.0)
                break
            if channel.dc.readyState != "open":
                break
            channel.send({"t": "chat", "text": line})
            sent += 1
    finally:
        closed.cancel()
        if fd is not None:
            try:
                loop.remove_reader(fd)
            except (OSError, ValueError):  # already removed at end of input
                pass
    return sent


async def _first_of(events: list[asyncio.Event], gone: asyncio.Future, timeout: float | None = None) -> None:
    """Wait until one of ``events`` is set, ``gone`` is done, or ``timeout`` seconds passed."""
    waiters = {asyncio.ensure_future(e.wait()) for e in events}
    try:
        await asyncio.wait(waiters | {gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def peer(opts: PeerOptions) -> PeerReport:
    """Join ``opts.room`` on ``opts.signal``, connect to the peer there and check the path.

    Returns a :class:`PeerReport` (``ok`` False with ``failures`` when a check
    did not hold). Raises :class:`UsageError` (bad options),
    :class:`natkit.signaling.client.SignalingUnreachable` (exit 4),
    ``SignalingAuthRefused`` (5), ``RoomFull`` (6), TURN pre-flight errors as
    :func:`natkit.relay.relay_check` (4/5/6), :class:`NoPeer` (1) when nobody
    came within ``wait``, :class:`CheckFailed` when the peer left during
    negotiation, :class:`NoRelayConnectivity` (7) when no pair connected.
    """
    from ._async import run

    return run(peer_async(opts))
