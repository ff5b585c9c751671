"""natkit's use of aioice/aiortc internals (natkit/_aiortc_private.py).

- A CPU-only canary: every private name natkit reads or patches exists with
  the shape it expects, on the installed aioice/aiortc (the versions
  ``pyproject.toml`` pins). When one goes, natkit must say "internal error"
  (exit 70), never blame the user's TURN server.
- keep_best_nomination and check_relay_pairs_last with two real aioice
  Connections on loopback (127.0.0.1 and 127.0.0.2 only). One of the
  controlled agent's candidates is labelled ``relay`` (relay type preference,
  RFC 8445 §5.1.2.2) to stand for a relayed path; STUN success responses from
  the other, better candidate reach the controlling agent late, which is the
  race both patches exist for. Each test runs the scenario without the patch
  first (the worse pair wins) and then with it (the better pair is kept).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from natkit import _aiortc_private as private
from natkit.errors import IncompatibleDependency

# ------------------------------------------------------------------ the canary (CPU only)


@pytest.mark.parametrize("area", sorted(private.REQUIREMENTS))
def test_every_internal_natkit_uses_exists(area):
    private.REQUIREMENTS[area]()  # raises private.Mismatch naming what changed


def test_installed_versions_are_the_pinned_ones():
    from importlib.metadata import version

    for name, series in private.TESTED.items():
        assert version(name).startswith(series + "."), (name, version(name))
    import tomllib
    from pathlib import Path

    deps = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {d.split(">=")[0]: d for d in deps if d.startswith(("aioice", "aiortc"))}
    assert pins == {"aioice": "aioice>=0.13,<0.14", "aiortc": "aiortc>=1.16,<1.17"}  # what the canary checks


def test_the_peer_connection_path_to_the_ice_agent():
    """pc.sctp.transport.transport._connection is an aioice Connection; the RTO reaches new transactions."""
    from aioice import ice, stun
    from aiortc import RTCPeerConnection

    async def scenario() -> None:
        pc = RTCPeerConnection()
        try:
            assert private._ice_connection(pc) is None  # no data channel yet: nothing to read
            pc.createDataChannel("canary")
            conn = private._ice_connection(pc)
            assert isinstance(conn, ice.Connection)
            assert private.selected_pair(pc) is None  # nothing nominated: None, not an error
            assert conn.turn_ssl is False and private.set_turn_ssl_context(pc, None) is False
            with private.check_rto(0.123):
                assert stun.RETRY_RTO == 0.123
                tx = stun.Transaction(stun.Message(stun.Method.BINDING, stun.Class.REQUEST), ("127.0.0.1", 9), None)
                assert tx._Transaction__timeout_delay == 0.123
            assert stun.RETRY_RTO == 0.5
        finally:
            await pc.close()

    asyncio.run(scenario())


def test_a_missing_internal_is_an_internal_error_not_a_verdict(monkeypatch):
    """With an internal gone, relay-check raises IncompatibleDependency (exit 70) before sending anything."""
    from natkit.relay import relay_check

    def gone() -> None:
        raise private.Mismatch("aioice.ice.Connection._nominated is gone")

    monkeypatch.setitem(private.REQUIREMENTS, "aioice.ice", gone)
    private._problems.cache_clear()
    try:
        with pytest.raises(IncompatibleDependency) as exc:
            # a port nothing listens on: had anything been sent, this would be "unreachable" (4)
            relay_check("turn:127.0.0.1:9", username="u", password="p", timeout=2)
        assert exc.value.exit_code == 70 and exc.value.kind == "incompatible_dependency"
        assert "_nominated is gone" in exc.value.message and "aioice 0.13.x" in exc.value.hint
    finally:
        monkeypatch.undo()
        private._problems.cache_clear()
    private.check_compatible()


def test_a_renamed_ice_agent_is_an_internal_error(monkeypatch):
    """selected_pair never turns an aiortc rename into "no nominated pair" (which would blame the server)."""
    from aiortc import RTCPeerConnection

    async def scenario() -> None:
        pc = RTCPeerConnection()
        try:
            pc.createDataChannel("canary")
            ice_transport = pc.sctp.transport.transport
            monkeypatch.delattr(ice_transport, "_connection")
            with pytest.raises(IncompatibleDependency, match="_connection"):
                private.selected_pair(pc)
        finally:
            monkeypatch.undo()
            await pc.close()

    asyncio.run(scenario())


# ------------------------------------------------------------------ two aioice agents on loopback

DELAY = 0.3  # s: how late the better candidate's STUN success responses reach the controlling agent


async def _agents(monkeypatch, *, drop_better: bool = False):
    """Controlling A (127.0.0.1) and controlled B (127.0.0.1 = "better", 127.0.0.2 = "relay"), credentials exchanged.

    Responses from B's better candidate to A are delayed by DELAY (or dropped).
    Returns (A, B, better, worse) with B's two local candidates.
    """
    from aioice import Candidate, ice, stun
    from aioice.candidate import candidate_priority

    addresses = iter([["127.0.0.1"], ["127.0.0.1", "127.0.0.2"]])
    monkeypatch.setattr(ice, "get_host_addresses", lambda use_ipv4, use_ipv6: next(addresses))
    a = ice.Connection(ice_controlling=True, use_ipv6=False)
    b = ice.Connection(ice_controlling=False, use_ipv6=False)
    await a.gather_candidates()
    await b.gather_candidates()
    better = next(c for c in b.local_candidates if c.host == "127.0.0.1")
    worse = next(c for c in b.local_candidates if c.host == "127.0.0.2")
    worse.type, worse.priority = "relay", candidate_priority(worse.component, "relay")
    a.remote_username, a.remote_password = b.local_username, b.local_password
    b.remote_username, b.remote_password = a.local_username, a.local_password
    for c in b.local_candidates:
        await a.add_remote_candidate(Candidate(c.foundation, c.component, c.transport, c.priority, c.host, c.port, c.type))
    for c in a.local_candidates:
        await b.add_remote_candidate(c)
    await a.add_remote_candidate(None)
    await b.add_remote_candidate(None)

    loop = asyncio.get_running_loop()
    for proto in a._protocols:
        original = proto.datagram_received

        def received(data, addr, original=original) -> None:
            try:
                is_response = stun.parse_message(data).message_class == stun.Class.RESPONSE
            except ValueError:
                is_response = False
            if is_response and (addr[0], addr[1]) == (better.host, better.port):
                if not drop_better:
                    loop.call_later(DELAY, original, data, addr)
                return
            original(data, addr)

        proto.datagram_received = received
    return a, b, better, worse


def _nominated_local(conn):
    pair = conn._nominated.get(1)
    return None if pair is None else pair.local_candidate


def _nominated_remote(conn):
    pair = conn._nominated.get(1)
    return None if pair is None else (pair.remote_candidate.host, pair.remote_candidate.port)


async def _keep_best_scenario(monkeypatch) -> tuple[object, object, object]:
    """B nominates its better pair first; A's aggressive nomination of the worse one arrives later.
    Returns (B's final nominated local candidate, better, worse)."""
    a, b, better, worse = await _agents(monkeypatch)
    worse_done = asyncio.Event()
    original = b.check_complete

    def check_complete(pair) -> None:
        original(pair)
        if pair.local_candidate is worse and pair.nominated:
            worse_done.set()

    b.check_complete = check_complete
    try:
        await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 10)
        assert _nominated_local(b) is not None
        await asyncio.wait_for(worse_done.wait(), 5)  # the worse pair's nomination reached B and completed
        return _nominated_local(b), better, worse
    finally:
        await asyncio.gather(a.close(), b.close())


def test_keep_best_nomination_keeps_the_better_pair(monkeypatch):
    from aioice import ice

    async def scenario():
        return await _keep_best_scenario(monkeypatch)

    # aioice alone: the pair nominated last carries the data (the worse, "relay" one)
    got, better, worse = asyncio.run(scenario())
    assert got is worse
    # with natkit's rule (RFC 5245 §8.1.1.2): the highest-priority nominated pair stays
    monkeypatch.setattr(ice.Connection, "check_complete", ice.Connection.check_complete)  # undone after the test
    private.keep_best_nomination()
    assert getattr(ice.Connection.check_complete, "_natkit", False)
    got, better, worse = asyncio.run(scenario())
    assert got is better


def test_check_relay_pairs_last_waits_for_the_better_pair(monkeypatch):
    from aioice import ice

    async def scenario(drop_better: bool = False):
        a, b, better, worse = await _agents(monkeypatch, drop_better=drop_better)
        started = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 10)
            return _nominated_remote(a), (better.host, better.port), (worse.host, worse.port), time.monotonic() - started
        finally:
            await asyncio.gather(a.close(), b.close())

    # aioice alone: the relayed pair's check answers first and ends ICE on it
    got, better, worse, _ = asyncio.run(scenario())
    assert got == worse
    # natkit's rule: the relayed check waits while a better pair is still in progress
    aioice_check_start = ice.Connection.check_start
    monkeypatch.setattr(ice.Connection, "check_start", aioice_check_start)  # undone after the test
    private.check_relay_pairs_last(grace=1.5)
    got, better, worse, seconds = asyncio.run(scenario())
    assert got == better and DELAY <= seconds < 1.5
    # ... but not forever: when the better pair never answers, the relayed one is checked after the grace
    monkeypatch.setattr(ice.Connection, "check_start", aioice_check_start)
    private.check_relay_pairs_last(grace=0.5)
    got, better, worse, seconds = asyncio.run(scenario(drop_better=True))
    assert got == worse and 0.5 <= seconds < 1.5
