"""The natkit command as a user runs it: exit codes, one-line errors, --json, no leftovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from natkit.coturn.server import free_port
from natkit.pytest_plugin import require_coturn

NATKIT = [sys.executable, "-m", "natkit.cli.app"]


def natkit(*args, timeout=60, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([*NATKIT, *args], capture_output=True, text=True, timeout=timeout, env=e)


def turnserver_pids(state_dir) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if "turnserver" in cmd and str(state_dir) in cmd:
                out.append(int(pid))
    return out


def turnserver_zombies() -> set[int]:
    """PIDs of exited turnserver processes nobody has reaped (their cmdline is empty)."""
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = open(f"/proc/{pid}/stat").read()
            except OSError:
                continue
            if stat.split(" ", 2)[1] == "(turnserver)" and stat.rsplit(")", 1)[1].split()[0] == "Z":
                out.add(int(pid))
    return out


def assert_one_line_error(proc, code):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.startswith("natkit: error")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_main_module_runs():
    # python -m natkit.cli.app is what the tests call; the console script is the same function
    proc = natkit("--help")
    assert proc.returncode == 0 and "relay-check" in proc.stdout


@pytest.fixture
def server(tmp_path):
    """A coturn started through the CLI (native), stopped through the CLI."""
    require_coturn()
    port = free_port()
    proc = natkit("turn", "up", "--backend", "native", "--port", str(port), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    yield port, doc
    natkit("turn", "down", "--all")


def test_turn_up_status_logs_creds_down(server, tmp_path):
    port, doc = server
    assert doc["ok"] is True and doc["server"]["backend"] == "native" and doc["profile"] == "recommended"
    assert doc["server"]["secret"] == "***"  # never printed
    assert doc["server"]["uris"][0] == f"turn:127.0.0.1:{port}"
    status = json.loads(natkit("turn", "status", "--json").stdout)
    assert status["servers"][0]["running"] is True and status["servers"][0]["port"] == port
    logs = natkit("turn", "logs")
    assert logs.returncode == 0 and "Coturn-4" in logs.stdout
    assert len(natkit("turn", "logs", "-n", "3").stdout.splitlines()) == 3
    creds = natkit("creds", "--json", "--ttl", "120")
    entry = json.loads(creds.stdout)
    assert entry["urls"][0] == f"turn:127.0.0.1:{port}" and entry["ttl"] == 120
    assert entry["username"].endswith(":natkit") and len(entry["credential"]) == 28  # base64 of 20 bytes
    # the minted credential works against the server: relay-check with it
    rc = natkit("relay-check", entry["urls"][0], "--user", entry["username"], "--password", entry["credential"], "--json", "--payload", "100000")
    assert rc.returncode == 0, rc.stderr
    report = json.loads(rc.stdout)
    assert report["ok"] and report["exit_code"] == 0 and report["path"]["selected_relay"] and report["path"]["all_relay"]
    pid = json.loads(natkit("turn", "status", "--json").stdout)["servers"][0]["pid"]
    down = natkit("turn", "down", "--json")
    assert down.returncode == 0 and json.loads(down.stdout)["stopped"] == ["default"]
    # no sleep: turn down returns only once the process has exited (gone, or a zombie of its former parent)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert natkit("turn", "status", "--json").returncode == 0
    nothing = natkit("turn", "down")
    assert_one_line_error(nothing, 3)


def test_turn_up_twice_on_same_port_is_an_environment_error(server):
    port, _ = server
    again = natkit("turn", "up", "--backend", "native", "--port", str(port), "--name", "second")
    assert_one_line_error(again, 3)
    assert "already in use" in again.stderr


def test_turn_config_renders_without_starting():
    proc = natkit("turn", "config", "--secret", "abc", "--port", "3999")
    assert proc.returncode == 0
    assert "static-auth-secret=abc" in proc.stdout and "listening-port=3999" in proc.stdout


def test_probe_json_and_text(turn_server):
    proc = natkit("probe", f"127.0.0.1:{turn_server.port}", f"stun:localhost:{turn_server.port}", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "natkit.probe/1" and doc["public_ip"] == "127.0.0.1"
    assert doc["mapping_varies"] is False and doc["behind_nat"] is False
    assert all(r["ok"] and r["software"].startswith("Coturn") for r in doc["results"])
    text = natkit("probe", f"127.0.0.1:{turn_server.port}")
    assert "XOR-MAPPED-ADDRESS" in text.stdout and "public IP: 127.0.0.1" in text.stdout


def test_probe_tcp(turn_server):
    doc = json.loads(natkit("probe", f"127.0.0.1:{turn_server.port}", "--transport", "tcp", "--json").stdout)
    assert doc["results"][0]["ok"] and doc["results"][0]["transport"] == "tcp"


@pytest.mark.parametrize("args, code", [
    (["probe", "http://nope"], 2),
    (["probe", "stun:host:99999"], 2),
    (["probe", "127.0.0.1", "--transport", "sctp"], 2),
    (["probe", "127.0.0.1", "--timeout", "0"], 2),
    (["relay-check", "turn:127.0.0.1:3478"], 2),  # no credentials
    (["relay-check", "stun:127.0.0.1", "--user", "u", "--password", "p"], 2),
    (["creds", "--secret", "s", "--ttl", "0"], 2),
    (["creds", "--secret", "s", "--user", "a:b"], 2),
    (["turn", "up", "--backend", "podman"], 2),
    (["turn", "up", "--listen", "not-an-ip"], 2),
    (["check", "--turn", "turn:127.0.0.1:3478"], 2),  # no credentials
])
def test_bad_input_gives_one_line_and_exit_code(args, code):
    assert_one_line_error(natkit(*args), code)


def test_unreachable_probe_within_budget():
    start = time.monotonic()
    proc = natkit("probe", f"127.0.0.1:{free_port()}", "--timeout", "1", "--json")
    elapsed = time.monotonic() - start
    assert proc.returncode == 4
    doc = json.loads(proc.stdout)
    assert doc["results"][0]["ok"] is False and doc["results"][0]["error_kind"] == "timeout"
    assert elapsed < 3.5


def test_unknown_host_exit_4():
    proc = natkit("relay-check", "turn:no-such-host.invalid", "--user", "u", "--password", "p", "--timeout", "2")
    assert_one_line_error(proc, 4)


def test_relay_check_wrong_secret_exit_5(turn_server):
    proc = natkit("relay-check", turn_server.uri, "--secret", "wrong-secret", "--json", "--timeout", "3")
    assert proc.returncode == 5
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["error"]["kind"] == "auth_refused" and doc["error"]["error_code"] == 401


def test_relay_check_secret_exit_0(turn_server):
    proc = natkit("relay-check", turn_server.uri, "--secret", turn_server.secret, "--payload", "100000")
    assert proc.returncode == 0, proc.stderr
    assert "PASS" in proc.stdout and "relay/relay" in proc.stdout


def test_check_embedded_json_leaves_nothing(tmp_path):
    require_coturn()
    state = tmp_path / "state"
    zombies = turnserver_zombies()
    proc = natkit("check", "--backend", "native", "--json", "--payload", "200000", env={"NATKIT_STATE_DIR": str(state)})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "natkit.check/2" and doc["ok"] and doc["exit_code"] == 0 and doc["embedded"] and doc["backend"] == "native"
    assert [r["transport"] for r in doc["relay"]] == ["udp", "tcp"]
    assert all(r["path"]["selected_relay"] and r["path"]["echo_ok"] for r in doc["relay"])
    assert doc["probe"]["results"][0]["ok"]
    assert turnserver_pids(state) == []
    assert not list((state / "servers").glob("*")) if (state / "servers").exists() else True
    # natkit check reaped its own coturn: none exits later as an orphaned <defunct>
    time.sleep(0.5)
    assert turnserver_zombies() - zombies == set()


def test_check_existing_server(turn_server):
    proc = natkit("check", "--turn", turn_server.uri, "--secret", turn_server.secret, "--json", "--payload", "100000")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["embedded"] is False and doc["turn_uris"] == [turn_server.uri]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_check_leaves_no_server(tmp_path, sig):
    require_coturn()
    state = tmp_path / "state"
    env = dict(os.environ, NATKIT_STATE_DIR=str(state))
    # a large payload keeps the check busy long enough to interrupt it mid-run
    proc = subprocess.Popen([*NATKIT, "check", "--backend", "native", "--payload", "500000000", "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not turnserver_pids(state):
            time.sleep(0.05)
        assert turnserver_pids(state), "the embedded coturn should be running"
        time.sleep(1.0)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:  # never leave a hung check (and its coturn) behind
            proc.kill()
            for pid in turnserver_pids(state):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    time.sleep(0.2)
    assert turnserver_pids(state) == []


def test_foreground_up_stops_on_ctrl_c(tmp_path):
    require_coturn()
    state = tmp_path / "state"
    env = dict(os.environ, NATKIT_STATE_DIR=str(state))
    proc = subprocess.Popen([*NATKIT, "turn", "up", "--backend", "native", "--port", str(free_port()), "--foreground"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not turnserver_pids(state):
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            for pid in turnserver_pids(state):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130 and "coturn is running" in out
    assert turnserver_pids(state) == []


def test_turn_up_tls_then_check_by_name(tmp_path):
    require_coturn()
    env = {"NATKIT_STATE_DIR": str(tmp_path / "state")}
    port, tls_port = free_port(), free_port()
    up = natkit("turn", "up", "--backend", "native", "--port", str(port), "--tls", "--tls-port", str(tls_port), "--name", "tls", env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert "self-signed" in up.stderr and f"turns:127.0.0.1:{tls_port}" in up.stdout
        proc = natkit("check", "--name", "tls", "--json", "--payload", "0", env=env)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert [r["tls"] for r in doc["relay"]] == [False, False, True]  # the server's own cert is trusted
        assert all(r["ok"] for r in doc["relay"])
    finally:
        natkit("turn", "down", "--all", env=env)


def test_probe_does_not_import_heavy_modules(turn_server):
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['natkit', 'probe', '127.0.0.1:{turn_server.port}', '--json']\n"
        "try:\n    runpy.run_module('natkit.cli.app', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('aiortc', 'av', 'docker', 'rich', 'pydantic', 'cryptography'))\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr, proc.stderr


def test_relay_check_fleet_cli(turn_server):
    proc = natkit("relay-check", turn_server.uri, turn_server.uri + "?transport=tcp", "--secret", turn_server.secret,
                  "--payload", "0", "--messages", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "natkit.relay-fleet/2" and doc["passed"] == 2 and doc["ok"] and doc["exit_code"] == 0
    assert all(s["report"]["path"]["selected_relay"] for s in doc["servers"])
