"""The cause catalogue of ``natkit doctor`` (pure data).

Every finding the doctor reports names one :class:`Cause`: an id, what it
means, whether calls fail (``fail``) or merely lose something (``warn``),
the documented exit code (:mod:`natkit.errors`) and the fix, in coturn's
own option names. :data:`PRIORITY` orders the causes: the report's verdict
is the first failing cause in that order (the one to fix first), its exit
code the report's. ``docs/doctor.md`` is generated from this table's
content (a test keeps them in step).
"""

from __future__ import annotations

import dataclasses

from ..errors import (
    EXIT_ALLOCATION_REFUSED,
    EXIT_AUTH_REFUSED,
    EXIT_CHECK_FAILED,
    EXIT_NO_CONNECTIVITY,
    EXIT_OK,
    EXIT_UNREACHABLE,
)


@dataclasses.dataclass(frozen=True)
class Cause:
    """One named cause. ``severity``: "fail" (calls through this server fail for
    some or all clients) or "warn" (calls work; a fallback or margin is lost)."""

    id: str
    title: str
    severity: str
    exit_code: int
    fix: str
    meaning: str


_C = Cause
CAUSES: dict[str, Cause] = {c.id: c for c in (
    _C("healthy", "healthy", "pass", EXIT_OK, "",
       "Binding, authentication, allocation, permissions and data through the relay both ways all work."),
    _C("server-unreachable", "no answer on any transport", "fail", EXIT_UNREACHABLE,
       "check the address and DNS; is turnserver running? allow UDP and TCP 3478 (and 5349) in every firewall on the path",
       "No STUN answer over UDP, and TCP/TLS connections time out: the host is down, the address is wrong, or everything is filtered."),
    _C("server-not-listening", "nothing listens on the TURN port", "fail", EXIT_UNREACHABLE,
       "start turnserver; check listening-port and listening-ip (coturn listens on every address unless listening-ip is set)",
       "UDP answers with ICMP port unreachable and TCP connections are refused: the host is up, no TURN server on that port."),
    _C("udp-blocked-no-fallback", "UDP is blocked and there is no TCP/TLS listener", "fail", EXIT_UNREACHABLE,
       "open UDP 3478 and the relay range (min-port..max-port); and keep a fallback: TCP on listening-port "
       "(remove no-tcp) and tls-listening-port=5349 with cert= and pkey=, listed as turn:HOST?transport=tcp and turns:HOST:5349",
       "UDP Binding requests go unanswered (no ICMP error: a firewall drops them) and TCP/TLS connections are refused: clients "
       "on networks that block UDP have no way to this server."),
    _C("udp-not-listening", "no UDP listener", "fail", EXIT_UNREACHABLE,
       "remove no-udp; check listening-port and listening-ip",
       "UDP answers with ICMP port unreachable while TCP/TLS work: the server does not listen on UDP."),
    _C("not-a-turn-server", "a STUN server, not a TURN server", "fail", EXIT_UNREACHABLE,
       "point turn: URIs at a TURN server (coturn without stun-only; stund and other STUN-only servers cannot relay)",
       "The Binding is answered but an Allocate is not, or is refused as unknown (420 Unknown Attribute, 400 without a "
       "challenge): nothing on that port speaks TURN."),
    _C("auth-not-required", "the server relays without credentials", "fail", EXIT_CHECK_FAILED,
       "use-auth-secret with static-auth-secret= (REST credentials) or lt-cred-mech with user=; never no-auth on a public server; "
       "run natkit turn audit",
       "An Allocate without MESSAGE-INTEGRITY succeeded: anyone can relay through this server (an open relay)."),
    _C("auth-wrong-secret", "wrong shared secret", "fail", EXIT_AUTH_REFUSED,
       "static-auth-secret must be the secret your application mints credentials with (use-auth-secret; several "
       "static-auth-secret lines during a rotation)",
       "401 to a fresh REST credential and also to one valid for years: the signature does not verify, so the secret differs "
       "(the clock is not the reason)."),
    _C("auth-clock-skew", "the server's clock is ahead", "fail", EXIT_AUTH_REFUSED,
       "synchronise the server's clock (chrony or systemd-timesyncd; timedatectl set-ntp true); coturn compares the "
       "credential's expiry timestamp with its own clock",
       "401 to a fresh REST credential, success with the same secret and a later expiry: the server's clock is ahead of "
       "this machine's by more than the credential's lifetime. The doctor bisects the expiry to estimate the offset."),
    _C("auth-credential-expired", "the credential has expired", "fail", EXIT_AUTH_REFUSED,
       "mint REST credentials when the call starts, with a lifetime longer than the longest call setup (the username's "
       "timestamp is the expiry: unix time + ttl); check the credential service's clock",
       "401 to a REST credential whose username timestamp is already in the past by this machine's clock."),
    _C("auth-refused", "credentials refused", "fail", EXIT_AUTH_REFUSED,
       "check the username and password (lt-cred-mech: user=NAME:PASSWORD; REST: the secret and the server's clock) and realm",
       "401 or 441 to the signed request; without the shared secret the doctor cannot tell a wrong password from a skewed "
       "clock (give --secret to tell them apart)."),
    _C("quota-reached", "allocation quota reached", "fail", EXIT_ALLOCATION_REFUSED,
       "raise user-quota / total-quota, or find the client that leaks allocations (every tab keeps 1-4 per TURN server "
       "until it closes)",
       "486 Allocation Quota Reached: this user (coturn counts the REST username's user part) already holds its quota."),
    _C("capacity-exhausted", "relay ports exhausted", "fail", EXIT_ALLOCATION_REFUSED,
       "widen the relay range min-port..max-port (one port per allocation; open it in the firewall too), lower "
       "max-allocate-lifetime, or add servers",
       "508 Insufficient Capacity: the server has no free relay port (or hit total-quota)."),
    _C("external-ip-missing", "external-ip missing behind a NAT", "fail", EXIT_NO_CONNECTIVITY,
       "external-ip=PUBLIC/PRIVATE (the public address clients reach, the private one the server relays from)",
       "The relayed address is private, loopback or link-local while clients reach the server at another address: relay "
       "candidates carry an address no peer can reach. Relay traffic seen from outside names the real public address."),
    _C("external-ip-wrong", "external-ip names the wrong address", "fail", EXIT_NO_CONNECTIVITY,
       "external-ip=PUBLIC/PRIVATE with the address relay traffic really leaves from",
       "The relayed address is public but differs from the server's, and relay traffic reaches peers from another address "
       "(or not at all): peers send to an address that is not the server's."),
    _C("deny-list-own-relay", "the deny list covers the server's own relay address", "fail", EXIT_NO_CONNECTIVITY,
       "allowed-peer-ip=ADDRESS for the server's own relay address (the private one behind a NAT: coturn maps a peer equal to "
       "external-ip to it before checking denied-peer-ip), or external-ip=PUBLIC/PRIVATE",
       "CreatePermission toward the other allocation's relayed address on this same server is refused with 403 Forbidden IP: "
       "two clients of this server can never reach each other through it."),
    _C("relay-ports-blocked", "the relay port range is blocked", "fail", EXIT_NO_CONNECTIVITY,
       "open UDP min-port..max-port (default 49152-65535) inbound in every firewall and cloud security group in front of "
       "the server",
       "Permissions are granted but data sent to a relayed address never arrives: a firewall drops the relay ports."),
    _C("family-mismatch", "no relay for the peer's address family", "fail", EXIT_ALLOCATION_REFUSED,
       "relay-ip=IPV6-ADDRESS (and listening-ip on IPv6) so the server can allocate IPv6 relays (RFC 6156); clients ask for "
       "them with REQUESTED-ADDRESS-FAMILY",
       "443 Peer Address Family Mismatch toward an IPv6 peer on an IPv4 relay, and 440 Address Family not Supported for an "
       "IPv6 relay: IPv6-only peers cannot be reached through this server."),
    _C("peer-denied", "the deny list refuses the peer", "fail", EXIT_NO_CONNECTIVITY,
       "allowed-peer-ip=ADDRESS for peers that must be reachable (keep denied-peer-ip for private and metadata ranges)",
       "CreatePermission toward a --peer address is refused with 403 Forbidden IP."),
    _C("data-not-relayed", "the relay does not forward data", "fail", EXIT_NO_CONNECTIVITY,
       "read the server's log for the allocation; check max-bps, the relay-ip and the firewall between relay and peers",
       "Allocations and permissions succeed, the relayed address is the server's, yet data between two allocations does "
       "not arrive in either direction."),
    _C("channel-bind-broken", "ChannelBind or ChannelData broken", "fail", EXIT_NO_CONNECTIVITY,
       "sign ChannelBind answers with MESSAGE-INTEGRITY (RFC 8489 §9.2.4) and relay ChannelData (RFC 8656 §12); a proxy or "
       "load balancer in front of the server must pass packets that are not STUN",
       "Send indications are relayed, but ChannelBind is never confirmed by a signed answer or ChannelData is dropped: "
       "clients that move to channels (aiortc/aioice, libwebrtc after its first packets) lose the call. Found by "
       "natkit's relay-check post-mortem, run by the doctor."),
    _C("allocation-refused", "allocation refused", "fail", EXIT_ALLOCATION_REFUSED,
       "read the error: 403 (the server refuses this client), 437 (stale allocation), 442 (transport not supported)",
       "An Allocate was answered with another error."),
    _C("udp-blocked", "UDP toward the server is blocked", "fail", EXIT_UNREACHABLE,
       "open UDP 3478 and the relay range on the client's network, or give clients the fallbacks: turn:HOST?transport=tcp "
       "and turns:HOST:5349 in every iceServers list",
       "UDP Binding requests go unanswered (no ICMP error: a firewall drops them) while TURN over TCP/TLS works: clients on "
       "this network need the TCP/TLS URIs."),
    _C("tls-cert-wrong-name", "the certificate does not name the server", "fail", EXIT_CHECK_FAILED,
       "cert= a certificate whose subjectAltName contains the host clients use in turns: (ACME for that name), pkey= its key",
       "The turns: certificate verifies but is for other names: browsers refuse it."),
    _C("tls-cert-expired", "the certificate has expired", "fail", EXIT_CHECK_FAILED,
       "renew the certificate (certbot renew) and reload coturn (it reads cert= and pkey= at start: restart or SIGUSR2)",
       "The turns: certificate's notAfter is in the past: browsers refuse it."),
    _C("tls-cert-self-signed", "the certificate is self-signed", "fail", EXIT_CHECK_FAILED,
       "cert= a certificate from a CA browsers trust (ACME/Let's Encrypt), with the full chain, pkey= its key",
       "The turns: certificate is its own issuer: browsers refuse it (it works only where it is installed as trusted)."),
    _C("tls-cert-untrusted", "the certificate chain does not verify", "fail", EXIT_CHECK_FAILED,
       "cert= the full chain (leaf first, then intermediates: fullchain.pem), pkey= its key",
       "The turns: certificate does not chain to a trusted CA (missing intermediate or an unknown issuer)."),
    _C("tls-handshake-failed", "TLS handshake failed", "fail", EXIT_CHECK_FAILED,
       "check cert=/pkey= and the TLS versions and ciphers (no-tlsv1, no-tlsv1_1, cipher-list=)",
       "The TCP connection opens but the TLS handshake fails for another reason than the certificate."),
    _C("no-tcp-fallback", "no TCP/TLS fallback", "warn", EXIT_OK,
       "keep TCP on listening-port (remove no-tcp) and add tls-listening-port=5349 with cert=/pkey=; list turn:HOST?transport=tcp "
       "and turns:HOST:5349 for clients",
       "UDP works, but the server refuses TCP and TLS: clients on networks that block UDP cannot use it."),
    _C("ipv6-relay-advertised-ipv4", "an IPv6 relay request got an IPv4 address", "warn", EXIT_OK,
       "external-ip=PUBLIC/PRIVATE (an external-ip without /PRIVATE replaces every relayed address, IPv6 ones too)",
       "Allocate with REQUESTED-ADDRESS-FAMILY IPv6 succeeded with an IPv4 XOR-RELAYED-ADDRESS."),
    _C("tls-cert-expiring", "the certificate expires soon", "warn", EXIT_OK,
       "renew the certificate (certbot renew) and restart coturn",
       "The turns: certificate expires within 14 days."),
)}

# The verdict is the first failing cause in this order: what to fix first.
PRIORITY: tuple[str, ...] = (
    "server-unreachable", "server-not-listening", "udp-blocked-no-fallback", "udp-not-listening", "not-a-turn-server",
    "auth-not-required", "auth-wrong-secret", "auth-clock-skew", "auth-credential-expired", "auth-refused",
    "quota-reached", "capacity-exhausted",
    "external-ip-missing", "external-ip-wrong", "deny-list-own-relay", "relay-ports-blocked",
    "family-mismatch", "peer-denied", "data-not-relayed", "channel-bind-broken", "allocation-refused",
    "udp-blocked",
    "tls-cert-expired", "tls-cert-self-signed", "tls-cert-untrusted", "tls-cert-wrong-name", "tls-handshake-failed",
    "no-tcp-fallback", "ipv6-relay-advertised-ipv4", "tls-cert-expiring",
)
assert set(PRIORITY) | {"healthy"} == set(CAUSES), "every cause has a priority"


def markdown_table() -> str:
    """The catalogue as the Markdown table docs/doctor.md carries (between its ``causes`` markers)."""
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| cause | meaning | severity | exit | fix (coturn) |", "|---|---|---|---|---|"]
    for cid in ("healthy", *PRIORITY):
        c = CAUSES[cid]
        lines.append(f"| `{c.id}` | {esc(c.meaning)} | {c.severity} | {c.exit_code} | {esc(c.fix) or '–'} |")
    return "\n".join(lines) + "\n"
