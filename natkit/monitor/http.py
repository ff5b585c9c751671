"""A minimal asyncio HTTP/1.1 server for the monitor's three GET endpoints (no aiohttp).

Why not aiohttp: importing ``aiohttp.web`` costs ~0.35 s of CPU here, more than the rest of the
monitor's start-up together, and the issue asks for a first scrape within a second of start. The
endpoints need little: GET (and HEAD) with a query string, a body with a Content-Length, keep-alive.

Bounds: a request head of at most 8 KiB read within 10 s, at most :data:`MAX_CONNECTIONS` open
connections (more are closed at once), an idle keep-alive connection closed after 60 s. Anything
else is answered 400/405/431 and the connection closed. A handler error is a 500, never a crash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlsplit

MAX_HEAD = 8192
HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
MAX_CONNECTIONS = 64
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, status: int, text: str, **kw) -> Response:
        return cls(status, text.encode(), **kw)


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    """Serve ``routes`` ({path: handler}) on a bound listening socket; ``start()``/``stop()``."""

    def __init__(self, sock: socket.socket, routes: dict[str, Handler]) -> None:
        self.sock = sock
        self.routes = routes
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, sock=self.sock, limit=MAX_HEAD)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=2.0)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except TimeoutError:
                pass
            self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= MAX_CONNECTIONS or task is None:
            writer.close()
            return
        self._connections.add(task)
        try:
            first = True
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT if first else IDLE_TIMEOUT)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await self._send(writer, Response.text(431, "request head too large\n"), close=True)
                    return
                first = False
                request = _parse(head)
                if request is None:
                    await self._send(writer, Response.text(400, "malformed request\n"), close=True)
                    return
                response = await self._dispatch(request)
                close = request.headers.get("connection", "").lower() == "close"
                await self._send(writer, response, close=close, head_only=request.method == "HEAD")
                if close:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._connections.discard(task)
            writer.close()

    async def _dispatch(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response.text(405, "only GET\n", headers=(("Allow", "GET, HEAD"),))
        handler = self.routes.get(request.path)
        if handler is None:
            return Response.text(404, "not found: try /metrics, /probe?target=..., /healthz\n")
        try:
            return await handler(request)
        except Exception as exc:  # noqa: BLE001 - a bug in a handler: a 500 with its name, the server goes on
            return Response.text(500, f"internal error: {exc.__class__.__name__}: {exc}\n")

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, response: Response, *, close: bool, head_only: bool = False) -> None:
        lines = [f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Status')}",
                 f"Content-Type: {response.content_type}", f"Content-Length: {len(response.body)}",
                 *(f"{k}: {v}" for k, v in response.headers), *(("Connection: close",) if close else ())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else response.body))
        try:
            await writer.drain()
        except ConnectionError:
            pass


def _parse(head: bytes) -> Request | None:
    try:
        text = head.decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
        if not version.startswith("HTTP/1."):
            return None
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        parts = urlsplit(target)
        return Request(method, parts.path, dict(parse_qsl(parts.query)), headers)
    except ValueError:
        return None
