"""Opening TURN clients for the load generator: natkit's one TURN client (:class:`natkit.stun.aio.TurnClient`).

Outcomes are counted, not raised: :func:`outcome_of` names an error the way
the report's ``errors`` tables do (the ERROR-CODE as a string, ``timeout``,
``unreachable``, ``local:EMFILE`` ...).
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Any

from ..errors import (
    EnvironmentProblem,
    NatkitError,
    ServerUnreachable,
    StunTimeout,
    TurnError,
)

if TYPE_CHECKING:
    import ssl

    from ..stun.aio import TurnClient
    from .config import LoadConfig

STREAM_BACKLOG = 1 << 20  # bytes queued on a TCP/TLS control connection before the generator stops sending on it


def ssl_context(cfg: LoadConfig) -> ssl.SSLContext | None:
    if cfg.transport != "tls":
        return None
    from ..stun.aio import client_ssl_context

    return client_ssl_context(cfg.verify_tls, cfg.cafile)


def credentials(cfg: LoadConfig, who: str | None) -> tuple[str | None, str | None]:
    """``(username, password)`` for allocation ``who``: a REST user of its own (``secret``, not ``same_user``), else the run's."""
    if cfg.secret and not cfg.same_user and who is not None:
        from ..credentials import mint

        cred = mint(cfg.secret, f"{cfg.user}-{who}", int(cfg.max_time) + 3600)
        return cred.username, cred.password
    if cfg.secret and cfg.username is None:
        from ..credentials import mint

        cred = mint(cfg.secret, cfg.user, int(cfg.max_time) + 3600)
        return cred.username, cred.password
    return cfg.username, cfg.password


async def open_client(cfg: LoadConfig, ctx: ssl.SSLContext | None, *, rcvbuf: int | None = None, who: str | None = None) -> TurnClient:
    """A connected :class:`TurnClient` (a fresh 5-tuple) with the run's credentials (see :func:`credentials`).

    ``rcvbuf`` sets SO_RCVBUF (bytes, capped by net.core.rmem_max) on a UDP socket.
    """
    from ..stun.aio import TurnClient

    username, password = credentials(cfg, who)
    client = await TurnClient.open(cfg.server, transport=cfg.transport, username=username, password=password,
                                   ssl=ctx, server_hostname=cfg.server_hostname, timeout=cfg.timeout,
                                   rto=min(0.25, cfg.timeout / 4), local_host=cfg.local_host)
    if rcvbuf and cfg.transport == "udp":
        sock = client.conn.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            except OSError:
                pass
    return client


async def allocated_client(cfg: LoadConfig, ctx: ssl.SSLContext | None, *, who: str | None = None, rcvbuf: int | None = None,
                           lifetime: int | None = None) -> tuple[TurnClient, Any, bool]:
    """``(client, Allocate reply, retried)``: a fresh client and its Allocate (``check=False``).

    A 437 Allocation Mismatch on a brand-new socket means the kernel handed
    out a local port whose previous 5-tuple the server still remembers (it
    deletes a released allocation a moment later): like any client, take a new
    socket and allocate once more (``retried`` True; counted, not an error).
    Raises what :func:`open_client` and the request raise.
    """
    client = await open_client(cfg, ctx, rcvbuf=rcvbuf, who=who)
    try:
        reply = await client.allocate(lifetime=lifetime, check=False)
    except BaseException:
        await client.close(release=False)
        raise
    if reply.code != 437:
        return client, reply, False
    await client.close(release=False)
    client = await open_client(cfg, ctx, rcvbuf=rcvbuf, who=who)
    try:
        return client, await client.allocate(lifetime=lifetime, check=False), True
    except BaseException:
        await client.close(release=False)
        raise


def outcome_of(exc: BaseException) -> str:
    """The report's name for a failed request: "486", "timeout", "unreachable", "local:EMFILE" ..."""
    if isinstance(exc, TurnError) and getattr(exc, "error_code", None) is not None:
        return str(exc.error_code)
    if isinstance(exc, StunTimeout):
        return "timeout"
    if isinstance(exc, ServerUnreachable):
        return "unreachable"
    if isinstance(exc, EnvironmentProblem):
        text = str(exc)
        for code in ("EMFILE", "ENFILE", "EADDRINUSE", "EADDRNOTAVAIL", "ENOBUFS"):
            if errno.errorcode.get(getattr(errno, code)) and (code in text or _strerror(code) in text):
                return f"local:{code}"
        return "local"
    if isinstance(exc, NatkitError):
        return exc.kind
    if isinstance(exc, OSError):
        return f"local:{errno.errorcode.get(exc.errno or 0, 'OSError')}"
    return exc.__class__.__name__


def _strerror(code: str) -> str:
    import os

    return os.strerror(getattr(errno, code))


def writable(client: TurnClient) -> bool:
    """False when a TCP/TLS control connection has more than :data:`STREAM_BACKLOG` bytes queued."""
    if client.transport == "udp":
        return True
    transport = client.conn.transport
    return transport is not None and not transport.is_closing() and transport.get_write_buffer_size() < STREAM_BACKLOG
