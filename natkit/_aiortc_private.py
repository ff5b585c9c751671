"""Every use of aiortc/aioice private attributes, in one place.

aiortc has no public API for the ICE selected pair of a data-channel-only
connection nor for a custom TLS context for ``turns:``; these helpers reach
into ``RTCIceTransport._connection`` (the aioice ``Connection``) and its
``_nominated`` pairs. :class:`check_rto`, :func:`keep_best_nomination` and
:func:`check_relay_pairs_last` adjust aioice's ICE agent where it departs
from RFC 8445 in ways that distort measurements. Checked against aiortc 1.16 /
aioice 0.13.
"""

from __future__ import annotations

import asyncio
import ssl


def _ice_connection(pc):
    """The aioice Connection behind a peer connection's data channel transport."""
    sctp = pc.sctp
    if sctp is None:
        return None
    return sctp.transport.transport._connection


def set_turn_ssl_context(pc, context: ssl.SSLContext) -> bool:
    """Make the ICE agent use ``context`` for ``turns:`` instead of the default.

    Call after the transport exists (offerer: after ``createDataChannel``;
    answerer: after ``setRemoteDescription``) and before gathering.
    Returns False when there was nothing to patch.
    """
    conn = _ice_connection(pc)
    if conn is None or not conn.turn_ssl:
        return False
    conn.turn_ssl = context
    return True


def selected_pair(pc):
    """``(local_candidate, remote_candidate)`` of the nominated pair (aioice
    ``Candidate`` objects), or None when ICE has nominated nothing."""
    conn = _ice_connection(pc)
    if conn is None:
        return None
    nominated = getattr(conn, "_nominated", {})
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

    _active: list = []  # values of the checks running now (a fleet runs several at once)
    _original = None

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

    if getattr(ice.Connection.check_complete, "_natkit", False):
        return
    original = ice.Connection.check_complete

    def check_complete(self, pair) -> None:
        before = self._nominated.get(pair.component)
        original(self, pair)
        after = self._nominated.get(pair.component)
        if before is not None and after is not None and after is not before:
            rank = lambda p: ice.candidate_pair_priority(p.local_candidate, p.remote_candidate, self.ice_controlling)  # noqa: E731
            if rank(before) > rank(after):
                self._nominated[pair.component] = before

    check_complete._natkit = True
    ice.Connection.check_complete = check_complete


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

    if getattr(ice.Connection.check_start, "_natkit", False):
        return
    original = ice.Connection.check_start
    pending = (ice.CandidatePair.State.FROZEN, ice.CandidatePair.State.WAITING, ice.CandidatePair.State.IN_PROGRESS)

    async def check_start(self, pair) -> None:
        relayed = "relay" in (pair.local_candidate.type, pair.remote_candidate.type)
        if self.ice_controlling and relayed:
            prio = lambda p: ice.candidate_pair_priority(p.local_candidate, p.remote_candidate, self.ice_controlling)  # noqa: E731
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

    check_start._natkit = True
    ice.Connection.check_start = check_start


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
        except Exception:  # measurement must never break media
            pass
        return await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = counting
    return True
