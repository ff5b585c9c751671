"""``natkit peer``: two real processes meet through ``natkit signal serve`` and connect relay-only through coturn.

Everything on 127.0.0.1: the session's coturn (``turn_server`` fixture), a
signaling server process per module, peer processes per test.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import threading
import time

import pytest

from natkit.signaling.process import PeerProcess, SignalProcess
from natkit.signaling.process import run_pair as run_processes


@pytest.fixture(scope="module")
def token_server():
    """A signaling server that wants the token ``tok``."""
    with SignalProcess("--token", "tok") as proc:
        yield proc


@pytest.fixture
def pair(room, peer_args):
    """``pair(a_extra=(), b_extra=(), ...)``: A (joins first, answers) and B (offers) in a fresh room,
    B started once A is in the room; both ``(code, report, stderr)``."""

    def run(a_extra=(), b_extra=(), stdin_a=None, stdin_b=None, timeout=60, env=None):
        name = room()
        a = PeerProcess(*peer_args(name, *a_extra), stdin=stdin_a, env=env)
        b = PeerProcess(*peer_args(name, *b_extra), stdin=stdin_b, env=env)
        return run_processes(a, b, timeout=timeout)

    return run


def test_two_peers_relay_only_with_echo(pair):
    (ca, a, ea), (cb, b, eb) = pair()
    assert ca == 0 and cb == 0, (ea, eb, a, b)
    assert {a["role"], b["role"]} == {"offerer", "answerer"}
    for rep, other in ((a, b), (b, a)):
        assert rep["schema"] == "natkit.peer/2" and rep["ok"] and rep["exit_code"] == 0 and rep["failures"] == []
        path = rep["path"]
        sel = path["selected"]["local"]
        assert list(path["selected"]) == ["local"] and (sel["local_type"], sel["remote_type"]) == ("relay", "relay")
        assert path["selected_relay"] and path["all_relay"]
        assert path["messages_sent"] == path["messages_echoed"] == path["messages_intact"] == 5 and path["echo_ok"]
        assert rep["pings_answered"] == 5  # the other side's pings were echoed here
        assert path["payload_bytes"] == 200_000 and path["throughput_mbps"] > 0
        assert rep["remote_agent"] == "natkit-peer/1" and rep["remote_id"] == other["peer_id"]
        assert rep["remote_report"] == {"ok": True, "agent": "natkit-peer/1", "echoed": 5, "sent": 5,
                                        "local_type": "relay", "remote_type": "relay"}
        assert rep["preflight"]["relayed_address"].startswith("127.0.0.1:")
        assert {c["side"] for c in path["candidates"]} == {"local", "remote"}
    # each side's nominated local candidate is the other's remote
    assert a["path"]["selected"]["local"]["local"] == b["path"]["selected"]["local"]["remote"]


def test_file_transfer_with_sha256(pair, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 123)
    src = tmp_path / "payload.bin"
    src.write_bytes(data)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (ca, a, ea), (cb, b, eb) = pair(a_extra=("--receive", str(inbox)), b_extra=("--send", str(src)))
    assert ca == 0 and cb == 0, (ea, eb, a, b)
    digest = hashlib.sha256(data).hexdigest()
    sent, got = b["file"], a["file"]
    assert sent["direction"] == "sent" and sent["ok"] and sent["sha256"] == digest and sent["bytes"] == len(data)
    assert got["direction"] == "received" and got["ok"] and got["sha256"] == digest
    assert (inbox / "payload.bin").read_bytes() == data and got["saved_to"] == str(inbox / "payload.bin")
    assert "sent" in eb and "100.0%" in eb  # progress on stderr
    assert "sha256 matches" in ea


def test_chat_lines_cross(pair):
    ra, wa = os.pipe()
    rb, wb = os.pipe()
    os.write(wa, b"hello from a\n")
    os.write(wb, b"hi from b\nsecond line\n")
    os.close(wa)
    os.close(wb)
    try:
        (ca, a, ea), (cb, b, eb) = pair(a_extra=("--chat",), b_extra=("--chat",), stdin_a=ra, stdin_b=rb)
    finally:
        os.close(ra)
        os.close(rb)
    assert ca == 0 and cb == 0, (ea, eb, a, b)
    assert a["chat_sent"] == 1 and b["chat_received"] == 1 and "peer> hello from a" in eb, (ea, eb)
    assert b["chat_sent"] == 2 and a["chat_received"] == 2 and "peer> hi from b" in ea and "peer> second line" in ea, (ea, eb)


def test_nobody_comes_is_exit_1_fast(room, peer_args):
    start = time.monotonic()
    with PeerProcess(*peer_args(room(), "--wait", "1")) as p:
        code, doc, err = p.result(30)
    assert code == 1 and doc["error"]["kind"] == "no_peer", err
    assert time.monotonic() - start < 15


def test_errors_map_to_exit_codes(turn_server, signal_server, token_server, room):
    from natkit.coturn.server import free_port

    cases = [
        # wrong signaling token: 5
        (["--signal", token_server.ws_url, "--room", room(), "--token", "nope", "--wait", "1"], 5, "signaling_auth_refused"),
        # nothing listens: 4
        (["--signal", f"ws://127.0.0.1:{free_port()}", "--room", room(), "--wait", "1"], 4, "signaling_unreachable"),
        # wrong TURN password: 5, before any signaling
        (["--signal", signal_server.ws_url, "--room", room(), "--turn", turn_server.uri,
          "--user", "u", "--password", "wrong", "--wait", "1"], 5, "auth_refused"),
        # bad input: 2
        (["--signal", "ftp://x", "--room", room()], 2, "usage"),
        (["--signal", signal_server.ws_url, "--room", "bad room!"], 2, "usage"),
        (["--signal", signal_server.ws_url, "--room", room(), "--relay-only"], 2, "usage"),
    ]
    for args, code, kind in cases:
        with PeerProcess(*args) as p:
            got, doc, err = p.result(30)
        assert got == code and doc["error"]["kind"] == kind, (args, got, err)


def test_peer_leaving_mid_negotiation(signal_server, room, peer_args):
    """A raw client waits in the room, takes natkit peer's offer and vanishes: exit 1, no hang."""
    from natkit.signaling.client import SignalingClient

    name = room()
    got_offer = threading.Event()
    joined = threading.Event()

    async def fake() -> None:
        async with SignalingClient(signal_server.ws_url, timeout=5) as c:
            await c.join(name, meta={"agent": "fake"})
            joined.set()
            while True:
                m = await c.recv(20)
                if m["type"] == "offer":
                    got_offer.set()
                    return  # leave without answering (connection closed)

    t = threading.Thread(target=lambda: asyncio.run(fake()), daemon=True)
    t.start()
    assert joined.wait(10)
    start = time.monotonic()
    with PeerProcess(*peer_args(name)) as p:
        code, doc, err = p.result(30)
    t.join(5)
    assert got_offer.is_set()
    assert code == 1 and "left during negotiation" in doc["error"]["message"], err
    assert time.monotonic() - start < 10


def test_sigint_while_waiting_exits_130(room, peer_args):
    p = PeerProcess(*peer_args(room(), "--wait", "60")).start()
    try:
        assert p.wait_joined(30), p.stderr_lines  # past start-up: waiting in the room
        p.proc.send_signal(signal.SIGINT)
        code, doc, err = p.result(10)
    finally:
        p.stop()
    assert code == 130, err
    # --json: exactly one document, the interrupted error
    assert doc == {"ok": False, "error": {"kind": "interrupted", "exit_code": 130, "message": "interrupted", "server": None,
                                          "step": None, "hint": None, "details": []}}
    assert "natkit: interrupted" in err


def test_peer_report_renders_as_text(room, peer_args):
    """Without --json the report is relay-check's table plus the peer lines."""
    name = room()
    a = PeerProcess(*peer_args(name), json=False)
    b = PeerProcess(*peer_args(name))
    (code_a, _, err_a), (code_b, _, err_b) = run_processes(a, b)
    assert code_a == 0 and code_b == 0, (err_a, err_b)
    out = a.stdout
    assert "PASS peer answerer" in out and "relay/relay" in out and "natkit-peer/1" in out


@pytest.mark.parametrize("behaviours, expect", [
    (("symmetric", "symmetric"), "relay"),
    (("port_restricted", "port_restricted"), "direct"),
])
def test_peers_behind_real_nats(nat_lab, behaviours, expect):
    """The cross-machine test in a lab: signaling server in the lab's server namespace, each
    natkit peer behind its own NAT (nftables in namespaces; nothing leaves them), STUN + TURN
    offered, no --relay-only: ICE itself must pick relay for symmetric x symmetric and a
    direct srflx pair for port-restricted x port-restricted (the expected matrix of docs/lab.md)."""
    lab = nat_lab(*behaviours)
    a_host, b_host = lab.hosts
    with SignalProcess(host=lab.server_ips[0], popen=lambda argv, **kw: lab.popen("server", argv, **kw)) as sig:
        common = ["--signal", sig.ws_url, "--room", "lab", "--stun", lab.stun_uri, "--turn", lab.turn_uri(),
                  "--secret", lab.secret, "--messages", "5", "--payload", "100000", "--timeout", "15", "--wait", "30"]
        a = PeerProcess(*common, popen=lambda argv, **kw: lab.popen(a_host, argv, **kw))
        b = PeerProcess(*common, popen=lambda argv, **kw: lab.popen(b_host, argv, **kw))
        (ca, ra, ea), (cb, rb, eb) = run_processes(a, b)
    assert ca == 0 and cb == 0, (ea, eb, ra, rb)
    for rep in (ra, rb):
        sel = rep["path"]["selected"]["local"]
        assert rep["path"]["echo_ok"] and rep["remote_report"]["ok"]
        types = {c["type"] for c in rep["path"]["candidates"] if c["side"] == "local"}
        assert {"host", "srflx", "relay"} <= types, types
        if expect == "relay":
            assert "relay" in (sel["local_type"], sel["remote_type"]), sel
        else:
            assert "relay" not in (sel["local_type"], sel["remote_type"]), sel
            assert not sel["remote"].startswith(lab.server_ips[0]), sel  # the path does not touch the server


def test_remote_messages_are_parsed_defensively():
    """The data-channel protocol handler never raises on what the other side sends (it runs inside
    aiortc's callback): a non-integer bulk size, a list as seq, a verdict of the wrong shape."""
    import json

    from natkit.peer import PeerOptions, RemoteVerdict, _Channel

    class DataChannel:  # the two methods and the state _Channel uses
        readyState = "open"

        def __init__(self) -> None:
            self.handlers: dict = {}
            self.sent: list = []

        def on(self, event, handler) -> None:
            self.handlers[event] = handler

        def send(self, data) -> None:
            self.sent.append(json.loads(data))

    async def scenario() -> tuple[list, object]:
        dc = DataChannel()
        channel = _Channel(dc, PeerOptions(signal="ws://127.0.0.1:9", room="r"), "answerer")
        for m in ({"t": "bulk", "bytes": "lots"}, {"t": "bulk", "bytes": True}, {"t": "pong", "seq": [1]},
                  {"t": "file", "name": "x", "size": "big", "sha256": "0"}, {"t": "done", "report": {"ok": "yes", "selected": 7}}):
            dc.handlers["message"](json.dumps(m))
        dc.handlers["message"](b"\x00" * 10)  # binary with no transfer announced: ignored
        return dc.sent, await channel.remote_done

    sent, verdict = asyncio.run(scenario())
    assert sent == [{"t": "bulk-ok", "bytes": 0}, {"t": "bulk-ok", "bytes": 0}, {"t": "done-ack"}]
    assert RemoteVerdict.of(verdict) == RemoteVerdict(None, None, None, None, None, None)
