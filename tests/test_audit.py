"""natkit turn audit: unit tests of the pure parts, and real coturn servers in a
network namespace that has no route out (SAFETY: the audit asks servers to
relay toward loopback, private ranges and 169.254.169.254; inside this
namespace those go nowhere).

One module-scoped namespace holds three coturn servers on documentation
addresses bound to the namespace's loopback device:

* 203.0.113.10: natkit's ``recommended`` profile (TLS with a self-signed pair)
* 203.0.113.30: natkit's ``strict`` profile
* 203.0.113.20: :func:`open_relay_for_testing` (no auth, no deny list, TCP
  relay, TLS 1.0, CLI on its address, SOFTWARE, no quota)

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

from natkit.audit import CHECKS, FORBIDDEN_PEERS, AuditReport, Finding, ServerAudit, _parse, coturn_cves, junit_xml, severity_at_least

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

    # a CONNECT (0x000a) error response: aioice has no name for the method
    reason = b"Forbidden IP"
    attr = struct.pack("!HBB", 0, 4, 3) + reason
    body = struct.pack("!HH", 0x0009, len(attr)) + attr + bytes(-len(attr) % 4)
    data = struct.pack("!HHI12s", 0x0110 | 0x000A, len(body), 0x2112A442, b"x" * 12) + body
    msg = _parse(data)
    assert msg.method == 0x000A and not msg.is_success and msg.code == 403 and msg.describe() == "403 Forbidden IP"


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
SECRET = pysecrets.token_urlsafe(24)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _natkit_in(ns: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    code = "import sys; from natkit.cli.app import main; sys.argv = ['natkit'] + sys.argv[1:]; main()"
    env = dict(os.environ, NATKIT_QUIET="1")
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _wait_stun(ns: str, host: str, port: int, proc: subprocess.Popen, log) -> None:
    code = ("import sys; from natkit.probe import probe; "
            f"sys.exit(0 if probe(['{host}:{port}'], timeout=0.5).ok else 1)")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"coturn on {host} exited: " + open(log).read()[-2000:])
        if subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"coturn on {host} did not answer STUN: " + open(log).read()[-2000:])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from natkit.pytest_plugin import require_coturn, require_root_netns

    require_root_netns()
    require_coturn()
    from natkit.coturn.native import find_binary
    from natkit.coturn.profiles import build, open_relay_for_testing
    from natkit.tls import self_signed, write_pair

    d = tmp_path_factory.mktemp("audit-lab")
    ns = f"natkit-audit-{os.getpid()}-{pysecrets.token_hex(3)}"
    procs: list[subprocess.Popen] = []
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        for addr in (HARDENED, OPEN, STRICT):
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
        servers["hardened"] = dict(host=HARDENED, config=dataclasses.replace(prof.config, cert=str(cert), pkey=str(key)), ca=str(cert),
                                   warnings=prof.warnings)
        strict = build("strict", secrets=(SECRET,), listening_ips=(STRICT,), external_ip=STRICT, min_port=52000, max_port=52999)
        servers["strict"] = dict(host=STRICT, config=strict.config)
        # the open relay, with a certificate that names another host
        wrong_cert, wrong_key = write_pair(d / "open", *self_signed(["wrong.example"]))
        servers["open"] = dict(host=OPEN, config=open_relay_for_testing(listening_ips=(OPEN, "2001:db8::20"), port=3478, tls_port=5349, cert=str(wrong_cert),
                                                                        pkey=str(wrong_key), min_port=51000, max_port=51999, cli_ip=OPEN))
        for name, s in servers.items():
            cfg = dataclasses.replace(s["config"], pidfile=str(d / f"{name}.pid"), userdb=str(d / f"{name}.db"))
            conf = d / f"{name}.conf"
            conf.write_text(cfg.render())
            log = str(d / f"{name}.log")
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(["ip", "netns", "exec", ns, find_binary(), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True))
            s["proc"], s["log"] = procs[-1], log
        for s in servers.values():
            _wait_stun(ns, s["host"], 3478, s["proc"], s["log"])
        yield ns, servers, d
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        _ip("netns", "del", ns, check=False)


def _audit(ns: str, d, *args: str, junit: str | None = None) -> tuple[int, dict]:
    extra = ["--junit", junit] if junit else []
    r = _natkit_in(ns, "turn", "audit", *args, "--json", *extra)
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        raise AssertionError(f"no JSON (exit {r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}") from None
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
    ns, servers, d = lab
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
    assert all(x["status"] == "fail" for x in by_host[OPEN]["findings"])
    assert doc["counts"]["critical"] == 2 and doc["counts"]["medium"] == 1 and doc["ok"] is False
    assert len(ET.parse(junit).getroot().findall("testsuite")) == 3
    assert elapsed < 60


@pytest.mark.integration
def test_unreachable_server_is_reported_not_crashed(lab):
    ns, _, d = lab
    code, doc = _audit(ns, d, "turn:203.0.113.99:3478", "--timeout", "0.5")
    assert code == 4
    assert doc["servers"][0]["error"]
