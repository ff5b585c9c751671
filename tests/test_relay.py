"""relay-check through a real coturn: proof of relaying and diagnosed failures."""

import time

import pytest

from natkit.credentials import mint
from natkit.errors import (
    AuthenticationRefused,
    HostNotFound,
    InvalidURI,
    NoRelayConnectivity,
    ServerUnreachable,
)
from natkit.relay import relay_check


@pytest.mark.parametrize("suffix", ["", "?transport=tcp"])
def test_relay_only_ice_is_proven(turn_server, suffix):
    cred = turn_server.credentials()
    report = relay_check(turn_server.uri + suffix, username=cred.username, password=cred.password, messages=10, payload_bytes=200_000)
    assert report.ok and report.exit_code == 0 and report.failures == (), report.failures
    path = report.path
    assert path.candidates and all(c.type == "relay" for c in path.candidates)
    assert {c.side for c in path.candidates} == {"offerer", "answerer"}
    assert set(path.selected) == {"offerer", "answerer"}
    for pair in path.selected.values():
        assert (pair.local_type, pair.remote_type) == ("relay", "relay")
    # each side's nominated local candidate is the other side's remote
    assert path.selected["offerer"].local == path.selected["answerer"].remote
    assert path.messages_sent == path.messages_echoed == 10 and path.echo_ok
    assert path.all_relay and path.selected_relay
    assert path.payload_bytes == 200_000 and path.throughput_mbps and path.throughput_mbps > 0
    assert report.preflight.relayed_address.host == "127.0.0.1" and report.preflight.allocation_ms > 0
    assert path.rtt_ms_p50 <= path.rtt_ms_p95
    assert 0 < path.gathering_ms and 0 < path.connected_ms and 0 < path.first_echo_ms
    assert report.transport == ("tcp" if suffix else "udp")


def test_wrong_password_is_auth_refused(turn_server):
    cred = turn_server.credentials()
    with pytest.raises(AuthenticationRefused) as exc:
        relay_check(turn_server.uri, username=cred.username, password="wrong", timeout=3)
    assert exc.value.exit_code == 5 and exc.value.error_code == 401


def test_expired_credential_is_auth_refused(turn_server):
    cred = mint(turn_server.secret, "u", -10)
    with pytest.raises(AuthenticationRefused):
        relay_check(turn_server.uri, username=cred.username, password=cred.password, timeout=3)


def test_closed_udp_port_fails_fast():
    from natkit.coturn.server import free_port

    start = time.monotonic()
    with pytest.raises(ServerUnreachable) as exc:
        relay_check(f"turn:127.0.0.1:{free_port()}", username="u", password="p", timeout=3)
    assert time.monotonic() - start < 1.0  # ICMP port unreachable, not the budget
    assert exc.value.exit_code == 4


def test_closed_tcp_port_is_unreachable():
    from natkit.coturn.server import free_port

    with pytest.raises(ServerUnreachable, match="refused"):
        relay_check(f"turn:127.0.0.1:{free_port()}?transport=tcp", username="u", password="p", timeout=3)


def test_unknown_host_and_bad_uri():
    with pytest.raises(HostNotFound):
        relay_check("turn:no-such-host.invalid", username="u", password="p", timeout=2)
    with pytest.raises(InvalidURI):
        relay_check("http://x", username="u", password="p")


def test_denied_relay_peer_is_no_connectivity(tmp_path):
    """coturn that denies loopback peers: relay candidates but no working pair (exit 7)."""
    from natkit.coturn.config import CoturnConfig
    from natkit.coturn.server import CoturnServer, free_port
    from natkit.pytest_plugin import require_coturn

    require_coturn()
    port = free_port()
    with CoturnServer(CoturnConfig(listening_port=port, static_auth_secrets=("s",)), backend="native", name="deny") as srv:
        cred = mint("s", "u", 60)
        start = time.monotonic()
        with pytest.raises(NoRelayConnectivity) as exc:
            relay_check(srv.info.uris[0], username=cred.username, password=cred.password, timeout=3)
        assert exc.value.exit_code == 7
        assert time.monotonic() - start < 5


def test_quota_reached_is_allocation_refused():
    """user-quota=1 with one allocation held open: the next Allocate gets 486 (exit 6)."""
    import asyncio

    from natkit.coturn.config import CoturnConfig
    from natkit.coturn.server import CoturnServer, free_port
    from natkit.errors import AllocationRefused
    from natkit.pytest_plugin import require_coturn
    from natkit.relay import relay_check_async

    require_coturn()
    port = free_port()
    cfg = CoturnConfig(listening_port=port, static_auth_secrets=("q",), user_quota=1)
    with CoturnServer(cfg, backend="native", name="quota"):
        cred = mint("q", "u", 60)

        async def scenario():
            from aioice import turn

            held, _ = await turn.create_turn_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", port), cred.username, cred.password)
            try:
                await relay_check_async(f"turn:127.0.0.1:{port}", username=cred.username, password=cred.password, timeout=3)
            finally:
                held.close()

        with pytest.raises(AllocationRefused) as exc:
            asyncio.run(scenario())
        assert exc.value.error_code == 486 and exc.value.exit_code == 6


def test_quota_reached_during_gathering_is_named():
    """user-quota=1: a check needs two allocations at once, so one Allocate (pre-flight or a peer's) gets 486."""
    from natkit.coturn.config import CoturnConfig
    from natkit.coturn.server import CoturnServer, free_port
    from natkit.errors import AllocationRefused
    from natkit.pytest_plugin import require_coturn

    require_coturn()
    port = free_port()
    with CoturnServer(CoturnConfig(listening_port=port, static_auth_secrets=("q",), user_quota=1), backend="native", name="quota2"):
        cred = mint("q", "u", 60)
        with pytest.raises(AllocationRefused) as exc:
            relay_check(f"turn:127.0.0.1:{port}", username=cred.username, password=cred.password, timeout=5)
        assert exc.value.error_code == 486


def test_fleet_checked_concurrently_with_one_summary(turn_server):
    """Two good servers (the session coturn over UDP and TCP) and one dead port: one report, exit 4."""
    from natkit.coturn.server import free_port
    from natkit.relay import relay_check_fleet

    cred = turn_server.credentials()
    dead = f"turn:127.0.0.1:{free_port()}"
    uris = [turn_server.uri, turn_server.uri + "?transport=tcp", dead]
    report = relay_check_fleet(uris, credentials=lambda _u: (cred.username, cred.password), messages=5, payload_bytes=0, timeout=5)
    assert [e.server for e in report.servers] == uris
    assert [e.ok for e in report.servers] == [True, True, False]
    assert [e.exit_code for e in report.servers] == [0, 0, 4]
    assert report.servers[0].report.path.selected_relay and report.servers[1].report.transport == "tcp"
    err = report.servers[2].error
    assert (err.kind, err.exit_code, err.server) == ("unreachable", 4, dead) and report.exit_code == 4
    assert (report.passed, report.failed, report.ok) == (2, 1, False)
