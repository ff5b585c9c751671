"""A lab of real TURN faults: a TURN server behind a 1:1 "cloud NAT", built wrong on purpose.

The topology (every address inside namespaces this lab creates; no default
route anywhere, so nothing leaves the lab)::

    client 10.1.0.10 ── clientfw (NAT, the client's network) ── internet ── cloudnat ── server 10.0.0.10
      2001:db8:2::10      198.51.100.20 / 2001:db8:1::20         bridge    203.0.113.10     2001:db8:10::10
                                                                   │       (elastic IP)
                                                  peer6 2001:db8:1::66 (IPv6 only)

``cloudnat`` is the AWS/GCP elastic-IP pattern: the public address
203.0.113.10 lives on the NAT box, not on the server's interface; the box
maps it 1:1 (DNAT in, SNAT out, ports kept, hairpin included) to the
server's private 10.0.0.10. IPv6 is routed, not translated (clouds give
instances their global IPv6 directly). ``clientfw`` is the client's own
network: a port-restricted NAT in front of the client.

Each :class:`FaultSpec` in :data:`FAULTS` says how the server is
configured and which firewall rule is added, and names the cause
``natkit doctor`` must find (:mod:`natkit.doctor.causes`). :class:`FaultLab`
builds one fault for real (namespaces with :mod:`natkit.lab.netns`,
nftables, coturn, optionally under ``faketime``), starts what the fault
needs (processes holding allocations for the quota faults) and runs the
doctor inside the client's namespace::

    with FaultLab(FAULTS["external-ip-missing"]) as lab:
        report, seconds = lab.run_doctor()
        assert report["verdict"] == "external-ip-missing"

Pure up to :class:`FaultLab`: :func:`fault_plan` and :func:`coturn_config`
take values and return a plan and a config, unit-tested without root.
"""

from __future__ import annotations

import atexit
import dataclasses
import glob
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from ..errors import LabError, ServerStartFailed, UsageError
from ..ownership import process_start_time
from . import netns
from .spec import Node, Veth, namespace_name

# ---------------------------------------------------------------- addresses
PUBLIC_IP = "203.0.113.10"  # the elastic IP, on cloudnat's WAN
WRONG_PUBLIC_IP = "203.0.113.99"  # an external-ip nobody owns (typo, old instance)
SERVER_IP = "10.0.0.10"  # the server's own (private) address
SERVER_IP6 = "2001:db8:10::10"
CLOUDNAT_LAN = "10.0.0.1"
CLOUDNAT_WAN6 = "2001:db8:1::1"
CLIENTFW_WAN = "198.51.100.20"
CLIENTFW_WAN6 = "2001:db8:1::20"
CLIENT_IP = "10.1.0.10"
CLIENT_IP6 = "2001:db8:2::10"
PEER6_IP = "2001:db8:1::66"
STUN_IPS = ("203.0.113.50", "203.0.113.51")  # two STUN servers on the internet (external-ip detection)
INTERNET_NETS = ("203.0.113.0/24", "198.51.100.0/24")
INTERNET_NET6 = "2001:db8::/32"
PORT = 3478
TLS_PORT = 5349
RELAY_RANGE = (49152, 65535)
EXHAUSTED_RANGE = (49152, 49155)  # four relay ports: the "port exhaustion" fault
REALM = "natkit.fault"
DOCTOR_USER = "doctor"

_V6_SYSCTLS = (
    ("net.ipv6.conf.all.disable_ipv6", "0"),
    ("net.ipv6.conf.default.disable_ipv6", "0"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv6.conf.all.accept_ra", "0"),
    ("net.ipv6.conf.default.accept_ra", "0"),
)


def _no_dad(*devs: str) -> tuple[tuple[str, str], ...]:
    # per interface, before it comes up: its link-local address skips DAD too (the "all"/"default" values came
    # too late for interfaces created before them), else the first IPv6 packets across the bridge wait ~2 s
    return tuple((f"net.ipv6.conf.{d}.accept_dad", "0") for d in devs)


_NO_REDIRECTS = (
    ("net.ipv4.conf.all.send_redirects", "0"),
    ("net.ipv4.conf.default.send_redirects", "0"),
    ("net.ipv4.conf.all.accept_redirects", "0"),
    ("net.ipv6.conf.all.accept_redirects", "0"),
)


# ---------------------------------------------------------------- faults as data

@dataclasses.dataclass(frozen=True)
class FaultSpec:
    """One fault of the lab and the cause ``natkit doctor`` must name for it.

    Server side: ``external_ip`` "correct" (``PUBLIC/PRIVATE``), "public-only"
    (``PUBLIC``), "missing" or "wrong"; ``deny_own_relay``: no
    ``allowed-peer-ip`` exception for the server's own relay address, which
    the deny list covers; ``tcp``: a TCP
    listener on 3478 (coturn's default); ``tls``: None or the certificate the
    ``turns:`` listener presents ("good", "wrong-name", "expired",
    "self-signed"); ``ipv6_relay``: the server relays IPv6 too;
    ``user_quota``: coturn ``user-quota``; ``exhausted``: the relay range is
    four ports, all held; ``clock_offset``: the server's clock runs this far
    ahead (a libfaketime offset such as "+2d").

    Network: ``relay_ports_dropped``: the cloud firewall drops new inbound
    UDP toward the relay range; ``client_udp_blocked``: the client's
    network drops all outbound UDP.

    Doctor side: ``credential`` "secret" (the right REST secret), "wrong-secret",
    "expired" (a long-term pair minted an hour ago for a one-minute
    lifetime) or "user" (a fresh pair given as ``--user/--password``);
    ``peer6``: ``--peer`` names the IPv6-only peer; ``hold``: this many
    allocations are held by another process with the doctor's own
    credential before the doctor runs (quota).

    ``servers``: the implementations the fault can be built on ("coturn",
    "pion": tests/servers/pionturn); ``pion_knobs``: pionturn flags that
    reproduce a behaviour coturn does not have (unsigned ChannelBind answers,
    ChannelData dropped).
    """

    id: str
    cause: str  # the doctor's verdict (a cause id of natkit.doctor.causes)
    title: str
    external_ip: str = "correct"
    deny_own_relay: bool = False
    tcp: bool = True
    tls: str | None = None
    ipv6_relay: bool = True
    user_quota: int | None = None
    exhausted: bool = False
    clock_offset: str | None = None
    relay_ports_dropped: bool = False
    client_udp_blocked: bool = False
    credential: str = "secret"
    peer6: bool = False
    hold: int = 0
    servers: tuple[str, ...] = ("coturn", "pion")  # implementations the fault can be built on
    pion_knobs: tuple[str, ...] = ()  # pionturn flags that reproduce other servers' behaviour

    def uris(self) -> list[str]:
        """The URIs the doctor is given for this fault."""
        out = [f"turn:{PUBLIC_IP}:{PORT}"]
        if self.tls is not None:
            out.append(f"turns:{PUBLIC_IP}:{TLS_PORT}")
        return out


_COTURN_ONLY = ("coturn",)
_PION_ONLY = ("pion",)
FAULTS: dict[str, FaultSpec] = {f.id: f for f in (
    FaultSpec("healthy", "healthy", "a correct deployment behind the 1:1 NAT"),
    FaultSpec("healthy-tls", "healthy", "a correct deployment with turns: and a CA-signed certificate", tls="good"),
    FaultSpec("external-ip-missing", "external-ip-missing", "behind a 1:1 NAT without external-ip", external_ip="missing"),
    FaultSpec("external-ip-wrong", "external-ip-wrong", "external-ip names an address that is not the server's", external_ip="wrong"),
    FaultSpec("deny-own-relay", "deny-list-own-relay",
              "external-ip=PUBLIC (no /PRIVATE): coturn checks its own private relay address against the deny list",
              external_ip="public-only", deny_own_relay=True),
    FaultSpec("relay-ports-blocked", "relay-ports-blocked", "the cloud firewall drops the relay port range", relay_ports_dropped=True),
    FaultSpec("udp-blocked", "udp-blocked", "the client's network drops UDP; TCP and TLS listeners exist", client_udp_blocked=True,
              tls="good"),
    FaultSpec("udp-blocked-no-fallback", "udp-blocked-no-fallback", "the client's network drops UDP and the server listens on UDP only",
              client_udp_blocked=True, tcp=False),
    FaultSpec("tls-wrong-name", "tls-cert-wrong-name", "the turns: certificate is for another name", tls="wrong-name"),
    FaultSpec("tls-expired", "tls-cert-expired", "the turns: certificate has expired", tls="expired"),
    FaultSpec("tls-self-signed", "tls-cert-self-signed", "the turns: certificate is self-signed", tls="self-signed"),
    FaultSpec("wrong-secret", "auth-wrong-secret", "the doctor's shared secret is not the server's", credential="wrong-secret"),
    FaultSpec("clock-skew", "auth-clock-skew", "the server's clock runs two days ahead", clock_offset="+2d",
              servers=_COTURN_ONLY),
    FaultSpec("credential-expired", "auth-credential-expired", "the credential handed to the client has expired", credential="expired"),
    FaultSpec("quota-reached", "quota-reached", "the user already holds its user-quota of allocations", user_quota=2, hold=2,
              credential="user", servers=_COTURN_ONLY),
    FaultSpec("ports-exhausted", "capacity-exhausted", "every port of the relay range is allocated", exhausted=True,
              servers=_COTURN_ONLY),
    FaultSpec("ipv6-peer-ipv4-relay", "family-mismatch", "an IPv6-only peer, a server that relays IPv4 only", ipv6_relay=False,
              peer6=True),
    FaultSpec("channelbind-unsigned", "channel-bind-broken", "ChannelBind answers carry no MESSAGE-INTEGRITY",
              servers=_PION_ONLY, pion_knobs=("-unsigned-channelbind",)),
    FaultSpec("channeldata-dropped", "channel-bind-broken", "the server (or a proxy in front) drops ChannelData",
              servers=_PION_ONLY, pion_knobs=("-ignore-channeldata",)),
)}


# ---------------------------------------------------------------- the plan (pure)

@dataclasses.dataclass(frozen=True)
class FaultPlan:
    """What :func:`natkit.lab.netns.build` needs (the same shape as :class:`natkit.lab.spec.Plan`)."""

    lab: str
    nodes: tuple[Node, ...]
    veths: tuple[Veth, ...]

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(n.ns for n in self.nodes)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise UsageError(f"no node {name!r} in fault lab {self.lab!r}")


def cloudnat_ruleset(*, drop_relay_ports: bool = False) -> str:
    """The 1:1 NAT of the cloud box (pure): every port of the public address to the server and back.

    DNAT in prerouting and SNAT in postrouting both act on traffic from the
    LAN too, so the server reaching its own public address (two relayed
    addresses talking to each other) is hairpinned. With
    ``drop_relay_ports`` a stateful firewall drops new UDP flows toward any
    port of the server but 3478, the relay ports included: the cloud security
    group that only opened the TURN port.
    """
    lines = [
        "table ip natkit_cloudnat {",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        f"    ip daddr {PUBLIC_IP} dnat to {SERVER_IP}",
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f"    ip saddr {SERVER_IP} snat to {PUBLIC_IP}",
        "  }",
        "}",
    ]
    if drop_relay_ports:
        # only the TURN port was opened: every other new UDP flow toward the server, the relay ports
        # included, is dropped (whatever range the server allocates from)
        lines += [
            "table inet natkit_fault {",
            "  chain forward {",
            "    type filter hook forward priority filter; policy accept;",
            f"    ip daddr {SERVER_IP} udp dport != {PORT} ct state new counter drop",
            f"    ip6 daddr {SERVER_IP6} udp dport != {PORT} ct state new counter drop",
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def clientfw_ruleset(*, udp_blocked: bool = False) -> str:
    """The client's network (pure): a port-restricted NAT (masquerade) and, with
    ``udp_blocked``, a firewall that silently drops every outbound UDP packet."""
    lines = [
        "table ip natkit_clientnat {",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        '    oifname "wan" masquerade',
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        '    iifname "wan" ct state new drop',
        "  }",
        "}",
    ]
    if udp_blocked:
        lines += [
            "table inet natkit_fault {",
            "  chain forward {",
            "    type filter hook forward priority filter; policy accept;",
            '    iifname "lan" meta l4proto udp counter drop',
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


# the IPv6 links, as (node, interface) per layer-2 segment: neighbours are entered statically (see FaultLab.up)
V6_SEGMENTS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("client", "eth0"), ("clientfw", "lan")),
    (("clientfw", "wan"), ("cloudnat", "wan"), ("peer6", "eth0")),
    (("cloudnat", "lan"), ("server", "eth0")),
)


def neighbour_commands(plan: FaultPlan, macs: dict[tuple[str, str], str]) -> dict[str, list[str]]:
    """``ip -batch`` lines per namespace that enter every IPv6 neighbour of each segment as permanent (pure).

    ``macs`` maps (node, interface) to its MAC address. Without them the first
    IPv6 packets wait for neighbour discovery across freshly made veths and
    the bridge (seen: up to 2 s), longer than a doctor's timeout.
    """
    out: dict[str, list[str]] = {}
    for segment in V6_SEGMENTS:
        for node, dev in segment:
            for other, odev in segment:
                if other == node or (other, odev) not in macs:
                    continue
                for d, cidr in plan.node(other).addresses:
                    if d == odev and ":" in cidr:
                        addr = cidr.split("/")[0]
                        out.setdefault(plan.node(node).ns, []).append(
                            f"neigh replace {addr} lladdr {macs[(other, odev)]} dev {dev} nud permanent")
    return out


def fault_plan(lab: str, fault: FaultSpec, *, stun_servers: bool = False) -> FaultPlan:
    """The namespaces, links, addresses, routes and rules of one fault (pure).

    ``stun_servers`` adds a namespace with two STUN servers' addresses on the
    internet (:data:`STUN_IPS`), for ``natkit turn up``'s external-ip detection.
    """
    ns = lambda n: namespace_name(lab, n)
    nodes = [
        Node("internet", "internet", ns("internet"), bridges=("br0",), sysctls=_V6_SYSCTLS + (("net.ipv4.ip_forward", "0"),)),
        Node("cloudnat", "nat", ns("cloudnat"),
             addresses=(("wan", f"{PUBLIC_IP}/24"), ("wan", f"{CLOUDNAT_WAN6}/64 nodad"), ("lan", f"{CLOUDNAT_LAN}/24"),
                        ("lan", "2001:db8:10::1/64 nodad")),
             routes=("198.51.100.0/24 dev wan scope link", "2001:db8:2::/64 via " + CLIENTFW_WAN6 + " dev wan"),
             sysctls=_V6_SYSCTLS + _no_dad("wan", "lan") + _NO_REDIRECTS + (("net.ipv4.ip_forward", "1"),
                                                                             ("net.ipv6.conf.all.forwarding", "1")),
             nft=cloudnat_ruleset(drop_relay_ports=fault.relay_ports_dropped)),
        Node("server", "server", ns("server"),
             addresses=(("eth0", f"{SERVER_IP}/24"), ("eth0", f"{SERVER_IP6}/64 nodad")),
             routes=tuple(f"{net} via {CLOUDNAT_LAN} dev eth0" for net in INTERNET_NETS) + (f"{INTERNET_NET6} via 2001:db8:10::1 dev eth0",),
             sysctls=_V6_SYSCTLS + _no_dad("eth0") + _NO_REDIRECTS + (("net.ipv4.ip_forward", "0"),)),
        Node("clientfw", "nat", ns("clientfw"),
             addresses=(("wan", f"{CLIENTFW_WAN}/24"), ("wan", f"{CLIENTFW_WAN6}/64 nodad"), ("lan", "10.1.0.1/24"), ("lan", "2001:db8:2::1/64 nodad")),
             routes=("203.0.113.0/24 dev wan scope link", "2001:db8:10::/64 via " + CLOUDNAT_WAN6 + " dev wan"),
             sysctls=_V6_SYSCTLS + _no_dad("wan", "lan") + _NO_REDIRECTS + (("net.ipv4.ip_forward", "1"),
                                                                             ("net.ipv6.conf.all.forwarding", "1")),
             nft=clientfw_ruleset(udp_blocked=fault.client_udp_blocked)),
        Node("client", "host", ns("client"),
             addresses=(("eth0", f"{CLIENT_IP}/24"), ("eth0", f"{CLIENT_IP6}/64 nodad")),
             routes=tuple(f"{net} via 10.1.0.1 dev eth0" for net in INTERNET_NETS) + (f"{INTERNET_NET6} via 2001:db8:2::1 dev eth0",),
             sysctls=_V6_SYSCTLS + _no_dad("eth0") + (("net.ipv4.ip_forward", "0"),)),
        Node("peer6", "host", ns("peer6"),
             addresses=(("eth0", f"{PEER6_IP}/64 nodad"),),
             routes=(f"2001:db8:10::/64 via {CLOUDNAT_WAN6} dev eth0", f"2001:db8:2::/64 via {CLIENTFW_WAN6} dev eth0"),
             sysctls=_V6_SYSCTLS + _no_dad("eth0") + (("net.ipv4.ip_forward", "0"),)),
    ]
    veths = [
        Veth(ns("internet"), "v0", ns("cloudnat"), "wan", "br0"),
        Veth(ns("cloudnat"), "lan", ns("server"), "eth0"),
        Veth(ns("internet"), "v1", ns("clientfw"), "wan", "br0"),
        Veth(ns("clientfw"), "lan", ns("client"), "eth0"),
        Veth(ns("internet"), "v2", ns("peer6"), "eth0", "br0"),
    ]
    if stun_servers:
        nodes.append(Node("stun", "server", ns("stun"), addresses=tuple(("eth0", f"{ip}/24") for ip in STUN_IPS),
                          routes=("198.51.100.0/24 dev eth0 scope link",), sysctls=(("net.ipv4.ip_forward", "0"),)))
        veths.append(Veth(ns("internet"), "v3", ns("stun"), "eth0", "br0"))
    return FaultPlan(lab=lab, nodes=tuple(nodes), veths=tuple(veths))


def coturn_config(fault: FaultSpec, secret: str, *, state_dir: str, cert: str | None = None, pkey: str | None = None):
    """The coturn configuration of one fault (pure): natkit's ``lab`` profile, then the fault.

    The healthy base: listening and relaying on the private address (and
    IPv6), ``external-ip=203.0.113.10/10.0.0.10``, REST auth, the IANA deny
    list with exceptions for exactly the lab's internet ranges. Returns a
    :class:`natkit.coturn.config.CoturnConfig`.
    """
    from ..coturn.profiles import Limits, lab_profile

    external = {"correct": f"{PUBLIC_IP}/{SERVER_IP}", "public-only": PUBLIC_IP, "wrong": f"{WRONG_PUBLIC_IP}/{SERVER_IP}",
                "missing": None}[fault.external_ip]
    lo, hi = EXHAUSTED_RANGE if fault.exhausted else RELAY_RANGE
    relay_ips = (SERVER_IP, SERVER_IP6) if fault.ipv6_relay else (SERVER_IP,)
    ranges = (*INTERNET_NETS, INTERNET_NET6)
    conf = lab_profile(
        (secret,), lab_ranges=ranges, listening_ips=(SERVER_IP, SERVER_IP6), port=PORT,
        tls_port=TLS_PORT if fault.tls else None, cert=cert, pkey=pkey, relay_ips=relay_ips,
        min_port=lo, max_port=hi, realm=REALM, external_ip=external,
        limits=Limits(user_quota=fault.user_quota or 0, total_quota=0, max_bps=0),
    ).config
    allowed = conf.allowed_peer_ranges
    if fault.deny_own_relay:
        # the IANA deny list covers 10/8 and nobody added allowed-peer-ip for the server's own private relay
        # address, to which coturn maps a peer address equal to external-ip before checking the lists
        allowed = tuple(r for r in allowed if r != SERVER_IP)
    return dataclasses.replace(
        # "public-only" is the fault itself: the profile would complete it to PUBLIC/PRIVATE
        conf, external_ip=external, allowed_peer_ranges=allowed, no_tcp=not fault.tcp,
        pidfile=f"{state_dir}/turnserver.pid", userdb=f"{state_dir}/turndb",
    )


def pion_args(fault: FaultSpec) -> list[str]:
    """Flags of natkit's pion/turn test server (tests/servers/pionturn) for one fault (pure).

    pion has no external-ip mapping of its own: ``-external-ip`` is the
    relayed address it tells clients while it binds the private one;
    ``public-only`` behaves as ``correct`` there. The deny list covering the
    own relay address is ``-deny 203.0.113.0/24``. TCP and TLS are the ``tcp``
    and ``tls`` arguments of ``PionTurn`` (tests/servers), not flags here.
    """
    if not set(fault.servers) & {"pion"}:
        raise UsageError(f"fault {fault.id!r} cannot be built on pion/turn", hint="faults for pion: " + ", ".join(
            f.id for f in FAULTS.values() if "pion" in f.servers))
    args = ["-realm", REALM]
    external = {"correct": PUBLIC_IP, "public-only": PUBLIC_IP, "wrong": WRONG_PUBLIC_IP, "missing": None}[fault.external_ip]
    if external:
        args += ["-external-ip", external]
    if fault.deny_own_relay:
        args += ["-deny", "203.0.113.0/24"]
    return args + list(fault.pion_knobs)


# ---------------------------------------------------------------- certificates

def tls_fixture(kind: str, directory: str | os.PathLike) -> dict[str, str]:
    """Write a lab CA and the server certificate of ``kind`` into ``directory``.

    ``kind``: "good" (CA-signed, subjectAltName IP 203.0.113.10, a year),
    "wrong-name" (CA-signed for ``turn.other.example``), "expired" (CA-signed,
    ended yesterday) or "self-signed" (right name, its own issuer). Returns
    the paths ``{"ca", "cert", "key"}`` (key 0600). The client trusts ``ca``.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from ..tls import self_signed, write_pair

    if kind not in ("good", "wrong-name", "expired", "self-signed"):
        raise UsageError(f"unknown certificate kind {kind!r}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "natkit fault-lab CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=60))
          .not_valid_after(now + datetime.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_path = d / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    if kind == "self-signed":
        cert_pem, key_pem = self_signed([PUBLIC_IP], days=365)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        san: list[x509.GeneralName] = [x509.DNSName("turn.other.example")] if kind == "wrong-name" else [
            x509.IPAddress(ipaddress.ip_address(PUBLIC_IP))]
        start, end = (now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)) if kind == "expired" else (
            now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=365))
        cn = "turn.other.example" if kind == "wrong-name" else PUBLIC_IP
        leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.SubjectAlternativeName(san), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        cert_pem = leaf.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    cert_path, key_path = write_pair(d, cert_pem, key_pem, cert_name="server_cert.pem", key_name="server_key.pem")
    return {"ca": str(ca_path), "cert": str(cert_path), "key": str(key_path)}


def faketime_library() -> str | None:
    """Path of libfaketime (Debian's ``faketime`` package), None when it is not installed."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")) + sorted(glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    return found[0] if found else None


# ---------------------------------------------------------------- a running fault

_LIVE: weakref.WeakSet[FaultLab] = weakref.WeakSet()


@atexit.register
def _teardown_leftovers() -> None:  # a fault lab never closed by its owner still goes away
    for lab in list(_LIVE):
        lab.down()


class FaultLab:
    """One :class:`FaultSpec` built for real; a context manager that removes everything it made.

    ``server``: "coturn" (started here) or "none" (the caller starts another
    TURN implementation in ``ns("server")`` on :data:`SERVER_IP`, e.g.
    pion/turn, and may call :meth:`start_holders` afterwards).
    ``stun_servers``: also build the namespace with two STUN addresses
    (:data:`STUN_IPS`); nothing listens there until the caller starts it.
    """

    def __init__(self, fault: FaultSpec | str, *, name: str | None = None, server: str = "coturn", stun_servers: bool = False) -> None:
        self.fault = FAULTS[fault] if isinstance(fault, str) else fault
        if server not in ("coturn", "none"):
            raise UsageError(f"unknown server {server!r}", hint="coturn or none")
        if server == "coturn" and "coturn" not in self.fault.servers:
            raise UsageError(f"fault {self.fault.id!r} cannot be built on coturn", hint="start another server: server='none'")
        self.name = name or "f" + secrets.token_hex(3)
        self.server_kind = server
        self.plan = fault_plan(self.name, self.fault, stun_servers=stun_servers)
        self.secret = secrets.token_urlsafe(18)
        self.dir = netns.lab_dir(self.name)
        self.tls: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self._procs: list[subprocess.Popen] = []
        self._holders: list[subprocess.Popen] = []
        self._coturn: Any = None  # a natkit.coturn.server.CoturnServer
        self._up = False
        self._old_sigterm: Any = None

    # ---- naming
    def ns(self, node: str) -> str:
        return self.plan.node(node).ns

    @property
    def uris(self) -> list[str]:
        return self.fault.uris()

    # ---- lifecycle
    def __enter__(self) -> Self:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> Self:
        """Build the namespaces and rules, start the server and the holders; tear down and re-raise on failure."""
        from .lab import preflight

        if self._up:
            return self
        preflight()
        self._up = True
        _LIVE.add(self)
        self._install_sigterm()
        try:
            netns.write_state(self.name, self._state())
            t = time.monotonic()
            netns.build(self.plan)  # type: ignore[arg-type]  # FaultPlan has Plan's shape
            self._static_neighbours()
            self.timings["build_ms"] = (time.monotonic() - t) * 1000.0
            if self.fault.tls:
                self.tls = tls_fixture(self.fault.tls, self.dir / "tls")
            if self.server_kind == "coturn":
                t = time.monotonic()
                self._start_coturn()
                self.timings["server_ms"] = (time.monotonic() - t) * 1000.0
                self.start_holders()
            netns.write_state(self.name, self._state())
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Stop every process this lab started, delete its namespaces and state. Idempotent."""
        if not self._up:
            return
        self._up = False
        procs = [*self._holders, *self._procs]
        for p in self._holders:
            _close_stdin(p)
        if self._coturn is not None:
            from ..errors import NatkitError

            try:
                self._coturn.stop()  # SIGTERM, wait for it to exit, remove its state
            except NatkitError:
                pass  # the namespace teardown below kills whatever is left in it
        netns.destroy(self.plan.namespaces, extra_pids=[p.pid for p in procs if p.poll() is None])
        for p in procs:
            try:
                p.wait(2.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(2.0)
        netns.remove_state(self.name)
        _LIVE.discard(self)
        self._restore_sigterm()

    def _install_sigterm(self) -> None:
        # SIGTERM while the lab is up raises KeyboardInterrupt in the main thread: the with-block tears down
        import signal

        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            def on_term(signum: int, frame: Any) -> None:
                raise KeyboardInterrupt("SIGTERM")

            self._old_sigterm = signal.signal(signal.SIGTERM, on_term)

    def _restore_sigterm(self) -> None:
        import signal

        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    def _static_neighbours(self) -> None:
        macs: dict[tuple[str, str], str] = {}
        for segment in V6_SEGMENTS:
            for node, dev in segment:
                links = json.loads(netns._run(["ip", "-n", self.ns(node), "-j", "link", "show", "dev", dev], step="neighbours").stdout)
                macs[(node, dev)] = links[0]["address"]
        for ns, lines in neighbour_commands(self.plan, macs).items():
            netns._run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n", step="neighbours")

    def _state(self) -> dict:
        pid = os.getpid()
        return {"lab": self.name, "kind": "faults", "fault": self.fault.id, "namespaces": list(self.plan.namespaces),
                "owner_pid": pid, "owner_start": process_start_time(pid), "created": time.time(),
                "pids": {"coturn": self._coturn.pid} if self._coturn is not None and self._coturn.pid else {}}

    # ---- the server
    def _start_coturn(self) -> None:
        """coturn through natkit's one launcher (:class:`~natkit.coturn.server.CoturnServer`, native backend) behind
        ``ip netns exec`` in the server's namespace, ready once its listeners are open; under libfaketime
        (``env LD_PRELOAD=...`` execs in place, so the PID stays turnserver's) for a skewed clock."""
        from ..coturn.native import find_binary, missing_reason
        from ..coturn.server import CoturnServer
        from ..errors import NatkitError

        if find_binary() is None:
            raise ServerStartFailed(f"coturn cannot run: {missing_reason()}", step="coturn", hint="apt-get install coturn")
        conf = coturn_config(self.fault, self.secret, state_dir=str(self.dir), cert=self.tls.get("cert"), pkey=self.tls.get("key"))
        prefix: list[str] = []
        if self.fault.clock_offset:
            lib = faketime_library()
            if lib is None:
                raise LabError("the clock-skew fault needs libfaketime", step="coturn", hint="apt-get install faketime")
            # the wall clock only: coturn's timers run on the monotonic clock
            prefix = ["env", f"LD_PRELOAD={lib}", f"FAKETIME={self.fault.clock_offset}", "FAKETIME_DONT_FAKE_MONOTONIC=1",
                      "FAKETIME_NO_CACHE=1"]
        server = CoturnServer(conf, backend="native", name="coturn", state_dir=self.dir, ready_timeout=15.0,
                              argv_prefix=netns.netns_argv(self.ns("server"), prefix), ephemeral=True)
        self._coturn = server
        try:
            server.start()
        except NatkitError as exc:
            raise ServerStartFailed(f"coturn did not start in the fault lab: {exc.message}", step="coturn", details=exc.details) from None

    @property
    def coturn(self) -> Any:
        """The fault's :class:`~natkit.coturn.server.CoturnServer` (None when another server runs)."""
        return self._coturn

    @property
    def coturn_config_path(self) -> Path | None:
        return Path(self._coturn.info.config_path) if self._coturn is not None and self._coturn.info else None

    def server_log(self, tail: int = 30) -> list[str]:
        if self._coturn is None or self._coturn.info is None:
            return []
        try:
            return Path(self._coturn.info.log_path).read_text(errors="replace").splitlines()[-tail:]
        except OSError:
            return []

    # ---- holders (allocations that fill a quota or the port range)
    def start_holders(self) -> None:
        """Start what the fault needs before the doctor runs: allocations held with the doctor's
        credential (``hold``) or with fresh users until the server refuses (``exhausted``)."""
        if self.fault.hold:
            username, password = self.doctor_credential()
            self._hold(self.fault.hold, username=username, password=password)
        if self.fault.exhausted:
            self._hold(EXHAUSTED_RANGE[1] - EXHAUSTED_RANGE[0] + 1, secret=self.secret, until_refused=True)

    def _hold(self, count: int, *, username: str | None = None, password: str | None = None, secret: str | None = None,
              until_refused: bool = False) -> None:
        env = netns.installation_env()
        env.update({k: v for k, v in (("NATKIT_HOLD_USERNAME", username), ("NATKIT_HOLD_PASSWORD", password),
                                      ("NATKIT_HOLD_SECRET", secret)) if v})
        argv = ["python", "-m", "natkit.lab.faults", "hold", f"{PUBLIC_IP}:{PORT}", str(count)] + (["--until-refused"] if until_refused else [])
        p = subprocess.Popen(netns.netns_argv(self.ns("client"), argv), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._holders.append(p)
        line = _readline(p, 15.0)
        if not line.startswith("held "):
            raise LabError(f"the allocation holder did not hold its allocations: {line.strip() or 'no output'}", step="hold",
                           details=[*(p.stderr.read().splitlines()[-10:] if p.poll() is not None and p.stderr else [])])
        held = int(line.split()[1])
        if held < count and not until_refused:
            raise LabError(f"the holder got {held} of {count} allocations", step="hold")

    # ---- the doctor
    def doctor_credential(self) -> tuple[str, str]:
        """The long-term pair the doctor is given for ``credential`` "user" / "expired" faults (REST-minted)."""
        from ..credentials import mint

        if self.fault.credential == "expired":
            cred = mint(self.secret, DOCTOR_USER, 60, now=time.time() - 3600)  # minted an hour ago for one minute
        else:
            cred = mint(self.secret, DOCTOR_USER, 3600)
        return cred.username, cred.password

    def doctor_command(self, extra: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
        """``(argv, environment)`` of ``natkit doctor`` for this fault; secrets travel in the environment."""
        argv = ["natkit", "doctor", *self.uris, "--json"]
        env: dict[str, str] = {}
        if self.fault.credential in ("secret", "wrong-secret"):
            env["NATKIT_TURN_SECRET"] = self.secret if self.fault.credential == "secret" else "not-" + self.secret
        else:
            username, password = self.doctor_credential()
            argv += ["--user", username]
            env["NATKIT_TURN_PASSWORD"] = password
        if self.tls:
            argv += ["--ca", self.tls["ca"]]
        if self.fault.peer6:
            argv += ["--peer", PEER6_IP]
        return [*argv, *extra], env

    def run_doctor(self, extra: Sequence[str] = (), *, timeout: float = 60.0) -> tuple[dict, float, int]:
        """Run the doctor in the client's namespace; return ``(JSON report, wall seconds, exit code)``."""
        argv, env = self.doctor_command(extra)
        full_env = netns.installation_env()
        full_env.update(env)
        full_env["NATKIT_QUIET"] = "1"
        t = time.monotonic()
        proc = subprocess.run(netns.netns_argv(self.ns("client"), argv), env=full_env, capture_output=True, text=True, timeout=timeout, check=False)
        wall = time.monotonic() - t
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            raise LabError(f"natkit doctor printed no JSON (exit {proc.returncode})", step="doctor",
                           details=(proc.stderr or proc.stdout).splitlines()[-20:]) from None
        return report, wall, proc.returncode

    def exec(self, node: str, argv: Sequence[str], *, timeout: float = 30.0, input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command inside a node's namespace and capture its output."""
        return netns.run_in(self.ns(node), argv, timeout=timeout, input=input)

    def popen(self, node: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        """Start a process inside a node's namespace; it is stopped at teardown."""
        kw.setdefault("start_new_session", True)
        kw["env"] = netns.installation_env(kw.get("env"))
        p = subprocess.Popen(netns.netns_argv(self.ns(node), list(argv)), **kw)
        self._procs.append(p)
        return p


def _readline(p: subprocess.Popen, timeout: float) -> str:
    import select

    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    return p.stdout.readline() if ready else ""


def _close_stdin(p: subprocess.Popen) -> None:
    try:
        if p.stdin:
            p.stdin.close()
    except OSError:
        pass


# ---------------------------------------------------------------- the holder process

async def _hold_main(server: str, count: int, until_refused: bool) -> int:
    """Hold ``count`` UDP allocations on ``server`` (``ip:port``) until stdin closes.

    Credentials from the environment: ``NATKIT_HOLD_USERNAME``/``NATKIT_HOLD_PASSWORD``
    (one pair for all), or ``NATKIT_HOLD_SECRET`` (a fresh REST user per
    allocation). Prints ``held N`` (and ``refused CODE`` when the server said no).
    """
    import asyncio

    from ..credentials import mint
    from ..errors import NatkitError
    from ..model import TransportAddress
    from ..stun.aio import TurnClient

    host, port = server.rsplit(":", 1)
    addr = TransportAddress(host, int(port))
    clients = []
    refused = None
    try:
        for i in range(count):
            if os.environ.get("NATKIT_HOLD_SECRET"):
                cred = mint(os.environ["NATKIT_HOLD_SECRET"], f"holder{i}", 3600)
                username, password = cred.username, cred.password
            else:
                username, password = os.environ["NATKIT_HOLD_USERNAME"], os.environ["NATKIT_HOLD_PASSWORD"]
            client = await TurnClient.open(addr, username=username, password=password, timeout=3.0)
            clients.append(client)
            try:
                reply = await client.allocate(lifetime=3600, check=False)
            except NatkitError as exc:
                refused = exc.kind
                break
            if not reply.ok:
                refused = str(reply.code)
                if until_refused:
                    break
                break
        held = sum(1 for c in clients if c.relayed is not None)
        print(f"held {held}" + (f" refused {refused}" if refused else ""), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the lab closes our stdin
    finally:
        for c in clients:
            await c.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m natkit.lab.faults hold IP:PORT COUNT [--until-refused]`` (the lab's helper process)."""
    import asyncio

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] != "hold":
        print("usage: python -m natkit.lab.faults hold IP:PORT COUNT [--until-refused]", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_hold_main(args[1], int(args[2]), "--until-refused" in args[3:]))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
