"""When a TURN/STUN server someone started is ready: a STUN answer, or its listening sockets.

:func:`wait_stun` polls one address with STUN Bindings (natkit's blocking
client, :mod:`natkit.stun.sync`): the readiness for servers natkit did not
start itself (a rendered command line, another implementation; the pytest
plugin's ``wait_for_stun``). :func:`wait_listening` is the readiness of a
:class:`~natkit.coturn.server.CoturnServer` behind an argv prefix (``ip netns
exec``): its network may be unreachable from here, but ``/proc/PID/net``
shows its sockets. Servers natkit runs on this host are checked by
:func:`natkit.coturn.server.wait_ready`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import NatkitError, ServerStartFailed
from ..model import TransportAddress

if TYPE_CHECKING:
    from .config import CoturnConfig
    from .server import ServerInfo

POLL = 0.05  # s between STUN attempts
ATTEMPT = 0.1  # s one Binding may take


def stun_answers(address: TransportAddress, timeout: float = ATTEMPT) -> bool:
    """True when ``address`` answers a STUN Binding over UDP with a success carrying XOR-MAPPED-ADDRESS."""
    from ..stun import codec, sync

    try:
        msg, _, _ = sync.request(codec.binding_request(), address, timeout=timeout, rto=timeout)
    except NatkitError:
        return False
    return msg.is_success and "XOR-MAPPED-ADDRESS" in msg


def wait_stun(address: TransportAddress, timeout: float = 20.0, *, alive: Callable[[], bool] | None = None,
              logs: Callable[[], list[str]] | None = None, what: str = "coturn", server: str | None = None,
              step: str = "turn up") -> float:
    """Poll ``address`` with STUN Bindings until one succeeds; return the seconds waited.

    ``alive`` (when given) is asked between attempts; once it says False the
    server "exited during startup". Raises :class:`ServerStartFailed` then,
    or after ``timeout`` seconds, with ``logs()`` (the server's last lines)
    as its details.
    """
    started = time.monotonic()
    while True:
        if stun_answers(address):
            return time.monotonic() - started
        if alive is not None and not alive():
            raise ServerStartFailed(f"{what} exited during startup", server=server, step=step,
                                    details=logs() if logs else [], hint="see the server log above")
        if time.monotonic() - started > timeout:
            raise ServerStartFailed(f"{what} did not answer a STUN Binding on {address} within {timeout:g}s", server=server, step=step,
                                    details=logs() if logs else [])
        time.sleep(POLL)


def expected_listeners(config: CoturnConfig) -> set[tuple[str, str, int]]:
    """``("udp"|"tcp", ip, port)`` sockets coturn opens for ``config``: UDP and TCP (unless ``no-tcp``) on
    every listening address, TCP on the TLS port, and UDP on the RFC 5780 alternate port (port + 1) when
    two listening addresses of one family enable it."""
    want = set()
    for ip in config.listening_ips:
        want.add(("udp", ip, config.listening_port))
        if not config.no_tcp:
            want.add(("tcp", ip, config.listening_port))
        if config.tls_listening_port:
            want.add(("tcp", ip, config.tls_listening_port))
    if not config.no_rfc5780:
        for family in (4, 6):
            ips = [ip for ip in config.listening_ips if (":" in ip) == (family == 6)]
            if len(ips) >= 2:
                want |= {("udp", ip, config.listening_port + 1) for ip in ips}
    return want


def wait_listening(info: ServerInfo, want: set[tuple[str, str, int]], timeout: float = 20.0) -> float:
    """Wait until the server's process has every socket in ``want`` open (:func:`natkit.coturn.native.listeners`).

    Polls every 5 ms, reading only the address families ``want`` names;
    raises :class:`ServerStartFailed` (with the server's log) when the
    process exits or ``timeout`` passes, naming the sockets still missing.
    """
    from .native import listeners
    from .server import is_running, server_logs

    families = tuple(sorted({6 if ":" in ip else 4 for _, ip, _ in want}))
    started = time.monotonic()
    while True:
        missing = want - listeners(info.pid, families) if info.pid else want
        if not missing:
            return time.monotonic() - started
        if not is_running(info):
            raise ServerStartFailed(f"coturn ({info.backend}) exited during startup", server=info.name, step="turn up",
                                    details=server_logs(info, 15), hint="see the server log above")
        if time.monotonic() - started > timeout:
            shown = ", ".join(f"{k} {ip}:{port}" for k, ip, port in sorted(missing))
            raise ServerStartFailed(f"coturn ({info.backend}) did not open {shown} within {timeout:g}s", server=info.name,
                                    step="turn up", details=server_logs(info, 15))
        time.sleep(0.005)
