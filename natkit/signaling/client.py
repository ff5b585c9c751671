"""The signaling client used by ``natkit peer`` (aiohttp WebSocket client).

Errors (all :class:`natkit.errors.NatkitError`): :class:`SignalingUnreachable`
(exit 4) when the server cannot be reached or the connection drops,
:class:`SignalingAuthRefused` (exit 5) for a wrong token,
:class:`RoomFull` (exit 6) when the room has no place left,
:class:`SignalingError` (exit 1) for any other error the server answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..errors import (  # noqa: F401  (SignalingError & co. are this module's public errors)
    NatkitError,
    RoomFull,
    SignalingAuthRefused,
    SignalingError,
    SignalingUnreachable,
    UsageError,
)
from . import protocol as p

if TYPE_CHECKING:
    import aiohttp

KEEPALIVE = 20.0  # seconds between pings while the connection is otherwise quiet


def check_url(url: str) -> str:
    """Validate a ``ws://HOST:PORT[/path]`` or ``wss://`` URL; a bare ``HOST:PORT`` or a
    path-less URL gets ``/ws``. Returns the URL; raises :class:`UsageError`."""
    if "://" not in url:
        url = "ws://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise UsageError(f"--signal must be ws://HOST:PORT or wss://HOST:PORT, got {url!r}")
    try:
        _ = parts.port  # urlsplit checks the port only when asked
    except ValueError:
        raise UsageError(f"bad port in --signal {url!r}") from None
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return f"{scheme}://{parts.netloc}{path}" + (f"?{parts.query}" if parts.query else "")


@dataclasses.dataclass(frozen=True)
class Joined:
    """The server's answer to ``join``: our ``id`` and the ``peers`` already there
    (``[{"id", "meta"}]``); a non-empty list means we are the offerer."""

    room: str
    id: str
    peers: tuple[dict, ...]
    room_size: int


class SignalingClient:
    """One WebSocket connection to a natkit signaling server.

    ``async with SignalingClient(url) as sig: joined = await sig.join(room)``;
    then :meth:`send` and :meth:`recv`. Errors from the server addressed to
    this client raise from :meth:`recv`.
    """

    def __init__(self, url: str, *, timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = check_url(url)
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self.joined: Joined | None = None

    async def connect(self) -> "SignalingClient":
        import aiohttp

        self._session = session = aiohttp.ClientSession()
        try:
            self._ws = await asyncio.wait_for(
                session.ws_connect(self.url, ssl=self.ssl_context if self.ssl_context is not None else True,
                                         heartbeat=30.0, max_msg_size=4 * 1024 * 1024, autoping=True),
                self.timeout)
        except asyncio.TimeoutError:
            await self.close()
            raise SignalingUnreachable(f"no WebSocket handshake within {self.timeout:g}s", server=self.url, step="signaling") from None
        except aiohttp.WSServerHandshakeError as exc:
            await self.close()
            if exc.status == 503:
                raise RoomFull("the signaling server is full (HTTP 503)", code=p.SERVER_FULL, server=self.url,
                               step="signaling", hint="try again later, or raise the server's --max-connections") from None
            raise SignalingUnreachable(f"WebSocket handshake refused: HTTP {exc.status}", server=self.url, step="signaling",
                                       hint="is this a natkit signaling server? the path is usually /ws") from None
        except (aiohttp.ClientError, OSError) as exc:
            await self.close()
            text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise SignalingUnreachable(f"cannot connect: {text}", server=self.url, step="signaling") from None
        self._keepalive = asyncio.get_running_loop().create_task(self._ping_loop())
        return self

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE)
            try:
                await self.send({"type": "ping"})
            except NatkitError:
                return

    async def __aenter__(self) -> "SignalingClient":
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self, bye: bool = False) -> None:
        """Close the connection (after a ``bye`` when ``bye``); bounded to 2 seconds."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        try:
            if self._ws is not None and not self._ws.closed:
                if bye:
                    try:
                        await asyncio.wait_for(self._ws.send_str(p.encode({"type": "bye"})), 1.0)
                    except Exception:
                        pass
                await asyncio.wait_for(self._ws.close(), 1.0)
        except (asyncio.TimeoutError, Exception):
            pass
        if self._session is not None:
            try:
                await asyncio.wait_for(self._session.close(), 1.0)
            except (asyncio.TimeoutError, Exception):
                pass
            self._session = None

    async def send(self, msg: dict) -> None:
        """Send one message. Raises :class:`SignalingUnreachable` when the connection is gone."""
        if self._ws is None or self._ws.closed:
            raise SignalingUnreachable("the signaling connection is closed", server=self.url, step="signaling")
        try:
            await asyncio.wait_for(self._ws.send_str(p.encode(msg)), self.timeout)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError) as exc:
            raise SignalingUnreachable(f"cannot send: {exc.__class__.__name__}", server=self.url, step="signaling") from None

    async def recv(self, timeout: float | None = None) -> dict:
        """The next message from the server (a dict with ``type``).

        Raises :class:`asyncio.TimeoutError` after ``timeout`` seconds,
        :class:`SignalingUnreachable` when the connection closes, and the
        matching :class:`SignalingError` for an ``error`` message.
        """
        import aiohttp

        ws = self._ws
        if ws is None:
            raise SignalingUnreachable("the signaling connection is not open", server=self.url, step="signaling")
        while True:
            msg = await asyncio.wait_for(ws.receive(), timeout)
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if not isinstance(data, dict) or not isinstance(data.get("type"), str):
                    continue
                if data["type"] == "pong":
                    continue
                if data["type"] == "error":
                    raise self._error(data)
                return data
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                code = ws.close_code
                raise SignalingUnreachable(f"the signaling server closed the connection (code {code})",
                                           server=self.url, step="signaling")

    def _error(self, data: dict) -> SignalingError:
        code = str(data.get("code"))
        text = str(data.get("message"))[:200]
        if code == p.BAD_TOKEN:
            return SignalingAuthRefused(f"token refused: {text}", code=code, server=self.url, step="join",
                                        hint="pass the server's --token")
        if code == p.ROOM_FULL:
            return RoomFull(text, code=code, server=self.url, step="join", hint="pick another --room")
        return SignalingError(f"server error {code}: {text}", code=code, server=self.url, step="signaling")

    async def join(self, room: str, *, token: str | None = None, meta: dict | None = None) -> Joined:
        """Join ``room``; returns :class:`Joined`. Raises :class:`RoomFull`,
        :class:`SignalingAuthRefused`, :class:`SignalingError` or :class:`UsageError` (bad room name)."""
        if not p.ROOM_RE.match(room):
            raise UsageError(f"bad room name {room!r}: 1-64 characters of A-Z a-z 0-9 _ . : - starting alphanumeric")
        msg: dict = {"type": "join", "room": room, "meta": meta or {}}
        if token:
            msg["token"] = token
        await self.send(msg)
        while True:
            try:
                data = await self.recv(self.timeout)
            except asyncio.TimeoutError:
                raise SignalingUnreachable(f"no answer to join within {self.timeout:g}s", server=self.url, step="join") from None
            if data["type"] == "joined":
                self.joined = Joined(str(data.get("room")), str(data.get("id")), tuple(data.get("peers") or ()),
                                     int(data.get("room_size") or 2))
                return self.joined
