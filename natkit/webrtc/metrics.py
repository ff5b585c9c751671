"""What a WebRTC path did, as values: candidates, the nominated pair, echo and bulk figures.

Pure: no sockets and no aiortc here (:func:`parse_candidates` imports
aioice's candidate parser when called). Shared by relay-check, natkit peer
and the lab agents through :func:`natkit.webrtc.session.measure`.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..model import TransportAddress


@dataclasses.dataclass(frozen=True)
class CandidateInfo:
    """One ICE candidate (RFC 8445 §5.1): ``type`` host/srflx/prflx/relay.

    ``side``: who gathered it (``offerer``/``answerer`` in one process,
    ``local``/``remote`` across machines).
    """

    side: str
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

    @property
    def relayed(self) -> bool:
        """Both candidates of the pair are relayed (relay/relay)."""
        return self.local_type == "relay" and self.remote_type == "relay"

    def describe(self) -> str:
        return f"{self.local_type}/{self.remote_type}"


@dataclasses.dataclass(frozen=True)
class PathMetrics:
    """One data-channel path, measured. Times in milliseconds, throughput in MB/s (10^6 bytes/s).

    ``selected`` maps a side (``offerer``/``answerer``, or ``local``) to that
    side's nominated pair, None when it nominated nothing.
    """

    gathering_ms: float | None  # createOffer/createAnswer + candidate gathering (includes the peer's Allocate)
    connected_ms: float | None  # answer applied -> data channel open (ICE + DTLS + SCTP)
    first_echo_ms: float | None  # data channel open -> first echo back
    rtt_ms_p50: float | None  # data-channel echo round trip
    rtt_ms_p95: float | None
    messages_sent: int
    messages_echoed: int  # replies that came back before the deadline
    messages_intact: int  # replies equal to what was sent
    echo_ok: bool  # every message came back intact
    payload_bytes: int  # bulk payload sent one way for throughput
    throughput_mbps: float | None  # MB/s over that payload, first byte sent -> last byte received
    candidates: tuple[CandidateInfo, ...]
    all_relay: bool  # candidates were gathered and every one is of type relay
    selected: Mapping[str, SelectedPair | None]
    selected_relay: bool  # every side's nominated pair is relay/relay

    @property
    def pair(self) -> SelectedPair | None:
        """The first side's nominated pair (the one of ``local`` for natkit peer)."""
        return next(iter(self.selected.values()), None)


def path_metrics(*, gathering_ms: float | None, connected_ms: float | None, echo: EchoSeries, payload_bytes: int,
                 throughput_mbps: float | None, candidates, selected: Mapping[str, SelectedPair | None]) -> PathMetrics:
    """Assemble :class:`PathMetrics` (percentiles, ``all_relay``, ``selected_relay``) from the raw figures."""
    candidates = tuple(candidates)
    return PathMetrics(
        gathering_ms=gathering_ms, connected_ms=connected_ms, first_echo_ms=echo.first_echo_ms,
        rtt_ms_p50=statistics.median(echo.rtts_ms) if echo.rtts_ms else None, rtt_ms_p95=percentile(echo.rtts_ms, 95),
        messages_sent=echo.sent, messages_echoed=echo.echoed, messages_intact=echo.intact, echo_ok=echo.ok,
        payload_bytes=payload_bytes, throughput_mbps=throughput_mbps,
        candidates=candidates, all_relay=bool(candidates) and all(c.type == "relay" for c in candidates),
        selected=dict(selected), selected_relay=bool(selected) and all(p is not None and p.relayed for p in selected.values()),
    )


def with_candidates(metrics: PathMetrics, candidates) -> PathMetrics:
    """``metrics`` with the candidate list replaced (trickled candidates can arrive after the measurement)."""
    candidates = tuple(candidates)
    return dataclasses.replace(metrics, candidates=candidates,
                               all_relay=bool(candidates) and all(c.type == "relay" for c in candidates))


@dataclasses.dataclass
class EchoSeries:
    """Round trips of a data-channel echo, one message at a time (so each is measured alone).

    ``rtts_ms`` per echoed message; ``first_echo_ms`` from the start of the
    series; ``failures`` the assertion messages (unanswered, mismatched).
    """

    sent: int
    echoed: int = 0
    intact: int = 0
    ok: bool = True
    first_echo_ms: float | None = None
    rtts_ms: list[float] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)


async def echo_series(count: int, exchange: Callable[[int], Awaitable[tuple[Any, Any]]]) -> EchoSeries:
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
        if reply == sent:
            series.intact += 1
        else:
            series.ok = False
    if series.echoed < count:
        series.ok = False
    if not series.ok:
        series.failures.append(f"echo mismatch: {series.echoed}/{count} messages came back intact")
    return series


def parse_candidates(sdp: str, side: str) -> list[CandidateInfo]:
    """Every ``a=candidate:`` line of ``sdp`` (RFC 8839 §5.1) as :class:`CandidateInfo` of ``side``.

    Raises :class:`ValueError` (or aioice's parsing errors) for a malformed line.
    """
    from aioice import Candidate

    out = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            c = Candidate.from_sdp(line[len("a="):])
            related = (TransportAddress(c.related_address, c.related_port)
                       if c.related_address is not None and c.related_port is not None else None)
            out.append(CandidateInfo(side, c.type, c.transport.lower(), TransportAddress(c.host, c.port), related))
    return out


def candidate_counts(candidates) -> dict[str, int]:
    """Candidate type -> how many (``{"host": 1, "relay": 1}``)."""
    counts: dict[str, int] = {}
    for c in candidates:
        counts[c.type] = counts.get(c.type, 0) + 1
    return counts


def percentile(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100.0 * (len(values) - 1))))
    return values[k]
