"""Shared test helpers: environment requirements that skip locally but fail in CI.

``NATKIT_REQUIRE_NETNS=1`` turns a missing root/namespace/coturn capability into
a failure; ``NATKIT_REQUIRE_DOCKER=1`` does the same for a Docker engine. CI
(.ci/run) sets both.
"""

from __future__ import annotations

import os
import shutil

import pytest


def _require(env: str, ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get(env) == "1":
        pytest.fail(f"{reason} (and {env}=1 forbids skipping)")
    pytest.skip(reason)


def require_coturn() -> None:
    """Skip (fail under NATKIT_REQUIRE_NETNS=1) when turnserver is not installed."""
    from natkit.coturn.native import find_binary

    _require("NATKIT_REQUIRE_NETNS", find_binary() is not None, "coturn's turnserver binary is not installed")


def require_root_netns() -> None:
    """Skip (fail under NATKIT_REQUIRE_NETNS=1) without root and ip netns."""
    ok = os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("nft") is not None
    _require("NATKIT_REQUIRE_NETNS", ok, "needs root, iproute2 and nftables for network namespaces")


def require_docker() -> None:
    """Skip (fail under NATKIT_REQUIRE_DOCKER=1) when no Docker engine answers."""
    from natkit.coturn import docker as backend

    ok, reason = backend.available()
    _require("NATKIT_REQUIRE_DOCKER", ok, f"no usable Docker engine: {reason}")


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path, monkeypatch):
    """Every test gets its own natkit state directory."""
    monkeypatch.setenv("NATKIT_STATE_DIR", str(tmp_path / "natkit-state"))
    monkeypatch.setenv("NATKIT_QUIET", "1")
