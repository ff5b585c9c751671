"""What a coturn backend provides: the :class:`Backend` protocol, and the registry of backends.

A backend runs one ``turnserver`` for natkit's :class:`~natkit.coturn.server.CoturnServer`
from a rendered ``turnserver.conf`` in the server's state directory, and
finds it again from the recorded state (a ``dict``: :class:`ServerInfo`'s
fields) in any later process. Two exist: :mod:`natkit.coturn.native` (the
``turnserver`` binary as a subprocess, optionally behind an argv prefix such
as ``ip netns exec NS``) and :mod:`natkit.coturn.docker` (a hardened
container). Both are modules that satisfy the protocol structurally.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from ..errors import UsageError

NAMES = ("docker", "native")


class Backend(Protocol):
    """The operations :class:`~natkit.coturn.server.CoturnServer` needs from a backend."""

    NAME: str

    def available(self, image: str | None = None) -> tuple[bool, str]:
        """(usable here, the reason or what it runs); ``image``: also needs this image (docker); never raises."""
        ...

    def runtime_path(self, server_dir: Path, filename: str) -> str:
        """The path turnserver itself uses for ``filename`` of the server (pid file, sqlite db, TLS files)."""
        ...

    def start(self, config_path: Path, log_path: Path, *, name: str, image: str, argv_prefix: Sequence[str] = ()) -> dict:
        """Start turnserver on ``config_path``; return the state fields to record (``pid``, ``container_id``, ...).

        ``argv_prefix``: words run before turnserver (``ip netns exec NS``);
        a backend that cannot honour it raises :class:`UsageError`.
        Raises :class:`~natkit.errors.BackendUnavailable` or
        :class:`~natkit.errors.ServerStartFailed`; leaves nothing running on failure.
        """
        ...

    def is_running(self, state: dict) -> bool:
        """True when the recorded server still runs (never raises)."""
        ...

    def stop(self, state: dict, timeout: float = 5.0) -> None:
        """Stop the recorded server and return once it has exited (idempotent)."""
        ...

    def logs(self, state: dict, tail: int | None = None) -> list[str]:
        """The server's own log lines, the last ``tail`` when given; [] when there are none."""
        ...


def get(name: str) -> Backend:
    """The backend called ``name`` ("docker" or "native"); imports it on first use (docker loads the SDK lazily)."""
    if name == "native":
        from . import native

        return native  # a module satisfying the protocol
    if name == "docker":
        from . import docker as docker_backend

        return docker_backend
    raise UsageError(f"unknown backend {name!r}", hint="use auto, docker or native")
