"""Secrets from files, against a real coturn: ``--secret-file``, ``--password-file``, ``turn up --lt-user-file``.

The house rule is that a secret never has to be on a command line (``ps`` shows
every process's argv to every local user). Each command here runs as a user
runs it (``python -m natkit.cli.app``), with the secret in a 0600 file: the right
one passes (exit 0), a wrong one is refused by the server (exit 5), a missing
file is one line and exit 2 before anything is sent. The usage side for every
command (the option table, both sources at once, empty files) is in test_cli.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from natkit.coturn.server import free_port
from natkit.pytest_plugin import require_coturn


def natkit(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = dict(os.environ, NATKIT_QUIET="1")
    env.pop("NATKIT_TURN_SECRET", None)
    env.pop("NATKIT_TURN_PASSWORD", None)
    return subprocess.run([sys.executable, "-m", "natkit.cli.app", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


def secret_file(path: Path, value: str) -> str:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def assert_one_line(proc: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("natkit: error") and needle in lines[0], proc.stderr


def failure_kinds(doc: dict) -> list[str]:
    """The failure kinds of a JSON report, or of the error document a run that stopped printed."""
    return [doc["error"]["kind"]] if "error" in doc else [f["kind"] for f in doc["failures"]]


RELAY = ("--messages", "3", "--payload", "0", "--timeout", "15", "--json")


@pytest.mark.parametrize("command", ["relay-check", "check"])
def test_rest_secret_from_a_file(turn_server, tmp_path, command):
    """The session coturn's secret in a 0600 file relays (0); a wrong one is refused (5); no file is 2."""
    target = [turn_server.uri] if command == "relay-check" else ["--turn", turn_server.uri]
    good = natkit(command, *target, "--secret-file", secret_file(tmp_path / "good", turn_server.secret), *RELAY)
    assert good.returncode == 0, good.stderr[-2000:]
    assert good.stderr == ""  # a 0600 file: no warning
    assert turn_server.secret not in good.stdout
    wrong = natkit(command, *target, "--secret-file", secret_file(tmp_path / "wrong", "not-" + turn_server.secret), *RELAY)
    assert wrong.returncode == 5, wrong.stderr[-2000:]
    assert "auth_refused" in failure_kinds(json.loads(wrong.stdout))
    missing = natkit(command, *target, "--secret-file", str(tmp_path / "nope"), *RELAY)
    assert_one_line(missing, 2, f"cannot read secret file {tmp_path / 'nope'}")


def test_doctor_takes_the_secret_from_a_file(turn_server, tmp_path):
    """doctor's auth step with the file's secret: accepted; with a wrong one: auth refused, exit 5."""
    args = ("doctor", turn_server.uri, "--no-fallbacks", "--timeout", "1", "--data-timeout", "1", "--json")
    good = natkit(*args, "--secret-file", secret_file(tmp_path / "good", turn_server.secret))
    doc = json.loads(good.stdout)
    assert [c["status"] for c in doc["checks"] if c["id"] == "auth"] == ["pass"], doc["checks"]
    assert good.returncode == 0, (doc["verdict"], good.stderr[-2000:])
    wrong = natkit(*args, "--secret-file", secret_file(tmp_path / "wrong", "not-" + turn_server.secret))
    assert wrong.returncode == 5, wrong.stdout[-2000:]
    assert turn_server.secret not in good.stdout + wrong.stdout
    assert_one_line(natkit(*args, "--secret-file", str(tmp_path / "nope")), 2, "cannot read secret file")


def _cmdlines() -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return out


def test_turn_up_with_a_user_file_allocates_with_that_user(tmp_path):
    """turn up --lt-user-file: a long-term user nobody saw in ps, and relay-check --password-file
    with that user relays (0); a wrong password from a file is refused (5)."""
    require_coturn()
    password = "pw-" + os.urandom(8).hex()
    users = tmp_path / "users"
    users.write_text(f"# natkit test users\nalice:{password}\n")
    users.chmod(0o600)
    port = free_port()
    up = natkit("turn", "up", "--backend", "native", "--port", str(port), "--name", f"lt-{port}", "--lt-user-file", str(users), "--json")
    assert up.returncode == 0, up.stderr[-2000:]
    try:
        assert up.stderr == ""  # no ps warning, no loose-file warning
        doc = json.loads(up.stdout)
        assert password not in up.stdout
        assert not [c for c in _cmdlines() if password in c], "the password is on a command line"
        uri = f"turn:127.0.0.1:{port}"
        assert uri in doc["server"]["uris"]
        ok = natkit("relay-check", uri, "--user", "alice", "--password-file", secret_file(tmp_path / "pw", password), *RELAY)
        assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
        assert json.loads(ok.stdout)["path"]["all_relay"] is True
        bad = natkit("relay-check", uri, "--user", "alice", "--password-file", secret_file(tmp_path / "bad", "not-" + password), *RELAY)
        assert bad.returncode == 5, bad.stdout[-2000:]
        assert password not in ok.stdout + ok.stderr + bad.stdout + bad.stderr
    finally:
        down = natkit("turn", "down", "--name", f"lt-{port}")
        assert down.returncode == 0, down.stderr
