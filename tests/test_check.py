"""``natkit check`` with several TURN URIs: the documented code of the most severe failure comes out.

Real coturn on 127.0.0.1: the session's server (``turn_server``) and servers
started with ``natkit turn up --name`` in the test's own state directory.
Before the one exit-code policy every case here exited 1.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess

import pytest

from natkit.coturn.server import free_port
from natkit.pytest_plugin import require_coturn
from natkit.signaling.process import natkit_command


def natkit(*args: str, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(natkit_command(*args), check=False, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def check_json(*args: str, env: dict | None = None) -> tuple[int, dict]:
    proc = natkit("check", *args, "--json", "--payload", "0", "--messages", "3", "--timeout", "5", env=env)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_wrong_secret_over_udp_and_tcp_is_5(turn_server):
    code, doc = check_json("--turn", turn_server.uri, "--turn", turn_server.uri + "?transport=tcp", "--secret", "wrong")
    assert code == 5 and doc["exit_code"] == 5 and doc["ok"] is False and doc["relay"] == []
    assert [(f["kind"], f["step"], f["server"], f["exit_code"]) for f in doc["failures"]] == [
        ("auth_refused", "allocate", turn_server.uri, 5),
        ("auth_refused", "allocate", turn_server.uri + "?transport=tcp", 5),
    ]
    assert doc["probe"]["results"][0]["ok"]  # the server answered STUN: only the credentials are wrong


def test_a_dead_uri_next_to_a_good_one_is_4(turn_server):
    dead = f"turn:127.0.0.1:{free_port()}"
    code, doc = check_json("--turn", turn_server.uri, "--turn", dead, "--secret", turn_server.secret)
    assert code == 4 and doc["exit_code"] == 4
    assert [r["server"] for r in doc["relay"]] == [turn_server.uri] and doc["relay"][0]["ok"]  # the good one passed
    assert {f["server"] for f in doc["failures"]} == {dead.replace("turn:", "stun:"), dead}
    assert all(f["exit_code"] == 4 for f in doc["failures"])


def test_dead_uri_outranks_a_refused_secret(turn_server):
    """One URI refuses the credentials (5), one is dead (4): the dead one decides (natkit.errors.SEVERITY)."""
    dead = f"turn:127.0.0.1:{free_port()}?transport=tcp"
    code, doc = check_json("--turn", turn_server.uri, "--turn", dead, "--secret", "wrong")
    assert code == 4 and sorted(f["exit_code"] for f in doc["failures"]) == [4, 4, 5]


def test_text_output_lists_each_failure_and_exits_5(turn_server):
    proc = natkit("check", "--turn", turn_server.uri, "--turn", turn_server.uri + "?transport=tcp", "--secret", "wrong",
                  "--payload", "0", "--timeout", "5", env={"COLUMNS": "300"})
    assert proc.returncode == 5, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("✗")]
    assert lines == [f"✗ allocate: {u}: authentication refused: 401 Unauthorized (check the username/password or the shared "
                     f"secret (and the clock, for REST credentials))" for u in (turn_server.uri, turn_server.uri + "?transport=tcp")]


@pytest.fixture
def named_server(tmp_path):
    """``natkit turn up --name checked`` (native) in this test's state directory; ``turn down --all`` after."""
    require_coturn()
    env = {"NATKIT_STATE_DIR": str(tmp_path / "state")}
    up = natkit("turn", "up", "--backend", "native", "--port", str(free_port()), "--name", "checked", env=env)
    assert up.returncode == 0, up.stderr
    try:
        yield env
    finally:
        natkit("turn", "down", "--all", env=env)


def test_named_server_with_a_wrong_secret_is_5(named_server):
    code, doc = check_json("--name", "checked", "--secret", "wrong", env=named_server)
    assert code == 5 and len(doc["turn_uris"]) == 2 and {f["kind"] for f in doc["failures"]} == {"auth_refused"}


def test_named_server_that_died_is_4(named_server):
    status = json.loads(natkit("turn", "status", "--json", env=named_server).stdout)
    pid = status["servers"][0]["pid"]
    pidfd = os.pidfd_open(pid)  # readable once the process has exited (it is not our child: no waitpid)
    try:
        os.kill(pid, signal.SIGKILL)
        assert select.select([pidfd], [], [], 10)[0], "turnserver survived SIGKILL"
    finally:
        os.close(pidfd)
    code, doc = check_json("--name", "checked", env=named_server)
    assert code == 4 and doc["exit_code"] == 4 and doc["relay"] == []
    udp, tcp = doc["turn_uris"]
    assert [(f["step"], f["server"], f["exit_code"]) for f in doc["failures"]] == [
        ("binding", udp.replace("turn:", "stun:"), 4),  # the STUN probe
        ("binding", udp, 4),  # relay-check's pre-flight: ICMP port unreachable
        ("connect", tcp, 4),  # connection refused
    ]


def test_library_report_carries_the_policy(turn_server):
    from natkit.check import check

    report = check([turn_server.uri, turn_server.uri + "?transport=tcp"], secret=turn_server.secret, messages=3,
                   payload_bytes=0, timeout=5)
    assert report.ok and report.exit_code == 0 and report.failures == () and len(report.relay) == 2
    bad = check([turn_server.uri], username="nobody", password="wrong", messages=3, payload_bytes=0, timeout=5)
    assert not bad.ok and bad.exit_code == 5 and [f.kind for f in bad.failures] == ["auth_refused"]
