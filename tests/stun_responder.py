"""A tiny STUN/TURN test responder on loopback that answers with whatever a test makes (well-formed or not).

UDP and TCP share one port on 127.0.0.1. ``answer(request, kind)`` gets the decoded request and
"udp" or "tcp" and returns the bytes to send back (or None for silence). Runs in a thread with
blocking sockets, so a test can point a natkit command (in process or as a subprocess) at it.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from typing import Self

from natkit.stun import codec
from natkit.stun.codec import Class, Message, Method
from natkit.stun.framing import StreamFramer

REALM, NONCE = "natkit.test", b"0123456789abcdef"


def raw(req: Message, body: bytes, *, cls: int = Class.RESPONSE, length: int | None = None) -> bytes:
    """A response with ``body`` as its attribute bytes, the header length ``length`` (default: the true length)."""
    mtype = codec.message_type(req.method, cls)
    return struct.pack("!HHI", mtype, len(body) if length is None else length, codec.MAGIC_COOKIE) + req.transaction_id + body


def attr(atype: int, value: bytes, *, pad: bool = True) -> bytes:
    return struct.pack("!HH", atype, len(value)) + value + (bytes(-len(value) % 4) if pad else b"")


def good(req: Message, attrs: list, *, cls: int = Class.RESPONSE, key: bytes | None = None) -> bytes:
    return Message(req.method, cls, req.transaction_id, attrs).encode(key, fingerprint=True)


def challenge(req: Message) -> bytes:
    return good(req, [("ERROR-CODE", (401, "Unauthorized")), ("REALM", REALM), ("NONCE", NONCE)], cls=Class.ERROR)


def turn_then(mutate):
    """An answer function for a TURN client: Binding answered properly, an unsigned Allocate challenged
    with 401, and the signed request answered by ``mutate(request, kind)``."""
    def answer(req: Message, kind: str) -> bytes | None:
        if req.method == Method.BINDING:
            return good(req, [("XOR-MAPPED-ADDRESS", ("127.0.0.1", 1))])
        if "USERNAME" not in req:
            return challenge(req)
        return mutate(req, kind)
    return answer


class Responder:
    def __init__(self, answer) -> None:
        self.answer = answer
        self.requests: list[tuple[str, Message]] = []
        for _ in range(50):
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        self.tcp.listen(16)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.udp.close()
        self.tcp.close()

    def _reply(self, data: bytes, kind: str) -> bytes | None:
        try:
            req = codec.decode(data)
        except ValueError:
            return None
        self.requests.append((kind, req))
        return self.answer(req, kind)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.udp, selectors.EVENT_READ, "udp")
        sel.register(self.tcp, selectors.EVENT_READ, "listen")
        framers: dict[socket.socket, StreamFramer] = {}
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                if key.data == "udp":
                    data, addr = sock.recvfrom(65536)
                    out = self._reply(data, "udp")
                    if out:
                        sock.sendto(out, addr)
                elif key.data == "listen":
                    conn, _ = sock.accept()
                    framers[conn] = StreamFramer()
                    sel.register(conn, selectors.EVENT_READ, "tcp")
                else:
                    try:
                        chunk = sock.recv(65536)
                    except OSError:
                        chunk = b""
                    if not chunk:
                        sel.unregister(sock)
                        framers.pop(sock, None)
                        sock.close()
                        continue
                    for frame in framers[sock].feed(chunk):
                        out = self._reply(frame, "tcp")
                        if out:
                            sock.sendall(out)
        for conn in framers:
            conn.close()
        sel.close()
