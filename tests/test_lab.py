"""The lab on real network namespaces: build, teardown, NAT options, self-verification, CLI.

Needs root, iproute2, nftables and coturn; skips without them (fails under
NATKIT_REQUIRE_NETNS=1). Every lab here has its own random name, and leftover
sweeps are limited to the labs a test made, so other labs on the machine are
never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from natkit.lab import netns
from natkit.lab.spec import HostSpec, LabSpec, NatSpec, render_nat_ruleset

pytestmark = pytest.mark.integration

PY = sys.executable


@pytest.fixture(autouse=True)
def _need_lab():
    from natkit.pytest_plugin import require_lab

    require_lab(True)


def _name() -> str:
    return "t" + secrets.token_hex(4)


def _gone(namespaces) -> bool:
    present = set(netns.list_namespaces())
    return not any(ns in present for ns in namespaces)


# ---------------------------------------------------------------- build and teardown

def test_every_rendered_ruleset_loads_in_nft():
    """nft accepts every behaviour x option combination (checked inside a scratch lab namespace)."""
    ns = f"natkit-{_name()}-scratch"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for b in ("full_cone", "restricted", "port_restricted", "symmetric"):
            for kw in ({}, {"hairpin": True}, {"udp_blocked": True, "loss": 5, "mapping_timeout": 7}):
                text = render_nat_ruleset(NatSpec("box", b, **kw), "198.51.100.11", "10.0.1.0/24")
                r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-c", "-f", "-"], input=text, capture_output=True, text=True)
                assert r.returncode == 0, (b, kw, r.stderr)
    finally:
        netns.destroy([ns])
    assert _gone([ns])


def test_two_nat_topology_builds_and_tears_down_well_under_a_second():
    from natkit.lab import NatLab

    times = []
    for _ in range(3):
        lab = NatLab(LabSpec.peers("port_restricted", "symmetric"), name=_name(), turn=False, stun=False, verify=False, agents=False)
        t = time.monotonic()
        lab.up()
        built = time.monotonic()
        namespaces = lab.plan.namespaces
        assert all(ns.startswith("natkit-") for ns in namespaces)
        assert not _gone(namespaces)
        lab.down()
        times.append((built - t, time.monotonic() - built))
        assert _gone(namespaces)
    best_build, best_down = min(t[0] for t in times), min(t[1] for t in times)
    assert best_build + best_down < 0.5, times


def test_teardown_on_exception_stops_coturn_and_agents(nat_lab):
    from natkit.lab import NatLab

    lab = NatLab(LabSpec.peers("full_cone"), name=_name())
    with pytest.raises(RuntimeError, match="boom"):
        with lab:
            coturn = lab._coturn.pid
            agent = lab.agent("fc1").pid
            namespaces = lab.plan.namespaces
            raise RuntimeError("boom")
    assert _gone(namespaces)
    for pid in (coturn, agent):
        assert not netns._alive(pid)
    assert netns.read_state(lab.name) is None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_teardown_on_ctrl_c_and_sigterm(sig, tmp_path):
    name = _name()
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from natkit.lab import LabSpec, NatLab
        with NatLab(LabSpec.peers("symmetric"), name={name!r}) as lab:
            print(lab._coturn.pid, flush=True)
            os.kill(os.getpid(), {int(sig)})
            time.sleep(30)
    """)
    proc = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0  # interrupted, not finished
    coturn = int(proc.stdout.split()[0])
    assert not netns._alive(coturn)
    assert not [ns for ns in netns.list_namespaces() if ns.startswith(f"natkit-{name}-")]
    assert netns.read_state(name) is None


def test_down_all_removes_leftovers_of_a_killed_owner_and_keeps_live_labs(nat_lab):
    name = _name()
    script = textwrap.dedent(f"""
        import time
        from natkit.lab import LabSpec, NatLab
        lab = NatLab(LabSpec.peers("full_cone", "symmetric"), name={name!r}).up()
        print("up", lab._coturn.pid, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([PY, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line and line[0] == "up"
        coturn = int(line[1])
        live = nat_lab("open")  # a lab whose owner (this test run) is alive
        res = netns.down_all(only_labs=[name, live.name])
        assert res["kept"] == sorted([name, live.name])  # down_all goes through labs in name order
        proc.kill()  # SIGKILL: no cleanup code runs
        proc.wait()
        leftovers = [ns for ns in netns.list_namespaces() if ns.startswith(f"natkit-{name}-")]
        assert len(leftovers) == 6 and netns._alive(coturn)
        res = netns.down_all(only_labs=[name, live.name])
        assert res["labs"] == [name] and res["kept"] == [live.name]
        assert sorted(res["removed"]) == sorted(leftovers)
        assert not netns._alive(coturn)
        assert _gone(leftovers) and not _gone(live.plan.namespaces)
    finally:
        if proc.poll() is None:
            proc.kill()
        netns.down_all(only_labs=[name])


# ---------------------------------------------------------------- safety

def test_no_route_out_of_the_lab_and_coturn_relays_only_to_lab_ranges(nat_lab):
    lab = nat_lab("symmetric", "open")
    for node in ("server", "sym1", "sym1-nat", "open1", "internet"):
        routes = lab.exec(node, ["ip", "-4", "route", "show"], check=True).stdout
        assert "default" not in routes, (node, routes)
        r = lab.exec(node, ["ip", "-4", "route", "get", "8.8.8.8"])
        assert r.returncode != 0, (node, r.stdout)
    # natkit's one launcher: the native backend behind ip netns exec, its files in the lab's directory
    assert lab.coturn.info.argv_prefix == ("ip", "netns", "exec", lab.ns("server")) and lab.coturn.info.backend == "native"
    assert Path(lab.coturn.info.config_path).is_relative_to(lab.dir)
    conf = Path(lab.coturn.info.config_path).read_text()
    allowed = [line for line in conf.splitlines() if line.startswith("allowed-peer-ip=")]
    assert allowed == ["allowed-peer-ip=203.0.113.0-203.0.113.255", "allowed-peer-ip=198.51.100.0-198.51.100.255"]
    for denied in ("10.0.0.0-10.255.255.255", "127.0.0.0-127.255.255.255", "169.254.0.0-169.254.255.255", "100.64.0.0-100.127.255.255"):
        assert f"denied-peer-ip={denied}" in conf
    # the host's own namespace gained nothing
    assert lab.exec("server", ["ip", "-br", "link"], check=True).stdout.count("\n") == 2  # lo, eth0


# ---------------------------------------------------------------- verification and options

def test_every_behaviour_is_measured_as_declared(nat_lab):
    lab = nat_lab("open", "full_cone", "restricted", "port_restricted", "symmetric")
    got = {c.host: (c.declared, c.measured_label, c.ok) for c in lab.checks}
    assert got == {
        "open1": ("open", "open", True), "fc1": ("full_cone", "full_cone", True), "rc1": ("restricted", "restricted", True),
        "prc1": ("port_restricted", "port_restricted", True), "sym1": ("symmetric", "symmetric", True),
    }
    assert lab.timings["verify_ms"] < 5000


def test_a_mislabelled_nat_fails_setup_loudly(monkeypatch):
    from natkit.lab import LabVerificationFailed, NatLab
    from natkit.lab import spec as spec_mod

    real = spec_mod.render_nat_ruleset

    def lying(nat, *a, **kw):  # the "full cone" box really masquerades randomly
        return real(NatSpec(nat.name, "symmetric"), *a, **kw) if nat.behaviour == "full_cone" else real(nat, *a, **kw)

    monkeypatch.setattr(spec_mod, "render_nat_ruleset", lying)
    lab = NatLab(LabSpec.peers("full_cone", "port_restricted"), name=_name())
    with pytest.raises(LabVerificationFailed) as err:
        lab.up()
    assert "fc1 (full_cone)" in err.value.message
    assert any("mapping: declared endpoint-independent, measured address-and-port-dependent" in d for d in err.value.details)
    assert _gone(lab.plan.namespaces)


def test_verify_notices_a_nat_changed_under_a_running_lab(nat_lab):
    lab = nat_lab("full_cone")
    r = lab.exec("fc1-nat", ["nft", "flush", "chain", "ip", "natkit", "prerouting"])
    assert r.returncode == 0, r.stderr
    (check,) = lab.verify(["fc1"])
    assert not check.ok and check.measured["filtering"] == "address-and-port-dependent"


def test_hairpinning_option(nat_lab):
    lab = nat_lab(LabSpec(
        nats=(NatSpec("hp", "port_restricted", hairpin=True), NatSpec("nohp", "port_restricted")),
        hosts=(HostSpec("a", behind="hp"), HostSpec("b", behind="nohp")),
    ))
    got = {c.host: c.measured["hairpin"] for c in lab.checks}
    assert got == {"a": True, "b": False}


def test_udp_blocked_forces_turn_over_tcp(nat_lab):
    lab = nat_lab(LabSpec(nats=(NatSpec("fw", "port_restricted", udp_blocked=True),),
                          hosts=(HostSpec("a", behind="fw"), HostSpec("o"))))
    (check_a,) = [c for c in lab.checks if c.host == "a"]
    assert check_a.ok and check_a.measured["udp"] is False and check_a.measured["tcp"] is True
    assert lab.ice_servers("a")[1]["urls"] == ["turn:203.0.113.10:3478?transport=tcp"]
    result = lab.connect("a", "o", turn=True, deadline=15)
    assert result.outcome == "relay" and result.relay_proven, result
    assert result.offerer.local_type == "relay"


_SEND = "import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('0.0.0.0',0))\n" \
        "h,p,n=sys.argv[1],int(sys.argv[2]),int(sys.argv[3])\n" \
        "[s.sendto(b'x',(h,p)) for _ in range(n)]"

_RECV = """
import socket, sys, time
from natkit.stun import codec
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 0)); s.settimeout(0.2)
req = codec.binding_request()
for _ in range(30):  # retransmit: the path may be lossy
    s.sendto(req.encode(), ("203.0.113.10", 3478))
    try:
        resp = codec.decode(s.recv(2048))
        break
    except socket.timeout:
        continue
print(resp["XOR-MAPPED-ADDRESS"], flush=True)
s.settimeout(0.2)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        data, addr = s.recvfrom(2048)
        print("got", addr[0], flush=True)
    except socket.timeout:
        pass
"""


def _wait_line(proc, prefix="got", timeout=3.0):
    import select

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r, _, _ = select.select([proc.stdout], [], [], max(0.0, end - time.monotonic()))
        if not r:
            break
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line
    return None


def test_mapping_timeout_expires_full_cone_mappings(nat_lab):
    lab = nat_lab(LabSpec(nats=(NatSpec("n", "full_cone", mapping_timeout=2),), hosts=(HostSpec("a", behind="n"), HostSpec("o"))))
    sysctl = lab.exec("n", ["sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout"], check=True).stdout.strip()
    assert sysctl == "2"
    recv = lab.popen("a", [PY, "-c", _RECV, "8"], stdout=subprocess.PIPE, text=True)
    try:
        mapped = recv.stdout.readline().strip()
        host, port = mapped.split(":")
        lab.exec("o", [PY, "-c", _SEND, host, port, "1"], check=True)  # endpoint-independent filtering: arrives
        assert _wait_line(recv) is not None
        time.sleep(3.5)  # idle longer than the mapping timeout
        lab.exec("o", [PY, "-c", _SEND, host, port, "1"], check=True)
        assert _wait_line(recv, timeout=1.5) is None, "the mapping outlived its timeout"
    finally:
        recv.kill()
        recv.wait()


def test_loss_percentage(nat_lab):
    lab = nat_lab(LabSpec(nats=(NatSpec("n", "full_cone", loss=50),), hosts=(HostSpec("a", behind="n"), HostSpec("o"))), verify=False)
    recv = lab.popen("a", [PY, "-c", _RECV, "3"], stdout=subprocess.PIPE, text=True)
    first = recv.stdout.readline().strip()  # the script retransmits its Binding up to 30 times
    assert first, "no STUN answer through a 50% lossy NAT"
    host, port = first.split(":")
    lab.exec("o", [PY, "-c", _SEND, host, port, "400"], check=True)
    out, _ = recv.communicate(timeout=10)
    got = out.count("got ")
    assert 120 <= got <= 280, got  # 50% of 400, far outside the binomial tails


def test_cascade_cgnat_in_front_of_a_home_nat(nat_lab):
    lab = nat_lab(LabSpec(
        nats=(NatSpec("cgn", "full_cone"), NatSpec("home", "port_restricted", behind="cgn")),
        hosts=(HostSpec("a", behind="home"), HostSpec("c", behind="cgn"), HostSpec("o")),
    ))
    checks = {c.host: c for c in lab.checks}
    assert checks["a"].ok and checks["a"].measured_label == "port_restricted"
    assert checks["c"].ok and checks["c"].measured_label == "full_cone"
    assert checks["a"].measured["public"].startswith("198.51.100.11:")  # the carrier's address
    assert lab.ip("home").startswith("100.64.")
    result = lab.connect("a", "o", turn=False)
    assert result.outcome.startswith("direct"), result


def test_relay_is_proven_between_two_symmetric_nats(nat_lab):
    lab = nat_lab("symmetric", "symmetric")
    result = lab.connect("sym1", "sym2", turn=True)
    assert result.outcome == "relay" and result.relay_proven and result.ok
    assert result.offerer.echo_ok == result.offerer.echo_sent == 5
    assert "relay" in (result.offerer.local_type, result.offerer.remote_type)
    assert "relay" in (result.answerer.local_type, result.answerer.remote_type)
    t0 = time.monotonic()
    failed = lab.connect("sym1", "sym2", turn=False, deadline=3)
    assert failed.outcome == "failed" and not failed.ok
    assert time.monotonic() - t0 < 3 + 5  # the deadline bounds the attempt


# ---------------------------------------------------------------- CLI

CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # a fresh machine's PATH: no venv on it


def _cli(*args, timeout=90):
    env = dict(os.environ, NATKIT_QUIET="1", PATH=CLEAN_PATH)
    return subprocess.run([PY, "-m", "natkit.cli.app", *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_up_exec_list_down(tmp_path):
    name = _name()
    spec = tmp_path / "lab.toml"
    spec.write_text(f'name = "{name}"\n[[nat]]\nname = "home"\nbehaviour = "restricted"\n[[host]]\nname = "alice"\nbehind = "home"\n[[host]]\nname = "bob"\n')
    try:
        r = _cli("lab", "up", str(spec), "--json")
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["lab"] == name and info["hosts"]["alice"]["measured"] == "restricted"
        assert info["checks"][0]["ok"] is True
        # the lab's REST secret stays in its 0600 state file: masked in JSON, as turn up --json does
        secret = json.loads(Path(info["server"]["state_file"]).read_text())["secret"]
        assert info["server"]["secret"] == "***" and secret and secret not in r.stdout
        r = _cli("lab", "exec", "alice", "--lab", name, "--", "ip", "-4", "-br", "addr", "show", "dev", "eth0")
        assert r.returncode == 0 and "10.0.1.10/24" in r.stdout, r
        r = _cli("lab", "exec", "bob", "--lab", name, "--", "sh", "-c", "exit 7")
        assert r.returncode == 7
        r = _cli("lab", "exec", "alice", "--lab", name, "--", "natkit", "probe", "203.0.113.10:3478", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["public_ip"] == "198.51.100.11"
        # python and natkit are the running installation's, also inside a shell command
        r = _cli("lab", "exec", "alice", "--lab", name, "--", "python", "-c", "import sys; print(sys.prefix)")
        assert r.returncode == 0 and r.stdout.strip() == sys.prefix, r
        r = _cli("lab", "exec", "alice", "--lab", name, "--", "sh", "-c", "natkit probe 203.0.113.10:3478 --json")
        assert r.returncode == 0 and json.loads(r.stdout)["public_ip"] == "198.51.100.11", r
        r = _cli("lab", "list", "--json")
        assert any(x["lab"] == name and x["owner"].startswith("persistent") for x in json.loads(r.stdout)["labs"])
        r = _cli("lab", "down", name)
        assert r.returncode == 0 and f"lab {name} removed" in r.stdout
        assert not [ns for ns in netns.list_namespaces() if ns.startswith(f"natkit-{name}-")]
        r = _cli("lab", "down", name)
        assert r.returncode == 2 and "no lab named" in r.stderr
    finally:
        netns.down_all(only_labs=[name])


def test_cli_rejects_bad_specs(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[nat]]\nname = "n"\nbehaviour = "leaky"\n')
    r = _cli("lab", "up", str(bad))
    assert r.returncode == 2 and "unknown NAT behaviour" in r.stderr
    r = _cli("lab", "up", "symmetric,sideways")
    assert r.returncode == 2
    r = _cli("lab", "exec", "nohost-" + secrets.token_hex(3), "--", "true")
    assert r.returncode == 2 and "no lab namespace" in r.stderr


def test_teardown_when_a_test_fails_or_times_out(tmp_path):
    """The nat_lab fixture removes its lab after a failing test and after a pytest-timeout."""
    names = [_name(), _name()]
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(f"""
        import time, pytest

        def test_fails(nat_lab):
            nat_lab("symmetric", name={names[0]!r})
            assert False, "deliberate"

        @pytest.mark.timeout(3, method="signal")
        def test_hangs(nat_lab):
            nat_lab("full_cone", name={names[1]!r})
            time.sleep(60)
    """))
    r = subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_inner.py")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "2 failed" in r.stdout, r.stdout[-2000:]
    assert "deliberate" in r.stdout and "Timeout" in r.stdout
    for name in names:
        assert not [ns for ns in netns.list_namespaces() if ns.startswith(f"natkit-{name}-")]
        assert netns.read_state(name) is None


# ---------------------------------------------------------------- without TURN

def test_turn_false_lab_verifies_with_a_stun_only_server(nat_lab):
    """nat_lab(..., turn=False) used to fail with "verification needs the lab's STUN server":
    now the lab's coturn runs STUN-only, verification and STUN-only connections work, TURN is refused."""
    from natkit.errors import UsageError

    lab = nat_lab("open", "port_restricted", turn=False)
    assert lab.turn is False and lab.stun is True
    assert {c.host: c.ok for c in lab.checks} == {"open1": True, "prc1": True}
    assert {c.host: c.measured_label for c in lab.checks} == {"open1": "open", "prc1": "port_restricted"}
    assert lab.ice_servers("prc1", turn=False) == [{"urls": [lab.stun_uri]}]
    with pytest.raises(UsageError, match="no TURN server"):
        lab.ice_servers("prc1")
    result = lab.connect("prc1", "open1", deadline=6)  # turn defaults to the lab's: none
    assert result.turn is False and result.outcome == "direct srflx", result
    # the server ignores TURN: an Allocate from a host is never answered, a Binding is
    r = lab.exec("open1", ["natkit", "relay-check", lab.turn_uri(), "--secret", lab.secret, "--timeout", "3", "--json"])
    err = json.loads(r.stdout)["error"]
    assert r.returncode == 4 and (err["kind"], err["step"]) == ("timeout", "allocate"), r.stdout


def test_stun_false_needs_verify_false():
    from natkit.errors import UsageError
    from natkit.lab import NatLab

    with pytest.raises(UsageError) as exc:
        NatLab(LabSpec.peers("symmetric"), name=_name(), turn=False, stun=False)
    assert "verify=False" in str(exc.value)
    lab = NatLab(LabSpec.peers("symmetric"), name=_name(), turn=False, stun=False, verify=False, agents=False)
    with lab:
        assert lab._coturn is None and lab.ice_servers("sym1", turn=False) == []


def test_cli_up_no_turn_still_verifies_every_nat():
    """--no-turn runs coturn STUN-only in the server namespace: the NATs are still measured."""
    name = _name()
    try:
        r = _cli("lab", "up", "symmetric", "--no-turn", "--name", name, "--json")
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["checks"] and all(c["ok"] for c in info["checks"]), info["checks"]
        assert {h["measured"] for h in info["hosts"].values()} == {"symmetric"}
    finally:
        netns.down_all(only_labs=[name])
