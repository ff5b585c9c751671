"""coturn configuration as a dataclass, rendered to ``turnserver.conf`` text.

Pure: no files, no processes. Option names are coturn's own (see coturn's
``examples/etc/turnserver.conf`` and ``turnserver --help``, version 4.6).
"""

from __future__ import annotations

import dataclasses
import ipaddress

from ..errors import UsageError

# Peer ranges denied by default (coturn ``denied-peer-ip``): a TURN relay must
# not become a way into the operator's own networks (RFC 8656 §21.2.3) nor to
# cloud metadata services (169.254.169.254).
DEFAULT_DENIED_PEER_RANGES: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network" (RFC 791)
    "10.0.0.0/8",  # private (RFC 1918)
    "100.64.0.0/10",  # shared address space / CGNAT (RFC 6598)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, incl. 169.254.169.254 metadata
    "172.16.0.0/12",  # private (RFC 1918)
    "192.0.0.0/24",  # IETF protocol assignments (RFC 6890)
    "192.168.0.0/16",  # private (RFC 1918)
    "198.18.0.0/15",  # benchmarking (RFC 2544)
    "240.0.0.0/4",  # reserved
    "::/128",  # unspecified
    "::1/128",  # loopback
    "::ffff:0:0/96",  # IPv4-mapped (would bypass the IPv4 list)
    "64:ff9b::/96",  # NAT64 well-known prefix
    "fc00::/7",  # unique local (RFC 4193)
    "fe80::/10",  # link-local
)


def cidr_to_range(cidr: str) -> str:
    """``"10.0.0.0/8"`` -> ``"10.0.0.0-10.255.255.255"`` (coturn's range syntax).

    A single address stays a single address. Raises :class:`UsageError` for
    anything that is not an IP network.
    """
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise UsageError(f"not an IP address or network: {cidr!r}") from None
    if net.num_addresses == 1:
        return str(net.network_address)
    return f"{net.network_address}-{net.broadcast_address}"


@dataclasses.dataclass(frozen=True)
class CoturnConfig:
    """Everything natkit sets in a ``turnserver.conf``.

    Addresses are IP literals; ports are integers. ``auth`` is "rest"
    (``use-auth-secret`` + ``static-auth-secret``, the default), "long-term"
    (``lt-cred-mech`` + ``user=``) or "none" (``no-auth``, for tests of
    auditing only).
    """

    listening_ips: tuple[str, ...] = ("127.0.0.1",)  # listening-ip
    listening_port: int = 3478  # listening-port (UDP and TCP)
    tls_listening_port: int | None = None  # tls-listening-port (needs cert + pkey)
    relay_ips: tuple[str, ...] = ()  # relay-ip; empty: the listening IPs
    min_port: int = 49152  # min-port of the relay range
    max_port: int = 65535  # max-port of the relay range
    realm: str = "natkit"  # realm
    auth: str = "rest"
    static_auth_secrets: tuple[str, ...] = ()  # static-auth-secret (several allow rotation)
    users: tuple[tuple[str, str], ...] = ()  # user=name:password (long-term)
    external_ip: str | None = None  # external-ip ("public" or "public/private")
    denied_peer_ranges: tuple[str, ...] = DEFAULT_DENIED_PEER_RANGES  # denied-peer-ip
    allowed_peer_ranges: tuple[str, ...] = ()  # allowed-peer-ip (checked before the deny list)
    allow_loopback_peers: bool = False  # allow-loopback-peers (self-tests on loopback only)
    no_multicast_peers: bool = True  # no-multicast-peers
    no_cli: bool = True  # no-cli
    fingerprint: bool = True  # fingerprint
    no_tcp_relay: bool = False  # no-tcp-relay (RFC 6062 TCP allocations)
    no_tcp: bool = False  # no-tcp: no TURN over TCP on listening-port (UDP, and TLS when configured, only)
    no_rfc5780: bool = False  # no-rfc5780
    cert: str | None = None  # cert (PEM path as the server sees it)
    pkey: str | None = None  # pkey
    pidfile: str | None = None  # pidfile
    userdb: str | None = None  # userdb (sqlite path); coturn opens one even with REST auth
    # --- hardening options (issue 5); their defaults render nothing new ---
    tls_min_version: str = "1.2"  # lowest TLS version accepted: "1.0", "1.1", "1.2" (no-tlsv1, no-tlsv1_1) or "1.3"
    user_quota: int | None = None  # user-quota: concurrent allocations per user
    total_quota: int | None = None  # total-quota: concurrent allocations on the server
    max_bps: int | None = None  # max-bps: bytes per second per session
    no_software_attribute: bool = False  # no-software-attribute (hide the version)
    no_stun_backward_compatibility: bool = False  # no-stun-backward-compatibility (no MAPPED-ADDRESS: smaller responses)
    response_origin_only_with_rfc5780: bool = False  # response-origin-only-with-rfc5780 (smaller responses)
    prometheus: bool = False  # prometheus exporter (needs a coturn built with it)
    prometheus_address: str | None = None  # prometheus-address (coturn >= 4.6.2); None: coturn's default
    prometheus_port: int | None = None  # prometheus-port (coturn's default 9641)
    stale_nonce: int | None = None  # stale-nonce=SECONDS (nonce lifetime)
    extra: tuple[str, ...] = ()  # verbatim extra lines, for experts

    def validate(self) -> None:
        """Raise :class:`UsageError` when the configuration cannot work."""
        if not self.listening_ips:
            raise UsageError("at least one listening IP is required")
        for ip in (*self.listening_ips, *self.relay_ips):
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise UsageError(f"not an IP address: {ip!r}", hint="listening and relay addresses must be IP literals") from None
        for port in (self.listening_port, self.min_port, self.max_port):
            if not 1 <= port <= 65535:
                raise UsageError(f"port {port} out of range 1-65535")
        if self.min_port > self.max_port:
            raise UsageError(f"relay port range {self.min_port}-{self.max_port} is empty")
        if self.auth not in ("rest", "long-term", "none"):
            raise UsageError(f"unknown auth mode {self.auth!r}")
        if self.auth == "rest" and not self.static_auth_secrets:
            raise UsageError("REST authentication needs at least one static-auth-secret")
        if self.auth == "long-term" and not self.users:
            raise UsageError("long-term authentication needs at least one user")
        if self.tls_listening_port and not (self.cert and self.pkey):
            raise UsageError("a TLS listening port needs a certificate and a key")
        for secret in self.static_auth_secrets:
            if not secret or any(c in secret for c in "\n\r #"):
                raise UsageError("a static-auth-secret must be non-empty and contain no whitespace or '#'")
        if not self.realm or any(c in self.realm for c in "\n\r #"):
            raise UsageError(f"invalid realm {self.realm!r}")
        if self.tls_min_version not in ("1.0", "1.1", "1.2", "1.3"):
            raise UsageError(f"unknown TLS version {self.tls_min_version!r}", hint="use 1.0, 1.1, 1.2 or 1.3")
        for label, value in (("user-quota", self.user_quota), ("total-quota", self.total_quota), ("max-bps", self.max_bps), ("stale-nonce", self.stale_nonce)):
            if value is not None and value < 0:
                raise UsageError(f"{label} must not be negative, got {value}")
        if self.prometheus_port is not None and not 1 <= self.prometheus_port <= 65535:
            raise UsageError(f"prometheus port {self.prometheus_port} out of range 1-65535")
        if self.prometheus_address is not None:
            try:
                ipaddress.ip_address(self.prometheus_address)
            except ValueError:
                raise UsageError(f"not an IP address: {self.prometheus_address!r}", hint="the Prometheus bind address must be an IP literal") from None

    def render(self) -> str:
        """Return the ``turnserver.conf`` text (one option per line)."""
        self.validate()
        lines = ["# generated by natkit; edit the natkit configuration, not this file"]
        for ip in self.listening_ips:
            lines.append(f"listening-ip={ip}")
        lines.append(f"listening-port={self.listening_port}")
        if self.tls_listening_port:
            lines.append(f"tls-listening-port={self.tls_listening_port}")
            lines.append(f"cert={self.cert}")
            lines.append(f"pkey={self.pkey}")
            lines += {"1.0": [], "1.1": ["no-tlsv1"], "1.2": ["no-tlsv1", "no-tlsv1_1"], "1.3": ["no-tlsv1", "no-tlsv1_1", "no-tlsv1_2"]}[self.tls_min_version]
        else:
            lines += ["no-tls", "no-dtls"]
        for ip in self.relay_ips or self.listening_ips:
            lines.append(f"relay-ip={ip}")
        lines.append(f"min-port={self.min_port}")
        lines.append(f"max-port={self.max_port}")
        if self.external_ip:
            lines.append(f"external-ip={self.external_ip}")
        lines.append(f"realm={self.realm}")
        if self.auth == "rest":
            lines.append("use-auth-secret")
            lines += [f"static-auth-secret={s}" for s in self.static_auth_secrets]
        elif self.auth == "long-term":
            lines.append("lt-cred-mech")
            lines += [f"user={u}:{p}" for u, p in self.users]
        else:
            lines.append("no-auth")
        if self.fingerprint:
            lines.append("fingerprint")
        if self.no_cli:
            lines.append("no-cli")
        if self.no_multicast_peers:
            lines.append("no-multicast-peers")
        if self.no_tcp_relay:
            lines.append("no-tcp-relay")
        if self.no_tcp:
            lines.append("no-tcp")
        if self.no_rfc5780:
            lines.append("no-rfc5780")
        if self.allow_loopback_peers:
            lines.append("allow-loopback-peers")
        lines += [f"allowed-peer-ip={cidr_to_range(r)}" for r in self.allowed_peer_ranges]
        lines += [f"denied-peer-ip={cidr_to_range(r)}" for r in self.denied_peer_ranges]
        if self.pidfile:
            lines.append(f"pidfile={self.pidfile}")
        if self.userdb:
            lines.append(f"userdb={self.userdb}")
        if self.user_quota is not None:
            lines.append(f"user-quota={self.user_quota}")
        if self.total_quota is not None:
            lines.append(f"total-quota={self.total_quota}")
        if self.max_bps is not None:
            lines.append(f"max-bps={self.max_bps}")
        if self.stale_nonce is not None:
            lines.append(f"stale-nonce={self.stale_nonce}")
        if self.no_software_attribute:
            lines.append("no-software-attribute")
        if self.no_stun_backward_compatibility:
            lines.append("no-stun-backward-compatibility")
        if self.response_origin_only_with_rfc5780:
            lines.append("response-origin-only-with-rfc5780")
        if self.prometheus:
            lines.append("prometheus")
            if self.prometheus_address:
                lines.append(f"prometheus-address={self.prometheus_address}")
            if self.prometheus_port:
                lines.append(f"prometheus-port={self.prometheus_port}")
        lines += ["log-file=stdout", "simple-log"]
        lines += list(self.extra)
        return "\n".join(lines) + "\n"
