"""STUN transactions over UDP, TCP and TLS, on top of ``aioice.stun``.

aioice encodes and parses messages; this module owns sockets and timers:

* :class:`UdpStunEndpoint` is one local UDP socket that runs any number of
  concurrent transactions (to one or many servers) and matches answers by
  transaction ID, wherever they come from (RFC 5780 CHANGE-REQUEST answers
  arrive from another address).
* :func:`stream_transaction` runs one transaction over TCP or TLS
  (RFC 8489 §6.2.2: no retransmission, one deadline).

Retransmission follows RFC 8489 §6.2.1 (RTO, doubling, Rc sends at most) but
is cut by a total time budget instead of aioice's ~60 s schedule.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import socket
import time
from typing import TYPE_CHECKING

from ._aioice import HEADER_LENGTH, Class, Message, Method, parse_message
from .errors import HostNotFound, NatkitError, ServerUnreachable, StunTimeout
from .model import TransportAddress

if TYPE_CHECKING:
    import ssl as ssl_module

DEFAULT_RTO = 0.5  # seconds, RFC 8489 §6.2.1 recommended initial RTO
MAX_SENDS = 7  # Rc, RFC 8489 §6.2.1


@dataclasses.dataclass(frozen=True)
class StunResponse:
    """One answered transaction.

    ``message`` is the parsed aioice message; ``source`` the address the answer
    came from; ``local`` the local socket address; ``rtt_ms`` the time from the
    last (re)transmission to the answer in milliseconds; ``sends`` how many
    times the request was sent.
    """

    message: Message
    source: TransportAddress
    local: TransportAddress
    rtt_ms: float
    sends: int

    @property
    def is_error(self) -> bool:
        return self.message.message_class == Class.ERROR

    @property
    def error(self) -> tuple[int, str] | None:
        return self.message.attributes.get("ERROR-CODE")


def binding_request(**attributes) -> Message:
    """A Binding request (RFC 8489 §3) with the given aioice attributes."""
    return Message(message_method=Method.BINDING, message_class=Class.REQUEST, attributes=attributes)


async def resolve(host: str, port: int, *, family: int = 0, transport: str = "udp", timeout: float = 3.0) -> TransportAddress:
    """Resolve ``host`` to one transport address (IPv4 preferred when both exist).

    Raises :class:`HostNotFound` when the name does not resolve within ``timeout`` seconds.
    """
    try:  # an IP literal needs no lookup (and no resolver thread)
        ip = ipaddress.ip_address(host)
        if not family or family == (socket.AF_INET6 if ip.version == 6 else socket.AF_INET):
            return TransportAddress(str(ip), port)
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    socktype = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, family=family, type=socktype), timeout
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise HostNotFound(f"cannot resolve host {host!r}: {getattr(exc, 'strerror', None) or exc}", server=host) from None
    except asyncio.TimeoutError:
        raise HostNotFound(f"resolving {host!r} took longer than {timeout:g}s", server=host) from None
    infos.sort(key=lambda i: 0 if i[0] == socket.AF_INET else 1)
    if not infos:
        raise HostNotFound(f"no address for {host!r}", server=host)
    return TransportAddress.of(infos[0][4])


class _Pending:
    __slots__ = ("future", "sent_at", "sends")

    def __init__(self, future: asyncio.Future) -> None:
        self.future = future
        self.sent_at = 0.0
        self.sends = 0


class UdpStunEndpoint(asyncio.DatagramProtocol):
    """One local UDP socket running concurrent STUN transactions.

    Open with :meth:`open` (an async context manager is provided as well):

        async with await UdpStunEndpoint.open("0.0.0.0") as ep:
            resp = await ep.request(binding_request(), addr, timeout=3)
    """

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self._pending: dict[bytes, _Pending] = {}
        self.unmatched: list[tuple[bytes, TransportAddress]] = []

    @classmethod
    async def open(cls, local_host: str = "0.0.0.0", local_port: int = 0, *, remote: TransportAddress | None = None) -> "UdpStunEndpoint":
        """Bind a UDP socket on ``local_host:local_port`` (port 0: any).

        With ``remote`` the socket is connected to that one server, so an ICMP
        "port unreachable" fails pending requests at once (:class:`ServerUnreachable`).
        """
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in local_host else socket.AF_INET
        try:
            _, protocol = await loop.create_datagram_endpoint(
                cls, local_addr=(local_host, local_port), family=family,
                remote_addr=(remote.host, remote.port) if remote else None,
            )
        except OSError as exc:
            raise NatkitError(f"cannot bind UDP {local_host}:{local_port}: {exc.strerror or exc}", step="bind") from None
        return protocol

    async def __aenter__(self) -> "UdpStunEndpoint":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    @property
    def local_address(self) -> TransportAddress:
        return TransportAddress.of(self.transport.get_extra_info("sockname"))

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            message = parse_message(data)
        except ValueError:
            return
        pending = self._pending.get(message.transaction_id)
        if pending is None or pending.future.done():
            self.unmatched.append((data, TransportAddress.of(addr)))
            return
        rtt = (time.monotonic() - pending.sent_at) * 1000.0
        pending.future.set_result((message, TransportAddress.of(addr), rtt, pending.sends))

    def error_received(self, exc: Exception) -> None:
        # only a connected socket learns of ICMP errors (Linux)
        if isinstance(exc, ConnectionRefusedError):
            for pending in self._pending.values():
                if not pending.future.done():
                    pending.future.set_exception(ServerUnreachable(
                        "port unreachable (ICMP): nothing listens on this UDP port",
                        hint="is the server running and the port right?",
                    ))

    def close(self) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.cancel()
        if self.transport is not None:
            self.transport.close()

    async def request(
        self,
        message: Message,
        addr: TransportAddress,
        *,
        timeout: float = 3.0,
        rto: float = DEFAULT_RTO,
        max_sends: int = MAX_SENDS,
    ) -> StunResponse:
        """Send ``message`` to ``addr`` and wait for the matching answer.

        Retransmits after ``rto``, ``2*rto``, ``4*rto``... seconds (RFC 8489
        §6.2.1) until ``max_sends`` sends or ``timeout`` seconds in total.
        Raises :class:`StunTimeout` when nothing matching arrives in time.
        """
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future())
        self._pending[message.transaction_id] = pending
        data = bytes(message)
        deadline = loop.time() + timeout
        wait = rto
        try:
            while True:
                try:
                    self.transport.sendto(data, (addr.host, addr.port))
                except OSError as exc:
                    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
                        raise ServerUnreachable(f"no route to {addr}: {exc.strerror}", server=str(addr)) from None
                    raise
                pending.sent_at = time.monotonic()
                pending.sends += 1
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                this_wait = remaining if pending.sends >= max_sends else min(wait, remaining)
                done, _ = await asyncio.wait({pending.future}, timeout=this_wait)
                if done:
                    exc = pending.future.exception()
                    if exc is not None:
                        exc.server = exc.server or str(addr)
                        raise exc
                    msg, source, rtt, sends = pending.future.result()
                    return StunResponse(msg, source, self.local_address, rtt, sends)
                if pending.sends >= max_sends or loop.time() >= deadline:
                    break
                wait *= 2
        finally:
            self._pending.pop(message.transaction_id, None)
        raise StunTimeout(
            f"no STUN response within {timeout:g}s ({pending.sends} sends)",
            server=str(addr),
            hint="is the server running and the UDP port open?",
        )


def client_ssl_context(verify: bool = True, cafile: str | None = None) -> "ssl_module.SSLContext":
    """TLS client context for ``stuns:``/``turns:`` (TLS 1.2 or newer)."""
    import ssl as ssl_module

    ctx = ssl_module.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl_module.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl_module.CERT_NONE
    return ctx


async def stream_transaction(
    message: Message,
    addr: TransportAddress,
    *,
    timeout: float = 3.0,
    ssl: "ssl_module.SSLContext | None" = None,
    server_hostname: str | None = None,
) -> StunResponse:
    """Run one transaction over a fresh TCP (or TLS when ``ssl`` is given) connection.

    Raises :class:`ServerUnreachable` on refused connections or TLS failures
    and :class:`StunTimeout` when no complete answer arrives within ``timeout``.
    """
    import ssl as ssl_module

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    writer = None
    try:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    addr.host, addr.port, ssl=ssl, server_hostname=server_hostname if ssl else None
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise StunTimeout(f"TCP connect did not complete within {timeout:g}s", server=str(addr)) from None
        except ConnectionRefusedError:
            raise ServerUnreachable("connection refused", server=str(addr), hint="is the server listening on this TCP port?") from None
        except ssl_module.SSLError as exc:
            raise ServerUnreachable(f"TLS handshake failed: {exc.reason or exc}", server=str(addr)) from None
        except OSError as exc:
            raise ServerUnreachable(f"cannot connect: {exc.strerror or exc}", server=str(addr)) from None
        local = TransportAddress.of(writer.get_extra_info("sockname"))
        started = time.monotonic()
        writer.write(bytes(message))
        try:
            header = await asyncio.wait_for(reader.readexactly(HEADER_LENGTH), max(0.0, deadline - loop.time()))
            length = int.from_bytes(header[2:4], "big")
            body = await asyncio.wait_for(reader.readexactly(length), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise StunTimeout(f"no STUN response over TCP within {timeout:g}s", server=str(addr)) from None
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ServerUnreachable(f"connection closed before a STUN response ({exc.__class__.__name__})", server=str(addr)) from None
        rtt = (time.monotonic() - started) * 1000.0
        try:
            response = parse_message(header + body)
        except ValueError as exc:
            raise NatkitError(f"malformed STUN response: {exc}", server=str(addr)) from None
        if response.transaction_id != message.transaction_id:
            raise NatkitError("STUN response with a foreign transaction ID", server=str(addr))
        return StunResponse(response, addr, local, rtt, 1)
    finally:
        if writer is not None:
            writer.close()
