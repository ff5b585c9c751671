"""natkit's pytest plugin (entry point ``pytest11: natkit``).

Fixtures:

- ``turn_server``: a coturn on 127.0.0.1 (backend from ``NATKIT_TEST_BACKEND``,
  default auto), started once per session, with REST credentials; yields a
  :class:`TurnServerHandle`.

Environment switches: without root/namespaces/coturn/Docker the fixtures skip
with the reason; with ``NATKIT_REQUIRE_NETNS=1`` (root, namespaces, coturn) or
``NATKIT_REQUIRE_DOCKER=1`` (a Docker engine) they fail instead, so CI cannot
pass by skipping.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest


def _require(env: str, ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get(env) == "1":
        pytest.fail(f"{reason} (and {env}=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


def require_coturn() -> None:
    """Skip (fail under NATKIT_REQUIRE_NETNS=1) when turnserver is not installed."""
    from natkit.coturn.native import find_binary

    _require("NATKIT_REQUIRE_NETNS", find_binary() is not None, "coturn's turnserver binary is not installed")


def require_root_netns() -> None:
    """Skip (fail under NATKIT_REQUIRE_NETNS=1) without root, iproute2 and nft."""
    ok = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("nft") is not None
    _require("NATKIT_REQUIRE_NETNS", ok, "needs root, iproute2 and nftables for network namespaces")


def require_docker() -> None:
    """Skip (fail under NATKIT_REQUIRE_DOCKER=1) when no Docker engine answers."""
    from natkit.coturn import docker as backend

    ok, reason = backend.available()
    _require("NATKIT_REQUIRE_DOCKER", ok, f"no usable Docker engine: {reason}")


@dataclasses.dataclass
class TurnServerHandle:
    """A running coturn for tests: ``uri`` (UDP), ``uris`` (all), ``secret``, ``host``, ``port``."""

    uri: str
    uris: tuple[str, ...]
    secret: str
    host: str
    port: int
    backend: str
    server: object

    def credentials(self, user: str = "test", ttl: int = 600):
        """A fresh REST credential (:class:`natkit.credentials.RestCredential`)."""
        from natkit.credentials import mint

        return mint(self.secret, user, ttl)


@pytest.fixture(scope="session")
def turn_server(tmp_path_factory):
    """A coturn on 127.0.0.1 with REST auth and loopback relaying allowed, for the whole session."""
    require_coturn()
    from natkit.coturn.config import CoturnConfig
    from natkit.coturn.server import CoturnServer, free_port
    from natkit.credentials import new_secret

    old = os.environ.get("NATKIT_STATE_DIR")
    os.environ["NATKIT_STATE_DIR"] = str(tmp_path_factory.mktemp("natkit-turn-server"))
    secret = new_secret()
    port = free_port()
    config = CoturnConfig(
        listening_port=port, static_auth_secrets=(secret,), allow_loopback_peers=True,
        allowed_peer_ranges=("127.0.0.1",), realm="natkit.test",
    )
    server = CoturnServer(config, backend=os.environ.get("NATKIT_TEST_BACKEND", "native"), name=f"pytest-{port}")
    try:
        info = server.start()
        yield TurnServerHandle(info.uris[0], info.uris, secret, "127.0.0.1", port, info.backend, server)
    finally:
        server.stop()
        if old is None:
            os.environ.pop("NATKIT_STATE_DIR", None)
        else:
            os.environ["NATKIT_STATE_DIR"] = old
