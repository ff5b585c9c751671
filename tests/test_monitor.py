"""natkit monitor's probes against real coturn servers on loopback, and ``natkit monitor once``.

A healthy coturn over UDP, TCP and TLS; wrong credentials (401); nothing listening (unreachable); a coturn whose
``external-ip`` makes it hand out a relayed address that is not the expected one; a certificate about to expire
and one the monitor does not trust.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
from monitor_servers import Coturn

from natkit.monitor.config import CredentialSource, cli_target
from natkit.monitor.probe import probe


@pytest.fixture(scope="module")
def coturn(tmp_path_factory):
    with Coturn(tmp_path_factory.mktemp("monitor-coturn"), tls_days=90) as server:
        yield server


@pytest.fixture(scope="module")
def wrong_external_ip(tmp_path_factory):
    # coturn maps its relay address 127.0.0.1 to 127.0.0.5 in XOR-RELAYED-ADDRESS: what a wrong external-ip does
    with Coturn(tmp_path_factory.mktemp("monitor-extip"), external_ip="127.0.0.5/127.0.0.1") as server:
        yield server


@pytest.fixture(scope="module")
def expiring(tmp_path_factory):
    with Coturn(tmp_path_factory.mktemp("monitor-expiring"), tls_days=2.5) as server:
        yield server


def rest(server) -> CredentialSource:
    return CredentialSource("test", "rest", secret=server.secret)


def run(target, **kw):
    return asyncio.run(probe(target, **{"timeout": 2.0, "echoes": 5, **kw}))


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_healthy_server_every_check_passes(coturn, transport):
    uri = getattr(coturn, transport)
    r = run(cli_target(uri, rest(coturn), expect_relayed_ip="127.0.0.1", cafile=coturn.ca))
    assert r.ok and r.up and r.exit_code == 0, r.failures
    assert r.transport == transport
    assert 0 < r.binding_rtt_ms < 500 and 0 < r.allocate_ms < 1000
    assert r.credential_kind == "rest" and r.credential_accepted is True
    assert r.relayed.startswith("127.0.0.1:") and r.relayed_match is True
    assert r.relay_ok is True and (r.echo_sent, r.echo_received) == (5, 5) and r.echo_loss == 0.0
    assert 0 < r.echo_rtt_ms <= r.echo_rtt_max_ms < 500
    assert r.errors == () and r.failures == ()
    assert r.duration_ms < 1000  # the bound for a healthy server
    if transport == "tls":
        assert r.tls.chain_valid is True and 89 < r.tls.days_left < 90.1
    else:
        assert r.tls is None


def test_probe_cpu_per_probe_is_small(coturn):
    target = cli_target(coturn.udp, rest(coturn))

    async def many(n: int) -> float:
        await probe(target)  # warm: imports, SSL contexts
        started = time.process_time()
        for _ in range(n):
            assert (await probe(target)).ok
        return (time.process_time() - started) / n

    cpu = asyncio.run(many(10))
    assert cpu < 0.05, f"{cpu * 1000:.1f} ms CPU per probe"


def test_back_to_back_probes_never_meet_their_own_old_allocation(coturn):
    """The kernel may give a new socket the port of an allocation coturn still holds (a released 5-tuple lingers
    there briefly): that Allocate gets 437, about once in a few hundred back-to-back probes, and is retried once
    from another port (RFC 8656 §7.3) instead of failing the probe."""
    target = cli_target(coturn.udp, rest(coturn))

    async def many(n: int) -> list:
        return [r for r in [await probe(target) for _ in range(n)] if not r.ok]

    bad = asyncio.run(many(400))
    assert bad == [], [r.failures for r in bad[:3]]


def test_binding_rtt_of_a_distant_server_is_not_read_short():
    """A server 250 ms away (netem is not available here: a loopback responder that answers each Binding
    after 250 ms): the probe must not retransmit before the answer can arrive, or the RTT of the answered
    retransmission, measured from the last send, reads short (it read ~150 ms with a 0.1 s RTO)."""
    from natkit.model import TransportAddress
    from natkit.stun.codec import Class, Message, decode

    class Slow(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            request = decode(data)
            answer = Message(request.method, Class.RESPONSE, request.transaction_id,
                             [("XOR-MAPPED-ADDRESS", TransportAddress(addr[0], addr[1]))])
            asyncio.get_running_loop().call_later(0.25, self.transport.sendto, answer.encode(), addr)

    async def scenario():
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Slow, local_addr=("127.0.0.1", 0))
        try:
            port = transport.get_extra_info("sockname")[1]
            return await probe(cli_target(f"turn:127.0.0.1:{port}", CredentialSource("x", "rest", secret="s"), checks=("binding",)))
        finally:
            transport.close()

    r = asyncio.run(scenario())
    assert r.ok, r.failures
    assert 240 <= r.binding_rtt_ms < 400, r.binding_rtt_ms


def test_wrong_credentials_count_a_401_and_refused_credentials(coturn):
    r = run(cli_target(coturn.udp, CredentialSource("bad", "rest", secret="not-the-secret")))
    assert not r.ok and r.up and r.exit_code == 5
    assert r.credential_accepted is False and r.allocate_ms is None and r.relay_ok is False
    assert r.errors == (("allocate", "401"),)
    assert [f.kind for f in r.failures] == ["auth_refused"]  # once: the second allocation's 401 is the same failure


def test_nothing_listening_is_down_and_unreachable(coturn):
    from natkit.coturn.server import free_port

    r = run(cli_target(f"turn:127.0.0.1:{free_port()}", rest(coturn)))
    assert not r.ok and not r.up and r.exit_code == 4
    assert r.errors == (("binding", "unreachable"),) and r.binding_rtt_ms is None and r.relay_ok is False
    assert r.duration_ms < 500  # ICMP port unreachable ends it at once, not after the budget


def test_silent_server_times_out_within_the_budget(tmp_path):
    import socket

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # swallows every datagram, answers none
    sink.bind(("127.0.0.1", 0))
    try:
        target = cli_target(f"turn:127.0.0.1:{sink.getsockname()[1]}", CredentialSource("x", "rest", secret="s"))
        started = time.monotonic()
        r = run(target, timeout=0.6)
        took = time.monotonic() - started
    finally:
        sink.close()
    assert not r.ok and not r.up and r.exit_code == 4
    assert ("binding", "timeout") in r.errors
    assert 0.5 < took < 1.2, took


def test_wrong_external_ip_is_a_relayed_address_mismatch(wrong_external_ip):
    r = run(cli_target(wrong_external_ip.udp, rest(wrong_external_ip), expect_relayed_ip="127.0.0.1"))
    assert r.up and not r.ok
    assert r.relayed.startswith("127.0.0.5:") and r.relayed_match is False
    # coturn maps its own external-ip back to the relay address for peers on the same server, so the
    # two-allocation echo passes: only the comparison with the expected address catches a wrong external-ip
    assert r.relay_ok is True
    assert [(f.step, f.kind) for f in r.failures] == [("relayed_address", "check_failed")]
    assert "127.0.0.5" in r.failures[0].message and r.exit_code == 1


def test_without_an_expectation_the_relayed_address_is_not_judged(wrong_external_ip):
    r = run(cli_target(wrong_external_ip.udp, rest(wrong_external_ip)))
    assert r.ok and r.relayed_match is None and r.relayed.startswith("127.0.0.5:")


def test_expiring_certificate_days_left(expiring):
    r = run(cli_target(expiring.tls, rest(expiring), cafile=expiring.ca))
    assert r.ok, r.failures
    assert r.tls.chain_valid is True and 2.4 < r.tls.days_left < 2.6


def test_untrusted_certificate_is_reported_and_the_relay_still_measured(expiring):
    r = run(cli_target(expiring.tls, rest(expiring)))  # the system's CAs do not know the test certificate
    assert not r.ok and r.exit_code == 4
    assert r.tls.chain_valid is False and "not trusted" in r.tls.chain_error
    assert 2.4 < r.tls.days_left < 2.6
    assert ("tls", "tls") in r.errors
    assert r.relay_ok is True and r.echo_received == 5  # the unverified connection still proves the relay


def test_insecure_reports_days_left_without_judging_the_chain(expiring):
    r = run(cli_target(expiring.tls, rest(expiring), verify_tls=False))
    assert r.ok and r.tls.chain_valid is None and 2.4 < r.tls.days_left < 2.6


# ---------------------------------------------------------------------------
# natkit monitor once


def natkit(*args, env=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "natkit.cli.app", *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


def test_once_json_exit_codes_and_no_secret_anywhere(coturn, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(coturn.secret + "\n")
    ok = natkit("monitor", "once", "--json", "--target", coturn.udp, "--target", coturn.tcp, "--secret-file", str(secret_file),
                "--expect-relayed-ip", "127.0.0.1")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["schema"] == "natkit.monitor/1" and doc["ok"] is True
    assert [(r["transport"], r["relay_ok"], r["echo_received"]) for r in doc["results"]] == [("udp", True, 5), ("tcp", True, 5)]
    assert coturn.secret not in ok.stdout + ok.stderr
    bad = natkit("monitor", "once", "--json", "--target", coturn.udp, env={"NATKIT_TURN_SECRET": "wrong"})
    assert bad.returncode == 5 and json.loads(bad.stdout)["failures"][0]["kind"] == "auth_refused"
    assert "wrong" not in bad.stdout.replace("wrong_", "")


def test_once_config_file_and_text_output(coturn, wrong_external_ip, tmp_path):
    config = tmp_path / "monitor.toml"
    config.write_text(f"""
timeout = 2
[credentials.a]
secret_env = "SECRET_A"
[credentials.b]
secret_file = "{tmp_path / 'b'}"
[[targets]]
name = "edge-a"
uris = ["{coturn.udp}", "{coturn.tls}"]
credentials = "a"
cafile = "{coturn.ca}"
expect_relayed_ip = "127.0.0.1"
[[targets]]
name = "edge-b"
uri = "{wrong_external_ip.udp}"
credentials = "b"
expect_relayed_ip = "127.0.0.1"
""")
    (tmp_path / "b").write_text(wrong_external_ip.secret)
    out = natkit("monitor", "once", "--config", str(config), env={"SECRET_A": coturn.secret})
    assert out.returncode == 1, out.stdout + out.stderr  # edge-b's relayed address mismatch
    assert "edge-a (udp)  PASS" in out.stdout and "edge-a (tls)  PASS" in out.stdout and "edge-b (udp)  FAIL" in out.stdout
    assert "MISMATCH" in out.stdout and "days left, chain valid" in out.stdout
    assert coturn.secret not in out.stdout + out.stderr and wrong_external_ip.secret not in out.stdout + out.stderr


@pytest.mark.parametrize("args, message", [
    (["--target", "http://x"], "unsupported scheme"),
    ([], "no targets"),
    (["--target", "turn:127.0.0.1:3478", "--checks", "binding,nope"], "unknown check"),
    (["--target", "turn:127.0.0.1:3478", "--user", "u"], "never a password on the command line"),
])
def test_once_bad_input_is_one_line_exit_2(args, message):
    out = natkit("monitor", "once", *args, env={"NATKIT_TURN_SECRET": ""})
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_config_secret_literal_is_refused(tmp_path):
    config = tmp_path / "m.toml"
    config.write_text('[credentials.a]\nsecret = "hunter2"\n[[targets]]\nuri = "turn:127.0.0.1:3478"\n')
    out = natkit("monitor", "once", "--config", str(config))
    assert out.returncode == 2 and "must not be written into the config" in out.stderr and "hunter2" not in out.stderr


# ---------------------------------------------------------------------------
# natkit monitor serve, in process: the schedule, /probe's allow list, /healthz


def test_a_silent_target_never_delays_the_others_and_probe_respects_allow(coturn, tmp_path):
    import socket
    import urllib.error
    import urllib.request

    from natkit.monitor.config import parse_config
    from natkit.monitor.server import Monitor

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a target that swallows every request
    sink.bind(("127.0.0.1", 0))
    doc = {"interval": 1, "timeout": 1.5, "listen": "127.0.0.1:0", "credentials": {"c": {"secret_env": "S"}},
           "targets": [{"name": "silent", "uri": f"turn:127.0.0.1:{sink.getsockname()[1]}"},
                       {"name": "healthy", "uri": coturn.udp}],
           "healthz": {"target": "healthy", "cache": 0.5},
           "modules": {"default": {"credentials": "c", "allow": ["127.0.0.0/8"]}, "strict": {"credentials": "c", "allow": ["*.example.org"]}}}
    config = parse_config(doc, env={"S": coturn.secret})

    def get(url: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    async def scenario() -> dict:
        async with Monitor(config) as mon:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(4.2)
            probes = {k: sum(n for (t, _, _), n in mon.state.probes.items() if t == k) for k in ("silent", "healthy")}
            out = {"probes": probes, "silent": mon.state.latest[("silent", "udp")]}
            out["probe_ok"] = await loop.run_in_executor(None, get, f"{mon.url}/probe?target={coturn.tcp}")
            out["probe_denied"] = await loop.run_in_executor(None, get, f"{mon.url}/probe?target={coturn.tcp}&module=strict")
            out["probe_unknown"] = await loop.run_in_executor(None, get, f"{mon.url}/probe?target={coturn.tcp}&module=nope")
            out["healthz"] = await loop.run_in_executor(None, get, f"{mon.url}/healthz")
            return out

    try:
        out = asyncio.run(scenario())
    finally:
        sink.close()
    # healthy: a probe every second (first at once); silent: each takes its whole 1.5 s budget
    assert out["probes"]["healthy"] >= 4, out["probes"]
    assert 2 <= out["probes"]["silent"] <= 3, out["probes"]
    assert ("binding", "timeout") in out["silent"].errors and 1400 < out["silent"].duration_ms < 1700
    status, body = out["probe_ok"]
    assert status == 200 and "probe_success 1.0" in body and 'transport="tcp"' in body
    assert out["probe_denied"][0] == 403 and "does not allow" in out["probe_denied"][1]
    assert out["probe_unknown"][0] == 400
    assert out["healthz"][0] == 200 and out["healthz"][1].startswith("ok: healthy (udp)")


def test_a_probe_that_raises_reads_as_failing_and_every_target_goes_on(coturn, monkeypatch, capsys):
    """A bug in the probe (anything it raises but what the server does) must not end that target's schedule and leave
    its last good result on /metrics: the target reads as failing (probe_success 0, errors_total code internal, no
    `up`: the server was not asked), its last_probe_timestamp stops (the stale alert's input), /healthz says 503, the
    other target keeps being probed, and the error is logged once with its traceback, not every round."""
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from natkit.monitor import server as server_module
    from natkit.monitor.config import parse_config

    real_probe = server_module.probe
    rounds = {"broken": 0, "healthy": 0}

    async def buggy(target, **kw):  # the first round of "broken" is a real probe (success), every later one raises
        rounds[target.name] += 1
        if target.name == "broken" and rounds["broken"] > 1:
            raise ValueError("a bug in the probe")
        return await real_probe(target, **kw)

    monkeypatch.setattr(server_module, "probe", buggy)
    doc = {"interval": 1, "timeout": 1.5, "listen": "127.0.0.1:0", "credentials": {"c": {"secret_env": "S"}},
           "targets": [{"name": "broken", "uri": coturn.udp}, {"name": "healthy", "uri": coturn.tcp}],
           "healthz": {"target": "broken", "cache": 0.1}}
    config = parse_config(doc, env={"S": coturn.secret})

    def get(url: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    async def scenario() -> dict:
        async with server_module.Monitor(config) as mon:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(3.5)
            metrics = await loop.run_in_executor(None, get, f"{mon.url}/metrics")
            healthz = await loop.run_in_executor(None, get, f"{mon.url}/healthz")
            return {"metrics": metrics, "healthz": healthz, "rounds": dict(rounds)}

    out = asyncio.run(scenario())
    status, text = out["metrics"]
    assert status == 200
    s = {(x.name, x.labels.get("target"), x.labels.get("code") or x.labels.get("result")): x.value
         for f in text_string_to_metric_families(text) for x in f.samples if x.labels.get("transport") in ("udp", "tcp")}
    assert s[("natkit_monitor_probe_success", "broken", None)] == 0  # not its last good result
    assert s[("natkit_monitor_errors_total", "broken", "internal")] >= 2
    assert ("natkit_monitor_up", "broken", None) not in s
    assert s[("natkit_monitor_probes_total", "broken", "success")] == 1 and s[("natkit_monitor_probes_total", "broken", "failure")] >= 2
    # last_probe stopped at the end of broken's one real probe; healthy's moves on
    assert s[("natkit_monitor_last_probe_timestamp_seconds", "healthy", None)] - s[("natkit_monitor_last_probe_timestamp_seconds", "broken", None)] > 1.5
    assert s[("natkit_monitor_probe_success", "healthy", None)] == 1
    assert out["rounds"]["broken"] >= 4 and out["rounds"]["healthy"] >= 3, out["rounds"]  # both schedules went on
    assert out["healthz"][0] == 503 and "internal error in natkit's probe: ValueError: a bug in the probe" in out["healthz"][1]
    err = capsys.readouterr().err
    assert err.count("natkit monitor: internal error probing broken (udp)") == 1, err  # the healthz round's too: rate-limited
    assert "Traceback" in err and "ValueError: a bug in the probe" in err and coturn.secret not in err


def test_quota_486_no_port_508_and_denied_peer_403_are_counted_by_code_on_metrics(tmp_path):
    """Three refusals a real coturn gives the monitor's probe, each counted under its own code on /metrics:

    * 486 Allocation Quota Reached: with ``user-quota=1`` the probe's second allocation (same minted REST user)
      is refused, so the relay cannot be proved;
    * 508 Insufficient Capacity: a relay port range of one port holds one allocation, the other is refused;
    * 403 Forbidden: a coturn that denies its own relay range as peers (here loopback, without
      ``allow-loopback-peers``; in the field a relay-ip in a denied private range) refuses CreatePermission
      toward the other allocation, which is exactly what two clients relaying through the same server need."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from natkit.coturn.server import free_port
    from natkit.monitor.config import parse_config
    from natkit.monitor.server import Monitor

    one_port = free_port()
    with Coturn(tmp_path, user_quota=1, name="quota") as quota, Coturn(tmp_path, min_port=one_port, max_port=one_port, name="ports") as ports, \
            Coturn(tmp_path, allow_loopback_peers=False, allowed_peer_ranges=(), name="deny") as deny:
        doc = {"interval": 1, "timeout": 1.5, "listen": "127.0.0.1:0",
               "credentials": {"q": {"secret_env": "Q"}, "p": {"secret_env": "P"}, "d": {"secret_env": "D"}},
               "targets": [{"name": "quota", "uri": quota.udp, "credentials": "q"}, {"name": "ports", "uri": ports.udp, "credentials": "p"},
                           {"name": "deny", "uri": deny.udp, "credentials": "d"}]}
        config = parse_config(doc, env={"Q": quota.secret, "P": ports.secret, "D": deny.secret})

        async def scenario() -> str:
            async with Monitor(config) as mon:
                await asyncio.sleep(2.5)
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(None, lambda: urllib.request.urlopen(f"{mon.url}/metrics", timeout=5).read().decode())

        text = asyncio.run(scenario())
    samples = [(x.name, x.labels, x.value) for f in text_string_to_metric_families(text) for x in f.samples]

    def value(name, **labels):
        found = [v for n, lab, v in samples if n == name and all(lab.get(k) == w for k, w in labels.items())]
        return sum(found) if found else None

    # the main and the second allocation race: either may be the one refused, so the 486 is summed over both steps
    assert value("natkit_monitor_errors_total", target="quota", code="486") >= 2
    assert value("natkit_monitor_up", target="quota") == 1 and value("natkit_monitor_probe_success", target="quota") == 0
    assert value("natkit_monitor_relay_success", target="quota") == 0
    assert value("natkit_monitor_errors_total", target="ports", code="508") >= 2
    assert value("natkit_monitor_up", target="ports") == 1 and value("natkit_monitor_relay_success", target="ports") == 0
    assert value("natkit_monitor_errors_total", target="deny", step="permission", code="403") >= 2
    assert value("natkit_monitor_relay_success", target="deny") == 0 and value("natkit_monitor_probe_success", target="deny") == 0
    assert value("natkit_monitor_credential_accepted", target="deny") == 1  # allocating worked; only the peer was refused
    assert value("natkit_monitor_relay_echoes_sent_total", target="deny") == 0
