"""Lab topologies as data, and everything derived from them without I/O.

A :class:`LabSpec` declares an "internet" segment, one server host with two
addresses (coturn, RFC 5780 needs two), NAT boxes (:class:`NatSpec`, possibly
cascaded) and hosts (:class:`HostSpec`) behind them or directly on the
internet ("open"). :func:`plan` turns a spec into a :class:`Plan`: namespace
names, interfaces, addresses, routes, sysctls and one nftables ruleset per
box, rendered by :func:`render_nat_ruleset` / :func:`render_host_firewall`.
Nothing here touches the system; :mod:`natkit.lab.netns` executes a plan.

Address plan (no default route anywhere, so nothing can leave the lab):

- internet segment: a bridge in its own namespace; servers on
  203.0.113.0/24 (TEST-NET-3), NAT boxes' WAN and open hosts on
  198.51.100.0/24 (TEST-NET-2), both prefixes on-link for every member;
- the server: 203.0.113.10 and 203.0.113.11;
- NAT box k (k = 1, 2, ...) on the internet: WAN 198.51.100.(10+k);
  open host j: 198.51.100.(100+j);
- behind NAT box k: LAN 10.0.k.0/24 (box .1, devices .10, .11, ...), or
  100.64.k.0/24 (RFC 6598 shared space) when other NAT boxes sit behind it
  (a carrier-grade NAT); devices behind a box route only the two
  documentation prefixes through it.

NAT behaviours (RFC 4787 mapping/filtering, as :class:`natkit.nat_classify.Mapping`
and :class:`~natkit.nat_classify.Filtering`: the words ``natkit nat`` measures;
the table and the expected-outcome matrix live in :mod:`natkit.p2p`; classic
RFC 3489 name second):

==================  ============================  ============================  ==================
behaviour           mapping                       filtering                     classic name
==================  ============================  ============================  ==================
full_cone           endpoint-independent          endpoint-independent          full cone
restricted          endpoint-independent          address-dependent             restricted cone
port_restricted     endpoint-independent          address-and-port-dependent    port-restricted cone
symmetric           address-and-port-dependent    address-and-port-dependent    symmetric
==================  ============================  ============================  ==================

"open" is a host directly on the internet (no NAT box).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from pathlib import Path
from typing import Any, Iterable

from .. import p2p
from ..errors import UsageError
from ..nat_classify import Filtering, Mapping
from ..p2p import (  # noqa: F401  (re-exported: the lab's names for natkit.p2p's vocabulary)
    BEHAVIOURS,
    DIRECT,
    DIRECT_PRFLX,
    FAILED,
    FULL_CONE,
    MATRIX_BEHAVIOURS,
    OPEN,
    PORT_RESTRICTED,
    RELAY,
    RESTRICTED,
    SYMMETRIC,
)

# RFC 4787 / RFC 5780 words, natkit.nat_classify's enums
EIM, ADM, APDM = Mapping.ENDPOINT_INDEPENDENT, Mapping.ADDRESS_DEPENDENT, Mapping.ADDRESS_AND_PORT_DEPENDENT
EIF, ADF, APDF = Filtering.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT
_MAPPING_RANK = {Mapping.NONE: -1, EIM: 0, ADM: 1, APDM: 2}
_FILTERING_RANK = {Filtering.NONE: -1, EIF: 0, ADF: 1, APDF: 2}


def word(value) -> str:
    """The RFC word of a Mapping/Filtering (``"endpoint-independent"``), any other value as text."""
    return str(getattr(value, "value", value))

#: short names for generated hosts
SHORT = {OPEN: "open", FULL_CONE: "fc", RESTRICTED: "rc", PORT_RESTRICTED: "prc", SYMMETRIC: "sym"}

_ALIASES = {
    "none": OPEN, "no_nat": OPEN, "public": OPEN,
    "full": FULL_CONE, "fullcone": FULL_CONE, "eim_eif": FULL_CONE, "fc": FULL_CONE,
    "restricted_cone": RESTRICTED, "address_restricted": RESTRICTED, "eim_adf": RESTRICTED, "rc": RESTRICTED,
    "port_restricted_cone": PORT_RESTRICTED, "portrestricted": PORT_RESTRICTED, "eim_apdf": PORT_RESTRICTED, "prc": PORT_RESTRICTED,
    "apdm_apdf": SYMMETRIC, "sym": SYMMETRIC,
}

SERVER_IPS = ("203.0.113.10", "203.0.113.11")
SERVER_NET = "203.0.113.0/24"
PUBLIC_NET = "198.51.100.0/24"
INTERNET_NETS = (SERVER_NET, PUBLIC_NET)
NS_PREFIX = "natkit"
RESERVED_NAMES = {"internet", "server"}
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,15}$")
_LAB_RE = re.compile(r"^[a-z0-9]{1,12}$")


def normalise_behaviour(name: str) -> str:
    """Map user spellings ("port-restricted", "Full Cone", "EIM/ADF") to a key of :data:`BEHAVIOURS`.

    Raises :class:`UsageError` for unknown names.
    """
    key = re.sub(r"[\s/-]+", "_", str(name).strip().lower())
    key = _ALIASES.get(key, key)
    if key not in BEHAVIOURS:
        raise UsageError(
            f"unknown NAT behaviour {name!r}",
            hint="use one of " + ", ".join(BEHAVIOURS),
        )
    return key


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UsageError(f"invalid {kind} name {name!r}", hint="lower-case letters, digits and '-', starting with a letter, at most 16 characters")
    if name in RESERVED_NAMES:
        raise UsageError(f"{kind} name {name!r} is reserved")


@dataclasses.dataclass(frozen=True)
class NatSpec:
    """One NAT box.

    ``behind``: name of the NAT box in front of this one (a cascade, e.g. a home
    NAT behind a carrier-grade NAT), None for a box on the internet.
    ``hairpin``: packets from the LAN to the box's own public address are
    sent back into the LAN (RFC 4787 REQ-9). ``udp_blocked``: outbound UDP is
    dropped (TURN over TCP still works). ``loss``: percentage (0..100) of
    forwarded packets dropped at random, both directions. ``mapping_timeout``:
    seconds an idle UDP mapping lives (conntrack UDP timeouts and the rule
    sets' entries); None keeps the kernel's defaults (30 s / 120 s).
    """

    name: str
    behaviour: str
    behind: str | None = None
    hairpin: bool = False
    udp_blocked: bool = False
    loss: int = 0
    mapping_timeout: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "behaviour", normalise_behaviour(self.behaviour))

    @property
    def mapping(self) -> Mapping:
        return BEHAVIOURS[self.behaviour][0]

    @property
    def filtering(self) -> Filtering:
        return BEHAVIOURS[self.behaviour][1]

    def validate(self) -> None:
        _check_name("NAT", self.name)
        if self.behaviour == OPEN:
            raise UsageError(f"NAT {self.name!r}: 'open' means no NAT box", hint="put the host on the internet (no 'behind') instead")
        if not isinstance(self.loss, int) or not 0 <= self.loss <= 100:
            raise UsageError(f"NAT {self.name!r}: loss must be an integer percentage 0..100, got {self.loss!r}")
        if self.mapping_timeout is not None and (not isinstance(self.mapping_timeout, int) or not 1 <= self.mapping_timeout <= 86400):
            raise UsageError(f"NAT {self.name!r}: mapping_timeout must be 1..86400 seconds, got {self.mapping_timeout!r}")


@dataclasses.dataclass(frozen=True)
class HostSpec:
    """One host (where peers and probes run).

    ``behind``: the NAT box it sits behind, None for a host directly on the
    internet ("open"). ``udp_blocked`` and ``loss`` act as a host firewall
    (for an open host; behind a NAT, prefer the NAT box's options).
    """

    name: str
    behind: str | None = None
    udp_blocked: bool = False
    loss: int = 0

    def validate(self) -> None:
        _check_name("host", self.name)
        if not isinstance(self.loss, int) or not 0 <= self.loss <= 100:
            raise UsageError(f"host {self.name!r}: loss must be an integer percentage 0..100, got {self.loss!r}")


@dataclasses.dataclass(frozen=True)
class ServerSpec:
    """The server host: two addresses, coturn on ``port`` (UDP+TCP) and its
    RFC 5780 alternate port ``port + 1``; relay ports ``min_port..max_port``."""

    turn: bool = True
    port: int = 3478
    min_port: int = 49152
    max_port: int = 65535
    realm: str = "natkit.lab"

    def validate(self) -> None:
        for p in (self.port, self.min_port, self.max_port):
            if not isinstance(p, int) or not 1 <= p <= 65535:
                raise UsageError(f"server port {p!r} out of range 1-65535")
        if self.min_port > self.max_port:
            raise UsageError("server relay port range is empty")
        if self.min_port <= self.port + 1 <= self.max_port or self.min_port <= self.port <= self.max_port:
            raise UsageError("the relay port range must not contain the listening ports")


@dataclasses.dataclass(frozen=True)
class LabSpec:
    """A whole lab. ``name``: lab id in namespace names (``natkit-<name>-<node>``);
    None lets the builder pick a random one."""

    nats: tuple[NatSpec, ...] = ()
    hosts: tuple[HostSpec, ...] = ()
    server: ServerSpec = ServerSpec()
    name: str | None = None

    # ---- construction -------------------------------------------------
    @classmethod
    def peers(cls, *behaviours: str, name: str | None = None, **nat_options) -> "LabSpec":
        """One host per behaviour, each behind its own NAT box (open: none).

        Hosts are named after the behaviour (``open1``, ``fc1``, ``rc1``,
        ``prc1``, ``sym1``; a second one of a kind gets ``2``); the box of host
        ``h`` is ``h-nat``. ``nat_options`` (hairpin, udp_blocked, loss,
        mapping_timeout) apply to every box.
        """
        nats: list[NatSpec] = []
        hosts: list[HostSpec] = []
        seen: dict[str, int] = {}
        for b in behaviours:
            b = normalise_behaviour(b)
            seen[b] = seen.get(b, 0) + 1
            host = f"{SHORT[b]}{seen[b]}"
            if b == OPEN:
                hosts.append(HostSpec(host, udp_blocked=nat_options.get("udp_blocked", False), loss=nat_options.get("loss", 0)))
            else:
                nats.append(NatSpec(f"{host}-nat", b, **nat_options))
                hosts.append(HostSpec(host, behind=f"{host}-nat"))
        spec = cls(nats=tuple(nats), hosts=tuple(hosts), name=name)
        spec.validate()
        return spec

    @classmethod
    def matrix(cls, name: str | None = None, behaviours: Iterable[str] = MATRIX_BEHAVIOURS) -> "LabSpec":
        """Two hosts of every behaviour (``open1``, ``open2``, ``fc1``, ``fc2``, ...)."""
        bs = [normalise_behaviour(b) for b in behaviours]
        return cls.peers(*[b for b in bs for _ in range(2)], name=name)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LabSpec":
        """Build from plain data (a parsed TOML/JSON file); see :func:`load_spec`."""
        if not isinstance(data, dict):
            raise UsageError("a lab spec must be a table/object")
        known = {"name", "server", "nat", "nats", "host", "hosts", "peers", "options"}
        unknown = set(data) - known
        if unknown:
            raise UsageError(f"unknown lab spec keys: {', '.join(sorted(unknown))}", hint="known: " + ", ".join(sorted(known)))
        name = data.get("name")
        server = ServerSpec(**_only(data.get("server", {}), ServerSpec, "server"))
        if "peers" in data:
            if any(k in data for k in ("nat", "nats", "host", "hosts")):
                raise UsageError("use either 'peers' or explicit 'nat'/'host' tables, not both")
            base = cls.peers(*data["peers"], name=name, **_only(data.get("options", {}), NatSpec, "options"))
            spec = dataclasses.replace(base, server=server)
        else:
            nats = tuple(NatSpec(**_only(n, NatSpec, "nat")) for n in data.get("nat", data.get("nats", [])))
            hosts = tuple(HostSpec(**_only(h, HostSpec, "host")) for h in data.get("host", data.get("hosts", [])))
            spec = cls(nats=nats, hosts=hosts, server=server, name=name)
        spec.validate()
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "server": dataclasses.asdict(self.server),
            "nat": [dataclasses.asdict(n) for n in self.nats],
            "host": [dataclasses.asdict(h) for h in self.hosts],
        }

    # ---- queries ------------------------------------------------------
    def nat(self, name: str) -> NatSpec:
        for n in self.nats:
            if n.name == name:
                return n
        raise UsageError(f"no NAT box named {name!r} in this lab")

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise UsageError(f"no host named {name!r} in this lab", hint="hosts: " + ", ".join(h.name for h in self.hosts))

    @property
    def devices(self) -> tuple[NatSpec | HostSpec, ...]:
        """Every NAT box, then every host: the nodes that sit behind something (or on the internet)."""
        return (*self.nats, *self.hosts)

    def chain(self, host: str) -> tuple[NatSpec, ...]:
        """The NAT boxes between ``host`` and the internet, innermost first."""
        out = []
        behind = self.host(host).behind
        while behind is not None:
            n = self.nat(behind)
            out.append(n)
            behind = n.behind
        return tuple(out)

    def behaviour_of(self, host: str) -> str:
        """The declared behaviour of the innermost box (``open`` without one)."""
        c = self.chain(host)
        return c[0].behaviour if c else OPEN

    def validate(self) -> None:
        """Raise :class:`UsageError` for anything :func:`plan` could not build."""
        if self.name is not None and (not isinstance(self.name, str) or not _LAB_RE.match(self.name)):
            raise UsageError(f"invalid lab name {self.name!r}", hint="1-12 lower-case letters or digits")
        self.server.validate()
        names = [n.name for n in self.nats] + [h.name for h in self.hosts]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UsageError(f"duplicate node names: {', '.join(dup)}")
        nat_names = {n.name for n in self.nats}
        for n in self.nats:
            n.validate()
            if n.behind is not None and n.behind not in nat_names:
                raise UsageError(f"NAT {n.name!r} is behind {n.behind!r}, which is not a NAT box of this lab")
        for h in self.hosts:
            h.validate()
            if h.behind is not None and h.behind not in nat_names:
                raise UsageError(f"host {h.name!r} is behind {h.behind!r}, which is not a NAT box of this lab")
        for n in self.nats:  # no cycles
            seen, cur = {n.name}, n.behind
            while cur is not None:
                if cur in seen:
                    raise UsageError(f"NAT boxes form a cycle through {cur!r}")
                seen.add(cur)
                cur = self.nat(cur).behind
        top = sum(1 for n in self.nats if n.behind is None)
        if top > 80:
            raise UsageError("at most 80 NAT boxes can sit on the internet segment")
        if sum(1 for h in self.hosts if h.behind is None) > 150:
            raise UsageError("at most 150 open hosts")
        if len(self.nats) > 200:
            raise UsageError("at most 200 NAT boxes")
        for n in self.nats:
            if sum(1 for x in self.devices if x.behind == n.name) > 200:
                raise UsageError(f"too many devices behind NAT {n.name!r}")


def _only(data: Any, cls, what: str) -> dict:
    if not isinstance(data, dict):
        raise UsageError(f"'{what}' must be a table/object, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    extra = set(data) - fields
    if extra:
        raise UsageError(f"unknown keys in '{what}': {', '.join(sorted(extra))}", hint="known: " + ", ".join(sorted(fields)))
    return dict(data)


def load_spec(path: str | Path) -> LabSpec:
    """Read a lab spec from a TOML (``.toml``) or JSON file.

    Either a shorthand ``peers = ["symmetric", "port_restricted"]`` (one host
    per behaviour behind its own NAT box, optional ``[options]`` for every
    box), or explicit ``[[nat]]`` (name, behaviour, behind, hairpin,
    udp_blocked, loss, mapping_timeout) and ``[[host]]`` (name, behind)
    tables; optional ``name`` and ``[server]`` (turn, port, min_port,
    max_port, realm). Raises :class:`UsageError` for unreadable or invalid specs.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read lab spec {str(p)!r}: {exc.strerror or exc}") from None
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise UsageError(f"lab spec {str(p)!r} does not parse: {exc}") from None
    try:
        return LabSpec.from_dict(data)
    except TypeError as exc:
        raise UsageError(f"lab spec {str(p)!r}: {exc}") from None


# ---------------------------------------------------------------- expected behaviour

def effective_behaviour(spec: LabSpec, host: str) -> dict[str, Any]:
    """What a host should measure end to end through its chain of NAT boxes.

    Returns ``{"mapping", "filtering", "hairpin", "udp_blocked"}``. Mapping and
    filtering of a cascade are the most restrictive of its boxes (each box
    keeps the remote address untouched on the way in, so every box's filter
    applies; one address-dependent mapping anywhere makes the whole path
    address-dependent). ``hairpin`` is None (not predicted) for cascades.
    ``mapping``/``filtering`` are :class:`Mapping`/:class:`Filtering`
    (``Mapping.NONE``/``Filtering.NONE`` for an open host), comparable with
    the strings a measurement returns.
    """
    chain = spec.chain(host)
    h = spec.host(host)
    mapping, filtering = Mapping.NONE, Filtering.NONE
    for n in chain:
        if _MAPPING_RANK[n.mapping] > _MAPPING_RANK[mapping]:
            mapping = n.mapping
        if _FILTERING_RANK[n.filtering] > _FILTERING_RANK[filtering]:
            filtering = n.filtering
    if not chain:
        hairpin = None
    elif len(chain) == 1:
        hairpin = chain[0].hairpin
    else:
        hairpin = None
    return {
        "mapping": mapping,
        "filtering": filtering,
        "hairpin": hairpin,
        "udp_blocked": h.udp_blocked or any(n.udp_blocked for n in chain),
    }


def classify(mapping, filtering) -> str:
    """The behaviour key for a measured (mapping, filtering) pair (enums or their
    words, ``"none"`` without a NAT), e.g. ``"symmetric"``.

    Combinations that have no RFC 3489 name come back as ``"mapping/filtering"``.
    """
    return p2p.behaviour_of(mapping, filtering) or f"{word(mapping)}/{word(filtering)}"


# ---------------------------------------------------------------- expected outcomes

def expected_outcome(a: str, b: str, *, turn: bool) -> str:
    """The expected matrix of docs/lab.md (the one libwebrtc's P2P transport channel tests assert).

    Between two hosts that gather host, srflx (and with ``turn``, relay)
    candidates: ``"direct"``, ``"direct (prflx)"`` (a symmetric NAT on one
    side: the pair needs a peer-reflexive candidate), ``"relay"``, or with
    STUN only ``"failed"`` where a relay would be needed. Any spelling
    :func:`normalise_behaviour` accepts; read from :data:`natkit.p2p.MATRIX`.
    """
    return p2p.expected_outcome(normalise_behaviour(a), normalise_behaviour(b), turn=turn)


def outcome_matches(expected: str, outcome: str) -> bool:
    """Does a measured outcome (``"direct host"``, ``"direct srflx"``,
    ``"direct prflx"``, ``"relay"``, ``"failed"``, ...) satisfy ``expected``?

    ``direct`` accepts any direct kind; ``direct (prflx)`` only ``direct prflx``.
    """
    if expected == DIRECT:
        return outcome.startswith("direct")
    if expected == DIRECT_PRFLX:
        return outcome == "direct prflx"
    return outcome == expected


# ---------------------------------------------------------------- rule rendering

def _seconds(timeout: int | None) -> int:
    return 120 if timeout is None else timeout


def render_nat_ruleset(nat: NatSpec, wan_ip: str, lan_net: str, *, wan: str = "wan", lan: str = "lan") -> str:
    """The nftables ruleset (``nft -f`` text) of one NAT box.

    ``wan_ip``: the box's public address on ``wan``; ``lan_net``: the CIDR of
    its LAN on ``lan``. One table ``ip natkit``:

    - ``postrouting`` (nat, srcnat): ``masquerade`` on the WAN; Linux keeps
      the source port where it can, so the mapping is endpoint-independent;
      ``masquerade fully-random`` for the symmetric NAT (a fresh random
      external port per destination: address-and-port-dependent mapping).
    - ``record`` (filter, postrouting, after srcnat, so it sees the translated
      port): every outbound UDP packet of a connection opened from the LAN
      records ``external port -> internal address . port`` in map ``@eim``
      and ``remote address . external port`` in set ``@adf``.
    - ``prerouting`` (nat, dstnat): full cone DNATs any inbound UDP to a
      recorded external port through ``@eim`` (endpoint-independent
      filtering); restricted cone only when ``(source address, port)`` is in
      ``@adf`` (address-dependent). Port-restricted and symmetric boxes
      rely on conntrack alone (address-and-port-dependent).
    - ``input``: the conntrack-trap fix (docs/lab.md): new inbound traffic on
      the WAN to the box itself is dropped before its conntrack entry is
      confirmed, so an early packet from a remote peer cannot claim the
      tuple and push MASQUERADE to another port.
    - ``forward``: only DNATed new inbound connections pass; optional loss
      (``numgen random mod 100 < N``) and UDP blocking.
    - hairpinning: LAN packets to ``wan_ip`` are DNATed through ``@eim`` and
      SNATed to ``wan_ip``, so a host reaches another's public mapping.
    """
    ipaddress.ip_address(wan_ip)
    lan_net = str(ipaddress.ip_network(lan_net, strict=False))
    timeout = _seconds(nat.mapping_timeout)
    mapping, filtering, label = BEHAVIOURS[nat.behaviour]
    L: list[str] = []
    a = L.append
    a(f"# natkit NAT box {nat.name!r}: {label} (mapping {word(mapping)}, filtering {word(filtering)})")
    opts = [k for k in ("hairpin", "udp_blocked") if getattr(nat, k)]
    if nat.loss:
        opts.append(f"loss {nat.loss}%")
    if nat.mapping_timeout is not None:
        opts.append(f"mapping timeout {nat.mapping_timeout}s")
    if opts:
        a("# options: " + ", ".join(opts))
    a("table ip natkit {")
    a("\t# external port -> internal address . port, recorded on the way out")
    a("\tmap eim {")
    a("\t\ttype inet_service : ipv4_addr . inet_service")
    a("\t\tflags dynamic,timeout")
    a(f"\t\ttimeout {timeout}s")
    a("\t}")
    a("\t# remote address . external port, recorded on the way out")
    a("\tset adf {")
    a("\t\ttype ipv4_addr . inet_service")
    a("\t\tflags dynamic,timeout")
    a(f"\t\ttimeout {timeout}s")
    a("\t}")
    a("")
    a("\tchain prerouting {")
    a("\t\ttype nat hook prerouting priority dstnat; policy accept;")
    if nat.behaviour == FULL_CONE:
        a(f'\t\tiifname "{wan}" dnat ip to udp dport map @eim')
    elif nat.behaviour == RESTRICTED:
        a(f'\t\tiifname "{wan}" ip saddr . udp dport @adf dnat ip to udp dport map @eim')
    if nat.hairpin:
        a(f'\t\tiifname "{lan}" ip daddr {wan_ip} dnat ip to udp dport map @eim')
    a("\t}")
    a("")
    a("\tchain postrouting {")
    a("\t\ttype nat hook postrouting priority srcnat; policy accept;")
    if nat.behaviour == SYMMETRIC:
        a(f'\t\toifname "{wan}" masquerade fully-random')
    else:
        a(f'\t\toifname "{wan}" masquerade')
    if nat.hairpin:
        a(f'\t\toifname "{lan}" ip saddr {lan_net} ct status dnat snat ip to {wan_ip}')
    a("\t}")
    a("")
    a("\tchain record {")
    a("\t\ttype filter hook postrouting priority srcnat + 10; policy accept;")
    a(f'\t\toifname "{wan}" meta l4proto udp ct direction original update @eim {{ udp sport : ct original ip saddr . ct original proto-src }}')
    a(f'\t\toifname "{wan}" meta l4proto udp update @adf {{ ip daddr . udp sport }}')
    a("\t}")
    a("")
    a("\tchain input {")
    a("\t\ttype filter hook input priority filter; policy accept;")
    a(f'\t\tiifname "{wan}" ct state new drop')
    a("\t}")
    a("")
    a("\tchain forward {")
    a("\t\ttype filter hook forward priority filter; policy accept;")
    if nat.loss:
        a(f"\t\tnumgen random mod 100 < {nat.loss} drop")
    if nat.udp_blocked:
        a(f'\t\toifname "{wan}" meta l4proto udp drop')
        a(f'\t\tiifname "{wan}" meta l4proto udp drop')
    a(f'\t\tiifname "{wan}" ct state new ct status dnat accept')
    a(f'\t\tiifname "{wan}" ct state new drop')
    a("\t}")
    a("}")
    return "\n".join(L) + "\n"


def render_host_firewall(host: HostSpec, *, dev: str = "eth0") -> str | None:
    """The nftables ruleset of a host's own firewall (``udp_blocked``, ``loss``),
    or None when the host has neither."""
    if not host.udp_blocked and not host.loss:
        return None
    L = [f"# natkit host {host.name!r} firewall", "table inet natkit {"]
    for chain, hook, iface in (("out", "output", "oifname"), ("in", "input", "iifname")):
        L.append(f"\tchain {chain} {{")
        L.append(f"\t\ttype filter hook {hook} priority filter; policy accept;")
        if host.loss:
            L.append(f'\t\t{iface} "{dev}" numgen random mod 100 < {host.loss} drop')
        if host.udp_blocked:
            L.append(f'\t\t{iface} "{dev}" meta l4proto udp drop')
        L.append("\t}")
    L.append("}")
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------- the plan

@dataclasses.dataclass(frozen=True)
class Veth:
    """A veth pair: ``a_if`` in namespace ``a_ns`` (created there), ``b_if`` in ``b_ns``;
    ``a_master``: a bridge in ``a_ns`` to enslave ``a_if`` to."""

    a_ns: str
    a_if: str
    b_ns: str
    b_if: str
    a_master: str | None = None


@dataclasses.dataclass(frozen=True)
class Node:
    """One namespace of the lab and how it is configured."""

    name: str  # node name in the spec ("internet", "server", NAT or host name)
    kind: str  # internet | server | nat | host
    ns: str  # namespace name, natkit-<lab>-<name>
    bridges: tuple[str, ...] = ()
    addresses: tuple[tuple[str, str], ...] = ()  # (interface, CIDR)
    routes: tuple[str, ...] = ()  # "ip route add" arguments
    sysctls: tuple[tuple[str, str], ...] = ()
    nft: str | None = None  # ruleset text or None
    behind: str | None = None  # NAT box in front (hosts and cascaded boxes)

    @property
    def ips(self) -> tuple[str, ...]:
        return tuple(c.split("/")[0] for _, c in self.addresses)

    @property
    def ip(self) -> str | None:
        """The node's main address (WAN of a box, eth0 of a host or server)."""
        for dev, cidr in self.addresses:
            if dev in ("eth0", "wan"):
                return cidr.split("/")[0]
        return None


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything :mod:`natkit.lab.netns` needs to build a lab, in build order."""

    lab: str
    spec: LabSpec
    nodes: tuple[Node, ...]
    veths: tuple[Veth, ...]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise UsageError(f"no node {name!r} in lab {self.lab!r}", hint="nodes: " + ", ".join(n.name for n in self.nodes))

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(n.ns for n in self.nodes)

    @property
    def server_ips(self) -> tuple[str, ...]:
        return SERVER_IPS

    def allowed_peer_ranges(self) -> tuple[str, ...]:
        """The lab's internet ranges: the only peers the lab's coturn may relay to."""
        return INTERNET_NETS


_BASE_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
)


def namespace_name(lab: str, node: str) -> str:
    """``natkit-<lab>-<node>``: every namespace natkit creates starts with ``natkit``."""
    return f"{NS_PREFIX}-{lab}-{node}"


def plan(spec: LabSpec, lab: str | None = None) -> Plan:
    """Turn a spec into a build plan (pure). ``lab`` overrides ``spec.name``."""
    spec.validate()
    lab = lab or spec.name
    if not lab or not _LAB_RE.match(lab):
        raise UsageError(f"invalid lab name {lab!r}", hint="1-12 lower-case letters or digits")
    ns = lambda n: namespace_name(lab, n)  # noqa: E731
    nodes: list[Node] = []
    veths: list[Veth] = []
    inet_ns = ns("internet")
    srv_ns = ns("server")
    port_no = iter(range(10_000))

    nodes.append(Node("internet", "internet", inet_ns, bridges=("br0",), sysctls=_BASE_SYSCTLS + (("net.ipv4.ip_forward", "0"),)))
    veths.append(Veth(inet_ns, f"v{next(port_no)}", srv_ns, "eth0", "br0"))
    nodes.append(Node(
        "server", "server", srv_ns,
        addresses=tuple(("eth0", f"{ip}/24") for ip in SERVER_IPS),
        routes=(f"{PUBLIC_NET} dev eth0 scope link",),
        sysctls=_BASE_SYSCTLS + (("net.ipv4.ip_forward", "0"),),
    ))

    nat_index = {n.name: i + 1 for i, n in enumerate(spec.nats)}
    behind_of: dict[str | None, list[str]] = {}
    for x in spec.devices:
        behind_of.setdefault(x.behind, []).append(x.name)
    carrier = {n.name for n in spec.nats if any(m.behind == n.name for m in spec.nats)}

    def lan_net(nat: str) -> ipaddress.IPv4Network:
        k = nat_index[nat]
        return ipaddress.IPv4Network(f"100.64.{k}.0/24" if nat in carrier else f"10.0.{k}.0/24")

    # addresses of devices: (dev name) -> (cidr, gateway or None)
    addr_of: dict[str, tuple[str, str | None]] = {}
    top_nat = 0
    top_host = 0
    for x in spec.devices:
        if x.behind is None:
            if isinstance(x, NatSpec):
                top_nat += 1
                addr_of[x.name] = (f"198.51.100.{10 + top_nat}/24", None)
            else:
                top_host += 1
                addr_of[x.name] = (f"198.51.100.{100 + top_host}/24", None)
    for nat in spec.nats:
        net = lan_net(nat.name)
        for i, dev in enumerate(behind_of.get(nat.name, [])):
            addr_of[dev] = (f"{net.network_address + 10 + i}/{net.prefixlen}", str(net.network_address + 1))

    def uplink_routes(dev_if: str, cidr: str, gw: str | None) -> tuple[str, ...]:
        # only the two documentation prefixes: no default route, nothing leaves the lab
        if gw is None:
            return tuple(f"{net} dev {dev_if} scope link" for net in INTERNET_NETS if not _in(cidr, net))
        return tuple(f"{net} via {gw} dev {dev_if}" for net in INTERNET_NETS)

    # internet bridge ports, NAT boxes and hosts
    for nat in spec.nats:
        k_ns = ns(nat.name)
        cidr, gw = addr_of[nat.name]
        if nat.behind is None:
            veths.append(Veth(inet_ns, f"v{next(port_no)}", k_ns, "wan", "br0"))
        net = lan_net(nat.name)
        lan_ip = f"{net.network_address + 1}/{net.prefixlen}"
        devices = behind_of.get(nat.name, [])
        bridges: tuple[str, ...] = ()
        if len(devices) == 1:
            veths.append(Veth(k_ns, "lan", ns(devices[0]), "wan" if devices[0] in nat_index else "eth0"))
        elif len(devices) > 1:
            bridges = ("lan",)
            for i, d in enumerate(devices):
                veths.append(Veth(k_ns, f"lan{i}", ns(d), "wan" if d in nat_index else "eth0", "lan"))
        sysctls = _BASE_SYSCTLS + (("net.ipv4.ip_forward", "1"),)
        if nat.mapping_timeout is not None:
            sysctls += (
                ("net.netfilter.nf_conntrack_udp_timeout", str(nat.mapping_timeout)),
                ("net.netfilter.nf_conntrack_udp_timeout_stream", str(nat.mapping_timeout)),
            )
        nodes.append(Node(
            nat.name, "nat", k_ns,
            bridges=bridges,
            addresses=(("wan", cidr), ("lan", lan_ip)) if devices else (("wan", cidr),),
            routes=uplink_routes("wan", cidr, gw),
            sysctls=sysctls,
            nft=render_nat_ruleset(nat, cidr.split("/")[0], str(net)),
            behind=nat.behind,
        ))
    for host in spec.hosts:
        h_ns = ns(host.name)
        cidr, gw = addr_of[host.name]
        if host.behind is None:
            veths.append(Veth(inet_ns, f"v{next(port_no)}", h_ns, "eth0", "br0"))
        nodes.append(Node(
            host.name, "host", h_ns,
            addresses=(("eth0", cidr),),
            routes=uplink_routes("eth0", cidr, gw),
            sysctls=_BASE_SYSCTLS + (("net.ipv4.ip_forward", "0"),),
            nft=render_host_firewall(host),
            behind=host.behind,
        ))
    return Plan(lab=lab, spec=spec, nodes=tuple(nodes), veths=tuple(veths))


def _in(cidr: str, net: str) -> bool:
    return ipaddress.ip_interface(cidr).ip in ipaddress.ip_network(net)
