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
import logging
import os
import ssl
import statistics
import time

from .errors import (
    AllocationRefused,
    AuthenticationRefused,
    NatkitError,
    NoRelayConnectivity,
    ServerUnreachable,
    StunTimeout,
    TurnError,
    UsageError,
)
from .model import TransportAddress, format_duration
from .uri import ServerURI, parse_turn_uri

SCHEMA = "natkit.relay/1"
AUTH_CODES = {401, 441}  # Unauthorized, Wrong Credentials (RFC 8656 §18)
ALLOCATION_CODES = {403, 437, 442, 486, 508}  # Forbidden, Allocation Mismatch, Unsupported Transport, Quota, Capacity


@dataclasses.dataclass(frozen=True)
class CandidateInfo:
    """One gathered ICE candidate (RFC 8445 §5.1): ``type`` host/srflx/prflx/relay."""

    side: str  # "offerer" or "answerer"
    type: str
    protocol: str  # "udp" (relayed candidates are UDP even over TURN/TCP)
    address: TransportAddress
    related_address: TransportAddress | None  # for relay: the mapped address at the server


@dataclasses.dataclass(frozen=True)
class SelectedPair:
    """The nominated candidate pair of one peer (RFC 8445 §8.1.1)."""

    local_type: str
    local: TransportAddress
    remote_type: str
    remote: TransportAddress


@dataclasses.dataclass(frozen=True)
class RelayReport:
    """Result of :func:`relay_check`. Times in milliseconds, throughput in MB/s (10^6 bytes/s)."""

    schema: str
    server: str  # the TURN URI checked
    transport: str  # udp or tcp, between client and server
    tls: bool
    username: str
    ok: bool  # every assertion below held
    allocation_ms: float  # pre-flight Allocate round trip(s), incl. the 401 challenge
    relayed_address: TransportAddress | None  # XOR-RELAYED-ADDRESS of the pre-flight allocation
    mapped_address: TransportAddress | None  # XOR-MAPPED-ADDRESS seen by the server
    gathering_ms: float  # offerer's candidate gathering (includes its Allocate)
    connected_ms: float  # answer applied -> data channel open (ICE + DTLS + SCTP)
    first_echo_ms: float | None  # data channel open -> first echo back
    rtt_ms_p50: float | None  # data channel echo round trip
    rtt_ms_p95: float | None
    messages_sent: int
    messages_echoed: int
    echo_ok: bool  # every echoed message equals what was sent
    payload_bytes: int  # bulk payload sent one way for throughput
    throughput_mbps: float | None  # MB/s over that payload
    candidates: tuple[CandidateInfo, ...]
    all_relay: bool  # every gathered candidate is of type relay
    selected: dict  # {"offerer": SelectedPair|None, "answerer": SelectedPair|None}
    selected_relay: bool  # both nominated pairs are relay/relay
    failures: tuple[str, ...]  # the assertions that did not hold
    duration_ms: float
    media: object | None = None  # natkit.media.MediaReport with --media (what the answerer received), else None


def _turn_error(exc, server: str) -> NatkitError:
    from aioice import stun as aioice_stun

    if isinstance(exc, aioice_stun.TransactionFailed):
        code, reason = exc.response.attributes.get("ERROR-CODE", (0, ""))
        if code in AUTH_CODES:
            return AuthenticationRefused(
                f"authentication refused: {code} {reason}", server=server, step="allocate",
                error_code=code, reason=reason, hint="check the username/password or the shared secret (and the clock, for REST credentials)",
            )
        if code in ALLOCATION_CODES:
            return AllocationRefused(
                f"allocation refused: {code} {reason}", server=server, step="allocate",
                error_code=code, reason=reason, hint="quota reached (486), server full (508) or the request is not allowed (403)",
            )
        return TurnError(f"Allocate failed: {code} {reason}", server=server, step="allocate", error_code=code, reason=reason)
    if isinstance(exc, aioice_stun.TransactionTimeout):
        return StunTimeout("no answer to Allocate", server=server, step="allocate")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ServerUnreachable(f"TLS certificate not trusted: {exc.verify_message}", server=server, step="tls", hint="pass --ca FILE, or --insecure for a test server")
    if isinstance(exc, ssl.SSLError):
        return ServerUnreachable(f"TLS handshake failed: {exc.reason or exc}", server=server, step="tls")
    if isinstance(exc, ConnectionRefusedError):
        return ServerUnreachable("connection refused", server=server, step="connect", hint="is the server listening on this port and transport?")
    if isinstance(exc, OSError):
        return ServerUnreachable(f"cannot reach the server: {exc.strerror or exc}", server=server, step="connect")
    if isinstance(exc, ConnectionError):
        return TurnError(f"bad Allocate response: {exc}", server=server, step="allocate")
    return NatkitError(f"{exc.__class__.__name__}: {exc}", server=server, step="allocate")


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
    """One Allocate with long-term credentials (RFC 8656 §7.1, RFC 8489 §9.2).

    Returns ``(milliseconds, relayed address, mapped address)`` and releases the
    allocation. Raises :class:`AuthenticationRefused`, :class:`AllocationRefused`,
    :class:`ServerUnreachable` / :class:`StunTimeout`, or :class:`TurnError`.
    """
    from aioice import turn as aioice_turn

    server = str(uri)
    if uri.transport == "udp":
        # a connected UDP Binding first: an ICMP "port unreachable" fails fast
        from .stun import UdpStunEndpoint, binding_request

        ep = await UdpStunEndpoint.open("::" if addr.family == 6 else "0.0.0.0", remote=addr)
        try:
            await ep.request(binding_request(), addr, timeout=timeout)
        except NatkitError as exc:
            exc.step = exc.step or "binding"
            exc.server = server
            raise
        finally:
            ep.close()
    started = time.monotonic()
    transport = None
    try:
        transport, _ = await asyncio.wait_for(
            aioice_turn.create_turn_endpoint(
                asyncio.DatagramProtocol, (addr.host, addr.port), username, password,
                lifetime=60, ssl=ssl_context if ssl_context is not None else None, transport=uri.transport,
            ),
            timeout,
        )
    except asyncio.TimeoutError:
        raise StunTimeout(f"no Allocate answer within {format_duration(timeout)}", server=server, step="allocate") from None
    except Exception as exc:  # aioice raises its own and OS errors
        raise _turn_error(exc, server) from None
    elapsed = (time.monotonic() - started) * 1000.0
    relayed = transport.get_extra_info("sockname")
    mapped = transport.get_extra_info("related_address")
    transport.close()
    await asyncio.sleep(0)  # let the Refresh(lifetime=0) go out
    return elapsed, TransportAddress.of(relayed), TransportAddress.of(mapped) if mapped else None


@dataclasses.dataclass
class EchoSeries:
    """Round trips of a data-channel echo, one message at a time (so each is measured alone).

    ``rtts_ms`` per echoed message; ``first_echo_ms`` from the start of the series;
    ``failures`` the assertion messages (unanswered, mismatched).
    """

    sent: int
    echoed: int = 0
    ok: bool = True
    first_echo_ms: float | None = None
    rtts_ms: list = dataclasses.field(default_factory=list)
    failures: list = dataclasses.field(default_factory=list)


async def echo_series(count: int, exchange) -> EchoSeries:
    """Run ``count`` echoes; ``exchange(i)`` sends message ``i`` and returns
    ``(sent, reply)``, ``reply`` None when the deadline passed."""
    series = EchoSeries(sent=count)
    t_open = time.monotonic()
    for i in range(count):
        s = time.monotonic()
        sent, reply = await exchange(i)
        if reply is None:
            series.failures.append(f"echo {i} not answered before the deadline")
            break
        now = time.monotonic()
        if series.first_echo_ms is None:
            series.first_echo_ms = (now - t_open) * 1000.0
        series.rtts_ms.append((now - s) * 1000.0)
        series.echoed += 1
        if reply != sent:
            series.ok = False
    if series.echoed < count:
        series.ok = False
    if not series.ok:
        series.failures.append(f"echo mismatch: {series.echoed}/{count} messages came back intact")
    return series


def _parse_candidates(sdp: str, side: str) -> list[CandidateInfo]:
    from aioice import Candidate

    out = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            c = Candidate.from_sdp(line[len("a="):])
            related = TransportAddress(c.related_address, c.related_port) if c.related_address else None
            out.append(CandidateInfo(side, c.type, c.transport.lower(), TransportAddress(c.host, c.port), related))
    return out


def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100.0 * (len(values) - 1))))
    return values[k]


async def _wait_state(pc, states: set[str], timeout: float) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pc.connectionState not in states:
        if loop.time() > deadline:
            return pc.connectionState
        await asyncio.sleep(0.005)
    return pc.connectionState


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
    if messages < 1 or messages > 100_000:
        raise UsageError(f"--messages must be 1..100000, got {messages}")
    if payload_bytes < 0 or payload_bytes > 1_000_000_000:
        raise UsageError(f"--payload must be 0..1e9 bytes, got {payload_bytes}")
    if timeout <= 0:
        raise UsageError("timeout must be positive")
    if media and not 0.5 <= media_seconds <= 600:
        raise UsageError(f"--media-seconds must be 0.5..600, got {media_seconds}")
    from .stun import resolve

    server = str(uri)
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def left() -> float:
        return max(0.05, deadline - loop.time())

    addr = await resolve(uri.host, uri.port, transport=uri.transport, timeout=left())
    ctx = tls_context(uri, verify=verify_tls, cafile=cafile)
    allocation_ms, relayed, mapped = await preflight_allocate(uri, addr, username, password, timeout=left(), ssl_context=ctx)

    for name in ("aioice", "aiortc"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
    from aiortc.rtcconfiguration import RTCIceTransportPolicy

    from . import _aiortc_private as private

    # aiortc resolves the URI host itself: hand it the resolved address
    ice_host = f"[{addr.host}]" if addr.family == 6 else addr.host
    ice_uri = f"{uri.scheme}:{ice_host}:{addr.port}" + ("" if uri.secure else f"?transport={uri.transport}")
    config = RTCConfiguration(
        iceServers=[RTCIceServer(urls=[ice_uri], username=username, credential=password)],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )
    # ICE check timer from the measured RTT to the server, within 50..500 ms
    rto = private.check_rto(min(0.5, max(0.05, 4 * allocation_ms / 1000.0)))
    rto.__enter__()
    offerer, answerer = RTCPeerConnection(config), RTCPeerConnection(config)
    failures: list[str] = []
    rtts: list[float] = []
    echoed = 0
    echo_ok = True
    first_echo_ms = None
    throughput = None
    media_tracks: list = []
    media_receiver = None
    media_report = None
    try:
        echo_channel = offerer.createDataChannel("natkit-echo")
        bulk_channel = offerer.createDataChannel("natkit-bulk")
        if media:  # tracks must exist before the offer; the answerer counts what arrives
            from .media import MediaReceiver, add_senders

            media_tracks = add_senders(offerer)
            media_receiver = MediaReceiver(answerer)
        if ctx is not None:
            private.set_turn_ssl_context(offerer, ctx)

        received_bulk = {"n": 0}
        bulk_done = loop.create_future()

        @answerer.on("datachannel")
        def on_datachannel(channel) -> None:
            if channel.label == "natkit-echo":
                channel.on("message", channel.send)
            else:
                def on_bulk(message) -> None:
                    received_bulk["n"] += len(message)
                    if received_bulk["n"] >= payload_bytes and not bulk_done.done():
                        bulk_done.set_result(time.monotonic())

                channel.on("message", on_bulk)

        g0 = time.monotonic()
        await asyncio.wait_for(offerer.setLocalDescription(await offerer.createOffer()), left())
        gathering_ms = (time.monotonic() - g0) * 1000.0
        await asyncio.wait_for(answerer.setRemoteDescription(offerer.localDescription), left())
        if ctx is not None:
            private.set_turn_ssl_context(answerer, ctx)
        await asyncio.wait_for(answerer.setLocalDescription(await answerer.createAnswer()), left())
        candidates = _parse_candidates(offerer.localDescription.sdp, "offerer") + _parse_candidates(answerer.localDescription.sdp, "answerer")
        if not any(c.side == "offerer" for c in candidates) or not any(c.side == "answerer" for c in candidates):
            # the peers' own Allocate failed: ask again while their allocations are held,
            # so a quota (486) or capacity (508) refusal is named as such
            await preflight_allocate(uri, addr, username, password, timeout=left(), ssl_context=ctx)
            raise NoRelayConnectivity(
                "no relay candidate was gathered although a pre-flight Allocate succeeded",
                server=server, step="gathering",
            )
        all_relay = all(c.type == "relay" for c in candidates)
        if not all_relay:
            failures.append("a non-relay candidate was gathered: " + ", ".join(f"{c.side} {c.type} {c.address}" for c in candidates if c.type != "relay"))

        open_event = asyncio.Event()
        if echo_channel.readyState == "open":
            open_event.set()
        echo_channel.on("open", open_event.set)
        c0 = time.monotonic()
        await offerer.setRemoteDescription(RTCSessionDescription(sdp=answerer.localDescription.sdp, type="answer"))
        try:
            await asyncio.wait_for(open_event.wait(), left())
        except asyncio.TimeoutError:
            raise NoRelayConnectivity(
                f"relay candidates were gathered but no candidate pair connected within {format_duration(timeout)} (ICE state {offerer.iceConnectionState})",
                server=server, step="connectivity",
                hint="the server may refuse to relay to its own relayed addresses (denied-peer-ip, allow-loopback-peers) or a firewall drops the relay ports",
            ) from None
        connected_ms = (time.monotonic() - c0) * 1000.0

        # echo: one message at a time, so every round trip is measured alone
        replies: asyncio.Queue = asyncio.Queue()
        echo_channel.on("message", replies.put_nowait)

        async def exchange(i: int):
            payload = f"natkit-echo {i:06d} ".encode() + os.urandom(48)
            echo_channel.send(payload)
            try:
                return payload, await asyncio.wait_for(replies.get(), left())
            except asyncio.TimeoutError:
                return payload, None

        echo = await echo_series(messages, exchange)
        rtts, echoed, echo_ok, first_echo_ms = echo.rtts_ms, echo.echoed, echo.ok, echo.first_echo_ms
        failures += echo.failures

        if payload_bytes:
            chunk = os.urandom(16384)
            b0 = time.monotonic()
            sent = 0
            while sent < payload_bytes:
                piece = chunk[: min(len(chunk), payload_bytes - sent)]
                bulk_channel.send(piece)
                sent += len(piece)
                if bulk_channel.bufferedAmount > 4 * 1024 * 1024:
                    await asyncio.sleep(0.001)
            try:
                b1 = await asyncio.wait_for(bulk_done, left())
                throughput = payload_bytes / max(1e-9, b1 - b0) / 1e6
            except asyncio.TimeoutError:
                failures.append(f"bulk payload: only {received_bulk['n']}/{payload_bytes} bytes arrived before the deadline")

        if media_receiver is not None:
            media_report = await media_receiver.measure(media_seconds)
            failures.extend(f"media: {f}" for f in media_report.failures)

        selected = {}
        for side, pc in (("offerer", offerer), ("answerer", answerer)):
            pair = private.selected_pair(pc)
            selected[side] = None if pair is None else SelectedPair(
                pair[0].type, TransportAddress(pair[0].host, pair[0].port), pair[1].type, TransportAddress(pair[1].host, pair[1].port)
            )
        selected_relay = all(p is not None and p.local_type == "relay" and p.remote_type == "relay" for p in selected.values())
        if not selected_relay:
            failures.append("the nominated pair is not relay/relay on both sides: " + ", ".join(
                f"{k}={'none' if v is None else v.local_type + '/' + v.remote_type}" for k, v in selected.items()))
    finally:
        for track in media_tracks:
            track.stop()
        if media_receiver is not None:
            await media_receiver.close()
        try:  # bounded: closing aiortc peers with megabytes queued can stall
            await asyncio.wait_for(asyncio.gather(offerer.close(), answerer.close(), return_exceptions=True), 3.0)
        except asyncio.TimeoutError:
            pass
        rto.__exit__(None, None, None)

    return RelayReport(
        schema=SCHEMA, server=server, transport=uri.transport, tls=uri.secure, username=username,
        ok=not failures, allocation_ms=allocation_ms, relayed_address=relayed, mapped_address=mapped,
        gathering_ms=gathering_ms, connected_ms=connected_ms, first_echo_ms=first_echo_ms,
        rtt_ms_p50=statistics.median(rtts) if rtts else None, rtt_ms_p95=_percentile(rtts, 95),
        messages_sent=messages, messages_echoed=echoed, echo_ok=echo_ok,
        payload_bytes=payload_bytes, throughput_mbps=throughput,
        candidates=tuple(candidates), all_relay=all_relay, selected=selected, selected_relay=selected_relay,
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

    Returns a :class:`RelayReport` (``ok`` False with ``failures`` when an
    assertion did not hold). Raises :class:`InvalidURI`/:class:`UsageError`,
    :class:`ServerUnreachable`, :class:`AuthenticationRefused` (401/441),
    :class:`AllocationRefused` (486/508/403), or :class:`NoRelayConnectivity`.
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
    report: RelayReport | None
    error: dict | None  # NatkitError.to_dict() when the check could not complete


@dataclasses.dataclass(frozen=True)
class FleetReport:
    """Result of :func:`relay_check_fleet`: every server checked concurrently, one summary."""

    schema: str
    ok: bool  # every server relayed
    passed: int
    failed: int
    servers: tuple[FleetEntry, ...]
    exit_code: int  # the most specific exit code among failures (0 when all passed)
    duration_ms: float


def relay_check_fleet(turn_uris: list[str], *, credentials, **kwargs) -> FleetReport:
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
            return FleetEntry(uri, report.ok, report, None)
        except NatkitError as exc:
            return FleetEntry(uri, False, None, exc.to_dict())

    async def all_of() -> list[FleetEntry]:
        return list(await asyncio.gather(*(one(u) for u in turn_uris)))

    entries = run(all_of())
    codes = [e.error["exit_code"] if e.error else (0 if e.ok else 1) for e in entries]
    failed = sum(1 for e in entries if not e.ok)
    return FleetReport(
        schema="natkit.relay-fleet/1", ok=failed == 0, passed=len(entries) - failed, failed=failed,
        servers=tuple(entries), exit_code=max(codes) if failed else 0,
        duration_ms=(time.monotonic() - started) * 1000.0,
    )
