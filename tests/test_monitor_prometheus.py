"""A real Prometheus scrapes ``natkit monitor serve`` watching real coturn servers on loopback.

Three coturns: "edge" (healthy, UDP and TLS), "extip" (its external-ip makes XOR-RELAYED-ADDRESS say 127.0.0.5
while 127.0.0.1 is expected) and "expiring" (a TLS certificate with 2.5 days left). Prometheus (Debian's binary,
temporary config and storage, 500 ms scrape interval) scrapes /metrics and, blackbox style, /probe; the test
reads values back through Prometheus' HTTP API. Then "edge" is stopped: the failure must be in Prometheus within
two probe intervals and /healthz must answer 503; restarted, both recover.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from monitor_servers import Coturn, Prometheus, require_prometheus

INTERVAL = 2.0  # the monitor's probe interval, s
RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "natkit-monitor-rules.yml"


def http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    require_prometheus()
    base = tmp_path_factory.mktemp("monitor-prom")
    servers = {"edge": Coturn(base, tls_days=90, name="edge"), "extip": Coturn(base, external_ip="127.0.0.5/127.0.0.1", name="extip"),
               "expiring": Coturn(base, tls_days=2.5, name="expiring")}
    try:
        for s in servers.values():
            s.start()
        yield base, servers
    finally:
        for s in servers.values():
            s.stop()


@pytest.fixture(scope="module")
def monitor(fleet):
    base, s = fleet
    config = base / "monitor.toml"
    config.write_text(f"""
interval = {INTERVAL}
timeout = 1.5
listen = "127.0.0.1:0"
[healthz]
target = "edge"
cache = 1
""" + "".join(f"""
[credentials.{name}]
secret_env = "SECRET_{name.upper()}"
""" for name in s) + f"""
[[targets]]
name = "edge"
uris = ["{s['edge'].udp}", "{s['edge'].tls}"]
credentials = "edge"
cafile = "{s['edge'].ca}"
expect_relayed_ip = "127.0.0.1"
[[targets]]
name = "extip"
uri = "{s['extip'].udp}"
credentials = "extip"
expect_relayed_ip = "127.0.0.1"
[[targets]]
name = "expiring"
uri = "{s['expiring'].tls}"
credentials = "expiring"
cafile = "{s['expiring'].ca}"
""")
    env = {**os.environ, **{f"SECRET_{n.upper()}": srv.secret for n, srv in s.items()}}
    proc = subprocess.Popen([sys.executable, "-m", "natkit.cli.app", "monitor", "serve", "--config", str(config), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [proc.stdout.readline()]
        while lines[-1] and lines[-1] != "}\n":  # one indented JSON document, closed by "}" alone on a line
            lines.append(proc.stdout.readline())
        doc = json.loads("".join(lines))
        assert doc["ok"], doc
        yield doc["url"], proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        stderr = proc.stderr.read()
        for srv in s.values():  # secrets never in the monitor's output
            assert srv.secret not in stderr


@pytest.fixture(scope="module")
def prometheus(monitor, fleet):
    url, _ = monitor
    hostport = url.split("//", 1)[1]
    jobs = {"natkit-monitor": ("/metrics", [hostport], None),
            "natkit-probe": ("/probe", [hostport], {"target": [fleet[1]["edge"].udp]})}
    with Prometheus(jobs, scrape="500ms", rules=str(RULES)) as prom:
        yield prom


def one(result: dict, **labels) -> float | None:
    for key, value in result.items():
        if all((k, v) in key for k, v in labels.items()):
            return value
    return None


def test_prometheus_sees_every_value(prometheus, monitor):
    prom = prometheus
    _, success = prom.wait_for("natkit_monitor_probe_success", lambda r: len(r) == 4, timeout=15)
    assert one(success, target="edge", transport="udp") == 1
    assert one(success, target="edge", transport="tls") == 1
    assert one(success, target="expiring", transport="tls") == 1
    assert one(success, target="extip", transport="udp") == 0  # the wrong relayed address fails the probe
    match = prom.query("natkit_monitor_relayed_address_match")
    assert one(match, target="extip") == 0 and one(match, target="edge", transport="udp") == 1
    info = prom.query("natkit_monitor_relayed_address_info")
    assert one(info, target="extip", seen="127.0.0.5", expected="127.0.0.1") == 1
    days = prom.query("natkit_monitor_tls_cert_days_left")
    assert 2.4 < one(days, target="expiring") < 2.6 and 89 < one(days, target="edge") < 90.1
    assert one(prom.query("natkit_monitor_tls_chain_valid"), target="edge") == 1
    assert one(prom.query("natkit_monitor_relay_success"), target="edge", transport="udp") == 1
    assert one(prom.query("natkit_monitor_relay_echo_loss_ratio"), target="edge", transport="tls") == 0
    assert 0 < one(prom.query("natkit_monitor_binding_rtt_seconds"), target="edge", transport="udp") < 0.5
    assert one(prom.query("natkit_monitor_credential_accepted"), target="edge", kind="rest") == 1
    p90 = prom.query('histogram_quantile(0.9, sum by (target, transport, le) (natkit_monitor_allocate_latency_seconds_bucket{target="edge"}))')
    assert 0 < one(p90, transport="udp") <= 1.0
    targets = {t["labels"]["job"]: t for t in prom.api("targets")["activeTargets"]}
    _, blackbox = prom.wait_for('probe_success{job="natkit-probe"}', lambda r: len(r) == 1, timeout=5)
    assert list(blackbox.values()) == [1.0], targets["natkit-probe"]
    rules = prom.api("rules")["groups"][0]["rules"]
    assert len(rules) == 11 and all(r["health"] == "ok" for r in rules)
    # the alerts whose conditions hold are pending in the real Prometheus (their `for:` has not passed yet)
    deadline = time.monotonic() + 5
    while True:
        alerts = {(a["labels"]["alertname"], a["labels"].get("target"), a["labels"].get("severity"), a["state"])
                  for a in prom.api("alerts")["alerts"]}
        if len(alerts) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    alerts = {a[:3] for a in alerts if a[3] == "pending"}
    assert ("NatkitTurnExternalIpMismatch", "extip", "critical") in alerts
    assert ("NatkitTurnCertificateExpiring", "expiring", "critical") in alerts
    assert ("NatkitTurnCertificateExpiring", "expiring", "warning") in alerts
    assert not any(name == "NatkitTurnDown" for name, _, _ in alerts)


def test_stop_shows_within_two_intervals_and_healthz_503_then_recovers(prometheus, monitor, fleet):
    url, _ = monitor
    edge = fleet[1]["edge"]
    prom = prometheus
    prom.wait_for('natkit_monitor_probe_success{target="edge"}', lambda r: len(r) == 2 and set(r.values()) == {1.0}, timeout=15)
    status, body = http(url + "/healthz")
    assert status == 200 and body.startswith("ok: edge (udp): allocated 127.0.0.1:"), body

    edge.stop()
    stopped = time.monotonic()
    waited, _down = prom.wait_for('natkit_monitor_up{target="edge"}', lambda r: len(r) == 2 and set(r.values()) == {0.0},
                                 timeout=2 * INTERVAL + 1)
    assert waited <= 2 * INTERVAL, f"the failure reached Prometheus after {waited:.1f} s"
    assert set(prom.query('natkit_monitor_probe_success{target="edge"}').values()) == {0.0}
    errors = prom.query('natkit_monitor_errors_total{target="edge"}')
    assert one(errors, transport="udp", code="unreachable") >= 1 and one(errors, transport="tls", code="unreachable") >= 1
    status, body = http(url + "/healthz")
    assert status == 503 and body.startswith("unhealthy: edge (") and ("unreachable" in body or "refused" in body), body
    assert time.monotonic() - stopped < 3 * INTERVAL
    # the other targets never missed a beat: one dead target does not delay the others
    assert one(prom.query("natkit_monitor_probe_success"), target="expiring") == 1

    edge.start()
    restarted = time.monotonic()
    waited, _ = prom.wait_for('natkit_monitor_probe_success{target="edge"}', lambda r: len(r) == 2 and set(r.values()) == {1.0},
                              timeout=2 * INTERVAL + 1)
    assert waited <= 2 * INTERVAL
    status, body = http(url + "/healthz")
    assert status == 200, body
    last_ok = prom.query('natkit_monitor_last_success_timestamp_seconds{target="edge",transport="udp"}')
    assert time.time() - next(iter(last_ok.values())) < 2 * INTERVAL + 1
    assert time.monotonic() - restarted < 3 * INTERVAL
