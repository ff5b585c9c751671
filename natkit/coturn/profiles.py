"""Hardened coturn profiles: the secure deployment as the default one.

A profile turns a few deployment facts (addresses, ports, secrets, public
address) into a complete :class:`~natkit.coturn.config.CoturnConfig`:

``recommended``
    REST API auth (several secrets for rotation), a realm, ``denied-peer-ip``
    for every IANA special-purpose IPv4 and IPv6 range (:data:`SPECIAL_PURPOSE_RANGES`)
    with an ``allowed-peer-ip`` exception for exactly the server's own public
    address (so two clients of this server can relay to each other),
    ``no-multicast-peers``, ``no-cli``, ``no-tcp-relay`` unless asked,
    quotas (``user-quota``, ``total-quota``, ``max-bps``), TLS 1.2 or newer
    when TLS is on, ``no-software-attribute``, Prometheus bound to loopback
    when asked, ``no-rfc5780`` unless NAT discovery is wanted.
``strict``
    recommended, plus smaller quotas and bandwidth, a nonce lifetime, no TCP
    relay ever, no RFC 3489 MAPPED-ADDRESS and no RESPONSE-ORIGIN (the
    smallest Binding responses: least reflection amplification).
``lab``
    recommended, with ``allowed-peer-ip`` exceptions for exactly the lab's
    ranges (documentation addresses in namespaces), the deny list stays
    strict everywhere else.

:func:`open_relay_for_testing` is the opposite: the quick-start holes in one
config, for proving that ``natkit turn audit`` catches them. Never deploy it.

Pure except :func:`detect_external_ip` (a STUN probe, injectable).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable

from ..errors import CheckFailed, UsageError
from .config import CoturnConfig

PROFILES = ("recommended", "strict", "lab")

# IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 and
# updates), plus multicast and the forms that embed an IPv4 address
# (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo) so that no IPv6 spelling
# reaches a denied IPv4 address.
SPECIAL_PURPOSE_RANGES: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this network (RFC 791); 0.0.0.0 reaches loopback"),
    ("10.0.0.0/8", "private-use (RFC 1918)"),
    ("100.64.0.0/10", "shared address space / CGNAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback (RFC 1122)"),
    ("169.254.0.0/16", "link-local (RFC 3927), incl. 169.254.169.254 cloud metadata"),
    ("172.16.0.0/12", "private-use (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    ("192.0.2.0/24", "documentation TEST-NET-1 (RFC 5737)"),
    ("192.31.196.0/24", "AS112-v4 (RFC 7535)"),
    ("192.52.193.0/24", "AMT (RFC 7450)"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast (RFC 7526)"),
    ("192.168.0.0/16", "private-use (RFC 1918)"),
    ("192.175.48.0/24", "direct delegation AS112 service (RFC 7534)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation TEST-NET-2 (RFC 5737)"),
    ("203.0.113.0/24", "documentation TEST-NET-3 (RFC 5737)"),
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    ("240.0.0.0/4", "reserved (RFC 1112), incl. 255.255.255.255 limited broadcast"),
    ("::/96", "unspecified, loopback and IPv4-compatible (RFC 4291)"),
    ("::1/128", "loopback (RFC 4291)"),
    ("::ffff:0:0/96", "IPv4-mapped (RFC 4291): would bypass the IPv4 list"),
    ("64:ff9b::/96", "NAT64 well-known prefix (RFC 6052)"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("2001::/23", "IETF protocol assignments incl. Teredo 2001::/32 (RFC 2928, RFC 4380)"),
    ("2001:db8::/32", "documentation (RFC 3849)"),
    ("2002::/16", "6to4 (RFC 3056): embeds an IPv4 address"),
    ("3fff::/20", "documentation (RFC 9637)"),
    ("5f00::/16", "SRv6 SIDs (RFC 9602)"),
    ("fc00::/7", "unique local (RFC 4193)"),
    ("fe80::/10", "link-local unicast (RFC 4291)"),
    ("fec0::/10", "deprecated site-local (RFC 3879)"),
    ("ff00::/8", "multicast (RFC 4291)"),
)
DENIED_PEER_RANGES: tuple[str, ...] = tuple(r for r, _ in SPECIAL_PURPOSE_RANGES)

# The lab's simulated internet (docs/lab.md, the address plan): documentation ranges inside namespaces.
LAB_RANGES: tuple[str, ...] = ("203.0.113.0/24", "198.51.100.0/24", "2001:db8::/32")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Quotas of a profile: concurrent allocations per user / server, bytes per second per session."""

    user_quota: int
    total_quota: int
    max_bps: int


LIMITS = {
    # a browser tab uses 1-4 allocations per TURN server; 3 MB/s carries HD video
    "recommended": Limits(user_quota=12, total_quota=2000, max_bps=3_000_000),
    "strict": Limits(user_quota=4, total_quota=500, max_bps=1_000_000),
}


@dataclasses.dataclass(frozen=True)
class Profile:
    """A built profile: the config, files the server needs next to it, and warnings for the operator.

    ``files`` maps a file name (relative, as ``config.cert``/``config.pkey``
    name it) to its content; :class:`~natkit.coturn.server.CoturnServer`
    takes them as ``extra_files``.
    """

    name: str
    config: CoturnConfig
    files: dict
    warnings: tuple[str, ...]


def _public_part(external_ip: str | None) -> str | None:
    if not external_ip:
        return None
    return external_ip.split("/", 1)[0]


def _with_private_part(external_ip: str | None, relay_ips, warnings: list[str]) -> str | None:
    """``PUBLIC`` -> ``PUBLIC/PRIVATE`` when the server relays from another, concrete address.

    Behind a 1:1 NAT with a bare ``external-ip=PUBLIC``, coturn checks a peer
    equal to its own public address as its private relay address against
    ``denied-peer-ip`` (10/8 and friends), so CreatePermission toward the other
    party's relay candidate is refused with 403 (coturn#584, #735): relay
    candidates appear, calls fail. Naming the private part avoids it.
    """
    if not external_ip or "/" in external_ip:
        return external_ip
    relays = [ip for ip in relay_ips if ip not in ("0.0.0.0", "::")]
    same_family = [ip for ip in relays if (":" in ip) == (":" in external_ip)]
    if not same_family or external_ip in same_family:
        return external_ip
    completed = f"{external_ip}/{same_family[0]}"
    warnings.append(f"external-ip {external_ip} completed to {completed}: the server relays from {same_family[0]}, "
                    "and a bare public external-ip makes coturn refuse its own relay addresses (403)")
    return completed


def _check_ip(value: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise UsageError(f"{what} must be an IP literal, got {value!r}") from None


def build(
    profile: str = "recommended",
    *,
    secrets: tuple[str, ...] | list[str] = (),
    listening_ips: tuple[str, ...] | list[str] = ("127.0.0.1",),
    port: int = 3478,
    tls_port: int | None = None,
    realm: str = "natkit",
    external_ip: str | None = None,
    relay_ips: tuple[str, ...] | list[str] = (),
    min_port: int = 49152,
    max_port: int = 65535,
    cert: str | None = None,
    pkey: str | None = None,
    cert_names: tuple[str, ...] | list[str] = (),
    tcp_relay: bool = False,
    nat_discovery: bool = False,
    prometheus: bool = False,
    prometheus_address: str = "127.0.0.1",
    allowed_peers: tuple[str, ...] | list[str] = (),
    limits: Limits | None = None,
    allow_loopback_peers: bool = False,
) -> Profile:
    """Build a hardened profile (``recommended``, ``strict`` or ``lab``).

    ``secrets``: REST shared secrets, newest first (several during rotation;
    at least one). ``external_ip``: coturn ``external-ip`` (``PUBLIC`` or
    ``PUBLIC/PRIVATE``); its public part becomes the one ``allowed-peer-ip``
    exception, together with ``allowed_peers`` (for ``lab`` the default is
    :data:`LAB_RANGES`). ``tls_port`` without ``cert``/``pkey``: a
    self-signed pair for ``cert_names`` (default: the public and listening
    addresses) is generated and a warning added. ``allow_loopback_peers``
    is for self-tests on loopback only (the caller must also allow the exact
    loopback relay address).

    Raises :class:`UsageError` for an unknown profile or an unusable option.
    """
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r}", hint="use " + ", ".join(PROFILES))
    secrets = tuple(secrets)
    if not secrets:
        raise UsageError("a hardened profile needs at least one REST secret", hint="natkit creds / --secret")
    if profile == "strict" and tcp_relay:
        raise UsageError("the strict profile never enables TCP relay (RFC 6062)", hint="use the recommended profile with --tcp-relay")
    warnings: list[str] = []
    files: dict[str, bytes] = {}
    public = _public_part(external_ip)
    if public:
        _check_ip(public, "the public part of external-ip")
    external_ip = _with_private_part(external_ip, relay_ips or listening_ips, warnings)
    allowed: list[str] = []
    if public:
        allowed.append(public)
    extra_allowed = tuple(allowed_peers) if allowed_peers else (LAB_RANGES if profile == "lab" else ())
    for rng in extra_allowed:
        try:
            net = ipaddress.ip_network(rng, strict=False)
        except ValueError:
            raise UsageError(f"not an IP network: {rng!r}") from None
        if net.prefixlen < (16 if net.version == 4 else 32):
            raise UsageError(f"allowed peer range {rng} is too wide", hint="allow exactly the addresses that must be relayable")
        allowed.append(str(net) if net.num_addresses > 1 else str(net.network_address))
    for ip in listening_ips:
        if (ip.startswith("127.") or ip == "::1") and not allow_loopback_peers:
            warnings.append(f"listening on loopback {ip}: clients on this host cannot relay to each other unless loopback peers are allowed (self-test only)")
            break
    if tls_port and not (cert and pkey):
        names = tuple(cert_names) or tuple(dict.fromkeys([*(n for n in (public,) if n), *listening_ips]))
        from ..tls import SELF_SIGNED_WARNING, self_signed

        cert_pem, key_pem = self_signed(list(names))
        files = {"turn_server_cert.pem": cert_pem, "turn_server_pkey.pem": key_pem}
        cert, pkey = "turn_server_cert.pem", "turn_server_pkey.pem"
        warnings.append(SELF_SIGNED_WARNING)
    lim = limits or LIMITS["strict" if profile == "strict" else "recommended"]
    strict = profile == "strict"
    config = CoturnConfig(
        listening_ips=tuple(listening_ips),
        listening_port=port,
        tls_listening_port=tls_port,
        relay_ips=tuple(relay_ips),
        min_port=min_port,
        max_port=max_port,
        realm=realm,
        auth="rest",
        static_auth_secrets=secrets,
        external_ip=external_ip,
        denied_peer_ranges=DENIED_PEER_RANGES,
        allowed_peer_ranges=tuple(dict.fromkeys(allowed)),
        allow_loopback_peers=allow_loopback_peers,
        no_multicast_peers=True,
        no_cli=True,
        fingerprint=True,
        no_tcp_relay=not tcp_relay,
        no_rfc5780=not nat_discovery,
        cert=cert,
        pkey=pkey,
        tls_min_version="1.2",
        user_quota=lim.user_quota,
        total_quota=lim.total_quota,
        max_bps=lim.max_bps,
        no_software_attribute=True,
        no_stun_backward_compatibility=strict,
        response_origin_only_with_rfc5780=True,
        prometheus=prometheus,
        prometheus_address=prometheus_address if prometheus else None,
        stale_nonce=600 if strict else None,
    )
    if prometheus and not ipaddress.ip_address(prometheus_address).is_loopback:
        warnings.append(f"Prometheus metrics bound to {prometheus_address}: restrict access to TCP 9641 with a firewall")
    if nat_discovery and len([ip for ip in listening_ips if ":" not in ip]) < 2 and len([ip for ip in listening_ips if ":" in ip]) < 2:
        warnings.append("NAT discovery (RFC 5780) needs two listening addresses of one family")
    config.validate()
    return Profile(profile, config, files, tuple(warnings))


def from_options(
    profile: str = "recommended",
    *,
    listen: tuple[str, ...] | list[str] = ("127.0.0.1",),
    port: int = 3478,
    secrets: tuple[str, ...] | list[str] = (),
    realm: str = "natkit",
    external_ip: str | None = None,
    min_port: int = 49152,
    max_port: int = 65535,
    allow_loopback: bool | None = None,
    users: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
    tls: bool = False,
    tls_port: int = 5349,
    cert_file: str | None = None,
    key_file: str | None = None,
    tcp_relay: bool = False,
    nat_discovery: bool = False,
) -> Profile:
    """The profile ``natkit turn up`` / ``natkit turn config`` run with (their options, one to one).

    No ``secrets``: a fresh random REST secret. ``allow_loopback`` None: loopback
    peers are allowed exactly when every listening address is loopback, and
    then only those addresses become relayable (self-tests); the rest of the
    deny list stays. ``users`` (``(name, password)`` pairs) swaps REST for
    long-term credentials. ``cert_file``/``key_file`` (PEM, read here) imply TLS
    on ``tls_port``; ``tls`` without them generates a self-signed pair.

    Raises :class:`UsageError` for options that do not fit together or a
    certificate/key that cannot be read.
    """
    from ..credentials import new_secret

    listen = tuple(listen)
    loopback = tuple(ip for ip in listen if ip.startswith("127.") or ip == "::1")
    if allow_loopback is None:
        allow_loopback = bool(loopback) and len(loopback) == len(listen)
    files: dict[str, bytes] = {}
    if cert_file or key_file:
        if not (cert_file and key_file):
            raise UsageError("--cert and --key go together")
        try:
            with open(cert_file, "rb") as c, open(key_file, "rb") as k:
                files = {"turn_server_cert.pem": c.read(), "turn_server_pkey.pem": k.read()}
        except OSError as exc:
            raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    built = build(
        profile, secrets=tuple(secrets) or (new_secret(),), listening_ips=listen, port=port,
        tls_port=tls_port if (tls or files) else None, realm=realm, external_ip=external_ip,
        min_port=min_port, max_port=max_port,
        cert="turn_server_cert.pem" if files else None, pkey="turn_server_pkey.pem" if files else None,
        tcp_relay=tcp_relay, nat_discovery=nat_discovery,
        allowed_peers=loopback if allow_loopback else (), allow_loopback_peers=allow_loopback,
    )
    if files:
        built = dataclasses.replace(built, files={**built.files, **files})
    if users:
        config = dataclasses.replace(built.config, auth="long-term", users=tuple((name, pw) for name, pw in users), static_auth_secrets=())
        built = dataclasses.replace(built, config=config)
    return built


def lab_profile(secrets: tuple[str, ...] | list[str], *, lab_ranges: tuple[str, ...] = LAB_RANGES, **kw) -> Profile:
    """The lab's own coturn: ``recommended`` with exceptions for exactly ``lab_ranges``."""
    return build("lab", secrets=secrets, allowed_peers=lab_ranges, **kw)


def open_relay_for_testing(*, listening_ips: tuple[str, ...] = ("127.0.0.1",), port: int = 3478, tls_port: int | None = None,
                           cert: str | None = None, pkey: str | None = None, relay_ips: tuple[str, ...] = (),
                           min_port: int = 49152, max_port: int = 65535, cli_ip: str | None = None) -> CoturnConfig:
    """A deliberately open coturn, the quick-start holes in one config. NEVER deploy it.

    No authentication, no deny list (coturn's built-in refusals of 0.0.0.0
    and loopback only), TCP relay on, TLS 1.0/1.1 accepted (OpenSSL security
    level 0, else Debian's OpenSSL 3 refuses them on its own), SOFTWARE
    sent, no quotas, RFC 5780 on. With ``cli_ip`` the telnet CLI listens
    there (coturn then refuses ``allow-loopback-peers``, so loopback stays
    denied); without it loopback peers are allowed. Exists so that tests
    prove :func:`natkit.audit.audit` catches every hole: run it only in a
    network namespace with no route out.
    """
    extra = ["cipher-list=DEFAULT:@SECLEVEL=0"] if tls_port else []
    if cli_ip:
        extra += [f"cli-ip={cli_ip}", "cli-password=natkit-open"]
    return CoturnConfig(
        listening_ips=tuple(listening_ips), listening_port=port, tls_listening_port=tls_port, cert=cert, pkey=pkey,
        relay_ips=tuple(relay_ips), min_port=min_port, max_port=max_port, realm="open", auth="none",
        denied_peer_ranges=(), allowed_peer_ranges=(), allow_loopback_peers=cli_ip is None, no_multicast_peers=False,
        no_cli=cli_ip is None,  # coturn accepts allow-loopback-peers only together with no-cli
        no_tcp_relay=False, no_rfc5780=False, tls_min_version="1.0", extra=tuple(extra),
    )


def detect_external_ip(
    stun_servers: list[str],
    *,
    expected: str | None = None,
    timeout: float = 3.0,
    probe: Callable | None = None,
) -> str:
    """Detect this host's public IPv4/IPv6 address with natkit's own STUN probe.

    Every answering server must report the same mapped IP (cross-check);
    with ``expected`` (an operator-given external-ip) it must match too.
    ``probe`` defaults to :func:`natkit.probe.probe` (injectable for tests).

    Returns the public IP. Raises :class:`CheckFailed` when no server answers,
    the servers disagree, or the answer differs from ``expected``.
    """
    report = _probe_for_external_ip(stun_servers, timeout=timeout, probe=probe)
    return _cross_checked_ip(report, expected)


def detect_external_ip_value(
    stun_servers: list[str],
    *,
    listening_ips: tuple[str, ...] | list[str] = (),
    timeout: float = 3.0,
    probe: Callable | None = None,
) -> str | None:
    """The coturn ``external-ip`` value for this host, detected with STUN (cross-checked as in
    :func:`detect_external_ip`), or None when no NAT is in the way.

    Behind a 1:1 NAT (the cloud elastic-IP pattern: the public address is not
    on any interface) the value is ``PUBLIC/PRIVATE``, PRIVATE being the local
    address the probe left from (bound to the one listening address when
    exactly one is given). ``PUBLIC`` alone is not enough there: coturn maps a
    peer equal to its external-ip to the private relay address and checks
    *that* against ``denied-peer-ip``, so two clients of the server could not
    reach each other. Raises :class:`CheckFailed` like :func:`detect_external_ip`.
    """
    bind = [ip for ip in listening_ips if ip not in ("0.0.0.0", "::")]
    local_host = bind[0] if len(bind) == 1 else None
    report = _probe_for_external_ip(stun_servers, timeout=timeout, probe=probe, local_host=local_host)
    public = _cross_checked_ip(report, None)
    locals_ = {r.local_address.host for r in report.results if r.ok and r.local_address is not None}
    if public in locals_ or public in bind:
        return None  # the public address is this host's own: no NAT to describe
    private = local_host or next(iter(sorted(locals_)), None)
    return f"{public}/{private}" if private else public


def _probe_for_external_ip(stun_servers: list[str], *, timeout: float, probe: Callable | None, local_host: str | None = None):
    if not stun_servers:
        raise UsageError("external-ip detection needs at least one STUN server", hint="--stun stun:HOST[:PORT] (two or more to cross-check)")
    if probe is None:
        from ..probe import probe as probe_fn
    else:
        probe_fn = probe
    if local_host is None:
        return probe_fn(list(stun_servers), timeout=timeout)
    return probe_fn(list(stun_servers), timeout=timeout, local_host=local_host)


def _cross_checked_ip(report, expected: str | None) -> str:
    if not report.ok or not report.public_ips:
        errors = "; ".join(f"{r.server}: {r.error}" for r in report.results if not r.ok)
        raise CheckFailed("no STUN server answered; cannot detect the external IP", step="external-ip", details=[errors] if errors else [])
    if len(report.public_ips) > 1:
        raise CheckFailed(
            "STUN servers disagree on the public address: " + ", ".join(report.public_ips), step="external-ip",
            hint="several uplinks or a NAT with address-dependent mapping: set --external-ip explicitly",
        )
    ip = report.public_ips[0]
    if expected is not None and _public_part(expected) != ip:
        raise CheckFailed(f"configured external-ip {expected} but STUN sees {ip}", step="external-ip", hint="fix --external-ip")
    return ip


def container_hardening(fd_limit: int = 65536) -> dict:
    """Docker run options for a hardened coturn container (docker SDK ``containers.run`` keywords).

    Host networking (coturn's recommended deployment; no NAT in front of the
    relay ports), non-root (``nobody``, as the official image runs), read-only
    root filesystem with a tmpfs for runtime files, every capability dropped
    except ``NET_BIND_SERVICE`` (ports below 1024), no new privileges and a
    raised file-descriptor limit (one descriptor per relayed socket).
    """
    return {
        "network_mode": "host",
        "user": "nobody",
        "read_only": True,
        "tmpfs": {"/var/lib/coturn": "rw,size=16m,mode=1777", "/tmp": "rw,size=16m,mode=1777"},
        "cap_drop": ["ALL"],
        "cap_add": ["NET_BIND_SERVICE"],
        "security_opt": ["no-new-privileges:true"],
        "ulimits": [{"name": "nofile", "soft": fd_limit, "hard": fd_limit}],
    }


def healthcheck_command(port: int = 3478, host: str = "127.0.0.1") -> list[str]:
    """A container health check that performs a real STUN Binding (coturn's ``turnutils_stunclient``)."""
    return ["turnutils_stunclient", "-p", str(port), host]
