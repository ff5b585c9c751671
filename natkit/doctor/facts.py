"""What the doctor observed, as plain values (pure types, no I/O).

:mod:`natkit.doctor.observe` fills a :class:`Facts`; :mod:`natkit.doctor.diagnose`
turns it into checks and findings without touching a socket, so every rule
is unit-tested on hand-made facts.
"""

from __future__ import annotations

import dataclasses

from ..model import TransportAddress


@dataclasses.dataclass(frozen=True)
class Target:
    """One place to talk to: ``uri`` as given (or derived), ``transport`` udp/tcp/tls,
    ``addr`` the resolved transport address (None: did not resolve), ``given``:
    the user named it (else a fallback the doctor tries on its own)."""

    uri: str
    transport: str
    host: str
    addr: TransportAddress | None
    given: bool

    @property
    def label(self) -> str:
        return f"{self.uri} ({self.transport})"


@dataclasses.dataclass(frozen=True)
class Reach:
    """A STUN Binding over one target. ``error``: None, "timeout", "refused",
    "icmp" (port unreachable), "tls", "unresolved", "malformed" or "error";
    ``detail``: the exact response or error text."""

    target: Target
    ok: bool
    error: str | None
    detail: str
    mapped: TransportAddress | None = None
    rtt_ms: float | None = None


@dataclasses.dataclass(frozen=True)
class TlsFacts:
    """The certificate a ``turns:`` listener presents. ``verified``: the chain and
    name verified (None: no handshake); ``verify_code``/``verify_message``:
    OpenSSL's reason (10 expired, 18 self-signed, 62/64 name mismatch, ...);
    ``handshake_error``: a failure that is not about the certificate;
    ``cert``: :class:`natkit.tls.CertInfo` as a dict (None: no certificate)."""

    target: Target
    verified: bool | None
    verify_code: int | None = None
    verify_message: str | None = None
    handshake_error: str | None = None
    cert: dict | None = None
    hostname: str = ""
    version: str | None = None


@dataclasses.dataclass(frozen=True)
class ClockProbe:
    """One REST credential tried while looking for the server's clock: its lifetime in
    seconds from now and whether the server took it."""

    ttl: int
    accepted: bool


@dataclasses.dataclass(frozen=True)
class AuthFacts:
    """The authenticated Allocate. ``mode``: "rest", "long-term" or "none";
    ``outcome``: "ok", "refused", "no-auth" (an unsigned Allocate succeeded),
    "timeout" (no answer to the signed request) or "not-reached";
    ``response``: the exact final answer; ``challenged``: a 401 with REALM and
    NONCE came first; ``expiry``: the credential's timestamp (unix seconds,
    REST usernames), ``now`` this machine's clock; ``probes``: REST
    credentials with other lifetimes (clock-skew search);
    ``server_ahead_s``: (low, high) bounds in seconds on how far the
    server's clock runs ahead (None: not measured)."""

    mode: str
    target: Target | None
    outcome: str
    response: str
    code: int | None = None
    challenged: bool = False
    expiry: int | None = None
    now: float = 0.0
    probes: tuple[ClockProbe, ...] = ()
    server_ahead_s: tuple[float, float] | None = None


@dataclasses.dataclass(frozen=True)
class Alloc:
    """One Allocate. ``role``: "A"/"B" (the primary pair), "tcp", "tls" (fallback
    transports), "v6" (REQUESTED-ADDRESS-FAMILY IPv6); ``family`` requested
    (1 IPv4, 2 IPv6); ``response``: the exact answer."""

    role: str
    target: Target
    family: int
    ok: bool
    response: str
    code: int | None = None
    relayed: TransportAddress | None = None
    mapped: TransportAddress | None = None
    lifetime: int | None = None


@dataclasses.dataclass(frozen=True)
class Perm:
    """CreatePermission on allocation ``alloc`` toward ``peer``; ``why``: "other
    allocation", "this client" or "--peer"."""

    alloc: str
    peer: TransportAddress
    why: str
    ok: bool
    response: str
    code: int | None = None


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One data leg. ``leg``: "A→B", "B→A", "peer→relay", "relay→peer",
    "tcp→A", "A→tcp" ...; ``sent_to``: where the bytes were addressed;
    ``delivered``: they arrived within the wait; ``source``: the address they
    came from (for the relay→peer leg: where relay traffic really leaves)."""

    leg: str
    sent_to: TransportAddress
    delivered: bool
    source: TransportAddress | None = None
    ms: float | None = None


@dataclasses.dataclass(frozen=True)
class ChannelFacts:
    """What natkit's relay-check post-mortem (:func:`natkit.relay_postmortem.examine_relay`) saw on two
    fresh allocations: Send indications relayed, each ChannelBind answer ("signed success",
    "unsigned success", "403 Forbidden", "no answer" ...), a signed confirmation, ChannelData relayed;
    ``lines`` its evidence, ``hint`` its advice."""

    permission: bool | None
    send_relayed: bool | None
    channel_bind: tuple[str, ...]
    channel_confirmed: bool
    channeldata_relayed: bool | None
    lines: tuple[str, ...]
    hint: str


@dataclasses.dataclass(frozen=True)
class Facts:
    """Everything observed in one run; ``timings`` maps a step id to milliseconds."""

    servers: tuple[str, ...]
    server_ips: tuple[str, ...]
    targets: tuple[Target, ...]
    reach: tuple[Reach, ...]
    tls: tuple[TlsFacts, ...] = ()
    auth: AuthFacts | None = None
    allocs: tuple[Alloc, ...] = ()
    perms: tuple[Perm, ...] = ()
    data: tuple[Delivery, ...] = ()
    peers: tuple[TransportAddress, ...] = ()
    channel: ChannelFacts | None = None
    wanted_ipv6: bool = False
    timings: dict = dataclasses.field(default_factory=dict)

    def alloc(self, role: str) -> Alloc | None:
        return next((a for a in self.allocs if a.role == role), None)

    def delivery(self, leg: str) -> Delivery | None:
        return next((d for d in self.data if d.leg == leg), None)
