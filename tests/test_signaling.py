"""The signaling server: protocol validation, bad input that must not disturb other rooms, and a bounded load test.

Everything runs on 127.0.0.1 with servers this test starts (port 0).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import socket
import struct

import pytest

from natkit.signaling import protocol as p

aiohttp = pytest.importorskip("aiohttp")

from natkit.signaling.client import RoomFull, SignalingAuthRefused, SignalingClient, SignalingUnreachable, check_url  # noqa: E402
from natkit.signaling.server import SignalConfig, SignalingServer  # noqa: E402


def run(coro, limit: float = 30.0):
    """Run a test coroutine with a hard time cap."""
    return asyncio.run(asyncio.wait_for(coro, limit))


# --------------------------------------------------------------------------- pure protocol


def test_protocol_accepts_and_normalises():
    m = p.parse_client_message('{"type":"join","room":"r-1.a:b","meta":{"agent":"x"},"extra":1}', 4096)
    assert m == {"type": "join", "room": "r-1.a:b", "meta": {"agent": "x"}}
    m = p.parse_client_message(json.dumps({"type": "offer", "sdp": "v=0\r\n", "to": "abcdef12", "evil": "<x>"}), 4096)
    assert m == {"type": "offer", "sdp": "v=0\r\n", "to": "abcdef12"}
    m = p.parse_client_message('{"type":"candidate","candidate":null}', 4096)
    assert m == {"type": "candidate", "candidate": None, "to": None}
    cand = {"candidate": "candidate:1 1 udp 1 127.0.0.1 5 typ relay", "sdpMid": "0", "sdpMLineIndex": 0}
    m = p.parse_client_message(json.dumps({"type": "candidate", "candidate": cand}), 4096)
    assert m["candidate"]["candidate"] == cand["candidate"] and m["candidate"]["usernameFragment"] is None
    assert p.relayed({"type": "bye", "reason": None, "to": "abcdef12"}, "12345678") == {"type": "bye", "reason": None, "from": "12345678"}


@pytest.mark.parametrize("text, code", [
    ("garbage", p.BAD_JSON),
    ("{", p.BAD_JSON),
    ("[1,2]", p.NOT_OBJECT),
    ("null", p.NOT_OBJECT),
    ('{"no":"type"}', p.UNKNOWN_TYPE),
    ('{"type":5}', p.UNKNOWN_TYPE),
    ('{"type":"shutdown"}', p.UNKNOWN_TYPE),
    ('{"type":"joined"}', p.UNKNOWN_TYPE),
    ('{"type":"join"}', p.BAD_FIELD),
    ('{"type":"join","room":"../etc"}', p.BAD_FIELD),
    ('{"type":"join","room":"' + "r" * 65 + '"}', p.BAD_FIELD),
    ('{"type":"join","room":"r","meta":[1]}', p.BAD_FIELD),
    ('{"type":"join","room":"r","meta":{"x":"' + "y" * 2000 + '"}}', p.BAD_FIELD),
    ('{"type":"offer"}', p.BAD_FIELD),
    ('{"type":"offer","sdp":"hello"}', p.BAD_FIELD),
    ('{"type":"answer","sdp":"v=0","to":"../../x"}', p.BAD_FIELD),
    ('{"type":"candidate"}', p.BAD_FIELD),
    ('{"type":"candidate","candidate":"x"}', p.BAD_FIELD),
    ('{"type":"candidate","candidate":{"candidate":1}}', p.BAD_FIELD),
    ('{"type":"candidate","candidate":{"candidate":"c","sdpMLineIndex":true}}', p.BAD_FIELD),
    ('{"type":"bye","reason":7}', p.BAD_FIELD),
    ("[" * 100_000 + "]" * 100_000, p.TOO_LARGE),
    ("[" * 5000 + "]" * 5000, p.BAD_JSON),  # nesting beyond the parser's recursion limit
], ids=lambda v: v[:24] if isinstance(v, str) else None)
def test_protocol_rejects(text, code):
    with pytest.raises(p.ProtocolError) as exc:
        p.parse_client_message(text, 64 * 1024)
    assert exc.value.code == code
    assert exc.value.to_message()["type"] == "error"


def test_protocol_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(p.ProtocolError) as exc:
        p.parse_client_message('{"type":"join","room":"r","meta":' + "[" * 50_000 + "]" * 50_000 + "}", 1 << 20)
    assert exc.value.code in (p.BAD_JSON, p.BAD_FIELD)


def test_signal_url_forms():
    assert check_url("127.0.0.1:8765") == "ws://127.0.0.1:8765/ws"
    assert check_url("ws://h:1") == "ws://h:1/ws"
    assert check_url("http://h:1/") == "ws://h:1/ws"
    assert check_url("wss://h/custom") == "wss://h/custom"
    from natkit.errors import UsageError

    for bad in ("ftp://h:1", "ws://:1", "ws://h:99999"):
        with pytest.raises(UsageError):
            check_url(bad)


# --------------------------------------------------------------------------- helpers


class Ws:
    """A thin aiohttp WebSocket client that returns every message, errors included."""

    def __init__(self, session, url):
        self.session, self.url, self.ws = session, url, None

    async def __aenter__(self):
        self.ws = await self.session.ws_connect(self.url, max_msg_size=8 << 20)
        return self

    async def __aexit__(self, *exc):
        await self.ws.close()

    async def send(self, obj):
        await self.ws.send_str(obj if isinstance(obj, str) else json.dumps(obj))

    async def recv(self, timeout=5.0):
        msg = await self.ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return json.loads(msg.data)
        return {"type": "__closed__", "ws_type": msg.type, "code": self.ws.close_code}

    async def recv_type(self, kind, timeout=5.0):
        while True:
            m = await self.recv(timeout)
            if m["type"] in (kind, "__closed__"):
                return m

    async def join(self, room, **extra):
        await self.send({"type": "join", "room": room, **extra})
        return await self.recv_type("joined")


async def healthy_pair(session, url, room):
    """Two fresh peers in ``room`` relay an offer, a candidate and an answer: the server still works."""
    async with Ws(session, url) as a, Ws(session, url) as b:
        ja = await a.join(room)
        jb = await b.join(room)
        assert jb["peers"][0]["id"] == ja["id"]
        await b.send({"type": "offer", "sdp": "v=0\r\nfrom-b"})
        got = await a.recv_type("offer")
        assert got["sdp"] == "v=0\r\nfrom-b" and got["from"] == jb["id"]
        await a.send({"type": "candidate", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ relay", "sdpMid": "0"}})
        assert (await b.recv_type("candidate"))["candidate"]["sdpMid"] == "0"
        await a.send({"type": "answer", "sdp": "v=0\r\nfrom-a", "to": jb["id"]})
        assert (await b.recv_type("answer"))["from"] == ja["id"]


def serve(**kw):
    kw.setdefault("port", 0)
    return SignalingServer(SignalConfig(**kw))


# --------------------------------------------------------------------------- server behaviour


def test_rooms_roles_relay_and_leave():
    async def main():
        async with serve() as srv, aiohttp.ClientSession() as s:
            async with Ws(s, srv.ws_url) as a, Ws(s, srv.ws_url) as b, Ws(s, srv.ws_url) as c:
                ja = await a.join("room1", meta={"agent": "a"})
                assert ja["peers"] == [] and ja["room_size"] == 2  # first in: waits for the offer
                jb = await b.join("room1", meta={"agent": "b"})
                assert [x["id"] for x in jb["peers"]] == [ja["id"]] and jb["peers"][0]["meta"] == {"agent": "a"}
                pj = await a.recv_type("peer-joined")
                assert pj["id"] == jb["id"] and pj["meta"] == {"agent": "b"}
                await c.send({"type": "join", "room": "room1"})  # a room of 2 is full
                full = await c.recv()
                assert full["type"] == "error" and full["code"] == p.ROOM_FULL
            async with Ws(s, srv.ws_url) as a, Ws(s, srv.ws_url) as b:
                await a.join("room2")
                await b.join("room2")
                await b.send({"type": "bye", "reason": "done"})
                assert (await a.recv_type("bye"))["reason"] == "done"
                left = await a.recv_type("peer-left")
                assert left["reason"] == "bye"
            assert srv.rooms == {} or all(len(r) == 0 for r in srv.rooms.values())

    run(main())


def test_room_full_and_token_errors():
    async def main():
        async with serve(token="s3cret") as srv:
            async with SignalingClient(srv.ws_url, timeout=3) as c:
                with pytest.raises(SignalingAuthRefused) as exc:
                    await c.join("r", token="wrong")
                assert exc.value.exit_code == 5
            async with SignalingClient(srv.ws_url, timeout=3) as a, SignalingClient(srv.ws_url, timeout=3) as b, \
                    SignalingClient(srv.ws_url, timeout=3) as c:
                await a.join("r", token="s3cret")
                await b.join("r", token="s3cret")
                with pytest.raises(RoomFull) as exc:
                    await c.join("r", token="s3cret")
                assert exc.value.exit_code == 6
                # still usable: another room works
                assert (await c.join("r2", token="s3cret")).peers == ()
            async with aiohttp.ClientSession() as s:
                r = await s.get(srv.url + "config.json")
                assert r.status == 403
                r = await s.get(srv.url + "config.json?token=s3cret")
                assert (await r.json())["iceServers"] == []

    run(main())


def test_unreachable_server_is_exit_4():
    from natkit.coturn.server import free_port

    async def main():
        with pytest.raises(SignalingUnreachable) as exc:
            async with SignalingClient(f"ws://127.0.0.1:{free_port()}", timeout=2):
                pass
        assert exc.value.exit_code == 4

    run(main())


def test_recv_and_send_before_connect_are_signaling_errors():
    """A client used before connect(): one natkit error each (recv raised AttributeError on None)."""

    async def main():
        client = SignalingClient("ws://127.0.0.1:9/ws", timeout=1)
        with pytest.raises(SignalingUnreachable, match="not open"):
            await client.recv(0.5)
        with pytest.raises(SignalingUnreachable, match="closed"):
            await client.send({"type": "ping"})
        await client.close()  # idempotent, nothing to close

    run(main())


def test_bad_messages_get_errors_and_do_not_disturb_other_rooms():
    async def main():
        async with serve(max_message=4096, hard_max_message=64 * 1024, max_errors=100) as srv, aiohttp.ClientSession() as s:
            async with Ws(s, srv.ws_url) as bad, Ws(s, srv.ws_url) as watcher:
                await watcher.join("quiet")
                # before joining
                await bad.send({"type": "offer", "sdp": "v=0"})
                assert (await bad.recv())["code"] == p.NOT_JOINED
                await bad.join("noisy")
                cases = [
                    ("garbage", p.BAD_JSON), ("[]", p.NOT_OBJECT), ('{"type":"reboot"}', p.UNKNOWN_TYPE),
                    ('{"type":"offer","sdp":123}', p.BAD_FIELD), ("x" * 5000, p.TOO_LARGE),
                    ('{"type":"answer","sdp":"v=0","to":"deadbeef"}', p.NO_SUCH_PEER),
                    ('{"type":"join","room":"other"}', p.ALREADY_JOINED),
                    ('{"type":"offer","sdp":"v=0","to":"0123456789abcdef0123456789abcdef0"}', p.BAD_FIELD),
                    ("\u0000\uffff" * 10, p.BAD_JSON),
                ]
                for text, code in cases:
                    await bad.send(text)
                    reply = await bad.recv()
                    assert reply["type"] == "error" and reply["code"] == code, (text[:40], reply)
                await bad.ws.send_bytes(os.urandom(100))
                assert (await bad.recv())["code"] == p.BINARY
                # the connection is still usable
                await bad.send({"type": "ping"})
                assert (await bad.recv())["type"] == "pong"
                # the other room never saw any of it
                with pytest.raises(asyncio.TimeoutError):
                    await watcher.ws.receive(timeout=0.2)
            await healthy_pair(s, srv.ws_url, "after")
            assert srv.stats.errors >= len(cases) + 2

    run(main())


def test_oversized_frame_closes_only_that_connection():
    async def main():
        async with serve(max_message=4096, hard_max_message=64 * 1024) as srv, aiohttp.ClientSession() as s:
            async with Ws(s, srv.ws_url) as a, Ws(s, srv.ws_url) as b, Ws(s, srv.ws_url) as big:
                await a.join("pair")
                await b.join("pair")
                await a.recv_type("peer-joined")
                await big.join("big")
                await big.send("{" + " " * (2 << 20) + "}")  # 2 MiB: over the hard limit
                closed = await big.recv_type("__closed__")
                assert closed["code"] == 1009
                await b.send({"type": "offer", "sdp": "v=0\r\nstill here"})
                assert (await a.recv_type("offer"))["sdp"].endswith("still here")
            await healthy_pair(s, srv.ws_url, "after-big")
            assert srv.stats.closed_too_big == 1

    run(main())


def _raw_handshake(port: int, extra: str = "") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head[:80]
    return sock


def _frame(opcode: int, payload: bytes, masked: bool = True, fin: bool = True, rsv: int = 0) -> bytes:
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = struct.pack("!BB", b0, mask_bit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mask_bit | 127, n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


GARBAGE_FRAMES = {
    "random bytes": os.urandom(512),
    "reserved opcode": _frame(0x3, b"x"),
    "rsv bits without an extension": _frame(0x1, b"{}", rsv=0b111),
    "unmasked client frame": _frame(0x1, b'{"type":"ping"}', masked=False),
    "invalid utf-8 text": _frame(0x1, b"\xff\xfe\xfd"),
    "huge declared length": struct.pack("!BBQ", 0x81, 0xFF, 1 << 62) + os.urandom(8),
    "control frame too long": _frame(0x9, b"p" * 200),
    "continuation without start": _frame(0x0, b"abc"),
    "fragmented control": _frame(0x9, b"p", fin=False),
}


@pytest.mark.parametrize("name", list(GARBAGE_FRAMES))
def test_garbage_frames(name):
    """Malformed WebSocket frames close that connection only; the server keeps serving rooms."""

    async def main():
        async with serve() as srv, aiohttp.ClientSession() as s:
            async with Ws(s, srv.ws_url) as a, Ws(s, srv.ws_url) as b:
                await a.join("bystanders")
                await b.join("bystanders")
                await a.recv_type("peer-joined")

                def abuse():
                    sock = _raw_handshake(srv.port)
                    try:
                        sock.sendall(GARBAGE_FRAMES[name])
                        sock.settimeout(1.0)
                        try:
                            while sock.recv(4096):
                                pass
                        except (socket.timeout, ConnectionResetError):
                            pass
                    finally:
                        sock.close()

                await asyncio.get_running_loop().run_in_executor(None, abuse)
                await b.send({"type": "offer", "sdp": "v=0\r\nok"})
                assert (await a.recv_type("offer"))["sdp"] == "v=0\r\nok"
            await healthy_pair(s, srv.ws_url, "after-garbage")
            async with s.get(srv.url + "healthz") as r:
                assert (await r.json())["ok"] is True

    run(main())


def test_peer_leaving_mid_negotiation():
    """The offerer vanishes (TCP reset) after its offer: the answerer learns it, the room is free again."""

    async def main():
        async with serve() as srv, aiohttp.ClientSession() as s:
            async with Ws(s, srv.ws_url) as a:
                ja = await a.join("mid")
                b_session = aiohttp.ClientSession()
                b = await Ws(b_session, srv.ws_url).__aenter__()
                jb = await b.join("mid")
                await b.send({"type": "offer", "sdp": "v=0\r\nhalf"})
                await b.send({"type": "candidate", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ relay", "sdpMid": "0"}})
                assert (await a.recv_type("offer"))["from"] == jb["id"]
                # abort the TCP connection without a close handshake
                b.ws._response.connection.transport.abort()
                await b_session.close()
                left = await a.recv_type("peer-left", timeout=5)
                assert left["id"] == jb["id"] and left["reason"] == "closed"
                # a message to the gone peer is an error, not a crash
                await a.send({"type": "answer", "sdp": "v=0", "to": jb["id"]})
                assert (await a.recv_type("error"))["code"] == p.NO_SUCH_PEER
                # a new peer takes the free place and negotiates with a
                async with Ws(s, srv.ws_url) as c:
                    jc = await c.join("mid")
                    assert [x["id"] for x in jc["peers"]] == [ja["id"]]
                    await c.send({"type": "offer", "sdp": "v=0\r\nnew"})
                    assert (await a.recv_type("offer"))["sdp"] == "v=0\r\nnew"
            assert srv.rooms == {}

    run(main())


def test_join_timeout_idle_and_too_many_errors():
    async def main():
        async with serve(join_timeout=0.3, idle_timeout=0.6, max_errors=5) as srv, aiohttp.ClientSession() as s:
            async with Ws(s, srv.ws_url) as lurker:
                err = await lurker.recv(3)
                assert err["code"] == p.IDLE
                assert (await lurker.recv(3))["code"] == 4000
            async with Ws(s, srv.ws_url) as idle:
                await idle.join("idle")
                assert (await idle.recv(3))["code"] == p.IDLE
            async with Ws(s, srv.ws_url) as noisy:
                await noisy.join("noisy")
                codes = []
                for _ in range(10):
                    await noisy.send("nope")
                for _ in range(10):
                    m = await noisy.recv(3)
                    codes.append(m.get("code"))
                    if m["type"] == "__closed__":
                        break
                assert p.TOO_MANY_ERRORS in codes and codes[-1] == 1008

    run(main())


def test_rate_limit():
    async def main():
        async with serve(rate=20, burst=20, max_errors=1000) as srv, aiohttp.ClientSession() as s:
            async with Ws(s, srv.ws_url) as w:
                for _ in range(60):
                    await w.send({"type": "ping"})
                kinds = [(await w.recv())["type"] for _ in range(60)]
                assert kinds.count("pong") >= 20 and kinds.count("error") >= 20

    run(main())


def test_max_connections():
    """The third connection of a server capped at 2 is refused with HTTP 503: the client says "full" (exit 6)."""

    async def main():
        async with serve(max_connections=2) as srv, aiohttp.ClientSession() as s:
            async with Ws(s, srv.ws_url), Ws(s, srv.ws_url):
                with pytest.raises(RoomFull) as exc:
                    async with SignalingClient(srv.ws_url, timeout=3):
                        pass
                assert exc.value.exit_code == 6 and "full" in str(exc.value) and exc.value.code == p.SERVER_FULL
                assert srv.stats.rejected_full == 1
            await healthy_pair(s, srv.ws_url, "after-full")  # places are given back

    run(main())


def test_non_ascii_token_is_refused_not_a_crash():
    """hmac.compare_digest raises on non-ASCII str: the join must still get bad-token and /config.json 403."""

    async def main():
        async with serve(token="s3cret") as srv:
            for token in ("é", "s3cret\u00e9", "\u2603" * 40):
                async with SignalingClient(srv.ws_url, timeout=3) as c:
                    with pytest.raises(SignalingAuthRefused) as exc:
                        await c.join("r", token=token)
                    assert exc.value.exit_code == 5
            async with aiohttp.ClientSession() as s:
                for query in ("%C3%A9", "%FF%FE", "%ED%A0%80", "s3cret%C3%A9"):
                    async with s.get(srv.url + "config.json?token=" + query) as r:
                        assert r.status == 403, query
                        assert (await r.json())["error"] == "bad token"
                async with s.get(srv.url + "config.json?token=s3cret") as r:
                    assert r.status == 200
            # a non-ASCII server token works too
        async with serve(token="sécret") as srv, SignalingClient(srv.ws_url, timeout=3) as c:
            assert (await c.join("r", token="sécret")).peers == ()

    run(main())


def _partial(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    if data:
        sock.sendall(data)
    return sock


def _read_all(sock: socket.socket, limit: float) -> bytes:
    """What the server sends until it closes (b"" read) or ``limit`` seconds pass (then ``b"<open>"``)."""
    sock.settimeout(limit)
    out = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return out
            out += chunk
    except socket.timeout:
        return out + b"<open>"
    except ConnectionResetError:
        return out + b"<reset>"
    finally:
        sock.close()


UNFINISHED = {
    "headers never end": b"GET / HTTP/1.1\r\nHost: x\r\n",
    "request line only": b"GET /healthz HTTP/1.1\r\n",
    "half a request line": b"GE",
    "body never ends": b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100,
    "nothing at all": b"",
}


def test_unfinished_requests_time_out_and_count_against_the_cap():
    """Slow or half-sent HTTP requests hold connections: they count against --max-connections
    (the next connection gets 503) and are closed after request_timeout (408)."""

    async def main():
        loop = asyncio.get_running_loop()
        async with serve(max_connections=len(UNFINISHED) * 3, request_timeout=1.5) as srv, aiohttp.ClientSession() as s:
            socks = [await loop.run_in_executor(None, _partial, srv.port, data) for data in UNFINISHED.values() for _ in range(3)]
            await asyncio.sleep(0.1)
            assert srv.admission.open == len(socks)
            with pytest.raises(RoomFull):  # the cap counts the unfinished requests
                async with SignalingClient(srv.ws_url, timeout=3):
                    pass
            answers = await asyncio.gather(*(loop.run_in_executor(None, _read_all, sk, 5.0) for sk in socks))
            for (name, _), answer in zip([(n, d) for n, d in UNFINISHED.items() for _ in range(3)], answers, strict=True):
                assert not answer.endswith(b"<open>"), (name, answer[-80:])
                if name != "body never ends":  # that one got its /healthz answer, then the connection went
                    assert answer.startswith(b"HTTP/1.1 408"), (name, answer[:80])
            assert srv.stats.closed_request_timeout >= 4 * 3
            assert srv.admission.open == 0
            await healthy_pair(s, srv.ws_url, "after-slow")  # and the server serves again

    run(main())


def test_stopping_while_connections_arrive_raises_nothing_in_the_loop():
    """Servers stopped while a thread keeps connecting (30 servers, at most 200 connections each):
    no loop callback may fail (with loop.sock_accept, Python 3.11 raised InvalidStateError when
    the accept was cancelled with a connection pending: a traceback as signal serve stopped)."""
    import threading
    import time

    async def main():
        loop = asyncio.get_running_loop()
        errors: list[dict] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        for i in range(30):
            srv = await serve().start()
            done = threading.Event()

            def hammer(port=srv.port, done=done):
                socks = []
                while not done.is_set() and len(socks) < 200:
                    sk = socket.socket()
                    sk.setblocking(False)
                    sk.connect_ex(("127.0.0.1", port))
                    socks.append(sk)
                time.sleep(0.05)
                for sk in socks:
                    sk.close()

            thread = threading.Thread(target=hammer)
            thread.start()
            await asyncio.sleep(0.002 * (i % 5))
            await srv.stop()
            done.set()
            await loop.run_in_executor(None, thread.join)
        assert [str(c.get("exception") or c.get("message")) for c in errors] == []

    run(main(), limit=60)


def test_keep_alive_connection_must_send_its_next_request_in_time():
    async def main():
        loop = asyncio.get_running_loop()
        async with serve(request_timeout=0.5) as srv:
            sock = await loop.run_in_executor(None, _partial, srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await loop.run_in_executor(None, _read_all, sock, 3.0)
            assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in answer and not answer.endswith(b"<open>")

    run(main())


def test_reject_log_is_rate_limited():
    from natkit.signaling.guard import RejectLog, printable

    now = [0.0]
    lines: list[str] = []
    log = RejectLog(lines.append, burst=3, window=10.0, clock=lambda: now[0])
    for i in range(10):
        log.emit(f"bad {i}")
    assert lines == ["natkit signal: bad 0", "natkit signal: bad 1", "natkit signal: bad 2"]
    now[0] = 10.5
    log.emit("later")
    assert lines[3].startswith("natkit signal: … 7 more") and lines[4] == "natkit signal: later"
    log.flush()
    assert len(lines) == 5 and log.total == 11
    assert printable("a\r\nb\x1b[31m" + "x" * 500, 20) == "a\\x0d\\x0ab\\x1b[31mx…"


def _wait_for(predicate, limit: float) -> bool:
    import time

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _last_words(proc) -> str:
    """Wait (at most 5 s) until the stopped server's stderr has been read to the end; its last line."""
    import time

    deadline = time.monotonic() + 5
    seen = -1
    while time.monotonic() < deadline and seen != len(proc.stderr_lines):
        seen = len(proc.stderr_lines)
        time.sleep(0.2)
    return proc.stderr_lines[-1] if proc.stderr_lines else ""


MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 10_000 + b"\r\n\r\n",  # header line too long
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",  # too many headers
    b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",  # no Host
    b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",  # NUL in the target
]


def test_malformed_requests_are_one_line_each_and_rate_limited():
    """Each malformed request is answered 400 and logged as one line (no aiohttp traceback);
    a flood is cut to 10 lines per 10 s plus a count."""
    from natkit.signaling.process import SignalProcess

    with SignalProcess() as proc:
        port = int(proc.ws_url.rsplit(":", 1)[1].split("/")[0])
        for data in MALFORMED:
            answer = _read_all(_partial(port, data), 3.0)
            assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0], answer[:80]
        assert _wait_for(lambda: sum("rejected request" in x for x in proc.stderr_lines) == len(MALFORMED), 5), proc.stderr_lines
        for _ in range(40):  # a flood
            _read_all(_partial(port, MALFORMED[2]), 3.0)
        assert _read_all(_partial(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 3.0).startswith(b"HTTP/1.1 200")
    _last_words(proc)
    text = "\n".join(proc.stderr_lines)
    assert "Traceback" not in text and "aiohttp" not in text, text[-2000:]
    rejected = [x for x in proc.stderr_lines if "rejected request" in x]
    assert len(rejected) == 10, rejected
    assert any("35 more refused requests" in x for x in proc.stderr_lines), proc.stderr_lines[-5:]
    assert "400 Missing 'Host' header" in text and "Too many headers" in text


def test_websocket_handshake_warnings_are_rate_limited_lines():
    """aiohttp warns once per handshake whose Sec-WebSocket-Protocol list has no match, echoing the
    client's text: that goes through the same rate-limited, escaped one-line log."""
    from natkit.signaling.process import SignalProcess

    with SignalProcess() as proc:
        port = int(proc.ws_url.rsplit(":", 1)[1].split("/")[0])
        for _ in range(30):
            sock = _raw_handshake(port, extra="Sec-WebSocket-Protocol: " + "x" * 4000 + "\r\n")
            sock.close()
        assert _read_all(_partial(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 3.0).startswith(b"HTTP/1.1 200")
    _last_words(proc)
    warned = [x for x in proc.stderr_lines if x.startswith("natkit signal: websocket: 127.0.0.1: Client protocols")]
    assert len(warned) == 10 and all(len(x) < 260 for x in warned), warned[:2]  # 4000 characters cut
    assert any("20 more refused requests" in x for x in proc.stderr_lines), proc.stderr_lines[-3:]


def test_low_open_file_limit_caps_connections_without_log_flood():
    """At ulimit -n 64 and --max-connections 2000 the server says it serves fewer, refuses the rest
    with 503, logs a bounded number of lines (was: a traceback per accept() at 100 % CPU)."""
    import resource
    import subprocess

    from natkit.signaling.process import SignalProcess

    def popen(argv, **kw):
        return subprocess.Popen(argv, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)), **kw)

    with SignalProcess("--max-connections", "2000", "--request-timeout", "1", popen=popen) as proc:
        port = int(proc.ws_url.rsplit(":", 1)[1].split("/")[0])
        assert any("open-file limit (64" in x for x in proc.stderr_lines), proc.stderr_lines
        socks = [_partial(port, b"GET / HTTP/1.1\r\nHost: x\r\n") for _ in range(100)]
        answers = [_read_all(s, 5.0) for s in socks]
        assert sum(a.startswith(b"HTTP/1.1 503") for a in answers) >= 60
        assert all(a.startswith((b"HTTP/1.1 503", b"HTTP/1.1 408")) for a in answers), {a[:40] for a in answers}
        assert _read_all(_partial(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"), 3.0).startswith(b"HTTP/1.1 200")
        cpu = _cpu_seconds(proc.proc.pid)
        import time

        time.sleep(1.0)
        assert _cpu_seconds(proc.proc.pid) - cpu < 0.3  # idle again, no accept storm
    _last_words(proc)
    assert len(proc.stderr_lines) < 30 and not any("Traceback" in x for x in proc.stderr_lines), proc.stderr_lines[:40]


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_page_is_served_with_strict_csp_and_no_external_resources():
    async def main():
        async with serve(turn_uris=("turn:127.0.0.1:3478",), turn_secret="sec", stun_uris=("stun:127.0.0.1:3478",)) as srv, \
                aiohttp.ClientSession() as s:
            for path, ctype in (("", "text/html"), ("natkit.js", "text/javascript"), ("natkit.css", "text/css")):
                async with s.get(srv.url + path) as r:
                    assert r.status == 200 and r.headers["Content-Type"].startswith(ctype)
                    csp = r.headers["Content-Security-Policy"]
                    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
                    body = await r.text()
                    assert "http://" not in body.replace("http://' ", "") or path == "natkit.js"
                    assert "https://" not in body
                    if path == "":
                        assert "<script>" not in body and " style=" not in body and " on" not in body.split("<body>")[1].split(">")[0]
            async with s.get(srv.url + "config.json") as r:
                cfg = await r.json()
            turn = [x for x in cfg["iceServers"] if "username" in x][0]
            from natkit.credentials import rest_password

            assert turn["credential"] == rest_password("sec", turn["username"]) and cfg["relayOnly"] is True
            async with s.get(srv.url + "nope") as r:
                assert r.status == 404

    run(main())


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_cli_server_process_stops_on_a_signal_with_130(signame):
    """README: 130 = interrupted (Ctrl-C or SIGTERM); the server ends with one natkit line, no traceback."""
    import signal

    from natkit.signaling.process import SignalProcess

    with SignalProcess("--room-size", "3") as proc:
        async def main():
            async with SignalingClient(proc.ws_url, timeout=3) as a:
                j = await a.join("x")
                assert j.room_size == 3

        run(main())
        proc.proc.send_signal(getattr(signal, signame))
        proc.proc.wait(10)
    assert proc.proc.returncode == 130  # the README's "interrupted", like every natkit command stopped by Ctrl-C
    last = _last_words(proc)
    assert last.startswith("natkit") and not any("Traceback" in x for x in proc.stderr_lines), proc.stderr_lines


# --------------------------------------------------------------------------- bounded load


def test_load_200_concurrent_rooms():
    """200 rooms x 2 peers against a server process; hard cap 60 s (typically a few seconds)."""
    from natkit.signaling.load import load
    from natkit.signaling.process import SignalProcess

    with SignalProcess("--max-connections", "1000") as proc:
        result = run(load(proc.ws_url, 200, limit=60.0), limit=90)
    print("load:", json.dumps(dataclasses.asdict(result)))
    assert result.errors == 0, result.first_error
    assert result.completed == 200
    assert result.seconds < 60


def test_tls_server_and_client(tmp_path):
    """--cert/--key: https page and wss signaling; the client verifies against the given CA."""
    import ssl

    from natkit.errors import UsageError
    from natkit.stun import client_ssl_context
    from natkit.tls import self_signed, write_pair

    cert, key = self_signed(["127.0.0.1"])
    cert_path, key_path = write_pair(tmp_path, cert, key)

    async def main():
        async with serve(cert=str(cert_path), key=str(key_path), request_timeout=1.0) as srv:
            assert srv.url.startswith("https://") and srv.ws_url.startswith("wss://")
            async with SignalingClient(srv.ws_url, timeout=3, ssl_context=client_ssl_context(True, str(cert_path))) as c:
                assert (await c.join("tls")).peers == ()
            with pytest.raises(SignalingUnreachable):  # not trusted without the CA
                async with SignalingClient(srv.ws_url, timeout=3, ssl_context=client_ssl_context(True, None)):
                    pass
            ctx = ssl.create_default_context(cafile=str(cert_path))
            async with aiohttp.ClientSession() as s, s.get(srv.url, ssl=ctx) as r:
                assert r.status == 200 and "Content-Security-Policy" in r.headers
            # a TCP connection that never starts its TLS handshake is closed after request_timeout
            loop = asyncio.get_running_loop()
            t = loop.time()
            answer = await loop.run_in_executor(None, _read_all, _partial(srv.port, b""), 5.0)
            assert not answer.endswith(b"<open>") and loop.time() - t < 2.5
            assert srv.admission.open == 0

    run(main())
    with pytest.raises(UsageError):
        SignalConfig(cert=str(cert_path)).validate()
