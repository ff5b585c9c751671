"""Every use of aiortc/aioice private attributes, in one place.

aiortc has no public API for the ICE selected pair of a data-channel-only
connection nor for a custom TLS context for ``turns:``; these helpers reach
into ``RTCIceTransport._connection`` (the aioice ``Connection``) and its
``_nominated`` pairs. :class:`check_rto`, :func:`keep_best_nomination` and
:func:`check_relay_pairs_last` adjust aioice's ICE agent where it departs
from RFC 8445 in ways that distort measurements.

These internals are what ``pyproject.toml`` pins aioice and aiortc for
(:data:`TESTED`). :func:`check_compatible` verifies every name and shape
used here before a check starts; when one is missing or changed, natkit
raises :class:`~natkit.errors.IncompatibleDependency` (exit 70, an
internal error) instead of reporting a verdict about the TURN server.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import ssl
from collections.abc import Callable
from typing import ClassVar

from .errors import IncompatibleDependency

TESTED = {"aioice": "0.13", "aiortc": "1.16"}  # the release series natkit is tested with


class Mismatch(Exception):
    """One internal natkit relies on is missing or has another shape (see :data:`REQUIREMENTS`)."""


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in TESTED:
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} not installed")
    return ", ".join(out)


def _incompatible(what: str) -> IncompatibleDependency:
    return IncompatibleDependency(
        f"aioice/aiortc internals changed: {what}", step="setup",
        hint=f"natkit is tested with aioice {TESTED['aioice']}.x and aiortc {TESTED['aiortc']}.x; installed: {_versions()}",
    )


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _check_stun() -> None:
    from aioice import stun

    if not isinstance(getattr(stun, "RETRY_RTO", None), float):
        raise Mismatch("aioice.stun.RETRY_RTO is not a float")
    if "RETRY_RTO" not in stun.Transaction.__init__.__code__.co_names:
        raise Mismatch("aioice.stun.Transaction no longer reads RETRY_RTO")


def _check_ice() -> None:
    from aioice import ice

    conn = ice.Connection
    for name, params in (("check_complete", ["self", "pair"]), ("check_start", ["self", "pair"]),
                         ("check_state", ["self", "pair", "state"])):
        fn = getattr(conn, name, None)
        if fn is None or _params(fn) != params:
            raise Mismatch(f"aioice.ice.Connection.{name}{tuple(params[1:])} is missing or has another signature")
    if not inspect.iscoroutinefunction(conn.check_start):
        raise Mismatch("aioice.ice.Connection.check_start is no longer a coroutine function")
    init_names = conn.__init__.__code__.co_names
    for attr in ("_nominated", "_check_list", "_check_list_done", "turn_ssl", "ice_controlling"):
        if attr not in init_names:
            raise Mismatch(f"aioice.ice.Connection no longer sets {attr}")
    if _params(ice.candidate_pair_priority) != ["local", "remote", "ice_controlling"]:
        raise Mismatch("aioice.ice.candidate_pair_priority(local, remote, ice_controlling) changed")
    states = {s.name for s in ice.CandidatePair.State}
    if not {"FROZEN", "WAITING", "IN_PROGRESS", "SUCCEEDED", "FAILED"} <= states:
        raise Mismatch(f"aioice.ice.CandidatePair.State has {sorted(states)}")
    for attr in ("local_candidate", "component"):
        if not isinstance(getattr(ice.CandidatePair, attr, None), property):
            raise Mismatch(f"aioice.ice.CandidatePair.{attr} is no longer a property")
    if not {"remote_candidate", "state", "task"} <= set(ice.CandidatePair.__init__.__code__.co_names):
        raise Mismatch("aioice.ice.CandidatePair no longer sets remote_candidate, state and task")


def _check_aiortc() -> None:
    from aiortc import RTCPeerConnection, RTCRtpReceiver
    from aiortc.rtcdtlstransport import RTCDtlsTransport
    from aiortc.rtcicetransport import RTCIceTransport
    from aiortc.rtcsctptransport import RTCSctpTransport

    for cls, attr in ((RTCPeerConnection, "sctp"), (RTCSctpTransport, "transport"), (RTCDtlsTransport, "transport")):
        if not isinstance(getattr(cls, attr, None), property):
            raise Mismatch(f"aiortc {cls.__name__}.{attr} is no longer a property")
    if "_connection" not in RTCIceTransport.__init__.__code__.co_names:
        raise Mismatch("aiortc RTCIceTransport no longer holds the aioice Connection as _connection")
    fn = getattr(RTCRtpReceiver, "_handle_rtp_packet", None)
    if fn is None or not inspect.iscoroutinefunction(fn) or _params(fn) != ["self", "packet", "arrival_time_ms"]:
        raise Mismatch("aiortc RTCRtpReceiver._handle_rtp_packet(packet, arrival_time_ms) changed")


# what natkit relies on, by area (the canary test runs each)
REQUIREMENTS: dict[str, Callable[[], None]] = {"aioice.stun": _check_stun, "aioice.ice": _check_ice, "aiortc": _check_aiortc}


@functools.cache
def _problems() -> tuple[str, ...]:
    out = []
    for area, check in REQUIREMENTS.items():
        try:
            check()
        except (Mismatch, AttributeError, ImportError, TypeError, ValueError) as exc:
            out.append(f"{area}: {exc}")
    return tuple(out)


def check_compatible() -> None:
    """Verify every aioice/aiortc internal used here (CPU only, cached after the first call).

    Raises :class:`~natkit.errors.IncompatibleDependency` naming what is
    missing or changed and the installed versions.
    """
    problems = _problems()
    if problems:
        raise _incompatible("; ".join(problems))


def _ice_connection(pc):
    """The aioice Connection behind a peer connection's data channel transport (None before it exists)."""
    from aioice.ice import Connection

    sctp = pc.sctp
    if sctp is None:
        return None
    try:
        conn = sctp.transport.transport._connection
    except AttributeError as exc:
        raise _incompatible(f"RTCPeerConnection.sctp.transport.transport._connection: {exc}") from None
    if not isinstance(conn, Connection):
        raise _incompatible(f"the ICE transport holds a {type(conn).__name__}, not an aioice Connection")
    return conn


def set_turn_ssl_context(pc, context: ssl.SSLContext) -> bool:
    """Make the ICE agent use ``context`` for ``turns:`` instead of the default.

    Call after the transport exists (offerer: after ``createDataChannel``;
    answerer: after ``setRemoteDescription``) and before gathering.
    Returns False when there was nothing to patch.
    """
    conn = _ice_connection(pc)
    if conn is None or not getattr(conn, "turn_ssl", None):
        return False
    conn.turn_ssl = context
    return True


def selected_pair(pc):
    """``(local_candidate, remote_candidate)`` of the nominated pair (aioice
    ``Candidate`` objects), or None when ICE has nominated nothing."""
    conn = _ice_connection(pc)
    if conn is None:
        return None
    nominated = getattr(conn, "_nominated", None)
    if not isinstance(nominated, dict):
        raise _incompatible("aioice Connection._nominated is not a dict of pairs")
    pair = nominated.get(1) or next(iter(nominated.values()), None)
    if pair is None:
        return None
    return pair.local_candidate, pair.remote_candidate


class check_rto:
    """Context manager: aioice's initial STUN retransmission timeout, in seconds.

    aioice starts every transaction (ICE checks included) with a fixed 500 ms
    RTO and does not re-send an in-progress check when the peer's check
    arrives (RFC 8445 §7.3.1.4 says it should). In relay-only ICE the first
    check of the side that starts first is dropped by the other side's TURN
    server (no permission yet), so connecting always costs one 500 ms timer.
    natkit sets the RTO from the RTT it measured to the TURN server instead
    (RFC 8489 §6.2.1 allows an RTO from a measured RTT) and restores it after.
    Checks running concurrently share the smallest of their values.
    """

    _active: ClassVar[list[float]] = []  # values of the checks running now (a fleet runs several at once)
    _original: ClassVar[float] = 0.5

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self):
        from aioice import stun

        if not check_rto._active:
            check_rto._original = stun.RETRY_RTO
        check_rto._active.append(self.seconds)
        stun.RETRY_RTO = min(check_rto._active)
        return self

    def __exit__(self, *exc) -> None:
        from aioice import stun

        check_rto._active.remove(self.seconds)
        stun.RETRY_RTO = min(check_rto._active) if check_rto._active else check_rto._original


def keep_best_nomination() -> None:
    """Make aioice keep the highest-priority nominated pair (agent processes only).

    aioice (0.13) nominates aggressively as the controlling agent and, on both
    sides, lets every later nominated pair that completes replace the
    selected one, so the pair that finishes *last* carries the data: a relay
    check completing a few milliseconds after a direct one moves the
    connection onto the relay. RFC 5245 §8.1.1.2 says that with aggressive
    nomination the agents use the nominated pair with the highest priority;
    this wrapper restores that rule (direct pairs outrank relayed ones by
    the candidate type preferences of RFC 8445 §5.1.2.2). It touches
    ``Connection.check_complete`` and ``_nominated``, aioice internals.
    """
    from aioice import ice

    check_compatible()
    if getattr(ice.Connection.check_complete, "_natkit", False):
        return
    original = ice.Connection.check_complete

    def check_complete(self, pair) -> None:
        before = self._nominated.get(pair.component)
        original(self, pair)
        after = self._nominated.get(pair.component)
        if before is not None and after is not None and after is not before:
            rank = lambda p: ice.candidate_pair_priority(p.local_candidate, p.remote_candidate, self.ice_controlling)
            if rank(before) > rank(after):
                self._nominated[pair.component] = before

    check_complete._natkit = True  # type: ignore[attr-defined]  # marks the patch as applied
    ice.Connection.check_complete = check_complete  # type: ignore[method-assign]  # the patch itself (see above)


def check_relay_pairs_last(grace: float = 1.5) -> None:
    """Make a controlling aioice agent check relayed pairs only after better pairs had their chance.

    aioice nominates aggressively: the first pair whose check succeeds ends
    ICE and cancels every other check. A relayed pair can succeed first
    although a direct one would work, for example when the peer's checks
    from its relayed address arrive early through an address-dependent
    filter (the TURN server shares its IP with the STUN server the host
    already talked to), or when a direct check was dropped once by a NAT
    that had not opened yet and waits for its retransmission. libwebrtc
    instead keeps checking and moves to the better pair. Here a controlling
    agent holds back the check of a pair with a relay candidate until every
    higher-priority pair has succeeded or failed, or ``grace`` seconds have
    passed, so a direct path is chosen whenever one works within ``grace``.
    Agent processes only; it wraps aioice's ``Connection.check_start``.
    """
    from aioice import ice

    check_compatible()
    if getattr(ice.Connection.check_start, "_natkit", False):
        return
    original = ice.Connection.check_start
    pending = (ice.CandidatePair.State.FROZEN, ice.CandidatePair.State.WAITING, ice.CandidatePair.State.IN_PROGRESS)

    async def check_start(self, pair) -> None:
        relayed = "relay" in (pair.local_candidate.type, pair.remote_candidate.type)
        if self.ice_controlling and relayed:
            prio = lambda p: ice.candidate_pair_priority(p.local_candidate, p.remote_candidate, self.ice_controlling)
            mine = prio(pair)
            self.check_state(pair, ice.CandidatePair.State.IN_PROGRESS)  # not picked again by the pacer
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            while loop.time() < deadline and not self._check_list_done:
                if not any(p is not pair and p.state in pending and prio(p) > mine for p in self._check_list):
                    break
                await asyncio.sleep(0.01)
            if self._check_list_done:
                return
        await original(self, pair)

    check_start._natkit = True  # type: ignore[attr-defined]  # marks the patch as applied
    ice.Connection.check_start = check_start  # type: ignore[method-assign]  # the patch itself (see above)


def count_rtp_payload(receiver, callback) -> bool:
    """Call ``callback(payload_bytes)`` for every RTP packet ``receiver`` (an
    ``RTCRtpReceiver``) gets, before aiortc handles it.

    aiortc's inbound RTP stats have no byte counter; this wraps the
    receiver's ``_handle_rtp_packet`` (called by the DTLS transport's RTP
    router). Returns False when that method does not exist (other aiortc).
    """
    original = getattr(receiver, "_handle_rtp_packet", None)
    if original is None:
        return False

    async def counting(packet, arrival_time_ms):
        try:
            callback(len(packet.payload))
        except Exception:  # noqa: BLE001, S110 - measurement must never break media
            pass
        return await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = counting
    return True
