"""natkit turn audit: unit tests of the pure parts, and real TURN servers in a
network namespace that has no route out (SAFETY: the audit asks servers to
relay toward loopback, private ranges and 169.254.169.254; inside this
namespace those go nowhere).

One module-scoped namespace holds three coturn servers on documentation
addresses bound to the namespace's loopback device:

* 203.0.113.10: natkit's ``recommended`` profile (TLS with a self-signed pair)
* 203.0.113.30: natkit's ``strict`` profile
* 203.0.113.20: :func:`open_relay_for_testing` (no auth, no deny list, TCP
  relay, TLS 1.0, CLI on its address, SOFTWARE, no quota)

and, per test, a second, independent implementation on 203.0.113.40-49:
``pionturn`` (tests/servers/pionturn/main.go over Debian's pion/turn v2.1.0).
What pion/turn does differently from coturn, observed here and asserted
below:

* REQUESTED-ADDRESS-FAMILY is ignored: an Allocate asking for IPv6 gets an
  IPv4 relayed address (pion always allocates ``udp4``), and XOR-PEER-ADDRESS
  of the other family is accepted without 443 Peer Address Family Mismatch.
* A wrong password (or an expired/forged REST credential) is answered with an
  *unsigned* 400 Bad Request, not 401: RFC 8489 §9.2.5 lets a client discard
  it (aioice does), so a client that drops it just sees silence.
* No peer ACL unless the embedding program installs a PermissionHandler
  (pionturn's ``-deny``/``-allow``); a refused CreatePermission is an error
  response with *no* ERROR-CODE, a refused ChannelBind an unsigned 401
  without REALM/NONCE: never 403.
* ChannelBind answers are signed and ChannelData is relayed once a channel
  is bound (like coturn: the positive control passes).
* No quota (the flood is never stopped with 486), no SOFTWARE, no TCP
  allocations (442), no admin ports; Binding answers carry
  XOR-MAPPED-ADDRESS and FINGERPRINT only; the REST handler pion ships takes
  a bare ``<expiry>`` username (pionturn's default handler takes coturn's
  ``<expiry>[:<user>]``; ``-pion-rest`` switches to pion's own).

Behaviours of other servers that pion does not have are produced by
pionturn's knobs (a wrapper around its UDP socket, see main.go): never
answering an IPv6 Allocate, unsigned ChannelBind answers, ignored ChannelData,
a 65,000-digit SOFTWARE, an Allocate success without XOR-RELAYED-ADDRESS,
attributes cut shorter than their type needs. No scripted responder is
needed: every server here is a real TURN implementation.

The audit client runs inside the same namespace through the real CLI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets as pysecrets
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest
from servers import PionTurn, pion_binary

from natkit.audit import (
    CHECKS,
    FORBIDDEN_PEERS,
    AuditReport,
    Finding,
    ServerAudit,
    coturn_cves,
    junit_xml,
    severity_at_least,
)
from natkit.coturn.server import CoturnServer

# ---------------------------------------------------------------------------
# pure parts


def _f(id, status, severity="info"):
    return Finding(id, id, status, severity, ("evidence line",), "fix it" if status == "fail" else None, {}, 1.0)


def test_junit_xml_counts_failures_and_skips():
    s1 = ServerAudit("a", ("turn:a:3478",), True, (_f("open-relay", "pass"), _f("quota", "fail", "medium"), _f("tls", "not_checked")), None, 5.0)
    s2 = ServerAudit("b", ("turn:b:3478",), False, (), "no answer", 3.0)
    report = AuditReport("natkit.audit/1", "high", False, (s1, s2), {"info": 0, "low": 0, "medium": 1, "high": 0, "critical": 0}, 9.0)
    root = ET.fromstring(junit_xml(report).split("\n", 1)[1])
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["a", "b"]
    assert suites[0].get("failures") == "1" and suites[0].get("skipped") == "1"
    failure = suites[0].find("testcase[@name='quota']/failure")
    assert failure.get("type") == "medium" and "fix it" in failure.text
    assert suites[1].find("testcase/error").get("message") == "no answer"
    assert report.failures("medium") == [("a", s1.findings[1])]
    assert report.failures("high") == []


def test_severity_order():
    assert severity_at_least("critical", "high") and severity_at_least("high", "high")
    assert not severity_at_least("low", "medium")


def test_coturn_cve_hints():
    assert any("CVE-2020-26262" in c for c in coturn_cves("Coturn-4.5.1.1 'dan Eider'"))
    assert coturn_cves("Coturn-4.6.1 'Gorst'") == []
    assert coturn_cves("something else") == []


def test_parse_unknown_method_connect_error():
    import struct

    from natkit.stun.codec import decode as _parse

    # a CONNECT (0x000a) error response: aioice has no name for the method (natkit's codec has)
    reason = b"Forbidden IP"
    attr = struct.pack("!HBB", 0, 4, 3) + reason
    body = struct.pack("!HH", 0x0009, len(attr)) + attr + bytes(-len(attr) % 4)
    data = struct.pack("!HHI12s", 0x0110 | 0x000A, len(body), 0x2112A442, b"x" * 12) + body
    msg = _parse(data)
    assert msg.method == 0x000A and not msg.is_success and msg.error_code == 403 and msg.describe() == "403 Forbidden IP"


def test_coturn_cve_hints_are_linear_on_hostile_software():
    started = time.monotonic()
    assert coturn_cves("Coturn-4." + "9" * 65000) == []  # no int-conversion error on 65,000 digits
    assert coturn_cves("9" * 65000) == []
    assert any("CVE-2020-26262" in c for c in coturn_cves("Coturn-4.5.1.1" + "9" * 10))  # 4.5.1.19999999999 is still < 4.5.2
    assert time.monotonic() - started < 0.5


def test_parse_raises_value_error_never_struct_error():
    """What the audit reads goes through natkit's codec: short attributes are a precise ValueError."""
    import struct

    from natkit.errors import MalformedMessage
    from natkit.stun.codec import decode as _parse

    def msg(mtype: int, attrs: bytes) -> bytes:
        return struct.pack("!HHI12s", mtype, len(attrs), 0x2112A442, b"t" * 12) + attrs

    short_lifetime = struct.pack("!HH", 0x000D, 2) + b"\x00\x3c\x00\x00"
    short_error = struct.pack("!HH", 0x0009, 2) + b"\x00\x04\x00\x00"
    short_xor = struct.pack("!HH", 0x0020, 2) + b"\x00\x01\x00\x00"
    for data in (msg(0x0103, short_lifetime), msg(0x0113, short_error), msg(0x0101, short_xor), msg(0x011A, short_error),
                 msg(0x0101, b"")[:19], msg(0x0101, short_xor)[:-1]):
        with pytest.raises(MalformedMessage):
            _parse(data)


def test_exit_code_policy_not_checked_never_passes():
    def nc(id, reason):
        return Finding(id, id, "not_checked", "info", ("why",), None, {}, 1.0, reason)

    def code(*servers, fail_on="high"):
        return AuditReport("natkit.audit/1", fail_on, False, tuple(servers), {}, 1.0).exit_code

    def server(*findings, error=None):
        return ServerAudit("s", ("turn:s",), error is None, tuple(findings), error, 1.0)

    assert code(server(_f("open-relay", "pass"), nc("tls", "not-applicable"))) == 0
    assert code(server(_f("quota", "fail", "medium"))) == 0
    assert code(server(_f("quota", "fail", "medium")), fail_on="medium") == 1
    assert code(server(nc("peer-acl", "malformed"))) == 1
    assert code(server(nc("peer-acl", "budget"))) == 1
    assert code(server(nc("peer-acl", "timeout"))) == 4
    assert code(server(nc("peer-acl", "refused"))) == 6
    assert code(server(nc("peer-acl", "credentials-refused"), nc("quota", "timeout"))) == 4
    assert code(server(nc("peer-acl", "credentials-refused"), _f("open-relay", "fail", "critical"))) == 5
    assert code(server(error="no answer")) == 4
    # natkit's order: what stopped a check outranks what the other checks found
    assert code(server(_f("peer-acl", "fail", "critical")), server(error="x")) == 4
    report = AuditReport("natkit.audit/1", "high", False, (server(nc("quota", "timeout"), nc("tls", "not-applicable")),), {}, 1.0)
    assert report.incomplete == (("s", "quota", "timeout"),)
    assert nc("tls", "not-applicable").incomplete is False and nc("quota", "timeout").incomplete is True


def test_forbidden_peers_are_all_in_the_hardened_deny_list():
    import ipaddress

    from natkit.coturn.profiles import DENIED_PEER_RANGES

    nets = [ipaddress.ip_network(r) for r in DENIED_PEER_RANGES]
    for ip, _ in FORBIDDEN_PEERS:
        addr = ipaddress.ip_address(ip)
        assert any(addr in n for n in nets if n.version == addr.version), ip


def test_usage_errors():
    from natkit.audit import audit
    from natkit.errors import UsageError

    with pytest.raises(UsageError):
        audit([])
    with pytest.raises(UsageError):
        audit(["turn:127.0.0.1:1"], fail_on="extreme")
    with pytest.raises(UsageError):
        audit(["turn:127.0.0.1:1"], checks=["nope"])
    with pytest.raises(UsageError):
        audit(["turn:127.0.0.1:1"], username="u")


# ---------------------------------------------------------------------------
# real coturn in a namespace with no route out

HARDENED, OPEN, STRICT = "203.0.113.10", "203.0.113.20", "203.0.113.30"
PION_ADDRS = tuple(f"203.0.113.{n}" for n in range(40, 50))
SECRET = pysecrets.token_urlsafe(24)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _natkit_in(ns: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    code = "import sys; from natkit.cli.app import main; sys.argv = ['natkit'] + sys.argv[1:]; main()"
    env = dict(os.environ, NATKIT_QUIET="1")
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from natkit.pytest_plugin import require_coturn, require_root_netns

    require_root_netns()
    require_coturn()
    from natkit.coturn.profiles import build, open_relay_for_testing
    from natkit.tls import self_signed, write_pair

    d = tmp_path_factory.mktemp("audit-lab")
    ns = f"natkit-audit-{os.getpid()}-{pysecrets.token_hex(3)}"
    procs: list[CoturnServer] = []
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        for addr in (HARDENED, OPEN, STRICT, *PION_ADDRS):
            _ip("-n", ns, "addr", "add", f"{addr}/32", "dev", "lo")
        for addr6 in ("2001:db8::10", "2001:db8::20"):
            _ip("-n", ns, "addr", "add", f"{addr6}/128", "dev", "lo")
        # the safety precondition: nothing but local routes
        routes = _ip("-n", ns, "route", "show").stdout + _ip("-n", ns, "-6", "route", "show").stdout
        assert "default" not in routes and "via" not in routes, routes

        servers: dict[str, dict] = {}
        # natkit's recommended profile, TLS with the generated self-signed pair
        prof = build("recommended", secrets=(SECRET, "previous-" + SECRET), listening_ips=(HARDENED, "2001:db8::10"), tls_port=5349,
                     external_ip=HARDENED, min_port=50000, max_port=50999)
        cert, key = write_pair(d / "hardened", prof.files["turn_server_cert.pem"], prof.files["turn_server_pkey.pem"])
        servers["hardened"] = {"host": HARDENED, "config": dataclasses.replace(prof.config, cert=str(cert), pkey=str(key)), "ca": str(cert),
                                   "warnings": prof.warnings}
        strict = build("strict", secrets=(SECRET,), listening_ips=(STRICT,), external_ip=STRICT, min_port=52000, max_port=52999)
        servers["strict"] = {"host": STRICT, "config": strict.config}
        # the open relay, with a certificate that names another host
        wrong_cert, wrong_key = write_pair(d / "open", *self_signed(["wrong.example"]))
        servers["open"] = {"host": OPEN, "config": open_relay_for_testing(listening_ips=(OPEN, "2001:db8::20"), port=3478, tls_port=5349, cert=str(wrong_cert),
                                                                        pkey=str(wrong_key), min_port=51000, max_port=51999, cli_ip=OPEN)}
        for name, s in servers.items():
            # natkit's own launcher: the native backend behind `ip netns exec`, ready once its listeners are open
            server = CoturnServer(s["config"], backend="native", name=name, state_dir=d / "state", ephemeral=True,
                                  argv_prefix=("ip", "netns", "exec", ns))
            procs.append(server)
            server.start()
        yield ns, servers, d
    finally:
        for server in procs:
            server.stop()
        _ip("netns", "del", ns, check=False)


def _audit(ns: str, d, *args: str, junit: str | None = None) -> tuple[int, dict]:
    extra = ["--junit", junit] if junit else []
    r = _natkit_in(ns, "turn", "audit", *args, "--json", *extra)
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        raise AssertionError(f"no JSON (exit {r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}") from None
    # every answer, however malformed, is a finding: never a traceback from the event loop
    assert "Traceback" not in r.stderr and "Exception in callback" not in r.stderr, r.stderr[-3000:]
    return r.returncode, doc


def _by_id(server_doc: dict) -> dict:
    return {f["id"]: f for f in server_doc["findings"]}


@pytest.mark.integration
def test_hardened_profile_passes_its_own_audit(lab, tmp_path):
    ns, servers, d = lab
    junit = str(tmp_path / "audit.xml")
    code, doc = _audit(ns, d, f"turn:{HARDENED}:3478", f"turns:{HARDENED}:5349", "--secret", SECRET, "--ca", servers["hardened"]["ca"],
                       "--fail-on", "low", junit=junit)
    assert code == 0, json.dumps(doc, indent=1)[:4000]
    (server,) = doc["servers"]
    above_info = [f for f in server["findings"] if f["status"] == "fail"]
    assert above_info == [], above_info
    f = _by_id(server)
    assert set(f) == set(CHECKS)
    assert all(x["status"] == "pass" for x in f.values()), {k: v["status"] for k, v in f.items()}
    acl = f["peer-acl"]["data"]
    assert acl["refused_403"] == len(FORBIDDEN_PEERS) and acl["accepted"] == [] and acl["positive_control"] is True
    assert f["quota"]["data"]["stopped_by"] == 486 and f["quota"]["data"]["granted"] == 12
    assert f["tcp-relay"]["data"]["allocate"] == 442
    assert f["tls"]["data"]["versions"] == {"TLSv1": False, "TLSv1.1": False, "TLSv1.2": True, "TLSv1.3": False} or \
        f["tls"]["data"]["versions"]["TLSv1.2"] and not f["tls"]["data"]["versions"]["TLSv1"]
    assert f["tls"]["data"]["chain_verified"] is True and f["tls"]["data"]["name_matches"] is True
    assert f["credentials"]["data"] == {"expired": 401, "wrong secret": 401}
    assert f["software"]["data"]["software"] is None
    assert f["amplification"]["data"]["worst"] <= 3.0
    root = ET.parse(junit).getroot()
    assert root.find("testsuite").get("failures") == "0"


@pytest.mark.integration
def test_strict_profile_passes_its_own_audit(lab):
    ns, _, d = lab
    code, doc = _audit(ns, d, f"turn:{STRICT}:3478", "--secret", SECRET, "--fail-on", "low")
    assert code == 0, json.dumps(doc, indent=1)[:4000]
    f = _by_id(doc["servers"][0])
    assert [k for k, v in f.items() if v["status"] == "fail"] == []
    assert f["quota"]["data"]["granted"] == 4, f["quota"]
    # no MAPPED-ADDRESS, no RESPONSE-ORIGIN: the smallest Binding response
    assert f["amplification"]["data"]["binding"]["response"] <= 40
    assert f["tls"]["status"] == "not_checked"  # no turns: URI given


@pytest.mark.integration
def test_open_configuration_is_caught_on_every_check(lab, tmp_path):
    ns, _, d = lab
    code, doc = _audit(ns, d, f"turn:{OPEN}:3478", f"turns:{OPEN}:5349", "--flood-max", "40")
    assert code == 1
    f = _by_id(doc["servers"][0])
    not_caught = {k: v["status"] for k, v in f.items() if v["status"] != "fail"}
    assert not_caught == {}, not_caught
    assert f["open-relay"]["severity"] == "critical"
    accepted = set(f["peer-acl"]["data"]["accepted"])
    for must in ("169.254.169.254", "10.0.0.1", "192.168.0.1", "100.64.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "fc00::1"):
        assert must in accepted
    assert f["peer-acl"]["severity"] == "critical"
    assert f["tcp-relay"]["severity"] == "critical"  # CONNECT toward forbidden peers attempted
    assert f["tls"]["data"]["versions"]["TLSv1"] is True and f["tls"]["data"]["name_matches"] is False
    assert f["credentials"]["severity"] == "critical"
    assert f["quota"]["data"]["granted"] == 40 and f["quota"]["data"]["stopped_by"] is None
    assert "Coturn" in f["software"]["data"]["software"]
    assert f["amplification"]["data"]["worst"] > 3.0
    assert f["admin-ports"]["data"]["5766"] is True


@pytest.mark.integration
def test_fleet_is_audited_concurrently_with_one_summary(lab, tmp_path):
    ns, _servers, d = lab
    junit = str(tmp_path / "fleet.xml")
    started = time.monotonic()
    code, doc = _audit(ns, d, f"turn:{HARDENED}:3478", f"turn:{STRICT}:3478", f"turn:{OPEN}:3478", "--secret", SECRET,
                       "--check", "open-relay", "--check", "peer-acl", "--check", "quota", "--flood-max", "20", junit=junit)
    elapsed = time.monotonic() - started
    assert code == 1
    by_host = {s["server"]: s for s in doc["servers"]}
    assert set(by_host) == {HARDENED, STRICT, OPEN}
    assert all(x["status"] == "pass" for x in by_host[HARDENED]["findings"])
    assert all(x["status"] == "pass" for x in by_host[STRICT]["findings"])
    assert all(x["status"] == "fail" for x in by_host[OPEN]["findings"]), by_host[OPEN]["findings"]
    assert doc["counts"]["critical"] == 2 and doc["counts"]["medium"] == 1 and doc["ok"] is False
    assert len(ET.parse(junit).getroot().findall("testsuite")) == 3
    assert elapsed < 60


@pytest.mark.integration
def test_unreachable_server_is_reported_not_crashed(lab):
    ns, _, d = lab
    code, doc = _audit(ns, d, "turn:203.0.113.99:3478", "--timeout", "0.5")
    assert code == 4
    assert doc["servers"][0]["error"]


# ---------------------------------------------------------------------------
# pion/turn: a TURN server that is not coturn (same sealed namespace)

PION_SECRET = pysecrets.token_urlsafe(24)


@pytest.fixture
def pion(lab, request, tmp_path):
    """``pion(*flags, users=..., secret=...)`` starts a pionturn in the lab namespace for this test."""
    import contextlib

    binary = pion_binary(request.config)
    ns = lab[0]
    stack = contextlib.ExitStack()
    free = list(PION_ADDRS)

    def start(*flags: str, secret: str | None = PION_SECRET, users: dict | None = None, tls: tuple[str, str] | None = None) -> PionTurn:
        srv = PionTurn(binary, free.pop(0), ns=ns, secret=secret, users=users, args=flags, tcp=True, tls=tls, workdir=tmp_path)
        return stack.enter_context(srv)

    with stack:
        yield start


def _acl_deny() -> str:
    from natkit.coturn.profiles import DENIED_PEER_RANGES

    return ",".join(DENIED_PEER_RANGES)


@pytest.mark.integration
def test_pion_without_peer_acl_fails_on_what_it_really_lacks(lab, pion):
    ns, _, d = lab
    srv = pion()
    code, doc = _audit(ns, d, srv.uri, "--secret", PION_SECRET, "--flood-max", "16")
    assert code == 1, json.dumps(doc, indent=1)[:3000]
    f = _by_id(doc["servers"][0])
    assert {k: v["status"] for k, v in f.items()} == {
        "open-relay": "pass", "peer-acl": "fail", "tcp-relay": "pass", "tls": "not_checked", "credentials": "pass",
        "quota": "fail", "software": "pass", "amplification": "pass", "admin-ports": "pass"}
    acl = f["peer-acl"]
    assert acl["severity"] == "critical"
    accepted = set(acl["data"]["accepted"])
    assert {"127.0.0.1", "169.254.169.254", "10.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254"} <= accepted
    # IPv6 was requested, pion handed out an IPv4 relay: the report says so, peer by peer
    fams = acl["data"]["families"]
    assert fams["IPv6"]["state"] == "checked" and fams["IPv6"]["relay_family"] == 4 and fams["IPv4"]["relay_family"] == 4
    assert "although IPv6 was requested" in fams["IPv6"]["note"]
    assert set(acl["data"]["family_mismatch"]) == {"::1", "::", "fc00::1", "fe80::1", "64:ff9b::a9fe:a9fe", "ff02::1"}
    line = next(e for e in acl["evidence"] if e.startswith("ACCEPTED ::1 "))
    assert "on an IPv4 relay" in line and "family differs" in line
    assert acl["data"]["positive_control"] is True  # ChannelBind signed, ChannelData relayed
    assert f["quota"]["data"] == {"granted": 16, "stopped_by": None, "max": 16} and f["quota"]["severity"] == "medium"
    assert f["tcp-relay"]["data"]["allocate"] == 442
    assert f["credentials"]["data"] == {"expired": 400, "wrong secret": 400}  # refused, with pion's unsigned 400
    assert f["software"]["data"]["software"] is None
    assert f["amplification"]["data"]["binding"]["response"] == 40  # XOR-MAPPED-ADDRESS + FINGERPRINT
    assert f["tls"]["reason"] == "not-applicable"


@pytest.mark.integration
def test_pion_with_a_peer_acl_passes_the_acl(lab, pion):
    ns, _, d = lab
    srv = pion("-deny", _acl_deny(), "-allow", f"{PION_ADDRS[0]}/32")  # own relay address allowed, like coturn's allowed-peer-ip
    code, doc = _audit(ns, d, srv.uri, "--secret", PION_SECRET, "--flood-max", "8")
    f = _by_id(doc["servers"][0])
    acl = f["peer-acl"]
    assert acl["status"] == "pass", acl["evidence"]
    assert acl["data"]["accepted"] == [] and acl["data"]["refused_403"] == 0 and acl["data"]["positive_control"] is True
    assert acl["evidence"][0].startswith(f"{len(FORBIDDEN_PEERS)}/{len(FORBIDDEN_PEERS)} forbidden peers refused (0 with 403)")
    assert acl["data"]["peers"]["169.254.169.254"]["create_permission"] is None  # an error without ERROR-CODE
    assert acl["data"]["peers"]["169.254.169.254"]["channel_bind"] == 401
    # what pion really lacks still fails: no quota (medium, below the default --fail-on high)
    assert f["quota"]["status"] == "fail" and f["quota"]["severity"] == "medium"
    assert code == 0 and doc["ok"] is True and doc["incomplete"] == []


@pytest.mark.integration
def test_unanswered_ipv6_allocate_keeps_ipv4_failures(lab, pion):
    """Before: the 2 s per-request timeout was caught as the 30 s check budget, peer-acl became
    "not checked" and the audit said OK (exit 0) for a server with no ACL at all."""
    ns, _, d = lab
    srv = pion("-drop-family-allocate")
    code, doc = _audit(ns, d, srv.uri, "--secret", PION_SECRET, "--check", "peer-acl", "--timeout", "1")
    acl = _by_id(doc["servers"][0])["peer-acl"]
    assert code == 1 and doc["ok"] is False
    assert acl["status"] == "fail" and acl["severity"] == "critical"
    assert {"127.0.0.1", "169.254.169.254", "10.0.0.1"} <= set(acl["data"]["accepted"])
    v6 = acl["data"]["families"]["IPv6"]
    assert v6["state"] == "not-checked" and v6["reason"] == "timeout"
    assert "IPv6 not checked: no answer to IPv6 Allocate within 1 s (the per-request timeout, --timeout)" in acl["evidence"]
    assert set(acl["data"]["unchecked"]) == {ip for ip, _ in FORBIDDEN_PEERS if ":" in ip}


@pytest.mark.integration
def test_unanswered_ipv6_allocate_is_not_a_pass(lab, pion):
    ns, _, d = lab
    srv = pion("-drop-family-allocate", "-deny", _acl_deny(), "-allow", f"{PION_ADDRS[0]}/32")
    code, doc = _audit(ns, d, srv.uri, "--secret", PION_SECRET, "--check", "peer-acl", "--timeout", "1")
    acl = _by_id(doc["servers"][0])["peer-acl"]
    assert acl["status"] == "not_checked" and acl["reason"] == "timeout"
    assert acl["data"]["families"]["IPv4"]["state"] == "checked" and acl["data"]["accepted"] == []
    assert doc["ok"] is False and doc["incomplete"] == [[srv.host, "peer-acl", "timeout"]]
    assert code == 4  # requests went unanswered


@pytest.mark.integration
def test_check_budget_is_named_and_keeps_what_was_seen(lab, pion):
    ns, _, d = lab
    srv = pion("-drop-family-allocate")
    code, doc = _audit(ns, d, srv.uri, "--secret", PION_SECRET, "--check", "peer-acl", "--timeout", "3", "--check-timeout", "1")
    acl = _by_id(doc["servers"][0])["peer-acl"]
    assert code == 1 and acl["status"] == "fail" and acl["severity"] == "critical"
    v6 = acl["data"]["families"]["IPv6"]
    assert v6["reason"] == "budget"
    assert "the check's time budget (1 s, --check-timeout) ran out during the IPv6 Allocate" in v6["note"]


@pytest.mark.integration
def test_wrong_password_answered_with_unsigned_400_is_credentials_refused(lab, pion):
    ns, _, d = lab
    srv = pion(users={"alice": "wonderland"}, secret=None)
    code, doc = _audit(ns, d, srv.uri, "--user", "alice", "--password", "not-the-password")
    f = _by_id(doc["servers"][0])
    assert code == 5, json.dumps(doc, indent=1)[:3000]
    for check in ("peer-acl", "quota", "tcp-relay"):
        assert f[check]["status"] == "not_checked" and f[check]["reason"] == "credentials-refused", f[check]
    assert "credentials probably refused" in " ".join(f["peer-acl"]["evidence"])
    assert "unsigned 400" in " ".join(f["peer-acl"]["evidence"])
    # the right password works: the same checks run
    code, doc = _audit(ns, d, srv.uri, "--user", "alice", "--password", "wonderland", "--check", "peer-acl")
    assert code == 1 and _by_id(doc["servers"][0])["peer-acl"]["status"] == "fail"


@pytest.mark.integration
def test_rest_user_part_empty_gives_the_bare_expiry_pion_expects(lab, pion):
    """--secret S --user '' mints a bare "<expiry>" username, as natkit creds does; pion's own
    REST handler accepts nothing else."""
    ns, _, d = lab
    srv = pion("-pion-rest")
    code, doc = _audit(ns, d, srv.uri, "--secret", PION_SECRET, "--user", "", "--check", "peer-acl")
    acl = _by_id(doc["servers"][0])["peer-acl"]
    assert acl["status"] == "fail" and acl["data"]["families"]["IPv4"]["state"] == "checked", acl["evidence"]
    code, doc = _audit(ns, d, srv.uri, "--secret", PION_SECRET, "--check", "peer-acl")  # <expiry>:natkit-audit
    assert code == 5 and _by_id(doc["servers"][0])["peer-acl"]["reason"] == "credentials-refused"


@pytest.mark.integration
def test_huge_software_is_bounded_and_reported(lab, pion):
    """Before: 65,000 digits of SOFTWARE cost 20 s of CPU in a quadratic regex, then an
    int-conversion "internal error". Now natkit's codec refuses a SOFTWARE beyond RFC 8489's
    763 bytes (a malformed answer, named), and the audit still says what it shows."""
    ns, _, d = lab
    for prefix in ("Coturn-4.", "pion "):
        srv = pion("-software", prefix, "-software-digits", "65000")
        started = time.monotonic()
        code, doc = _audit(ns, d, srv.uri, "--secret", PION_SECRET, "--check", "open-relay", "--check", "software", "--check", "amplification")
        assert time.monotonic() - started < 10
        f = _by_id(doc["servers"][0])
        sw = f["software"]
        assert sw["status"] == "fail" and sw["severity"] == "low", sw
        assert "SOFTWARE at byte " in sw["evidence"][0] and "longer than the 763 bytes RFC 8489 allows" in sw["evidence"][0]
        assert all(len(e) < 400 for e in sw["evidence"])
        assert f["amplification"]["severity"] == "high" and f["amplification"]["data"]["worst"] > 1000
        # the 401 carries the same SOFTWARE: open-relay cannot read it, and says so instead of passing
        assert f["open-relay"]["status"] == "not_checked" and f["open-relay"]["reason"] == "malformed"
        assert code == 1 and doc["ok"] is False


@pytest.mark.integration
def test_allocate_without_relayed_address_is_malformed_not_a_crash(lab, pion):
    """Before: the positive control crashed ('NoneType' object is not subscriptable)."""
    ns, _, d = lab
    srv = pion("-strip-relayed")
    code, doc = _audit(ns, d, srv.uri, "--secret", PION_SECRET, "--check", "peer-acl")
    acl = _by_id(doc["servers"][0])["peer-acl"]
    assert acl["status"] == "not_checked" and acl["reason"] == "malformed"
    assert any("without XOR-RELAYED-ADDRESS" in e for e in acl["evidence"])
    assert code == 1 and doc["ok"] is False


@pytest.mark.integration
@pytest.mark.parametrize("attr", ["0x0009", "0x000d"])  # ERROR-CODE, LIFETIME cut to 2 bytes
def test_unparsable_answers_never_pass(lab, pion, attr):
    """Before: open-relay, peer-acl and quota were "not checked" and the audit said ok: true, exit 0."""
    ns, _, d = lab
    srv = pion("-short-attr", attr)
    code, doc = _audit(ns, d, srv.uri, "--secret", PION_SECRET, "--check", "open-relay", "--check", "peer-acl", "--check", "quota")
    f = _by_id(doc["servers"][0])
    broken = {"0x0009": {"open-relay", "peer-acl", "quota"}, "0x000d": {"peer-acl", "quota"}}[attr]
    name = {"0x0009": "ERROR-CODE", "0x000d": "LIFETIME"}[attr]
    for check in broken:
        assert f[check]["status"] == "not_checked" and f[check]["reason"] == "malformed", f[check]
        assert f"malformed response from {srv.host}:{srv.port}: {name} at byte " in " ".join(f[check]["evidence"])
    assert doc["ok"] is False and code == 1
    assert {c for _, c, _ in doc["incomplete"]} == broken


@pytest.mark.integration
def test_malformed_binding_still_audits_the_rest(lab, pion):
    ns, _, d = lab
    srv = pion("-short-attr", "0x0020")  # a 2-byte XOR-MAPPED-ADDRESS
    code, doc = _audit(ns, d, srv.uri, "--secret", PION_SECRET, "--check", "open-relay", "--check", "software", "--check", "amplification")
    s = doc["servers"][0]
    f = _by_id(s)
    assert s["reachable"] is True and s["error"] is None
    assert f["open-relay"]["status"] == "pass"
    assert f["software"]["status"] == "not_checked" and f["software"]["reason"] == "malformed"
    assert f["amplification"]["data"]["binding"]["response"] == 36  # measured although it did not parse
    assert code == 1


@pytest.mark.integration
def test_turn_up_default_passes_its_own_audit(lab):
    """`natkit turn up && natkit turn audit` as a user runs it: natkit's default loopback server
    allows exactly its own loopback relay address (the self-test exception). Before, the audit
    called that CRITICAL peer-acl; now it recognises and labels it, and the profile passes."""
    ns = lab[0]
    up = _natkit_in(ns, "turn", "up", "--backend", "native", "--json", timeout=60)
    assert up.returncode == 0, up.stderr[-2000:]
    try:
        code, doc = _audit(ns, None)
        assert code == 0, json.dumps(doc, indent=1)[:4000]
        (server,) = doc["servers"]
        assert server["server"] == "127.0.0.1"
        f = _by_id(server)
        assert [k for k, v in f.items() if v["status"] == "fail"] == []
        acl = f["peer-acl"]
        assert acl["status"] == "pass" and acl["data"]["accepted"] == []
        assert acl["data"]["self_test_exception"] == ["127.0.0.1"]
        assert "127.0.0.1 allowed: the loopback self-test exception" in acl["evidence"][0]
        assert acl["data"]["positive_control"] is True
        assert doc["ok"] is True and doc["incomplete"] == []
    finally:
        down = _natkit_in(ns, "turn", "down", timeout=60)
        assert down.returncode == 0, down.stderr[-2000:]


def test_self_test_exception_only_for_a_loopback_server():
    from natkit.audit import _AclFamily, _self_test_exception, _Target
    from natkit.model import TransportAddress

    def target(host):
        return _Target("s", [], host, 3478, None, None, "u", "p", None, 2.0, 1, 1.0, None, CHECKS)

    fam = _AclFamily(4, [], state="checked", relay=TransportAddress("127.0.0.1", 50000))
    assert _self_test_exception(target("127.0.0.1"), fam, "127.0.0.1")
    assert not _self_test_exception(target("203.0.113.5"), fam, "127.0.0.1")  # reachable from elsewhere: critical
    assert not _self_test_exception(target("127.0.0.1"), fam, "0.0.0.0")
    assert not _self_test_exception(target("127.0.0.1"), _AclFamily(4, [], relay=TransportAddress("203.0.113.5", 1)), "127.0.0.1")


@pytest.mark.integration
@pytest.mark.parametrize("tls_min", ["1.0", "1.2"])
def test_tls_check_against_go_crypto_tls(lab, pion, tmp_path, tls_min):
    """The TLS check against another TLS stack: pion over Go's crypto/tls, whose server default
    still accepts TLS 1.0 and 1.1 (coturn's tests cover OpenSSL)."""
    from natkit.tls import self_signed, write_pair

    ns, _, d = lab
    host = PION_ADDRS[0]  # the address the next pion() gets
    cert, key = write_pair(tmp_path / f"pion-tls-{tls_min}", *self_signed([host]))
    srv = pion("-tls-min", tls_min, tls=(str(cert), str(key)))
    assert srv.host == host
    code, doc = _audit(ns, d, srv.uri, srv.turns_uri, "--secret", PION_SECRET, "--ca", str(cert), "--check", "tls")
    tls = _by_id(doc["servers"][0])["tls"]
    versions = tls["data"]["versions"]
    assert versions["TLSv1.2"] is True and versions["TLSv1.3"] is True
    assert tls["data"]["chain_verified"] is True and tls["data"]["name_matches"] is True
    if tls_min == "1.0":
        assert versions["TLSv1"] is True and versions["TLSv1.1"] is True
        assert tls["status"] == "fail" and tls["severity"] == "medium"
        assert tls["evidence"][0] == "accepts TLSv1 and TLSv1.1"
    else:
        assert versions["TLSv1"] is False and versions["TLSv1.1"] is False
        assert tls["status"] == "pass", tls["evidence"]
        assert code == 0
        # only a turns: URI: the TCP relay check goes over TLS
        code, doc = _audit(ns, d, srv.turns_uri, "--secret", PION_SECRET, "--check", "tcp-relay")
        tcp = _by_id(doc["servers"][0])["tcp-relay"]
        assert tcp["status"] == "pass" and tcp["data"]["allocate"] == 442
        assert tcp["evidence"][0].startswith(f"TCP Allocate over TLS {host}:5349 → 442")
