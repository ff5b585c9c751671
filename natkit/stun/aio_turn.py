"""The asyncio TURN client (RFC 8656, RFC 6062) on :class:`natkit.stun.turn.TurnSession`.

Also importable as ``natkit.stun.aio.TurnClient``. Transports come from
:mod:`natkit.stun.aio` (:class:`UdpStunEndpoint` connected to the server,
:class:`StreamConnection` for TCP/TLS).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Self

from ..errors import (
    MalformedMessage,
    NatkitError,
    ServerUnreachable,
    StunTimeout,
    UsageError,
)
from ..model import TransportAddress, format_duration
from .aio import (
    MAX_UNMATCHED,
    StreamConnection,
    UdpStunEndpoint,
    _check_budget,
    _connect_error,
    _with_step,
    client_ssl_context,
)
from .codec import HEADER_LENGTH, PROTO_UDP, Class, Message, Method, decode
from .transaction import Retransmission
from .turn import REFRESH_MARGIN, PeerData, Pending, Reply, TurnSession

if TYPE_CHECKING:
    import ssl as ssl_module


class TurnClient:
    """A TURN client (RFC 8656, RFC 6062) over UDP, TCP or TLS, on one :class:`TurnSession`.

    Open with :meth:`open`; use as an async context manager (leaving it
    releases the allocation with Refresh LIFETIME=0 and closes the socket).
    Every request takes ``timeout`` seconds at most, 401 challenge and 438
    retries included (default: the client's ``timeout``). Requests return a
    :class:`~natkit.stun.turn.Reply`; with ``check=True`` an error reply
    raises the mapped natkit error instead (:func:`natkit.stun.turn.error_for`).

    Data from peers goes to ``on_data(PeerData)`` when set, else to a queue
    read with :meth:`recv`.
    """

    def __init__(self, conn: UdpStunEndpoint | StreamConnection, server: TransportAddress, session: TurnSession, *,
                 transport: str, timeout: float, rto: float, ssl: ssl_module.SSLContext | None = None,
                 server_hostname: str | None = None) -> None:
        self.conn = conn
        self.server = server
        self.session = session
        self.transport = transport
        self.timeout = timeout
        self.rto = rto
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.on_data: Callable[[PeerData], None] | None = None
        self._queue: asyncio.Queue[PeerData] = asyncio.Queue(maxsize=10_000)
        self.dropped = 0  # peer data lost to a full queue
        self.indications: collections.deque[Message] = collections.deque(maxlen=MAX_UNMATCHED)
        self.refresh_failures: collections.deque[NatkitError] = collections.deque(maxlen=64)
        conn.on_packet = self._packet
        conn.on_message = self._message

    @classmethod
    async def open(cls, server: TransportAddress, *, transport: str = "udp", username: str | None = None,
                   password: str | None = None, ssl: ssl_module.SSLContext | None = None,
                   server_hostname: str | None = None, timeout: float = 3.0, rto: float = 0.25,
                   local_host: str | None = None, software: str | None = None, rcvbuf: int | None = None) -> TurnClient:
        """Open the control connection: ``transport`` "udp", "tcp" or "tls" (``ssl`` needed for tls).

        UDP sockets are connected to the server (ICMP errors fail requests at
        once); ``rcvbuf`` sets their SO_RCVBUF (bytes) for high packet rates.
        Raises :class:`ServerUnreachable` / :class:`StunTimeout` /
        :class:`~natkit.errors.EnvironmentProblem`.
        """
        _check_budget(timeout)
        if transport not in ("udp", "tcp", "tls"):
            raise UsageError(f"unknown transport {transport!r}", hint="use udp, tcp or tls")
        if transport == "tls" and ssl is None:
            ssl = client_ssl_context()
        conn: UdpStunEndpoint | StreamConnection
        if transport == "udp":
            conn = await UdpStunEndpoint.open(local_host or ("::" if server.family == 6 else "0.0.0.0"), remote=server,
                                              rcvbuf=rcvbuf)
        else:
            conn = await StreamConnection.open(server, ssl=ssl if transport == "tls" else None,
                                               server_hostname=server_hostname, timeout=timeout)
        session = TurnSession(username, password, stream=transport != "udp", software=software)
        return cls(conn, server, session, transport=transport, timeout=timeout, rto=rto,
                   ssl=ssl if transport == "tls" else None, server_hostname=server_hostname)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------- counters
    @property
    def malformed(self) -> int:
        """Messages from the server that did not parse."""
        return self.conn.malformed

    @property
    def relayed(self) -> TransportAddress | None:
        return self.session.relayed_address

    @property
    def mapped(self) -> TransportAddress | None:
        return self.session.mapped

    # ------------------------------------------------------------- receive
    def _packet(self, data: bytes, source: TransportAddress) -> None:
        try:
            item = self.session.receive(data)
        except MalformedMessage as exc:
            self.conn._malformed(data, source, exc)
            return
        if isinstance(item, PeerData):
            self._deliver(item)

    def _message(self, msg: Message, source: TransportAddress) -> None:
        if msg.method == Method.DATA and msg.cls == Class.INDICATION and msg.get("DATA") is not None:
            self._deliver(PeerData(msg.get("XOR-PEER-ADDRESS"), msg["DATA"], None))
        else:
            self.indications.append(msg)

    def _deliver(self, item: PeerData) -> None:
        if self.on_data is not None:
            self.on_data(item)
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1

    async def recv(self, timeout: float | None = None) -> PeerData | None:
        """The next data from a peer, None when nothing arrives within ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    # ------------------------------------------------------------- requests
    def _policy(self, budget: float) -> Retransmission:
        return Retransmission(rto=self.rto, budget=budget, reliable=self.transport != "udp")

    async def call(self, pending: Pending, *, timeout: float | None = None, check: bool = False,
                   step: str | None = None) -> Reply:
        """Run ``pending`` (with its 401/438 retries) within ``timeout`` seconds; return the :class:`Reply`."""
        budget = self.timeout if timeout is None else timeout
        _check_budget(budget)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise StunTimeout(f"no final answer within the {format_duration(budget)} budget", server=str(self.server),
                                  step=step or _step(pending), limit="budget")
            try:
                msg, _, _, _ = await self.conn.transact(pending.data, pending.transaction_id, None, self._policy(left))
            except NatkitError as exc:
                raise _with_step(exc, step or _step(pending)) from None
            outcome = self.session.handle(pending, msg, loop.time())
            if isinstance(outcome, Pending):
                pending = outcome
                continue
            if check:
                outcome.raise_for_error(server=str(self.server), step=step)
            return outcome

    async def allocate(self, *, transport: int = PROTO_UDP, family: int | None = None, lifetime: int | None = None,
                       dont_fragment: bool = False, even_port: bool | None = None, timeout: float | None = None,
                       check: bool = True) -> Reply:
        """Allocate (RFC 8656 §7); see :meth:`TurnSession.allocate`."""
        return await self.call(self.session.allocate(transport=transport, family=family, lifetime=lifetime,
                                                     dont_fragment=dont_fragment, even_port=even_port),
                               timeout=timeout, check=check)

    async def refresh(self, lifetime: int | None = None, *, timeout: float | None = None, check: bool = True) -> Reply:
        return await self.call(self.session.refresh(lifetime), timeout=timeout, check=check)

    async def create_permission(self, *peers: TransportAddress, timeout: float | None = None, check: bool = True) -> Reply:
        return await self.call(self.session.create_permission(*peers), timeout=timeout, check=check)

    async def channel_bind(self, peer: TransportAddress, *, timeout: float | None = None, check: bool = True) -> Reply:
        return await self.call(self.session.channel_bind(peer), timeout=timeout, check=check)

    async def connect(self, peer: TransportAddress, *, timeout: float | None = None, check: bool = True) -> Reply:
        """RFC 6062 Connect on a TCP allocation; the reply's CONNECTION-ID feeds :meth:`open_data_connection`."""
        return await self.call(self.session.connect(peer), timeout=timeout, check=check)

    async def refresh_due(self, *, margin: float = REFRESH_MARGIN, timeout: float | None = None) -> list[Reply]:
        """Send every refresh that is due within ``margin`` seconds (RFC 8656 §8, §9.1, §12.3):
        Refresh for the allocation, CreatePermission for permissions, ChannelBind for channels.
        Returns their replies (errors are replies, not exceptions; a timeout raises)."""
        loop = asyncio.get_running_loop()
        return [await self.call(p, timeout=timeout) for p in self.session.refreshes_due(loop.time(), margin)]

    async def maintain(self, *, margin: float = REFRESH_MARGIN, every: float = 5.0) -> None:
        """Keep the allocation, permissions and channels alive until cancelled (long-running clients:
        monitors, load generators). Failed refreshes are kept in ``refresh_failures`` (the last 64)."""
        while True:
            try:
                for reply in await self.refresh_due(margin=margin):
                    if not reply.ok:
                        self.refresh_failures.append(reply.error(server=str(self.server)))
            except NatkitError as exc:
                self.refresh_failures.append(exc)
            await asyncio.sleep(every)

    async def release(self, *, timeout: float | None = None) -> bool:
        """Refresh with LIFETIME 0 (RFC 8656 §8). True when the server confirmed; never raises."""
        if not self.session.allocated or getattr(self.conn, "closed", False):
            return False
        try:
            reply = await self.call(self.session.refresh(0), timeout=timeout or min(self.timeout, 1.0))
        except NatkitError:
            return False
        self.session._released()
        return reply.ok

    def send(self, peer: TransportAddress, payload: bytes) -> None:
        """Send ``payload`` to ``peer``: ChannelData on a bound channel, else a Send indication."""
        data = self.session.send(peer, payload)
        conn = self.conn
        if isinstance(conn, UdpStunEndpoint):
            conn.sendto(data)
        else:
            conn.send(data)

    def send_channel(self, channel: int, payload: bytes) -> None:
        """Send ChannelData on ``channel`` (the load generator's fast path: no lookup)."""
        data = self.session.channel_data(channel, payload)
        if self.transport == "udp":
            self.conn.transport.sendto(data)
        else:
            self.conn.transport.write(data)

    async def open_data_connection(self, connection_id: int, *, timeout: float | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """RFC 6062 §4.4: a new TCP/TLS connection to the server bound with ConnectionBind to ``connection_id``.

        Returns ``(reader, writer)`` carrying the peer's bytes. Raises the
        mapped error when the server refuses the binding.
        """
        budget = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                self.server.host, self.server.port, ssl=self.ssl,
                server_hostname=(self.server_hostname or self.server.host) if self.ssl else None), budget)
        except (TimeoutError, OSError) as exc:
            raise _connect_error(exc, str(self.server), budget) from None
        try:
            pending = self.session.connection_bind(connection_id)
            while True:
                writer.write(pending.data)
                msg = await _read_one(reader, deadline - loop.time(), str(self.server))
                outcome = self.session.handle(pending, msg, loop.time())
                if isinstance(outcome, Pending):
                    pending = outcome
                    continue
                outcome.raise_for_error(server=str(self.server), step="connectionbind")
                return reader, writer
        except BaseException:
            writer.close()
            raise

    async def close(self, *, release: bool = True) -> None:
        """Release the allocation (when ``release``) and close the connection."""
        try:
            if release:
                await self.release()
        finally:
            self.conn.close()


async def _read_one(reader: asyncio.StreamReader, timeout: float, server: str) -> Message:
    """One STUN message from a stream (the ConnectionBind answer), within ``timeout`` seconds."""
    try:
        header = await asyncio.wait_for(reader.readexactly(HEADER_LENGTH), max(0.001, timeout))
        body = await asyncio.wait_for(reader.readexactly(int.from_bytes(header[2:4], "big")), max(0.001, timeout))
    except TimeoutError:
        raise StunTimeout(f"no ConnectionBind answer within {format_duration(timeout)}", server=server, step="connectionbind", limit="budget") from None
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ServerUnreachable(f"connection closed before the ConnectionBind answer ({exc.__class__.__name__})", server=server) from None
    try:
        return decode(header + body)
    except MalformedMessage as exc:
        raise exc.from_source(server) from None


def _step(pending: Pending) -> str:
    from .codec import method_name

    return method_name(pending.method).lower()
