"""Pure tests of the lab spec: validation, address plan, nft rendering, expected outcomes.

No namespaces, no root: everything here runs anywhere.
"""

from __future__ import annotations

import ipaddress
import json

import pytest

from natkit.errors import UsageError
from natkit.lab.spec import (
    ADF,
    APDF,
    APDM,
    BEHAVIOURS,
    EIF,
    EIM,
    MATRIX_BEHAVIOURS,
    HostSpec,
    LabSpec,
    NatSpec,
    ServerSpec,
    classify,
    effective_behaviour,
    expected_outcome,
    load_spec,
    normalise_behaviour,
    outcome_matches,
    plan,
    render_host_firewall,
    render_nat_ruleset,
)

WAN, LAN = "198.51.100.11", "10.0.1.0/24"


def rules(behaviour: str, **kw) -> str:
    return render_nat_ruleset(NatSpec("box", behaviour, **kw), WAN, LAN)


def chain(text: str, name: str) -> list[str]:
    """The rule lines of one chain (without the type line)."""
    lines = text.splitlines()
    start = lines.index(f"\tchain {name} {{")
    out = []
    for line in lines[start + 2:]:
        if line == "\t}":
            break
        out.append(line.strip())
    return out


# ---------------------------------------------------------------- behaviours

@pytest.mark.parametrize("spelling,key", [
    ("symmetric", "symmetric"), ("Port-Restricted", "port_restricted"), ("port restricted cone", "port_restricted"),
    ("full-cone", "full_cone"), ("EIM/ADF", "restricted"), ("restricted_cone", "restricted"), ("open", "open"),
    ("sym", "symmetric"), ("APDM/APDF", "symmetric"),
])
def test_behaviour_spellings(spelling, key):
    assert normalise_behaviour(spelling) == key


def test_unknown_behaviour_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown NAT behaviour"):
        NatSpec("x", "leaky")


def test_rfc_terms_per_behaviour():
    assert BEHAVIOURS["full_cone"][:2] == (EIM, EIF)
    assert BEHAVIOURS["restricted"][:2] == (EIM, ADF)
    assert BEHAVIOURS["port_restricted"][:2] == (EIM, APDF)
    assert BEHAVIOURS["symmetric"][:2] == (APDM, APDF)
    for key, (m, f, _) in BEHAVIOURS.items():
        assert classify(m, f) == key
        assert classify(m.value, f.value) == key  # the words a measurement returns
    assert classify(EIM, "weird") == "endpoint-independent/weird"


def test_one_nat_vocabulary():
    """The lab's behaviours are natkit.nat_classify's Mapping/Filtering values, the ones `natkit nat` reports."""
    from natkit.nat_classify import Filtering, Mapping

    assert BEHAVIOURS["open"][:2] == (Mapping.NONE, Filtering.NONE)
    for m, f, _ in BEHAVIOURS.values():
        assert type(m) is Mapping and type(f) is Filtering
    assert (EIM, ADF) == (Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT)
    assert NatSpec("n", "symmetric").mapping is Mapping.ADDRESS_AND_PORT_DEPENDENT
    # the rendered ruleset and the verification messages speak RFC words, not enum names
    assert "(mapping endpoint-independent, filtering address-dependent)" in render_nat_ruleset(
        NatSpec("n", "restricted"), "198.51.100.11", "10.0.1.0/24")
    from natkit.lab.lab import judge

    problems = judge({"mapping": EIM, "filtering": APDF, "hairpin": None}, {"udp": True, "nat": True, "mapping": "endpoint-independent",
                                                                          "filtering": "endpoint-independent"})
    assert problems == ["filtering: declared address-and-port-dependent, measured endpoint-independent"]


def test_the_matrix_is_written_once(monkeypatch):
    """expected_outcome (lab, marker) and p2p_line (natkit nat) both read natkit.p2p.MATRIX."""
    from natkit import p2p
    from natkit.nat_classify import Filtering, Mapping, p2p_line

    def line(behaviour):
        m, f, _ = BEHAVIOURS[behaviour]
        return p2p_line(m, frozenset({m}), f, False)

    assert line("open") == "direct connections expected with every peer: nothing translates or filters"
    assert line("full_cone") == line("restricted") == "direct connections likely with every peer, symmetric NATs included"
    assert line("port_restricted") == "direct connections likely, except with peers behind symmetric NATs: those need TURN"
    assert line("symmetric") == ("direct only with open, full-cone and restricted-cone peers; "
                                 "needs TURN against port-restricted and symmetric peers")
    assert "unknown filtering" in p2p_line(Mapping.ENDPOINT_INDEPENDENT, frozenset({Mapping.ENDPOINT_INDEPENDENT}), None, False)
    assert p2p_line(Mapping.NONE, frozenset({Mapping.NONE}), Filtering.ADDRESS_AND_PORT_DEPENDENT, False) == line("port_restricted")
    # change one cell: both readers follow
    monkeypatch.setitem(p2p.MATRIX, ("port_restricted", "port_restricted"), p2p.RELAY)
    assert expected_outcome("prc", "port-restricted", turn=True) == "relay"
    assert expected_outcome("prc", "prc", turn=False) == "failed"
    assert line("port_restricted") == "direct only with open, full-cone and restricted-cone peers; needs TURN against port-restricted and symmetric peers"


# ---------------------------------------------------------------- nft rendering

def test_every_box_has_the_conntrack_trap_fix():
    for b in ("full_cone", "restricted", "port_restricted", "symmetric"):
        assert 'iifname "wan" ct state new drop' in chain(rules(b), "input"), b


def test_full_cone_dnats_any_inbound_udp_through_the_recorded_mapping():
    text = rules("full_cone")
    assert chain(text, "prerouting") == ['iifname "wan" dnat ip to udp dport map @eim']
    assert chain(text, "postrouting") == ['oifname "wan" masquerade']


def test_restricted_cone_dnats_only_known_remote_addresses():
    assert chain(rules("restricted"), "prerouting") == ['iifname "wan" ip saddr . udp dport @adf dnat ip to udp dport map @eim']


@pytest.mark.parametrize("b", ["port_restricted", "symmetric"])
def test_apdf_boxes_have_no_inbound_dnat(b):
    assert chain(rules(b), "prerouting") == []


def test_symmetric_randomises_ports_and_cones_do_not():
    assert chain(rules("symmetric"), "postrouting") == ['oifname "wan" masquerade fully-random']
    for b in ("full_cone", "restricted", "port_restricted"):
        assert "random" not in rules(b), b


def test_mappings_are_recorded_after_srcnat_with_the_original_tuple():
    text = rules("port_restricted")
    assert "type filter hook postrouting priority srcnat + 10; policy accept;" in text
    rec = chain(text, "record")
    assert 'oifname "wan" meta l4proto udp ct direction original update @eim { udp sport : ct original ip saddr . ct original proto-src }' in rec
    assert 'oifname "wan" meta l4proto udp update @adf { ip daddr . udp sport }' in rec


def test_forward_only_lets_dnated_connections_in():
    fwd = chain(rules("full_cone"), "forward")
    assert fwd[-2:] == ['iifname "wan" ct state new ct status dnat accept', 'iifname "wan" ct state new drop']


def test_hairpin_rules():
    assert "lan" not in rules("port_restricted").split("chain prerouting")[1].split("}")[0]
    text = rules("port_restricted", hairpin=True)
    assert f'iifname "lan" ip daddr {WAN} dnat ip to udp dport map @eim' in chain(text, "prerouting")
    assert f'oifname "lan" ip saddr {LAN} ct status dnat snat ip to {WAN}' in chain(text, "postrouting")


def test_loss_and_udp_blocking_come_first_in_forward():
    fwd = chain(rules("symmetric", loss=7, udp_blocked=True), "forward")
    assert fwd[0] == "numgen random mod 100 < 7 drop"
    assert fwd[1:3] == ['oifname "wan" meta l4proto udp drop', 'iifname "wan" meta l4proto udp drop']
    assert "numgen" not in rules("symmetric")


def test_mapping_timeout_sets_entry_timeouts_and_conntrack_sysctls():
    assert rules("full_cone").count("\t\ttimeout 120s") == 2
    assert rules("full_cone", mapping_timeout=5).count("\t\ttimeout 5s") == 2
    p = plan(LabSpec(nats=(NatSpec("n", "full_cone", mapping_timeout=5),), hosts=(HostSpec("h", behind="n"),)), "t")
    assert ("net.netfilter.nf_conntrack_udp_timeout", "5") in p.node("n").sysctls
    assert ("net.netfilter.nf_conntrack_udp_timeout_stream", "5") in p.node("n").sysctls


def test_rendering_is_deterministic_and_balanced():
    for b in ("full_cone", "restricted", "port_restricted", "symmetric"):
        a = rules(b, hairpin=True, loss=3, udp_blocked=True, mapping_timeout=9)
        assert a == rules(b, hairpin=True, loss=3, udp_blocked=True, mapping_timeout=9)
        assert a.count("{") == a.count("}")
        assert a.startswith("# natkit NAT box 'box'")
        assert "flush ruleset" not in a  # never wipe a ruleset wholesale


def test_host_firewall():
    assert render_host_firewall(HostSpec("h")) is None
    text = render_host_firewall(HostSpec("h", udp_blocked=True, loss=10))
    assert 'oifname "eth0" meta l4proto udp drop' in text
    assert 'iifname "eth0" numgen random mod 100 < 10 drop' in text


@pytest.mark.parametrize("kw", [{"loss": 101}, {"loss": -1}, {"mapping_timeout": 0}])
def test_invalid_options(kw):
    with pytest.raises(UsageError):
        NatSpec("n", "full_cone", **kw).validate()


# ---------------------------------------------------------------- specs and plans

def test_peers_shorthand_names_hosts_after_behaviours():
    s = LabSpec.peers("symmetric", "port_restricted", "symmetric", "open")
    assert [h.name for h in s.hosts] == ["sym1", "prc1", "sym2", "open1"]
    assert [n.name for n in s.nats] == ["sym1-nat", "prc1-nat", "sym2-nat"]
    assert s.host("open1").behind is None
    assert s.behaviour_of("sym2") == "symmetric" and s.behaviour_of("open1") == "open"


def test_matrix_spec_has_two_hosts_per_behaviour():
    s = LabSpec.matrix()
    assert len(s.hosts) == 2 * len(MATRIX_BEHAVIOURS)
    assert len(s.nats) == 2 * (len(MATRIX_BEHAVIOURS) - 1)


@pytest.mark.parametrize("spec,match", [
    (LabSpec(hosts=(HostSpec("a"), HostSpec("a"))), "duplicate"),
    (LabSpec(hosts=(HostSpec("a", behind="nope"),)), "not a NAT box"),
    (LabSpec(nats=(NatSpec("x", "full_cone", behind="y"), NatSpec("y", "full_cone", behind="x"))), "cycle"),
    (LabSpec(hosts=(HostSpec("Bad_Name"),)), "invalid host name"),
    (LabSpec(hosts=(HostSpec("server"),)), "reserved"),
    (LabSpec(nats=(NatSpec("o", "open"),)), "no NAT box"),
    (LabSpec(name="UPPER"), "invalid lab name"),
    (LabSpec(server=ServerSpec(port=50000)), "relay port range"),
])
def test_invalid_specs(spec, match):
    with pytest.raises(UsageError, match=match):
        spec.validate()


def test_plan_address_plan_and_safety():
    s = LabSpec(
        nats=(NatSpec("cgn", "full_cone"), NatSpec("home", "port_restricted", behind="cgn", hairpin=True), NatSpec("sym", "symmetric")),
        hosts=(HostSpec("a", behind="home"), HostSpec("b"), HostSpec("c", behind="cgn"), HostSpec("d", behind="sym")),
        name="t1",
    )
    p = plan(s)
    assert all(ns.startswith("natkit-t1-") for ns in p.namespaces)
    assert len(set(p.namespaces)) == len(p.namespaces)
    assert p.node("server").ips == ("203.0.113.10", "203.0.113.11")
    assert p.node("cgn").ip == "198.51.100.11" and p.node("sym").ip == "198.51.100.12"
    assert p.node("b").ip == "198.51.100.101"
    # a carrier-grade NAT's LAN uses the shared address space; home LANs 10/8
    assert p.node("home").ip.startswith("100.64.1.") and p.node("c").ip.startswith("100.64.1.")
    assert p.node("a").ip.startswith("10.0.2.")
    # no default route anywhere: only the two documentation prefixes
    for node in p.nodes:
        for r in node.routes:
            assert not r.startswith("default")
            assert ipaddress.ip_network(r.split()[0]) in (ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("198.51.100.0/24"))
    assert p.node("server").routes == ("198.51.100.0/24 dev eth0 scope link",)
    assert p.node("a").routes == ("203.0.113.0/24 via 10.0.2.1 dev eth0", "198.51.100.0/24 via 10.0.2.1 dev eth0")
    # forwarding only on NAT boxes
    for node in p.nodes:
        assert dict(node.sysctls)["net.ipv4.ip_forward"] == ("1" if node.kind == "nat" else "0")
        assert dict(node.sysctls)["net.ipv6.conf.all.disable_ipv6"] == "1"
    # the cgn has two devices behind it: a LAN bridge
    assert p.node("cgn").bridges == ("lan",)
    assert {(v.a_ns, v.b_ns) for v in p.veths if v.a_master == "lan"} == {("natkit-t1-cgn", "natkit-t1-home"), ("natkit-t1-cgn", "natkit-t1-c")}
    # every veth end that is not on a bridge is named in the plan
    assert all(len(v.a_if) <= 15 and len(v.b_if) <= 15 for v in p.veths)
    # the NAT rules name the box's own WAN address and LAN
    assert "snat ip to 100.64.1.10" in p.node("home").nft
    assert p.allowed_peer_ranges() == ("203.0.113.0/24", "198.51.100.0/24")


def test_effective_behaviour_of_a_cascade_is_the_most_restrictive():
    s = LabSpec(
        nats=(NatSpec("cgn", "full_cone"), NatSpec("home", "restricted", behind="cgn"),
              NatSpec("cgs", "symmetric"), NatSpec("h2", "full_cone", behind="cgs", udp_blocked=True)),
        hosts=(HostSpec("a", behind="home"), HostSpec("b", behind="h2"), HostSpec("o")),
    )
    assert effective_behaviour(s, "a") == {"mapping": EIM, "filtering": ADF, "hairpin": None, "udp_blocked": False}
    assert effective_behaviour(s, "b") == {"mapping": APDM, "filtering": APDF, "hairpin": None, "udp_blocked": True}
    assert effective_behaviour(s, "o") == {"mapping": "none", "filtering": "none", "hairpin": None, "udp_blocked": False}
    assert s.chain("a") == (s.nat("home"), s.nat("cgn"))


def test_load_spec_toml_and_json(tmp_path):
    toml = tmp_path / "lab.toml"
    toml.write_text(
        'name = "demo"\n'
        '[server]\nport = 3478\n'
        '[[nat]]\nname = "cgn"\nbehaviour = "full cone"\n'
        '[[nat]]\nname = "home"\nbehaviour = "port-restricted"\nbehind = "cgn"\nhairpin = true\n'
        '[[host]]\nname = "alice"\nbehind = "home"\n'
        '[[host]]\nname = "bob"\n'
    )
    s = load_spec(toml)
    assert s.name == "demo" and s.nat("home").hairpin and s.nat("cgn").behaviour == "full_cone"
    js = tmp_path / "lab.json"
    js.write_text(json.dumps({"peers": ["symmetric", "open"], "options": {"loss": 2}}))
    s2 = load_spec(js)
    assert [h.name for h in s2.hosts] == ["sym1", "open1"] and s2.nat("sym1-nat").loss == 2
    # round trip
    assert LabSpec.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("text,match", [
    ('[[nat]]\nname = "n"\nbehaviour = "symmetric"\ncolour = "red"\n', "unknown keys"),
    ('nonsense = 1\n', "unknown lab spec keys"),
    ('peers = ["symmetric"]\n[[host]]\nname = "x"\n', "either"),
    ('[[nat\n', "does not parse"),
])
def test_load_spec_errors(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(UsageError, match=match):
        load_spec(p)


# ---------------------------------------------------------------- expected matrix

def test_expected_matrix_matches_natlab():
    table = {
        ("open", "open"): "direct", ("open", "symmetric"): "direct (prflx)",
        ("full_cone", "symmetric"): "direct (prflx)", ("restricted", "symmetric"): "direct (prflx)",
        ("port_restricted", "port_restricted"): "direct", ("port_restricted", "symmetric"): "relay",
        ("symmetric", "symmetric"): "relay", ("restricted", "port_restricted"): "direct",
    }
    for (a, b), want in table.items():
        assert expected_outcome(a, b, turn=True) == want
        assert expected_outcome(b, a, turn=True) == want
        assert expected_outcome(a, b, turn=False) == ("failed" if want == "relay" else want)


def test_outcome_matching():
    assert outcome_matches("direct", "direct srflx") and outcome_matches("direct", "direct prflx")
    assert outcome_matches("direct (prflx)", "direct prflx")
    assert not outcome_matches("direct (prflx)", "direct srflx")
    assert not outcome_matches("relay", "direct host") and outcome_matches("failed", "failed")


def test_error_text_carries_hint_and_details():
    """A failing test shows str(exc): the cause is in details, the way out in the hint (issue 9 §9)."""
    from natkit.errors import LabError, NatkitError

    exc = LabError("python -m my_client failed in natkit-x-alice (exit 1)", step="exec", hint="install my_client in this venv",
                   details=["Traceback (most recent call last):", "ModuleNotFoundError: No module named 'my_client'"])
    text = str(exc)
    assert text.splitlines() == [
        "exec: python -m my_client failed in natkit-x-alice (exit 1) (install my_client in this venv)",
        "  | Traceback (most recent call last):",
        "  | ModuleNotFoundError: No module named 'my_client'",
    ]
    assert str(NatkitError("plain")) == "plain" and exc.args[0] == exc.message
    with pytest.raises(LabError, match="No module named 'my_client'"):
        raise exc
