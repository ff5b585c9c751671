"""The native backend against the real turnserver: lifecycle, credentials, cleanup."""

import asyncio
import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from natkit.coturn.config import CoturnConfig
from natkit.coturn.server import (
    CoturnServer,
    free_port,
    get_server,
    is_running,
    list_servers,
    stop_all,
)
from natkit.credentials import mint, new_secret
from natkit.errors import (
    AuthenticationRefused,
    EnvironmentProblem,
    ServerStartFailed,
    UsageError,
)
from natkit.model import TransportAddress
from natkit.probe import probe
from natkit.pytest_plugin import require_coturn
from natkit.relay import preflight_allocate
from natkit.uri import parse_turn_uri


@pytest.fixture
def native():
    require_coturn()


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def allocate(port, username, password, transport="udp"):
    uri = parse_turn_uri(f"turn:127.0.0.1:{port}?transport={transport}")
    return asyncio.run(preflight_allocate(uri, TransportAddress("127.0.0.1", port), username, password, timeout=3))


def test_start_answers_stun_and_stop_cleans_up(native):
    secret = new_secret()
    port = free_port()
    server = CoturnServer(CoturnConfig(listening_port=port, static_auth_secrets=(secret,)), backend="native", name="t1")
    info = server.start()
    try:
        assert info.backend == "native" and info.pid
        assert os.stat(info.config_path).st_mode & 0o777 == 0o600
        assert f"static-auth-secret={secret}" in Path(info.config_path).read_text()
        report = probe([f"127.0.0.1:{port}"], timeout=2)
        r = report.results[0]
        assert r.ok and r.mapped_address.host == "127.0.0.1" and r.software.startswith("Coturn")
        assert r.response_origin == TransportAddress("127.0.0.1", port)
        assert [s.name for s in list_servers()] == ["t1"] and is_running(get_server("t1"))
        assert info.uris == (f"turn:127.0.0.1:{port}", f"turn:127.0.0.1:{port}?transport=tcp")
    finally:
        server.stop()
    assert not _pid_alive(info.pid)
    assert list_servers() == []


def test_minted_credential_allocates_expired_and_wrong_secret_refused(native):
    secret = new_secret()
    port = free_port()
    with CoturnServer(CoturnConfig(listening_port=port, static_auth_secrets=(secret,)), backend="native", name="t2"):
        good = mint(secret, "alice", 600)
        ms, relayed, mapped = allocate(port, good.username, good.password)
        assert relayed.host == "127.0.0.1" and 49152 <= relayed.port <= 65535
        assert mapped.host == "127.0.0.1" and ms > 0
        # TCP too
        _, relayed_tcp, _ = allocate(port, good.username, good.password, "tcp")
        assert relayed_tcp.host == "127.0.0.1"
        expired = mint(secret, "alice", -60)
        with pytest.raises(AuthenticationRefused) as exc:
            allocate(port, expired.username, expired.password)
        assert exc.value.error_code == 401 and exc.value.exit_code == 5
        wrong = mint("not-the-secret", "alice", 600)
        with pytest.raises(AuthenticationRefused):
            allocate(port, wrong.username, wrong.password)


def test_rotation_with_two_secrets(native):
    port = free_port()
    with CoturnServer(CoturnConfig(listening_port=port, static_auth_secrets=("new-secret", "old-secret")), backend="native", name="t3"):
        for s in ("new-secret", "old-secret"):
            c = mint(s, "u", 60)
            assert allocate(port, c.username, c.password)[1].host == "127.0.0.1"


def test_port_in_use_is_an_environment_error_and_starts_nothing(native):
    port = free_port()
    with CoturnServer(CoturnConfig(listening_port=port, static_auth_secrets=("a",)), backend="native", name="first"):
        with pytest.raises(EnvironmentProblem, match="already in use"):
            CoturnServer(CoturnConfig(listening_port=port, static_auth_secrets=("a",)), backend="native", name="second").start()
        assert [s.name for s in list_servers()] == ["first"]


def test_duplicate_name_refused(native):
    with CoturnServer(CoturnConfig(listening_port=free_port(), static_auth_secrets=("a",)), backend="native", name="dup"), \
            pytest.raises(UsageError, match="already running"):
        CoturnServer(CoturnConfig(listening_port=free_port(), static_auth_secrets=("a",)), backend="native", name="dup").start()


def test_address_not_on_host_is_refused_before_starting(native):
    # 198.51.100.7 is a documentation address, not on this host (nothing is sent)
    cfg = CoturnConfig(listening_ips=("198.51.100.7",), listening_port=free_port(), static_auth_secrets=("a",))
    with pytest.raises(EnvironmentProblem, match="not an address of this host"):
        CoturnServer(cfg, backend="native", name="elsewhere").start()
    assert list_servers() == []


def test_failed_start_shows_server_log_and_leaves_nothing(native):
    # coturn exits at startup when proc-user does not exist
    cfg = CoturnConfig(listening_port=free_port(), static_auth_secrets=("a",), extra=("proc-user=natkit-no-such-user",))
    server = CoturnServer(cfg, backend="native", name="broken", ready_timeout=5)
    with pytest.raises(ServerStartFailed) as exc:
        server.start()
    assert any("natkit-no-such-user" in line for line in exc.value.details), "the server's own log is attached"
    assert exc.value.exit_code == 3
    assert list_servers() == []
    assert server.info is None


def test_stop_all_reaps_every_server(native):
    a = CoturnServer(CoturnConfig(listening_port=free_port(), static_auth_secrets=("a",)), backend="native", name="a")
    b = CoturnServer(CoturnConfig(listening_port=free_port(), static_auth_secrets=("a",)), backend="native", name="b")
    ia, ib = a.start(), b.start()
    assert sorted(stop_all()) == ["a", "b"]
    assert not _pid_alive(ia.pid) and not _pid_alive(ib.pid)
    assert list_servers() == []


def test_ready_ms_is_measured_by_start_and_an_error_before_it(native, tmp_path):
    from natkit.errors import InternalError

    port = free_port("127.0.0.1")
    server = CoturnServer(CoturnConfig(listening_ips=("127.0.0.1",), listening_port=port, static_auth_secrets=(new_secret(),)),
                          backend="native", name=f"ready-{port}", state_dir=tmp_path)
    with pytest.raises(InternalError, match="not been started"):
        _ = server.ready_ms
    with server:
        assert 0.0 < server.ready_ms < 20_000.0
        assert server.ready_ms == server.ready_seconds * 1000.0


def test_stop_returns_only_when_the_process_is_reaped_and_its_ports_are_free(native):
    """stop() waits for its own child (waitpid), not for /proc/PID/cmdline to empty:
    right after it returns there is no process (not even a zombie) and the port binds."""
    from natkit.coturn.server import port_in_use

    for i in range(8):
        port = free_port()
        server = CoturnServer(CoturnConfig(listening_port=port, static_auth_secrets=("a",)), backend="native", name=f"s{i}")
        pid = server.start().pid
        server.stop()
        assert not os.path.exists(f"/proc/{pid}"), f"run {i}: turnserver {pid} still exists after stop()"
        assert port_in_use("127.0.0.1", port) is None, f"run {i}: port {port} still bound after stop()"


# ---------------------------------------------------------------------------
# turn up's secret sources: never on natkit's own command line

NATKIT = [sys.executable, "-m", "natkit.cli.app"]


def _natkit(*args, env=None, timeout=60):
    return subprocess.run([*NATKIT, *args], check=False, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, **(env or {})))


def _cmdlines_holding(secret: str) -> list[int]:
    out = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if secret.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(int(pid))
        except OSError:
            continue
    return out


def test_foreground_up_with_secret_file_keeps_the_secrets_out_of_every_command_line(native, tmp_path):
    state = tmp_path / "state"
    new, old = new_secret(), new_secret()
    secret_file = tmp_path / "turn-secret"
    secret_file.write_text(f"# newest first\n{new}\n\n{old}\n")
    secret_file.chmod(0o600)
    port = free_port()
    # no PYTHONUNBUFFERED: natkit itself must flush what it printed before it sits in the foreground
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen([*NATKIT, "turn", "up", "--backend", "native", "--port", str(port), "--secret-file", str(secret_file), "--foreground"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(env, NATKIT_STATE_DIR=str(state)))
    conf = state / "servers" / "default" / "turnserver.conf"
    try:
        deadline = time.monotonic() + 20
        first = ""
        while "coturn is running" not in first:  # printed once the server answered STUN
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "natkit turn up --foreground printed nothing within 20 s"
            if select.select([proc.stdout], [], [], 0.2)[0]:
                first = proc.stdout.readline()
        assert _cmdlines_holding(new) == [] and _cmdlines_holding(old) == []  # natkit's ps line and turnserver's
        assert [line for line in conf.read_text().splitlines() if line.startswith("static-auth-secret=")] == \
            [f"static-auth-secret={new}", f"static-auth-secret={old}"]
        cred = mint(old, "rotating", 60)
        assert allocate(port, cred.username, cred.password)[1].host == "127.0.0.1"
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        out, err = first + proc.stdout.read(), proc.stderr.read()  # (communicate() would skip readline's buffer)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            _natkit("turn", "down", "--all", env={"NATKIT_STATE_DIR": str(state)})
    assert proc.returncode == 130 and f"turn:127.0.0.1:{port}" in out
    assert "warning" not in err, err


def test_up_takes_the_secret_from_natkit_turn_secret(native, tmp_path):
    env = {"NATKIT_STATE_DIR": str(tmp_path / "state"), "NATKIT_TURN_SECRET": "env-new env-old"}
    port = free_port()
    up = _natkit("turn", "up", "--backend", "native", "--port", str(port), env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert "warning" not in up.stderr
        conf = (tmp_path / "state" / "servers" / "default" / "turnserver.conf").read_text()
        assert "static-auth-secret=env-new\nstatic-auth-secret=env-old\n" in conf
        cred = mint("env-new", "u", 60)
        assert allocate(port, cred.username, cred.password)[1].host == "127.0.0.1"
    finally:
        _natkit("turn", "down", "--all", env=env)


def test_secret_sources_bad_input(tmp_path):
    """One line on stderr and exit 2 for every unusable source; --secret on argv is warned about."""
    r = _natkit("turn", "config", "--secret", "on-the-command-line")
    assert r.returncode == 0 and "static-auth-secret=on-the-command-line" in r.stdout
    assert "--secret is readable by every local user in ps" in r.stderr
    loose = tmp_path / "loose"
    loose.write_text("file-secret\n")
    loose.chmod(0o644)
    r = _natkit("turn", "config", "--secret-file", str(loose))
    assert r.returncode == 0 and "static-auth-secret=file-secret" in r.stdout and "mode 0644" in r.stderr
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    spaced = tmp_path / "spaced"
    spaced.write_text("two words\n")
    cases = [
        (["--secret-file", str(tmp_path / "missing")], {}, "cannot read secret file"),
        (["--secret-file", str(empty)], {}, "holds no secret"),
        (["--secret-file", str(spaced)], {}, "line 1"),
        (["--secret-file", str(tmp_path)], {}, "not a regular file"),
        (["--secret-file", str(loose), "--secret", "x"], {}, "--secret and --secret-file"),
        ([], {"NATKIT_TURN_SECRET": " "}, "NATKIT_TURN_SECRET is set but empty"),
    ]
    for args, env, message in cases:
        r = _natkit("turn", "config", *args, env=env)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) <= 2 and "Traceback" not in r.stderr, r.stderr  # the error and its hint


# ---------------------------------------------------------------------------
# an odd environment is an environment problem (exit 3, one line), never an internal error


def test_unusable_state_dir_is_an_environment_problem(tmp_path, monkeypatch):
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("")
    for bad in (a_file, a_file / "below", Path("/proc/1/natkit-state")):
        monkeypatch.setenv("NATKIT_STATE_DIR", str(bad))
        with pytest.raises(EnvironmentProblem, match="state directory .* is not usable"):
            list_servers()
        with pytest.raises(EnvironmentProblem, match="is not usable"):
            CoturnServer(CoturnConfig(listening_port=free_port(), static_auth_secrets=("a",)), backend="native", name="x").start()
        r = _natkit("turn", "status", env={"NATKIT_STATE_DIR": str(bad)})
        assert r.returncode == 3 and "is not usable" in r.stderr and "internal error" not in r.stderr, r.stderr


def test_natkit_turnserver_that_is_not_a_program_is_an_environment_problem(native, tmp_path):
    text = tmp_path / "turnserver"
    text.write_text("not a program\n")
    text.chmod(0o755)  # executable bit, but the kernel cannot run it
    state = tmp_path / "state"
    for bad, message in ((tmp_path, "is not an executable file"), (tmp_path / "missing", "is not an executable file"),
                         (text, "Exec format error")):
        r = _natkit("turn", "up", "--backend", "native", "--port", str(free_port()),
                    env={"NATKIT_TURNSERVER": str(bad), "NATKIT_STATE_DIR": str(state)})
        assert r.returncode == 3 and message in r.stderr and "internal error" not in r.stderr, r.stderr
        assert not (state / "servers").exists() or list((state / "servers").iterdir()) == [], "a failed start left state behind"


# ---------------------------------------------------------------------------
# ephemeral servers record their owner; orphans are shown and reaped


def test_sigkilled_check_leaves_an_orphan_that_status_shows_and_the_next_check_reaps(native, tmp_path):
    env = {"NATKIT_STATE_DIR": str(tmp_path / "state")}
    servers = tmp_path / "state" / "servers"
    proc = subprocess.Popen([*NATKIT, "check", "--backend", "native", "--payload", "500000000", "--timeout", "60"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, **env))
    try:
        deadline = time.monotonic() + 20
        while True:  # the embedded server is up once its state has a PID
            states = [json.loads(p.read_text()) for p in servers.glob("check-*/state.json")] if servers.exists() else []
            if states and states[0].get("pid") and _pid_alive(states[0]["pid"]):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "natkit check never started its server"
            time.sleep(0.05)
        state = states[0]
    finally:
        proc.kill()  # SIGKILL: natkit cannot stop its server
        proc.wait()
    try:
        assert state["owner_pid"] == proc.pid and state["owner_start"]
    except BaseException:
        os.kill(state["pid"], signal.SIGKILL)
        raise
    assert _pid_alive(state["pid"]), "the embedded server survives its owner (own session)"
    try:
        r = _natkit("turn", "status", "--json", env=env)
        doc = json.loads(r.stdout)
        assert r.returncode == 1 and [(s["name"], s["orphaned"], s["running"]) for s in doc["servers"]] == [(state["name"], True, True)]
        r = _natkit("turn", "status", env=env)
        assert "orphaned" in r.stdout and "turn down --all" in r.stderr
        r = _natkit("check", "--backend", "native", "--payload", "0", env=env)  # the next check
        assert r.returncode == 0, r.stderr
        assert not _pid_alive(state["pid"]) and not (servers / state["name"]).exists()
        # it was re-parented to init when its owner died: init reaps it (no zombie left for later tests)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{state['pid']}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{state['pid']}"), "the reaped orphan is still a zombie"
        assert json.loads(_natkit("turn", "status", "--json", env=env).stdout)["servers"] == []
    finally:
        if _pid_alive(state["pid"]):
            os.kill(state["pid"], signal.SIGKILL)


def test_persistent_servers_have_no_owner_and_are_never_reaped(native, tmp_path):
    from natkit.coturn.server import reap_orphans

    with CoturnServer(CoturnConfig(listening_port=free_port(), static_auth_secrets=("a",)), backend="native", name="kept") as kept, \
            CoturnServer(CoturnConfig(listening_port=free_port(), static_auth_secrets=("a",)), backend="native", name="mine", ephemeral=True) as mine:
        assert kept.info.owner_pid is None and not kept.info.orphaned
        assert mine.info.owner_pid == os.getpid() and not mine.info.orphaned
        assert reap_orphans() == []
        # a recycled PID is no owner: same PID, other start time
        stale = dataclasses.replace(mine.info, owner_start=(mine.info.owner_start or 0) + 1)
        assert stale.orphaned
        assert [s.name for s in list_servers()] == ["kept", "mine"]


def test_a_process_is_its_pid_and_start_time_not_its_command_line():
    """/proc/PID/cmdline is empty while a process execs (ip netns exec -> turnserver) or exits:
    a server must not look dead then, and a recycled PID (another start time) is not it."""
    from natkit.coturn import native
    from natkit.ownership import process_start_time

    me = os.getpid()
    state = {"pid": me, "pid_start": process_start_time(me), "config_path": "/nonexistent/turnserver.conf"}
    assert native.is_running(state)
    assert not native.is_running(dict(state, pid_start=state["pid_start"] + 1))
    assert not native.is_running({"pid": me, "config_path": "/nonexistent/turnserver.conf"})  # old state: by command line


def test_state_dir_is_a_parameter_not_the_environment(native, tmp_path):
    """A fixture gives CoturnServer its own state directory instead of writing
    NATKIT_STATE_DIR into os.environ (which leaked into the rest of the session)."""
    before = os.environ.get("NATKIT_STATE_DIR")
    own = tmp_path / "own-state"
    with CoturnServer(CoturnConfig(listening_port=free_port(), static_auth_secrets=("a",)), backend="native", name="own", state_dir=own) as server:
        assert os.environ.get("NATKIT_STATE_DIR") == before
        assert Path(server.info.config_path).is_relative_to(own)
        assert [s.name for s in list_servers(own)] == ["own"] and list_servers() == []
        assert get_server("own", state_dir=own).pid == server.pid
        r = _natkit("turn", "status", "--json", env={"NATKIT_STATE_DIR": str(own)})
        assert [s["name"] for s in json.loads(r.stdout)["servers"]] == ["own"]
    assert list_servers(own) == []


def test_wait_for_stun_fails_with_the_log_when_the_server_exits(tmp_path):
    from natkit.pytest_plugin import wait_for_stun

    log = tmp_path / "server.log"
    log.write_text("first line\nbroken: cannot bind\n")
    proc = subprocess.Popen(["sh", "-c", "exit 3"])
    proc.wait()
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as exc:
        wait_for_stun("127.0.0.1", free_port(), timeout=10, process=proc, log=log)
    assert "exited during startup" in str(exc.value) and "broken: cannot bind" in str(exc.value)
    assert time.monotonic() - started < 2  # at once, not after the timeout
    with pytest.raises(pytest.fail.Exception, match="did not answer a STUN Binding"):
        wait_for_stun("127.0.0.1", free_port(), timeout=0.3)
