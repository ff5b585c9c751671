"""The natkit command as a user runs it: exit codes, one-line errors, --json, signals, no leftovers.

The usage/exit-code matrix runs in process (typer's CliRunner, no network, milliseconds);
what needs a real process (signals, pipes, start-up, servers) runs ``python -m natkit.cli.app``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from natkit.cli.app import app
from natkit.cli.commands import COMMANDS
from natkit.coturn.server import free_port
from natkit.pytest_plugin import require_coturn

NATKIT = [sys.executable, "-m", "natkit.cli.app"]


def natkit(*args, timeout=60, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([*NATKIT, *args], capture_output=True, text=True, timeout=timeout, env=e)


def cli(*args):
    """natkit in process (no signal handlers, no interpreter start-up)."""
    return CliRunner().invoke(app, list(args))


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
    rc = proc.returncode if hasattr(proc, "returncode") else proc.exit_code
    assert rc == code, (rc, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("natkit: error")]
    assert len(lines) == 1, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # no click box, no traceback, no second line
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr


def udp_port_free(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class SilentUdpServer:
    """A bound UDP socket on loopback that never answers: a STUN server that is up but silent (no ICMP)."""

    def __enter__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        return self

    def __exit__(self, *exc):
        self.sock.close()


# ---------------------------------------------------------------------------- usage and exit codes, in process

BAD_INPUT = [
    # probe
    (["probe", "http://nope"], 2),
    (["probe", "stun:host:99999"], 2),
    (["probe", "127.0.0.1", "--transport", "sctp"], 2),
    (["probe", "127.0.0.1", "--timeout", "0"], 2),
    (["probe", "127.0.0.1", "--timeout", "inf"], 2),
    (["probe", "127.0.0.1", "--timeout", "nan"], 2),
    (["probe", "127.0.0.1", "--timeout", "-1"], 2),
    (["probe", "127.0.0.1", "--timeout", "1e9"], 2),
    (["probe", "127.0.0.1", "--timeout", "soon"], 2),
    (["probe", "stuns:127.0.0.1", "--ca", "/nonexistent/ca.pem"], 2),
    (["probe"], 2),  # missing argument
    (["probe", "127.0.0.1", "--bogus"], 2),
    # relay-check
    (["relay-check", "turn:127.0.0.1:3478"], 2),  # no credentials
    (["relay-check", "stun:127.0.0.1", "--user", "u", "--password", "p"], 2),
    (["relay-check", "turn:127.0.0.1", "--user", "u", "--password", "p", "--timeout", "inf"], 2),
    (["relay-check", "turn:127.0.0.1", "--user", "u", "--password", "p", "--media-seconds", "nan"], 2),
    (["relay-check", "turn:127.0.0.1", "--user", "u", "--password", "p", "--messages", "0"], 2),
    (["relay-check", "turns:127.0.0.1", "--user", "u", "--password", "p", "--ca", "/nonexistent/ca.pem"], 2),
    (["relay-check", "turn:127.0.0.1", "--secret", ""], 2),  # empty, not "no managed coturn"
    (["relay-check", "turn:127.0.0.1", "--secret", "s", "--user", "u", "--password", "p"], 2),
    (["relay-check", "turn:127.0.0.1", "--password", "p"], 2),
    # creds
    (["creds", "--secret", "s", "--ttl", "0"], 2),
    (["creds", "--secret", "s", "--user", "a:b"], 2),
    (["creds", "--secret", "s", "--ttl", "1e20"], 2),
    (["creds", "--secret", "s", "--ttl", "100000000000000000000"], 2),
    (["creds", "--secret", "s", "--url", "turn:[::1"], 2),
    (["creds", "--secret", "s", "--url", "https://turn.example.org"], 2),
    (["creds", "--secret", ""], 2),
    (["creds"], 3),  # no secret and no managed coturn
    (["creds", "--name", "nothere"], 3),
    # turn
    (["turn", "up", "--backend", "podman"], 2),
    (["turn", "up", "--listen", "not-an-ip"], 2),
    (["turn", "up", "--port", "0"], 2),
    (["turn", "up", "--port", "70000"], 2),
    (["turn", "up", "--ready-timeout", "inf"], 2),
    (["turn", "up", "--cert", "/nonexistent/cert.pem", "--key", "/nonexistent/key.pem"], 2),
    (["turn", "up", "--lt-user", "bob"], 2),
    (["turn", "config", "--lt-user", "bob"], 2),
    (["turn", "config", "--profile", "paranoid"], 2),
    (["turn", "logs", "--tail", "0"], 2),
    (["turn", "audit", "turn:127.0.0.1:9", "--junit", "/nonexistent-dir/audit.xml"], 2),
    (["turn", "audit", "turn:127.0.0.1:9", "--timeout", "nan"], 2),
    (["turn", "render", "--target", "compose", "-o", "/etc/hostname/sub"], 2),
    (["turn", "nosuch"], 2),
    # check
    (["check", "--turn", "turn:127.0.0.1:3478"], 2),  # no credentials
    (["check", "--turn", "turn:127.0.0.1:3478", "--secret", ""], 2),
    (["check", "--turn", "turn:127.0.0.1:3478", "--secret", "s", "--timeout", "nan"], 2),
    (["check", "--ca", "/nonexistent/ca.pem"], 2),
    (["check", "--name", "nothere"], 3),
    # nat, signal, peer, lab
    (["nat", "127.0.0.1", "--timeout", "inf"], 2),
    (["nat", "127.0.0.1", "--window", "nan"], 2),
    (["signal", "serve", "--idle-timeout", "inf"], 2),
    (["signal", "serve", "--cert", "/nonexistent/cert.pem", "--key", "/nonexistent/key.pem"], 2),
    (["peer", "--signal", "http://127.0.0.1:9/", "--room", "r"], 2),  # never silently rewritten
    (["peer", "--signal", "ws://127.0.0.1:9", "--room", "r", "--wait", "nan"], 2),
    (["peer", "--signal", "ws://127.0.0.1:9", "--room", "r", "--send", "/nonexistent/file"], 2),
    (["lab", "matrix", "--deadline", "inf"], 2),
    (["lab", "exec"], 2),
    (["nosuch"], 2),
]


@pytest.mark.parametrize("args, code", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_gives_one_line_and_exit_code(args, code):
    assert_one_line_error(cli(*args), code)


JSONABLE = [(a, c) for a, c in BAD_INPUT if a and a[0] != "lab" and a[:2] != ["turn", "nosuch"]]


@pytest.mark.parametrize("args, code", JSONABLE, ids=[" ".join(a) for a, _ in JSONABLE])
def test_bad_input_with_json_gives_one_json_error_document(args, code):
    result = cli(*args, "--json")
    assert result.exit_code == code, (result.stdout, result.stderr)
    doc = json.loads(result.stdout)  # exactly one document
    assert doc["ok"] is False and doc["error"]["exit_code"] == code and doc["error"]["message"]
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("natkit: error")


def test_a_bug_is_an_internal_error_exit_70_not_a_verdict(monkeypatch):
    import natkit.probe

    def broken(*a, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(natkit.probe, "probe", broken)
    result = cli("probe", "127.0.0.1", "--json")
    assert result.exit_code == 70
    error = json.loads(result.stdout)["error"]
    assert {k: error[k] for k in ("kind", "exit_code", "message")} == {"kind": "internal", "exit_code": 70, "message": "RuntimeError: boom"}
    assert result.stderr.startswith("natkit: internal error: RuntimeError: boom") and len(result.stderr.splitlines()) == 1


def test_usage_error_names_the_command_and_its_help():
    result = cli("turn", "up", "--port", "x")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("natkit: error: turn up: Invalid value for '--port' / '-p': 'x' is not a valid int. "
                                     "(natkit turn up --help)")
    assert cli("prob").stderr.strip() == "natkit: error: No such command 'prob'. Did you mean 'probe'? (natkit --help)"


def test_non_finite_timeout_message():
    result = cli("probe", "127.0.0.1", "--timeout", "inf")
    assert "'--timeout': must be a finite number of seconds, got inf" in result.stderr
    result = cli("probe", "127.0.0.1", "--timeout", "7200")
    assert "'--timeout': must be > 0 and <= 3600 of seconds, got 7200" in result.stderr


def _leaf_commands():
    """(path, click command) of every runnable natkit command, from the registration table."""
    from natkit.cli.commands import load

    def walk(path, command):
        subs = getattr(command, "commands", None)
        if subs:
            for name in subs:
                yield from walk([*path, name], subs[name])
        else:
            yield path, command

    for name, (target, _) in COMMANDS.items():
        yield from walk([name], load(name, target))


def _flags(command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def test_every_command_takes_json_except_lab_exec():
    """The README's promise: every command takes --json; lab exec execs another program (its --help says why not)."""
    leaves = dict((" ".join(p), c) for p, c in _leaf_commands())
    assert {"turn config", "turn logs", "turn render", "signal serve", "turn audit", "lab matrix"} <= set(leaves)
    assert [p for p, c in leaves.items() if "--json" not in _flags(c)] == ["lab exec"]
    assert "No --json: natkit execs CMD" in cli("lab", "exec", "--help").stdout


def test_help_lists_every_command_with_its_own_summary():
    from natkit.cli.commands import load

    text = cli("--help").stdout
    for name, (target, summary) in COMMANDS.items():
        assert re.search(rf"^│ {re.escape(name)}\s", text, re.M), name
        command = load(name, target)
        assert " ".join((command.help or "").split("\n\n")[0].split()) == summary, name


# ---- secrets never in argv: every command that takes one on the command line takes it from a file too

# what each command needs besides the credential options to reach its work (nothing listens on port 9)
SECRET_COMMANDS = {
    "check": ["--turn", "turn:127.0.0.1:9"],
    "relay-check": ["turn:127.0.0.1:9"],
    "doctor": ["turn:127.0.0.1:9"],
    "creds": [],
    "turn up": ["--port", "9"],
    "turn config": [],
    "turn audit": ["turn:127.0.0.1:9"],
    "turn load": ["turn:127.0.0.1:9"],
    "signal serve": ["--port", "0"],
    "peer": ["--signal", "ws://127.0.0.1:9", "--room", "r", "--turn", "turn:127.0.0.1:9"],
    "monitor serve": ["--target", "turn:127.0.0.1:9", "--listen", "127.0.0.1:0"],
    "monitor once": ["--target", "turn:127.0.0.1:9"],
}


def _option(command, flag: str):
    return next(p for p in command.params if flag in p.opts)


def test_every_secret_or_password_option_has_its_file_form():
    """--secret and --password stay (their help says ps shows them); each comes with --secret-file / --password-file."""
    leaves = dict((" ".join(p), c) for p, c in _leaf_commands())
    with_secret = sorted(p for p, c in leaves.items() if "--secret" in _flags(c))
    with_password = sorted(p for p, c in leaves.items() if "--password" in _flags(c))
    assert {"check", "relay-check", "doctor", "creds", "turn audit", "turn load", "peer", "signal serve"} <= set(with_secret)
    assert {"check", "relay-check", "doctor", "turn audit", "turn load", "peer"} <= set(with_password)
    assert [p for p in with_secret if "--secret-file" not in _flags(leaves[p])] == []
    assert [p for p in with_password if "--password-file" not in _flags(leaves[p])] == []
    assert [p for p in leaves if "--lt-user" in _flags(leaves[p]) and "--lt-user-file" not in _flags(leaves[p])] == []
    for path in with_secret:
        assert "ps" in (_option(leaves[path], "--secret").help or ""), path
    for path in with_password:
        assert "ps" in (_option(leaves[path], "--password").help or ""), path
    assert sorted(SECRET_COMMANDS) == sorted(p for p, c in leaves.items() if "--secret-file" in _flags(c))


@pytest.mark.parametrize("path", sorted(SECRET_COMMANDS))
def test_a_missing_or_empty_secret_file_is_exit_2_before_any_work(path, tmp_path):
    args = [*path.split(), *SECRET_COMMANDS[path]]
    missing = cli(*args, "--secret-file", str(tmp_path / "nope"))
    assert_one_line_error(missing, 2)
    assert f"cannot read secret file {tmp_path / 'nope'}: No such file or directory" in missing.stderr
    (tmp_path / "empty").write_text("\n\n")
    empty = cli(*args, "--secret-file", str(tmp_path / "empty"))
    assert_one_line_error(empty, 2)
    assert "holds no secret" in empty.stderr
    assert_one_line_error(cli(*args, "--secret-file", str(tmp_path)), 2)  # a directory


@pytest.mark.parametrize("path", sorted(p for p in SECRET_COMMANDS if p not in ("creds", "signal serve", "turn up", "turn config")))
def test_a_missing_or_empty_password_file_is_exit_2_before_any_work(path, tmp_path):
    args = [*path.split(), *SECRET_COMMANDS[path], "--user", "alice"]
    assert_one_line_error(cli(*args, "--password-file", str(tmp_path / "nope")), 2)
    (tmp_path / "empty").write_text("  \n")
    empty = cli(*args, "--password-file", str(tmp_path / "empty"))
    assert_one_line_error(empty, 2)
    assert f"password file {tmp_path / 'empty'} is empty" in empty.stderr


@pytest.mark.parametrize("path", sorted(p for p in SECRET_COMMANDS if not p.startswith("monitor")))  # monitor takes no --secret
def test_secret_and_secret_file_together_is_exit_2(path, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-the-file\n")
    secret.chmod(0o600)
    result = cli(*path.split(), *SECRET_COMMANDS[path], "--secret", "on-argv", "--secret-file", str(secret))
    assert_one_line_error(result, 2)
    assert "--secret and --secret-file are two sources of the same secret" in result.stderr
    assert "from-the-file" not in result.stderr + result.stdout


@pytest.mark.parametrize("path", ["check", "doctor", "peer", "relay-check", "turn audit", "turn load"])
def test_password_and_password_file_together_is_exit_2(path, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("from-the-file\n")
    pw.chmod(0o600)
    result = cli(*path.split(), *SECRET_COMMANDS[path], "--user", "alice", "--password", "p", "--password-file", str(pw))
    assert_one_line_error(result, 2)
    assert "--password and --password-file are two sources" in result.stderr and "from-the-file" not in result.stderr


def _rest_password(secret: str, username: str) -> str:
    """coturn's TURN REST password for ``username``: base64(HMAC-SHA1(secret, username))."""
    import base64
    import hashlib
    import hmac

    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


def test_creds_from_a_secret_file_uses_its_first_secret(tmp_path):
    """--secret-file takes the file's first secret (newest first, comments skipped), as turn up reads it;
    a file others may read is used with a warning."""
    secret = tmp_path / "secret"
    secret.write_text("# rotated 2026-12-01\n\nnew-secret\nold-secret\n")
    secret.chmod(0o600)
    result = cli("creds", "--secret-file", str(secret), "--json")
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    doc = json.loads(result.stdout)
    assert doc["credential"] == _rest_password("new-secret", doc["username"])
    secret.chmod(0o644)
    loose = cli("creds", "--secret-file", str(secret), "--json")
    assert loose.exit_code == 0 and "is mode 0644: other users may read it" in loose.stderr


def test_secret_file_beats_the_environment(tmp_path, monkeypatch):
    secret = tmp_path / "secret"
    secret.write_text("from-the-file\n")
    secret.chmod(0o600)
    monkeypatch.setenv("NATKIT_TURN_SECRET", "from-the-environment")
    doc = json.loads(cli("creds", "--secret-file", str(secret), "--json").stdout)
    assert doc["credential"] == _rest_password("from-the-file", doc["username"])
    env = json.loads(cli("creds", "--json").stdout)
    assert env["credential"] == _rest_password("from-the-environment", env["username"])


def test_password_file_keeps_spaces_inside_and_strips_the_line_break():
    from natkit.coturn.secrets import read_password_file

    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".pw") as f:
        f.write("\n  \ncorrect horse # battery\r\nsecond line\n")
        f.flush()
        assert read_password_file(f.name) == "correct horse # battery"


def test_turn_config_renders_users_from_a_user_file(tmp_path):
    users = tmp_path / "users"
    users.write_text("# long-term users\nalice:pa:ss\n\nbob:hunter2\n")
    users.chmod(0o600)
    text = cli("turn", "config", "--lt-user-file", str(users))
    assert text.exit_code == 0 and text.stderr == "", text.stderr
    assert "user=alice:pa:ss" in text.stdout.splitlines() and "user=bob:hunter2" in text.stdout.splitlines()
    assert "static-auth-secret" not in text.stdout and "lt-cred-mech" in text.stdout
    doc = json.loads(cli("turn", "config", "--lt-user-file", str(users), "--lt-user", "carol:x", "--json").stdout)
    assert [line for line in doc["config"] if line.startswith("user=")] == ["user=carol:***", "user=alice:***", "user=bob:***"]
    assert any("--lt-user puts the password" in w for w in doc["warnings"])


@pytest.mark.parametrize("content, needle", [
    ("hunter2\n", "line 1 takes NAME:PASSWORD, got a value with no ':'"),
    ("alice:\n", "line 1 takes NAME:PASSWORD, got 'alice' with no password"),
    ("# c\nalice:hunter 2\n", "line 2: the password of 'alice' contains whitespace or '#'"),
    ("alice:a\nalice:b\n", "long-term user 'alice' given more than once"),
    ("# only a comment\n", "holds no NAME:PASSWORD line"),
])
def test_a_bad_user_file_is_one_line_exit_2_and_never_shows_a_password(tmp_path, content, needle):
    users = tmp_path / "users"
    users.write_text(content)
    for command in ("config", "up"):
        result = cli("turn", command, "--lt-user-file", str(users))
        assert_one_line_error(result, 2)
        assert needle in result.stderr
        assert "hunter" not in result.stderr


def test_lt_user_cannot_smuggle_a_line_into_turnserver_conf():
    """A newline in --lt-user once became a second turnserver.conf line (here: another listening-port)."""
    result = cli("turn", "config", "--lt-user", "a:b\nlistening-port=1")
    assert_one_line_error(result, 2)
    assert "the password of 'a' contains whitespace or '#'" in result.stderr


def test_turn_config_json_masks_the_secret():
    result = cli("turn", "config", "--secret", "abc", "--port", "3999", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] and "static-auth-secret=***" in doc["config"] and "listening-port=3999" in doc["config"]
    assert "abc" not in result.stdout
    text = cli("turn", "config", "--secret", "abc", "--port", "3999")
    assert "static-auth-secret=abc" in text.stdout and "listening-port=3999" in text.stdout


def test_turn_up_and_config_share_their_options():
    from natkit.cli.turn import PROFILE_OPTIONS

    leaves = dict((" ".join(p), c) for p, c in _leaf_commands())
    shared = {opt for _, _, o in PROFILE_OPTIONS for decl in o.param_decls for opt in decl.split("/")}
    assert "--allow-loopback-peers" in shared and "--lt-user" in shared and "--secret-file" in shared and "--stun" in shared
    assert "--lt-user-file" in shared
    assert len(PROFILE_OPTIONS) == 19
    assert shared <= _flags(leaves["turn up"]) and shared <= _flags(leaves["turn config"])


def test_creds_user_rule_is_the_same_as_relay_check():
    bare = json.loads(cli("creds", "--secret", "s", "--user", "", "--json").stdout)
    assert bare["username"].isdigit()
    named = json.loads(cli("creds", "--secret", "s", "--json").stdout)
    assert named["username"].endswith(":natkit")


def test_creds_validates_and_keeps_urls():
    doc = json.loads(cli("creds", "--secret", "s", "--url", "turn:[::1]:3478", "--url", "stun:127.0.0.1", "--json").stdout)
    assert doc["urls"] == ["turn:[::1]:3478", "stun:127.0.0.1"]


def test_junit_path_is_checked_before_the_audit(tmp_path):
    result = cli("turn", "audit", f"turn:127.0.0.1:{free_port()}", "--junit", str(tmp_path / "no-dir" / "a.xml"))
    assert result.exit_code == 2  # an audit that had run would say 4 (unreachable)
    assert "--junit" in result.stderr and "does not exist" in result.stderr


def test_render_output_dir_is_checked_before_rendering(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    result = cli("turn", "render", "--target", "compose", "-o", str(afile))
    assert result.exit_code == 2 and "exists and is not a directory" in result.stderr
    ok = cli("turn", "render", "--target", "systemd", "-o", str(tmp_path / "new" / "dir"))
    assert ok.exit_code == 0, ok.stderr
    assert (tmp_path / "new" / "dir").is_dir()


def test_lab_list_calls_a_half_built_lab_a_leftover(tmp_path, monkeypatch):
    from natkit.lab import netns

    monkeypatch.setenv("NATKIT_LAB_DIR", str(tmp_path / "labs"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    base = {"namespaces": [], "persistent": True, "hosts": {"alice": "natkit-x-alice"}, "owner_start": 1}
    netns.write_state("halfbuilt", {**base, "lab": "halfbuilt", "complete": False, "owner_pid": dead.pid})
    netns.write_state("built", {**base, "lab": "built", "complete": True, "owner_pid": None})
    doc = json.loads(cli("lab", "list", "--json").stdout)
    owners = {x["lab"]: (x["state"], x["owner"]) for x in doc["labs"] if x["lab"] in ("built", "halfbuilt")}
    assert owners == {"built": ("persistent", "persistent (lab up)"),
                      "halfbuilt": ("leftover", f"pid {dead.pid} (gone: leftover)")}
    # and lab down without a name means the built one, never the half-built leftover
    from natkit.lab.inventory import default_lab

    assert default_lab() == "built"


# ---------------------------------------------------------------------------- real processes

def test_main_module_runs():
    # python -m natkit.cli.app is what the tests call; the console script is the same function
    proc = natkit("--help")
    assert proc.returncode == 0 and "relay-check" in proc.stdout


@pytest.fixture
def server(tmp_path):
    """A coturn started through the CLI (native) in this test's own state directory, stopped through the CLI."""
    require_coturn()
    port = free_port()
    proc = natkit("turn", "up", "--backend", "native", "--port", str(port), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    yield port, doc
    natkit("turn", "down", "--name", "default")


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
    logs_doc = json.loads(natkit("turn", "logs", "-n", "2", "--json").stdout)
    assert logs_doc["ok"] and logs_doc["name"] == "default" and len(logs_doc["lines"]) == 2
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
    # no sleep: turn down returns only once the server no longer runs and its port is free
    assert turnserver_pids(tmp_path) == [] and pid not in turnserver_pids("")
    assert udp_port_free(port)
    assert natkit("turn", "status", "--json").returncode == 0
    nothing = natkit("turn", "down")
    assert_one_line_error(nothing, 3)


def test_turn_up_twice_on_same_port_is_an_environment_error(server):
    port, _ = server
    again = natkit("turn", "up", "--backend", "native", "--port", str(port), "--name", "second")
    assert_one_line_error(again, 3)
    assert "already in use" in again.stderr


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


def test_probe_port_unreachable_is_reported_at_once():
    # nothing listens: the kernel answers ICMP port unreachable, which only a connected socket hears
    start = time.monotonic()
    proc = natkit("probe", f"127.0.0.1:{free_port()}", "--timeout", "3", "--json")
    elapsed = time.monotonic() - start
    assert proc.returncode == 4
    doc = json.loads(proc.stdout)
    assert doc["results"][0]["ok"] is False and doc["results"][0]["error_kind"] == "unreachable"
    assert elapsed < 2.0  # the 3 s budget was not waited out


def test_silent_server_probe_within_budget_and_readable_duration():
    with SilentUdpServer() as silent:
        start = time.monotonic()
        proc = natkit("probe", f"127.0.0.1:{silent.port}", "--timeout", "1", "--json")
        elapsed = time.monotonic() - start
    assert proc.returncode == 4
    result = json.loads(proc.stdout)["results"][0]
    assert result["error_kind"] == "timeout"
    # a duration as people write it ("1 s", or "999 ms" left of the budget under load), never "0.999665s"
    assert re.search(r"within the (\d{1,3} ms|1 s) budget \(\d sends\)", result["error"]), result["error"]
    assert 1.0 <= elapsed < 3.5


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


def test_relay_check_empty_user_part_is_a_bare_expiry(turn_server):
    # one rule with natkit creds: --user '' means no user part (coturn accepts a bare expiry)
    proc = natkit("relay-check", turn_server.uri, "--secret", turn_server.secret, "--user", "", "--payload", "0", "--messages", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["username"].isdigit()


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
    # natkit check returned only after reaping its coturn: nothing runs, nothing waits to be reaped
    assert turnserver_pids(state) == []
    assert turnserver_zombies() - zombies == set()
    assert list((state / "servers").iterdir()) == []  # its state was removed with it


def test_check_existing_server(turn_server):
    proc = natkit("check", "--turn", turn_server.uri, "--secret", turn_server.secret, "--json", "--payload", "100000")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["embedded"] is False and doc["turn_uris"] == [turn_server.uri]


def test_check_by_name_passes_natkits_own_strict_profile(tmp_path):
    """user-quota=4: each leg's two allocations count against their own user, so UDP, TCP and TLS all pass."""
    require_coturn()
    port, tls_port = free_port(), free_port()
    up = natkit("turn", "up", "--backend", "native", "--profile", "strict", "--port", str(port), "--tls", "--tls-port", str(tls_port), "--name", "strict")
    try:
        assert up.returncode == 0, up.stderr
        proc = natkit("check", "--name", "strict", "--json", "--payload", "0", "--messages", "3")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        doc = json.loads(proc.stdout)
        assert [(r["transport"], r["tls"], r["ok"]) for r in doc["relay"]] == [("udp", False, True), ("tcp", False, True), ("tcp", True, True)]
        assert len({r["username"].split(":", 1)[1] for r in doc["relay"]}) == 3
    finally:
        natkit("turn", "down", "--name", "strict")


def test_check_never_lends_a_managed_secret_to_another_server(server):
    port, _ = server
    with SilentUdpServer() as other:
        proc = natkit("check", "--turn", f"turn:127.0.0.1:{other.port}", "--json")
        assert_one_line_error(proc, 2)
        assert "needs --secret or --user/--password" in proc.stderr
        assert json.loads(proc.stdout)["error"]["kind"] == "usage"
        other.sock.settimeout(0.05)
        with pytest.raises(socket.timeout):
            other.sock.recv(2048)  # not even a Binding went there
    assert_one_line_error(natkit("relay-check", f"turn:127.0.0.1:{other.port}"), 2)
    # the managed server's own URIs get its secret without asking, in every command
    own = natkit("check", "--turn", f"turn:127.0.0.1:{port}", "--json", "--payload", "0", "--messages", "2")
    assert own.returncode == 0, own.stderr
    relay = natkit("relay-check", f"turn:127.0.0.1:{port}?transport=tcp", "--json", "--payload", "0", "--messages", "2")
    assert relay.returncode == 0, relay.stderr
    assert json.loads(relay.stdout)["username"].endswith(":natkit")


def test_check_port_unreachable_exits_4_at_once():
    start = time.monotonic()
    proc = natkit("check", "--turn", f"turn:127.0.0.1:{free_port()}", "--user", "u", "--password", "p", "--timeout", "5")
    elapsed = time.monotonic() - start
    assert_one_line_error(proc, 4)
    assert "port unreachable (ICMP)" in proc.stderr
    assert elapsed < 2.0  # before: the 3 s probe waited out first


def test_check_silent_server_takes_one_budget_not_two():
    with SilentUdpServer() as silent:
        start = time.monotonic()
        proc = natkit("check", "--turn", f"turn:127.0.0.1:{silent.port}", "--user", "u", "--password", "p", "--timeout", "2")
        elapsed = time.monotonic() - start
    assert_one_line_error(proc, 4)
    assert "relay check skipped" in proc.stderr
    assert elapsed < 3.5  # before: 2 s probe + 2 s relay pre-flight (4+ s)


def _wait_for_line(stream, needle: str, timeout: float) -> list[str]:
    """Read lines from a child's pipe until one matches the regular expression ``needle`` (the event), or fail.

    Reads the file descriptor directly (no Python buffer in between), so ``communicate()`` gets the rest.
    """
    import selectors

    fd = stream.fileno()
    lines: list[str] = []
    pending = b""
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not sel.select(timeout=max(0.0, end - time.monotonic())):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            lines.append(raw.decode(errors="replace") + "\n")
            if re.search(needle, lines[-1]):
                return lines
    raise AssertionError(f"{needle!r} never came: {lines}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_interrupted_check_leaves_no_server(tmp_path, sig):
    require_coturn()
    state = tmp_path / "state"
    env = dict(os.environ, NATKIT_STATE_DIR=str(state))
    env.pop("NATKIT_QUIET", None)  # the progress lines are the events waited for
    # a large payload keeps the check busy long enough to interrupt it mid-run
    proc = subprocess.Popen([*NATKIT, "check", "--backend", "native", "--payload", "500000000", "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_for_line(proc.stderr, "relay-only ICE through", 20)
        assert turnserver_pids(state), "the embedded coturn should be running"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:  # never leave a hung check (and its coturn) behind
            proc.kill()
            for pid in turnserver_pids(state):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "natkit: interrupted" in err
    assert turnserver_pids(state) == []  # stopped before natkit exited


def test_foreground_up_stops_on_ctrl_c(tmp_path):
    require_coturn()
    state = tmp_path / "state"
    env = dict(os.environ, NATKIT_STATE_DIR=str(state))
    env.pop("NATKIT_QUIET", None)
    proc = subprocess.Popen([*NATKIT, "turn", "up", "--backend", "native", "--port", str(free_port()), "--foreground"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_for_line(proc.stderr, "running in the foreground", 20)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            for pid in turnserver_pids(state):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130 and "coturn is running" in out
    assert turnserver_pids(state) == []


START_UP = "import sys; from natkit.cli.app import main; sys.argv = ['natkit'] + sys.argv[1:]; main()"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_during_start_up_is_interrupted_not_a_traceback(sig):
    """Ctrl-C, SIGTERM or SIGHUP while natkit is still importing: exit 130 and one line, never a traceback or death by signal."""
    # -X importtime reports each import as it completes: typer is imported inside main(), after the handlers are
    # installed, and the probe command (asyncio, the STUN client) is still to be imported when its line appears
    with SilentUdpServer() as silent:
        proc = subprocess.Popen([sys.executable, "-X", "importtime", "-c", START_UP, "probe", f"127.0.0.1:{silent.port}", "--timeout", "5"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for_line(proc.stderr, r"\|\s+typer$", 20)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err[-2000:]
    err = "\n".join(line for line in err.splitlines() if not line.startswith("import time:"))
    assert err.strip() == "natkit: interrupted"


@pytest.mark.parametrize("args", [["turn", "config"], ["creds", "--secret", "s", "--json"], ["turn", "status"], ["--help"], ["turn", "up", "--help"]])
def test_closed_stdout_is_quiet(args):
    """natkit ... | head -1: the reader went away; no traceback, no "internal error", exit 141 as for SIGPIPE."""
    proc = subprocess.Popen([*NATKIT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before natkit writes anything
    err = proc.stderr.read().decode()
    proc.wait(timeout=30)
    assert proc.returncode == 141, err
    assert err == ""


def test_signal_serve_json_and_sigterm_exit_130():
    proc = subprocess.Popen([*NATKIT, "signal", "serve", "--port", "0", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = _wait_for_line(proc.stdout, r"^}", 20)  # the JSON document is printed once the server listens
        doc = json.loads("".join(lines))
        assert doc["ok"] and doc["ws_url"] == f"ws://127.0.0.1:{doc['port']}/ws" and doc["token"] is None
        with socket.create_connection(("127.0.0.1", doc["port"]), timeout=5):
            pass
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and out == "" and "Traceback" not in err


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
        natkit("turn", "down", "--name", "tls", env=env)


HEAVY = ("aiortc", "av", "docker", "rich", "pydantic", "cryptography")


def test_top_level_help_imports_no_command_module():
    code = ("import sys\nfrom natkit.cli.app import main\nsys.argv = ['natkit', '--help']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('CLI', sorted(m for m in sys.modules if m.startswith('natkit.') and m != 'natkit.errors'), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "CLI ['natkit.cli', 'natkit.cli.app', 'natkit.cli.commands', 'natkit.cli.output']" in proc.stderr, proc.stderr
    assert all(name in proc.stdout for name in COMMANDS)


def test_probe_does_not_import_heavy_modules_or_other_commands(turn_server):
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['natkit', 'probe', '127.0.0.1:{turn_server.port}', '--json']\n"
        "try:\n    runpy.run_module('natkit.cli.app', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
        "print('CLI', sorted(m for m in sys.modules if m.startswith('natkit.cli.')), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr, proc.stderr
    assert "CLI ['natkit.cli.commands', 'natkit.cli.options', 'natkit.cli.output', 'natkit.cli.probe']" in proc.stderr


def test_relay_check_fleet_cli(turn_server):
    proc = natkit("relay-check", turn_server.uri, turn_server.uri + "?transport=tcp", "--secret", turn_server.secret,
                  "--payload", "0", "--messages", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "natkit.relay-fleet/2" and doc["passed"] == 2 and doc["ok"] and doc["exit_code"] == 0
    assert all(s["report"]["path"]["selected_relay"] for s in doc["servers"])
