"""Admission control for the signaling server's TCP connections.

aiohttp parses HTTP and WebSocket; this module decides which connections it
gets to see and what the server says about the ones it refuses:

- :class:`Admission` runs the accept loop and decides on each connection as it
  is accepted (asyncio's own server accepts up to its backlog in one go and,
  out of descriptors, logs a traceback per attempt and schedules a retry per
  attempt). Every
  connection counts against the cap from the moment it is accepted (a
  request still being sent, or a TLS handshake, holds a socket just like a
  WebSocket), so one over the cap is answered ``503`` and closed at once.
- :class:`ConnectionGuard` wraps aiohttp's protocol for one admitted
  connection: it must deliver each complete HTTP request (headers and body)
  within ``request_timeout`` seconds of opening or of its previous response,
  else it gets ``408`` and is closed. Once a request is being handled (a
  WebSocket session included) the handler's own timeouts apply.
- :class:`RejectLog` prints one line per rejected request or connection to
  stderr, at most ``burst`` lines per ``window`` seconds, then one line saying
  how many were not printed: the log cannot be flooded from outside.
- :func:`connection_cap` fits the cap under the process's open-file limit
  (raising the soft limit towards the hard one first), so ``accept()`` never
  runs out of descriptors at the cap.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

FD_RESERVE = 32  # descriptors kept free for the listener, page files, DNS, logging ...

RESPONSE_FULL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 b"Retry-After: 5\r\nConnection: close\r\nContent-Length: 12\r\n\r\nserver full\n")
RESPONSE_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Connection: close\r\nContent-Length: 16\r\n\r\nrequest timeout\n")


def printable(text: str, limit: int = 120) -> str:
    """``text`` on one line, control characters escaped, at most ``limit`` characters (attacker-controlled input)."""
    out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)
    return out if len(out) <= limit else out[: limit - 1] + "…"


class RejectLog:
    """Rate-limited one-line log of refused requests: ``emit(line)`` prints at most
    ``burst`` lines per ``window`` seconds (``write`` gets each finished line)."""

    def __init__(self, write: Callable[[str], None] | None = None, *, burst: int = 10, window: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.burst = burst
        self.window = window
        self.clock = clock
        self.window_start = clock()
        self.printed = 0
        self.suppressed = 0
        self.total = 0

    def emit(self, line: str) -> None:
        self.total += 1
        now = self.clock()
        if now - self.window_start >= self.window:
            self.flush()
            self.window_start, self.printed = now, 0
        if self.printed < self.burst:
            self.printed += 1
            self.write(f"natkit signal: {line}")
        else:
            self.suppressed += 1

    def flush(self) -> None:
        """Print the count of lines not printed since the last flush (if any)."""
        if self.suppressed:
            self.write(f"natkit signal: … {self.suppressed} more refused requests or connections not logged (at most {self.burst} lines per {self.window:g} s)")
            self.suppressed = 0


class AiohttpLogHandler(logging.Handler):
    """Turns aiohttp's server log records (a traceback per malformed request) into one
    :class:`RejectLog` line each: ``rejected request from ADDR: 400 Too many headers received``."""

    def __init__(self, log: RejectLog, on_reject: Callable[[], None]) -> None:
        super().__init__(logging.DEBUG)
        self.log = log
        self.on_reject = on_reject

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            if record.levelno >= logging.WARNING:  # e.g. a client's Sec-WebSocket-Protocol list, echoed
                try:
                    text = record.getMessage()
                except Exception:  # noqa: BLE001 - a log record with bad arguments still gives one line
                    text = str(record.msg)
                self.log.emit(printable(f"{record.name.removeprefix('aiohttp.')}: {text}", 200))
            return  # below: aiohttp's debug chatter ("Ignored premature client disconnection")
        self.on_reject()
        code = getattr(exc, "code", None)
        if isinstance(code, int) and code:
            reason = f"{code} {getattr(exc, 'message', '') or exc.__class__.__name__}"
        else:
            reason = f"{exc.__class__.__name__}: {exc}"
        try:
            where = record.getMessage().replace("Error handling request", "rejected request")
        except Exception:  # noqa: BLE001 - a log record with bad arguments still gives one line
            where = "rejected request"
        self.log.emit(printable(f"{where}: {reason}", 200))


def server_logger(log: RejectLog, on_reject: Callable[[], None]) -> logging.Logger:
    """A private logger for aiohttp's ``RequestHandler`` (not registered globally, does not propagate)."""
    logger = logging.Logger("natkit.signaling.http", logging.DEBUG)  # noqa: LOG001 - one per server, not kept by logging
    logger.propagate = False
    logger.addHandler(AiohttpLogHandler(log, on_reject))
    return logger


WEBSOCKET_LOGGER = "aiohttp.websocket"  # aiohttp's global logger for WebSocket handshakes


def attach_websocket_log(log: RejectLog) -> logging.Handler:
    """Route aiohttp's WebSocket handshake warnings (one per request, client text included)
    through ``log`` while a server runs; returns the handler for :func:`detach_websocket_log`."""
    handler = AiohttpLogHandler(log, lambda: None)
    logging.getLogger(WEBSOCKET_LOGGER).addHandler(handler)
    return handler


def detach_websocket_log(handler: logging.Handler) -> None:
    logging.getLogger(WEBSOCKET_LOGGER).removeHandler(handler)


def connection_cap(wanted: int, reserve: int = FD_RESERVE) -> tuple[int, str | None]:
    """How many connections this process can hold open: ``(cap, note)``.

    Raises the soft ``RLIMIT_NOFILE`` towards the hard limit when ``wanted``
    does not fit; ``cap`` is ``wanted`` or less, ``note`` says why it is less
    (None when it is not). ``cap`` may be 0 when no descriptor is free.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return wanted, None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 16
    need = wanted + in_use + reserve
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(hard, need)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted, None
    cap = max(0, soft - in_use - reserve)
    return cap, (f"the open-file limit ({soft}, ulimit -n) leaves room for {cap} connections, "
                 f"not {wanted} (--max-connections): serving at most {cap}")


_CLIENT_GONE = {errno.ECONNABORTED, errno.EPROTO, errno.ECONNRESET}


class Admission:
    """Accepts connections on ``sock`` and hands admitted ones to ``make_inner()`` (aiohttp).

    ``stats`` gets ``rejected_full`` and ``closed_request_timeout`` counted;
    ``log`` the one-line reports. ``conns`` maps each open transport to its
    :class:`ConnectionGuard`.
    """

    def __init__(self, make_inner: Callable[[], asyncio.Protocol], *, cap: int, request_timeout: float,
                 ssl_context=None, log: RejectLog, stats: Any) -> None:
        self.make_inner = make_inner
        self.cap = cap
        self.request_timeout = request_timeout
        self.ssl_context = ssl_context
        self.log = log
        self.stats = stats
        self.conns: dict[Any, ConnectionGuard] = {}
        self.handshaking = 0  # accepted, TLS handshake under way
        self._tasks: set[asyncio.Task] = set()
        self._sock: Any = None
        self._loop: Any = None
        self._resume: asyncio.TimerHandle | None = None

    @property
    def open(self) -> int:
        return len(self.conns) + self.handshaking

    def listen(self, sock) -> None:
        """Start accepting on the non-blocking listening ``sock`` (until :meth:`stop_listening`).

        A reader callback rather than ``loop.sock_accept``: cancelling a pending
        ``sock_accept`` while a connection arrives makes Python 3.11's loop raise
        ``InvalidStateError`` from a callback (a traceback on the way out) and leaks the socket.
        """
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def stop_listening(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._sock = None

    def _on_readable(self) -> None:
        for _ in range(64):  # a bounded batch per wakeup; every refused socket is closed at once
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _CLIENT_GONE:  # that client is gone already
                    continue
                # out of descriptors or buffers (or anything unexpected): say so, pause, never spin
                self.log.emit(f"cannot accept connections: {exc.strerror or exc}; retrying in 0.1 s")
                self._loop.remove_reader(self._sock.fileno())
                self._resume = self._loop.call_later(0.1, self._listen_again)
                return
            self._admit(conn, addr)

    def _listen_again(self) -> None:
        self._resume = None
        if self._sock is not None:
            self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def _admit(self, conn, addr) -> None:
        peer = str(addr[0]) if isinstance(addr, tuple) and addr else "unknown"
        if self.open >= self.cap:
            self.stats.rejected_full += 1
            self.log.emit(f"refused connection from {peer}: server full ({self.cap} connections)")
            _refuse(conn, None if self.ssl_context else RESPONSE_FULL)  # no plain text into a TLS handshake
            return
        conn.setblocking(False)
        self.handshaking += 1  # counted from now: the task starts later
        task = self._loop.create_task(self._start(conn, peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, conn, peer: str) -> None:
        loop = asyncio.get_running_loop()
        guard = ConnectionGuard(self)  # moves itself from `handshaking` to `conns` in connection_made
        try:
            await loop.connect_accepted_socket(
                lambda: guard, conn, ssl=self.ssl_context,
                ssl_handshake_timeout=self.request_timeout if self.ssl_context else None,
            )
        except (OSError, TimeoutError) as exc:  # TLS handshake failed or timed out
            self.log.emit(printable(f"closed connection from {peer}: TLS handshake failed: {exc.__class__.__name__}: {exc}"))
            conn.close()
        except Exception as exc:  # noqa: BLE001 - whatever went wrong with one connection is one line
            self.log.emit(printable(f"closed connection from {peer}: {exc.__class__.__name__}: {exc}"))
            conn.close()
        finally:
            if not guard.made:  # never became a connection: give its place back
                self.handshaking -= 1

    def timed_out(self, peer: str) -> None:
        self.stats.closed_request_timeout += 1
        self.log.emit(f"closed connection from {peer}: no complete request within {self.request_timeout:g}s")

    def close_all(self) -> None:
        """Stop accepting; abort every connection still open and every handshake under way."""
        self.stop_listening()
        for task in list(self._tasks):
            task.cancel()
        for transport in list(self.conns):
            transport.abort()
        self.conns.clear()


def _refuse(conn, response: bytes | None) -> None:
    try:
        if response:
            conn.setblocking(False)
            conn.send(response)  # a fresh socket's send buffer takes it whole
    except OSError:
        pass
    finally:
        conn.close()


class ConnectionGuard(asyncio.Protocol):
    """One admitted connection, in front of aiohttp's protocol (made by ``owner.make_inner()``)."""

    def __init__(self, owner: Admission) -> None:
        self.owner = owner
        self.inner: asyncio.Protocol | None = None
        self.transport: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.busy = False
        self.made = False  # connection_made has run

    # -- asyncio protocol --------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.made = True
        self.owner.handshaking -= 1  # one place, counted once: from handshaking to conns
        self.owner.conns[transport] = self
        self.inner = self.owner.make_inner()
        self.inner.connection_made(transport)
        self.arm()

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self):
        if self.inner is not None:
            return self.inner.eof_received()
        return None

    def connection_lost(self, exc) -> None:
        self.disarm()
        self.owner.conns.pop(self.transport, None)
        if self.inner is not None:
            inner, self.inner = self.inner, None
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # -- request timing ----------------------------------------------------
    def peer(self) -> str:
        addr = self.transport.get_extra_info("peername") if self.transport is not None else None
        return str(addr[0]) if isinstance(addr, (tuple, list)) and addr else "unknown"

    def arm(self) -> None:
        """Start the clock: the next complete request is due within ``request_timeout``."""
        self.disarm()
        self.busy = False
        self.timer = asyncio.get_running_loop().call_later(self.owner.request_timeout, self._expired)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def handling(self) -> None:
        """A request arrived complete and is being handled: its handler's own timeouts apply."""
        self.disarm()
        self.busy = True

    def _expired(self) -> None:
        self.timer = None
        transport = self.transport
        if self.busy or transport is None or transport.is_closing():
            return
        self.owner.timed_out(self.peer())
        if transport.get_write_buffer_size():
            transport.abort()  # a client that does not even read its last response
            return
        try:
            transport.write(RESPONSE_TIMEOUT)
            transport.close()
        except (OSError, RuntimeError):
            transport.abort()
