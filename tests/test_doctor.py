"""natkit doctor: the pure parts (diagnosis rules on hand-made facts, the cause
catalogue, targets, the report's JSON) and the command line's bad input.

The same causes proven on real faults: tests/test_doctor_lab.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from natkit.doctor.causes import CAUSES, PRIORITY
from natkit.doctor.diagnose import address_kind, diagnose
from natkit.doctor.facts import (
    Alloc,
    AuthFacts,
    ChannelFacts,
    ClockProbe,
    Delivery,
    Facts,
    Perm,
    Reach,
    Target,
    TlsFacts,
)
from natkit.doctor.observe import targets_for
from natkit.doctor.report import finding, order, verdict_of
from natkit.errors import (
    EXIT_ALLOCATION_REFUSED,
    EXIT_AUTH_REFUSED,
    EXIT_NO_CONNECTIVITY,
    EXIT_UNREACHABLE,
)
from natkit.model import TransportAddress as TA

SRV = "203.0.113.10"
UDP = Target(f"turn:{SRV}:3478", "udp", SRV, TA(SRV, 3478), True)
TCP = Target(f"turn:{SRV}:3478?transport=tcp", "tcp", SRV, TA(SRV, 3478), False)
TLS = Target(f"turns:{SRV}:5349", "tls", SRV, TA(SRV, 5349), False)
CLIENT = TA("198.51.100.20", 40000)


def ok_reach(t: Target) -> Reach:
    return Reach(t, True, None, "Binding → success", CLIENT, 1.0)


def bad_reach(t: Target, error: str) -> Reach:
    return Reach(t, False, error, {"timeout": "no response within 1.5s", "refused": "connection refused",
                                   "icmp": "port unreachable (ICMP)"}[error])


def alloc(role: str, relayed: str | None, *, t: Target = UDP, family: int = 1, code: int | None = None, response: str | None = None) -> Alloc:
    if code is not None:
        return Alloc(role, t, family, False, response or f"{code} error", code)
    host, port = relayed.rsplit(":", 1)
    return Alloc(role, t, family, True, "success", None, TA(host.strip("[]"), int(port)), CLIENT, 600)


def healthy(**over) -> Facts:
    """Facts of a healthy server; ``over`` replaces fields."""
    a, b = alloc("A", f"{SRV}:50000"), alloc("B", f"{SRV}:50002")
    base = Facts(
        servers=(UDP.uri,), server_ips=(SRV,), targets=(UDP, TCP, TLS),
        reach=(ok_reach(UDP), ok_reach(TCP), ok_reach(TLS)),
        auth=AuthFacts("rest", UDP, "ok", "success", challenged=True, now=1e9),
        allocs=(a, b, alloc("tcp", f"{SRV}:50004", t=TCP), alloc("v6", "[2001:db8:10::10]:50006", family=2)),
        perms=(Perm("A", b.relayed, "other allocation", True, "success"), Perm("B", a.relayed, "other allocation", True, "success"),
               Perm("A", CLIENT, "this client", True, "success")),
        data=(Delivery("A→B", b.relayed, True, a.relayed, 1.0), Delivery("B→A", a.relayed, True, b.relayed, 1.0),
              Delivery("peer→relay", a.relayed, True, CLIENT, 1.0), Delivery("relay→peer", CLIENT, True, a.relayed, 1.0)),
    )
    return dataclasses.replace(base, **over)


def verdict(facts: Facts) -> tuple[str, int, list[str]]:
    _, findings = diagnose(facts)
    v, code = verdict_of(order(findings))
    return v, code, [f.cause for f in order(findings)]


# ---------------------------------------------------------------- the catalogue

def test_every_cause_has_a_priority_fix_and_documented_exit_code():
    assert set(PRIORITY) | {"healthy"} == set(CAUSES)
    for c in CAUSES.values():
        assert c.severity in ("pass", "fail", "warn")
        assert c.exit_code in (0, 1, 4, 5, 6, 7)
        assert c.fix or c.id == "healthy"
        assert (c.exit_code == 0) == (c.severity != "fail"), c.id


def test_docs_carry_the_catalogue_as_generated():
    from natkit.doctor.causes import markdown_table

    text = (Path(__file__).resolve().parent.parent / "docs" / "doctor.md").read_text()
    m = re.search(r"<!-- causes:begin[^>]*-->\n(.*?)<!-- causes:end -->", text, re.DOTALL)
    assert m and m.group(1) == markdown_table(), "regenerate the table in docs/doctor.md from natkit.doctor.causes.markdown_table()"
    for c in CAUSES.values():
        assert re.search(rf"`{re.escape(c.id)}`.*\| {c.exit_code} \|", text), f"{c.id} (exit {c.exit_code}) missing in docs/doctor.md"


def test_verdict_is_the_first_failing_cause_in_priority_order():
    fs = [finding("udp-blocked", ["x"]), finding("tls-cert-expiring", ["y"]), finding("external-ip-missing", ["z"])]
    assert [f.cause for f in order(fs)] == ["external-ip-missing", "udp-blocked", "tls-cert-expiring"]
    # the verdict is what to fix first; the exit code natkit's most severe (udp-blocked's 4 outranks 7)
    assert verdict_of(order(fs)) == ("external-ip-missing", EXIT_UNREACHABLE)
    assert verdict_of(order(fs[1:])) == ("external-ip-missing", EXIT_NO_CONNECTIVITY)
    assert verdict_of(order([finding("no-tcp-fallback", ["w"])])) == ("healthy", 0)


@pytest.mark.parametrize("ip, kind", [
    ("10.0.0.10", "private"), ("172.31.2.3", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"),
    ("100.64.1.1", "cgnat"), ("127.0.0.1", "loopback"), ("::1", "loopback"), ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"), ("0.0.0.0", "unspecified"), ("203.0.113.10", "public"), ("198.51.100.20", "public"),
    ("8.8.8.8", "public"), ("2001:db8::1", "public"), ("::ffff:10.0.0.1", "private"),
])
def test_address_kind(ip, kind):
    assert address_kind(ip) == kind


def test_targets_add_tcp_and_tls_fallbacks_unless_given():
    rows = targets_for(["turn:h.example:3478"])
    assert [(r[1], r[3], r[4]) for r in rows] == [("udp", 3478, True), ("tcp", 3478, False), ("tls", 5349, False)]
    rows = targets_for(["turn:h.example", "turns:h.example:443"])
    assert [(r[1], r[3], r[4]) for r in rows] == [("udp", 3478, True), ("tls", 443, True), ("tcp", 3478, False)]
    assert [r[1] for r in targets_for(["turn:h.example"], fallbacks=False)] == ["udp"]
    assert targets_for(["turn:[2001:db8::1]:3478"])[1][0] == "turn:[2001:db8::1]:3478?transport=tcp"


# ---------------------------------------------------------------- diagnosis rules

def test_healthy_facts_are_healthy():
    checks, findings = diagnose(healthy())
    assert findings == []
    assert all(c.status in ("pass", "skip") for c in checks), [c for c in checks if c.status not in ("pass", "skip")]


def test_binding_answered_allocate_not_is_a_stun_server():
    auth = AuthFacts("rest", UDP, "timeout", "allocate: no response within the 1.5s budget")
    f = healthy(auth=auth, allocs=(Alloc("A", UDP, 1, False, "no response"),),
                perms=(), data=())
    assert verdict(f)[:2] == ("not-a-turn-server", EXIT_UNREACHABLE)
    auth = AuthFacts("rest", UDP, "ok", "420 Unknown Attribute", 420, False)
    assert verdict(healthy(auth=auth, allocs=(alloc("A", None, code=420),), perms=(), data=()))[0] == "not-a-turn-server"


def test_nothing_answers():
    f = healthy(reach=(bad_reach(UDP, "timeout"), bad_reach(TCP, "timeout"), bad_reach(TLS, "timeout")), auth=None, allocs=(),
                perms=(), data=())
    assert verdict(f)[:2] == ("server-unreachable", EXIT_UNREACHABLE)


def test_nothing_listens():
    f = healthy(reach=(bad_reach(UDP, "icmp"), bad_reach(TCP, "refused"), bad_reach(TLS, "refused")), auth=None, allocs=(),
                perms=(), data=())
    assert verdict(f)[0] == "server-not-listening"


def test_udp_dropped_and_tcp_refused_is_udp_blocked_without_fallback():
    f = healthy(reach=(bad_reach(UDP, "timeout"), bad_reach(TCP, "refused"), bad_reach(TLS, "refused")), auth=None, allocs=(),
                perms=(), data=())
    assert verdict(f)[:2] == ("udp-blocked-no-fallback", EXIT_UNREACHABLE)


def test_udp_dropped_with_tcp_working_is_udp_blocked():
    f = healthy(reach=(bad_reach(UDP, "timeout"), ok_reach(TCP), bad_reach(TLS, "refused")), data=())
    v, code, _causes = verdict(f)
    assert (v, code) == ("udp-blocked", EXIT_UNREACHABLE)
    _, findings = diagnose(f)
    assert findings[0].data["fallback"] == [TCP.label]


def test_udp_icmp_with_tcp_working_is_no_udp_listener():
    f = healthy(reach=(bad_reach(UDP, "icmp"), ok_reach(TCP), bad_reach(TLS, "refused")), data=())
    assert verdict(f)[0] == "udp-not-listening"


def test_no_tcp_fallback_is_a_warning_only():
    f = healthy(reach=(ok_reach(UDP), bad_reach(TCP, "refused"), bad_reach(TLS, "refused")))
    v, code, causes = verdict(f)
    assert (v, code) == ("healthy", 0) and causes == ["no-tcp-fallback"]


@pytest.mark.parametrize("code, message, self_signed, cause", [
    (10, "certificate has expired", False, "tls-cert-expired"),
    (18, "self-signed certificate", True, "tls-cert-self-signed"),
    (20, "unable to get local issuer certificate", False, "tls-cert-untrusted"),
    (64, "IP address mismatch", False, "tls-cert-wrong-name"),
    (62, "Hostname mismatch", False, "tls-cert-wrong-name"),
])
def test_tls_verify_codes_name_the_certificate_problem(code, message, self_signed, cause):
    given = dataclasses.replace(TLS, given=True)
    cert = {"subject": "CN=x", "issuer": "CN=y", "dns_names": ["turn.other.example"], "ip_addresses": [], "not_before": "2026-01-01",
            "not_after": "2027-01-01", "days_left": 30.0, "self_signed": self_signed}
    f = healthy(tls=(TlsFacts(given, False, code, message, None, cert, SRV),))
    _, findings = diagnose(f)
    assert [x.cause for x in findings] == [cause]
    assert any(message in line for line in findings[0].evidence)
    # a derived (not given) turns: port only warns in the table
    f = healthy(tls=(TlsFacts(TLS, False, code, message, None, cert, SRV),))
    assert diagnose(f)[1] == []


def test_certificate_expiring_soon_warns():
    given = dataclasses.replace(TLS, given=True)
    cert = {"subject": "CN=x", "issuer": "CN=y", "dns_names": [], "ip_addresses": [SRV], "not_before": "2026-01-01",
            "not_after": "2027-01-01", "days_left": 3.0, "self_signed": False}
    v, _code, causes = verdict(healthy(tls=(TlsFacts(given, True, cert=cert, hostname=SRV),)))
    assert (v, causes) == ("healthy", ["tls-cert-expiring"])


def test_rest_refusal_with_far_future_accepted_is_clock_skew():
    auth = AuthFacts("rest", UDP, "refused", "401 Unauthorized (unsigned)", 401, True, 1000600, 1e6,
                     (ClockProbe(5 * 365 * 86400, True), ClockProbe(3000, False)), (172000.0, 173500.0))
    v, code, _ = verdict(healthy(auth=auth, allocs=(alloc("A", None, code=401),), perms=(), data=()))
    assert (v, code) == ("auth-clock-skew", EXIT_AUTH_REFUSED)
    _, findings = diagnose(healthy(auth=auth, allocs=(), perms=(), data=()))
    assert findings[0].data["server_ahead_s"] == [172000.0, 173500.0]
    assert any("2.0 d" in line for line in findings[0].evidence)


def test_rest_refusal_with_far_future_refused_is_wrong_secret():
    auth = AuthFacts("rest", UDP, "refused", "401 Unauthorized (unsigned)", 401, True, None, 1e6, (ClockProbe(5 * 365 * 86400, False),))
    assert verdict(healthy(auth=auth, allocs=(), perms=(), data=()))[:2] == ("auth-wrong-secret", EXIT_AUTH_REFUSED)


def test_long_term_rest_username_in_the_past_is_expired_else_ambiguous():
    now = 1_800_000_000.0
    expired = AuthFacts("long-term", UDP, "refused", "401 Unauthorized", 401, True, int(now) - 3540, now)
    v, _, _ = verdict(healthy(auth=expired, allocs=(), perms=(), data=()))
    assert v == "auth-credential-expired"
    fresh = dataclasses.replace(expired, expiry=int(now) + 600)
    _, findings = diagnose(healthy(auth=fresh, allocs=(), perms=(), data=()))
    assert findings[0].cause == "auth-refused" and "give --secret" in findings[0].evidence[-1]


def test_unsigned_allocate_success_is_an_open_relay():
    auth = AuthFacts("none", UDP, "no-auth", "Allocate without MESSAGE-INTEGRITY → success")
    assert verdict(healthy(auth=auth))[0] == "auth-not-required"


@pytest.mark.parametrize("code, cause", [(486, "quota-reached"), (508, "capacity-exhausted"), (403, "allocation-refused")])
def test_allocation_errors(code, cause):
    auth = AuthFacts("rest", UDP, "ok", f"{code} x", code, True)
    f = healthy(auth=auth, allocs=(alloc("A", None, code=code),), perms=(), data=())
    assert verdict(f)[:2] == (cause, EXIT_ALLOCATION_REFUSED)


def test_private_relayed_address_is_external_ip_missing_with_the_exact_fix():
    a, b = alloc("A", "10.0.0.10:50000"), alloc("B", "10.0.0.10:50002")
    f = healthy(allocs=(a, b), perms=(Perm("A", b.relayed, "other allocation", False, "403 Forbidden IP", 403),
                                      Perm("A", CLIENT, "this client", True, "success")),
                data=(Delivery("peer→relay", TA(SRV, 50000), True, CLIENT), Delivery("relay→peer", CLIENT, True, TA(SRV, 50000))))
    v, code, causes = verdict(f)
    assert (v, code) == ("external-ip-missing", EXIT_NO_CONNECTIVITY)
    assert "deny-list-own-relay" not in causes  # the 403 is a consequence
    f0 = order(diagnose(f)[1])[0]
    assert f0.fix == f"external-ip={SRV}/10.0.0.10"


def test_public_relayed_address_from_elsewhere_is_external_ip_wrong():
    a = alloc("A", "203.0.113.99:50000")
    f = healthy(allocs=(a, alloc("B", "203.0.113.99:50002")),
                data=(Delivery("peer→relay", TA(SRV, 50000), True, CLIENT), Delivery("relay→peer", CLIENT, True, TA(SRV, 50000))))
    v, _, _ = verdict(f)
    assert v == "external-ip-wrong"
    assert order(diagnose(f)[1])[0].fix == f"external-ip={SRV}"


def test_a_separate_public_relay_address_that_works_is_fine():
    relay = "203.0.113.20"
    a = alloc("A", f"{relay}:50000")
    f = healthy(allocs=(a, alloc("B", f"{relay}:50002")),
                data=(Delivery("relay→peer", CLIENT, True, TA(relay, 50000)),))
    assert verdict(f)[0] == "healthy"


def test_403_toward_the_own_public_relay_is_the_deny_list():
    a, b = alloc("A", f"{SRV}:50000"), alloc("B", f"{SRV}:50002")
    f = healthy(perms=(Perm("A", b.relayed, "other allocation", False, "403 Forbidden IP", 403),
                       Perm("B", a.relayed, "other allocation", False, "403 Forbidden IP", 403)), data=())
    assert verdict(f)[:2] == ("deny-list-own-relay", EXIT_NO_CONNECTIVITY)


def test_inbound_to_relay_port_lost_is_relay_ports_blocked():
    a = alloc("A", f"{SRV}:50000")
    f = healthy(data=(Delivery("A→B", TA(SRV, 50002), True, a.relayed), Delivery("B→A", a.relayed, True),
                      Delivery("peer→relay", a.relayed, False), Delivery("relay→peer", CLIENT, True, a.relayed)))
    v, code, _ = verdict(f)
    assert (v, code) == ("relay-ports-blocked", EXIT_NO_CONNECTIVITY)
    assert "stateful firewall" in order(diagnose(f)[1])[0].evidence[-1]


def test_pair_fails_while_outside_works_is_no_hairpin():
    a = alloc("A", f"{SRV}:50000")
    f = healthy(data=(Delivery("A→B", TA(SRV, 50002), False), Delivery("B→A", a.relayed, False),
                      Delivery("peer→relay", a.relayed, True, CLIENT), Delivery("relay→peer", CLIENT, True, a.relayed)))
    v, _, _ = verdict(f)
    assert v == "data-not-relayed"
    assert "hairpin" in order(diagnose(f)[1])[0].evidence[-1]


def test_ipv6_peer_on_ipv4_relay_is_family_mismatch():
    peer = TA("2001:db8:1::66", 9)
    f = healthy(peers=(peer,), wanted_ipv6=True,
                allocs=(alloc("A", f"{SRV}:50000"), alloc("B", f"{SRV}:50002"),
                        alloc("v6", None, family=2, code=440, response="440 Address Family not Supported")),
                perms=healthy().perms + (Perm("A", peer, "--peer", False, "443 Peer Address Family Mismatch", 443),))
    v, code, _ = verdict(f)
    assert (v, code) == ("family-mismatch", EXIT_ALLOCATION_REFUSED)
    ev = order(diagnose(f)[1])[0].evidence
    assert any("443" in e for e in ev) and any("440" in e for e in ev)


def test_no_ipv6_relay_without_ipv6_wanted_is_not_a_fault():
    f = healthy(allocs=(alloc("A", f"{SRV}:50000"), alloc("B", f"{SRV}:50002"),
                        alloc("v6", None, family=2, code=440, response="440 Address Family not Supported")))
    assert verdict(f)[0] == "healthy"


def test_ipv6_request_answered_with_ipv4_relay_warns():
    f = healthy(allocs=(alloc("A", f"{SRV}:50000"), alloc("B", f"{SRV}:50002"), alloc("v6", f"{SRV}:50010", family=2)))
    assert verdict(f) == ("healthy", 0, ["ipv6-relay-advertised-ipv4"])


@pytest.mark.parametrize("answers, confirmed, relayed, broken", [
    (("signed success",), True, True, False),
    (("unsigned success",) * 3, False, True, True),
    (("signed success",), True, False, True),
    (("no answer",) * 3, False, False, True),
])
def test_channelbind_post_mortem(answers, confirmed, relayed, broken):
    ch = ChannelFacts(True, True, answers, confirmed, relayed, ("post-mortem lines",), "sign ChannelBind answers")
    v, code, _ = verdict(healthy(channel=ch))
    assert (v == "channel-bind-broken") == broken
    if broken:
        assert code == EXIT_NO_CONNECTIVITY and order(diagnose(healthy(channel=ch))[1])[0].fix == "sign ChannelBind answers"
    # the post-mortem's own allocations not relaying says nothing about channels
    assert verdict(healthy(channel=ChannelFacts(True, False, answers, confirmed, relayed, (), "")))[0] == "healthy"


def test_peer_in_the_deny_list():
    peer = TA("198.51.100.77", 9)
    f = healthy(peers=(peer,), perms=healthy().perms + (Perm("A", peer, "--peer", False, "403 Forbidden IP", 403),))
    v, _, _ = verdict(f)
    assert v == "peer-denied"
    assert order(diagnose(f)[1])[0].fix == "allowed-peer-ip=198.51.100.77"


# ---------------------------------------------------------------- the report and the command line

def test_report_json_round_trip_has_no_secret():
    import asyncio

    from natkit.doctor import doctor_async
    from natkit.model import to_jsonable

    secret = "s3cr3t-never-printed"
    # nothing listens on this loopback port: a real run, every step reported
    report = asyncio.run(doctor_async(["turn:127.0.0.1:9"], secret=secret, timeout=0.3, data_timeout=0.1))
    doc = json.loads(json.dumps(to_jsonable(report)))
    assert doc["schema"] == "natkit.doctor/1"
    assert doc["verdict"] == "server-not-listening" and doc["exit_code"] == EXIT_UNREACHABLE
    assert doc["credential"] == "rest"
    assert secret not in json.dumps(doc)
    from natkit.errors import exit_code_for

    assert exit_code_for(report.failures) == report.exit_code and report.failures[0].step == "server-not-listening"


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    e = dict(os.environ, NATKIT_QUIET="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "natkit.cli.app", "doctor", *args], capture_output=True, text=True, timeout=60, env=e,
                          check=False)


@pytest.mark.parametrize("args, needle", [
    (["stun:127.0.0.1"], "STUN URI"),
    (["turn:127.0.0.1", "--peer", "not-an-ip"], "--peer"),
    (["turn:127.0.0.1", "--user", "u"], "--password"),
    (["turn:127.0.0.1", "--ca", "/nonexistent/ca.pem"], "--ca"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle):
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(lines) <= 2, lines


def test_loopback_port_without_server_exits_4_and_names_it():
    r = _cli("turn:127.0.0.1:9", "--timeout", "0.3", "--data-timeout", "0.1", env={"NATKIT_TURN_SECRET": "x"})
    assert r.returncode == EXIT_UNREACHABLE
    assert "server-not-listening" in r.stdout and "verdict" in r.stdout


# ---------------------------------------------------------------- the fault lab's pure parts

def test_fault_plan_puts_the_public_address_on_the_nat_box_only():
    from natkit.lab import faults as F

    plan = F.fault_plan("t1", F.FAULTS["healthy"])
    assert F.PUBLIC_IP in plan.node("cloudnat").ips and F.PUBLIC_IP not in plan.node("server").ips
    nft = plan.node("cloudnat").nft
    assert f"ip daddr {F.PUBLIC_IP} dnat to {F.SERVER_IP}" in nft and f"ip saddr {F.SERVER_IP} snat to {F.PUBLIC_IP}" in nft
    assert "natkit_fault" not in nft
    assert all(not r.startswith("default") for n in plan.nodes for r in n.routes)  # nothing leaves the lab
    assert all(ns.startswith("natkit-t1-") for ns in plan.namespaces)
    blocked = F.fault_plan("t1", F.FAULTS["relay-ports-blocked"]).node("cloudnat").nft
    assert f"udp dport != {F.PORT} ct state new counter drop" in blocked
    assert 'iifname "lan" meta l4proto udp counter drop' in F.fault_plan("t1", F.FAULTS["udp-blocked"]).node("clientfw").nft


def test_neighbour_commands_cover_every_ipv6_segment_both_ways():
    from natkit.lab import faults as F

    plan = F.fault_plan("t1", F.FAULTS["healthy"])
    macs = {(n, d): f"02:00:00:00:00:{i:02x}" for i, (n, d) in enumerate(x for seg in F.V6_SEGMENTS for x in seg)}
    cmds = F.neighbour_commands(plan, macs)
    assert any(f"neigh replace {F.SERVER_IP6} lladdr" in c and "dev lan" in c for c in cmds[plan.node("cloudnat").ns])
    assert any("neigh replace 2001:db8:10::1 lladdr" in c and "dev eth0" in c for c in cmds[plan.node("server").ns])
    assert any(f"neigh replace {F.PEER6_IP} " in c for c in cmds[plan.node("clientfw").ns])
    assert all("nud permanent" in c for lines in cmds.values() for c in lines)


@pytest.mark.parametrize("fault_id", ["healthy", "deny-own-relay", "external-ip-missing", "external-ip-wrong", "ports-exhausted",
                                      "quota-reached", "udp-blocked-no-fallback", "ipv6-peer-ipv4-relay"])
def test_coturn_config_of_each_fault(fault_id):
    from natkit.lab import faults as F

    fault = F.FAULTS[fault_id]
    text = F.coturn_config(fault, "s3cr3t", state_dir="/tmp/x").render()
    ext = {"correct": f"external-ip={F.PUBLIC_IP}/{F.SERVER_IP}\n", "public-only": f"external-ip={F.PUBLIC_IP}\n",
           "wrong": f"external-ip={F.WRONG_PUBLIC_IP}/{F.SERVER_IP}\n", "missing": None}[fault.external_ip]
    assert (ext in text) if ext else ("external-ip" not in text)
    assert ("no-tcp" in text.splitlines()) == (not fault.tcp)
    assert ("relay-ip=2001:db8:10::10" in text) == fault.ipv6_relay
    if fault.exhausted:
        assert "min-port=49152\nmax-port=49155" in text
    if fault.user_quota:
        assert f"user-quota={fault.user_quota}" in text
    assert "denied-peer-ip=10.0.0.0-10.255.255.255" in text  # the IANA list stays
    assert F.pion_args(fault) if "pion" in fault.servers else True
