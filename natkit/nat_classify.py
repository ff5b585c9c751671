"""RFC 5780 NAT behaviour classification: observed STUN exchanges in, a :class:`NatReport` out.

Pure: no sockets, no clocks, no DNS. :mod:`natkit.nat` runs the probe plan
and hands every observed Binding transaction to :func:`classify`; unit tests
hand in observations written by hand.

The probe plan, per STUN server (names are the ``test`` labels of :class:`Exchange`):

mapping socket (RFC 5780 §4.3), one local socket shared by all servers:
  ``I``    Binding to the primary address P = IP1:P1 (gives XOR-MAPPED-ADDRESS
           and OTHER-ADDRESS O = IP2:P2)
  ``II``   Binding to IP2:P1
  ``III``  Binding to IP2:P2
  ``IV``   Binding to IP1:P2 (natkit's cross-check: same IP, other port)
  ``C-II`` / ``C-III``  controls, sent once I-IV were answered: CHANGE-REQUEST
           "change IP and port" / "change port" to P. The mapping socket has
           already talked to IP2:P2 and IP1:P2, so behind an endpoint-independent
           mapping (or no NAT) every filter lets these answers through: an answer
           missing here means the server does not honour CHANGE-REQUEST, and the
           negative results of the filtering tests cannot be trusted.

filtering socket (RFC 5780 §4.4), one fresh local socket per server:
  ``F-I``   Binding to P (opens the NAT toward P only)
  ``F-II``  CHANGE-REQUEST change IP and port: the answer comes from IP2:P2
  ``F-III`` CHANGE-REQUEST change port: the answer comes from IP1:P2

Decisions follow RFC 5780 §4.3 and §4.4, generalised so that servers
without RFC 5780 support still contribute mapping evidence (RFC 4787 §4.1
definitions): two destinations with different IPs and the same mapped
address rule out address-dependent and address-and-port-dependent mapping;
different mapped addresses rule out endpoint-independent mapping; two
destinations on the same IP with different ports and different mapped
addresses rule out address-dependent mapping.

Terms are RFC 4787's; the classic RFC 3489 names (open internet, full cone,
restricted cone, port-restricted cone, symmetric, symmetric UDP firewall) are
a secondary label only.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import itertools
from collections.abc import Iterable
from typing import Any, cast

from .errors import exit_code_of
from .model import TransportAddress

SCHEMA = "natkit.nat/1"

CHANGE_IP = 0x04  # CHANGE-REQUEST flag "change IP" (RFC 5780 §7.2)
CHANGE_PORT = 0x02  # CHANGE-REQUEST flag "change port"

# test labels, see the module docstring
TEST_I, TEST_II, TEST_III, TEST_IV = "I", "II", "III", "IV"
CONTROL_II, CONTROL_III = "C-II", "C-III"
FILTER_I, FILTER_II, FILTER_III = "F-I", "F-II", "F-III"
TEST_ORDER = (TEST_I, TEST_II, TEST_III, TEST_IV, CONTROL_II, CONTROL_III, FILTER_I, FILTER_II, FILTER_III)

SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
_DOCUMENTATION = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))


class Mapping(str, enum.Enum):
    """NAT mapping behaviour (RFC 4787 §4.1, tested per RFC 5780 §4.3)."""

    NONE = "none"  # no NAT: the server sees this host's own address
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class Filtering(str, enum.Enum):
    """NAT (or firewall) filtering behaviour (RFC 4787 §5, tested per RFC 5780 §4.4)."""

    NONE = "none"  # no NAT and nothing filters: unsolicited answers arrive ("open")
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


_NAT_MAPPINGS = (Mapping.ENDPOINT_INDEPENDENT, Mapping.ADDRESS_DEPENDENT, Mapping.ADDRESS_AND_PORT_DEPENDENT)


@dataclasses.dataclass(frozen=True)
class Fact:
    """A tri-state finding: ``value`` when known, else ``None`` with ``reason`` saying why.

    ``reason`` is also set for known values: it names the evidence.
    """

    value: Any = None
    reason: str | None = None

    @property
    def known(self) -> bool:
        return self.value is not None


# --------------------------------------------------------------------------- observations


@dataclasses.dataclass(frozen=True)
class Exchange:
    """One Binding transaction (RFC 8489 §3) as observed by the client.

    Addresses are transport addresses; ``local`` has the routed source IP in
    place of a wildcard. ``response_origin`` is RESPONSE-ORIGIN (RFC 5780
    §7.3) or, from an RFC 3489 server, SOURCE-ADDRESS; ``other_address`` is
    OTHER-ADDRESS (RFC 5780 §7.4) or CHANGED-ADDRESS (RFC 3489 §11.2.3), with
    ``other_attribute`` naming which one.
    """

    test: str  # TEST_I, FILTER_II, ... (see the module docstring)
    socket: str  # which local socket sent it: "mapping/v4", "filtering/0", ...
    destination: TransportAddress  # where the request went
    local: TransportAddress | None = None  # local transport address of that socket
    change_request: int = 0  # CHANGE-REQUEST flags sent (CHANGE_IP | CHANGE_PORT)
    answered: bool = False  # any answer (success or error) arrived
    source: TransportAddress | None = None  # UDP source address of the answer
    xor_mapped: TransportAddress | None = None  # XOR-MAPPED-ADDRESS
    mapped: TransportAddress | None = None  # MAPPED-ADDRESS (kept to spot ALGs)
    response_origin: TransportAddress | None = None
    other_address: TransportAddress | None = None
    other_attribute: str | None = None  # "OTHER-ADDRESS" or "CHANGED-ADDRESS"
    software: str | None = None  # SOFTWARE
    error: str | None = None  # error response, "420 Unknown Attribute"
    failure: str | None = None  # why nothing arrived: "no answer within 250 ms", "no route"
    waited_ms: float | None = None  # how long an unanswered transaction waited, milliseconds
    rtt_ms: float | None = None  # last send to answer, milliseconds
    sends: int | None = None  # requests sent for this transaction (None: unknown)

    @property
    def reflexive(self) -> TransportAddress | None:
        """The server-reflexive address: XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS."""
        return self.xor_mapped or self.mapped

    @property
    def ok(self) -> bool:
        """A success response carrying a mapped address arrived."""
        return self.answered and self.error is None and self.reflexive is not None


@dataclasses.dataclass(frozen=True)
class ServerObservation:
    """Everything observed with one STUN server (``server`` as the user wrote it)."""

    server: str
    uri: str
    address: TransportAddress | None  # resolved primary address; None if resolution failed
    error: str | None = None  # why nothing could be sent (resolution, socket)
    exchanges: tuple[Exchange, ...] = ()

    def get(self, test: str) -> Exchange | None:
        for ex in self.exchanges:
            if ex.test == test:
                return ex
        return None


@dataclasses.dataclass(frozen=True)
class HairpinObservation:
    """RFC 5780 §4.5: two local sockets each sent a Binding request to the other's mapped address."""

    server: str  # server used to learn the two mapped addresses
    received: bool | None  # True: one request came back through the NAT; None: test could not run
    detail: str
    window_s: float | None = None


@dataclasses.dataclass(frozen=True)
class LifetimeSample:
    """One probe of the binding-lifetime search: is the mapping made ``after_s`` seconds ago alive?"""

    after_s: float
    alive: bool


@dataclasses.dataclass(frozen=True)
class LifetimeObservation:
    """RFC 5780 §4.6 with RESPONSE-PORT (§7.5), one fresh mapping per checkpoint.

    ``response_port`` says whether the server sent the answer of a request
    carrying RESPONSE-PORT to that port (None: no answer at all).
    """

    server: str
    response_port: bool | None
    detail: str | None
    bound_s: float  # the search gives up after this many seconds
    samples: tuple[LifetimeSample, ...] = ()
    skipped: str | None = None  # why the timed search did not run


@dataclasses.dataclass(frozen=True)
class NatObservations:
    """Input of :func:`classify`: all exchanges, in the order the servers were given."""

    servers: tuple[ServerObservation, ...]
    timeout_s: float  # budget for the first answer of each server
    window_s: float | None = None  # no-reply window used (None: none started)
    rto_s: float | None = None  # retransmission timeout used after the RTT was measured
    hairpin: HairpinObservation | None = None
    lifetime: LifetimeObservation | None = None


# --------------------------------------------------------------------------- report


@dataclasses.dataclass(frozen=True)
class ServerReport:
    """One server as natkit judged it."""

    server: str
    uri: str
    address: TransportAddress | None
    answered: bool  # Test I (mapping socket or filtering socket) got a success answer
    rtt_ms: float | None
    software: str | None
    other_address: TransportAddress | None  # OTHER-ADDRESS / CHANGED-ADDRESS as sent
    rfc5780: Fact  # bool: usable for RFC 5780 mapping and filtering tests, with the reason
    issues: tuple[str, ...]  # what the server did wrong or left out


@dataclasses.dataclass(frozen=True)
class LifetimeBracket:
    """Mapping lifetime (RFC 5780 §4.6): alive ``alive_s`` seconds after the last packet,
    gone by ``expired_s`` (None: still alive at the search bound)."""

    alive_s: float | None
    expired_s: float | None


@dataclasses.dataclass(frozen=True)
class NatReport:
    """Result of :func:`natkit.nat.discover_nat` (JSON schema ``natkit.nat/1``).

    Every finding is a :class:`Fact`: a value, or ``None`` with the reason.
    """

    schema: str
    status: str  # "determined" | "inconclusive" | "udp_blocked" | "no_usable_server"
    verdict: str  # RFC 4787 terms: "endpoint-independent mapping, address-and-port-dependent filtering"
    classic: Fact  # RFC 3489 name: open internet, full cone, restricted cone, port-restricted cone, symmetric, ...
    p2p: str  # one line: what this means for peer-to-peer connections
    confidence: str  # "high" | "medium" | "low" | "none"
    determined: bool  # mapping and filtering are both known
    udp_blocked: Fact  # bool
    nat_present: Fact  # bool: the mapped address differs from the local address
    mapping: Fact  # Mapping (RFC 5780 §4.3)
    filtering: Fact  # Filtering (RFC 5780 §4.4)
    public_address: TransportAddress | None  # XOR-MAPPED-ADDRESS of the mapping socket
    local_address: TransportAddress | None  # the mapping socket's local address
    port_preservation: Fact  # bool: mapped port equals local port
    alg_suspected: Fact  # bool: MAPPED-ADDRESS differs from XOR-MAPPED-ADDRESS
    cgnat: Fact  # bool: a 100.64.0.0/10 address was seen (RFC 6598)
    hairpinning: Fact  # bool (RFC 5780 §4.5, --hairpin)
    mapping_lifetime: Fact  # LifetimeBracket (RFC 5780 §4.6, --lifetime)
    rfc5780_server: str | None  # the server whose RFC 5780 tests decided
    servers: tuple[ServerReport, ...]
    notes: tuple[str, ...]  # inconsistencies and warnings
    rtt_ms: float | None  # smallest Test I round trip, milliseconds
    window_ms: float | None  # no-reply window, milliseconds
    duration_ms: float | None  # wall time of the discovery, milliseconds
    observations: NatObservations  # the raw evidence

    @property
    def ok(self) -> bool:
        return self.status == "determined"

    @property
    def exit_code(self) -> int:
        """0 determined, else the exit code of the status's error kind (:data:`STATUS_KINDS`)."""
        return 0 if self.ok else exit_code_of(STATUS_KINDS.get(self.status, "check_failed"))


# report status -> natkit.errors kind, whose exit code a report with that status has
STATUS_KINDS = {"inconclusive": "check_failed", "udp_blocked": "udp_blocked", "no_usable_server": "no_usable_server"}


# --------------------------------------------------------------------------- helpers


def address_scope(host: str) -> str:
    """Scope of an IP: "loopback", "link-local", "shared" (100.64/10), "private" or "global".

    The documentation ranges (RFC 5737, RFC 3849) count as "global": NAT
    labs use them as their simulated internet.
    """
    ip = ipaddress.ip_address(host)
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.version == 4 and ip in SHARED_ADDRESS_SPACE:
        return "shared"
    if any(ip in net for net in _DOCUMENTATION if net.version == ip.version):
        return "global"
    if ip.is_private:
        return "private"
    return "global"


def alternate_addresses(primary: TransportAddress, other: TransportAddress) -> dict[str, TransportAddress]:
    """Destinations (mapping tests) and expected answer sources (CHANGE-REQUEST tests) by test label."""
    ip1_p2 = TransportAddress(primary.host, other.port)
    return {
        TEST_II: TransportAddress(other.host, primary.port),
        TEST_III: other,
        TEST_IV: ip1_p2,
        FILTER_II: other,
        FILTER_III: ip1_p2,
        CONTROL_II: other,
        CONTROL_III: ip1_p2,
    }


def validate_primary(ex: Exchange | None) -> tuple[TransportAddress | None, tuple[str, ...]]:
    """Check a Test I answer before any RFC 5780 test relies on it.

    Returns ``(other, problems)``: ``other`` is the alternate address to test
    with, or None when the server cannot serve RFC 5780 tests; ``problems``
    says why (and carries warnings that do not disqualify). The operation
    calls this before sending anything to OTHER-ADDRESS: natkit never sends to
    an OTHER-ADDRESS that fails these checks.

    Rules: the answer came from the address asked; OTHER-ADDRESS (or RFC
    3489's CHANGED-ADDRESS) is present, of the same family, differs from the
    primary address in IP *and* port (RFC 5780 §4.1), and is in the same
    scope (a private OTHER-ADDRESS behind a public primary means a server
    behind a NAT that advertises addresses nobody can reach).
    """
    if ex is None:
        return None, ("Test I was not run",)
    if not ex.answered:
        return None, (f"no answer to Test I ({ex.failure or 'no answer'})",)
    if ex.error:
        return None, (f"error response to a plain Binding request: {ex.error}",)
    if ex.reflexive is None:
        return None, ("answer without XOR-MAPPED-ADDRESS or MAPPED-ADDRESS",)
    warnings: list[str] = []
    if ex.source != ex.destination:
        return None, (f"answered from {ex.source}, not from the address asked ({ex.destination})",)
    if ex.response_origin is not None and ex.response_origin != ex.destination:
        warnings.append(
            f"RESPONSE-ORIGIN {ex.response_origin} differs from the address asked ({ex.destination}): the server may sit behind a NAT"
        )
    other = ex.other_address
    if other is None:
        return None, ("no OTHER-ADDRESS (RFC 5780 §7.4): the server has one address or RFC 5780 is disabled", *warnings)
    primary = ex.destination
    problem = None
    if other.family != primary.family:
        problem = f"OTHER-ADDRESS {other} is not of the primary address family"
    elif other.host == primary.host:
        problem = f"OTHER-ADDRESS {other} has the primary IP: not a second address (RFC 5780 needs two IPs)"
    elif other.port == primary.port:
        problem = f"OTHER-ADDRESS {other} has the primary port: RFC 5780 needs a second port"
    else:
        s_other, s_primary = address_scope(other.host), address_scope(primary.host)
        if s_other != s_primary:
            problem = (
                f"OTHER-ADDRESS {other} is a {s_other} address but the server was reached at a {s_primary} address "
                "(a server behind a NAT?); natkit does not send to it"
            )
    if problem:
        return None, (problem, *warnings)
    if ex.other_attribute == "CHANGED-ADDRESS":
        warnings.append("RFC 3489 server: CHANGED-ADDRESS used as OTHER-ADDRESS")
    return other, tuple(warnings)


def _waited(ex: Exchange) -> str:
    if ex.waited_ms is not None:
        return f"{ex.waited_ms:.0f} ms"
    return ex.failure or "the window"


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.0f} ms"


# --------------------------------------------------------------------------- mapping


@dataclasses.dataclass
class _MappingResult:
    value: Mapping | None
    candidates: frozenset[Mapping]
    reason: str
    rfc5780: bool  # decided by a server's RFC 5780 Tests I-III
    inconsistent: bool = False


def _mapping_from_pairs(exchanges: list[Exchange], rfc5780_dests: set[TransportAddress]) -> _MappingResult:
    """Decide mapping behaviour from (destination, mapped address) pairs seen on one local socket.

    RFC 4787 §4.1 definitions, applied pairwise; RFC 5780 §4.3's Tests I-III
    are the special case P / IP2:P1 / IP2:P2.
    """
    by_dest: dict[TransportAddress, TransportAddress | None] = {}
    changing: list[str] = []
    for ex in exchanges:
        prev = by_dest.setdefault(ex.destination, ex.reflexive)
        if prev != ex.reflexive:
            changing.append(f"{ex.destination}: {prev} then {ex.reflexive}")
    candidates = set(_NAT_MAPPINGS)
    why: dict[str, str] = {}  # first evidence of each kind
    if changing:
        return _MappingResult(None, frozenset(), "the mapping toward one destination changed between requests: " + "; ".join(changing), False, True)
    dests = list(by_dest)
    for d1, d2 in itertools.combinations(dests, 2):
        r1, r2 = by_dest[d1], by_dest[d2]
        if d1.host != d2.host:
            if r1 == r2:
                for m in (Mapping.ADDRESS_DEPENDENT, Mapping.ADDRESS_AND_PORT_DEPENDENT):
                    candidates.discard(m)
                why.setdefault("ip-same", f"same mapping {r1} toward {d1} and {d2} (different IPs)")
            else:
                candidates.discard(Mapping.ENDPOINT_INDEPENDENT)
                why.setdefault("ip-differs", f"mapping {r1} toward {d1} but {r2} toward {d2} (different IPs)")
        elif d1.port != d2.port:
            if r1 == r2:
                candidates.discard(Mapping.ADDRESS_AND_PORT_DEPENDENT)
                why.setdefault("port-same", f"same mapping {r1} toward {d1} and {d2} (same IP, different ports)")
            else:
                candidates.discard(Mapping.ENDPOINT_INDEPENDENT)
                candidates.discard(Mapping.ADDRESS_DEPENDENT)
                why.setdefault("port-differs", f"mapping {r1} toward {d1} but {r2} toward {d2} (same IP, different ports)")
    via5780 = len(rfc5780_dests & set(dests)) >= 3
    source = " (RFC 5780 §4.3)" if via5780 else " (compared across servers)"
    if len(dests) < 2:
        return _MappingResult(None, frozenset(candidates), "only one destination answered on the mapping socket: nothing to compare", False)
    if not candidates:
        parts = [w for w in why.values()]
        return _MappingResult(None, frozenset(), "inconsistent mappings, no RFC 4787 behaviour fits: " + "; ".join(parts), False, True)
    if len(candidates) == 1:
        value = next(iter(candidates))
        if value is Mapping.ENDPOINT_INDEPENDENT:
            reason = why["ip-same"]
        elif value is Mapping.ADDRESS_DEPENDENT:
            reason = f"{why['ip-differs']}; {why['port-same']}"
        else:
            reason = why["port-differs"]
        return _MappingResult(value, frozenset(candidates), reason + source, via5780)
    if candidates == {Mapping.ADDRESS_DEPENDENT, Mapping.ADDRESS_AND_PORT_DEPENDENT}:
        reason = f"address-dependent or address-and-port-dependent: {why['ip-differs']}, and no two destinations on one IP answered"
    elif candidates == {Mapping.ENDPOINT_INDEPENDENT, Mapping.ADDRESS_DEPENDENT}:
        reason = f"endpoint-independent or address-dependent: {why['port-same']}, and no two destinations with different IPs answered"
    else:
        reason = "the destinations that answered cannot tell mapping behaviours apart"
    return _MappingResult(None, frozenset(candidates), reason, False)


# --------------------------------------------------------------------------- filtering


@dataclasses.dataclass
class _ServerEval:
    obs: ServerObservation
    primary: Exchange | None = None  # Test I on the mapping socket, when ok
    other: TransportAddress | None = None
    issues: list[str] = dataclasses.field(default_factory=list)
    mapping_ok: bool = False  # II, III, IV answered from where they were sent


@dataclasses.dataclass(frozen=True)
class _FilteringEval:
    """One server's RFC 5780 §4.4 result: what :func:`_evaluate_filtering` returns."""

    filtering: Fact | None = None  # this server's filtering conclusion (None: not usable)
    verified: bool = False  # negative answers confirmed by the controls
    issues: tuple[str, ...] = ()  # problems found with the server's answers
    inconsistent: tuple[str, ...] = ()


def _check_change_answer(ex: Exchange, expected: TransportAddress, primary: TransportAddress, label: str) -> str | None:
    """Problem with the answer to a CHANGE-REQUEST, or None when it came from ``expected``."""
    if ex.error:
        return f"rejects CHANGE-REQUEST ({label}): {ex.error}"
    if ex.source != expected:
        if ex.source == primary:
            return f"ignores CHANGE-REQUEST ({label}): answered from the primary address {primary}, expected {expected}"
        return f"answered a CHANGE-REQUEST ({label}) from {ex.source}, expected {expected}"
    return None


def _evaluate_server(obs: ServerObservation) -> _ServerEval:
    ev = _ServerEval(obs)
    if obs.error:
        ev.issues.append(obs.error)
        return ev
    test1 = obs.get(TEST_I)
    other, problems = validate_primary(test1)
    ev.issues.extend(problems)
    if test1 is not None and test1.ok and test1.source == test1.destination:
        ev.primary = test1
    ev.other = other
    if other is None or test1 is None:
        return ev
    expected = alternate_addresses(test1.destination, other)
    ok = True
    for test in (TEST_II, TEST_III, TEST_IV):
        ex = obs.get(test)
        if ex is None or not ex.answered:
            ev.issues.append(f"alternate address {expected[test]} did not answer (Test {test}): OTHER-ADDRESS is not served")
            ok = False
        elif ex.error or ex.reflexive is None:
            ev.issues.append(f"Test {test} to {expected[test]} failed: {ex.error or 'no mapped address'}")
            ok = False
        elif ex.source != ex.destination:
            ev.issues.append(f"Test {test} to {ex.destination} was answered from {ex.source}")
            ok = False
    ev.mapping_ok = ok
    return ev


def _evaluate_filtering(ev: _ServerEval, mapping: Mapping | None) -> _FilteringEval:
    """RFC 5780 §4.4 for one server, with the server's CHANGE-REQUEST answers validated. Pure: ``ev`` is not changed."""
    obs = ev.obs
    f1 = obs.get(FILTER_I)
    other, problems = validate_primary(f1)
    if f1 is None:
        return _FilteringEval()
    if other is None:
        if f1.answered and not f1.ok:
            return _FilteringEval(issues=(f"filtering socket: {problems[0]}",))
        if not f1.answered and ev.primary is not None:
            return _FilteringEval(issues=(f"filtering socket: no answer to Test I ({f1.failure or 'no answer'})",))
        return _FilteringEval()
    primary = f1.destination
    expected = alternate_addresses(primary, other)
    f2, f3 = obs.get(FILTER_II), obs.get(FILTER_III)
    if f2 is None or f3 is None:
        return _FilteringEval(issues=("filtering tests II/III were not run",))
    issues: list[str] = []
    bad = False
    for ex, label in ((f2, "change IP and port"), (f3, "change port")):
        if ex.answered:
            problem = _check_change_answer(ex, expected[ex.test], primary, label)
            if problem:
                issues.append(problem)
                bad = True
            elif ex.response_origin is not None and ex.response_origin != ex.source:
                issues.append(f"RESPONSE-ORIGIN {ex.response_origin} of the {label} answer differs from its source {ex.source}")
    if bad:
        last_two = (ev.issues + issues)[-2:]
        return _FilteringEval(Fact(None, "the server's CHANGE-REQUEST answers came from the wrong address: " + "; ".join(last_two)),
                              issues=tuple(issues))
    if not f2.answered and not ev.mapping_ok:
        return _FilteringEval(Fact(None, "the server's alternate addresses did not all answer the mapping tests (Tests I-IV), "
                                         "so a missing CHANGE-REQUEST answer proves nothing about the NAT"), issues=tuple(issues))
    if f2.answered:
        return _endpoint_independent_filtering(f3, expected, mapping is Mapping.NONE, issues)
    return _dependent_filtering(ev, mapping, f2, f3, primary, expected, issues)


def _endpoint_independent_filtering(f3: Exchange, expected: dict[str, TransportAddress], no_nat: bool,
                                    issues: list[str]) -> _FilteringEval:
    """The change-IP-and-port answer arrived (RFC 5780 §4.4 Test II)."""
    value = Filtering.NONE if no_nat else Filtering.ENDPOINT_INDEPENDENT
    reason = f"an answer from {expected[FILTER_II]}, an address this socket never sent to, arrived (RFC 5780 §4.4 Test II)"
    if no_nat:
        reason = "no NAT and nothing filters: " + reason
    inconsistent: tuple[str, ...] = ()
    if not f3.answered:
        inconsistent = (f"the change-IP-and-port answer arrived but the change-port answer did not ({f3.failure or 'no answer'})",)
    return _FilteringEval(Fact(value, reason), True, tuple(issues), inconsistent)


def _dependent_filtering(ev: _ServerEval, mapping: Mapping | None, f2: Exchange, f3: Exchange, primary: TransportAddress,
                         expected: dict[str, TransportAddress], issues: list[str]) -> _FilteringEval:
    """No change-IP-and-port answer: address- or address-and-port-dependent, trusted only when the controls agree."""
    obs = ev.obs
    # controls: only meaningful when the mapping socket kept one mapping for all destinations
    t3, t4 = obs.get(TEST_III), obs.get(TEST_IV)
    controls_apply = mapping in (Mapping.NONE, Mapping.ENDPOINT_INDEPENDENT) and ev.mapping_ok and t3 is not None and t4 is not None

    def verify(control: str, label: str) -> tuple[bool | None, str]:
        """True verified, False server failed, None not applicable."""
        c = obs.get(control)
        if not controls_apply or c is None:
            return None, f"whether the server honours CHANGE-REQUEST ({label}) could not be checked"
        if c.answered:
            problem = _check_change_answer(c, expected[control], primary, label)
            if problem:
                return False, problem
            return True, ""
        return False, (
            f"no answer to a CHANGE-REQUEST ({label}) that the NAT would have let through (control {control}): "
            "the server may not honour CHANGE-REQUEST, or packets were lost"
        )

    v2, why2 = verify(CONTROL_II, "change IP and port")
    if f3.answered:
        value = Filtering.ADDRESS_DEPENDENT
        reason = (f"nothing from {expected[FILTER_II]} (other IP) within {_waited(f2)}, "
                  f"but an answer from {expected[FILTER_III]} (same IP, other port) arrived (RFC 5780 §4.4 Test III)")
        checks = [(v2, why2)]
    else:
        value = Filtering.ADDRESS_AND_PORT_DEPENDENT
        reason = (f"nothing from {expected[FILTER_II]} (other IP) nor from {expected[FILTER_III]} (same IP, other port) "
                  f"within {_waited(f2)} (RFC 5780 §4.4 Tests II and III)")
        checks = [(v2, why2), verify(CONTROL_III, "change port")]
    if mapping is Mapping.NONE:
        reason = "no NAT, but a firewall filters: " + reason
    failed = [w for v, w in checks if v is False]
    if failed:
        return _FilteringEval(Fact(None, "missing answers cannot be trusted: " + "; ".join(failed)), issues=tuple(issues + failed))
    unverified = [w for v, w in checks if v is None]
    if unverified:
        reason += "; " + "; ".join(unverified) + " (the mapping is not endpoint-independent)"
    return _FilteringEval(Fact(value, reason), not unverified, tuple(issues))


# --------------------------------------------------------------------------- verdict


def classic_name(mapping: Mapping | None, candidates: frozenset[Mapping], filtering: Filtering | None) -> Fact:
    """The RFC 3489 name for a behaviour (a secondary label), or unknown with the reason."""
    if mapping is Mapping.NONE:
        if filtering is Filtering.NONE:
            return Fact("open internet", "no NAT, no filtering")
        if filtering in (Filtering.ADDRESS_DEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT):
            return Fact("symmetric UDP firewall", "no NAT, but a firewall drops unsolicited packets (RFC 3489 §10.1)")
        return Fact(None, "no NAT; filtering unknown")
    if candidates and Mapping.ENDPOINT_INDEPENDENT not in candidates and Mapping.NONE not in candidates:
        return Fact("symmetric", "RFC 3489 calls every mapping that depends on the destination symmetric")
    if mapping is Mapping.ENDPOINT_INDEPENDENT:
        names = {
            Filtering.ENDPOINT_INDEPENDENT: "full cone",
            Filtering.ADDRESS_DEPENDENT: "restricted cone",
            Filtering.ADDRESS_AND_PORT_DEPENDENT: "port-restricted cone",
        }
        if filtering in names:
            return Fact(names[filtering], "endpoint-independent mapping with " + filtering.value + " filtering")
        return Fact(None, "a cone NAT (endpoint-independent mapping); which cone depends on the unknown filtering")
    return Fact(None, "mapping behaviour unknown")


def p2p_line(mapping: Mapping | None, candidates: frozenset[Mapping], filtering: Filtering | None, udp_blocked: bool) -> str:
    """One line on what the behaviour means for peer-to-peer (ICE, RFC 8445) connections.

    Read from the expected-outcome matrix of docs/lab.md (libwebrtc's own transport tests): :func:`natkit.p2p.p2p_line`.
    """
    from .p2p import p2p_line as from_matrix

    return from_matrix(mapping, candidates, filtering, udp_blocked)


def _verdict_text(mapping: _MappingResult, filtering: Filtering | None, udp_blocked: bool) -> str:
    if udp_blocked:
        return "UDP blocked: no STUN server answered over UDP"
    if mapping.value is Mapping.NONE:
        text: dict[Filtering | None, str] = {
            Filtering.NONE: "no NAT, no filtering (open)",
            Filtering.ADDRESS_DEPENDENT: "no NAT, address-dependent filtering (a firewall)",
            Filtering.ADDRESS_AND_PORT_DEPENDENT: "no NAT, address-and-port-dependent filtering (a firewall)",
        }
        return text.get(filtering, "no NAT, filtering unknown")
    if mapping.value is not None:
        m = f"{mapping.value.value} mapping"
    elif mapping.candidates == {Mapping.ADDRESS_DEPENDENT, Mapping.ADDRESS_AND_PORT_DEPENDENT}:
        m = "address-dependent or address-and-port-dependent mapping"
    elif mapping.candidates == {Mapping.ENDPOINT_INDEPENDENT, Mapping.ADDRESS_DEPENDENT}:
        m = "endpoint-independent or address-dependent mapping"
    else:
        m = "mapping unknown"
    f = f"{filtering.value} filtering" if filtering is not None else "filtering unknown"
    return f"{m}, {f}"


# --------------------------------------------------------------------------- other findings


def _port_preservation(answers: list[Exchange], nat: bool | None) -> Fact:
    if nat is None:
        return Fact(None, "no mapped address observed")
    if nat is False:
        return Fact(None, "not applicable: no NAT, ports are not translated")
    pairs = [(ex.local, ex.reflexive) for ex in answers
             if ex.local is not None and ex.reflexive is not None and ex.change_request == 0]
    mappings = sorted(set(pairs), key=str)
    if not mappings:
        return Fact(None, "local port unknown")
    changed = [(local, mapped) for local, mapped in mappings if local.port != mapped.port]
    if not changed:
        return Fact(True, f"mapped port equals local port on all {len(mappings)} mappings (RFC 4787 §4.2.1)")
    local, mapped = changed[0]
    return Fact(False, f"local port {local.port} was mapped to {mapped.port}" + (f" ({len(changed)} of {len(mappings)} mappings)" if len(mappings) > 1 else ""))


def _alg(answers: list[Exchange]) -> Fact:
    both = [ex for ex in answers if ex.mapped is not None and ex.xor_mapped is not None]
    if not both:
        return Fact(None, "the servers sent only one of MAPPED-ADDRESS and XOR-MAPPED-ADDRESS: nothing to compare")
    differ = [ex for ex in both if ex.mapped != ex.xor_mapped]
    if differ:
        ex = differ[0]
        return Fact(True, f"MAPPED-ADDRESS {ex.mapped} differs from XOR-MAPPED-ADDRESS {ex.xor_mapped}: "
                          "something on the path rewrites addresses in packets (an ALG); XOR-MAPPED-ADDRESS is used")
    return Fact(False, f"MAPPED-ADDRESS equals XOR-MAPPED-ADDRESS in {len(both)} answers")


def _cgnat(answers: list[Exchange], nat: bool | None) -> Fact:
    for ex in answers:
        if ex.reflexive and ex.reflexive.family == 4 and ipaddress.ip_address(ex.reflexive.host) in SHARED_ADDRESS_SPACE:
            return Fact(True, f"the server sees {ex.reflexive.host}, an RFC 6598 shared address (100.64.0.0/10): a carrier-grade NAT is in the path")
    for ex in answers:
        if ex.local and ex.local.family == 4 and ipaddress.ip_address(ex.local.host) in SHARED_ADDRESS_SPACE:
            return Fact(True, f"this host's address {ex.local.host} is in 100.64.0.0/10 (RFC 6598): your network is behind a carrier-grade NAT")
    if nat is None:
        return Fact(None, "no mapped address observed")
    if nat is False:
        return Fact(False, "no NAT at all between this host and the server")
    return Fact(None, "no 100.64.0.0/10 address seen; a carrier-grade NAT between your router and the server would not be visible to STUN")


def _hairpin(obs: HairpinObservation | None, nat: bool | None) -> Fact:
    if obs is None:
        return Fact(None, "not tested (use --hairpin)")
    if nat is False:
        return Fact(None, "not applicable: no NAT, the mapped address is this host's own address")
    if obs.received is None:
        return Fact(None, obs.detail)
    if obs.received:
        return Fact(True, "a Binding request sent to the mapped address of another local socket came back through the NAT (RFC 5780 §4.5)")
    return Fact(False, f"requests sent to each other's mapped address did not arrive within {_ms(obs.window_s)} (RFC 5780 §4.5)")


def _lifetime(obs: LifetimeObservation | None, nat: bool | None) -> tuple[Fact, list[str]]:
    notes: list[str] = []
    if obs is None:
        return Fact(None, "not tested (use --lifetime)"), notes
    if nat is False:
        return Fact(None, "not applicable: no NAT, no mapping to expire"), notes
    if obs.response_port is not True:
        return Fact(None, f"needs a server that honours RESPONSE-PORT (RFC 5780 §7.5): {obs.detail or 'no answer'}"), notes
    if obs.skipped:
        return Fact(None, obs.skipped), notes
    samples = sorted(obs.samples, key=lambda s: s.after_s)
    if not samples:
        return Fact(None, "no checkpoint was probed"), notes
    first_dead = next((s for s in samples if not s.alive), None)
    if first_dead is None:
        last = samples[-1].after_s
        return Fact(LifetimeBracket(last, None), f"the mapping was still alive after {last:g} s, the search bound (RFC 5780 §4.6)"), notes
    alive = [s.after_s for s in samples if s.alive and s.after_s < first_dead.after_s]
    later_alive = [s.after_s for s in samples if s.alive and s.after_s > first_dead.after_s]
    if later_alive:
        notes.append(f"mapping lifetime: a mapping expired at {first_dead.after_s:g} s but an older one lived {later_alive[-1]:g} s (packet loss?)")
    low = max(alive) if alive else None
    text = f"alive after {low:g} s, expired by {first_dead.after_s:g} s" if low is not None else f"expired before {first_dead.after_s:g} s"
    return Fact(LifetimeBracket(low, first_dead.after_s), text + " without traffic (RFC 5780 §4.6)"), notes


# --------------------------------------------------------------------------- classify


def _udp_blocked(observations: NatObservations, first_answers: list[Exchange]) -> Fact:
    """Did any server answer over UDP at all?"""
    resolved = [s for s in observations.servers if s.address is not None]
    if first_answers:
        return Fact(False, f"{len({ex.destination for ex in first_answers})} server address(es) answered over UDP")
    if not resolved:
        return Fact(None, "no server address could be resolved")
    if any(ex.answered for s in observations.servers for ex in s.exchanges):
        return Fact(False, "servers answered, but only with errors")
    return Fact(True, f"no answer from {len(resolved)} server(s) within {observations.timeout_s:g} s: outbound UDP is blocked, or every server is down")


def _nat_present(all_answers: list[Exchange]) -> tuple[Fact, list[str]]:
    """NAT present? The mapped address equals the local address (RFC 5780 §4.3). Returns the fact and inconsistencies."""
    plain = [ex for ex in all_answers if ex.change_request == 0 and ex.local is not None]
    same = [ex for ex in plain if ex.reflexive == ex.local]
    if not plain:
        return Fact(None, "no mapped address observed" if not all_answers else "local address unknown"), []
    if len(same) == len(plain):
        return Fact(False, f"the mapped address equals the local address ({plain[0].local}) in all {len(plain)} answers"), []
    if not same:
        ex = plain[0]
        return Fact(True, f"local {ex.local} is seen as {ex.reflexive}"), []
    return (Fact(True, f"some answers show the local address ({same[0].local}) and some a translated one "
                       f"({next(ex for ex in plain if ex.reflexive != ex.local).reflexive})"),
            ["the local address is translated toward some destinations only (multi-homed host, or a server on your own network?)"])


def _mapping(evals: list[_ServerEval], all_answers: list[Exchange], nat_present: Fact,
             translated_partly: bool) -> tuple[_MappingResult, list[str], list[str]]:
    """RFC 5780 §4.3: one decision per mapping socket, the first decisive one wins. Returns (result, inconsistent, notes)."""
    inconsistent: list[str] = []
    notes: list[str] = []
    rfc5780_dests: set[TransportAddress] = set()
    for ev in evals:
        if ev.mapping_ok and ev.primary is not None and ev.other is not None:
            rfc5780_dests.add(ev.primary.destination)
            rfc5780_dests.update(alternate_addresses(ev.primary.destination, ev.other)[t] for t in (TEST_II, TEST_III, TEST_IV))
    sockets: dict[str, list[Exchange]] = {}
    for ex in all_answers:
        if ex.socket.startswith("mapping") and ex.change_request == 0 and ex.source == ex.destination:
            sockets.setdefault(ex.socket, []).append(ex)
    mapping = _MappingResult(None, frozenset(), "no answer on the mapping socket", False)
    if nat_present.value is False:
        mapping = _MappingResult(Mapping.NONE, frozenset({Mapping.NONE}), nat_present.reason or "", any(ev.mapping_ok for ev in evals))
    elif nat_present.value is True and translated_partly:
        mapping = _MappingResult(None, frozenset(), "the local address is translated toward some destinations only", False, True)
    elif sockets:
        results = [_mapping_from_pairs(exs, rfc5780_dests) for exs in sockets.values()]
        decided = [r for r in results if r.value is not None]
        mapping = decided[0] if decided else results[0]
        if len({r.value for r in decided}) > 1:
            inconsistent.append("IPv4 and IPv6 mappings behave differently: " + "; ".join(f"{r.value.value}" for r in decided if r.value))
        inconsistent.extend(r.reason for r in results if r.inconsistent)
    if mapping.value is not None and mapping.value is not Mapping.NONE and not mapping.rfc5780 and any(ev.mapping_ok for ev in evals):
        notes.append("the mapping decision rests on a comparison across servers")
    return mapping, inconsistent, notes


def _filtering(evals: list[_ServerEval], filts: list[_FilteringEval]) -> tuple[Fact, bool, list[str], list[int]]:
    """RFC 5780 §4.4 over all servers: the first usable server decides.

    Returns (fact, verified, inconsistent, indexes of the servers whose filtering is known).
    """
    usable = [i for i, f in enumerate(filts) if f.filtering is not None and f.filtering.known]
    if not usable:
        reasons = [f"{ev.obs.server}: {f.filtering.reason}" for ev, f in zip(evals, filts) if f.filtering is not None]
        if not reasons:
            unusable = [f"{ev.obs.server}: {(ev.issues + list(f.issues))[0]}" for ev, f in zip(evals, filts) if ev.issues or f.issues]
            reasons = unusable or ["no server answered"]
        return Fact(None, "no server could run the RFC 5780 filtering tests: " + "; ".join(reasons)), False, [], usable
    chosen = filts[usable[0]]
    fact = cast(Fact, chosen.filtering)  # usable: filtering is known
    inconsistent = list(chosen.inconsistent)
    others = {cast(Fact, filts[i].filtering).value for i in usable[1:]} - {fact.value}
    if others:
        inconsistent.append(f"servers disagree on filtering: {fact.value.value} vs " + ", ".join(sorted(o.value for o in others)))
    return fact, chosen.verified, inconsistent, usable


def _server_reports(evals: list[_ServerEval], filts: list[_FilteringEval]) -> list[ServerReport]:
    """One :class:`ServerReport` per server: answered, RTT, SOFTWARE, whether it is a usable RFC 5780 server."""
    reports = []
    for ev, filt in zip(evals, filts):
        issues = ev.issues + list(filt.issues)
        first = ev.obs.get(TEST_I) or ev.obs.get(FILTER_I)
        answered = [ex for ex in (ev.obs.get(TEST_I), ev.obs.get(FILTER_I)) if ex is not None and ex.ok]
        if ev.mapping_ok and filt.filtering is not None and filt.filtering.known:
            rfc = Fact(True, f"OTHER-ADDRESS {ev.other} answered and CHANGE-REQUEST answers came from the expected addresses")
        elif issues:
            rfc = Fact(False, issues[0])
        elif filt.filtering is not None:
            rfc = Fact(False, filt.filtering.reason)
        else:
            rfc = Fact(None, "not enough answers to judge")
        if not answered and not ev.obs.error:
            rfc = Fact(None, issues[0] if issues else "no answer")
        reports.append(ServerReport(
            server=ev.obs.server, uri=ev.obs.uri, address=ev.obs.address, answered=bool(answered),
            rtt_ms=min((ex.rtt_ms for ex in answered if ex.rtt_ms is not None), default=None),
            software=first.software if first else None,
            other_address=next((ex.other_address for ex in answered if ex.other_address), None),
            rfc5780=rfc, issues=tuple(dict.fromkeys(issues)),
        ))
    return reports


def _status_and_confidence(blocked: bool, mapping: _MappingResult, filtering: Filtering | None, verified: bool,
                           inconsistent: list[str], server_reports: list[ServerReport]) -> tuple[str, str]:
    """The report's ``status`` and ``confidence`` (see :class:`NatReport`)."""
    determined = mapping.value is not None and filtering is not None
    if blocked:
        status = "udp_blocked"
    elif determined:
        status = "determined"
    elif not any(sr.rfc5780.value is True for sr in server_reports):
        status = "no_usable_server"  # no server passed every RFC 5780 check
    else:
        status = "inconclusive"
    if blocked or (mapping.value is None and filtering is None and not mapping.candidates):
        confidence = "none"
    elif determined and not inconsistent:
        confidence = "high" if (mapping.rfc5780 and verified) else "medium"
    elif determined:
        confidence = "medium"
    else:
        confidence = "low"
    return status, confidence


def classify(observations: NatObservations, *, duration_ms: float | None = None) -> NatReport:
    """Turn observed exchanges into a :class:`NatReport` (RFC 5780 §4.3-§4.6, RFC 4787 terms).

    Pure and total: any combination of answers, missing answers and
    misbehaving servers gives a report; what cannot be decided is a
    :class:`Fact` with value None and the reason. Servers that fail
    :func:`validate_primary` or answer CHANGE-REQUEST from the wrong address
    are reported as unsuitable and never decide a verdict.
    """
    evals = [_evaluate_server(s) for s in observations.servers]
    all_answers = [ex for s in observations.servers for ex in s.exchanges if ex.ok]
    first_answers = [ex for s in observations.servers for ex in s.exchanges if ex.test in (TEST_I, FILTER_I) and ex.ok]

    udp_blocked = _udp_blocked(observations, first_answers)
    nat_present, inconsistent = _nat_present(all_answers)
    mapping, mapping_inconsistent, notes = _mapping(evals, all_answers, nat_present, bool(inconsistent))
    inconsistent += mapping_inconsistent
    filts = [_evaluate_filtering(ev, mapping.value) for ev in evals]
    filtering_fact, filtering_verified, filtering_inconsistent, usable_filter = _filtering(evals, filts)
    inconsistent += filtering_inconsistent
    filtering_value: Filtering | None = filtering_fact.value
    server_reports = _server_reports(evals, filts)
    rfc5780_server = next((ev.obs.server for ev, f in zip(evals, filts)
                           if ev.mapping_ok and f.filtering is not None and f.filtering.known), None)
    if rfc5780_server is None:
        rfc5780_server = next((evals[i].obs.server for i in usable_filter), None) or next((ev.obs.server for ev in evals if ev.mapping_ok), None)

    nat = nat_present.value
    lifetime_fact, lifetime_notes = _lifetime(observations.lifetime, nat)
    notes.extend(lifetime_notes)
    anchor = next((ev.primary for ev in evals if ev.primary is not None), None) or (first_answers[0] if first_answers else None)
    blocked = udp_blocked.value is True
    status, confidence = _status_and_confidence(blocked, mapping, filtering_value, filtering_verified, inconsistent, server_reports)
    rtts = [ex.rtt_ms for ex in first_answers if ex.rtt_ms is not None]
    return NatReport(
        schema=SCHEMA,
        status=status,
        verdict=_verdict_text(mapping, filtering_value, blocked),
        classic=Fact("UDP blocked", udp_blocked.reason) if blocked else classic_name(mapping.value, mapping.candidates, filtering_value),
        p2p=p2p_line(mapping.value, mapping.candidates, filtering_value, blocked),
        confidence=confidence,
        determined=mapping.value is not None and filtering_value is not None,
        udp_blocked=udp_blocked,
        nat_present=nat_present,
        mapping=Fact(mapping.value, mapping.reason),
        filtering=filtering_fact,
        public_address=anchor.reflexive if anchor else None,
        local_address=anchor.local if anchor else None,
        port_preservation=_port_preservation(all_answers, nat),
        alg_suspected=_alg(all_answers),
        cgnat=_cgnat(all_answers, nat),
        hairpinning=_hairpin(observations.hairpin, nat),
        mapping_lifetime=lifetime_fact,
        rfc5780_server=rfc5780_server,
        servers=tuple(server_reports),
        notes=tuple(dict.fromkeys(inconsistent + notes)),
        rtt_ms=min(rtts) if rtts else None,
        window_ms=observations.window_s * 1000.0 if observations.window_s is not None else None,
        duration_ms=duration_ms,
        observations=observations,
    )


def exchanges_in_order(exchanges: Iterable[Exchange]) -> tuple[Exchange, ...]:
    """Sort exchanges by test label in the probe plan's order (stable for unknown labels)."""
    order = {t: i for i, t in enumerate(TEST_ORDER)}
    return tuple(sorted(exchanges, key=lambda ex: order.get(ex.test, len(order))))
