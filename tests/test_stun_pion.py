"""natkit.stun against pion/turn v2, a second TURN implementation (tests/servers/pionturn).

pionturn runs in a namespace with no route out (it has no peer ACL by default:
it must never be able to send anywhere); the natkit client runs in the same
namespace, as a subprocess, so both ends only see the namespace's own
addresses. Checked: Binding, UDP and TCP allocations relaying both ways (Send
indications and ChannelData), the blocking client, REST credentials, pion's
unsigned answers made visible (``Reply.signed``), and a malformed LIFETIME
reported as such.
"""

from __future__ import annotations

import json
import os
import secrets as pysecrets
import subprocess
import sys

import pytest
from servers import PionTurn, pion_binary

SECRET = pysecrets.token_urlsafe(24)
ADDRS = tuple(f"203.0.113.{n}" for n in range(70, 80))

CLIENT = r"""
import asyncio, json, sys
from natkit.credentials import mint
from natkit.errors import NatkitError
from natkit.model import TransportAddress as TA
from natkit.stun import codec, sync
from natkit.stun.aio_turn import TurnClient

host, port, secret, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
addr = TA(host, port)
out = {}

async def relay(transport):
    ca, cb = mint(secret, "a", 600), mint(secret, "b", 600)
    async with await TurnClient.open(addr, transport=transport, username=ca.username, password=ca.password) as a, \
            await TurnClient.open(addr, transport=transport, username=cb.username, password=cb.password) as b:
        ra = await a.allocate()
        await b.allocate()
        await a.create_permission(b.relayed)
        await b.create_permission(a.relayed)
        a.send(b.relayed, b"send indication")
        got_ind = await b.recv(3)
        bind = await a.channel_bind(b.relayed)
        await b.channel_bind(a.relayed)
        a.send(b.relayed, b"channel a to b")
        b.send(a.relayed, b"channel b to a!")
        to_b, to_a = await b.recv(3), await a.recv(3)
        return {"allocate": ra.trail(), "signed": ra.signed, "relayed": str(a.relayed), "bind_signed": bind.signed,
                "indication": got_ind.data.decode() if got_ind else None,
                "to_b": [to_b.data.decode(), to_b.channel] if to_b else None,
                "to_a": [to_a.data.decode(), to_a.channel] if to_a else None,
                "malformed": a.malformed + b.malformed}

async def malformed():
    c = mint(secret, "m", 600)
    async with await TurnClient.open(addr, username=c.username, password=c.password) as t:
        try:
            await t.allocate(timeout=2)
            return {"error": None}
        except NatkitError as exc:
            return {"error": exc.one_line(), "kind": exc.kind, "attribute": getattr(exc, "attribute", None)}

if mode == "relay":
    msg, rtt, sends = sync.request(codec.binding_request(), addr, timeout=2)
    out["binding"] = str(msg["XOR-MAPPED-ADDRESS"])
    out["udp"] = asyncio.run(relay("udp"))
    out["tcp"] = asyncio.run(relay("tcp"))
    c = mint(secret, "s", 600)
    with sync.SyncTurnClient(addr, username=c.username, password=c.password) as s:
        out["sync"] = s.allocate().ok and str(s.relayed)
else:
    out = asyncio.run(malformed())
print(json.dumps(out))
"""


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True)


@pytest.fixture(scope="module")
def sealed_ns():
    from natkit.pytest_plugin import require_root_netns

    require_root_netns()
    ns = f"natkit-stunpion-{os.getpid()}-{pysecrets.token_hex(3)}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        for addr in ADDRS:
            _ip("-n", ns, "addr", "add", f"{addr}/32", "dev", "lo")
        routes = _ip("-n", ns, "route", "show").stdout + _ip("-n", ns, "-6", "route", "show").stdout
        assert "default" not in routes and "via" not in routes, routes  # the safety precondition
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _client(ns: str, srv: PionTurn, mode: str) -> dict:
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, srv.host, str(srv.port), SECRET, mode],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr and "Exception in callback" not in r.stderr, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_pion_relays_both_ways_for_natkits_clients(sealed_ns, request, tmp_path):
    with PionTurn(pion_binary(request.config), ADDRS[0], ns=sealed_ns, secret=SECRET, tcp=True, workdir=tmp_path) as srv:
        doc = _client(sealed_ns, srv, "relay")
    assert doc["binding"].startswith(ADDRS[0] + ":")
    for transport in ("udp", "tcp"):
        t = doc[transport]
        assert t["allocate"] == "401 → success" and t["signed"] is True, t  # pion sends no reason phrase
        assert t["relayed"].startswith(ADDRS[0] + ":") and t["bind_signed"] is True, t
        assert t["indication"] == "send indication", t
        assert t["to_b"] == ["channel a to b", 0x4000] and t["to_a"] == ["channel b to a!", 0x4000], t
        assert t["malformed"] == 0
    assert doc["sync"].startswith(ADDRS[0] + ":")


def test_pion_unsigned_channelbind_is_visible(sealed_ns, request, tmp_path):
    with PionTurn(pion_binary(request.config), ADDRS[1], ns=sealed_ns, secret=SECRET, tcp=True, args=["-unsigned-channelbind"],
                  workdir=tmp_path) as srv:
        doc = _client(sealed_ns, srv, "relay")
    assert doc["udp"]["bind_signed"] is None and doc["udp"]["signed"] is True  # ChannelBind answered, but unsigned
    assert doc["udp"]["to_b"] == ["channel a to b", 0x4000]  # natkit's client still uses the channel


def test_pion_short_lifetime_is_a_malformed_response(sealed_ns, request, tmp_path):
    with PionTurn(pion_binary(request.config), ADDRS[2], ns=sealed_ns, secret=SECRET, args=["-short-attr", "0x000d"],
                  workdir=tmp_path) as srv:
        doc = _client(sealed_ns, srv, "malformed")
    assert doc["kind"] == "malformed_response" and doc["attribute"] == "LIFETIME", doc
    assert f"malformed response from {ADDRS[2]}:3478" in doc["error"], doc
