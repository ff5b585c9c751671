"""Shared test setup. The require_* helpers live in natkit.pytest_plugin (loaded via its entry point).

Fixtures for natkit peer tests (test_peer, test_media, test_browser):
``signal_server`` (a ``natkit signal serve`` on 127.0.0.1 per module, handing
out REST credentials of the session coturn), ``room`` (``room()`` makes a room
name no other test uses) and ``peer_args`` (``peer_args(room, *extra)``: the
options of a relay-only natkit peer through the session coturn; a later
option overrides an earlier one).
"""

from __future__ import annotations

import itertools
import os
import re

import pytest


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path, monkeypatch):
    """Every test gets its own natkit state directory; progress lines are silenced."""
    monkeypatch.setenv("NATKIT_STATE_DIR", str(tmp_path / "natkit-state"))
    monkeypatch.setenv("NATKIT_QUIET", "1")


@pytest.fixture(scope="module")
def signal_server(turn_server):
    """``natkit signal serve`` on 127.0.0.1 for this module (``ws_url``, ``url``); the page's
    ``/config.json`` gets fresh credentials for the session coturn."""
    pytest.importorskip("aiohttp")
    from natkit.signaling.process import SignalProcess

    with SignalProcess("--turn", turn_server.uri, "--secret", turn_server.secret) as proc:
        yield proc


_rooms = itertools.count()


@pytest.fixture
def room(request):
    """``room()``: a fresh room name (the test's name, this process, a counter; the protocol's characters)."""
    stem = re.sub(r"[^A-Za-z0-9_.:-]", "-", request.node.name)[:40].strip("-_.:") or "t"

    def make() -> str:
        return f"{stem}-{os.getpid()}-{next(_rooms)}"

    return make


@pytest.fixture
def peer_args(turn_server, signal_server):
    """``peer_args(room, *extra)``: natkit peer options, relay-only through the session coturn, 5 echoes,
    200 kB bulk, 20 s budget, 30 s wait; ``extra`` comes last and overrides (``"--payload", "0"``)."""

    def make(name: str, *extra: str) -> list[str]:
        return ["--signal", signal_server.ws_url, "--room", name, "--turn", turn_server.uri, "--secret", turn_server.secret,
                "--relay-only", "--messages", "5", "--payload", "200000", "--timeout", "20", "--wait", "30", *extra]

    return make
