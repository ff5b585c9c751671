"""One WebRTC session layer over aiortc, shared by relay-check, natkit peer and the lab agents.

- ICE servers: :class:`IceServer`, :func:`ice_url` (aiortc is handed the
  resolved address, never a name it would resolve itself),
  :func:`resolve_ice_servers`, :func:`rtc_configuration`.
- Peer setup: :class:`PeerSetup` creates the ``RTCPeerConnection`` s of one
  check with aioice/aiortc logging silenced, the ICE check timer taken from
  the measured round trip (:func:`rto_from_rtt`), natkit's TLS context for
  ``turns:``, and a bounded close.
- Measurement: :func:`measure` runs the data-channel echo and the bulk
  transfer over any :class:`PathChannel`, reads every side's nominated pair
  and returns :class:`~natkit.webrtc.metrics.PathMetrics` with the failed
  assertions as :class:`~natkit.errors.Failure` values.

aiortc is imported inside the functions that need it: importing this module
costs nothing (``natkit probe`` must not load aiortc).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Self

from ..errors import Failure
from ..model import TransportAddress
from .metrics import CandidateInfo, PathMetrics, SelectedPair, echo_series, path_metrics

if TYPE_CHECKING:
    from ..uri import ServerURI

CLOSE_TIMEOUT = 3.0  # s: closing aiortc peers with megabytes queued can stall
RTO_MIN, RTO_MAX = 0.05, 0.5  # s, bounds of the ICE check timer taken from a measured RTT


@dataclasses.dataclass(frozen=True)
class IceServer:
    """One entry of ``RTCConfiguration.iceServers`` (W3C webrtc-pc §4.2.4)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> IceServer:
        """From the JSON form ``{"urls": [...], "username"?, "credential"?}`` (lab agents get that)."""
        urls = entry["urls"]
        return cls(tuple([urls] if isinstance(urls, str) else urls), entry.get("username"), entry.get("credential"))


def ice_url(uri: ServerURI, addr: TransportAddress) -> str:
    """The ``turn:``/``turns:``/``stun:`` URL for aiortc with ``uri``'s host replaced by its resolved ``addr``.

    aiortc would resolve the host itself (blocking, without natkit's
    diagnosis); ``?transport=`` is kept for plain ``turn:``.
    """
    host = f"[{addr.host}]" if addr.family == 6 else addr.host
    if uri.scheme in ("stun", "stuns"):
        return f"stun:{host}:{addr.port}"
    return f"{uri.scheme}:{host}:{addr.port}" + ("" if uri.secure else f"?transport={uri.transport}")


async def resolve_ice_servers(turn: Sequence[str] = (), stun: Sequence[str] = (), *, username: str | None = None,
                              password: str | None = None, timeout: float) -> list[IceServer]:
    """Parse and resolve TURN and STUN URIs into :class:`IceServer` s (TURN ones carry the credentials).

    Raises :class:`~natkit.errors.InvalidURI` and the resolver's
    :class:`~natkit.errors.HostNotFound`.
    """
    from ..stun import resolve
    from ..uri import parse_server, parse_turn_uri

    servers = []
    for text in turn:
        uri = parse_turn_uri(text)
        addr = await resolve(uri.host, uri.port, transport=uri.transport, timeout=timeout)
        servers.append(IceServer((ice_url(uri, addr),), username, password))
    for text in stun:
        uri = parse_server(text)
        addr = await resolve(uri.host, uri.port, timeout=timeout)
        servers.append(IceServer((ice_url(uri, addr),)))
    return servers


def rtc_configuration(servers: Iterable[IceServer], *, relay_only: bool = False):
    """An aiortc ``RTCConfiguration``: exactly ``servers`` (an empty list stays empty: aiortc's default
    would be a public STUN server), ``iceTransportPolicy`` relay or all."""
    from aiortc import RTCConfiguration, RTCIceServer
    from aiortc.rtcconfiguration import RTCIceTransportPolicy

    return RTCConfiguration(
        iceServers=[RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential) for s in servers],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL,
    )


def rto_from_rtt(rtt_ms: float) -> float:
    """ICE check RTO in seconds from a round trip to the TURN server: 4 x RTT within 50..500 ms
    (RFC 8489 §6.2.1 allows an RTO from a measured RTT; aioice's fixed start is 500 ms)."""
    return min(RTO_MAX, max(RTO_MIN, 4 * rtt_ms / 1000.0))


def quiet_logging() -> None:
    """aioice and aiortc log every check at INFO/WARNING; natkit reports results instead."""
    for name in ("aioice", "aiortc"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class PeerSetup:
    """The ``RTCPeerConnection`` s of one check, set up alike and closed together.

    ``servers``/``relay_only`` make the configuration; ``rto`` (seconds,
    see :func:`rto_from_rtt`) sets aioice's STUN retransmission timer while
    the setup is open; ``ssl_context`` is used for ``turns:`` instead of
    aioice's default (call :meth:`use_tls` once the ICE transport exists).
    An async context manager: entering checks the aioice/aiortc internals
    natkit relies on (:class:`~natkit.errors.IncompatibleDependency`, exit 70),
    leaving closes every peer (bounded by :data:`CLOSE_TIMEOUT`) and restores
    the timer.
    """

    def __init__(self, servers: Iterable[IceServer], *, relay_only: bool = False, rto: float | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.servers = list(servers)
        self.relay_only = relay_only
        self.rto = rto
        self.ssl_context = ssl_context
        self.peers: list[Any] = []
        self._rto_cm: Any = None

    async def __aenter__(self) -> Self:
        from .. import _aiortc_private as private

        private.check_compatible()
        quiet_logging()
        if self.rto is not None:
            self._rto_cm = private.check_rto(self.rto)
            self._rto_cm.__enter__()
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            await close_peers(self.peers)
        finally:
            if self._rto_cm is not None:
                self._rto_cm.__exit__(None, None, None)
                self._rto_cm = None

    def peer(self):
        """A new ``RTCPeerConnection`` with this setup's configuration (closed on exit)."""
        from aiortc import RTCPeerConnection

        pc = RTCPeerConnection(rtc_configuration(self.servers, relay_only=self.relay_only))
        self.peers.append(pc)
        return pc

    def use_tls(self, pc) -> None:
        """Give ``pc``'s ICE agent this setup's TLS context for ``turns:`` (no-op without one).

        Call after the transport exists (offerer: after ``createDataChannel``;
        answerer: after ``setRemoteDescription``) and before gathering.
        """
        if self.ssl_context is not None:
            from .. import _aiortc_private as private

            private.set_turn_ssl_context(pc, self.ssl_context)


async def close_peers(peers: Iterable[Any], timeout: float = CLOSE_TIMEOUT) -> None:
    """Close peer connections concurrently, giving up after ``timeout`` seconds (never raises)."""
    peers = list(peers)
    if not peers:
        return
    try:
        await asyncio.wait_for(asyncio.gather(*(pc.close() for pc in peers), return_exceptions=True), timeout)
    except TimeoutError:
        pass


def selected_pairs(peers: Mapping[str, Any]) -> dict[str, SelectedPair | None]:
    """Side name -> that peer's nominated pair (RFC 8445 §8.1.1), None when it nominated nothing."""
    from .. import _aiortc_private as private

    out: dict[str, SelectedPair | None] = {}
    for side, pc in peers.items():
        pair = private.selected_pair(pc)
        out[side] = None if pair is None else SelectedPair(
            pair[0].type, TransportAddress(pair[0].host, pair[0].port), pair[1].type, TransportAddress(pair[1].host, pair[1].port))
    return out


class PathChannel(Protocol):
    """What :func:`measure` needs from a data channel protocol.

    ``echo(seq, timeout)`` sends message ``seq`` and returns ``(sent,
    reply)`` (``reply`` None when ``timeout`` seconds passed);
    ``bulk(nbytes, timeout)`` sends ``nbytes`` one way and returns
    ``(MB/s, None)``, or ``(None, why)`` when it was not delivered in time.
    """

    async def echo(self, seq: int, timeout: float) -> tuple[Any, Any]: ...

    async def bulk(self, nbytes: int, timeout: float) -> tuple[float | None, str | None]: ...


async def measure(channel: PathChannel, *, peers: Mapping[str, Any], candidates: Iterable[CandidateInfo], messages: int,
                  payload_bytes: int, deadline: float, gathering_ms: float | None = None,
                  connected_ms: float | None = None) -> tuple[PathMetrics, list[Failure]]:
    """Measure an open path: ``messages`` echoes one at a time, then ``payload_bytes`` of bulk
    (skipped when 0), then every peer's nominated pair.

    ``peers``: side name -> ``RTCPeerConnection`` whose nominated pair is
    read; ``candidates``: what was gathered (parsed SDPs); ``deadline``:
    event-loop time by which everything must be done. Returns the metrics
    and the failed assertions (echo unanswered or altered, bulk not
    delivered; kind ``check_failed``). Which candidates and pairs are
    acceptable is the caller's rule.
    """
    loop = asyncio.get_running_loop()

    def left() -> float:
        return max(0.05, deadline - loop.time())

    failures: list[Failure] = []
    echo = await echo_series(messages, lambda i: channel.echo(i, left()))
    failures += [Failure.check("echo", f) for f in echo.failures]
    throughput = None
    if payload_bytes:
        throughput, why = await channel.bulk(payload_bytes, left())
        if throughput is None:
            failures.append(Failure.check("bulk", why or f"bulk payload of {payload_bytes} bytes not delivered before the deadline"))
    metrics = path_metrics(gathering_ms=gathering_ms, connected_ms=connected_ms, echo=echo, payload_bytes=payload_bytes,
                           throughput_mbps=throughput, candidates=candidates, selected=selected_pairs(peers))
    return metrics, failures
