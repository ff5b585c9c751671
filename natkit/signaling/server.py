"""The signaling server: WebSocket rooms on aiohttp, plus the browser test page.

Routes: ``GET /ws`` (WebSocket, protocol in :mod:`natkit.signaling.protocol`),
``GET /`` (the test page, strict Content-Security-Policy, no external
resources), ``GET /natkit.js`` and ``/natkit.css`` (its assets),
``GET /config.json`` (ICE servers for the page: fresh TURN REST credentials
when the server was given a TURN URI and secret), ``GET /healthz`` (counters).

Limits protect the server and the other rooms from a misbehaving client: a
message larger than ``max_message`` bytes gets an ``error`` reply and is
dropped; a frame larger than ``hard_max_message`` closes that connection
(WebSocket close code 1009); more than ``max_errors`` protocol errors close it
(1008); a client that does not join within ``join_timeout`` seconds or sends
nothing for ``idle_timeout`` seconds is closed (4000); messages beyond
``rate`` per second (bucket of ``burst``) are rejected; at most
``room_size`` peers per room.

Before any of that, every accepted TCP connection counts against
``max_connections`` (fitted under the open-file limit), whether it is a
WebSocket or an HTTP request still arriving: one over the cap is answered
``503`` and closed; an HTTP request (headers and body) not complete within
``request_timeout`` seconds is answered ``408`` and closed. A malformed
request (aiohttp answers 400) or a refused connection is one line on stderr,
rate-limited (:mod:`natkit.signaling.guard`), never a traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import secrets
import socket
import sys
import time
from typing import Any

from . import protocol as p

CLOSE_POLICY = 1008  # RFC 6455 §7.4.1: policy violation
CLOSE_TOO_BIG = 1009
CLOSE_IDLE = 4000
CLOSE_AUTH = 4001
SEND_TIMEOUT = 5.0  # seconds a slow reader may hold up a send before it is dropped

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}
PAGE_FILES = {  # route -> (package file, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/natkit.js": ("natkit.js", "text/javascript; charset=utf-8"),
    "/natkit.css": ("natkit.css", "text/css; charset=utf-8"),
}


@dataclasses.dataclass(frozen=True)
class SignalConfig:
    """Settings of a :class:`SignalingServer`. Sizes in bytes, times in seconds.

    ``port`` 0 picks a free port. ``token``: when set, ``join`` must carry it
    (and ``/config.json`` wants it as ``?token=``). ``turn_uris`` with
    ``turn_secret`` make ``/config.json`` mint REST credentials
    (:func:`natkit.credentials.mint`, ``credential_ttl`` seconds) for the page;
    ``stun_uris`` are listed there too.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    room_size: int = 2
    max_message: int = 64 * 1024
    hard_max_message: int = 1024 * 1024
    idle_timeout: float = 300.0
    join_timeout: float = 15.0
    request_timeout: float = 10.0  # a whole HTTP request (headers + body) after connecting or after the last response
    max_connections: int = 2000
    max_errors: int = 20
    rate: float = 50.0  # messages per second per connection, on average
    burst: int = 100
    serve_page: bool = True
    turn_uris: tuple[str, ...] = ()
    turn_secret: str | None = None
    stun_uris: tuple[str, ...] = ()
    credential_ttl: int = 3600
    verbose: bool = False
    cert: str | None = None  # PEM certificate chain: serve https:// and wss:// (a secure context for the page)
    key: str | None = None  # its PEM private key

    def validate(self) -> "SignalConfig":
        """Return self; raise :class:`natkit.errors.UsageError` for out-of-range values."""
        from ..errors import UsageError

        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be 0..65535, got {self.port}")
        if not 2 <= self.room_size <= 64:
            raise UsageError(f"--room-size must be 2..64, got {self.room_size}")
        if not 1024 <= self.max_message <= self.hard_max_message:
            raise UsageError(f"--max-message must be 1024..{self.hard_max_message} bytes, got {self.max_message}")
        for name in ("idle_timeout", "join_timeout", "request_timeout"):
            value = getattr(self, name)
            if not 0 < value < 86400 * 365:  # also rejects nan and inf
                raise UsageError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {value}")
        if self.max_connections < 1:
            raise UsageError("--max-connections must be at least 1")
        if bool(self.cert) != bool(self.key):
            raise UsageError("--cert and --key go together")
        if self.turn_uris and not self.turn_secret:
            raise UsageError("--turn for the page needs --secret (credentials are minted per page load)")
        for uri in self.turn_uris:
            from ..uri import parse_turn_uri

            parse_turn_uri(uri)
        return self


@dataclasses.dataclass
class Stats:
    """Counters since start: connections, joins, relayed messages, errors sent, closes by reason."""

    connections_total: int = 0
    joins: int = 0
    relayed: int = 0
    errors: int = 0
    closed_idle: int = 0
    closed_errors: int = 0
    closed_too_big: int = 0
    rejected_full: int = 0  # TCP connections refused (503) at the connection cap
    rejected_requests: int = 0  # malformed HTTP requests (400) and failed handlers
    closed_request_timeout: int = 0  # HTTP requests not complete within request_timeout (408)


class _Peer:
    __slots__ = ("id", "ws", "room", "meta", "errors", "tokens", "last_refill", "closing")

    def __init__(self, ws, burst: int) -> None:
        self.id = secrets.token_hex(4)
        self.ws = ws
        self.room: str | None = None
        self.meta: dict = {}
        self.errors = 0
        self.tokens = float(burst)
        self.last_refill = time.monotonic()
        self.closing = False


class SignalingServer:
    """A running signaling server; use as ``async with SignalingServer(config) as srv``.

    ``srv.port`` is the bound port, ``srv.url`` the page's ``http://`` URL and
    ``srv.ws_url`` the WebSocket URL; ``srv.cap`` the connection cap in force
    and ``srv.notes`` why it is below ``max_connections`` (the open-file
    limit). Raises :class:`natkit.errors.EnvironmentProblem` when the port
    cannot be bound or no file descriptor is free for a connection.
    """

    def __init__(self, config: SignalConfig | None = None) -> None:
        from .guard import RejectLog

        self.config = (config or SignalConfig()).validate()
        self.rooms: dict[str, dict[str, _Peer]] = {}
        self.peers: set[_Peer] = set()
        self.stats = Stats()
        self.port: int | None = None
        self.cap = self.config.max_connections
        self.notes: list[str] = []
        self.reject_log = RejectLog()
        self.admission: Any = None  # natkit.signaling.guard.Admission once started
        self._runner: Any = None  # aiohttp's AppRunner (imported when the server starts)
        self._ws_log: Any = None  # our logging.Handler on aiohttp's WebSocket logger while running
        self._sock: socket.socket | None = None
        self._page: dict[str, bytes] = {}

    # -- lifecycle -------------------------------------------------------
    async def start(self) -> "SignalingServer":
        from aiohttp import web

        from ..errors import EnvironmentProblem
        from .guard import Admission, attach_websocket_log, connection_cap, server_logger

        if self.config.serve_page:
            self._page = load_page()
        ssl_context = self._ssl_context()
        self.cap, note = connection_cap(self.config.max_connections)
        if note:
            self.notes.append(note)
            print(f"natkit signal: {note}", file=sys.stderr, flush=True)
        if self.cap < 1:
            raise EnvironmentProblem("no file descriptor is free for a connection", step="listen",
                                     hint="raise the open-file limit (ulimit -n)")
        app = web.Application(client_max_size=4096, middlewares=[self._admission_middleware()])
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/config.json", self._ice_config)
        if self.config.serve_page:
            for route in PAGE_FILES:
                app.router.add_get(route, self._static)
            app.router.add_get("/favicon.ico", self._no_content)
        timeout = self.config.request_timeout
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0,
            logger=server_logger(self.reject_log, self._count_rejected), keepalive_timeout=2 * timeout, lingering_time=timeout,  # the guard's timer comes first
        )
        await self._runner.setup()
        try:
            # bind ourselves: the bound port (for --port 0) is then known without aiohttp internals
            family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
            sock = socket.create_server((self.config.host, self.config.port), family=family, backlog=512)
            sock.setblocking(False)
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise EnvironmentProblem(
                f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}",
                step="listen", hint="choose another --port (0 picks a free one)",
            ) from None
        # our own accept loop: every connection passes the cap and the request timer (guard.py)
        self.admission = Admission(self._runner.server, cap=self.cap, request_timeout=timeout, ssl_context=ssl_context,
                                   log=self.reject_log, stats=self.stats)
        self._sock = sock
        self._ws_log = attach_websocket_log(self.reject_log)
        self.admission.listen(sock)
        self.port = sock.getsockname()[1]
        return self

    # -- admission (natkit.signaling.guard) -------------------------------
    def _admission_middleware(self):
        from aiohttp import web

        @web.middleware
        async def admission(request, handler):
            guard = self.admission.conns.get(request.transport) if self.admission else None
            if guard is not None:
                guard.handling()
            try:
                return await handler(request)
            finally:
                if guard is not None and guard.transport is not None and not guard.transport.is_closing():
                    guard.arm()  # the next request on this connection is due within request_timeout

        return admission

    def _count_rejected(self) -> None:
        self.stats.rejected_requests += 1

    def _ssl_context(self):
        if not self.config.cert:
            return None
        import ssl

        from ..errors import UsageError

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.config.cert, self.config.key)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load --cert/--key: {exc}") from None
        return ctx

    async def stop(self) -> None:
        """Close every connection (code 1001) and the listener; bounded to a few seconds."""
        if self.admission is not None:  # accept nothing more
            self.admission.stop_listening()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for peer in list(self.peers):
            peer.closing = True
            try:
                await asyncio.wait_for(peer.ws.close(code=1001, message=b"server shutting down"), 1.0)
            except (asyncio.TimeoutError, Exception):
                pass
        if self._runner is not None:
            try:
                await asyncio.wait_for(self._runner.cleanup(), 5.0)
            except asyncio.TimeoutError:
                pass
            self._runner = None
        if self.admission is not None:  # requests still arriving, handshakes under way
            self.admission.close_all()
        if self._ws_log is not None:
            from .guard import detach_websocket_log

            detach_websocket_log(self._ws_log)
            self._ws_log = None
        self.reject_log.flush()

    async def __aenter__(self) -> "SignalingServer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.config.cert else "http"
        return f"{scheme}://{host}:{self.port}/"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "ws"

    # -- HTTP ------------------------------------------------------------
    async def _static(self, request):
        from aiohttp import web

        name, ctype = PAGE_FILES[request.path]
        return web.Response(body=self._page[name], headers={**SECURITY_HEADERS, "Content-Type": ctype})

    async def _no_content(self, request):
        from aiohttp import web

        return web.Response(status=204, headers=SECURITY_HEADERS)

    async def _healthz(self, request):
        from aiohttp import web

        body = {"ok": True, "version": p.VERSION, "connections": len(self.peers), "rooms": len(self.rooms),
                **dataclasses.asdict(self.stats)}
        return web.json_response(body, headers=SECURITY_HEADERS)

    async def _ice_config(self, request):
        from aiohttp import web

        if self.config.token and not token_matches(request.query.get("token", ""), self.config.token):
            return web.json_response({"ok": False, "error": "bad token"}, status=403, headers=SECURITY_HEADERS)
        return web.json_response(self.ice_config(), headers=SECURITY_HEADERS)

    def ice_config(self) -> dict:
        """``{"iceServers": [...], "relayOnly": bool}`` for the page (fresh REST credentials)."""
        servers: list[dict[str, Any]] = []
        if self.config.stun_uris:
            servers.append({"urls": list(self.config.stun_uris)})
        if self.config.turn_uris and self.config.turn_secret:  # validate() requires the secret with --turn
            from ..credentials import mint

            cred = mint(self.config.turn_secret, "natkit-web", self.config.credential_ttl)
            servers.append(cred.ice_server(list(self.config.turn_uris)))
        return {"iceServers": servers, "relayOnly": bool(self.config.turn_uris)}

    # -- WebSocket -------------------------------------------------------
    async def _ws(self, request):
        from aiohttp import WSMsgType, web

        cfg = self.config
        ws = web.WebSocketResponse(max_msg_size=cfg.hard_max_message, heartbeat=30.0, compress=False, autoping=True)
        await ws.prepare(request)
        self.stats.connections_total += 1
        peer = _Peer(ws, cfg.burst)
        self.peers.add(peer)
        try:
            while not ws.closed:
                timeout = cfg.idle_timeout if peer.room else cfg.join_timeout
                try:
                    msg = await ws.receive(timeout=timeout)
                except asyncio.TimeoutError:
                    self.stats.closed_idle += 1
                    what = "nothing received" if peer.room else "no join"
                    await self._error(peer, p.IDLE, f"{what} for {timeout:g}s: closing")
                    await ws.close(code=CLOSE_IDLE, message=b"idle")
                    break
                if msg.type == WSMsgType.TEXT:
                    await self._on_text(peer, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self._error(peer, p.BINARY, "binary frames are not part of the protocol (send JSON text)")
                elif msg.type == WSMsgType.ERROR:
                    exc = ws.exception()
                    if "message size" in str(exc).lower() or getattr(exc, "code", None) == CLOSE_TOO_BIG:
                        self.stats.closed_too_big += 1
                    break
                else:  # CLOSE, CLOSING, CLOSED
                    break
                if peer.errors > cfg.max_errors:
                    self.stats.closed_errors += 1
                    await self._error(peer, p.TOO_MANY_ERRORS, f"more than {cfg.max_errors} protocol errors: closing")
                    await ws.close(code=CLOSE_POLICY, message=b"too many errors")
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let one connection take the server down
            self._log(f"connection {peer.id}: {exc.__class__.__name__}: {exc}")
        finally:
            self.peers.discard(peer)
            await self._leave(peer, "closed")
            if not ws.closed:
                try:
                    await asyncio.wait_for(ws.close(), 1.0)
                except (asyncio.TimeoutError, Exception):
                    pass
        return ws

    def _take_token(self, peer: _Peer) -> bool:
        now = time.monotonic()
        peer.tokens = min(float(self.config.burst), peer.tokens + (now - peer.last_refill) * self.config.rate)
        peer.last_refill = now
        if peer.tokens < 1.0:
            return False
        peer.tokens -= 1.0
        return True

    async def _on_text(self, peer: _Peer, text: str) -> None:
        if not self._take_token(peer):
            await self._error(peer, p.RATE_LIMITED, f"more than {self.config.rate:g} messages per second: message dropped")
            return
        try:
            msg = p.parse_client_message(text, self.config.max_message)
        except p.ProtocolError as exc:
            await self._error(peer, exc.code, exc.message, exc.ref)
            return
        kind = msg["type"]
        if kind == "ping":
            await self._send(peer, peer.ws, {"type": "pong"})
        elif kind == "join":
            await self._join(peer, msg)
        elif peer.room is None:
            await self._error(peer, p.NOT_JOINED, f"join a room before sending {kind!r}", kind)
        else:
            await self._relay(peer, msg)

    async def _join(self, peer: _Peer, msg: dict) -> None:
        cfg = self.config
        if peer.room is not None:
            await self._error(peer, p.ALREADY_JOINED, f"already in room {peer.room!r}", "join")
            return
        if cfg.token and not token_matches(msg.get("token") or "", cfg.token):
            peer.errors += cfg.max_errors  # no guessing: the connection is closed
            await self._error(peer, p.BAD_TOKEN, "missing or wrong token", "join")
            await peer.ws.close(code=CLOSE_AUTH, message=b"bad token")
            return
        room = self.rooms.get(msg["room"], {})
        if len(room) >= cfg.room_size:
            await self._error(peer, p.ROOM_FULL, f"room {msg['room']!r} is full ({cfg.room_size} peers)", "join")
            return
        others = list(room.values())
        peer.room = msg["room"]
        peer.meta = msg["meta"]
        room[peer.id] = peer
        self.rooms[peer.room] = room
        self.stats.joins += 1
        self._log(f"{peer.id} joined {peer.room!r} ({len(room)}/{cfg.room_size})")
        await self._send(peer, peer.ws, {"type": "joined", "room": peer.room, "id": peer.id, "room_size": cfg.room_size,
                                         "peers": [{"id": o.id, "meta": o.meta} for o in others]})
        for other in others:
            await self._send(other, other.ws, {"type": "peer-joined", "id": peer.id, "meta": peer.meta})

    async def _relay(self, peer: _Peer, msg: dict) -> None:
        room = self.rooms.get(peer.room or "", {})  # only joined peers get here
        to = msg.get("to")
        if to is not None:
            target = room.get(to)
            if target is None or target is peer:
                await self._error(peer, p.NO_SUCH_PEER, f"no peer {to!r} in room {peer.room!r}", msg["type"])
                return
            targets = [target]
        else:
            targets = [o for o in room.values() if o is not peer]
        out = p.relayed(msg, peer.id)
        for target in targets:
            if await self._send(target, target.ws, out):
                self.stats.relayed += 1
        if msg["type"] == "bye" and to is None:
            await self._leave(peer, "bye")

    async def _leave(self, peer: _Peer, reason: str) -> None:
        if peer.room is None:
            return
        room = self.rooms.get(peer.room)
        name, peer.room = peer.room, None
        if room is None:
            return
        room.pop(peer.id, None)
        if not room:
            self.rooms.pop(name, None)
        self._log(f"{peer.id} left {name!r} ({reason})")
        for other in list(room.values()):
            await self._send(other, other.ws, {"type": "peer-left", "id": peer.id, "reason": reason})

    async def _error(self, peer: _Peer, code: str, message: str, ref: str | None = None) -> None:
        peer.errors += 1
        self.stats.errors += 1
        await self._send(peer, peer.ws, p.error_message(code, message, ref))

    async def _send(self, peer: _Peer | None, ws, msg: dict) -> bool:
        """Send one message; a reader too slow for ``SEND_TIMEOUT`` seconds is disconnected."""
        if ws.closed or (peer is not None and peer.closing):
            return False
        try:
            await asyncio.wait_for(ws.send_str(p.encode(msg)), SEND_TIMEOUT)
            return True
        except asyncio.TimeoutError:
            if peer is not None:
                peer.closing = True
            asyncio.get_running_loop().create_task(ws.close(code=CLOSE_POLICY, message=b"too slow"))
        except Exception:  # the connection went away under us
            pass
        return False

    def _log(self, line: str) -> None:
        if self.config.verbose:
            print(f"natkit signal: {line}", file=sys.stderr, flush=True)


def token_matches(given: str, expected: str) -> bool:
    """Constant-time token comparison for any text (``hmac.compare_digest`` refuses non-ASCII ``str``)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def load_page() -> dict[str, bytes]:
    """The test page's files from the ``natkit.web`` package data, by file name.

    Raises :class:`natkit.errors.EnvironmentProblem` when they are missing
    (an installation without package data).
    """
    from importlib import resources

    from ..errors import EnvironmentProblem

    out = {}
    for name, _ in PAGE_FILES.values():
        try:
            out[name] = resources.files("natkit.web").joinpath(name).read_bytes()
        except (FileNotFoundError, ModuleNotFoundError) as exc:
            raise EnvironmentProblem(f"the test page file {name} is not installed: {exc}",
                                     step="page", hint="reinstall natkit (package data natkit/web/*)") from None
    return out


async def serve_forever(config: SignalConfig, *, ready=None) -> None:
    """Run a server until cancelled (Ctrl-C); ``ready(server)`` is called once it listens."""
    async with SignalingServer(config) as server:
        if ready is not None:
            ready(server)
        await asyncio.Event().wait()
