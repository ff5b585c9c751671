"""The pure RFC 5780 classifier, over every branch of §4.3/§4.4 and misbehaving servers.

No network: a small NAT model (RFC 4787 mapping x filtering) and a server
model (honest, or misbehaving in one named way) produce the exchanges that
natkit's probe plan would observe; :func:`classify` must turn them into the
right report, and never into a verdict a broken server could have faked.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from natkit.model import TransportAddress as TA, to_jsonable
from natkit.nat import EXIT_BY_STATUS, exit_code, lifetime_checkpoints, plan_timers
from natkit.nat_classify import (
    CHANGE_IP,
    CHANGE_PORT,
    CONTROL_II,
    CONTROL_III,
    FILTER_I,
    FILTER_II,
    FILTER_III,
    SCHEMA,
    TEST_I,
    TEST_II,
    TEST_III,
    TEST_IV,
    Exchange,
    Filtering,
    HairpinObservation,
    LifetimeBracket,
    LifetimeObservation,
    LifetimeSample,
    Mapping,
    NatObservations,
    ServerObservation,
    address_scope,
    alternate_addresses,
    classic_name,
    classify,
    p2p_line,
    validate_primary,
)
from natkit.errors import UsageError

P = TA("198.51.100.10", 3478)  # primary address of the simulated server
O = TA("198.51.100.11", 3479)  # its OTHER-ADDRESS
LOCAL_IP = "192.168.1.20"
PUBLIC_IP = "203.0.113.7"
MAP_PORT, FILT_PORT = 5000, 5001

EIM, ADM, APDM, NOMAP = Mapping.ENDPOINT_INDEPENDENT, Mapping.ADDRESS_DEPENDENT, Mapping.ADDRESS_AND_PORT_DEPENDENT, Mapping.NONE
EIF, ADF, APDF, NOFILT = Filtering.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, Filtering.NONE


# --------------------------------------------------------------------------- models


class SimNat:
    """RFC 4787 NAT: a mapping behaviour and a filtering behaviour, per local transport address.

    ``mapping=None`` means no NAT (and ``filtering`` then models a stateful
    firewall: EIF = nothing filters).
    """

    def __init__(self, mapping: Mapping | None, filtering: Filtering, *, public_ip: str = PUBLIC_IP, preserve: bool = True, local_ip: str = LOCAL_IP):
        self.mapping, self.filtering = mapping, filtering
        self.public_ip, self.preserve, self.local_ip = public_ip, preserve, local_ip
        self.table: dict = {}
        self.sent: dict[TA, set[TA]] = {}
        self.next_port = 40000
        self.used: set[int] = set()

    def outbound(self, local: TA, dest: TA) -> TA:
        if self.mapping is None:
            ext = local
        else:
            key = {EIM: (), ADM: (dest.host,), APDM: (dest,)}[self.mapping]
            ext = self.table.get((local, key))
            if ext is None:
                if self.preserve and local.port not in self.used:
                    port = local.port
                else:
                    self.next_port += 1
                    port = self.next_port
                self.used.add(port)
                ext = self.table[(local, key)] = TA(self.public_ip, port)
        self.sent.setdefault(ext, set()).add(dest)
        return ext

    def admits(self, ext: TA, source: TA) -> bool:
        sent = self.sent.get(ext, set())
        if not sent:
            return False
        if self.filtering in (EIF, NOFILT):
            return True
        if self.filtering is ADF:
            return any(d.host == source.host for d in sent)
        return source in sent


@dataclasses.dataclass
class SimServer:
    """An RFC 5780 server on P (and O), honest unless told otherwise."""

    primary: TA = P
    other: TA | None = O
    rfc3489: bool = False  # CHANGED-ADDRESS / SOURCE-ADDRESS instead of OTHER-ADDRESS / RESPONSE-ORIGIN
    serves_other: bool = True  # the OTHER-ADDRESS IP really is this server's
    change: str = "honour"  # honour | ignore (answer from where asked) | drop | error | swap (port<->ip flags)
    answer_from: TA | None = None  # answer every request from this address instead
    origin_lie: TA | None = None  # RESPONSE-ORIGIN it claims
    plain_mapped: bool = True  # also sends MAPPED-ADDRESS
    alg_rewrite: str | None = None  # an ALG on the path rewrites MAPPED-ADDRESS to this IP
    response_origin: bool = True

    def answer(self, dest: TA, change: int) -> tuple[TA | None, str | None]:
        """(source of the answer, error) for a request that reached ``dest``; (None, None): no answer."""
        if self.answer_from:
            return self.answer_from, None
        if not change:
            if not self.serves_other and dest.host != self.primary.host:
                return None, None
            return dest, None
        if self.change == "drop":
            return None, None
        if self.change == "error":
            return dest, "420 Unknown Attribute"
        if self.change == "ignore":
            return dest, None
        if self.change == "swap":
            change = ((change & CHANGE_IP) and CHANGE_PORT) | ((change & CHANGE_PORT) and CHANGE_IP)
        other = self.other or dest
        host = other.host if change & CHANGE_IP else dest.host
        port = other.port if change & CHANGE_PORT else dest.port
        if not self.serves_other and host != self.primary.host:
            return None, None
        return TA(host, port), None


def exchange(nat: SimNat, server: SimServer, socket: str, test: str, local: TA, dest: TA, change: int = 0) -> Exchange:
    ext = nat.outbound(local, dest)
    source, error = server.answer(dest, change)
    base = dict(test=test, socket=socket, destination=dest, local=local, change_request=change)
    if source is None or not nat.admits(ext, source):
        return Exchange(**base, failure="no answer within 250 ms", waited_ms=250.0)
    if error:
        return Exchange(**base, answered=True, source=source, error=error, rtt_ms=1.0, sends=1)
    mapped = ext
    if server.alg_rewrite:
        mapped = TA(server.alg_rewrite, ext.port)
    origin = server.origin_lie or source
    return Exchange(
        **base, answered=True, source=source, xor_mapped=ext, mapped=mapped if server.plain_mapped else None,
        response_origin=origin if server.response_origin else None, other_address=server.other,
        other_attribute=("CHANGED-ADDRESS" if server.rfc3489 else "OTHER-ADDRESS") if server.other else None,
        software="sim", rtt_ms=1.0, sends=1,
    )


def run_plan(nat: SimNat, servers: list[SimServer], *, map_first: bool = True, index0: int = 0) -> NatObservations:
    """natkit's probe plan (natkit.nat._Run.server) against the models."""
    mlocal = TA(nat.local_ip, MAP_PORT)
    out = []
    for i, server in enumerate(servers):
        flocal = TA(nat.local_ip, FILT_PORT + 10 * (i + index0))
        addr = server.primary
        exs = []
        first = exchange(nat, server, "mapping/v4", TEST_I, mlocal, addr)
        exs.append(first)
        other, _ = validate_primary(first)
        if other is not None:
            d = alternate_addresses(addr, other)
            tests = [exchange(nat, server, "mapping/v4", t, mlocal, d[t]) for t in (TEST_II, TEST_III, TEST_IV)]
            exs += tests
            if all(t.ok and t.source == t.destination for t in tests):
                exs.append(exchange(nat, server, "mapping/v4", CONTROL_II, mlocal, addr, CHANGE_IP | CHANGE_PORT))
                exs.append(exchange(nat, server, "mapping/v4", CONTROL_III, mlocal, addr, CHANGE_PORT))
        f1 = exchange(nat, server, f"filtering/{i}", FILTER_I, flocal, addr)
        exs.append(f1)
        other, _ = validate_primary(f1)
        if other is not None:
            exs.append(exchange(nat, server, f"filtering/{i}", FILTER_II, flocal, addr, CHANGE_IP | CHANGE_PORT))
            exs.append(exchange(nat, server, f"filtering/{i}", FILTER_III, flocal, addr, CHANGE_PORT))
        out.append(ServerObservation(f"srv{i}", f"stun:{addr}", addr, exchanges=tuple(exs)))
    return NatObservations(servers=tuple(out), timeout_s=3.0, window_s=0.25, rto_s=0.05)


def report_for(mapping, filtering, servers=None, **nat_kw):
    nat = SimNat(mapping, filtering, **nat_kw)
    return classify(run_plan(nat, servers or [SimServer()]), duration_ms=260.0)


# --------------------------------------------------------------------------- honest server: every NAT type

NAT_TYPES = [(m, f) for m in (None, EIM, ADM, APDM) for f in (EIF, ADF, APDF)]


@pytest.mark.parametrize("mapping,filtering", NAT_TYPES, ids=lambda v: getattr(v, "value", "no-nat"))
def test_every_mapping_and_filtering_combination(mapping, filtering):
    r = report_for(mapping, filtering)
    want_map = NOMAP if mapping is None else mapping
    want_filter = NOFILT if (mapping is None and filtering is EIF) else filtering
    assert r.mapping.value is want_map, r.mapping
    assert r.filtering.value is want_filter, r.filtering
    assert r.determined and r.status == "determined" and exit_code(r) == 0
    assert r.nat_present.value is (mapping is not None)
    assert r.udp_blocked.value is False
    assert r.rfc5780_server == "srv0"
    assert r.servers[0].rfc5780.value is True and r.servers[0].issues == ()
    # negative filtering results are verified by the controls only behind EIM (or no NAT)
    cone = mapping in (None, EIM)
    assert r.confidence == ("high" if cone or filtering is EIF else "medium"), (r.confidence, r.filtering.reason)
    assert r.classic.known


CLASSIC = {
    (None, EIF): "open internet",
    (None, ADF): "symmetric UDP firewall",
    (None, APDF): "symmetric UDP firewall",
    (EIM, EIF): "full cone",
    (EIM, ADF): "restricted cone",
    (EIM, APDF): "port-restricted cone",
}


@pytest.mark.parametrize("mapping,filtering", NAT_TYPES, ids=lambda v: getattr(v, "value", "no-nat"))
def test_classic_names_are_secondary_labels(mapping, filtering):
    r = report_for(mapping, filtering)
    assert r.classic.value == CLASSIC.get((mapping, filtering), "symmetric")
    # the RFC 4787 terms come first in the verdict
    if mapping is None:
        assert r.verdict.startswith("no NAT")
    else:
        assert r.verdict == f"{mapping.value} mapping, {filtering.value} filtering"


def test_rfc5780_mapping_steps_are_cited():
    eim = report_for(EIM, APDF)
    assert "203.0.113.7:5000" in eim.mapping.reason and "RFC 5780 §4.3" in eim.mapping.reason
    adm = report_for(ADM, APDF)
    assert "different IPs" in adm.mapping.reason and "same IP, different ports" in adm.mapping.reason
    apdm = report_for(APDM, APDF)
    assert "same IP, different ports" in apdm.mapping.reason


def test_filtering_reasons_cite_the_test_that_decided():
    assert "§4.4 Test II" in report_for(EIM, EIF).filtering.reason
    adf = report_for(EIM, ADF).filtering.reason
    assert "Test III" in adf and "250 ms" in adf
    apdf = report_for(EIM, APDF).filtering.reason
    assert "Tests II and III" in apdf
    # behind a non-EIM mapping the controls cannot run: said so in the reason
    assert "could not be checked" in report_for(APDM, APDF).filtering.reason


def test_no_nat_open_is_not_endpoint_independent_filtering():
    # the issue: other tools call a host without NAT "endpoint-independent filtering"
    r = report_for(None, EIF)
    assert r.filtering.value is Filtering.NONE and r.mapping.value is Mapping.NONE
    assert r.verdict == "no NAT, no filtering (open)" and r.classic.value == "open internet"
    assert r.port_preservation.value is None and "not applicable" in r.port_preservation.reason
    assert r.cgnat.value is False
    assert r.p2p.startswith("direct connections expected")


def test_no_nat_with_firewall():
    r = report_for(None, APDF)
    assert r.verdict == "no NAT, address-and-port-dependent filtering (a firewall)"
    assert r.filtering.reason.startswith("no NAT, but a firewall filters")


def test_port_preservation():
    assert report_for(EIM, APDF).port_preservation.value is True
    r = report_for(EIM, APDF, preserve=False)
    assert r.port_preservation.value is False and "local port 5000 was mapped to" in r.port_preservation.reason
    # APDM with port preservation: the first mapping keeps the port, later ones cannot
    assert report_for(APDM, APDF).port_preservation.value is False


# --------------------------------------------------------------------------- misbehaving servers


def assert_no_false_filtering(r):
    """A server whose RFC 5780 answers cannot be trusted decides nothing: no filtering verdict, the
    only server is unusable (exit 3)."""
    assert r.filtering.value is None, r.filtering
    assert not r.determined and r.status == "no_usable_server", r.status
    assert exit_code(r) == 3


@pytest.mark.parametrize("mapping", [None, EIM, APDM], ids=lambda v: getattr(v, "value", "no-nat"))
def test_one_address_server_gives_filtering_unknown(mapping):
    r = report_for(mapping, APDF, [SimServer(other=None)])
    assert_no_false_filtering(r)
    assert r.status == "no_usable_server" and exit_code(r) == 3
    assert "no OTHER-ADDRESS" in r.filtering.reason
    assert r.servers[0].rfc5780.value is False and "no OTHER-ADDRESS" in r.servers[0].rfc5780.reason
    if mapping is None:
        assert r.mapping.value is Mapping.NONE and r.verdict == "no NAT, filtering unknown"
        assert r.classic.value is None and "filtering unknown" in r.classic.reason
    else:
        assert r.mapping.value is None and "only one destination" in r.mapping.reason
    # only Test I and F-I went out: nothing to an alternate address
    tests = [ex.test for ex in r.observations.servers[0].exchanges]
    assert tests == [TEST_I, FILTER_I]


@pytest.mark.parametrize("other,needle", [
    (TA(P.host, 3479), "has the primary IP"),
    (TA("198.51.100.11", P.port), "has the primary port"),
    (TA("10.0.0.5", 3479), "natkit does not send to it"),
    (TA("2001:db8::1", 3479), "not of the primary address family"),
])
def test_bad_other_address_is_never_used(other, needle):
    r = report_for(EIM, EIF, [SimServer(other=other)])
    assert_no_false_filtering(r)
    assert any(needle in i for i in r.servers[0].issues), r.servers[0].issues
    assert [ex.test for ex in r.observations.servers[0].exchanges] == [TEST_I, FILTER_I]


def test_private_other_address_scope_rule():
    assert address_scope("127.0.0.2") == "loopback"
    assert address_scope("10.1.2.3") == "private"
    assert address_scope("100.64.1.1") == "shared"
    assert address_scope("169.254.169.254") == "link-local"
    assert address_scope("8.8.8.8") == "global"
    assert address_scope("203.0.113.5") == address_scope("198.51.100.1") == "global"  # the lab's internet
    ok, _ = validate_primary(Exchange(TEST_I, "m", TA("127.0.0.1", 3478), answered=True, source=TA("127.0.0.1", 3478),
                                      xor_mapped=TA("127.0.0.1", 5), other_address=TA("127.0.0.2", 3479)))
    assert ok == TA("127.0.0.2", 3479)


@pytest.mark.parametrize("mapping,filtering", [(None, APDF), (EIM, APDF), (EIM, ADF), (APDM, APDF)], ids=str)
def test_server_ignoring_change_request_never_gives_a_verdict(mapping, filtering):
    # it answers CHANGE-REQUEST from the primary address, which every filter lets through:
    # a naive client would report endpoint-independent filtering
    r = report_for(mapping, filtering, [SimServer(change="ignore")])
    assert_no_false_filtering(r)
    assert any("ignores CHANGE-REQUEST" in i for i in r.servers[0].issues)
    assert r.servers[0].rfc5780.value is False
    assert r.status == "no_usable_server"


@pytest.mark.parametrize("mapping", [None, EIM], ids=lambda v: getattr(v, "value", "no-nat"))
def test_server_dropping_change_request_is_caught_by_the_controls(mapping):
    # silently dropped CHANGE-REQUESTs look like address-and-port-dependent filtering;
    # the control requests on the mapping socket (which the NAT lets through) expose it
    r = report_for(mapping, EIF, [SimServer(change="drop")])
    assert_no_false_filtering(r)
    assert "may not honour CHANGE-REQUEST" in r.filtering.reason
    assert r.status == "no_usable_server"


def test_server_dropping_change_request_behind_symmetric_nat_is_only_medium_confidence():
    # the controls cannot pass a symmetric NAT: the verdict stands, flagged as unverified
    r = report_for(APDM, APDF, [SimServer(change="drop")])
    assert r.filtering.value is APDF and r.confidence == "medium"
    assert "could not be checked" in r.filtering.reason


def test_server_rejecting_change_request():
    r = report_for(EIM, EIF, [SimServer(change="error")])
    assert_no_false_filtering(r)
    assert any("rejects CHANGE-REQUEST" in i and "420" in i for i in r.servers[0].issues)
    # mapping still comes from Tests I-IV
    assert r.mapping.value is EIM and r.status == "no_usable_server" and exit_code(r) == 3


def test_server_swapping_change_flags():
    r = report_for(None, EIF, [SimServer(change="swap")])
    assert_no_false_filtering(r)
    assert any("expected" in i for i in r.servers[0].issues)


def test_server_answering_from_another_address():
    r = report_for(EIM, EIF, [SimServer(answer_from=TA("198.51.100.99", 3478))])
    assert r.mapping.value is None and r.filtering.value is None
    assert any("not from the address asked" in i for i in r.servers[0].issues)
    assert r.status == "no_usable_server"


@pytest.mark.parametrize("filtering", [EIF, ADF, APDF], ids=lambda v: v.value)
def test_alternate_address_not_served(filtering):
    # OTHER-ADDRESS advertised, but its IP is not the server's: Tests II/III get no answer,
    # change-IP requests get none either; change-port answers still arrive
    r = report_for(EIM, filtering, [SimServer(serves_other=False)])
    assert r.mapping.value is None
    assert r.filtering.value is None  # the change-IP answer cannot arrive from an unserved IP
    assert any("did not answer (Test II)" in i for i in r.servers[0].issues)


def test_response_origin_mismatch_is_a_warning_only():
    r = report_for(EIM, APDF, [SimServer(origin_lie=TA("10.0.0.10", 3478))])
    assert r.determined
    assert any("RESPONSE-ORIGIN" in i for i in r.servers[0].issues)


def test_rfc3489_server_changed_address():
    r = report_for(EIM, ADF, [SimServer(rfc3489=True)])
    assert r.determined and r.filtering.value is ADF
    assert any("CHANGED-ADDRESS" in i for i in r.servers[0].issues)


# --------------------------------------------------------------------------- several servers


def plain(host: str, port: int = 3478) -> SimServer:
    return SimServer(primary=TA(host, port), other=None)


def test_plain_servers_with_different_ips_and_same_mapping_mean_eim():
    r = report_for(EIM, APDF, [plain("198.51.100.20"), plain("198.51.100.30")])
    assert r.mapping.value is EIM and "compared across servers" in r.mapping.reason
    assert r.filtering.value is None and r.status == "no_usable_server"
    assert r.classic.value is None and "cone" in r.classic.reason
    assert "depends on the unknown filtering" in r.p2p


@pytest.mark.parametrize("mapping", [ADM, APDM], ids=lambda v: v.value)
def test_plain_servers_with_different_ips_show_symmetric_without_rfc5780(mapping):
    r = report_for(mapping, APDF, [plain("198.51.100.20"), plain("198.51.100.30")])
    assert r.mapping.value is None
    assert "address-dependent or address-and-port-dependent" in r.mapping.reason
    assert r.verdict.startswith("address-dependent or address-and-port-dependent mapping")
    assert r.classic.value == "symmetric"  # every non-EIM mapping is RFC 3489 symmetric
    assert "needs TURN against port-restricted" in r.p2p
    assert r.confidence == "low"


def test_plain_servers_on_one_ip():
    same = report_for(ADM, APDF, [plain("198.51.100.20", 3478), plain("198.51.100.20", 3479)])
    assert same.mapping.value is None and "endpoint-independent or address-dependent" in same.mapping.reason
    diff = report_for(APDM, APDF, [plain("198.51.100.20", 3478), plain("198.51.100.20", 3479)])
    assert diff.mapping.value is APDM


def test_rfc5780_server_after_a_dead_one():
    dead = SimServer(primary=TA("198.51.100.50", 3478), answer_from=None)
    obs = run_plan(SimNat(EIM, ADF), [SimServer()])
    dead_obs = ServerObservation("dead", "stun:198.51.100.50:3478", TA("198.51.100.50", 3478), exchanges=(
        Exchange(TEST_I, "mapping/v4", dead.primary, TA(LOCAL_IP, MAP_PORT), failure="no answer within 3000 ms"),
        Exchange(FILTER_I, "filtering/1", dead.primary, TA(LOCAL_IP, 5099), failure="no answer within 3000 ms"),
    ))
    r = classify(dataclasses.replace(obs, servers=(dead_obs, *obs.servers)))
    assert r.determined and r.filtering.value is ADF and r.rfc5780_server == "srv0"
    assert r.servers[0].answered is False and r.servers[0].rfc5780.value is None


def test_servers_disagreeing_on_filtering_lower_confidence():
    good = run_plan(SimNat(EIM, ADF), [SimServer()]).servers[0]
    other = run_plan(SimNat(EIM, APDF), [SimServer(primary=TA("198.51.100.40", 3478), other=TA("198.51.100.41", 3479))], index0=1).servers[0]
    r = classify(NatObservations(servers=(good, dataclasses.replace(other, server="srv1")), timeout_s=3.0))
    assert r.filtering.value is ADF  # the first usable server decides
    assert r.confidence == "medium" and any("disagree" in n for n in r.notes)


def test_mapping_contradiction_is_inconsistent_not_a_guess():
    # same mapping toward two IPs but different toward two ports of one IP: no RFC 4787 behaviour
    local = TA(LOCAL_IP, MAP_PORT)
    a, b = TA(PUBLIC_IP, 1000), TA(PUBLIC_IP, 2000)
    rows = [(TA("198.51.100.20", 3478), a), (TA("198.51.100.30", 3478), a), (TA("198.51.100.30", 3479), b)]
    servers = tuple(
        ServerObservation(f"s{i}", f"stun:{d}", d, exchanges=(Exchange(TEST_I, "mapping/v4", d, local, answered=True, source=d, xor_mapped=m),))
        for i, (d, m) in enumerate(rows)
    )
    r = classify(NatObservations(servers=servers, timeout_s=3.0))
    assert r.mapping.value is None and "inconsistent" in r.mapping.reason
    assert any("inconsistent" in n for n in r.notes)


def test_mapping_changing_toward_one_destination():
    local, d = TA(LOCAL_IP, MAP_PORT), TA("198.51.100.20", 3478)
    exs = [Exchange(TEST_I, "mapping/v4", d, local, answered=True, source=d, xor_mapped=TA(PUBLIC_IP, p)) for p in (1, 2)]
    servers = (ServerObservation("a", "stun:a", d, exchanges=(exs[0],)), ServerObservation("b", "stun:b", d, exchanges=(exs[1],)))
    r = classify(NatObservations(servers=servers, timeout_s=3.0))
    assert r.mapping.value is None and "changed between requests" in r.mapping.reason


def test_partly_translated_host():
    local = TA(LOCAL_IP, MAP_PORT)
    d1, d2 = TA("198.51.100.20", 3478), TA("198.51.100.30", 3478)
    servers = (
        ServerObservation("a", "stun:a", d1, exchanges=(Exchange(TEST_I, "mapping/v4", d1, local, answered=True, source=d1, xor_mapped=local),)),
        ServerObservation("b", "stun:b", d2, exchanges=(Exchange(TEST_I, "mapping/v4", d2, local, answered=True, source=d2, xor_mapped=TA(PUBLIC_IP, 9)),)),
    )
    r = classify(NatObservations(servers=servers, timeout_s=3.0))
    assert r.nat_present.value is True and r.mapping.value is None
    assert any("some destinations only" in n for n in r.notes)


def test_filtering_answers_out_of_order_are_noted():
    obs = run_plan(SimNat(EIM, EIF), [SimServer()])
    s = obs.servers[0]
    exs = tuple(dataclasses.replace(ex, answered=False, source=None, xor_mapped=None, mapped=None, failure="lost") if ex.test == FILTER_III else ex
                for ex in s.exchanges)
    r = classify(dataclasses.replace(obs, servers=(dataclasses.replace(s, exchanges=exs),)))
    assert r.filtering.value is EIF and r.confidence == "medium"
    assert any("change-port answer did not" in n for n in r.notes)


def test_lost_mapping_test_makes_filtering_negatives_untrusted():
    obs = run_plan(SimNat(EIM, APDF), [SimServer()])
    s = obs.servers[0]
    exs = tuple(dataclasses.replace(ex, answered=False, source=None, xor_mapped=None, mapped=None, failure="lost")
                if ex.test == TEST_III else ex for ex in s.exchanges if ex.test not in (CONTROL_II, CONTROL_III))
    r = classify(dataclasses.replace(obs, servers=(dataclasses.replace(s, exchanges=exs),)))
    assert r.filtering.value is None and "proves nothing" in r.filtering.reason
    assert r.mapping.value is EIM  # Tests I, II and IV still decide the mapping


# --------------------------------------------------------------------------- no answers


def test_udp_blocked():
    r = report_for(EIM, APDF, [SimServer(change="drop", answer_from=None)], public_ip=PUBLIC_IP)
    assert r.udp_blocked.value is False  # sanity: the model answers
    obs = run_plan(SimNat(EIM, APDF), [SimServer()])
    silent = tuple(
        dataclasses.replace(s, exchanges=tuple(Exchange(ex.test, ex.socket, ex.destination, ex.local, failure="no answer within 3000 ms")
                                               for ex in s.exchanges if ex.test in (TEST_I, FILTER_I)))
        for s in obs.servers
    )
    r = classify(dataclasses.replace(obs, servers=silent, window_s=None))
    assert r.status == "udp_blocked" and exit_code(r) == 3
    assert r.udp_blocked.value is True and r.classic.value == "UDP blocked"
    assert r.verdict.startswith("UDP blocked") and "TURN over TCP" in r.p2p
    assert r.confidence == "none" and r.public_address is None


def test_unresolvable_servers():
    r = classify(NatObservations(servers=(ServerObservation("nope.invalid", "stun:nope.invalid:3478", None, error="cannot resolve host"),), timeout_s=3.0))
    assert r.udp_blocked.value is None and r.status == "no_usable_server" and exit_code(r) == 3
    assert r.servers[0].issues == ("cannot resolve host",)


def test_error_answers_are_not_udp_blocked():
    d = P
    ex = Exchange(TEST_I, "mapping/v4", d, TA(LOCAL_IP, MAP_PORT), answered=True, source=d, error="400 Bad Request")
    r = classify(NatObservations(servers=(ServerObservation("s", "stun:s", d, exchanges=(ex,)),), timeout_s=3.0))
    assert r.udp_blocked.value is False and r.status == "no_usable_server"
    assert "400" in r.servers[0].issues[0]


# --------------------------------------------------------------------------- other findings


def test_alg_suspected():
    r = report_for(EIM, APDF, [SimServer(alg_rewrite="192.168.1.20")])
    assert r.alg_suspected.value is True and "ALG" in r.alg_suspected.reason
    assert r.public_address == TA(PUBLIC_IP, MAP_PORT)  # XOR-MAPPED-ADDRESS wins
    assert report_for(EIM, APDF).alg_suspected.value is False
    r = report_for(EIM, APDF, [SimServer(plain_mapped=False)])
    assert r.alg_suspected.value is None


def test_cgnat_hint():
    assert report_for(EIM, APDF, public_ip="100.64.3.4").cgnat.value is True
    assert report_for(EIM, APDF, local_ip="100.100.0.9").cgnat.value is True
    unknown = report_for(EIM, APDF).cgnat
    assert unknown.value is None and "not be visible" in unknown.reason


def test_hairpin_facts():
    base = run_plan(SimNat(EIM, APDF), [SimServer()])
    r = classify(base)
    assert r.hairpinning.value is None and "--hairpin" in r.hairpinning.reason
    yes = classify(dataclasses.replace(base, hairpin=HairpinObservation("srv0", True, "x", 0.25)))
    assert yes.hairpinning.value is True and "§4.5" in yes.hairpinning.reason
    no = classify(dataclasses.replace(base, hairpin=HairpinObservation("srv0", False, "x", 0.25)))
    assert no.hairpinning.value is False and "250 ms" in no.hairpinning.reason
    na = classify(dataclasses.replace(base, hairpin=HairpinObservation("srv0", None, "not run: x")))
    assert na.hairpinning.value is None and na.hairpinning.reason == "not run: x"
    open_host = classify(dataclasses.replace(run_plan(SimNat(None, EIF), [SimServer()]), hairpin=HairpinObservation("srv0", True, "x", 0.25)))
    assert open_host.hairpinning.value is None and "not applicable" in open_host.hairpinning.reason


def lifetime_obs(samples, response_port=True, skipped=None):
    return LifetimeObservation("srv0", response_port, "d", 12.0, tuple(LifetimeSample(t, a) for t, a in samples), skipped)


@pytest.mark.parametrize("samples,bracket", [
    ([(1, True), (2, True), (3, False)], LifetimeBracket(2, 3)),
    ([(1, False)], LifetimeBracket(None, 1)),
    ([(1, True), (12, True)], LifetimeBracket(12, None)),
])
def test_lifetime_brackets(samples, bracket):
    base = run_plan(SimNat(EIM, APDF), [SimServer()])
    r = classify(dataclasses.replace(base, lifetime=lifetime_obs(samples)))
    assert r.mapping_lifetime.value == bracket and "§4.6" in r.mapping_lifetime.reason


def test_lifetime_unknowns():
    base = run_plan(SimNat(EIM, APDF), [SimServer()])
    assert "--lifetime" in classify(base).mapping_lifetime.reason
    r = classify(dataclasses.replace(base, lifetime=lifetime_obs([], response_port=False)))
    assert r.mapping_lifetime.value is None and "RESPONSE-PORT" in r.mapping_lifetime.reason
    r = classify(dataclasses.replace(base, lifetime=lifetime_obs([], response_port=None)))
    assert r.mapping_lifetime.value is None
    r = classify(dataclasses.replace(base, lifetime=lifetime_obs([], skipped="stopped")))
    assert r.mapping_lifetime.reason == "stopped"
    r = classify(dataclasses.replace(base, lifetime=lifetime_obs([(1, True), (2, False), (3, True)])))
    assert r.mapping_lifetime.value == LifetimeBracket(1, 2) and any("packet loss" in n for n in r.notes)
    open_host = classify(dataclasses.replace(run_plan(SimNat(None, EIF), [SimServer()]), lifetime=lifetime_obs([(1, True)])))
    assert "not applicable" in open_host.mapping_lifetime.reason


# --------------------------------------------------------------------------- tables, timers, JSON


def test_classic_and_p2p_tables_are_total():
    cands = [frozenset(), frozenset({EIM}), frozenset({ADM, APDM}), frozenset({EIM, ADM}), frozenset({NOMAP})]
    for m, c, f in itertools.product([None, *Mapping], cands, [None, *Filtering]):
        assert classic_name(m, c, f).reason
        assert p2p_line(m, c, f, False)
    assert "TURN over TCP" in p2p_line(None, frozenset(), None, True)
    assert p2p_line(EIM, frozenset({EIM}), APDF, False) == "direct connections likely, except with peers behind symmetric NATs: those need TURN"
    assert "symmetric NATs included" in p2p_line(EIM, frozenset({EIM}), ADF, False)


def test_plan_timers():
    assert plan_timers(0.3, 3.0) == (0.05, 0.25)  # loopback: clamps
    rto, window = plan_timers(40.0, 3.0)
    assert rto == pytest.approx(0.12) and window == pytest.approx(0.4)
    assert plan_timers(400.0, 3.0) == (0.5, 3.0)  # RTO and window caps
    assert plan_timers(40.0, 3.0, window=1.5)[1] == 1.5
    assert plan_timers(None, 3.0) == (0.5, 2.5)


def test_lifetime_checkpoints():
    pts = lifetime_checkpoints(120)
    assert pts[:10] == tuple(float(i) for i in range(1, 11))
    assert pts[-1] == 120.0 and all(b > a for a, b in zip(pts, pts[1:]))
    assert all((b - a) / a <= 0.15 or b - a <= 1 for a, b in zip(pts[10:], pts[11:-1]))
    assert lifetime_checkpoints(0.5) == (0.5,)
    for bad in (0, -1, 601):
        with pytest.raises(UsageError):
            lifetime_checkpoints(bad)


def test_exit_codes():
    assert EXIT_BY_STATUS == {"determined": 0, "inconclusive": 1, "udp_blocked": 3, "no_usable_server": 3}


def test_json_schema_document():
    r = report_for(EIM, APDF)
    doc = json.loads(json.dumps(to_jsonable(r)))
    assert doc["schema"] == SCHEMA == "natkit.nat/1"
    assert doc["mapping"] == {"value": "endpoint-independent", "reason": r.mapping.reason}
    assert doc["filtering"]["value"] == "address-and-port-dependent"
    assert doc["classic"]["value"] == "port-restricted cone"
    assert doc["public_address"] == "203.0.113.7:5000"
    assert doc["hairpinning"] == {"value": None, "reason": "not tested (use --hairpin)"}
    assert doc["servers"][0]["rfc5780"]["value"] is True
    assert {ex["test"] for ex in doc["observations"]["servers"][0]["exchanges"]} >= {"I", "II", "III", "IV", "F-I", "F-II", "F-III", "C-II", "C-III"}
    for key in ("status", "verdict", "p2p", "confidence", "determined", "udp_blocked", "nat_present", "port_preservation",
                "alg_suspected", "cgnat", "mapping_lifetime", "notes", "rtt_ms", "window_ms", "duration_ms"):
        assert key in doc


def test_usable_server_but_contradicting_evidence_is_inconclusive():
    obs = run_plan(SimNat(EIM, APDF), [SimServer()])
    d = TA("198.51.100.60", 3478)
    odd = ServerObservation("odd", f"stun:{d}", d, exchanges=(
        Exchange(TEST_I, "mapping/v4", d, TA(LOCAL_IP, MAP_PORT), answered=True, source=d, xor_mapped=TA(PUBLIC_IP, 7777)),
    ))
    r = classify(dataclasses.replace(obs, servers=(*obs.servers, odd)))
    assert r.mapping.value is None and "inconsistent" in r.mapping.reason
    assert r.filtering.value is APDF  # the RFC 5780 server still decides filtering
    assert r.status == "inconclusive" and exit_code(r) == 1 and r.confidence == "low"
    assert r.classic.value is None


def test_swapped_change_flags_are_caught_by_a_control_behind_a_cone_nat():
    # F-II/F-III answers are filtered, but the change-port control answers from IP2:P1,
    # which the mapping socket has talked to: the swap shows
    r = report_for(EIM, APDF, [SimServer(change="swap")])
    assert_no_false_filtering(r)
    assert any("(change port) from 198.51.100.11:3478" in i for i in r.servers[0].issues), r.servers[0].issues


def _with(obs, test, **changes):
    s = obs.servers[0]
    exs = tuple(dataclasses.replace(ex, **changes) if ex.test == test else ex for ex in s.exchanges)
    return dataclasses.replace(obs, servers=(dataclasses.replace(s, exchanges=exs),))


def test_mapping_test_answered_from_elsewhere():
    obs = _with(run_plan(SimNat(EIM, APDF), [SimServer()]), TEST_III, source=TA("198.51.100.99", 1))
    r = classify(obs)
    assert any("Test III to 198.51.100.11:3479 was answered from 198.51.100.99:1" in i for i in r.servers[0].issues)
    assert r.filtering.value is None  # negatives need Tests I-IV
    obs = _with(run_plan(SimNat(EIM, APDF), [SimServer()]), TEST_II, error="500 Server Error")
    assert any("Test II" in i and "500" in i for i in classify(obs).servers[0].issues)


def test_filtering_socket_without_answer():
    obs = _with(run_plan(SimNat(EIM, APDF), [SimServer()]), FILTER_I, answered=False, source=None, xor_mapped=None,
                mapped=None, failure="no answer within 3000 ms")
    s = obs.servers[0]
    obs = dataclasses.replace(obs, servers=(dataclasses.replace(s, exchanges=tuple(ex for ex in s.exchanges if ex.test not in (FILTER_II, FILTER_III))),))
    r = classify(obs)
    assert r.mapping.value is EIM and r.filtering.value is None
    assert any("filtering socket: no answer to Test I" in i for i in r.servers[0].issues)
    err = classify(_with(run_plan(SimNat(EIM, APDF), [SimServer()]), FILTER_I, error="403 Forbidden"))
    assert any("filtering socket" in i and "403" in i for i in err.servers[0].issues)


def test_change_answer_with_odd_response_origin_is_noted():
    r = classify(_with(run_plan(SimNat(EIM, EIF), [SimServer()]), FILTER_II, response_origin=TA("10.9.9.9", 3479)))
    assert r.filtering.value is EIF
    assert any("RESPONSE-ORIGIN 10.9.9.9:3479" in i for i in r.servers[0].issues)


def test_ipv4_and_ipv6_mappings_disagree():
    def sock(name, rows):
        return [Exchange(TEST_I, name, d, local, answered=True, source=d, xor_mapped=m) for d, local, m in rows]
    l4, l6 = TA(LOCAL_IP, MAP_PORT), TA("2001:db8:1::20", MAP_PORT)
    v4 = sock("mapping/v4", [(TA("198.51.100.20", 3478), l4, TA(PUBLIC_IP, 1)), (TA("198.51.100.30", 3478), l4, TA(PUBLIC_IP, 1))])
    v6 = sock("mapping/v6", [(TA("2001:db8::20", 3478), l6, TA("2001:db8:2::1", 1)), (TA("2001:db8::20", 3479), l6, TA("2001:db8:2::1", 2))])
    servers = tuple(ServerObservation(f"s{i}", "stun:x", ex.destination, exchanges=(ex,)) for i, ex in enumerate(v4 + v6))
    r = classify(NatObservations(servers=servers, timeout_s=3.0))
    assert r.mapping.value is EIM  # the first decided socket
    assert any("IPv4 and IPv6 mappings behave differently" in n for n in r.notes)
