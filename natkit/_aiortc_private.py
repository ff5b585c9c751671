"""Every use of aiortc/aioice private attributes, in one place.

aiortc has no public API for the ICE selected pair of a data-channel-only
connection nor for a custom TLS context for ``turns:``; these helpers reach
into ``RTCIceTransport._connection`` (the aioice ``Connection``) and its
``_nominated`` pairs. Checked against aiortc 1.16 / aioice 0.13.
"""

from __future__ import annotations

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


def local_candidates(pc):
    """The aioice ``Candidate`` objects gathered for the data channel transport."""
    conn = _ice_connection(pc)
    return list(conn.local_candidates) if conn is not None else []


class check_rto:
    """Context manager: aioice's initial STUN retransmission timeout, in seconds.

    aioice starts every transaction (ICE checks included) with a fixed 500 ms
    RTO and does not re-send an in-progress check when the peer's check
    arrives (RFC 8445 §7.3.1.4 says it should). In relay-only ICE the first
    check of the side that starts first is dropped by the other side's TURN
    server (no permission yet), so connecting always costs one 500 ms timer.
    natkit sets the RTO from the RTT it measured to the TURN server instead
    (RFC 8489 §6.2.1 allows an RTO from a measured RTT) and restores it after.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._saved = None

    def __enter__(self):
        from aioice import stun

        self._saved = stun.RETRY_RTO
        stun.RETRY_RTO = self.seconds
        return self

    def __exit__(self, *exc) -> None:
        from aioice import stun

        stun.RETRY_RTO = self._saved
