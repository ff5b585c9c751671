"""``natkit nat`` against real STUN servers: coturn 4.6 and stund, on loopback and behind real NATs.

On this host (no NAT between a socket and 127.0.0.1) every RFC 5780 server
must lead to "no NAT, no filtering (open)", and a server with one address to
"filtering unknown" with the reason, never to a verdict.

Behind real NATs (:mod:`natkit.lab`: Linux network namespaces, nftables),
the declared behaviour of each lab NAT is the ground truth, in repeated runs,
against the lab's coturn and a stund started in the lab's server namespace.
All traffic stays on loopback or inside the lab's namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from natkit.coturn.server import free_port, port_in_use
from natkit.model import TransportAddress
from natkit.nat import discover_nat, exit_code
from natkit.nat_classify import Filtering, Mapping
from natkit.pytest_plugin import require_coturn, require_root_netns

NATKIT = [sys.executable, "-m", "natkit.cli.app"]
LOOPBACK_PAIR = ("127.0.0.1", "127.0.0.2")


def natkit(*args, timeout=30, prefix=()):
    return subprocess.run([*prefix, *NATKIT, *args], capture_output=True, text=True, timeout=timeout, check=False)


def free_pair_port(ips=LOOPBACK_PAIR) -> int:
    """A port P with P and P+1 free on every IP (RFC 5780 servers use both)."""
    for _ in range(100):
        port = free_port(ips[0])
        if port < 65535 and all(port_in_use(ip, p) is None for ip in ips for p in (port, port + 1)):
            return port
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="module")
def coturn_factory(tmp_path_factory):
    """Start native coturns on given loopback IPs; all are stopped at module end."""
    require_coturn()
    from natkit.coturn.config import CoturnConfig
    from natkit.coturn.server import CoturnServer

    state = tmp_path_factory.mktemp("natkit-nat-coturn")
    started = []

    def start(ips: tuple[str, ...]) -> int:
        port = free_pair_port(ips)
        config = CoturnConfig(listening_ips=ips, listening_port=port, static_auth_secrets=("nat-test-secret",), realm="natkit.test")
        server = CoturnServer(config, backend="native", name=f"nat-{port}", state_dir=state, ephemeral=True)
        server.start()
        started.append(server)
        return port

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def coturn_rfc5780(coturn_factory):
    """coturn on 127.0.0.1 and 127.0.0.2: RFC 5780 on (OTHER-ADDRESS 127.0.0.2:P+1)."""
    return coturn_factory(LOOPBACK_PAIR)


@pytest.fixture(scope="module")
def coturn_single(coturn_factory):
    """coturn on 127.0.0.1 only: no OTHER-ADDRESS."""
    return coturn_factory(("127.0.0.1",))


def require_stund() -> str:
    path = shutil.which("stund") or ("/usr/sbin/stund" if os.access("/usr/sbin/stund", os.X_OK) else None)
    if path is None:
        if os.environ.get("NATKIT_REQUIRE_NETNS") == "1":
            pytest.fail("stund (Debian stun-server) is not installed", pytrace=False)
        pytest.skip("stund (Debian stun-server) is not installed")
    return path


def wait_stun(addr: TransportAddress, timeout: float = 5.0) -> None:
    """Poll with blocking Binding requests (natkit.stun.sync: no event loop per poll) until ``addr`` answers."""
    from natkit.errors import NatkitError
    from natkit.stun import codec, sync

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            sync.request(codec.binding_request(), addr, timeout=0.2, rto=0.05)
            return
        except NatkitError:
            time.sleep(0.05)
    raise RuntimeError(f"no STUN answer from {addr}")


@pytest.fixture(scope="module")
def stund_server():
    """stund (RFC 3489) on 127.0.0.1:P and 127.0.0.2:P+1 as a managed subprocess."""
    binary = require_stund()
    port = free_pair_port()
    proc = subprocess.Popen([binary, "-h", "127.0.0.1", "-a", "127.0.0.2", "-p", str(port), "-o", str(port + 1)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_stun(TransportAddress("127.0.0.1", port))
        yield port
    finally:
        proc.kill()
        proc.wait(5)


def assert_open(report, software: str):
    assert report.status == "determined" and exit_code(report) == 0, report
    assert report.verdict == "no NAT, no filtering (open)"
    assert report.mapping.value is Mapping.NONE and report.filtering.value is Filtering.NONE
    assert report.nat_present.value is False and report.udp_blocked.value is False
    assert report.classic.value == "open internet" and report.confidence == "high"
    assert report.public_address == report.local_address and report.public_address.host == "127.0.0.1"
    server = report.servers[0]
    assert server.rfc5780.value is True and server.other_address.host == "127.0.0.2"
    assert software in (server.software or "")
    # mapping and filtering tests ran on different sockets, every test answered
    exchanges = {ex.test: ex for ex in report.observations.servers[0].exchanges}
    assert set(exchanges) == {"I", "II", "III", "IV", "C-II", "C-III", "F-I", "F-II", "F-III"}
    assert all(ex.answered for ex in exchanges.values())
    assert exchanges["I"].local.port != exchanges["F-I"].local.port
    assert exchanges["F-II"].source == server.other_address
    # every test answered, so no no-reply window was waited out (the 0.5 s target itself is bench/bench_nat.py's)
    assert report.duration_ms < 2000


# --------------------------------------------------------------------------- loopback: coturn


def test_coturn_two_addresses_says_no_nat_open(coturn_rfc5780):
    report = discover_nat([f"127.0.0.1:{coturn_rfc5780}"])
    assert_open(report, "Coturn")
    assert report.servers[0].other_address.port == coturn_rfc5780 + 1


def test_coturn_cli_json_is_one_versioned_document(coturn_rfc5780):
    proc = natkit("nat", f"stun:127.0.0.1:{coturn_rfc5780}", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one document
    assert doc["schema"] == "natkit.nat/1" and doc["status"] == "determined"
    assert doc["mapping"]["value"] == "none" and doc["filtering"]["value"] == "none"
    assert doc["classic"]["value"] == "open internet"
    assert doc["public_address"].startswith("127.0.0.1:")
    assert proc.stderr == ""  # NATKIT_QUIET: no progress lines


def test_coturn_cli_text(coturn_rfc5780):
    proc = natkit("nat", f"127.0.0.1:{coturn_rfc5780}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("NAT behaviour: no NAT, no filtering (open)\n")
    assert "classic name   open internet" in proc.stdout and "RFC 5780: usable" in proc.stdout
    assert "hairpinning        not tested (use --hairpin)" in proc.stdout


def test_coturn_hairpin_and_lifetime_on_a_host_without_nat(coturn_rfc5780):
    report = discover_nat([f"127.0.0.1:{coturn_rfc5780}"], hairpin=True, lifetime=True, lifetime_max=5)
    assert report.hairpinning.value is None and "not applicable" in report.hairpinning.reason
    assert report.observations.hairpin.received is True  # two loopback sockets reach each other
    # coturn with RFC 5780 honours RESPONSE-PORT; without NAT there is nothing to time
    lifetime = report.observations.lifetime
    assert lifetime.response_port is True and lifetime.skipped and lifetime.samples == ()
    assert "not applicable" in report.mapping_lifetime.reason
    assert report.duration_ms < 1000


def test_coturn_single_address_gives_filtering_unknown(coturn_single):
    report = discover_nat([f"127.0.0.1:{coturn_single}"])
    assert report.filtering.value is None and "no OTHER-ADDRESS" in report.filtering.reason
    assert report.mapping.value is Mapping.NONE  # the mapped address is the local one: still true
    assert report.verdict == "no NAT, filtering unknown" and report.classic.value is None
    assert report.status == "no_usable_server" and exit_code(report) == 3
    assert report.servers[0].rfc5780.value is False
    assert not report.determined and report.confidence != "high"
    sent = [ex.test for ex in report.observations.servers[0].exchanges]
    assert sent == ["I", "F-I"]  # nothing was sent to an alternate address
    proc = natkit("nat", f"127.0.0.1:{coturn_single}", "--json")
    assert proc.returncode == 3 and json.loads(proc.stdout)["status"] == "no_usable_server"


def test_mixed_servers_use_the_rfc5780_one(coturn_single, coturn_rfc5780):
    report = discover_nat([f"127.0.0.1:{coturn_single}", f"127.0.0.1:{coturn_rfc5780}"])
    assert report.status == "determined" and report.rfc5780_server == f"127.0.0.1:{coturn_rfc5780}"
    assert [s.rfc5780.value for s in report.servers] == [False, True]


def test_ipv6_single_address_server(coturn_factory):
    from natkit.errors import NatkitError

    try:
        port = coturn_factory(("::1",))
    except NatkitError as exc:  # no IPv6 on loopback here
        pytest.skip(f"coturn on ::1 did not start: {exc}")
    report = discover_nat([f"[::1]:{port}"])
    assert report.mapping.value is Mapping.NONE and report.filtering.value is None
    assert report.public_address.host == "::1"


# --------------------------------------------------------------------------- loopback: stund


def test_stund_says_no_nat_open(stund_server):
    report = discover_nat([f"127.0.0.1:{stund_server}"], hairpin=True, lifetime=True, lifetime_max=5)
    assert_open(report, "Vovida")
    assert any("CHANGED-ADDRESS" in i for i in report.servers[0].issues)  # RFC 3489 attributes
    # stund predates RESPONSE-PORT (RFC 5780 §7.5) and drops requests that carry it
    assert report.observations.lifetime.response_port is None
    assert report.observations.lifetime.detail == "no answer to a request carrying RESPONSE-PORT"
    # and with no NAT there is no mapping to time: the verdict says so, whatever the server supports
    assert report.mapping_lifetime.value is None
    assert report.mapping_lifetime.reason == "not applicable: no NAT, no mapping to expire"


def test_stund_cli(stund_server):
    proc = natkit("nat", f"127.0.0.1:{stund_server}", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["classic"]["value"] == "open internet"


# --------------------------------------------------------------------------- no answers, bad input


def test_nothing_listening_is_udp_blocked():
    port = free_pair_port()
    started = time.monotonic()
    proc = natkit("nat", f"127.0.0.1:{port}", "--json", "--timeout", "0.3")
    assert time.monotonic() - started < 5
    assert proc.returncode == 3, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "udp_blocked" and doc["udp_blocked"]["value"] is True
    assert doc["classic"]["value"] == "UDP blocked"


@pytest.mark.parametrize("args", [("nat",), ("nat", "stuns:127.0.0.1"), ("nat", "127.0.0.1:99999"),
                                  ("nat", "127.0.0.1", "--timeout", "0"), ("nat", "127.0.0.1", "--lifetime", "--lifetime-max", "900")])
def test_usage_errors_exit_2(args):
    proc = natkit(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr


def test_nat_command_imports_nothing_heavy(coturn_rfc5780):
    code = (
        "import sys\n"
        "from natkit.cli.app import main\n"
        f"sys.argv = ['natkit', 'nat', '127.0.0.1:{coturn_rfc5780}', '--json']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('rich', 'aiortc', 'av', 'docker', 'aioice.ice') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    assert "HEAVY []" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- real NATs: natkit.lab

# declared lab behaviour -> what natkit nat must say (RFC 4787 terms, classic name)
LAB_TRUTH = {
    "open1": (Mapping.NONE, Filtering.NONE, "open internet"),
    "fc1": (Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT, "full cone"),
    "rc1": (Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT, "restricted cone"),
    "prc1": (Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, "port-restricted cone"),
    "sym1": (Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, "symmetric"),
}
STUND_PORT = 3490  # stund in the lab's server namespace, next to the lab's coturn on 3478/3479


def require_lab() -> None:
    try:
        from natkit.pytest_plugin import require_lab as plugin_require_lab
    except ImportError:  # older plugin
        require_root_netns()
        require_coturn()
    else:
        plugin_require_lab(True)


def lab_nat(lab, host: str, *args: str, timeout: float = 60.0) -> tuple[dict, float, int]:
    """Run ``natkit nat ... --json`` inside a lab host: (document, wall seconds, exit code)."""
    started = time.monotonic()
    proc = lab.exec(host, [*NATKIT, "nat", *args, "--json"], timeout=timeout)
    wall = time.monotonic() - started
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout), wall, proc.returncode


@pytest.fixture(scope="module")
def behaviour_lab():
    """One lab, one host per NAT behaviour; its coturn (RFC 5780) plus a stund in the server namespace."""
    require_lab()
    from natkit.lab import LabSpec, NatLab

    lab = NatLab(LabSpec.peers(*("open", "full_cone", "restricted", "port_restricted", "symmetric")), verify=False, agents=False)
    lab.up()
    try:
        stund = shutil.which("stund") or "/usr/sbin/stund"
        if os.access(stund, os.X_OK):
            ip1, ip2 = lab.server_ips
            lab.popen("server", [stund, "-h", ip1, "-a", ip2, "-p", str(STUND_PORT), "-o", str(STUND_PORT + 1)],
                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield lab
    finally:
        lab.down()


@pytest.mark.integration
@pytest.mark.parametrize("server", ["coturn", "stund"])
@pytest.mark.parametrize("host", list(LAB_TRUTH))
def test_lab_verdict_equals_the_declared_nat(behaviour_lab, host, server):
    mapping, filtering, classic = LAB_TRUTH[host]
    if server == "stund":
        require_stund()
        target = f"{behaviour_lab.server_ips[0]}:{STUND_PORT}"
    else:
        target = behaviour_lab.stun_uri
    for run in range(3):  # repeated runs: the verdict must not flicker
        doc, wall, code = lab_nat(behaviour_lab, host, target)
        assert code == 0, (run, doc)
        assert doc["mapping"]["value"] == mapping.value, (run, doc["mapping"])
        assert doc["filtering"]["value"] == filtering.value, (run, doc["filtering"])
        assert doc["classic"]["value"] == classic, (run, doc["classic"])
        assert doc["confidence"] in ("high", "medium") and doc["status"] == "determined"
        # no timeout waited out; the 0.5 s discovery target is measured by bench/bench_nat.py, not asserted here
        assert doc["duration_ms"] < 2000, doc["duration_ms"]
        assert wall < 3.0  # whole process incl. ip netns exec; generous for a loaded CI machine


@pytest.mark.integration
def test_lab_mixed_servers(behaviour_lab):
    # coturn and stund together: both RFC 5780 capable; they must agree
    require_stund()
    doc, _, code = lab_nat(behaviour_lab, "prc1", behaviour_lab.stun_uri, f"{behaviour_lab.server_ips[0]}:{STUND_PORT}")
    assert code == 0 and doc["classic"]["value"] == "port-restricted cone"
    assert [s["rfc5780"]["value"] for s in doc["servers"]] == [True, True]
    assert not any("disagree" in n for n in doc["notes"])
    assert doc["port_preservation"]["value"] is True  # Linux masquerade keeps ports when it can


@pytest.mark.integration
def test_lab_hairpinning():
    require_lab()
    from natkit.lab import HostSpec, LabSpec, NatLab, NatSpec

    spec = LabSpec(nats=(NatSpec("hp", "port_restricted", hairpin=True), NatSpec("nohp", "port_restricted")),
                   hosts=(HostSpec("a", behind="hp"), HostSpec("b", behind="nohp")))
    with NatLab(spec, verify=False, agents=False) as lab:
        yes, _, code = lab_nat(lab, "a", lab.stun_uri, "--hairpin")
        assert code == 0 and yes["hairpinning"]["value"] is True, yes["hairpinning"]
        no, _, _ = lab_nat(lab, "b", lab.stun_uri, "--hairpin")
        assert no["hairpinning"]["value"] is False, no["hairpinning"]
        assert no["duration_ms"] < 2000  # hairpin runs inside the same no-reply window, not a timeout of its own


@pytest.mark.integration
def test_lab_mapping_lifetime():
    require_lab()
    from natkit.lab import LabSpec, NatLab

    with NatLab(LabSpec.peers("port_restricted", mapping_timeout=3), verify=False, agents=False) as lab:
        doc, wall, code = lab_nat(lab, "prc1", lab.stun_uri, "--lifetime", "--lifetime-max", "8")
        assert code == 0, doc
        bracket = doc["mapping_lifetime"]["value"]
        assert bracket is not None, doc["mapping_lifetime"]
        # idle UDP mappings live 3 s: alive at the 2 s (or 3 s) checkpoint, gone by the next one
        assert bracket["alive_s"] in (2, 3) and bracket["expired_s"] in (3, 4), bracket
        assert wall < 8  # stops at the first expired mapping, not at the 8 s bound


@pytest.mark.integration
def test_lab_udp_blocked_and_cgnat():
    require_lab()
    from natkit.lab import HostSpec, LabSpec, NatLab, NatSpec

    spec = LabSpec(
        nats=(NatSpec("fw", "port_restricted", udp_blocked=True), NatSpec("cgn", "full_cone"), NatSpec("home", "port_restricted", behind="cgn")),
        hosts=(HostSpec("blocked", behind="fw"), HostSpec("c", behind="cgn"), HostSpec("a", behind="home")),
    )
    with NatLab(spec, verify=False, agents=False) as lab:
        doc, wall, code = lab_nat(lab, "blocked", lab.stun_uri, "--timeout", "0.5")
        assert code == 3 and doc["status"] == "udp_blocked" and doc["udp_blocked"]["value"] is True
        assert wall < 3.0
        # a host in 100.64.0.0/10 behind the carrier's NAT
        doc, _, code = lab_nat(lab, "c", lab.stun_uri)
        assert code == 0 and doc["classic"]["value"] == "full cone"
        assert doc["cgnat"]["value"] is True, doc["cgnat"]
        # behind a home NAT behind the CGNAT: the cascade filters like its strictest box
        doc, _, code = lab_nat(lab, "a", lab.stun_uri)
        assert code == 0 and doc["classic"]["value"] == "port-restricted cone"
        assert doc["cgnat"]["value"] is None  # invisible to STUN from here: said so, not "false"


def test_a_dead_server_does_not_hold_up_the_run(coturn_rfc5780):
    dead = free_pair_port()
    report = discover_nat([f"127.0.0.1:{dead}", f"127.0.0.1:{coturn_rfc5780}"], timeout=5.0)
    assert report.status == "determined" and report.rfc5780_server == f"127.0.0.1:{coturn_rfc5780}"
    assert report.servers[0].answered is False
    assert "after another server answered" in report.observations.servers[0].exchanges[0].failure
    assert 900 < report.duration_ms < 2000  # the 1 s grace, not the 5 s timeout
