"""The doctor's I/O: every request it sends, on natkit's one STUN/TURN client stack.

:func:`observe` runs the steps in order and stops at none of them:

1. STUN Binding per target, concurrently: each given URI plus the fallbacks
   a client would try (TCP on the same port, TLS on 5349), so a blocked UDP
   and a missing TCP/TLS listener are told apart; the ``turns:``
   certificate is verified and described.
2. The authenticated Allocate on the first reachable target; a refusal is
   explained (REST: a credential valid for years tells a wrong secret from
   a server clock that runs ahead, and a bisection of the expiry bounds
   how far).
3. Allocations: a second one on the same transport, one per fallback
   transport and one with REQUESTED-ADDRESS-FAMILY IPv6.
4. CreatePermission between the two allocations, toward this client and
   toward every ``--peer``.
5. Data both ways between the two allocations, and between this client (a
   plain UDP socket, as a peer would be) and a relayed address: the source
   of what the relay sends names the address relay traffic really leaves from.
6. When Send indications are relayed: ChannelBind and ChannelData, with
   relay-check's post-mortem (:func:`natkit.relay_postmortem.examine_relay`).

What it sends goes only to the server's own addresses (the resolved URIs)
and its relayed ports; toward anything else (the other allocation, this
client, a ``--peer``) it only asks the server. Every request has
``timeout`` seconds, every data leg ``data_timeout``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import secrets
import time
from typing import Any

from ..errors import (
    HostNotFound,
    MalformedMessage,
    NatkitError,
    ServerUnreachable,
    StunTimeout,
    UsageError,
)
from ..model import TransportAddress
from ..uri import DEFAULT_TLS_PORT, parse_turn_uri
from .facts import (
    Alloc,
    AuthFacts,
    ChannelFacts,
    ClockProbe,
    Delivery,
    Facts,
    Perm,
    Reach,
    Target,
    TlsFacts,
)

FAR_TTL = 5 * 365 * 86400  # s: a REST credential "valid for years" (tells wrong secret from clock skew)
CLOCK_STEPS = 12  # bisection steps over log(ttl): bounds within ~0.3 %
TOKEN_PREFIX = b"\xa5natkit-doctor "  # first byte >= 0x40: never mistaken for STUN
PEER_PORT = 9  # XOR-PEER-ADDRESS port for --peer permissions (the port is ignored)


@dataclasses.dataclass(frozen=True)
class Options:
    """What :func:`observe` needs. ``secret`` (REST) or ``username``/``password``
    (long-term), neither for an unauthenticated run; ``user``: the REST user
    part (None: a fresh ``natkit-doctor-*`` per allocation, so the doctor
    never fills a user quota itself); ``peers``: IP literals of peers that
    must be reachable; ``cafile``: CA bundle for ``turns:``; ``fallbacks``:
    also try TCP and TLS when only ``turn:`` is given; times in seconds."""

    uris: tuple[str, ...]
    secret: str | None = dataclasses.field(default=None, repr=False)
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    user: str | None = None
    peers: tuple[str, ...] = ()
    cafile: str | None = None
    fallbacks: bool = True
    timeout: float = 1.5
    data_timeout: float = 1.0


class _Creds:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.mode = "rest" if opts.secret else ("long-term" if opts.username else "none")

    def pair(self, tag: str, ttl: int = 600) -> tuple[str | None, str | None]:
        from ..credentials import mint

        if self.mode == "rest":
            cred = mint(self.opts.secret or "", self.opts.user or f"natkit-doctor-{tag}", ttl)
            return cred.username, cred.password
        if self.mode == "long-term":
            return self.opts.username, self.opts.password
        return None, None

    def expiry(self) -> int | None:
        """The REST timestamp of a long-term username ("<expiry>[:user]"), else None."""
        name = self.opts.username or ""
        head = name.split(":", 1)[0]
        return int(head) if head.isdigit() and 9 <= len(head) <= 11 else None


# ---------------------------------------------------------------- targets

def targets_for(uris: tuple[str, ...] | list[str], *, fallbacks: bool = True) -> list[tuple[str, str, str, int, bool]]:
    """``(uri, transport, host, port, given)`` for every URI and the fallbacks a client would try (pure).

    ``turn:H:P`` gives UDP H:P and, with ``fallbacks``, TCP H:P and TLS H:5349
    unless those are given too. Raises :class:`InvalidURI` for a bad URI.
    """
    out: list[tuple[str, str, str, int, bool]] = []
    for text in uris:
        u = parse_turn_uri(text)
        transport = "tls" if u.secure else u.transport
        out.append((str(u), transport, u.host, u.port, True))
    if fallbacks:
        for _uri, transport, host, port, _ in list(out):
            if transport != "udp":
                continue
            have = {(t, h) for _, t, h, _, _ in out}
            if ("tcp", host) not in have:
                out.append((f"turn:{_h(host)}:{port}?transport=tcp", "tcp", host, port, False))
            if ("tls", host) not in have:
                out.append((f"turns:{_h(host)}:{DEFAULT_TLS_PORT}", "tls", host, DEFAULT_TLS_PORT, False))
    return out


def _h(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _resolve_targets(opts: Options) -> list[Target]:
    from ..stun.aio import resolve

    rows = targets_for(opts.uris, fallbacks=opts.fallbacks)

    async def one(uri: str, transport: str, host: str, port: int, given: bool) -> Target:
        try:
            addr = await resolve(host, port, transport="udp" if transport == "udp" else "tcp", timeout=opts.timeout)
        except HostNotFound:
            addr = None
        return Target(uri, transport, host, addr, given)

    return list(await asyncio.gather(*(one(*r) for r in rows)))


# ---------------------------------------------------------------- 1. reachability

def _classify(exc: BaseException) -> tuple[str, str]:
    text = exc.one_line() if isinstance(exc, NatkitError) else f"{exc.__class__.__name__}: {exc}"
    if isinstance(exc, StunTimeout | TimeoutError):
        return "timeout", text
    if isinstance(exc, MalformedMessage):
        return "malformed", text
    if isinstance(exc, ServerUnreachable):
        msg = exc.message.lower()
        if "port unreachable" in msg:
            return "icmp", text
        if "refused" in msg:
            return "refused", text
        if exc.step == "tls" or "tls" in msg:
            return "tls", text
        return "error", text
    if isinstance(exc, ConnectionRefusedError):
        return "refused", text
    return "error", text


async def _reach(t: Target, opts: Options) -> tuple[Reach, TlsFacts | None]:
    from ..stun.aio import (
        UdpStunEndpoint,
        binding_request,
        client_ssl_context,
        stream_transaction,
    )

    if t.addr is None:
        return Reach(t, False, "unresolved", f"{t.host} does not resolve"), None
    tls_facts = None
    try:
        if t.transport == "udp":
            local = "::" if t.addr.family == 6 else "0.0.0.0"
            async with await UdpStunEndpoint.open(local, remote=t.addr) as ep:
                resp = await ep.request(binding_request(), t.addr, timeout=opts.timeout, rto=0.25)
        elif t.transport == "tcp":
            resp = await stream_transaction(binding_request(), t.addr, timeout=opts.timeout)
        else:
            tls_facts = await _tls_probe(t, opts)
            if tls_facts.verified is None:
                return Reach(t, False, "refused" if "refused" in (tls_facts.handshake_error or "") else (
                    "timeout" if "timed out" in (tls_facts.handshake_error or "") else "tls"), tls_facts.handshake_error or ""), tls_facts
            resp = await stream_transaction(binding_request(), t.addr, timeout=opts.timeout,
                                            ssl=client_ssl_context(verify=False), server_hostname=t.host)
    except (NatkitError, OSError, TimeoutError) as exc:
        kind, text = _classify(exc)
        return Reach(t, False, kind, text), tls_facts
    msg = resp.message
    if msg.is_error:
        return Reach(t, False, "error", f"Binding → {msg.describe()}", rtt_ms=resp.rtt_ms), tls_facts
    return Reach(t, True, None, f"Binding → success, XOR-MAPPED-ADDRESS {msg.get('XOR-MAPPED-ADDRESS')}",
                 msg.get("XOR-MAPPED-ADDRESS"), resp.rtt_ms), tls_facts


async def _tls_probe(t: Target, opts: Options) -> TlsFacts:
    """Verified handshake (``cafile`` or the system store, the URI's host as the name); on a
    certificate failure, an unverified one to read the certificate."""
    import ssl

    from ..stun.aio import client_ssl_context
    from ..tls import cert_info

    assert t.addr is not None
    addr = t.addr

    async def handshake(verify: bool) -> tuple[bytes | None, str | None]:
        ctx = client_ssl_context(verify=verify, cafile=opts.cafile)
        _, writer = await asyncio.wait_for(asyncio.open_connection(addr.host, addr.port, ssl=ctx, server_hostname=t.host),
                                           opts.timeout)
        try:
            obj = writer.get_extra_info("ssl_object")
            return obj.getpeercert(binary_form=True), obj.version()
        finally:
            writer.close()

    def info(der: bytes | None) -> dict | None:
        return dataclasses.asdict(cert_info(der)) if der else None

    try:
        der, version = await handshake(True)
        return TlsFacts(t, True, cert=info(der), hostname=t.host, version=version)
    except ssl.SSLCertVerificationError as exc:
        code, message = exc.verify_code, exc.verify_message
    except ssl.SSLError as exc:
        return TlsFacts(t, False, handshake_error=f"TLS handshake failed: {exc.reason or exc}", hostname=t.host)
    except (OSError, TimeoutError) as exc:
        text = "connection refused" if isinstance(exc, ConnectionRefusedError) else (
            "connect timed out" if isinstance(exc, TimeoutError) else f"cannot connect: {exc.strerror or exc}")
        return TlsFacts(t, None, handshake_error=text, hostname=t.host)
    try:
        der, version = await handshake(False)
    except (ssl.SSLError, OSError, TimeoutError):
        der, version = None, None
    return TlsFacts(t, False, verify_code=code, verify_message=message, cert=info(der), hostname=t.host, version=version)


# ---------------------------------------------------------------- 2. authentication

async def _client(t: Target, opts: Options, username: str | None, password: str | None) -> Any:
    from ..stun.aio import TurnClient, client_ssl_context

    assert t.addr is not None
    ssl = client_ssl_context(verify=False) if t.transport == "tls" else None  # the certificate is judged by _tls_probe
    return await TurnClient.open(t.addr, transport=t.transport, username=username, password=password, ssl=ssl,
                                 server_hostname=t.host if ssl else None, timeout=opts.timeout, rto=0.25)


async def _allocate(role: str, t: Target, opts: Options, creds: _Creds, *, family: int | None = None,
                    username: str | None = None, password: str | None = None) -> tuple[Alloc, Any]:
    """One Allocate on a fresh connection; ``(Alloc, client)`` (the client is None when it could not open)."""
    if username is None:
        username, password = creds.pair(role.lower())
    try:
        client = await _client(t, opts, username, password)
    except (NatkitError, OSError) as exc:
        return Alloc(role, t, family or 1, False, _classify(exc)[1]), None
    try:
        reply = await client.allocate(family=family, check=False)
    except (NatkitError, OSError) as exc:
        return Alloc(role, t, family or 1, False, _classify(exc)[1]), client
    lifetime = reply.response.get("LIFETIME") if reply.ok else None
    return Alloc(role, t, family or 1, reply.ok, reply.describe(), reply.code, client.relayed if reply.ok else None,
                 reply.response.get("XOR-MAPPED-ADDRESS"), lifetime), (client, reply)


async def _auth(t: Target, opts: Options, creds: _Creds) -> tuple[AuthFacts, Alloc, Any]:
    """The first authenticated Allocate (it becomes allocation "A"), and what a refusal means."""
    now = time.time()
    alloc, handle = await _allocate("A", t, opts, creds)
    client, reply = handle if isinstance(handle, tuple) else (handle, None)
    expiry = creds.expiry() if creds.mode == "long-term" else (int(now) + 600 if creds.mode == "rest" else None)
    challenged = client is not None and client.session.nonce is not None
    if reply is None:
        outcome = "timeout" if "timeout" in alloc.response or "no response" in alloc.response or "budget" in alloc.response else "not-reached"
        facts = AuthFacts(creds.mode, t, outcome, alloc.response, None, challenged, expiry, now)
    elif reply.ok and reply.attempts == 1:
        facts = AuthFacts(creds.mode, t, "no-auth", "Allocate without MESSAGE-INTEGRITY → success", None, False, expiry, now)
    elif reply.code in (401, 441) or (reply.code == 400 and challenged and reply.signed is None):
        facts = AuthFacts(creds.mode, t, "refused", alloc.response, reply.code, challenged, expiry, now)
    else:
        facts = AuthFacts(creds.mode, t, "ok", alloc.response, reply.code, challenged, expiry, now)
    if facts.outcome in ("refused", "timeout") and creds.mode == "rest" and challenged:
        facts = dataclasses.replace(facts, outcome="refused", **await _clock_search(t, opts, creds))
    return facts, alloc, client


async def _rest_accepted(t: Target, opts: Options, creds: _Creds, ttl: int) -> bool:
    from ..credentials import mint

    cred = mint(creds.opts.secret or "", creds.opts.user or "natkit-doctor-clock", ttl)
    _, handle = await _allocate("clock", t, opts, creds, username=cred.username, password=cred.password)
    client, reply = handle if isinstance(handle, tuple) else (handle, None)
    if client is not None:
        await client.close()
    return bool(reply is not None and reply.ok)


async def _clock_search(t: Target, opts: Options, creds: _Creds) -> dict:
    """A REST credential valid for years: refused too → the secret is wrong; accepted →
    the server's clock is ahead; bisect log(ttl) to bound by how much (seconds)."""
    probes = [ClockProbe(FAR_TTL, await _rest_accepted(t, opts, creds, FAR_TTL))]
    if not probes[0].accepted:
        return {"probes": tuple(probes)}
    lo, hi = math.log(600), math.log(FAR_TTL)
    for _ in range(CLOCK_STEPS):
        mid = (lo + hi) / 2
        ok = await _rest_accepted(t, opts, creds, int(math.exp(mid)))
        probes.append(ClockProbe(int(math.exp(mid)), ok))
        if ok:
            hi = mid
        else:
            lo = mid
    return {"probes": tuple(probes), "server_ahead_s": (math.exp(lo), math.exp(hi))}


# ---------------------------------------------------------------- 4.-5. permissions and data

class _Router:
    """Matches arriving tokens to the legs waiting for them."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future] = {}

    def token(self, leg: str) -> bytes:
        tok = TOKEN_PREFIX + leg.encode() + b" " + secrets.token_hex(6).encode()
        self.waiting[tok] = asyncio.get_running_loop().create_future()
        return tok

    def arrived(self, data: bytes, source: TransportAddress | None) -> None:
        fut = self.waiting.get(bytes(data))
        if fut is not None and not fut.done():
            fut.set_result((source, time.monotonic()))


async def _leg(router: _Router, leg: str, send, sent_to: TransportAddress, wait: float) -> Delivery:
    """Send a token (three times: 0, 0.1, 0.3 s, for UDP loss) and wait for it."""
    tok = router.token(leg)
    fut = router.waiting[tok]
    t0 = time.monotonic()
    for gap in (0.1, 0.2, None):  # send, wait 0.1 s, resend, wait 0.2 s, resend
        try:
            send(tok)
        except (NatkitError, OSError):
            break
        if gap is None:
            break
        done, _ = await asyncio.wait({fut}, timeout=min(gap, max(0.0, wait - (time.monotonic() - t0))))
        if done:
            break
    try:
        source, t1 = await asyncio.wait_for(asyncio.shield(fut), max(0.0, wait - (time.monotonic() - t0)))
    except TimeoutError:
        return Delivery(leg, sent_to, False)
    return Delivery(leg, sent_to, True, source, (t1 - t0) * 1000.0)


async def _permit(client: Any, role: str, peer: TransportAddress, why: str, opts: Options) -> Perm:
    try:
        reply = await client.create_permission(peer, check=False)
    except (NatkitError, OSError) as exc:
        return Perm(role, peer, why, False, _classify(exc)[1])
    return Perm(role, peer, why, reply.ok, reply.describe(), reply.code)


async def _pair_legs(router: _Router, a: Any, b: Any, names: tuple[str, str], opts: Options) -> tuple[list[Perm], list[Delivery]]:
    """Permissions both ways between two allocations, then a token each way."""
    na, nb = names
    perms = list(await asyncio.gather(_permit(a, na, b.relayed, "other allocation", opts),
                                      _permit(b, nb, a.relayed, "other allocation", opts)))
    if not all(p.ok for p in perms):
        return perms, []
    legs = await asyncio.gather(
        _leg(router, f"{na}→{nb}", lambda tok: a.send(b.relayed, tok), b.relayed, opts.data_timeout),
        _leg(router, f"{nb}→{na}", lambda tok: b.send(a.relayed, tok), a.relayed, opts.data_timeout))
    return perms, list(legs)


async def _peer_path(router: _Router, a: Any, udp: Target, server_ips: set[str], opts: Options) -> tuple[list[Perm], list[Delivery], TransportAddress | None]:
    """This client as a peer: a plain UDP socket sends to the relayed port, then the relay sends to it.

    The socket only ever sends to a server address: the relayed address when
    it is one, else the server's address with the relayed port (where a 1:1
    NAT would carry it). Returns the permissions, the legs and the socket's
    own mapped address.
    """
    from ..stun.aio import UdpStunEndpoint, binding_request

    assert udp.addr is not None
    relayed = a.relayed
    if relayed is None or relayed.family != udp.addr.family:
        return [], [], None
    target = relayed if relayed.host in server_ips else TransportAddress(udp.addr.host, relayed.port)
    ep = await UdpStunEndpoint.open("::" if udp.addr.family == 6 else "0.0.0.0")
    try:
        ep.on_packet = lambda data, source: router.arrived(data, source)
        try:
            mapped = (await ep.request(binding_request(), udp.addr, timeout=opts.timeout, rto=0.25)).message.get("XOR-MAPPED-ADDRESS")
        except NatkitError:
            return [], [], None
        if mapped is None:
            return [], [], None
        perm = await _permit(a, "A", mapped, "this client", opts)
        if not perm.ok:
            return [perm], [], mapped
        inbound = await _leg(router, "peer→relay", lambda tok: ep.sendto(tok, target), target, opts.data_timeout)
        outbound = await _leg(router, "relay→peer", lambda tok: a.send(mapped, tok), mapped, opts.data_timeout)
        return [perm], [inbound, outbound], mapped
    finally:
        ep.close()


# ---------------------------------------------------------------- the run

def _primary(reach: list[Reach]) -> Target | None:
    """The target a client would use first: a reachable given one, UDP before TCP before TLS."""
    order = {"udp": 0, "tcp": 1, "tls": 2}
    ok = sorted((r.target for r in reach if r.ok), key=lambda t: (not t.given, order[t.transport]))
    return ok[0] if ok else None


async def observe(opts: Options) -> Facts:
    """Run every step against ``opts.uris`` and return what was seen (see the module docstring).

    Raises :class:`UsageError` for bad input (URIs, peers); network failures
    are facts, not exceptions.
    """
    import ipaddress

    if not opts.uris:
        raise UsageError("no server given", hint="natkit doctor turn:HOST[:PORT] [turns:HOST:5349]")
    try:
        peers = tuple(TransportAddress(str(ipaddress.ip_address(p.strip("[]"))), PEER_PORT) for p in opts.peers)
    except ValueError as exc:
        raise UsageError(f"--peer needs an IP address: {exc}") from None
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    targets = await _resolve_targets(opts)
    pairs = await asyncio.gather(*(_reach(t, opts) for t in targets))
    reach = [r for r, _ in pairs]
    tls = [f for _, f in pairs if f is not None]
    timings["reach"] = (time.monotonic() - t0) * 1000.0
    server_ips = tuple(dict.fromkeys(t.addr.host for t in targets if t.addr is not None))
    wanted_v6 = any(p.family == 6 for p in peers) or any(t.addr is not None and t.addr.family == 6 for t in targets if t.given)
    base = Facts(tuple(opts.uris), server_ips, tuple(targets), tuple(reach), tuple(tls), peers=peers, wanted_ipv6=wanted_v6,
                 timings=timings)
    primary = _primary(reach)
    if primary is None:
        return base
    clients: list[Any] = []
    try:
        return await _relay_steps(base, primary, opts, clients)
    finally:
        await asyncio.gather(*(c.close() for c in clients if c is not None), return_exceptions=True)


async def _relay_steps(base: Facts, primary: Target, opts: Options, clients: list[Any]) -> Facts:
    creds = _Creds(opts)
    timings = base.timings
    t0 = time.monotonic()
    auth, alloc_a, client_a = await _auth(primary, opts, creds)
    clients.append(client_a)
    timings["auth"] = (time.monotonic() - t0) * 1000.0
    facts = dataclasses.replace(base, auth=auth, allocs=(alloc_a,))
    if auth.outcome not in ("ok", "no-auth"):
        return facts
    t0 = time.monotonic()
    reachable = {r.target.transport: r.target for r in base.reach if r.ok}
    jobs: list[tuple[str, Target, int | None]] = [("B", primary, None)]
    jobs += [(tr, reachable[tr], None) for tr in ("tcp", "tls") if tr in reachable and tr != primary.transport]
    jobs.append(("v6", primary, 2))
    results = await asyncio.gather(*(_allocate(role, t, opts, creds, family=fam) for role, t, fam in jobs))
    handles: dict[str, Any] = {"A": client_a if alloc_a.ok else None}
    allocs = [alloc_a]
    for (role, _, _), (alloc, handle) in zip(jobs, results, strict=True):
        client = handle[0] if isinstance(handle, tuple) else handle
        clients.append(client)
        allocs.append(alloc)
        handles[role] = client if alloc.ok else None
    timings["allocate"] = (time.monotonic() - t0) * 1000.0
    facts = dataclasses.replace(facts, allocs=tuple(allocs))
    t0 = time.monotonic()
    perms, data = await _paths(handles, primary, base, opts)
    timings["paths"] = (time.monotonic() - t0) * 1000.0
    channel = None
    if handles.get("A") is not None and handles.get("B") is not None and any(d.delivered for d in data if d.leg in ("A→B", "B→A")):
        t0 = time.monotonic()
        channel = await _channel(primary, opts, creds)
        timings["channel"] = (time.monotonic() - t0) * 1000.0
    return dataclasses.replace(facts, perms=tuple(perms), data=tuple(data), channel=channel)


async def _channel(t: Target, opts: Options, creds: _Creds) -> ChannelFacts:
    """ChannelBind and ChannelData on two fresh allocations: relay-check's post-mortem, reused as it is."""
    from ..relay_postmortem import examine_relay
    from ..stun.aio import client_ssl_context

    assert t.addr is not None
    username, password = creds.pair("channel")
    pm = await examine_relay(parse_turn_uri(t.uri), t.addr, username or "", password or "", timeout=max(1.2, 2 * opts.data_timeout),
                             ssl_context=client_ssl_context(verify=False) if t.transport == "tls" else None)
    return ChannelFacts(pm.permission, pm.send_relayed, tuple(pm.channel_bind), pm.channel_confirmed, pm.channeldata_relayed,
                        tuple(pm.lines), pm.hint())


async def _paths(handles: dict[str, Any], primary: Target, base: Facts, opts: Options) -> tuple[list[Perm], list[Delivery]]:
    """Permissions and data legs, concurrently: the primary pair, the fallback transports toward A,
    this client as a peer, and the ``--peer`` permissions."""
    router = _Router()
    for client in handles.values():
        if client is not None:
            client.on_data = (lambda pd: router.arrived(pd.data, pd.peer))
    a = handles.get("A")
    jobs = []
    if a is not None and handles.get("B") is not None:
        jobs.append(_pair_legs(router, a, handles["B"], ("A", "B"), opts))
    for role in ("tcp", "tls"):
        if a is not None and handles.get(role) is not None:
            jobs.append(_pair_legs(router, handles[role], a, (role, "A"), opts))
    udp = next((r.target for r in base.reach if r.ok and r.target.transport == "udp"), None)
    results = list(await asyncio.gather(*jobs))
    perms = [p for ps, _ in results for p in ps]
    data = [d for _, ds in results for d in ds]
    if a is not None and udp is not None:
        pp, dd, _ = await _peer_path(router, a, udp, set(base.server_ips), opts)
        perms += pp
        data += dd
    for peer in base.peers:
        owner = "v6" if peer.family == 6 and handles.get("v6") is not None else "A"
        client = handles.get(owner)
        if client is not None:
            perms.append(await _permit(client, owner, peer, "--peer", opts))
    return perms, data
