"""TURN security audit: prove that a TURN server is not an open relay.

:func:`audit` runs a fixed list of checks against one or several servers
(concurrently, one :class:`ServerAudit` each) and returns one
:class:`AuditReport`. Every check yields a :class:`Finding` with an ``id``, a
``status`` (``pass``, ``fail`` or ``not_checked`` with the reason), a
``severity`` (of the failure; ``info`` for passes), the ``evidence`` (what was
sent and what came back) and the ``fix`` (the coturn option).

Checks (ids):

``open-relay``
    an Allocate without credentials must be answered 401 with REALM and NONCE
    (RFC 8656 §7.2, RFC 8489 §9.2).
``peer-acl``
    with valid credentials, CreatePermission and ChannelBind (RFC 8656 §9,
    §12) toward every forbidden peer range (loopback, 0.0.0.0, RFC 1918,
    CGNAT, link-local and cloud metadata, IPv4-mapped IPv6, NAT64, ...) must
    be refused with 403; a positive control (two allocations on this server
    relaying to each other, data carried both ways) must succeed.
``tcp-relay``
    RFC 6062: a TCP allocation should be refused (442); when it is allowed,
    CONNECT toward forbidden peers must be refused with 403.
``tls``
    ``turns:`` only: TLS 1.0 and 1.1 handshakes must fail; the certificate's
    names, issuer, chain verification and expiry are reported.
``credentials``
    REST API (with ``secret``): an expired credential and a credential made
    with a wrong secret must both be refused (401), and no response echoes
    the secret or the password.
``quota``
    an allocation flood on one credential (bounded in count and time) must be
    stopped with 486 Allocation Quota Reached.
``software``
    the SOFTWARE attribute (RFC 8489 §14.14) and the version it reveals, with
    known CVE hints for coturn versions.
``amplification``
    the size ratio of response to request for a minimal STUN Binding
    (unauthenticated UDP reflection) and for an unauthenticated Allocate.
``admin-ports``
    coturn's telnet CLI (TCP 5766) and Prometheus exporter (TCP 9641) must not
    answer on the server's address.

Verdicts hold for any RFC 8656 server, not only coturn (tests run coturn's
profiles and pion/turn): ``peer-acl`` judges each REQUESTED-ADDRESS-FAMILY
on its own and reports the family of the relay the server handed out; a
check stopped by the per-request timeout (``timeout``), its budget
(``check_timeout``), malformed answers or refused credentials is
"not_checked" with that reason, and never lets the report pass
(:func:`exit_code_of`). The STUN/TURN client is :mod:`natkit.stun`'s.

Safety: the ``peer-acl`` and ``tcp-relay`` checks ask the server to relay
toward forbidden destinations. CreatePermission and ChannelBind send nothing
to the peer; a server that accepts a TCP CONNECT does open a connection.
Run them only against servers you operate; natkit's own tests run them
against a coturn inside a network namespace that has no route out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import math
import os
import re
import ssl as ssl_module
import time

from .errors import (
    AuthenticationRefused,
    Failure,
    MalformedMessage,
    NatkitError,
    StunTimeout,
    UsageError,
    exit_code_for,
)
from .model import TransportAddress
from .stun.aio import TurnClient, UdpStunEndpoint, binding_request
from .stun.codec import FAMILY_IPV6, PROTO_TCP, PROTO_UDP
from .stun.turn import Pending, Reply, TurnSession
from .uri import ServerURI, parse_turn_uri

SCHEMA = "natkit.audit/1"
SEVERITIES = ("info", "low", "medium", "high", "critical")
STATUSES = ("pass", "fail", "not_checked")
# why a finding is "not_checked": only "not-applicable" (the input did not ask
# for it: no turns: URI, no credentials) may leave the report ok
REASONS = ("not-applicable", "timeout", "budget", "malformed", "credentials-refused", "refused", "error")


# Forbidden peers: (address, label). Ports only matter for ChannelBind/CONNECT.
FORBIDDEN_PEERS: tuple[tuple[str, str], ...] = (
    ("127.0.0.1", "loopback"),
    ("0.0.0.0", "this host (0.0.0.0 reaches loopback; CVE-2020-26262)"),
    ("10.0.0.1", "private RFC 1918 10/8"),
    ("172.16.0.1", "private RFC 1918 172.16/12"),
    ("192.168.0.1", "private RFC 1918 192.168/16"),
    ("100.64.0.1", "shared address space / CGNAT 100.64/10"),
    ("169.254.169.254", "cloud metadata service (link-local)"),
    ("192.0.0.1", "IETF protocol assignments 192.0.0/24"),
    ("198.18.0.1", "benchmarking 198.18/15"),
    ("224.0.0.1", "multicast 224/4"),
    ("240.0.0.1", "reserved 240/4"),
    ("255.255.255.255", "limited broadcast"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:169.254.169.254", "IPv4-mapped cloud metadata"),
    ("::ffff:10.0.0.1", "IPv4-mapped RFC 1918"),
    ("::1", "IPv6 loopback"),
    ("::", "IPv6 unspecified"),
    ("fc00::1", "IPv6 unique local fc00::/7"),
    ("fe80::1", "IPv6 link-local"),
    ("64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254"),
    ("ff02::1", "IPv6 multicast"),
)
# CONNECT (RFC 6062) targets: a refused CONNECT sends nothing, an accepted one opens TCP
FORBIDDEN_CONNECT: tuple[tuple[str, int, str], ...] = (
    ("127.0.0.1", 22, "loopback ssh"),
    ("0.0.0.0", 22, "0.0.0.0 (reaches loopback)"),
    ("169.254.169.254", 80, "cloud metadata HTTP"),
    ("10.0.0.1", 22, "private RFC 1918"),
    ("::ffff:127.0.0.1", 22, "IPv4-mapped loopback"),
)
ADMIN_PORTS: tuple[tuple[int, str], ...] = ((5766, "coturn telnet CLI"), (9641, "coturn Prometheus exporter"))

# Known coturn CVEs: (fixed in version, id, summary)
COTURN_CVES: tuple[tuple[tuple[int, ...], str, str], ...] = (
    ((4, 5, 0, 9), "CVE-2018-4056", "SQL injection in the web admin login"),
    ((4, 5, 0, 9), "CVE-2018-4058", "loopback peers relayable by default"),
    ((4, 5, 0, 9), "CVE-2018-4059", "telnet CLI with an empty default password"),
    ((4, 5, 1, 2), "CVE-2020-6061", "heap overflow in the web admin (HTTP POST)"),
    ((4, 5, 1, 2), "CVE-2020-6062", "denial of service in the web admin (HTTP POST)"),
    ((4, 5, 1, 3), "CVE-2020-4067", "uninitialised memory disclosed in STUN responses"),
    ((4, 5, 2), "CVE-2020-26262", "0.0.0.0 and [::] accepted as peers, reaching loopback"),
)


# ---------------------------------------------------------------------------
# report model


@dataclasses.dataclass(frozen=True)
class Finding:
    """One check's verdict on one server.

    ``status``: "pass", "fail" or "not_checked" (``evidence`` says why).
    ``severity``: how bad the failure is ("info" < "low" < "medium" < "high"
    < "critical"); a pass is "info". ``data`` holds the machine-readable
    evidence (error codes, sizes, counts). ``reason`` (not_checked only, one
    of :data:`REASONS`): "not-applicable" when the input did not allow the
    check (no ``turns:`` URI, no credentials); otherwise what stopped it —
    "timeout" (a request unanswered within ``--timeout``), "budget" (the
    check's ``--check-timeout`` ran out), "malformed" (answers that do not
    parse), "credentials-refused", "refused" (the server refused what the
    check needs), "error". Only "not-applicable" may leave the report ok.
    """

    id: str
    title: str
    status: str
    severity: str
    evidence: tuple[str, ...]
    fix: str | None
    data: dict
    duration_ms: float
    reason: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    @property
    def incomplete(self) -> bool:
        """Not checked for a reason other than the input: the audit cannot vouch for it."""
        return self.status == "not_checked" and self.reason != "not-applicable"


@dataclasses.dataclass(frozen=True)
class ServerAudit:
    """Every finding for one server (the URIs given for one host)."""

    server: str  # host as given
    uris: tuple[str, ...]
    reachable: bool | None  # answered a STUN Binding or Allocate; None: not tried
    findings: tuple[Finding, ...]
    error: str | None  # why nothing could be checked
    duration_ms: float

    @property
    def worst(self) -> str | None:
        """Highest severity among failed findings (None when nothing failed)."""
        failed = [f.severity for f in self.findings if f.failed]
        return max(failed, key=SEVERITIES.index) if failed else None


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """Result of :func:`audit` over a fleet.

    ``counts`` maps each severity to the number of failed findings;
    ``incomplete`` lists ``(server, check, reason)`` for every check that
    could not complete (a "not checked" other than "not-applicable"); ``ok``
    is True when no failed finding is at or above ``fail_on``, every server
    was reached and nothing is incomplete — "not checked" never passes.
    ``incomplete`` and ``exit_code`` follow from the findings (computed,
    not passed): the exit code is the most severe of
    :func:`audit_failures`.
    """

    schema: str
    fail_on: str
    ok: bool
    servers: tuple[ServerAudit, ...]
    counts: dict
    duration_ms: float
    incomplete: tuple[tuple[str, str, str], ...] = dataclasses.field(init=False, default=())
    exit_code: int = dataclasses.field(init=False, default=0)

    def failures(self, at_least: str = "info") -> list[tuple[str, Finding]]:
        """(server, finding) for every failed finding at or above ``at_least``."""
        floor = SEVERITIES.index(at_least)
        return [(s.server, f) for s in self.servers for f in s.findings if f.failed and SEVERITIES.index(f.severity) >= floor]

    def __post_init__(self) -> None:
        object.__setattr__(self, "incomplete", tuple((s.server, f.id, f.reason or "") for s in self.servers for f in s.findings if f.incomplete))
        object.__setattr__(self, "exit_code", exit_code_for(audit_failures(self.servers, self.fail_on)))


# what stopped a check, as the error kind whose exit code it gets (natkit/errors.py)
_REASON_KIND = {"timeout": "timeout", "credentials-refused": "auth_refused", "refused": "allocation_refused",
                "malformed": "malformed_response", "budget": "check_failed", "error": "check_failed"}


def audit_failures(servers: tuple[ServerAudit, ...] | list[ServerAudit], fail_on: str) -> list[Failure]:
    """Everything that keeps an audit from passing, as :class:`~natkit.errors.Failure` s.

    A failed finding at or above ``fail_on`` (exit 1); a server that could
    not be reached (4); a check that could not complete, by its reason:
    unanswered requests (4), refused credentials (5), a refused allocation
    (6), malformed answers, its budget or another error (1). The audit's exit
    code is the most severe of them (:func:`natkit.errors.exit_code_for`):
    what stopped a check outranks what the other checks found.
    """
    out = [Failure.check(f.id, f.title, s.server) for s in servers for f in s.findings if f.failed and severity_at_least(f.severity, fail_on)]
    out += [Failure("unreachable", "audit", s.error, s.server) for s in servers if s.error]
    out += [Failure(_REASON_KIND.get(f.reason or "", "check_failed"), f.id, "; ".join(f.evidence[:1]) or "not checked", s.server)
            for s in servers for f in s.findings if f.incomplete]
    return out


def severity_at_least(severity: str, floor: str) -> bool:
    return SEVERITIES.index(severity) >= SEVERITIES.index(floor)


def _finding(id: str, title: str, status: str, severity: str, evidence, fix: str | None, data: dict | None, started: float,
             reason: str | None = None) -> Finding:
    if status not in STATUSES or severity not in SEVERITIES:
        raise ValueError(f"bad finding {status}/{severity}")
    if status == "not_checked":
        reason = reason or "not-applicable"
        if reason not in REASONS:
            raise ValueError(f"bad reason {reason}")
    else:
        reason = None
    return Finding(id, title, status, severity, tuple(evidence), fix, dict(data or {}), (time.monotonic() - started) * 1000.0, reason)


def _not_applicable(id: str, title: str, why: str, started: float) -> Finding:
    return _finding(id, title, "not_checked", "info", [why], None, None, started, "not-applicable")


# ---------------------------------------------------------------------------
# the audit's view of natkit.stun's TURN client (no codec, framer or request loop of its own)


class _Turn:
    """One TURN client of the audit: a :class:`natkit.stun.aio.TurnClient` plus the audit's reading of it.

    Every request gets the per-request timeout (``--timeout``, the 401
    challenge and the signed retry included); a silence raises
    :class:`StunTimeout` naming the request and that timeout, or
    :class:`AuthenticationRefused` ("credentials probably refused") when the
    server answered the 401 challenge and then went silent for credentials
    that never worked (``proven``: a list shared by the sessions of one
    credential, True once one of its requests succeeded). A malformed answer
    raises :class:`MalformedMessage`. ``replies`` keeps every final answer.
    """

    def __init__(self, client: TurnClient, timeout: float, proven: list[bool] | None = None) -> None:
        self.client = client
        self.timeout = timeout
        self.proven = proven if proven is not None else [False]
        self.replies: list[Reply] = []

    @classmethod
    async def open(cls, t: _Target, *, transport: str = "udp", username: str | None = None, password: str | None = None,
                   proven: list[bool] | None = None) -> _Turn:
        if transport == "tls":
            assert t.tls is not None and t.tls_host is not None
            addr, ssl, sni = TransportAddress(t.tls_host, t.tls.port), _insecure_context(), t.tls.host
        else:
            assert t.port is not None
            addr, ssl, sni = TransportAddress(t.host, t.port), None, None
        client = await TurnClient.open(addr, transport=transport, username=username, password=password, ssl=ssl,
                                       server_hostname=sni, timeout=t.timeout)
        return cls(client, t.timeout, proven)

    @property
    def relayed(self) -> TransportAddress | None:
        return self.client.relayed

    @property
    def challenged(self) -> bool:
        """The server answered a 401 with REALM and NONCE (so requests now go out signed)."""
        return self.client.session.key is not None

    async def call(self, pending: Pending, what: str) -> Reply:
        try:
            reply = await self.client.call(pending, timeout=self.timeout)
        except StunTimeout as exc:
            if self.challenged and not self.proven[0]:
                raise AuthenticationRefused(
                    f"credentials probably refused: the server answered the 401 challenge, then nothing within "
                    f"{self.timeout:g} s after the credentials were sent", step=what, server=exc.server,
                    hint="check the username/password or the shared secret (and the clock, for REST credentials)") from None
            raise StunTimeout(f"no answer to {what} within {self.timeout:g} s (the per-request timeout, --timeout)",
                              server=exc.server, step=what, limit=exc.limit) from None
        self.replies.append(reply)
        if reply.ok and "USERNAME" in reply.request:
            self.proven[0] = True
        return reply

    async def allocate(self, *, transport: int = PROTO_UDP, lifetime: int = 300, ipv6: bool = False) -> Reply:
        pending = self.client.session.allocate(transport=transport, lifetime=lifetime, family=FAMILY_IPV6 if ipv6 else None)
        return await self.call(pending, "IPv6 Allocate" if ipv6 else "Allocate")

    async def create_permission(self, peer: TransportAddress) -> Reply:
        return await self.call(self.client.session.create_permission(peer), f"CreatePermission toward {peer.host}")

    async def channel_bind(self, peer: TransportAddress) -> Reply:
        return await self.call(self.client.session.channel_bind(peer), f"ChannelBind toward {peer}")

    async def connect(self, peer: TransportAddress) -> Reply:
        return await self.call(self.client.session.connect(peer), f"Connect toward {peer}")

    def refusal(self, reply: Reply) -> str | None:
        """Why ``reply`` means the credentials were refused (None when it does not).

        401/441 to a signed request; an unsigned 400 to a signed request after
        the server answered the challenge, for credentials that never worked
        (pion/turn answers a wrong password so; RFC 8489 §9.2.5 lets a client
        discard it, as aioice does).
        """
        if reply.ok or "USERNAME" not in reply.request:
            return None
        if reply.code in (401, 441):
            return f"credentials refused: {reply.describe()} after the credentials were sent"
        if reply.code == 400 and reply.signed is None and self.challenged and not self.proven[0]:
            return ("credentials probably refused: the server answered the 401 challenge, then an unsigned "
                    f"{reply.describe().replace(' (unsigned)', '')} to the request carrying the credentials")
        return None

    def attempts(self) -> str:
        """The last two answers, for evidence ("401 Unauthorized → 400 (unsigned)")."""
        return " → ".join(r.describe() for r in self.replies[-2:])

    async def close(self) -> None:
        await self.client.close()


class _SizedEndpoint(UdpStunEndpoint):
    """A UDP endpoint that records the size of every datagram it receives (amplification, malformed or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.sizes.append(len(data))
        super().datagram_received(data, addr)


# ---------------------------------------------------------------------------
# the checks


@dataclasses.dataclass
class _Target:
    """What the checks of one server need: addresses, credentials, budgets."""

    name: str
    uris: list[ServerURI]
    host: str  # resolved IP of the plain (udp/tcp) endpoint
    port: int | None  # plain turn: port (udp and tcp), None when only turns: was given
    tls: ServerURI | None
    tls_host: str | None
    username: str | None
    password: str | None
    secret: str | None
    timeout: float
    flood_max: int
    flood_seconds: float
    cafile: str | None
    checks: tuple[str, ...]
    rest_user: str | None = None  # user part of minted REST usernames (None: natkit's own)
    proven: list[bool] = dataclasses.field(default_factory=lambda: [False])  # the given credentials got a success


CHECKS = ("open-relay", "peer-acl", "tcp-relay", "tls", "credentials", "quota", "software", "amplification", "admin-ports")

_FIX = {
    "open-relay": "enable authentication: use-auth-secret + static-auth-secret (REST API) or lt-cred-mech, and set realm",
    "peer-acl": "add denied-peer-ip for every special-purpose range (natkit turn config prints them), no-multicast-peers, "
                "and never allow-loopback-peers in production; keep only the server's own public address in allowed-peer-ip",
    "peer-control": "allow exactly the server's own public/relay address with allowed-peer-ip so that two clients of this server can relay to each other",
    "tcp-relay": "set no-tcp-relay unless RFC 6062 TCP allocations are needed; with TCP relay keep the denied-peer-ip list complete",
    "tls": "set no-tlsv1 and no-tlsv1_1 (coturn) and use a certificate from a CA that names the server",
    "credentials": "use-auth-secret with a long random static-auth-secret; keep the server clock in sync (NTP)",
    "quota": "set user-quota (e.g. 12) and total-quota so one credential cannot exhaust the relay ports",
    "software": "set no-software-attribute and keep coturn up to date",
    "amplification": ("set no-software-attribute, no-stun-backward-compatibility, response-origin-only-with-rfc5780 "
                      "and no-rfc5780 unless NAT discovery is needed"),
    "admin-ports": "set no-cli (or cli-ip=127.0.0.1 with a cli-password) and bind Prometheus to loopback or firewall it",
}


async def _udp_session(t: _Target, username: str | None = None, password: str | None = None, *, creds: bool = True) -> _Turn:
    """A UDP TURN client: with ``creds`` the target's credentials (unless others are given), else none."""
    own = creds and not username
    if creds:
        username, password = username or t.username, password or t.password
    return await _Turn.open(t, username=username, password=password, proven=t.proven if own else None)


async def _check_open_relay(t: _Target, ctx: dict) -> Finding:
    started = time.monotonic()
    title = "Allocate without credentials"
    sess = await _udp_session(t, creds=False)
    try:
        reply = await sess.allocate(lifetime=60)
        resp = reply.response
        ctx["auth_response"] = resp
        ev = [f"unauthenticated Allocate (REQUESTED-TRANSPORT UDP) → {reply.describe()}"]
        data: dict = {"code": reply.code, "realm": resp.get("REALM"), "nonce": bool(resp.get("NONCE"))}
        if reply.ok:
            ctx["open"] = True
            ev.append(f"relayed address {sess.relayed} granted without credentials")
            return _finding("open-relay", title, "fail", "critical", ev, _FIX["open-relay"], data, started)
        ctx["open"] = False
        realm = resp.get("REALM")
        if reply.code == 401 and realm and resp.get("NONCE"):
            ev.append(f"REALM {realm!r}, NONCE present")
            return _finding("open-relay", title, "pass", "info", ev, None, data, started)
        if reply.code == 401:
            ev.append("401 without REALM/NONCE: long-term credentials cannot work (RFC 8489 §9.2.4)")
            return _finding("open-relay", title, "fail", "low", ev, _FIX["open-relay"], data, started)
        ev.append("refused, but not with 401: the server may not be a TURN server")
        return _finding("open-relay", title, "pass", "info", ev, None, data, started)
    finally:
        await sess.close()


def _have_creds(t: _Target, ctx: dict) -> bool:
    return bool(t.username and t.password) or ctx.get("open") is True


async def _channel_echo(a: _Turn, b: _Turn, payload: bytes, timeout: float) -> tuple[bool, str]:
    """A sends ``payload`` toward B's relayed address (ChannelData on A's bound channel); B must receive it."""
    assert b.relayed is not None
    a.client.send(b.relayed, payload)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        got = await b.client.recv(left)
        if got is None:
            break
        how = f"ChannelData on 0x{got.channel:04x}" if got.channel is not None else f"Data indication from {got.peer}"
        if got.data == payload:
            return True, how
        return False, f"{how} with other bytes"
    return False, "nothing arrived"


async def _positive_control(t: _Target, family_v6: bool = False) -> tuple[bool | None, list[str]]:
    """Two allocations on this server relay to each other, both ways (RFC 8656 §9, §11, §12).

    Returns ``(True/False, evidence)``, or ``(None, evidence)`` when the
    control could not run (no allocation, no relayed address, no answer).
    """
    ev: list[str] = []
    a = await _udp_session(t)
    b = await _udp_session(t)
    try:
        ra, rb = await a.allocate(ipv6=family_v6), await b.allocate(ipv6=family_v6)
        if not (ra.ok and rb.ok):
            return None, [f"positive control: Allocate → {ra.describe()} / {rb.describe()}"]
        pa, pb = a.relayed, b.relayed
        if pa is None or pb is None:
            return None, ["positive control: an Allocate success without XOR-RELAYED-ADDRESS (RFC 8656 §7.3 requires it)"]
        ok = True
        for x, peer in ((a, pb), (b, pa)):
            r1 = await x.create_permission(peer)
            r2 = await x.channel_bind(peer)
            ev.append(f"positive control {x.relayed} → {peer}: CreatePermission {r1.describe()}, ChannelBind {r2.describe()}")
            if not (r1.ok and r2.ok):
                ok = False
        if not ok:
            return False, ev
        payload = b"natkit-audit positive control " + os.urandom(8).hex().encode()
        for x, y, label in ((a, b, "A→B"), (b, a, "B→A")):
            got, how = await _channel_echo(x, y, payload, t.timeout)
            ev.append(f"positive control data {label}: {'delivered' if got else 'NOT delivered'} ({how})")
            ok = ok and got
        return ok, ev
    except (StunTimeout, MalformedMessage, AuthenticationRefused) as exc:
        return None, [*ev, f"positive control could not run: {exc.message}"]
    finally:
        await asyncio.gather(a.close(), b.close())


# accepting one of these reaches loopback or the cloud metadata service
_CRITICAL_PEERS = frozenset({"127.0.0.1", "0.0.0.0", "169.254.169.254", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::1"})
_FAMILY_REFUSALS = (440, 442, 443)  # Address Family not Supported, Unsupported Transport, Peer Address Family Mismatch


def _peer_family(ip: str) -> int:
    """4 or 6; an IPv4-mapped IPv6 peer counts as 4 (a server sends it to the IPv4 address)."""
    addr = ipaddress.ip_address(ip)
    return 4 if addr.version == 4 or getattr(addr, "ipv4_mapped", None) is not None else 6


@dataclasses.dataclass
class _AclFamily:
    """The forbidden peers of one REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.13): IPv4 (the default) or IPv6."""

    requested: int  # 4 or 6
    peers: list[tuple[str, str]]
    state: str = "pending"  # pending, checked, not-relayable (440/442/443), not-checked
    relay: TransportAddress | None = None  # XOR-RELAYED-ADDRESS the server handed out
    reason: str | None = None  # a REASONS value when (partly) not checked
    note: str | None = None  # what the Allocate got
    results: dict = dataclasses.field(default_factory=dict)
    accepted: list[str] = dataclasses.field(default_factory=list)
    unanswered: list[str] = dataclasses.field(default_factory=list)
    lines: list[str] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return f"IPv{self.requested}"

    @property
    def relay_family(self) -> int | None:
        return None if self.relay is None else self.relay.family

    def not_checked(self, reason: str, note: str) -> None:
        self.state, self.reason, self.note = "not-checked", reason, note

    def unchecked(self) -> list[str]:
        if self.state in ("pending", "not-checked"):
            return [ip for ip, _ in self.peers]
        return list(self.unanswered) + ([ip for ip, _ in self.peers if ip not in self.results] if self.reason else [])


@dataclasses.dataclass
class _AclState:
    """What the peer-acl check has seen so far (kept when its time budget runs out)."""

    families: list[_AclFamily]
    step: str = "starting"
    control: bool | None = None
    control_ev: list[str] = dataclasses.field(default_factory=list)
    control_ran: bool = False


def _self_test_exception(t: _Target, fam: _AclFamily, ip: str) -> bool:
    """A loopback server that relays to its own loopback relay address: natkit's self-test exception.

    ``natkit turn up`` on 127.0.0.1 allows exactly that address (allowed-peer-ip +
    allow-loopback-peers) so that two clients on this host can relay to each
    other. Only clients on this host reach a loopback server, so this is no
    path past the ACL; the same acceptance on a reachable address is critical.
    """
    try:
        return fam.relay is not None and ip == fam.relay.host and ipaddress.ip_address(ip).is_loopback \
            and ipaddress.ip_address(t.host).is_loopback
    except ValueError:
        return False


async def _acl_family(t: _Target, st: _AclState, fam: _AclFamily) -> None:
    st.step = f"the {fam.name} Allocate"
    sess = await _udp_session(t)
    try:
        try:
            reply = await sess.allocate(ipv6=fam.requested == 6)
        except AuthenticationRefused as exc:
            return fam.not_checked("credentials-refused", f"{fam.name} Allocate: {exc.message}")
        except StunTimeout as exc:
            return fam.not_checked("timeout", exc.message)
        except MalformedMessage as exc:
            return fam.not_checked("malformed", f"{fam.name} Allocate: {exc.message}")
        if not reply.ok:
            if reply.code in _FAMILY_REFUSALS:  # no relay of that family: those peers are unreachable
                fam.state, fam.note = "not-relayable", f"{fam.name} Allocate → {reply.describe()}: {fam.name} peers cannot be relayed"
                for ip, _ in fam.peers:
                    fam.results[ip] = {"create_permission": reply.code, "channel_bind": reply.code}
                return None
            why = sess.refusal(reply)
            return fam.not_checked("credentials-refused" if why else "refused",
                                   f"{fam.name} Allocate with the given credentials → {why or reply.describe()} ({sess.attempts()})")
        if sess.relayed is None:
            return fam.not_checked("malformed", f"{fam.name} Allocate success without XOR-RELAYED-ADDRESS (RFC 8656 §7.3 requires it)")
        fam.state, fam.relay = "checked", sess.relayed
        fam.note = f"{fam.name} Allocate → relay {fam.relay} (IPv{fam.relay_family})"
        if fam.relay_family != fam.requested:
            fam.note += f", although {fam.name} was requested (REQUESTED-ADDRESS-FAMILY ignored)"
        await _acl_peers(sess, st, fam)
    finally:
        await sess.close()
    return None


async def _acl_peers(sess: _Turn, st: _AclState, fam: _AclFamily) -> None:
    on = f"on an IPv{fam.relay_family} relay"
    for ip, label in fam.peers:
        st.step = f"CreatePermission/ChannelBind toward {ip}"
        peer = TransportAddress(ip, 80 if ip.endswith(("169.254.169.254", "a9fe:a9fe")) else 9)
        try:
            r1 = await sess.create_permission(peer)
            r2 = await sess.channel_bind(peer)
        except (StunTimeout, MalformedMessage) as exc:
            fam.unanswered.append(ip)
            fam.reason = fam.reason or ("timeout" if isinstance(exc, StunTimeout) else "malformed")
            fam.lines.append(f"{ip} ({label}) not checked: {exc.message}")
            if len(fam.unanswered) >= 2:  # the server stopped answering: do not spend the budget on every peer
                fam.lines.append(f"stopped after {len(fam.unanswered)} unanswered peers")
                return
            continue
        fam.results[ip] = {"label": label, "create_permission": 0 if r1.ok else r1.code,
                           "channel_bind": 0 if r2.ok else r2.code, "relay_family": fam.relay_family}
        if r1.ok or r2.ok:
            fam.accepted.append(ip)
            mismatch = _peer_family(ip) != fam.relay_family
            fam.lines.append(f"ACCEPTED {ip} ({label}) {on}: CreatePermission {r1.describe()}, ChannelBind {r2.describe()}"
                             + (" (the peer's family differs from the relay's: no 443 Peer Address Family Mismatch)" if mismatch else ""))
        elif r1.code != 403 or r2.code != 403:
            fam.lines.append(f"{ip} ({label}): CreatePermission {r1.describe()}, ChannelBind {r2.describe()} (refused, not with 403)")


async def _check_peer_acl(t: _Target, ctx: dict) -> Finding:
    started = time.monotonic()
    if not _have_creds(t, ctx):
        return _not_applicable("peer-acl", _ACL_TITLE, "needs valid credentials: give --secret or --user/--password", started)
    st = _AclState([_AclFamily(v, [(ip, label) for ip, label in FORBIDDEN_PEERS if (":" in ip) == (v == 6)]) for v in (4, 6)])
    ctx.setdefault("partial", {})["peer-acl"] = lambda note: _acl_verdict(t, st, started, note)
    for fam in st.families:
        await _acl_family(t, st, fam)
    st.step = "the positive control"
    st.control_ran = True
    st.control, st.control_ev = await _positive_control(t)
    return _acl_verdict(t, st, started, None)


_ACL_TITLE = "relay toward forbidden peers (CreatePermission/ChannelBind)"


def _acl_verdict(t: _Target, st: _AclState, started: float, interrupted: str | None) -> Finding:
    """The peer-acl finding from what was seen, per address family.

    A forbidden peer accepted on either family fails the check, whatever
    else could not be checked; a family that could not be checked (no
    answer, malformed answers, refused credentials, budget) makes the check
    "not_checked" instead of a pass.
    """
    fams = st.families
    if interrupted:
        for fam in fams:
            if fam.state == "pending":
                fam.not_checked("budget", f"{fam.name}: {interrupted} during {st.step}")
            elif fam.state == "checked" and len(fam.results) + len(fam.unanswered) < len(fam.peers):
                fam.reason = fam.reason or "budget"
                fam.lines.append(f"{interrupted} during {st.step}")
    results = {ip: r for fam in fams for ip, r in fam.results.items()}
    exceptions = [ip for fam in fams for ip in fam.accepted if _self_test_exception(t, fam, ip)]
    accepted = [ip for fam in fams for ip in fam.accepted if ip not in exceptions]
    mismatch = [ip for fam in fams for ip in fam.accepted if ip not in exceptions and _peer_family(ip) != fam.relay_family]
    reachable = [ip for ip in accepted if ip not in mismatch]
    unchecked = [ip for fam in fams for ip in fam.unchecked()]
    refused403 = [ip for ip, r in results.items() if r.get("create_permission") == 403 and r.get("channel_bind") == 403]
    refused = [ip for ip, r in results.items() if r.get("create_permission") != 0 and r.get("channel_bind") != 0]
    ev = [f"{len(refused)}/{len(FORBIDDEN_PEERS)} forbidden peers refused ({len(refused403)} with 403); {len(accepted)} accepted"
          + (f" ({len(mismatch)} of them on a relay of the other family)" if mismatch else "")
          + (f"; {', '.join(exceptions)} allowed: the loopback self-test exception" if exceptions else "")
          + (f"; {len(unchecked)} not checked" if unchecked else "")]
    for fam in fams:
        ev.append(f"{fam.name} not checked: {fam.note}" if fam.state == "not-checked" else (fam.note or f"{fam.name}: {fam.state}"))
        ev += fam.lines
    for ip in exceptions:
        ev.append(f"{ip} accepted as this loopback server's own relay address: the loopback self-test exception "
                  "(natkit turn up on 127.0.0.1 allows exactly it; only clients on this host can reach the server)")
    if st.control_ran:
        ev += st.control_ev
    elif interrupted is None:
        ev.append("positive control not run")
    data = {"peers": results, "accepted": accepted, "refused_403": len(refused403), "unchecked": unchecked,
            "family_mismatch": mismatch, "self_test_exception": exceptions,
            "families": {fam.name: {"state": fam.state, "relay": str(fam.relay) if fam.relay else None, "relay_family": fam.relay_family,
                                    "reason": fam.reason, "note": fam.note} for fam in fams},
            "positive_control": st.control}
    incomplete = next((fam for fam in fams if fam.reason), None)
    if reachable:
        severity = "critical" if any(ip in _CRITICAL_PEERS for ip in reachable) else "high"
        return _finding("peer-acl", _ACL_TITLE, "fail", severity, ev, _FIX["peer-acl"], data, started)
    if st.control is False:
        ev.append("every forbidden peer was refused, but so was the allowed peer: the refusals may not come from the ACL")
        return _finding("peer-acl", _ACL_TITLE, "fail", "medium", ev, _FIX["peer-control"], data, started)
    if incomplete is not None or interrupted:
        reason = incomplete.reason if incomplete is not None else "budget"
        if interrupted and not st.control_ran:
            ev.append(f"positive control not run: {interrupted}")
        return _finding("peer-acl", _ACL_TITLE, "not_checked", "info", ev, None, data, started, reason)
    if mismatch:
        ev.append("peers of the other family were accepted on this relay: unreachable through it, but the server does not check "
                  "XOR-PEER-ADDRESS against the relay's family (RFC 8656 §9.1: 443)")
        return _finding("peer-acl", _ACL_TITLE, "fail", "low", ev, _FIX["peer-acl"], data, started)
    if st.control is None:
        ev.append("positive control could not allocate: the refusals are not proven to come from the ACL")
    return _finding("peer-acl", _ACL_TITLE, "pass", "info", ev, None, data, started)


async def _check_tcp_relay(t: _Target, ctx: dict) -> Finding:
    started = time.monotonic()
    title = "TCP relay (RFC 6062) and CONNECT toward forbidden peers"
    if not _have_creds(t, ctx):
        return _not_applicable("tcp-relay", title, "needs valid credentials: give --secret or --user/--password", started)
    transport = "tcp" if t.port is not None else "tls"
    via = f"TCP {t.host}:{t.port}" if transport == "tcp" else f"TLS {t.tls_host}:{t.tls.port if t.tls else '?'}"
    try:
        sess = await _Turn.open(t, transport=transport, username=t.username, password=t.password, proven=t.proven)
    except StunTimeout as exc:
        raise StunTimeout(f"no {transport.upper()} connection within {t.timeout:g} s (the per-request timeout, --timeout)",
                          server=exc.server, step="connect", limit=exc.limit) from None
    except NatkitError as exc:
        if transport == "tcp" and exc.message.startswith("connection refused"):
            return _finding("tcp-relay", title, "pass", "info", [f"{via}: connection refused: no TURN over TCP here, so no RFC 6062 TCP allocation"],
                            None, {"allocate": None, "connect": {}, "tcp_listener": False}, started)
        raise
    try:
        reply = await sess.allocate(transport=PROTO_TCP)
        ev = [f"TCP Allocate over {via} → {reply.describe()}"]
        data: dict = {"allocate": 0 if reply.ok else reply.code, "connect": {}}
        if not reply.ok:
            if reply.code == 442:
                return _finding("tcp-relay", title, "pass", "info", [*ev, "TCP relay is disabled"], None, data, started)
            why = sess.refusal(reply)
            if why:
                return _finding("tcp-relay", title, "not_checked", "info", [*ev, why], None, data, started, "credentials-refused")
            return _finding("tcp-relay", title, "pass", "info", [*ev, "TCP allocation refused"], None, data, started)
        accepted = []
        for ip, port, label in FORBIDDEN_CONNECT:
            r = await sess.connect(TransportAddress(ip, port))
            data["connect"][f"{ip}:{port}"] = 0 if r.ok else r.code
            ev.append(f"CONNECT {ip}:{port} ({label}) → {r.describe()}")
            # 403 is the ACL; 443 cannot reach that family; anything else means the server tried
            if r.ok or r.code not in (403, 443):
                accepted.append(f"{ip}:{port}")
        if accepted:
            ev.append("the server attempted TCP connections toward: " + ", ".join(accepted) + " (447/500 mean it tried and failed)")
            return _finding("tcp-relay", title, "fail", "critical", ev, _FIX["tcp-relay"], data, started)
        ev.append("TCP relay is enabled (every forbidden CONNECT refused with 403)")
        return _finding("tcp-relay", title, "fail", "low", ev, _FIX["tcp-relay"], data, started)
    finally:
        await sess.close()


def _insecure_context(version: ssl_module.TLSVersion | None = None) -> ssl_module.SSLContext:
    ctx = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl_module.CERT_NONE
    if version is not None:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let OpenSSL 3 offer TLS 1.0/1.1 at all
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


async def _handshake(host: str, port: int, ctx: ssl_module.SSLContext, sni: str | None, timeout: float) -> tuple[str | None, bytes | None, str | None]:
    """(negotiated version, peer certificate DER, error)."""
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx, server_hostname=sni), timeout)
    except TimeoutError:
        return None, None, "handshake did not complete"
    except ssl_module.SSLCertVerificationError as exc:
        return None, None, f"certificate not trusted: {exc.verify_message}"
    except (ssl_module.SSLError, OSError) as exc:
        return None, None, str(getattr(exc, "reason", None) or exc)
    obj = writer.get_extra_info("ssl_object")
    version, der = obj.version(), obj.getpeercert(binary_form=True)
    writer.close()
    return version, der, None


async def _check_tls(t: _Target, ctx: dict) -> Finding:
    started = time.monotonic()
    title = "TLS versions and certificate"
    if t.tls is None:
        return _not_applicable("tls", title, "no turns: URI given for this server", started)
    import warnings

    from .tls import cert_info

    host, port, sni = t.tls_host or t.host, t.tls.port, t.tls.host
    try:
        ipaddress.ip_address(sni)
        sni_name = None
    except ValueError:
        sni_name = sni
    ev: list[str] = []
    data: dict = {"versions": {}}
    sev = "info"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        versions = [("TLSv1", ssl_module.TLSVersion.TLSv1), ("TLSv1.1", ssl_module.TLSVersion.TLSv1_1),
                    ("TLSv1.2", ssl_module.TLSVersion.TLSv1_2), ("TLSv1.3", ssl_module.TLSVersion.TLSv1_3)]
    der = None
    for label, v in versions:
        # a server refusing an old version often just stops answering: a short budget
        got, cert_der, err = await _handshake(host, port, _insecure_context(v), sni_name, min(t.timeout, 1.5))
        data["versions"][label] = got is not None
        ev.append(f"{label}: {'accepted' if got else 'refused (' + (err or '') + ')'}")
        if got and label in ("TLSv1", "TLSv1.1"):
            sev = "medium"
        der = der or cert_der
    weak = [v for v in ("TLSv1", "TLSv1.1") if data["versions"][v]]
    if not data["versions"]["TLSv1.2"] and not data["versions"]["TLSv1.3"]:
        ev.append("neither TLS 1.2 nor 1.3 completed a handshake")
        sev = max(sev, "medium", key=SEVERITIES.index)
    if der is not None:
        info = cert_info(der)
        data["certificate"] = to_dict(info)
        ev.append(f"certificate subject {info.subject}, issuer {info.issuer}, names {', '.join(info.dns_names + info.ip_addresses) or '(none)'}, "
                  f"{info.key}, expires {info.not_after} ({info.days_left:.0f} days)")
        # chain: a verified handshake with the system store or --ca
        vctx = ssl_module.create_default_context(cafile=t.cafile)
        vctx.check_hostname = False
        vgot, _, verr = await _handshake(host, port, vctx, sni_name, min(t.timeout, 2.0))
        data["chain_verified"] = vgot is not None
        data["name_matches"] = info.matches(sni)
        ev.append("chain verified against " + (t.cafile or "the system CA store") if vgot else f"chain NOT verified: {verr}")
        if not vgot:
            sev = max(sev, "medium", key=SEVERITIES.index)
            if info.self_signed:
                ev.append("self-signed certificate")
        if not info.matches(sni):
            ev.append(f"certificate does not name {sni}")
            sev = max(sev, "medium", key=SEVERITIES.index)
        if info.days_left < 0:
            sev = "high"
            ev.append("certificate EXPIRED")
        elif info.days_left < 14:
            sev = max(sev, "medium", key=SEVERITIES.index)
            ev.append("certificate expires within 14 days")
    status = "fail" if sev != "info" else "pass"
    if weak:
        ev.insert(0, "accepts " + " and ".join(weak))
    return _finding("tls", title, status, sev, ev, _FIX["tls"] if status == "fail" else None, data, started)


def to_dict(obj) -> dict:
    from .model import to_jsonable

    return to_jsonable(obj)


async def _check_credentials(t: _Target, ctx: dict) -> Finding:
    started = time.monotonic()
    title = "expired and forged REST credentials refused"
    if ctx.get("open"):
        return _finding("credentials", title, "fail", "critical", ["the server grants allocations without any credential (see open-relay)"],
                        _FIX["credentials"], None, started)
    if not t.secret:
        return _not_applicable("credentials", title, "needs the REST shared secret (--secret) to mint an expired credential", started)
    from .credentials import mint, new_secret

    ev: list[str] = []
    data: dict = {}
    bad = []
    user = "natkit-audit" if t.rest_user is None else t.rest_user
    cases = (("expired", mint(t.secret, user, -3600)), ("wrong secret", mint(new_secret(), user, 600)))
    leaked = False
    for label, cred in cases:
        sess = await _udp_session(t, cred.username, cred.password, creds=False)
        try:
            try:
                reply = await sess.allocate(lifetime=60)
            except AuthenticationRefused:  # the challenge was answered, the credential met silence: refused
                data[label] = None
                ev.append(f"{label} credential {cred.username} → no answer after the 401 challenge (refused)")
                continue
            data[label] = 0 if reply.ok else reply.code
            ev.append(f"{label} credential {cred.username} → {reply.describe()}")
            if reply.ok:
                bad.append(label)
            blob = repr([r.response.attributes for r in sess.replies])
            if t.secret in blob or cred.password in blob:
                leaked = True
        finally:
            await sess.close()
    if leaked:
        ev.append("a response echoes the secret or the password")
    if bad or leaked:
        return _finding("credentials", title, "fail", "critical" if "wrong secret" in bad else "high", ev, _FIX["credentials"], data, started)
    ev.append("no response echoes the secret or the password; both refused before any allocation")
    return _finding("credentials", title, "pass", "info", ev, None, data, started)


async def _check_quota(t: _Target, ctx: dict) -> Finding:
    started = time.monotonic()
    title = f"allocation flood on one credential (at most {t.flood_max} allocations, {t.flood_seconds:g} s)"
    if not _have_creds(t, ctx):
        return _not_applicable("quota", title, "needs valid credentials: give --secret or --user/--password", started)
    # coturn frees a released allocation's quota on its next timer tick (~1 s):
    # a credential of its own keeps earlier checks' allocations out of the count
    username, password = t.username, t.password
    if t.secret:
        from .credentials import mint

        # another username: "-quota" suffix, or (with a given user part) another expiry
        cred = mint(t.secret, "natkit-audit-quota" if t.rest_user is None else t.rest_user, 901)
        username, password = cred.username, cred.password
    else:
        await asyncio.sleep(1.5)
    sessions: list[_Turn] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + t.flood_seconds
    seen = {"granted": 0}
    ctx.setdefault("partial", {})["quota"] = lambda note: _finding(
        "quota", title, "not_checked", "info", [f"{note} after {seen['granted']} allocations granted without a 486"], None,
        {"granted": seen["granted"], "stopped_by": None, "max": t.flood_max}, started, "budget")
    stopped = None
    granted = 0
    try:
        while granted < t.flood_max and loop.time() < deadline:
            sess = await _udp_session(t, username, password)
            sessions.append(sess)
            try:
                reply = await sess.allocate(lifetime=60)
            except (StunTimeout, MalformedMessage, AuthenticationRefused) as exc:
                data = {"granted": granted, "stopped_by": None, "max": t.flood_max}
                reason = "timeout" if isinstance(exc, StunTimeout) else ("malformed" if isinstance(exc, MalformedMessage) else "credentials-refused")
                return _finding("quota", title, "not_checked", "info", [f"Allocate {granted + 1}: {exc.message}"], None, data, started, reason)
            if not reply.ok:
                stopped = reply
                break
            granted += 1
            seen["granted"] = granted
    finally:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    data = {"granted": granted, "stopped_by": stopped.code if stopped else None, "max": t.flood_max}
    if stopped is not None and stopped.code == 486:
        return _finding("quota", title, "pass", "info", [f"486 Allocation Quota Reached after {granted} allocations"], None, data, started)
    if stopped is not None and stopped.code == 508:
        return _finding("quota", title, "fail", "low",
                        [f"508 Insufficient Capacity after {granted} allocations: the server-wide limit, not a per-user quota, stopped the flood"],
                        _FIX["quota"], data, started)
    if stopped is not None:
        why = sessions[-1].refusal(stopped) if granted == 0 else None
        return _finding("quota", title, "not_checked", "info", [f"Allocate {granted + 1} → {why or stopped.describe()}"], None, data, started,
                        "credentials-refused" if why else "refused")
    return _finding("quota", title, "fail", "medium", [f"{granted} concurrent allocations granted to one credential without a 486 (flood stopped by natkit)"],
                    _FIX["quota"], data, started)


# a version number of at most 9 digits a part: linear on any input (a SOFTWARE
# value is attacker-controlled; RFC 8489 §14.14 caps it at 763 bytes)
_VERSION_RE = re.compile(r"(?i)coturn[- /]?(\d{1,9}(?:\.\d{1,9}){1,5})")
SOFTWARE_MAX = 763  # bytes, RFC 8489 §14.14


def coturn_cves(software: str) -> list[str]:
    """Known CVEs fixed after the coturn version named in a SOFTWARE value ("Coturn-4.5.1.1 'dan Eider'").

    Only the first :data:`SOFTWARE_MAX` characters are read; linear time on any input.
    """
    m = _VERSION_RE.search((software or "")[:SOFTWARE_MAX])
    if not m:
        return []
    version = tuple(int(x) for x in m.group(1).split("."))
    return [f"{cve} ({summary}; fixed in {'.'.join(map(str, fixed))})" for fixed, cve, summary in COTURN_CVES if version < fixed]


def _clip(value: str, n: int = 120) -> str:
    return repr(value) if len(value) <= n else f"{value[:n]!r}… ({len(value)} characters)"


async def _check_software(t: _Target, ctx: dict) -> Finding:
    started = time.monotonic()
    title = "SOFTWARE attribute (version leak)"
    seen = {}
    binding = ctx.get("binding")
    if binding is not None and "SOFTWARE" in binding:
        seen["Binding response"] = binding["SOFTWARE"]
    auth = ctx.get("auth_response")
    if auth is not None and "SOFTWARE" in auth:
        seen["Allocate response"] = auth["SOFTWARE"]
    if not seen and binding is None:  # the Binding answer (if any) was not readable
        bad = ctx.get("binding_malformed")
        if bad is not None and bad.attribute == "SOFTWARE":  # what it says is unreadable, that it says too much is not
            return _finding("software", title, "fail", "low", [f"Binding: {bad.message}",
                            f"a SOFTWARE value beyond RFC 8489 §14.14 (at most {SOFTWARE_MAX} bytes of UTF-8)"],
                            _FIX["software"], {"software": None, "malformed": bad.message}, started)
        why = ctx.get("binding_error") or "no response to inspect"
        return _finding("software", title, "not_checked", "info", [why], None, None, started, ctx.get("binding_reason", "error"))
    if not seen:
        return _finding("software", title, "pass", "info", ["no SOFTWARE attribute in Binding and Allocate responses"], None, {"software": None}, started)
    value = next(iter(seen.values()))
    cves = coturn_cves(value)
    ev = [f"{where}: SOFTWARE {_clip(v)}" for where, v in seen.items()]
    ev += [f"known vulnerability for this version: {c}" for c in cves]
    has_version = re.search(r"\d\.\d", value) is not None  # same answer as \d+\.\d+, in linear time
    sev = "high" if cves else ("low" if has_version else "info")
    return _finding("software", title, "fail" if sev != "info" else "pass", sev, ev, _FIX["software"] if sev != "info" else None,
                    {"software": value, "cves": cves}, started)


# amplification thresholds (response bytes / request bytes)
AMPLIFICATION_LOW = 3.0  # above: "low"
AMPLIFICATION_MEDIUM = 5.0  # above: "medium"
AMPLIFICATION_HIGH = 20.0  # above: "high" (a reflector worth abusing)


async def _check_amplification(t: _Target, ctx: dict) -> Finding:
    started = time.monotonic()
    title = "reflection amplification (unauthenticated UDP)"
    ev, data = [], {}
    ratios = []
    binding = ctx.get("binding")
    size = ctx.get("binding_size")  # bytes received, whether they parsed or not
    if size:
        r = size / ctx["binding_request_size"]
        ratios.append(r)
        data["binding"] = {"request": ctx["binding_request_size"], "response": size, "ratio": r}
        attrs = ", ".join(binding.names()) if binding is not None else "malformed"
        ev.append(f"Binding: {ctx['binding_request_size']} B → {size} B (×{r:.2f}; {attrs})")
    auth = ctx.get("auth_response")
    if auth is not None and auth.raw and ctx.get("auth_request_size"):
        r = len(auth.raw) / ctx["auth_request_size"]
        ratios.append(r)
        data["allocate"] = {"request": ctx["auth_request_size"], "response": len(auth.raw), "ratio": r}
        ev.append(f"unauthenticated Allocate: {ctx['auth_request_size']} B → {len(auth.raw)} B (×{r:.2f})")
    if not ratios:
        why = ctx.get("binding_error") or "no UDP answer to measure"
        return _finding("amplification", title, "not_checked", "info", [why], None, None, started, ctx.get("binding_reason", "error"))
    worst = max(ratios)
    data["worst"] = worst
    sev = "info" if worst <= AMPLIFICATION_LOW else ("low" if worst <= AMPLIFICATION_MEDIUM else ("medium" if worst <= AMPLIFICATION_HIGH else "high"))
    return _finding("amplification", title, "pass" if sev == "info" else "fail", sev, ev, _FIX["amplification"] if sev != "info" else None, data, started)


async def _check_admin_ports(t: _Target, ctx: dict) -> Finding:
    started = time.monotonic()
    title = "admin interfaces reachable (telnet CLI, Prometheus)"
    host = t.host
    ev, data, open_ = [], {}, []
    for port, label in ADMIN_PORTS:
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(host, port), min(1.0, t.timeout))
            w.close()
            data[str(port)] = True
            open_.append(port)
            ev.append(f"TCP {host}:{port} ({label}) ACCEPTS connections")
        except (TimeoutError, OSError) as exc:
            data[str(port)] = False
            ev.append(f"TCP {host}:{port} ({label}): {'refused' if isinstance(exc, ConnectionRefusedError) else 'no answer'}")
    if not open_:
        return _finding("admin-ports", title, "pass", "info", ev, None, data, started)
    sev = "high" if 5766 in open_ and not ipaddress.ip_address(host).is_loopback else "medium"
    return _finding("admin-ports", title, "fail", sev, ev, _FIX["admin-ports"], data, started)


# ---------------------------------------------------------------------------
# orchestration

_CHECK_FUNCS = {
    "open-relay": _check_open_relay,
    "peer-acl": _check_peer_acl,
    "tcp-relay": _check_tcp_relay,
    "tls": _check_tls,
    "credentials": _check_credentials,
    "quota": _check_quota,
    "software": _check_software,
    "amplification": _check_amplification,
    "admin-ports": _check_admin_ports,
}
_NEEDS_UDP = {"open-relay", "peer-acl", "credentials", "quota", "amplification"}


def _group(uris: list[str]) -> list[tuple[str, list[ServerURI]]]:
    groups: dict[str, list[ServerURI]] = {}
    for text in uris:
        u = parse_turn_uri(text)
        groups.setdefault(u.host, []).append(u)
    return list(groups.items())


async def _binding(t: _Target, ctx: dict) -> str | None:
    """A Binding over UDP (reachability, SOFTWARE, amplification); the error that makes the server unreachable, else None.

    A malformed answer counts as an answer: ``ctx`` records it and the other checks run.
    """
    from .errors import ServerUnreachable

    assert t.port is not None
    addr = TransportAddress(t.host, t.port)
    req = binding_request()
    ctx["binding_request_size"] = len(req.encode())
    try:  # a connected socket: no route or an ICMP error shows at once
        ep = await _SizedEndpoint.open("::" if addr.family == 6 else "0.0.0.0", remote=addr)
    except NatkitError as exc:
        return f"cannot reach {addr} over UDP: {exc.message}"
    assert isinstance(ep, _SizedEndpoint)
    try:
        ctx["binding"] = (await ep.request(req, addr, timeout=t.timeout)).message
    except MalformedMessage as exc:
        ctx["binding_error"], ctx["binding_reason"], ctx["binding_malformed"] = f"Binding: {exc.message}", "malformed", exc
    except StunTimeout:
        return f"no answer to a STUN Binding over UDP within {t.timeout:g} s from {addr}"
    except ServerUnreachable as exc:
        return f"UDP {addr}: {exc.message}"
    finally:
        ctx["binding_size"] = ep.sizes[0] if ep.sizes else None
        ep.close()
    return None


async def _audit_server(host: str, uris: list[ServerURI], opts: dict) -> ServerAudit:
    from .stun.aio import resolve

    started = time.monotonic()
    plain = next((u for u in uris if not u.secure), None)
    tls = next((u for u in uris if u.secure), None)
    names = tuple(str(u) for u in uris)
    first = plain or tls
    assert first is not None  # _group gives at least one URI per host
    try:
        addr = await resolve(host, first.port, timeout=opts["timeout"])
    except NatkitError as exc:
        return ServerAudit(host, names, False, (), exc.one_line(), (time.monotonic() - started) * 1000.0)
    username, password = opts.get("username"), opts.get("password")
    if opts.get("secret") and not username:
        from .credentials import mint

        rest_user = opts.get("rest_user")
        cred = mint(opts["secret"], "natkit-audit" if rest_user is None else rest_user, 900)
        username, password = cred.username, cred.password
    t = _Target(host, uris, addr.host, plain.port if plain else None, tls, addr.host if tls else None, username, password,
                opts.get("secret"), opts["timeout"], opts["flood_max"], opts["flood_seconds"], opts.get("cafile"), opts["checks"],
                opts.get("rest_user"))
    ctx: dict = {}
    reachable: bool | None = None
    if plain is not None:
        error = await _binding(t, ctx)
        if error is not None:
            return ServerAudit(host, names, False, (), error, (time.monotonic() - started) * 1000.0)
        reachable = True
    findings: list[Finding] = []
    for check in CHECKS:
        if check not in t.checks:
            continue
        if check in _NEEDS_UDP and plain is None:
            findings.append(_not_applicable(check, check, "needs a turn: (UDP) URI for this server", time.monotonic()))
            continue
        findings.append(await _run_check(check, t, ctx, opts["check_timeout"]))
    return ServerAudit(host, names, reachable, tuple(findings), None, (time.monotonic() - started) * 1000.0)


async def _run_check(check: str, t: _Target, ctx: dict, budget: float) -> Finding:
    """One check within its time budget; what stopped it becomes a not_checked finding naming the cause.

    The per-request timeout (``--timeout``) and the check's budget
    (``--check-timeout``) are told apart; a check that registered a partial
    verdict (peer-acl, quota) keeps what it saw when the budget runs out.
    """
    c0 = time.monotonic()
    try:
        f = await asyncio.wait_for(_CHECK_FUNCS[check](t, ctx), budget)
        if check == "open-relay" and ctx.get("auth_response") is not None:
            ctx["auth_request_size"] = _first_allocate_size(t)
        return f
    except StunTimeout as exc:
        return _finding(check, check, "not_checked", "info", [exc.message], None, None, c0, "timeout")
    except MalformedMessage as exc:
        return _finding(check, check, "not_checked", "info", [exc.message], None, None, c0, "malformed")
    except AuthenticationRefused as exc:
        return _finding(check, check, "not_checked", "info", [exc.message], None, None, c0, "credentials-refused")
    except TimeoutError:  # only wait_for above raises it: the check's budget
        note = f"the check's time budget ({budget:g} s, --check-timeout) ran out"
        partial = ctx.get("partial", {}).get(check)
        if partial is not None:
            return partial(note)
        return _finding(check, check, "not_checked", "info", [note], None, None, c0, "budget")
    except (OSError, ssl_module.SSLError, NatkitError) as exc:
        return _finding(check, check, "not_checked", "info", [f"{exc.__class__.__name__}: {exc}"], None, None, c0, "error")


def _first_allocate_size(t: _Target) -> int:
    """Size of the unauthenticated Allocate the open-relay check sends (LIFETIME + REQUESTED-TRANSPORT)."""
    return len(TurnSession().allocate(lifetime=60).data)


async def audit_async(
    servers: list[str],
    *,
    secret: str | None = None,
    rest_user: str | None = None,
    username: str | None = None,
    password: str | None = None,
    checks: list[str] | tuple[str, ...] | None = None,
    fail_on: str = "high",
    timeout: float = 2.0,
    check_timeout: float = 30.0,
    flood_max: int = 64,
    flood_seconds: float = 10.0,
    cafile: str | None = None,
) -> AuditReport:
    """See :func:`audit`."""
    if not servers:
        raise UsageError("no server given", hint="natkit turn audit turn:HOST[:PORT] [turns:HOST:PORT]")
    if fail_on not in SEVERITIES:
        raise UsageError(f"unknown severity {fail_on!r}", hint="use " + ", ".join(SEVERITIES))
    if (username is None) != (password is None):
        raise UsageError("give both --user and --password")
    checks = tuple(checks) if checks else CHECKS
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise UsageError(f"unknown check(s): {', '.join(unknown)}", hint="choose from " + ", ".join(CHECKS))
    if not 1 <= flood_max <= 10_000:
        raise UsageError(f"flood count must be 1..10000, got {flood_max}")
    for label, value in (("--timeout", timeout), ("--check-timeout", check_timeout), ("--flood-seconds", flood_seconds)):
        if not (math.isfinite(value) and 0 < value <= 3600):
            raise UsageError(f"{label} must be a number of seconds in (0, 3600], got {value!r}")
    groups = _group(servers)
    opts = {"secret": secret, "rest_user": rest_user, "username": username, "password": password, "checks": checks, "timeout": timeout,
            "check_timeout": check_timeout, "flood_max": flood_max, "flood_seconds": flood_seconds, "cafile": cafile}
    started = time.monotonic()
    results = await asyncio.gather(*(_audit_server(h, us, opts) for h, us in groups))
    counts = {s: 0 for s in SEVERITIES}
    for r in results:
        for f in r.findings:
            if f.failed:
                counts[f.severity] += 1
    ok = not audit_failures(results, fail_on)
    return AuditReport(SCHEMA, fail_on, ok, tuple(results), counts, (time.monotonic() - started) * 1000.0)


def audit(servers: list[str], **kwargs) -> AuditReport:
    """Audit one or several TURN servers concurrently; return one :class:`AuditReport`.

    ``servers``: ``turn:host[:port]`` and ``turns:host[:port]`` URIs; URIs
    with the same host are one server (UDP checks use the ``turn:`` port, the
    TLS check the ``turns:`` port). Credentials: ``secret`` (REST shared
    secret: natkit mints a valid, an expired and a forged credential;
    ``rest_user`` is their user part, "" for a bare ``<expiry>`` username,
    None for natkit's own) or ``username``/``password``. ``checks``: a
    subset of :data:`CHECKS`. ``fail_on``: the severity at or above which a
    failed finding makes ``ok`` False. ``timeout``: seconds per transaction
    (the per-request timeout); ``check_timeout``: seconds per check; the
    quota flood stops after ``flood_max`` allocations or ``flood_seconds``.
    ``cafile``: CA bundle for the TLS chain check.

    A server that does not answer a Binding gets ``error`` and no findings
    (and makes ``ok`` False); so does any check that could not complete
    (``report.incomplete``). Raises :class:`UsageError` for bad input.
    """
    return asyncio.run(audit_async(servers, **kwargs))


def junit_xml(report: AuditReport) -> str:
    """The report as JUnit XML: one testsuite per server, one testcase per check.

    A failed finding is a ``<failure>`` (type = severity), a not-checked one
    ``<skipped>``; a server that could not be reached is an ``<error>``.
    """
    from xml.etree import ElementTree as ET

    root = ET.Element("testsuites", name="natkit turn audit", time=f"{report.duration_ms / 1000:.3f}")
    for s in report.servers:
        failures = sum(1 for f in s.findings if f.failed)
        skipped = sum(1 for f in s.findings if f.status == "not_checked")
        suite = ET.SubElement(root, "testsuite", name=s.server, tests=str(max(1, len(s.findings))), failures=str(failures),
                              errors="1" if s.error else "0", skipped=str(skipped), time=f"{s.duration_ms / 1000:.3f}")
        if s.error:
            case = ET.SubElement(suite, "testcase", classname=f"natkit.audit.{s.server}", name="reachable")
            ET.SubElement(case, "error", message=s.error)
        for f in s.findings:
            case = ET.SubElement(suite, "testcase", classname=f"natkit.audit.{s.server}", name=f.id, time=f"{f.duration_ms / 1000:.3f}")
            text = "\n".join(f.evidence) + (f"\nfix: {f.fix}" if f.fix else "")
            if f.failed:
                el = ET.SubElement(case, "failure", message=f"[{f.severity}] {f.title}", type=f.severity)
                el.text = text
            elif f.status == "not_checked":
                ET.SubElement(case, "skipped", message="; ".join(f.evidence))
            else:
                ET.SubElement(case, "system-out").text = text
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
