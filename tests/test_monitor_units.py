"""natkit monitor without servers: the config, the metrics collector, and the alert rules under promtool."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
from monitor_servers import require_prometheus

from natkit.errors import Failure, UsageError
from natkit.monitor.config import Module, load_config, parse_config
from natkit.monitor.metrics import MonitorState, exposition, probe_exposition, registry
from natkit.monitor.probe import ProbeResult, TlsFacts, internal_result, relay_lossy

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


# ---------------------------------------------------------------------------
# config


def test_config_secret_files_are_read_as_every_natkit_secret_file(tmp_path):
    """secret_file: its first secret line (a turn up rotation file works); password_file: the first
    non-blank line as written; an empty one is a usage error naming the table."""
    from natkit.monitor.config import parse_credentials

    (tmp_path / "s").write_text("# rotated\n\nnew-secret\nold-secret\n")
    (tmp_path / "pw").write_text("\ncorrect horse battery\n")
    (tmp_path / "empty").write_text("\n")
    assert parse_credentials("a", {"secret_file": str(tmp_path / "s")}, {}).secret == "new-secret"
    assert parse_credentials("b", {"username": "u", "password_file": str(tmp_path / "pw")}, {}).password == "correct horse battery"
    with pytest.raises(UsageError, match="credentials.c: secret file .* holds no secret"):
        parse_credentials("c", {"secret_file": str(tmp_path / "empty")}, {})
    with pytest.raises(UsageError, match="credentials.d: password file .* is empty"):
        parse_credentials("d", {"username": "u", "password_file": str(tmp_path / "empty")}, {})


def test_config_targets_credentials_and_defaults(tmp_path):
    (tmp_path / "pw").write_text("long-term-pw\n")
    doc = {
        "interval": 5, "timeout": 1.5, "listen": "127.0.0.1:0",
        "credentials": {"rest": {"secret_env": "S", "user": "probe", "ttl": 300},
                        "lt": {"username": "alice", "password_file": str(tmp_path / "pw")}},
        "targets": [{"name": "edge", "uris": ["turn:203.0.113.10", "turns:turn.example.org"], "credentials": "rest",
                     "expect_relayed_ip": "203.0.113.10", "checks": ["relay"]},
                    {"uri": "turn:198.51.100.7:3479?transport=tcp", "credentials": "lt"}],
        "healthz": {"target": "edge", "cache": 1},
        "modules": {"default": {"credentials": "rest", "allow": ["*.example.org", "198.51.100.0/24"]}},
    }
    cfg = parse_config(doc, env={"S": "the-secret"})
    assert [(t.name, t.transport, t.uri.port) for t in cfg.targets] == [
        ("edge", "udp", 3478), ("edge", "tls", 5349), ("turn:198.51.100.7:3479?transport=tcp", "tcp", 3479)]
    edge = cfg.targets[0]
    assert edge.checks == ("allocate", "relay") and edge.expect_relayed_ip == "203.0.113.10"
    assert not edge.wants("tls") and not cfg.targets[1].wants("binding")
    assert edge.credentials.kind == "rest" and edge.credentials.origin == "env S"
    user, password = edge.credentials.pair(now=1000)
    assert user == "1300:probe" and password and "the-secret" not in repr(cfg)
    assert cfg.targets[2].credentials.pair() == ("alice", "long-term-pw") and "long-term-pw" not in repr(cfg)
    assert (cfg.interval, cfg.timeout, cfg.healthz_cache, cfg.listen_address) == (5.0, 1.5, 1.0, ("127.0.0.1", 0))
    assert [t.transport for t in cfg.healthz_targets()] == ["udp", "tls"]
    module = cfg.modules["default"]
    assert module.allows("turn.example.org", cfg.configured_hosts())
    assert module.allows("198.51.100.9", cfg.configured_hosts())
    assert not module.allows("203.0.113.99", cfg.configured_hosts()) and not module.allows("example.org.evil", frozenset())


def test_module_without_allow_list_reaches_configured_hosts_only():
    assert Module("m").allows("203.0.113.10", frozenset({"203.0.113.10"}))
    assert not Module("m").allows("127.0.0.1", frozenset({"203.0.113.10"}))


@pytest.mark.parametrize("doc, message", [
    ({"targets": [{"uri": "turn:a"}], "credentials": {"a": {"secret": "x"}}}, "must not be written into the config"),
    ({"targets": [{"uri": "turn:a"}], "credentials": {"a": {"secret_env": "MISSING"}}}, "MISSING is empty or not set"),
    ({"targets": [{"uri": "turn:a"}], "credentials": {"a": {"secret_env": "S", "secret_file": "/x"}}}, "not both"),
    ({"targets": [{"uri": "turn:a"}], "credentials": {"a": {"secret_file": "/nonexistent/secret"}}}, "cannot read secret file /nonexistent/secret"),
    ({"targets": [{"uri": "stun:a"}]}, "is a STUN URI"),
    ({"targets": [{"uri": "turn:a", "checks": ["bogus"]}]}, "unknown check"),
    ({"targets": [{"uri": "turn:a", "colour": "red"}]}, "unknown key(s) colour"),
    ({"targets": [{"uri": "turn:a"}], "interval": 0.1}, "interval must be a number from 1"),
    ({"targets": [{"uri": "turn:a"}], "max_echo_loss": 1.5}, "max_echo_loss must be a number from 0 to 1"),
    ({"targets": [{"uri": "turn:a"}], "probe_concurrency": 0}, "probe_concurrency must be a number from 1"),
    ({"targets": [{"uri": "turn:a"}], "listen": "nowhere"}, "not host:port"),
    ({"targets": [{"name": "x", "uris": ["turn:a", "turn:b"]}]}, "has two udp URIs"),
    ({"targets": [{"uri": "turn:a", "credentials": "nope"}]}, "no [credentials.nope] table"),
    ({"targets": [{"uri": "turn:a", "expect_relayed_ip": "nope"}]}, "must be an IP address"),
    ({"targets": [{"uri": "turn:a"}], "healthz": {"target": "other"}}, "not a configured target"),
    ({"target": []}, "unknown key(s) target"),
])
def test_config_errors_name_the_key(doc, message):
    with pytest.raises(UsageError) as info:
        parse_config(doc, env={"S": "s"})
    assert message in info.value.message
    assert "x" != info.value.message  # the literal secret is never echoed back
    assert "hunter" not in info.value.message


def test_load_config_reports_bad_toml_and_no_targets(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("interval = \n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(UsageError, match="no targets"):
        load_config(None)


# ---------------------------------------------------------------------------
# metrics


def result(target="edge", transport="udp", ok=True, **kw) -> ProbeResult:
    base = {"target": target, "uri": f"turn:{target}", "transport": transport, "ok": ok, "up": True, "exit_code": 0 if ok else 6,
                "started": 1_700_000_000.0, "duration_ms": 12.0, "binding_rtt_ms": 1.5, "allocate_ms": 4.0, "credential_kind": "rest",
                "credential_accepted": True, "relayed": "203.0.113.10:50000", "expect_relayed_ip": "203.0.113.10", "relayed_match": True,
                "relay_ok": True, "echo_sent": 5, "echo_received": 5, "echo_rtt_ms": 2.0, "echo_rtt_max_ms": 3.0, "tls": None, "errors": (),
                "failures": ()}
    base.update(kw)
    return ProbeResult(**base)


def samples(text: bytes) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exposition_values_and_units():
    state = MonitorState()
    state.observe(result())
    tls = TlsFacts(chain_valid=False, chain_error="self-signed", days_left=2.5, not_after="2030-01-01T00:00:00+00:00", subject="CN=x")
    state.observe(result(transport="tls", ok=False, tls=tls, errors=(("tls", "tls"), ("allocate", "486")), allocate_ms=None,
                         relay_ok=False, echo_sent=0, echo_received=0, echo_rtt_ms=None, binding_rtt_ms=None, credential_accepted=True))
    s = samples(exposition(registry(state, process=False)))
    udp = (("target", "edge"), ("transport", "udp"))
    tlsl = (("target", "edge"), ("transport", "tls"))
    assert s[("natkit_monitor_probe_success", udp)] == 1 and s[("natkit_monitor_probe_success", tlsl)] == 0
    assert s[("natkit_monitor_binding_rtt_seconds", udp)] == pytest.approx(0.0015)
    assert ("natkit_monitor_binding_rtt_seconds", tlsl) not in s  # not measured: no sample, not 0
    assert s[("natkit_monitor_allocate_latency_seconds_bucket", (("le", "0.002"), *udp))] == 0
    assert s[("natkit_monitor_allocate_latency_seconds_bucket", (("le", "0.005"), *udp))] == 1
    assert s[("natkit_monitor_allocate_latency_seconds_sum", udp)] == pytest.approx(0.004)
    assert s[("natkit_monitor_relay_echo_loss_ratio", udp)] == 0 and ("natkit_monitor_relay_echo_loss_ratio", tlsl) not in s
    assert s[("natkit_monitor_tls_cert_days_left", tlsl)] == 2.5 and s[("natkit_monitor_tls_chain_valid", tlsl)] == 0
    assert s[("natkit_monitor_tls_cert_expiry_timestamp_seconds", tlsl)] == 1893456000
    assert s[("natkit_monitor_errors_total", (("code", "486"), ("step", "allocate"), *tlsl))] == 1
    assert s[("natkit_monitor_relayed_address_match", udp)] == 1
    assert s[("natkit_monitor_relayed_address_info", (("expected", "203.0.113.10"), ("seen", "203.0.113.10"), *udp))] == 1
    assert s[("natkit_monitor_credential_accepted", (("kind", "rest"), *udp))] == 1
    assert s[("natkit_monitor_last_success_timestamp_seconds", udp)] == pytest.approx(1_700_000_000.012)
    assert ("natkit_monitor_last_success_timestamp_seconds", tlsl) not in s
    assert s[("natkit_monitor_probes_total", (("result", "failure"), *tlsl))] == 1


def test_series_stay_bounded_over_many_probes():
    state = MonitorState()
    reg = registry(state, process=False)
    for i in range(2000):
        ok = i % 3 != 0
        state.observe(result(target=f"t{i % 20}", transport=("udp", "tcp")[i % 2], ok=ok, relayed=f"203.0.113.{i % 7}:{50000 + i}",
                             errors=() if ok else (("allocate", "508"),), allocate_ms=float(i % 50)))
    first = samples(exposition(reg))
    for i in range(2000):
        state.observe(result(target=f"t{i % 20}", transport=("udp", "tcp")[i % 2], relayed=f"203.0.113.{i % 7}:{60000 + i}",
                             allocate_ms=float(i % 50)))
    second = samples(exposition(reg))
    assert set(first) == set(second)  # same series: counts grow, label sets do not
    # the one label from traffic (seen: the XOR-RELAYED-ADDRESS IP) has one live series per (target, transport): the latest
    info = {dict(k[1])["target"] + "/" + dict(k[1])["transport"]: dict(k[1])["seen"] for k in second
            if k[0] == "natkit_monitor_relayed_address_info"}
    assert len(info) == 20 and info["t19/tcp"] == f"203.0.113.{1999 % 7}" and info["t0/udp"] == f"203.0.113.{1980 % 7}"


def test_an_internal_error_reads_as_a_failed_probe_and_does_not_refresh_last_probe():
    from natkit.monitor.config import cli_target

    state = MonitorState()
    state.expect([("edge", "udp")], 15.0, now=1_699_999_000.0)
    reg = registry(state, process=False)
    udp = (("target", "edge"), ("transport", "udp"))
    assert samples(exposition(reg))[("natkit_monitor_last_probe_timestamp_seconds", udp)] == 1_699_999_000.0  # before any result
    state.observe(result(target="edge"))  # a good probe ...
    target = dataclasses.replace(cli_target("turn:edge", state_credentials()), name="edge")
    bad = internal_result(target, ValueError("boom"), started=1_700_000_100.0, duration_ms=3.0)
    state.observe(bad)  # ... then one that raised
    s = samples(exposition(reg))
    assert s[("natkit_monitor_probe_success", udp)] == 0
    assert ("natkit_monitor_up", udp) not in s and ("natkit_monitor_relay_success", udp) not in s  # the server was not asked
    assert s[("natkit_monitor_errors_total", (("code", "internal"), ("step", "probe"), *udp))] == 1
    assert s[("natkit_monitor_last_probe_timestamp_seconds", udp)] == pytest.approx(1_700_000_000.012)  # the good probe's end
    assert s[("natkit_monitor_last_success_timestamp_seconds", udp)] == pytest.approx(1_700_000_000.012)
    assert s[("natkit_monitor_probe_interval_seconds", udp)] == 15
    assert bad.exit_code == 70 and bad.failures[0].kind == "internal" and "ValueError: boom" in bad.reason


def state_credentials():
    from natkit.monitor.config import CredentialSource

    return CredentialSource("t", "rest", secret="s")


@pytest.mark.parametrize("sent, received, max_loss, lossy", [
    (5, 5, 0.2, False), (5, 4, 0.2, False), (5, 3, 0.2, True), (5, 1, 0.2, True),  # at most 1 of 5 lost by default
    (5, 4, 0.0, True), (10, 8, 0.2, False), (10, 7, 0.2, True), (1, 1, 0.0, False), (3, 0, 1.0, False), (0, 0, 0.2, False),
])
def test_relay_loss_rule(sent, received, max_loss, lossy):
    assert relay_lossy(sent, received, max_loss) is lossy


def test_max_echo_loss_and_probe_concurrency_are_read_with_defaults():
    cfg = parse_config({"targets": [{"uri": "turn:a"}]})
    assert (cfg.max_echo_loss, cfg.probe_concurrency) == (0.2, 8)
    cfg = parse_config({"targets": [{"uri": "turn:a"}], "max_echo_loss": 0, "probe_concurrency": 2})
    assert (cfg.max_echo_loss, cfg.probe_concurrency) == (0.0, 2)


def test_probe_exposition_has_blackbox_names():
    s = samples(probe_exposition(result(ok=False, duration_ms=250.0)))
    assert s[("probe_success", ())] == 0 and s[("probe_duration_seconds", ())] == 0.25
    assert s[("natkit_monitor_probe_success", (("target", "edge"), ("transport", "udp")))] == 0


def test_failures_serialise_without_secrets():
    from natkit.model import to_jsonable

    r = result(failures=(Failure("auth_refused", "allocate", "authentication refused: 401", "turn:edge"),))
    doc = to_jsonable(r)
    assert doc["failures"][0]["exit_code"] == 5 and doc["errors"] == []
    assert dataclasses.asdict(r)["credential_kind"] == "rest"


# ---------------------------------------------------------------------------
# alert rules (promtool)


def test_rules_pass_promtool_check():
    require_prometheus()
    out = subprocess.run(["promtool", "check", "rules", "natkit-monitor-rules.yml"], cwd=RULES, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 11 rules found" in out.stdout


def test_rules_unit_tests_pass():
    require_prometheus()
    out = subprocess.run(["promtool", "test", "rules", "natkit-monitor-rules.test.yml"], cwd=RULES, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("rule, broken, alert", [
    ("natkit_monitor_up == 0", "natkit_monitor_up == 7", "NatkitTurnDown"),
    ("natkit_monitor_relay_echo_loss_ratio[10m]) > 0.1", "natkit_monitor_relay_echo_loss_ratio[10m]) > 0.5", "NatkitTurnRelayLossy"),
    ("natkit_monitor_last_probe_timestamp_seconds > 3 *", "natkit_monitor_last_probe_timestamp_seconds > 30 *", "NatkitMonitorProbesStale"),
    ("absent(natkit_monitor_last_probe_timestamp_seconds)", "absent(up)", "NatkitMonitorAbsent"),
])
def test_rules_unit_tests_fail_when_a_rule_is_broken(tmp_path, rule, broken, alert):
    """The same tests against rules with one alert broken must fail: the tests assert on the alerts."""
    require_prometheus()
    rules = (RULES / "natkit-monitor-rules.yml").read_text()
    assert rules.count(rule) == 1
    (tmp_path / "natkit-monitor-rules.yml").write_text(rules.replace(rule, broken))
    (tmp_path / "natkit-monitor-rules.test.yml").write_text((RULES / "natkit-monitor-rules.test.yml").read_text())
    out = subprocess.run(["promtool", "test", "rules", "natkit-monitor-rules.test.yml"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert out.returncode != 0 and alert in out.stdout + out.stderr


def test_both_rules_files_are_the_same():
    """deploy/prometheus/ is what operators copy, natkit/monitor/ what the package ships and renders: one content
    (the first is a symlink to the second; an editor or `sed -i` that replaces the link must not let them drift)."""
    shipped = Path(__file__).resolve().parent.parent / "natkit" / "monitor" / "natkit-monitor-rules.yml"
    assert shipped.read_text() == (RULES / "natkit-monitor-rules.yml").read_text()


# ---------------------------------------------------------------------------
# the monitor's HTTP server


def test_http_server_methods_errors_keepalive_and_bounds():
    import asyncio
    import socket

    from natkit.monitor.http import MAX_CONNECTIONS, HttpServer, Response

    async def hello(request):
        return Response.text(200, f"hi {request.query.get('who', '?')}\n")

    async def broken(request):
        raise ValueError("boom")

    async def exchange(port: int, data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await writer.drain()
        out = await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        return out

    async def scenario() -> dict:
        sock = socket.create_server(("127.0.0.1", 0))
        sock.setblocking(False)
        server = HttpServer(sock, {"/hello": hello, "/broken": broken})
        await server.start()
        port = sock.getsockname()[1]
        out = {}
        try:
            out["get"] = await exchange(port, b"GET /hello?who=you HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            out["head"] = await exchange(port, b"HEAD /hello HTTP/1.1\r\nConnection: close\r\n\r\n")
            out["post"] = await exchange(port, b"POST /hello HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            out["missing"] = await exchange(port, b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
            out["broken"] = await exchange(port, b"GET /broken HTTP/1.1\r\nConnection: close\r\n\r\n")
            out["garbage"] = await exchange(port, b"\x16\x03\x01 not http\r\n\r\n")
            out["huge"] = await exchange(port, b"GET /hello HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n")
            # keep-alive: two requests, two answers on one connection
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /hello?who=1 HTTP/1.1\r\n\r\nGET /hello?who=2 HTTP/1.1\r\nConnection: close\r\n\r\n")
            out["keepalive"] = await asyncio.wait_for(reader.read(65536), 5)
            while chunk := await asyncio.wait_for(reader.read(65536), 5):
                out["keepalive"] += chunk
            writer.close()
            # more idle connections than allowed: the extra ones are closed at once, the server still answers after
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_CONNECTIONS + 5)]
            await asyncio.sleep(0.2)
            closed = 0
            for r, _ in idle:
                try:
                    if await asyncio.wait_for(r.read(1), 0.05) == b"":
                        closed += 1
                except TimeoutError:
                    pass
            out["closed_extra"] = closed
            for _, w in idle:
                w.close()
            await asyncio.sleep(0.1)
            out["after"] = await exchange(port, b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n")
        finally:
            await server.stop()
        return out

    out = asyncio.run(scenario())
    assert out["get"].startswith(b"HTTP/1.1 200 OK\r\n") and out["get"].endswith(b"\r\n\r\nhi you\n")
    assert b"Content-Length: 5\r\n" in out["head"] and out["head"].endswith(b"\r\n\r\n")
    assert out["post"].startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in out["post"]
    assert out["missing"].startswith(b"HTTP/1.1 404 ")
    assert out["broken"].startswith(b"HTTP/1.1 500 ") and b"ValueError: boom" in out["broken"]
    assert out["garbage"].startswith(b"HTTP/1.1 400 ")
    assert out["huge"].startswith(b"HTTP/1.1 431 ")
    assert out["keepalive"].count(b"HTTP/1.1 200 OK") == 2 and b"hi 1\n" in out["keepalive"] and b"hi 2\n" in out["keepalive"]
    assert out["closed_extra"] == 5
    assert out["after"].startswith(b"HTTP/1.1 200 OK")


def test_probe_requests_beyond_the_concurrency_limit_get_503_at_once():
    """/probe runs at most probe_concurrency probes at once (each holds two allocations on its target); one more is
    answered 503 with Retry-After at once, and a freed slot serves again. The probes are held open by the injected
    probe function, so the count in flight is exact, not a race against a server's speed."""
    import asyncio

    from natkit.monitor.server import Monitor

    config = parse_config({"interval": 3600, "listen": "127.0.0.1:0", "probe_concurrency": 2,
                           "targets": [{"name": "edge", "uri": "turn:127.0.0.1:9"}]})

    async def get(port: int, path: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        out = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return out

    async def scenario() -> dict:
        release = asyncio.Event()
        calls = []

        async def held_probe(target, **kw):
            calls.append(target.name)
            await release.wait()
            return result(target="edge")

        async with Monitor(config, prober=held_probe) as mon:
            held = [asyncio.ensure_future(get(mon.port, "/probe?target=edge")) for _ in range(2)]
            while mon._probes_in_flight < 2:
                await asyncio.sleep(0.01)
            extra = await get(mon.port, "/probe?target=edge")  # answered while the two are still held
            in_flight = mon._probes_in_flight
            release.set()
            done = await asyncio.gather(*held)
            after = await get(mon.port, "/probe?target=edge")
        return {"extra": extra, "in_flight": in_flight, "done": done, "after": after, "calls": len(calls)}

    out = asyncio.run(scenario())
    assert out["extra"].startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1\r\n" in out["extra"]
    assert b"2 /probe requests are running already" in out["extra"] and out["in_flight"] == 2
    assert all(r.startswith(b"HTTP/1.1 200 ") and b"probe_success 1.0" in r for r in out["done"])
    assert out["after"].startswith(b"HTTP/1.1 200 ")
    assert out["calls"] == 1 + 2 + 1  # the schedule's own first probe does not take a /probe slot; the refused one never probed
