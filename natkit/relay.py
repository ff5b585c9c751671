"""Relay verification: relay-only ICE between two aiortc peers through one TURN server.

:func:`relay_check` proves relaying instead of hoping for it:

1. a pre-flight Allocate (RFC 8656 §7) with the given credentials, so that an
   unreachable server, refused credentials (401/441) or a refused allocation
   (486/508) get their own diagnosis and exit code within the time budget;
2. two ``RTCPeerConnection`` s in this process, configured with only that TURN
   server and ``iceTransportPolicy="relay"`` (RFC 8445 candidate type
   ``relay`` only), offer/answer exchanged in process;
3. assertions: every gathered candidate is ``relay``, the nominated pair is
   relay/relay on both sides, N data-channel messages echo back byte for
   byte, and a fixed payload crosses for a throughput figure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import (
    AuthenticationRefused,
    Failure,
    NatkitError,
    NoRelayConnectivity,
    StunTimeout,
    TurnError,
    UsageError,
    exit_code_for,
    most_severe,
)
from .model import TransportAddress, format_duration
from .uri import ServerURI, parse_turn_uri
from .webrtc.metrics import CandidateInfo, PathMetrics, SelectedPair, parse_candidates  # noqa: F401 - CandidateInfo, SelectedPair: public here too
from .webrtc.session import IceServer, PeerSetup, ice_url, measure, rto_from_rtt

if TYPE_CHECKING:
    from .media import MediaReport

SCHEMA = "natkit.relay/2"


@dataclasses.dataclass(frozen=True)
class Preflight:
    """The pre-flight Allocate (RFC 8656 §7.1) before any peer gathers: times in milliseconds."""

    allocation_ms: float  # Allocate round trip(s), incl. the 401 challenge
    relayed_address: TransportAddress | None  # XOR-RELAYED-ADDRESS
    mapped_address: TransportAddress | None  # XOR-MAPPED-ADDRESS seen by the server


@dataclasses.dataclass(frozen=True)
class RelayReport:
    """Result of :func:`relay_check` (JSON schema ``natkit.relay/2``). Times in ms, throughput in MB/s.

    ``path`` is what the two peers measured (``path.selected`` has the
    ``offerer`` and ``answerer`` pairs); ``failures`` the assertions that did
    not hold; ``exit_code`` 0 when ``ok``, else the most severe failure's
    (:func:`natkit.errors.exit_code_for`).
    """

    schema: str
    server: str  # the TURN URI checked
    transport: str  # udp or tcp, between client and server
    tls: bool
    username: str
    ok: bool  # every assertion held: all candidates relay, relay/relay nominated on both sides, echo intact, bulk delivered
    exit_code: int
    preflight: Preflight
    path: PathMetrics
    failures: tuple[Failure, ...]
    duration_ms: float
    media: MediaReport | None = None  # with media=True: what the answerer received


def tls_context(uri: ServerURI, *, verify: bool = True, cafile: str | None = None) -> ssl.SSLContext | None:
    """The client TLS context for a ``turns:`` URI (None for plain turn:)."""
    if not uri.secure:
        return None
    from .stun import client_ssl_context

    return client_ssl_context(verify, cafile)


async def preflight_allocate(
    uri: ServerURI,
    addr: TransportAddress,
    username: str,
    password: str,
    *,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[float, TransportAddress, TransportAddress | None]:
    """One Allocate with long-term credentials (RFC 8656 §7.1, RFC 8489 §9.2), within ONE budget.

    ``timeout`` seconds cover everything: over UDP a Binding first (on a
    connected socket, so an ICMP port-unreachable fails at once), connecting
    (TCP/TLS), the 401 challenge and the signed Allocate. Returns
    ``(milliseconds of the Allocate incl. the challenge, relayed address,
    mapped address)`` and releases the allocation (Refresh LIFETIME=0).

    Raises :class:`AuthenticationRefused` (401/441, or a server that answered
    the challenge and then went silent or sent an unsigned 400 to the signed
    request: credentials probably refused), :class:`AllocationRefused`,
    :class:`ServerUnreachable` / :class:`StunTimeout` (``limit`` names the
    limit that fired), :class:`~natkit.errors.MalformedMessage` or
    :class:`TurnError`; every one names the URI and the step.
    """
    from .stun.aio import UdpStunEndpoint, binding_request, relabel
    from .stun.aio_turn import TurnClient

    server = str(uri)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def left() -> float:
        return max(0.001, deadline - loop.time())

    transport = "tls" if uri.secure else uri.transport
    try:
        client = await TurnClient.open(addr, transport=transport, username=username, password=password, ssl=ssl_context,
                                       server_hostname=uri.host, timeout=left())
    except NatkitError as exc:
        raise relabel(exc, server=server, step="connect") from None
    try:
        if isinstance(client.conn, UdpStunEndpoint):
            try:
                await client.conn.request(binding_request(), addr, timeout=left())
            except StunTimeout as exc:
                raise StunTimeout(f"no Binding answer within the {format_duration(timeout)} budget ({exc.message})", server=server,
                                  step="binding", limit=exc.limit, hint=exc.hint) from None
            except NatkitError as exc:
                raise relabel(exc, server=server, step="binding") from None
        started = loop.time()
        try:
            reply = await client.allocate(lifetime=60, timeout=left(), check=False)
        except StunTimeout as exc:
            if client.session.key is not None:  # the server sent its 401 challenge, then nothing
                raise AuthenticationRefused(
                    "credentials probably refused: the server answered the 401 challenge, then nothing after "
                    "the credentials were sent", server=server, step="allocate", error_code=None,
                    hint="check the username/password or the shared secret (and the clock, for REST credentials)") from None
            raise StunTimeout(f"no Allocate answer within the {format_duration(timeout)} budget ({exc.message})", server=server,
                              step="allocate", limit=exc.limit) from None
        except NatkitError as exc:
            raise relabel(exc, server=server) from None
        if not reply.ok:
            if reply.code == 400 and reply.signed is None and reply.attempts > 1:
                raise AuthenticationRefused(
                    "credentials probably refused: the server answered the 401 challenge, then an unsigned "
                    f"{reply.code} {reply.reason} to the request carrying the credentials",
                    server=server, step="allocate", error_code=reply.code, reason=reply.reason,
                    hint="check the username/password or the shared secret (and the clock, for REST credentials)")
            raise reply.error(server=server, step="allocate")
        elapsed = (loop.time() - started) * 1000.0
        relayed = client.relayed
        if relayed is None:
            raise TurnError("Allocate succeeded without XOR-RELAYED-ADDRESS", server=server, step="allocate")
        return elapsed, relayed, client.mapped
    finally:
        try:
            await client.release(timeout=min(0.5, left()))
        finally:
            client.conn.close()


def _validate(messages: int, payload_bytes: int, timeout: float, media: bool, media_seconds: float) -> None:
    if messages < 1 or messages > 100_000:
        raise UsageError(f"--messages must be 1..100000, got {messages}")
    if payload_bytes < 0 or payload_bytes > 1_000_000_000:
        raise UsageError(f"--payload must be 0..1e9 bytes, got {payload_bytes}")
    if not timeout > 0:
        raise UsageError("timeout must be positive")
    if media and not 0.5 <= media_seconds <= 600:
        raise UsageError(f"--media-seconds must be 0.5..600, got {media_seconds}")


class _InProcessPath:
    """Both ends of relay-check's data channels, in this process (a :class:`natkit.webrtc.PathChannel`).

    The offerer creates ``natkit-echo`` (the answerer sends every message
    back) and ``natkit-bulk`` (the answerer counts bytes); the handlers are in
    place before the channels open, as aiortc drops messages nobody listens to.
    """

    def __init__(self, offerer, answerer) -> None:
        loop = asyncio.get_running_loop()
        self.echo_channel = offerer.createDataChannel("natkit-echo")
        self.bulk_channel = offerer.createDataChannel("natkit-bulk")
        self.opened = asyncio.Event()
        self.echo_channel.on("open", self.opened.set)
        self.replies: asyncio.Queue = asyncio.Queue()
        self.echo_channel.on("message", self.replies.put_nowait)
        self.bulk_target = 0
        self.bulk_received = 0
        self.bulk_done: asyncio.Future = loop.create_future()
        answerer.on("datachannel", self._on_datachannel)

    def _on_datachannel(self, channel) -> None:
        if channel.label == "natkit-echo":
            channel.on("message", channel.send)
        else:
            channel.on("message", self._on_bulk)

    def _on_bulk(self, message) -> None:
        self.bulk_received += len(message)
        if self.bulk_target and self.bulk_received >= self.bulk_target and not self.bulk_done.done():
            self.bulk_done.set_result(time.monotonic())

    async def echo(self, seq: int, timeout: float):
        payload = f"natkit-echo {seq:06d} ".encode() + os.urandom(48)
        self.echo_channel.send(payload)
        try:
            return payload, await asyncio.wait_for(self.replies.get(), timeout)
        except TimeoutError:
            return payload, None

    async def bulk(self, nbytes: int, timeout: float) -> tuple[float | None, str | None]:
        self.bulk_target = nbytes
        chunk = os.urandom(16384)
        b0 = time.monotonic()
        sent = 0
        while sent < nbytes:
            piece = chunk[: min(len(chunk), nbytes - sent)]
            self.bulk_channel.send(piece)
            sent += len(piece)
            if self.bulk_channel.bufferedAmount > 4 * 1024 * 1024:
                await asyncio.sleep(0.001)  # let SCTP drain (aiortc has no bufferedamountlow wait)
        try:
            b1 = await asyncio.wait_for(asyncio.shield(self.bulk_done), timeout)
        except TimeoutError:
            return None, f"bulk payload: only {self.bulk_received}/{nbytes} bytes arrived before the deadline"
        return nbytes / max(1e-9, b1 - b0) / 1e6, None


async def _no_pair_connected(uri: ServerURI, addr: TransportAddress, username: str, password: str, *, budget: float,
                             waited: float, ice_state: str, ssl_context: ssl.SSLContext | None) -> NoRelayConnectivity:
    """The error when relay candidates were gathered but no pair connected (exit 7).

    The one place that explains an ICE failure through this server: a
    post-mortem with natkit's own TURN client (:mod:`natkit.relay_postmortem`,
    ``budget`` seconds) says what the server did with Send, ChannelBind and
    ChannelData between two of its allocations.
    """
    from . import relay_postmortem

    return await relay_postmortem.no_connectivity(uri, addr, username, password, timeout=budget, waited=waited,
                                                  ice_state=ice_state, ssl_context=ssl_context)


def _relay_failures(path: PathMetrics) -> list[Failure]:
    """relay-check's own assertions on the path: only relay candidates, relay/relay nominated on both sides."""
    out = []
    if not path.all_relay:
        out.append(Failure.check("candidates", "a non-relay candidate was gathered: " + ", ".join(
            f"{c.side} {c.type} {c.address}" for c in path.candidates if c.type != "relay")))
    if not path.selected_relay:
        out.append(Failure.check("selected_pair", "the nominated pair is not relay/relay on both sides: " + ", ".join(
            f"{side}={'none' if p is None else p.describe()}" for side, p in path.selected.items())))
    return out


async def relay_check_async(
    turn_uri: str,
    *,
    username: str,
    password: str,
    messages: int = 20,
    payload_bytes: int = 1_000_000,
    timeout: float = 10.0,
    verify_tls: bool = True,
    cafile: str | None = None,
    media: bool = False,
    media_seconds: float = 5.0,
) -> RelayReport:
    """See :func:`relay_check`."""
    uri = parse_turn_uri(turn_uri)
    _validate(messages, payload_bytes, timeout, media, media_seconds)
    from . import _aiortc_private as private
    from .stun import resolve

    private.check_compatible()  # before any traffic: an incompatible aiortc is natkit's problem, not the server's
    server = str(uri)
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def left() -> float:
        return max(0.05, deadline - loop.time())

    addr = await resolve(uri.host, uri.port, transport=uri.transport, timeout=left())
    ctx = tls_context(uri, verify=verify_tls, cafile=cafile)
    allocation_ms, relayed, mapped = await preflight_allocate(uri, addr, username, password, timeout=left(), ssl_context=ctx)
    preflight = Preflight(allocation_ms, relayed, mapped)

    ice = IceServer((ice_url(uri, addr),), username, password)
    media_tracks: list = []
    media_receiver = None
    media_report = None
    async with PeerSetup([ice], relay_only=True, rto=rto_from_rtt(allocation_ms), ssl_context=ctx) as setup:
        offerer, answerer = setup.peer(), setup.peer()
        try:
            channels = _InProcessPath(offerer, answerer)
            if media:  # tracks must exist before the offer; the answerer counts what arrives
                from .media import MediaReceiver, add_senders

                media_tracks = add_senders(offerer)
                media_receiver = MediaReceiver(answerer)
            setup.use_tls(offerer)
            g0 = time.monotonic()
            await asyncio.wait_for(offerer.setLocalDescription(await offerer.createOffer()), left())
            gathering_ms = (time.monotonic() - g0) * 1000.0
            await asyncio.wait_for(answerer.setRemoteDescription(offerer.localDescription), left())
            setup.use_tls(answerer)
            await asyncio.wait_for(answerer.setLocalDescription(await answerer.createAnswer()), left())
            candidates = (parse_candidates(offerer.localDescription.sdp, "offerer")
                          + parse_candidates(answerer.localDescription.sdp, "answerer"))
            if not {c.side for c in candidates} >= {"offerer", "answerer"}:
                # the peers' own Allocate failed: ask again while their allocations are held,
                # so a quota (486) or capacity (508) refusal is named as such
                await preflight_allocate(uri, addr, username, password, timeout=left(), ssl_context=ctx)
                raise NoRelayConnectivity("no relay candidate was gathered although a pre-flight Allocate succeeded",
                                          server=server, step="gathering")

            from aiortc import RTCSessionDescription

            c0 = time.monotonic()
            await offerer.setRemoteDescription(RTCSessionDescription(sdp=answerer.localDescription.sdp, type="answer"))
            from .relay_postmortem import reserve

            rescue = reserve(timeout)  # kept for the post-mortem
            try:
                await asyncio.wait_for(channels.opened.wait(), max(0.05, left() - rescue))
            except TimeoutError:
                raise await _no_pair_connected(uri, addr, username, password, budget=left(), waited=time.monotonic() - c0,
                                               ice_state=offerer.iceConnectionState, ssl_context=ctx) from None
            connected_ms = (time.monotonic() - c0) * 1000.0

            path, failures = await measure(channels, peers={"offerer": offerer, "answerer": answerer}, candidates=candidates,
                                           messages=messages, payload_bytes=payload_bytes, deadline=deadline,
                                           gathering_ms=gathering_ms, connected_ms=connected_ms)
            failures += _relay_failures(path)
            if media_receiver is not None:
                media_report = await media_receiver.measure(media_seconds)
                failures += [Failure.check("media", f) for f in media_report.failures]
        finally:
            for track in media_tracks:
                track.stop()
            if media_receiver is not None:
                await media_receiver.close()

    return RelayReport(
        schema=SCHEMA, server=server, transport=uri.transport, tls=uri.secure, username=username,
        ok=not failures, exit_code=exit_code_for(failures), preflight=preflight, path=path,
        failures=tuple(failures), duration_ms=(time.monotonic() - started) * 1000.0, media=media_report,
    )


def relay_check(turn_uri: str, *, username: str, password: str, messages: int = 20, payload_bytes: int = 1_000_000,
                timeout: float = 10.0, verify_tls: bool = True, cafile: str | None = None,
                media: bool = False, media_seconds: float = 5.0) -> RelayReport:
    """Prove that ``turn_uri`` relays: relay-only ICE between two aiortc peers.

    ``turn_uri``: ``turn:host[:port][?transport=udp|tcp]`` or ``turns:host[:port]``.
    ``messages``: data-channel echoes; ``payload_bytes``: one-way bulk payload
    for throughput; ``timeout``: total budget in seconds. ``media``: the
    offerer also sends a synthetic video track and audio tone
    (:mod:`natkit.media`) and the answerer measures them for
    ``media_seconds`` after the data-channel checks (``report.media``; this
    time comes on top of ``timeout``).

    Returns a :class:`RelayReport` (``ok`` False, ``exit_code`` 1 and
    ``failures`` when an assertion did not hold). Raises
    :class:`InvalidURI`/:class:`UsageError`, :class:`ServerUnreachable`,
    :class:`AuthenticationRefused` (401/441), :class:`AllocationRefused`
    (486/508/403), :class:`NoRelayConnectivity`, or
    :class:`IncompatibleDependency` (exit 70) when the installed aioice/aiortc
    lack an internal natkit relies on.
    """
    from ._async import run

    return run(relay_check_async(turn_uri, username=username, password=password, messages=messages,
                                 payload_bytes=payload_bytes, timeout=timeout, verify_tls=verify_tls, cafile=cafile,
                                 media=media, media_seconds=media_seconds))


@dataclasses.dataclass(frozen=True)
class FleetEntry:
    """One server of a fleet check: its :class:`RelayReport`, or the error that stopped it."""

    server: str
    ok: bool
    exit_code: int  # the report's, or the error's
    report: RelayReport | None
    error: Failure | None  # what stopped the check before it had a report (unreachable, 401, ...)


@dataclasses.dataclass(frozen=True)
class FleetReport:
    """Result of :func:`relay_check_fleet` (schema ``natkit.relay-fleet/2``): every server checked concurrently."""

    schema: str
    ok: bool  # every server relayed
    exit_code: int  # 0 when all passed, else the most severe entry's code (natkit.errors.SEVERITY)
    passed: int
    failed: int
    servers: tuple[FleetEntry, ...]
    duration_ms: float


def relay_check_fleet(turn_uris: list[str], *, credentials: Callable[[str], tuple[str, str]], **kwargs) -> FleetReport:
    """:func:`relay_check` against several servers at once (a fleet sharing one REST secret).

    ``credentials``: a callable returning ``(username, password)`` for a URI
    (a fresh REST credential per server). Other keywords as :func:`relay_check`.
    Errors of one server (unreachable, 401, ...) become that entry's ``error``;
    bad input (a malformed URI) raises before anything is sent.
    """
    from ._async import run

    for uri in turn_uris:
        parse_turn_uri(uri)  # InvalidURI before any traffic
    started = time.monotonic()

    async def one(uri: str) -> FleetEntry:
        username, password = credentials(uri)
        try:
            report = await relay_check_async(uri, username=username, password=password, **kwargs)
            return FleetEntry(uri, report.ok, report.exit_code, report, None)
        except NatkitError as exc:
            error = Failure.from_error(exc, server=uri)
            return FleetEntry(uri, False, error.exit_code, None, error)

    async def all_of() -> list[FleetEntry]:
        return list(await asyncio.gather(*(one(u) for u in turn_uris)))

    entries = run(all_of())
    failed = sum(1 for e in entries if not e.ok)
    return FleetReport(
        schema="natkit.relay-fleet/2", ok=failed == 0, exit_code=most_severe(e.exit_code for e in entries),
        passed=len(entries) - failed, failed=failed, servers=tuple(entries),
        duration_ms=(time.monotonic() - started) * 1000.0,
    )
