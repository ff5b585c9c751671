"""asyncio drivers for the sans-I/O STUN/TURN core.

* :class:`UdpStunEndpoint`: one local UDP socket running any number of
  concurrent transactions (to one or many servers), matched by transaction
  ID wherever the answer comes from (RFC 5780 CHANGE-REQUEST answers arrive
  from another address). Connected to one server (``remote=``), an ICMP
  port-unreachable fails pending requests at once.
* :class:`StreamConnection`: one TCP or TLS connection with the one framer
  (STUN and ChannelData interleaved, RFC 8656 §12.5); transactions are sent
  once and wait for one deadline (RFC 8489 §6.2.2).
* :func:`stream_transaction`: one transaction over a fresh TCP/TLS connection.
* :class:`TurnClient` (in :mod:`natkit.stun.aio_turn`, importable from
  here): a TURN client over UDP, TCP or TLS built on
  :class:`natkit.stun.turn.TurnSession`. STUN-only users (``natkit probe``)
  never import the TURN session.

Every receive path treats bytes that do not parse as a malformed response:
counted (``malformed``), kept (``last_malformed``, the last few), and, when
they carry the transaction ID of a pending request, that request fails at
once with :class:`~natkit.errors.MalformedMessage` ("malformed response from
X: ..."). Nothing is raised into the event loop. Unsolicited messages are
kept up to a bound (``unmatched``, ``unmatched_count``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import errno
import ipaddress
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from ..errors import (
    HostNotFound,
    MalformedMessage,
    NatkitError,
    ServerUnreachable,
    StunTimeout,
    UsageError,
)
from ..model import TransportAddress, format_duration
from .codec import (
    PROTO_TCP,
    PROTO_UDP,
    Class,
    Message,
    decode,
    peek_transaction_id,
)
from .transaction import (
    DEFAULT_RC,
    DEFAULT_RTO,
    Action,
    ClientTransaction,
    Retransmission,
)

if TYPE_CHECKING:
    import ssl as ssl_module

MAX_SENDS = DEFAULT_RC  # Rc, RFC 8489 §6.2.1
MAX_UNMATCHED = 64  # unsolicited messages kept for inspection
MAX_MALFORMED_KEPT = 8
_NO_ROUTE = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL)


@dataclasses.dataclass(frozen=True)
class StunResponse:
    """One answered transaction.

    ``message`` is the decoded :class:`~natkit.stun.codec.Message`;
    ``source`` the address the answer came from; ``local`` the local socket
    address; ``rtt_ms`` last (re)transmission to answer in milliseconds;
    ``sends`` how many times the request was sent.
    """

    message: Message
    source: TransportAddress
    local: TransportAddress
    rtt_ms: float
    sends: int

    @property
    def is_error(self) -> bool:
        return self.message.cls == Class.ERROR

    @property
    def error(self) -> tuple[int, str] | None:
        """ERROR-CODE as ``(code, reason)``, None when absent."""
        return self.message.get("ERROR-CODE")


def binding_request(**attributes: Any) -> Message:
    """A Binding request (RFC 8489 §3); keyword names use ``_`` for ``-`` (``CHANGE_REQUEST=6``)."""
    from .codec import binding_request as _binding

    return _binding(**attributes)


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
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, family=family, type=socktype), timeout)
    except (socket.gaierror, UnicodeError) as exc:
        raise HostNotFound(f"cannot resolve host {host!r}: {getattr(exc, 'strerror', None) or exc}", server=host) from None
    except TimeoutError:
        raise HostNotFound(f"resolving {host!r} took longer than {format_duration(timeout)}", server=host) from None
    infos.sort(key=lambda i: 0 if i[0] == socket.AF_INET else 1)
    if not infos:
        raise HostNotFound(f"no address for {host!r}", server=host)
    return TransportAddress.of(infos[0][4])


def client_ssl_context(verify: bool = True, cafile: str | None = None) -> ssl_module.SSLContext:
    """TLS client context for ``stuns:``/``turns:`` (TLS 1.2 or newer)."""
    import ssl as ssl_module

    ctx = ssl_module.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl_module.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl_module.CERT_NONE
    return ctx


def _check_budget(timeout: float) -> None:
    if not 0 < timeout < float("inf"):
        raise UsageError(f"timeout must be a positive number of seconds, got {timeout}")


class _Receiver:
    """What UDP and stream receive paths share: pending futures, counters, hooks."""

    def __init__(self) -> None:
        self._pending: dict[bytes, asyncio.Future] = {}
        self.unmatched: collections.deque[tuple[Message, TransportAddress]] = collections.deque(maxlen=MAX_UNMATCHED)
        self.unmatched_count = 0
        self.malformed = 0
        self.last_malformed: collections.deque[MalformedMessage] = collections.deque(maxlen=MAX_MALFORMED_KEPT)
        # hooks: ChannelData (raw bytes, source) and unsolicited STUN messages (indications)
        self.on_packet: Callable[[bytes, TransportAddress], None] | None = None
        self.on_message: Callable[[Message, TransportAddress], None] | None = None

    def _stun(self, data: bytes, source: TransportAddress) -> None:
        try:
            msg = decode(data)
        except MalformedMessage as exc:
            self._malformed(data, source, exc)
            return
        fut = self._pending.get(msg.transaction_id)
        if fut is not None and not fut.done():
            fut.set_result((msg, source))
        elif self.on_message is not None:
            self.on_message(msg, source)
        else:
            self.unmatched_count += 1
            self.unmatched.append((msg, source))

    def _malformed(self, data: bytes, source: TransportAddress, exc: MalformedMessage) -> None:
        err = exc.from_source(str(source))
        self.malformed += 1
        self.last_malformed.append(err)
        txid = peek_transaction_id(data)
        fut = self._pending.get(txid) if txid is not None else None
        if fut is not None and not fut.done():
            fut.set_exception(err)

    def _fail_all(self, exc: Exception) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def _cancel_all(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()


class _BatchedUdp:
    """A non-blocking UDP socket on the event loop, read in batches.

    asyncio's datagram transport reads one datagram per wake-up of the
    selector; a TURN load generator receiving tens of thousands of
    ChannelData messages per second needs to drain the socket instead. The
    interface is the part of ``asyncio.DatagramTransport`` natkit uses
    (``sendto``, ``get_extra_info``, ``close``). Send errors and ICMP errors
    (ECONNREFUSED on a connected socket) go to ``protocol.error_received``; a
    full send buffer drops the datagram (counted in ``dropped``), as a network
    would.
    """

    BATCH = 256  # datagrams read per wake-up, so one busy socket cannot starve the loop

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: asyncio.DatagramProtocol) -> None:
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        self._closed = False
        self.dropped = 0
        loop.add_reader(sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        recvfrom, deliver = self._sock.recvfrom, self._protocol.datagram_received
        for _ in range(self.BATCH):
            try:
                data, addr = recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            deliver(data, addr)

    def sendto(self, data: bytes, addr: tuple | None = None) -> None:
        if self._closed:
            return
        try:
            if addr is None:
                self._sock.send(data)
            else:
                self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.dropped += 1
        except OSError as exc:
            self._protocol.error_received(exc)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._closed:
            return default
        if name == "sockname":
            return self._sock.getsockname()
        if name == "peername":
            try:
                return self._sock.getpeername()
            except OSError:
                return default
        if name == "socket":
            return self._sock
        return default

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()


class UdpStunEndpoint(_Receiver, asyncio.DatagramProtocol):
    """One local UDP socket running concurrent STUN transactions.

        async with await UdpStunEndpoint.open("0.0.0.0") as ep:
            resp = await ep.request(binding_request(), addr, timeout=3)
    """

    def __init__(self) -> None:
        _Receiver.__init__(self)
        self.transport: Any = None  # asyncio.DatagramTransport once connected
        self.remote: TransportAddress | None = None
        self._sending: TransportAddress | None = None
        self._send_error: OSError | None = None

    @classmethod
    async def open(cls, local_host: str = "0.0.0.0", local_port: int = 0, *,
                   remote: TransportAddress | None = None, rcvbuf: int | None = None) -> UdpStunEndpoint:
        """Bind a UDP socket on ``local_host:local_port`` (port 0: any).

        With ``remote`` the socket is connected to that one server, so an ICMP
        "port unreachable" fails pending requests at once (:class:`ServerUnreachable`).
        ``rcvbuf``: SO_RCVBUF in bytes (capped by the kernel's net.core.rmem_max) for
        receivers of high packet rates. Raises :class:`~natkit.errors.LocalBindFailed`
        (an environment problem, exit 3) when the socket cannot be bound,
        :class:`ServerUnreachable` when there is no route to ``remote``.
        """
        from ..errors import LocalBindFailed

        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in local_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((local_host, local_port))
            if remote is not None:
                sock.connect((remote.host, remote.port))  # nothing is sent; ICMP errors now reach this socket
        except OSError as exc:
            sock.close()
            if remote is not None and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                raise ServerUnreachable(f"no route to {remote}: {exc.strerror}", server=str(remote), step="connect") from None
            raise LocalBindFailed(f"cannot bind UDP {local_host}:{local_port}: {exc.strerror or exc}", step="bind") from None
        protocol = cls()
        protocol.remote = remote
        protocol.connection_made(_BatchedUdp(loop, sock, protocol))
        return protocol

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def local_address(self) -> TransportAddress:
        return TransportAddress.of(self.transport.get_extra_info("sockname"))

    def connection_made(self, transport: Any) -> None:  # a _BatchedUdp
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        source = TransportAddress(addr[0], addr[1])
        if data and data[0] < 0x40:
            self._stun(data, source)
        elif self.on_packet is not None and len(data) >= 4:
            self.on_packet(data, source)
        else:
            self._malformed(data, source, MalformedMessage(
                f"{len(data)}-byte datagram that is neither STUN nor ChannelData", offset=0))

    def error_received(self, exc: Exception) -> None:
        if self._sending is not None and isinstance(exc, OSError):
            self._send_error = exc  # raised by sendto itself: belongs to that send
            return
        # only a connected socket learns of ICMP errors (Linux)
        if isinstance(exc, ConnectionRefusedError):
            self._fail_all(ServerUnreachable(
                "port unreachable (ICMP): nothing listens on this UDP port",
                server=str(self.remote) if self.remote else None, hint="is the server running and the port right?"))

    def close(self) -> None:
        self._cancel_all()
        if self.transport is not None:
            self.transport.close()

    def sendto(self, data: bytes, addr: TransportAddress | None = None) -> None:
        """Send one datagram (``addr`` None: the connected server). Raises :class:`ServerUnreachable` on no route."""
        self._sending, self._send_error = addr or self.remote, None
        try:
            if self.remote is not None:
                self.transport.sendto(data)
            else:
                self.transport.sendto(data, (addr.host, addr.port) if addr else None)
        finally:
            self._sending = None
        exc = self._send_error
        if exc is not None:
            self._send_error = None
            if isinstance(exc, ConnectionRefusedError):
                raise ServerUnreachable("port unreachable (ICMP): nothing listens on this UDP port", server=str(addr or self.remote),
                                        hint="is the server running and the port right?")
            raise ServerUnreachable(f"cannot send to {addr or self.remote}: {exc.strerror or exc}", server=str(addr or self.remote))

    async def transact(self, data: bytes, transaction_id: bytes, addr: TransportAddress | None,
                       policy: Retransmission) -> tuple[Message, TransportAddress, float, int]:
        """Run one transaction: ``(response, source, rtt_ms, sends)``.

        Raises :class:`StunTimeout` (``limit`` says which limit fired),
        :class:`ServerUnreachable` (ICMP, no route) or :class:`MalformedMessage`.
        """
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending[transaction_id] = fut
        tx = ClientTransaction(policy, loop.time())
        dest = addr or self.remote
        try:
            while True:
                action = tx.poll(loop.time())
                if action is Action.SEND:
                    self.sendto(data, addr)
                    continue
                if action is Action.TIMEOUT:
                    raise tx.timeout_error(str(dest), hint="is the server running and the UDP port open?")
                await asyncio.wait((fut,), timeout=max(0.0, tx.wakeup - loop.time()))
                if fut.done():
                    msg, source = fut.result()
                    return msg, source, tx.response(loop.time()) * 1000.0, tx.sends
        finally:
            if self._pending.get(transaction_id) is fut:
                del self._pending[transaction_id]

    async def request(self, message: Message, addr: TransportAddress, *, timeout: float = 3.0,
                      rto: float = DEFAULT_RTO, max_sends: int = MAX_SENDS) -> StunResponse:
        """Send ``message`` to ``addr`` and wait for the matching answer.

        Retransmits after ``rto``, ``2*rto``, ``4*rto``... seconds (RFC 8489
        §6.2.1) until ``max_sends`` sends and the final Rm x RTO wait, or
        ``timeout`` seconds in total. Raises :class:`StunTimeout`,
        :class:`ServerUnreachable` or :class:`MalformedMessage`.
        """
        _check_budget(timeout)
        policy = Retransmission(rto=rto, rc=max_sends, budget=timeout)
        msg, source, rtt, sends = await self.transact(message.encode(), message.transaction_id,
                                                      None if self.remote else addr, policy)
        return StunResponse(msg, source, self.local_address, rtt, sends)


def _connect_error(exc: BaseException, server: str, timeout: float) -> NatkitError:
    import ssl as ssl_module

    if isinstance(exc, asyncio.TimeoutError):
        return StunTimeout(f"TCP connect did not complete within {format_duration(timeout)}", server=server, step="connect", limit="budget")
    if isinstance(exc, ssl_module.SSLCertVerificationError):
        return ServerUnreachable(f"TLS certificate not trusted: {exc.verify_message}", server=server, step="tls",
                                 hint="pass --ca FILE, or --insecure for a test server")
    if isinstance(exc, ssl_module.SSLError):
        return ServerUnreachable(f"TLS handshake failed: {exc.reason or exc}", server=server, step="tls")
    if isinstance(exc, ConnectionRefusedError):
        return ServerUnreachable("connection refused", server=server, step="connect", hint="is the server listening on this TCP port?")
    if isinstance(exc, OSError):
        return ServerUnreachable(f"cannot connect: {exc.strerror or exc}", server=server, step="connect")
    return ServerUnreachable(f"cannot connect: {exc}", server=server, step="connect")


class StreamConnection(_Receiver, asyncio.Protocol):
    """One TCP or TLS connection carrying STUN and ChannelData (RFC 8489 §6.2.2, RFC 8656 §12.5)."""

    def __init__(self, server: TransportAddress) -> None:
        from .framing import StreamFramer

        _Receiver.__init__(self)
        self.server = server
        self.framer = StreamFramer()
        self.transport: Any = None  # asyncio.Transport once connected
        self.closed = False

    @classmethod
    async def open(cls, server: TransportAddress, *, ssl: ssl_module.SSLContext | None = None,
                   server_hostname: str | None = None, timeout: float = 3.0) -> StreamConnection:
        """Connect (TLS when ``ssl`` is given). Raises :class:`ServerUnreachable` / :class:`StunTimeout`."""
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                lambda: cls(server), server.host, server.port, ssl=ssl,
                server_hostname=(server_hostname or server.host) if ssl else None), timeout)
        except (TimeoutError, OSError) as exc:
            raise _connect_error(exc, str(server), timeout) from None
        return conn

    @property
    def local_address(self) -> TransportAddress:
        return TransportAddress.of(self.transport.get_extra_info("sockname"))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except MalformedMessage as exc:
            err = exc.from_source(str(self.server))
            self.malformed += 1
            self.last_malformed.append(err)
            self._fail_all(err)
            self.close()
            return
        for frame in frames:
            if frame[0] < 0x40:
                self._stun(frame, self.server)
            elif self.on_packet is not None:
                self.on_packet(frame, self.server)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all(ServerUnreachable("the server closed the connection", server=str(self.server)))

    def send(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise ServerUnreachable("the connection is closed", server=str(self.server))
        self.transport.write(data)

    def close(self) -> None:
        self._cancel_all()
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    async def transact(self, data: bytes, transaction_id: bytes, addr: TransportAddress | None,
                       policy: Retransmission) -> tuple[Message, TransportAddress, float, int]:
        """Send once and wait for the answer (RFC 8489 §6.2.2), within ``policy``'s budget."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending[transaction_id] = fut
        tx = ClientTransaction(policy.replace(reliable=True), loop.time())
        try:
            while True:
                action = tx.poll(loop.time())
                if action is Action.SEND:
                    self.send(data)
                    continue
                if action is Action.TIMEOUT:
                    if self.framer.pending:
                        raise self.framer.incomplete(tx.describe_timeout()).from_source(str(self.server))
                    raise tx.timeout_error(str(self.server), hint="is the server answering STUN on this TCP/TLS port?")
                await asyncio.wait((fut,), timeout=max(0.0, tx.wakeup - loop.time()))
                if fut.done():
                    msg, source = fut.result()
                    return msg, source, tx.response(loop.time()) * 1000.0, tx.sends
        finally:
            if self._pending.get(transaction_id) is fut:
                del self._pending[transaction_id]

    async def request(self, message: Message, *, timeout: float = 3.0) -> StunResponse:
        _check_budget(timeout)
        msg, source, rtt, sends = await self.transact(message.encode(), message.transaction_id, None,
                                                      Retransmission(budget=timeout, reliable=True))
        return StunResponse(msg, source, self.local_address, rtt, sends)


async def stream_transaction(message: Message, addr: TransportAddress, *, timeout: float = 3.0,
                             ssl: ssl_module.SSLContext | None = None, server_hostname: str | None = None) -> StunResponse:
    """Run one transaction over a fresh TCP (or TLS when ``ssl`` is given) connection.

    ``timeout`` (seconds) covers connecting, the handshake and the answer.
    Raises :class:`ServerUnreachable` (refused, TLS failure, closed),
    :class:`StunTimeout` or :class:`MalformedMessage`.
    """
    _check_budget(timeout)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    conn = await StreamConnection.open(addr, ssl=ssl, server_hostname=server_hostname, timeout=timeout)
    try:
        return await conn.request(message, timeout=max(0.001, deadline - loop.time()))
    finally:
        conn.close()


def _with_step(exc: NatkitError, step: str) -> NatkitError:
    """A copy of a transport error that names the TURN step (the original is not mutated)."""
    return exc if exc.step else relabel(exc, step=step)


def relabel(exc: NatkitError, *, server: str | None = None, step: str | None = None) -> NatkitError:
    """A copy of ``exc`` with ``server`` and/or ``step`` replaced (errors are never mutated after raising).

    Keeps the class and its extra fields (``limit``, ``error_code``, the
    malformed attribute and offset).
    """
    from ..errors import TurnError

    kw: dict[str, Any] = {"server": server or exc.server, "step": step or exc.step, "hint": exc.hint, "details": exc.details}
    if isinstance(exc, MalformedMessage):
        return MalformedMessage(exc.detail, attribute=exc.attribute, offset=exc.offset, source=exc.source, **kw)
    if isinstance(exc, StunTimeout):
        kw["limit"] = exc.limit
    elif isinstance(exc, TurnError):
        kw.update(error_code=exc.error_code, reason=exc.reason)
    try:
        return type(exc)(exc.message, **kw)
    except TypeError:  # a subclass with other constructor arguments: keep the original
        return exc


def __getattr__(name: str) -> Any:  # TurnClient lives in aio_turn: probe does not pay for the TURN session
    if name == "TurnClient":
        from .aio_turn import TurnClient

        return TurnClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MAX_SENDS",
    "PROTO_TCP",
    "PROTO_UDP",
    "StreamConnection",
    "StunResponse",
    "UdpStunEndpoint",
    "binding_request",
    "client_ssl_context",
    "relabel",
    "resolve",
    "stream_transaction",
]
