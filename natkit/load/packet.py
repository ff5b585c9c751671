"""The load generator's application payload (inside ChannelData or a Send indication).

::

    0       4       8   10  12              20              28
    | sess  | seq   |ep |flg| t_send (ns)   | t_peer (ns)   | padding to the size ...

``sess`` the session's index in the run, ``seq`` its packet number from 0,
``ep`` the measurement epoch (a ramp step) the packet was sent in,
``t_send`` the sender's ``time.monotonic_ns()``, ``t_peer`` the peer's,
written when the peer reflects the packet. CLOCK_MONOTONIC is one clock for
every process of one machine, so the two one-way transit times are exact
when generator and peer run on the same host (natkit's case: the peer is a
UDP echo or a second allocation in the same worker).
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("!IIHHqq")
HEADER_SIZE = HEADER.size  # 28
T_PEER_OFFSET = 20
_T_PEER = struct.Struct("!q")
MIN_SIZE = HEADER_SIZE
MAX_SIZE = 1400  # stays under a 1500-byte MTU with IP, UDP and ChannelData headers


def encode(session: int, seq: int, epoch: int, t_send: int, size: int) -> bytes:
    """A payload of ``size`` bytes (at least :data:`HEADER_SIZE`)."""
    head = HEADER.pack(session, seq, epoch & 0xFFFF, 0, t_send, 0)
    return head + bytes(size - HEADER_SIZE) if size > HEADER_SIZE else head


def stamp(payload: bytes, t_peer: int) -> bytearray:
    """The payload with the peer's receive time written into it (what the peer sends back)."""
    out = bytearray(payload)
    _T_PEER.pack_into(out, T_PEER_OFFSET, t_peer)
    return out


def decode(payload: bytes) -> tuple[int, int, int, int, int]:
    """``(session, seq, epoch, t_send, t_peer)``; raises ValueError when too short."""
    if len(payload) < HEADER_SIZE:
        raise ValueError(f"{len(payload)}-byte payload, natkit's load header needs {HEADER_SIZE}")
    s, q, e, _flags, ts, tp = HEADER.unpack_from(payload)
    return s, q, e, ts, tp
