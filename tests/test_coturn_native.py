"""The native backend against the real turnserver: lifecycle, credentials, cleanup."""

import asyncio
import os

import pytest

from natkit.coturn.config import CoturnConfig
from natkit.coturn.server import CoturnServer, free_port, get_server, is_running, list_servers, stop_all
from natkit.credentials import mint, new_secret
from natkit.errors import AuthenticationRefused, EnvironmentProblem, ServerStartFailed, UsageError
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
        assert f"static-auth-secret={secret}" in open(info.config_path).read()
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
    with CoturnServer(CoturnConfig(listening_port=free_port(), static_auth_secrets=("a",)), backend="native", name="dup"):
        with pytest.raises(UsageError, match="already running"):
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
