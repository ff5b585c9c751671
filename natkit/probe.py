"""Public address discovery: one Binding per server, all concurrently.

Over UDP every server is asked from the same local socket (one per address
family), so differing mapped addresses between servers are evidence of
address- or port-dependent mapping (RFC 4787 §4.1). Over TCP/TLS each server
needs its own connection, so mapped ports are expected to differ.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from .errors import Failure, NatkitError, UsageError, exit_code_for
from .model import TransportAddress
from .stun import (
    UdpStunEndpoint,
    binding_request,
    client_ssl_context,
    resolve,
    stream_transaction,
)
from .uri import ServerURI, parse_server

SCHEMA = "natkit.probe/1"


@dataclasses.dataclass(frozen=True)
class BindingResult:
    """The outcome of one Binding transaction (RFC 8489 §3).

    Every address field is ``None`` when the server did not send it.
    """

    server: str  # the server as given by the user
    uri: str  # normalised stun:/stuns: URI
    transport: str  # "udp" or "tcp" ("tcp" with tls=True for stuns:)
    tls: bool
    server_address: TransportAddress | None  # resolved address the request went to
    ok: bool  # a success response arrived
    mapped_address: TransportAddress | None  # XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS)
    local_address: TransportAddress | None  # the local socket address
    rtt_ms: float | None  # last send to answer, milliseconds
    sends: int  # how many times the request was sent (1 = no retransmission)
    response_origin: TransportAddress | None  # RESPONSE-ORIGIN (RFC 5780 §7.3)
    other_address: TransportAddress | None  # OTHER-ADDRESS (RFC 5780 §7.4)
    software: str | None  # SOFTWARE (RFC 8489 §14.14)
    error: str | None  # why ok is False
    error_kind: str | None  # NatkitError.kind of that failure


@dataclasses.dataclass(frozen=True)
class ProbeReport:
    """Result of :func:`probe`: one :class:`BindingResult` per server, and a summary."""

    schema: str
    transport: str
    results: tuple[BindingResult, ...]
    public_ip: str | None  # the mapped IP when all answering servers agree, else the first
    public_ips: tuple[str, ...]  # every distinct mapped IP seen
    mapping_varies: bool | None  # mapped address differs between servers; None: fewer than 2 answers (or TCP)
    behind_nat: bool | None  # mapped address differs from the local address; None: no answer
    duration_ms: float

    @property
    def ok(self) -> bool:
        """True when at least one server answered."""
        return any(r.ok for r in self.results)

    @property
    def failures(self) -> tuple[Failure, ...]:
        """One :class:`~natkit.errors.Failure` per server that gave no usable answer."""
        return tuple(Failure(r.error_kind or "unreachable", "binding", r.error or "no response", r.uri)
                     for r in self.results if not r.ok)

    @property
    def exit_code(self) -> int:
        """0 when a server answered, else the most severe failure's (4 unreachable, 1 answered unusably)."""
        return 0 if self.ok else exit_code_for(self.failures)


def route_local_ip(addr: TransportAddress) -> str | None:
    """The local IP the kernel would use to reach ``addr`` (a connected UDP
    socket; nothing is sent). None when there is no route."""
    import socket

    family = socket.AF_INET6 if addr.family == 6 else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.connect((addr.host, addr.port))
        return s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()


def _local_for(local: TransportAddress | None, addr: TransportAddress | None) -> TransportAddress | None:
    """Replace a wildcard local IP (0.0.0.0, ::) by the routed source IP."""
    if local is None or addr is None or local.host not in ("0.0.0.0", "::"):
        return local
    ip = route_local_ip(addr)
    return TransportAddress(ip, local.port) if ip else local


def _result(server: str, uri: ServerURI, addr, *, resp=None, local=None, exc: NatkitError | None = None) -> BindingResult:
    if resp is None:
        return BindingResult(
            server=server, uri=str(uri), transport=uri.transport, tls=uri.secure,
            server_address=addr, ok=False, mapped_address=None, local_address=local,
            rtt_ms=None, sends=0, response_origin=None, other_address=None, software=None,
            error=exc.one_line() if exc else "no response", error_kind=exc.kind if exc else None,
        )
    msg = resp.message
    mapped = msg.get("XOR-MAPPED-ADDRESS") or msg.get("MAPPED-ADDRESS")
    error = None
    if resp.is_error:
        code, reason = resp.error or (0, "")
        error = f"Binding error response {code} {reason}"
    return BindingResult(
        server=server, uri=str(uri), transport=uri.transport, tls=uri.secure,
        server_address=addr, ok=not resp.is_error and mapped is not None,
        mapped_address=mapped,
        local_address=_local_for(resp.local, addr), rtt_ms=resp.rtt_ms, sends=resp.sends,
        response_origin=msg.get("RESPONSE-ORIGIN"),
        other_address=msg.get("OTHER-ADDRESS"),
        software=msg.get("SOFTWARE"),
        error=error or (None if mapped else "response without XOR-MAPPED-ADDRESS"),
        error_kind="error_response" if error else (None if mapped else "no_mapped_address"),
    )


def summarise(results: list[BindingResult], transport: str, started: float) -> ProbeReport:
    """Build the :class:`ProbeReport` summary from per-server results (pure)."""
    answered = [(r, r.mapped_address) for r in results if r.ok and r.mapped_address is not None]
    ips = tuple(dict.fromkeys(mapped.host for _, mapped in answered))
    varies = None
    if transport == "udp":
        # only servers asked from the same local socket are comparable
        by_local: dict[TransportAddress | None, list[TransportAddress]] = {}
        for r, mapped in answered:
            by_local.setdefault(r.local_address, []).append(mapped)
        groups = [g for g in by_local.values() if len(g) >= 2]
        if groups:
            varies = any(len(set(g)) > 1 for g in groups)
    behind = None
    if answered:
        behind = any(mapped != r.local_address for r, mapped in answered)
    return ProbeReport(
        schema=SCHEMA,
        transport=transport,
        results=tuple(results),
        public_ip=ips[0] if ips else None,
        public_ips=ips,
        mapping_varies=varies,
        behind_nat=behind,
        duration_ms=(time.monotonic() - started) * 1000.0,
    )


async def probe_async(
    servers: list[str],
    *,
    transport: str = "udp",
    timeout: float = 3.0,
    local_host: str | None = None,
    verify_tls: bool = True,
    cafile: str | None = None,
) -> ProbeReport:
    """Send a Binding request to every server concurrently; see :func:`probe`."""
    if not servers:
        raise UsageError("no STUN server given", hint="natkit probe stun:HOST[:PORT]")
    if not 0 < timeout < float("inf"):  # also nan
        raise UsageError(f"timeout must be a positive number of seconds, got {timeout}")
    if transport not in ("udp", "tcp"):
        raise UsageError(f"unknown transport {transport!r}", hint="use udp or tcp")
    started = time.monotonic()
    uris = [parse_server(s, transport=transport) for s in servers]  # raises InvalidURI first
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    opening: dict[int, asyncio.Task] = {}

    async def endpoint(family: int, addr: TransportAddress) -> UdpStunEndpoint:
        # one socket per address family, opened once even when servers race for it; a single server
        # gets a connected socket, so an ICMP port-unreachable fails the probe at once
        if family not in opening:
            host = local_host or ("::" if family == 6 else "0.0.0.0")
            opening[family] = asyncio.ensure_future(UdpStunEndpoint.open(host, remote=addr if len(uris) == 1 else None))
        return await opening[family]

    async def one(server: str, uri: ServerURI) -> BindingResult:
        addr = None
        try:
            addr = await resolve(uri.host, uri.port, transport=uri.transport, timeout=max(0.05, deadline - loop.time()))
            if uri.transport == "udp":
                ep = await endpoint(addr.family, addr)
                resp = await ep.request(binding_request(), addr, timeout=max(0.05, deadline - loop.time()))
            else:
                ctx = client_ssl_context(verify_tls, cafile) if uri.secure else None
                resp = await stream_transaction(binding_request(), addr, timeout=max(0.05, deadline - loop.time()), ssl=ctx, server_hostname=uri.host)
            return _result(server, uri, addr, resp=resp)
        except NatkitError as exc:
            return _result(server, uri, addr, exc=exc)

    try:
        results = await asyncio.gather(*(one(s, u) for s, u in zip(servers, uris)))
    finally:
        for task in opening.values():
            if task.done() and not task.cancelled() and task.exception() is None:
                task.result().close()
    return summarise(list(results), transport, started)


def probe(servers: list[str], *, transport: str = "udp", timeout: float = 3.0, local_host: str | None = None,
          verify_tls: bool = True, cafile: str | None = None) -> ProbeReport:
    """Discover the public (server-reflexive) address with STUN Binding requests.

    ``servers``: addresses as ``host``, ``host:port``, ``stun:``/``stuns:`` URIs
    (RFC 7064). ``transport``: "udp" or "tcp" (``stuns:`` is always TLS).
    ``timeout``: total budget in seconds for the whole probe. ``verify_tls`` and
    ``cafile`` apply to ``stuns:`` servers.

    Returns a :class:`ProbeReport`; servers that do not answer appear in it
    with ``ok=False`` and the reason. Raises :class:`~natkit.errors.InvalidURI`
    or :class:`~natkit.errors.UsageError` for bad input.
    """
    return asyncio.run(probe_async(servers, transport=transport, timeout=timeout, local_host=local_host, verify_tls=verify_tls, cafile=cafile))
