"""Blocking drivers for the sans-I/O STUN/TURN core: plain sockets and timeouts.

For callers without an asyncio loop — a Locust/gevent worker (gevent's
monkey-patched sockets make these cooperative), a script, a thread. The
same :class:`~natkit.stun.transaction.ClientTransaction` and
:class:`~natkit.stun.turn.TurnSession` run here as in :mod:`natkit.stun.aio`.

* :class:`UdpConnection` / :class:`StreamConnection`: one socket to one
  server; ``transact`` runs one transaction; other traffic (ChannelData,
  indications) that arrives meanwhile goes to ``on_packet``/``on_message``.
* :class:`SyncTurnClient`: the TURN client, blocking.

Malformed input is counted (``malformed``) and fails only the transaction
it answered (:class:`~natkit.errors.MalformedMessage`); nothing else raises.
"""

from __future__ import annotations

import collections
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from ..errors import (
    MalformedMessage,
    NatkitError,
    ServerUnreachable,
    StunTimeout,
    UsageError,
)
from ..model import TransportAddress, format_duration
from .codec import PROTO_UDP, Class, Message, Method, decode, peek_transaction_id
from .framing import StreamFramer
from .transaction import Action, ClientTransaction, Retransmission
from .turn import PeerData, Pending, Reply, TurnSession

if TYPE_CHECKING:
    import ssl as ssl_module

MAX_DATAGRAM = 65536
MAX_QUEUE = 10_000


class _Conn:
    """What the UDP and stream connections share: dispatch, counters, the transaction loop."""

    reliable = False

    def __init__(self, server: TransportAddress, clock: Callable[[], float]) -> None:
        self.server = server
        self.clock = clock
        self.sock: Any = None  # the socket; None once closed
        self.malformed = 0
        self.last_malformed: collections.deque[MalformedMessage] = collections.deque(maxlen=8)
        self.on_packet: Callable[[bytes], None] | None = None
        self.on_message: Callable[[Message], None] | None = None

    def _read(self, timeout: float) -> list[bytes]:  # pragma: no cover - overridden
        raise NotImplementedError

    def send(self, data: bytes) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _dispatch(self, frame: bytes, txid: bytes | None) -> Message | None:
        """A decoded answer for ``txid``, else None (other traffic is handed to the hooks)."""
        if not frame:
            return None
        if frame[0] >= 0x40:
            if self.on_packet is not None:
                self.on_packet(frame)
            return None
        try:
            msg = decode(frame)
        except MalformedMessage as exc:
            err = exc.from_source(str(self.server))
            self.malformed += 1
            self.last_malformed.append(err)
            if txid is not None and peek_transaction_id(frame) == txid:
                raise err from None
            return None
        if msg.transaction_id == txid:
            return msg
        if self.on_message is not None:
            self.on_message(msg)
        return None

    def transact(self, data: bytes, transaction_id: bytes, policy: Retransmission) -> tuple[Message, float, int]:
        """One transaction: ``(response, rtt_ms, sends)``. Raises :class:`StunTimeout`, :class:`ServerUnreachable`,
        :class:`MalformedMessage`."""
        if self.reliable:
            policy = policy.replace(reliable=True)
        tx = ClientTransaction(policy, self.clock())
        while True:
            action = tx.poll(self.clock())
            if action is Action.SEND:
                self.send(data)
                continue
            if action is Action.TIMEOUT:
                framer = getattr(self, "framer", None)
                if framer is not None and framer.pending:
                    raise framer.incomplete(tx.describe_timeout()).from_source(str(self.server))
                raise tx.timeout_error(str(self.server))
            for frame in self._read(max(0.0, tx.wakeup - self.clock())):
                msg = self._dispatch(frame, transaction_id)
                if msg is not None:
                    return msg, tx.response(self.clock()) * 1000.0, tx.sends

    def poll(self, timeout: float) -> None:
        """Read whatever arrives within ``timeout`` seconds and hand it to the hooks."""
        end = self.clock() + timeout
        while True:
            for frame in self._read(max(0.0, end - self.clock())):
                self._dispatch(frame, None)
            if self.clock() >= end:
                return


class UdpConnection(_Conn):
    """A UDP socket connected to one server (ICMP port-unreachable → :class:`ServerUnreachable`)."""

    def __init__(self, server: TransportAddress, *, local_host: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        from ..errors import EnvironmentProblem

        super().__init__(server, clock)
        family = socket.AF_INET6 if server.family == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((local_host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
            sock.connect((server.host, server.port))
        except OSError as exc:
            sock.close()
            raise EnvironmentProblem(f"cannot open UDP toward {server}: {exc.strerror or exc}", step="bind") from None
        self.sock = sock

    @property
    def local_address(self) -> TransportAddress:
        return TransportAddress.of(self.sock.getsockname())

    def send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except ConnectionRefusedError:
            raise ServerUnreachable("port unreachable (ICMP): nothing listens on this UDP port", server=str(self.server)) from None
        except OSError as exc:
            raise ServerUnreachable(f"cannot send: {exc.strerror or exc}", server=str(self.server)) from None

    def _read(self, timeout: float) -> list[bytes]:
        self.sock.settimeout(max(timeout, 1e-4))
        try:
            return [self.sock.recv(MAX_DATAGRAM)]
        except (TimeoutError, BlockingIOError):
            return []
        except ConnectionRefusedError:
            raise ServerUnreachable("port unreachable (ICMP): nothing listens on this UDP port", server=str(self.server),
                                    hint="is the server running and the port right?") from None


class StreamConnection(_Conn):
    """A TCP (or TLS with ``ssl``) connection with the one stream framer."""

    reliable = True

    def __init__(self, server: TransportAddress, *, ssl: ssl_module.SSLContext | None = None, server_hostname: str | None = None,
                 timeout: float = 3.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(server, clock)
        from .aio import _connect_error

        try:
            sock = socket.create_connection((server.host, server.port), timeout=timeout)
        except OSError as exc:
            raise _connect_error(exc, str(server), timeout) from None
        if ssl is not None:
            try:
                sock = ssl.wrap_socket(sock, server_hostname=server_hostname or server.host)
            except OSError as exc:
                sock.close()
                raise _connect_error(exc, str(server), timeout) from None
        self.sock = sock
        self.framer = StreamFramer()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ServerUnreachable(f"the connection failed: {exc.strerror or exc}", server=str(self.server)) from None

    def _read(self, timeout: float) -> list[bytes]:
        self.sock.settimeout(max(timeout, 1e-4))
        try:
            chunk = self.sock.recv(MAX_DATAGRAM)
        except (TimeoutError, BlockingIOError):
            return []
        except OSError as exc:
            raise ServerUnreachable(f"the connection failed: {exc.strerror or exc}", server=str(self.server)) from None
        if not chunk:
            raise ServerUnreachable("the server closed the connection", server=str(self.server))
        try:
            return self.framer.feed(chunk)
        except MalformedMessage as exc:
            err = exc.from_source(str(self.server))
            self.malformed += 1
            self.last_malformed.append(err)
            raise err from None


def request(message: Message, server: TransportAddress, *, timeout: float = 3.0, rto: float = 0.5,
            transport: str = "udp", ssl: ssl_module.SSLContext | None = None) -> tuple[Message, float, int]:
    """One blocking transaction on a fresh socket: ``(response, rtt_ms, sends)``."""
    conn: _Conn = UdpConnection(server) if transport == "udp" else StreamConnection(server, ssl=ssl, timeout=timeout)
    try:
        return conn.transact(message.encode(), message.transaction_id, Retransmission(rto=rto, budget=timeout))
    finally:
        conn.close()


class SyncTurnClient:
    """A blocking TURN client on one :class:`TurnSession` (same calls as :class:`natkit.stun.aio.TurnClient`).

    Peer data read while waiting for answers, or by :meth:`recv`, is queued
    (or handed to ``on_data`` when set).
    """

    def __init__(self, server: TransportAddress, *, transport: str = "udp", username: str | None = None,
                 password: str | None = None, ssl: ssl_module.SSLContext | None = None, server_hostname: str | None = None,
                 timeout: float = 3.0, rto: float = 0.25, software: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if transport not in ("udp", "tcp", "tls"):
            raise UsageError(f"unknown transport {transport!r}", hint="use udp, tcp or tls")
        if not 0 < timeout < float("inf"):
            raise UsageError(f"timeout must be a positive number of seconds, got {timeout}")
        if transport == "tls" and ssl is None:
            from .aio import client_ssl_context

            ssl = client_ssl_context()
        self.server = server
        self.transport = transport
        self.timeout = timeout
        self.rto = rto
        self.clock = clock
        self.conn: _Conn = (UdpConnection(server, clock=clock) if transport == "udp" else
                            StreamConnection(server, ssl=ssl if transport == "tls" else None, server_hostname=server_hostname,
                                             timeout=timeout, clock=clock))
        self.session = TurnSession(username, password, stream=transport != "udp", software=software)
        self.on_data: Callable[[PeerData], None] | None = None
        self._queue: collections.deque[PeerData] = collections.deque(maxlen=MAX_QUEUE)
        self.conn.on_packet = self._packet
        self.conn.on_message = self._message

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def relayed(self) -> TransportAddress | None:
        return self.session.relayed_address

    @property
    def malformed(self) -> int:
        return self.conn.malformed

    def _packet(self, data: bytes) -> None:
        try:
            item = self.session.receive(data)
        except MalformedMessage:
            self.conn.malformed += 1
            return
        if isinstance(item, PeerData):
            self._deliver(item)

    def _message(self, msg: Message) -> None:
        if msg.method == Method.DATA and msg.cls == Class.INDICATION and msg.get("DATA") is not None:
            self._deliver(PeerData(msg.get("XOR-PEER-ADDRESS"), msg["DATA"], None))

    def _deliver(self, item: PeerData) -> None:
        if self.on_data is not None:
            self.on_data(item)
        else:
            self._queue.append(item)

    def call(self, pending: Pending, *, timeout: float | None = None, check: bool = False) -> Reply:
        """Run ``pending`` with its 401/438 retries within ``timeout`` seconds."""
        budget = self.timeout if timeout is None else timeout
        deadline = self.clock() + budget
        while True:
            left = deadline - self.clock()
            if left <= 0:
                raise StunTimeout(f"no final answer within the {format_duration(budget)} budget", server=str(self.server), limit="budget")
            msg, _, _ = self.conn.transact(pending.data, pending.transaction_id, Retransmission(rto=self.rto, budget=left))
            outcome = self.session.handle(pending, msg, self.clock())
            if isinstance(outcome, Pending):
                pending = outcome
                continue
            if check:
                outcome.raise_for_error(server=str(self.server))
            return outcome

    def allocate(self, *, transport: int = PROTO_UDP, family: int | None = None, lifetime: int | None = None,
                 timeout: float | None = None, check: bool = True) -> Reply:
        return self.call(self.session.allocate(transport=transport, family=family, lifetime=lifetime), timeout=timeout, check=check)

    def refresh(self, lifetime: int | None = None, *, timeout: float | None = None, check: bool = True) -> Reply:
        return self.call(self.session.refresh(lifetime), timeout=timeout, check=check)

    def create_permission(self, *peers: TransportAddress, timeout: float | None = None, check: bool = True) -> Reply:
        return self.call(self.session.create_permission(*peers), timeout=timeout, check=check)

    def channel_bind(self, peer: TransportAddress, *, timeout: float | None = None, check: bool = True) -> Reply:
        return self.call(self.session.channel_bind(peer), timeout=timeout, check=check)

    def connect(self, peer: TransportAddress, *, timeout: float | None = None, check: bool = True) -> Reply:
        return self.call(self.session.connect(peer), timeout=timeout, check=check)

    def send(self, peer: TransportAddress, payload: bytes) -> None:
        self.conn.send(self.session.send(peer, payload))

    def send_channel(self, channel: int, payload: bytes) -> None:
        self.conn.send(self.session.channel_data(channel, payload))

    def recv(self, timeout: float = 1.0) -> PeerData | None:
        """The next peer data, None when nothing arrives within ``timeout`` seconds."""
        end = self.clock() + timeout
        while not self._queue:
            left = end - self.clock()
            if left <= 0:
                return None
            for frame in self.conn._read(left):
                self.conn._dispatch(frame, None)
        return self._queue.popleft()

    def release(self) -> bool:
        """Refresh LIFETIME 0; True when confirmed. Never raises."""
        if not self.session.allocated or self.conn.sock is None:
            return False
        try:
            reply = self.call(self.session.refresh(0), timeout=min(self.timeout, 1.0))
        except NatkitError:
            return False
        self.session._released()
        return reply.ok

    def close(self, *, release: bool = True) -> None:
        try:
            if release:
                self.release()
        finally:
            self.conn.close()
