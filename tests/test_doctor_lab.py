"""natkit doctor against real faults: namespaces, nftables and coturn (natkit.lab.faults).

Every fault of :data:`natkit.lab.faults.FAULTS` is built for real behind the
1:1 cloud NAT and first checked by hand-level means (the rendered coturn
config, ``ip addr``, nftables counters, ``openssl s_client``, the skewed
clock seen through libfaketime, the holders' allocations); then
``natkit doctor`` runs inside the client's namespace and must name the
fault's cause, with its exit code, within 10 s (a healthy server within 2 s).

The suite runs the fault matrix once; ``bench/bench_doctor.py`` runs it
three times per fault (and against pion/turn) and writes the verdict matrix.
Nothing here leaves the lab: no namespace has a default route.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import time

import pytest

from natkit.doctor.causes import CAUSES
from natkit.lab import faults as F
from natkit.pytest_plugin import require_coturn, require_lab

pytestmark = pytest.mark.integration

VERDICT_BUDGET_S = 10.0
HEALTHY_BUDGET_S = 2.0


@pytest.fixture(autouse=True)
def _needs_lab():
    require_lab(turn=True)
    require_coturn()


def _conf(lab: F.FaultLab) -> str:
    return lab.coturn_config_path.read_text()


def _nft_counter(lab: F.FaultLab, node: str) -> int:
    out = lab.exec(node, ["nft", "list", "table", "inet", "natkit_fault"]).stdout
    return sum(int(m) for m in re.findall(r"counter packets (\d+)", out))


def _addresses(lab: F.FaultLab, node: str) -> set[str]:
    out = lab.exec(node, ["ip", "-j", "addr"]).stdout
    return {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])}


def _listening(lab: F.FaultLab, proto: str) -> str:
    return lab.exec("server", ["ss", "-H", "-ln", "-u" if proto == "udp" else "-t"]).stdout


def _openssl(lab: F.FaultLab) -> subprocess.CompletedProcess:
    return lab.exec("client", ["openssl", "s_client", "-connect", f"{F.PUBLIC_IP}:{F.TLS_PORT}", "-CAfile", lab.tls["ca"],
                               "-verify_ip", F.PUBLIC_IP, "-verify_return_error", "-brief"], input="", timeout=20)


def check_fault_is_real(lab: F.FaultLab) -> None:
    """Hand-level proof that the lab holds the fault (independent of the doctor)."""
    f = lab.fault
    conf = _conf(lab)
    # the 1:1 NAT: the public address is on the NAT box, not on the server
    assert F.PUBLIC_IP not in _addresses(lab, "server") and F.PUBLIC_IP in _addresses(lab, "cloudnat")
    assert f"dnat to {F.SERVER_IP}" in lab.exec("cloudnat", ["nft", "list", "ruleset"]).stdout
    ext = re.search(r"^external-ip=(.*)$", conf, re.MULTILINE)
    if f.external_ip == "missing":
        assert ext is None
    elif f.external_ip == "wrong":
        assert ext and ext.group(1).startswith(F.WRONG_PUBLIC_IP)
        owned = set().union(*(_addresses(lab, n.name) for n in lab.plan.nodes))
        assert F.WRONG_PUBLIC_IP not in owned  # nobody has that address
    elif f.external_ip == "public-only":
        assert ext and ext.group(1) == F.PUBLIC_IP
    if f.deny_own_relay:
        assert "denied-peer-ip=10.0.0.0-10.255.255.255" in conf and f"allowed-peer-ip={F.SERVER_IP}\n" not in conf
    if not f.tcp:
        assert f"{F.SERVER_IP}:{F.PORT}" not in _listening(lab, "tcp")
    elif f.tls:
        assert f"{F.SERVER_IP}:{F.TLS_PORT}" in _listening(lab, "tcp")
    if f.tls:
        r = _openssl(lab)
        expect = {"good": None, "expired": "certificate has expired", "self-signed": "self-signed certificate",
                  "wrong-name": "IP address mismatch"}[f.tls]
        text = r.stdout + r.stderr
        if expect is None:
            assert r.returncode == 0 and "Verification: OK" in text, text
        else:
            assert r.returncode != 0 and expect in text, text
    if f.clock_offset:
        env = {"LD_PRELOAD": F.faketime_library(), "FAKETIME": f.clock_offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
        skewed = subprocess.run(["ip", "netns", "exec", lab.ns("server"), "date", "+%s"], env=env, capture_output=True, text=True,
                                check=True)
        assert abs(int(skewed.stdout) - time.time() - 2 * 86400) < 60
        pid = lab.coturn.pid
        with open(f"/proc/{pid}/environ", "rb") as environ:
            assert b"FAKETIME=+2d" in environ.read()
    if f.user_quota:
        assert f"user-quota={f.user_quota}" in conf
    if f.exhausted:
        lo, hi = F.EXHAUSTED_RANGE
        assert f"min-port={lo}" in conf and f"max-port={hi}" in conf
        bound = {int(m) for m in re.findall(rf"{re.escape(F.SERVER_IP)}:(\d+)", _listening(lab, "udp"))}
        assert set(range(lo, hi + 1)) <= bound  # every relay port held
    if not f.ipv6_relay:
        assert "relay-ip=2001:db8:10::10" not in conf
        peer6 = _addresses(lab, "peer6") - {"127.0.0.1", "::1"}
        assert F.PEER6_IP in peer6 and not any("." in a for a in peer6)  # an IPv6-only peer
    if f.credential == "expired":
        username, _ = lab.doctor_credential()
        assert int(username.split(":")[0]) < time.time()


@pytest.mark.parametrize("fault_id", [f.id for f in F.FAULTS.values() if "coturn" in f.servers])
def test_fault_matrix(fault_id):
    fault = F.FAULTS[fault_id]
    with F.FaultLab(fault) as lab:
        check_fault_is_real(lab)
        dropped_before = _nft_counter(lab, "cloudnat" if fault.relay_ports_dropped else "clientfw") if (
            fault.relay_ports_dropped or fault.client_udp_blocked) else 0
        report, _wall, code = lab.run_doctor()
        assert report["verdict"] == fault.cause, (json.dumps(report["findings"], indent=1), lab.server_log())
        assert code == CAUSES[fault.cause].exit_code == report["exit_code"]
        seconds = report["duration_ms"] / 1000
        assert seconds <= (HEALTHY_BUDGET_S if fault.cause == "healthy" else VERDICT_BUDGET_S), report["facts"]["timings_ms"]
        top = report["findings"][0] if report["findings"] else None
        if fault.cause != "healthy":
            assert top["cause"] == fault.cause and top["evidence"] and top["fix"]
        if fault.relay_ports_dropped or fault.client_udp_blocked:
            # the firewall really dropped the doctor's packets
            node = "cloudnat" if fault.relay_ports_dropped else "clientfw"
            assert _nft_counter(lab, node) > dropped_before
        assert lab.secret not in json.dumps(report)


def test_external_ip_findings_name_the_exact_fix():
    with F.FaultLab("external-ip-missing") as lab:
        report, _, _ = lab.run_doctor()
    top = report["findings"][0]
    assert top["fix"] == f"external-ip={F.PUBLIC_IP}/{F.SERVER_IP}"
    assert any(f"arrived from {F.PUBLIC_IP}:" in e for e in top["evidence"])
    with F.FaultLab("external-ip-wrong") as lab:
        report, _, _ = lab.run_doctor()
    top = report["findings"][0]
    assert top["fix"].startswith(f"external-ip={F.PUBLIC_IP}")
    assert any(F.WRONG_PUBLIC_IP in e for e in top["evidence"])


def test_clock_skew_is_measured():
    with F.FaultLab("clock-skew") as lab:
        report, _, _ = lab.run_doctor()
    lo, hi = report["facts"]["server_clock_ahead_s"]
    assert lo <= 2 * 86400 + 600 <= hi * 1.01 and hi - lo < 0.05 * hi  # the credential's 600 s lifetime included


def test_text_output_shows_steps_evidence_fix_and_verdict():
    from natkit.lab import netns

    with F.FaultLab("deny-own-relay") as lab:
        argv, env = lab.doctor_command()
        argv = [a for a in argv if a != "--json"]
        full = netns.installation_env()
        full.update(env, COLUMNS="160", NATKIT_QUIET="1")
        r = subprocess.run(netns.netns_argv(lab.ns("client"), argv), env=full, capture_output=True, text=True, timeout=60,
                           check=False)
    assert r.returncode == CAUSES["deny-list-own-relay"].exit_code
    out = r.stdout
    assert "[A] → 203.0.113.10 (other allocation)" in out  # targets are not eaten as markup
    assert "403 Forbidden IP" in out and "fix: allowed-peer-ip=" in out
    assert "verdict: deny-list-own-relay (exit 7" in out
    assert lab.secret not in out + r.stderr


def test_sigterm_tears_the_fault_lab_down(tmp_path):
    import sys

    script = tmp_path / "lab.py"
    script.write_text(
        "import sys, time\n"
        "from natkit.lab.faults import FaultLab\n"
        "with FaultLab('quota-reached') as lab:\n"
        "    print(lab.name, flush=True)\n"
        "    time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    name = p.stdout.readline().strip()
    assert name, p.stderr.read()
    from natkit.lab import netns

    namespaces = [ns for ns in netns.list_namespaces() if netns.lab_of_namespace(ns) == name]
    assert len(namespaces) == 6
    pids = [pid for found in netns.namespace_pids(namespaces).values() for pid in found]
    assert pids  # coturn and the holder
    p.terminate()
    assert p.wait(15) != 0
    assert not [ns for ns in netns.list_namespaces() if netns.lab_of_namespace(ns) == name]
    assert netns.read_state(name) is None
    assert not [pid for pid in pids if netns._alive(pid)]


def test_sigterm_stops_the_doctor_mid_run():
    from natkit.lab import netns

    with F.FaultLab("udp-blocked") as lab:  # the UDP timeout keeps the doctor busy for ~2 s
        argv, env = lab.doctor_command()
        full = netns.installation_env()
        full.update(env)
        p = subprocess.Popen(netns.netns_argv(lab.ns("client"), argv), env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        time.sleep(0.8)
        p.terminate()
        _, err = p.communicate(timeout=15)
        assert p.returncode == 130, err
        assert "Traceback" not in err
        assert netns.namespace_pids([lab.ns("client")])[lab.ns("client")] == []


@pytest.mark.parametrize("fault_id, cause", [("healthy", "healthy"), ("ipv6-peer-ipv4-relay", "family-mismatch")])
def test_over_ipv6(fault_id, cause):
    """The server's IPv6 address as the URI (routed, not NATed): an IPv6 client's view."""
    from natkit.lab import netns

    with F.FaultLab(fault_id) as lab:
        argv, env = lab.doctor_command()
        argv = ["natkit", "doctor", f"turn:[{F.SERVER_IP6}]:{F.PORT}", *argv[argv.index("--json"):]]
        full = netns.installation_env()
        full.update(env, NATKIT_QUIET="1")
        r = subprocess.run(netns.netns_argv(lab.ns("client"), argv), env=full, capture_output=True, text=True, timeout=60,
                           check=False)
    report = json.loads(r.stdout)
    assert report["verdict"] == cause, report["findings"]
    assert report["facts"]["server_addresses"][0] == F.SERVER_IP6
    if cause == "healthy":
        assert report["facts"]["relayed"]["v6"].startswith(f"[{F.SERVER_IP6}]:")


def test_a_stun_only_server_is_named_so():
    """Debian's stund (RFC 3489, STUN only) on loopback: the Binding is answered, an Allocate is not."""
    import os
    import shutil
    import sys

    from natkit.coturn.server import free_port

    if shutil.which("stund") is None:
        if os.environ.get("NATKIT_REQUIRE_NETNS") == "1":
            pytest.fail("stund (apt-get install stun-server) is needed here")
        pytest.skip("stund is not installed")
    port = free_port("127.0.0.1")
    p = subprocess.Popen(["stund", "-h", "127.0.0.1", "-a", "127.0.0.2", "-p", str(port), "-o", str(free_port("127.0.0.1"))],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while f"127.0.0.1:{port}" not in subprocess.run(["ss", "-Hlun"], capture_output=True, text=True, check=False).stdout:
            assert time.monotonic() < deadline and p.poll() is None, "stund did not bind its port"
            time.sleep(0.01)
        r = subprocess.run([sys.executable, "-m", "natkit.cli.app", "doctor", f"turn:127.0.0.1:{port}", "--no-fallbacks", "--json",
                            "--timeout", "0.5"], capture_output=True, text=True, timeout=30, check=False,
                           env=dict(os.environ, NATKIT_TURN_SECRET="x", NATKIT_QUIET="1"))
    finally:
        p.terminate()
        p.wait(5)
    report = json.loads(r.stdout)
    assert report["verdict"] == "not-a-turn-server" and r.returncode == 4
    assert any("Binding" in e for e in report["findings"][0]["evidence"])


def test_turn_up_then_doctor_without_arguments_is_healthy(tmp_path):
    """natkit's own server, found by name: its URIs and secret, no URI on the command line (loopback self-test)."""
    import os
    import sys

    from natkit.coturn.server import free_port

    env = dict(os.environ, NATKIT_STATE_DIR=str(tmp_path), NATKIT_QUIET="1")
    port = free_port("127.0.0.1")
    natkit = [sys.executable, "-m", "natkit.cli.app"]
    up = subprocess.run([*natkit, "turn", "up", "--backend", "native", "--port", str(port), "--name", "dr", "--json"], env=env,
                        capture_output=True, text=True, timeout=60, check=False)
    try:
        assert up.returncode == 0, up.stderr
        r = subprocess.run([*natkit, "doctor", "--name", "dr", "--json"], env=env, capture_output=True, text=True, timeout=60,
                           check=False)
    finally:
        subprocess.run([*natkit, "turn", "down", "--name", "dr"], env=env, capture_output=True, timeout=30, check=False)
    report = json.loads(r.stdout)
    assert report["verdict"] == "healthy" and r.returncode == 0, report["findings"]
    assert report["credential"] == "rest" and report["servers"][0].endswith(f":{port}")
    assert report["duration_ms"] <= HEALTHY_BUDGET_S * 1000


def test_a_bare_public_external_ip_from_natkits_profile_is_healthy(monkeypatch):
    """The deny-own-relay fault is coturn's bare external-ip=PUBLIC; natkit's profile
    completes it to PUBLIC/PRIVATE, and the same server behind the 1:1 NAT is healthy."""
    from natkit.coturn.profiles import build

    original = F.coturn_config

    def through_the_profile(fault, secret, **kw):
        conf = original(fault, secret, **kw)
        assert conf.external_ip == F.PUBLIC_IP  # the fault as coturn gets it without natkit
        profile = build("recommended", secrets=(secret,), listening_ips=(F.SERVER_IP,), external_ip=F.PUBLIC_IP)
        return dataclasses.replace(conf, external_ip=profile.config.external_ip)

    monkeypatch.setattr(F, "coturn_config", through_the_profile)
    spec = dataclasses.replace(F.FAULTS["deny-own-relay"], id="bare-public-through-profile", cause="healthy")
    with F.FaultLab(spec) as lab:
        report, _, code = lab.run_doctor()
    assert report["verdict"] == "healthy" and code == 0, json.dumps(report["findings"], indent=1)
