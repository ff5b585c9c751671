"""natkit.stun drivers against real servers: coturn 4.6 (Binding, TURN over UDP/TCP, RFC 6062) and stund."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time

import pytest

from natkit.errors import (
    AllocationRefused,
    AuthenticationRefused,
    MalformedMessage,
    ServerUnreachable,
    TurnError,
)
from natkit.model import TransportAddress as TA
from natkit.stun import codec, sync
from natkit.stun.aio import (
    TurnClient,
    UdpStunEndpoint,
    binding_request,
    stream_transaction,
)
from natkit.stun.codec import PROTO_TCP, Class, Message, Method
from natkit.stun.turn import Credentials

pytestmark = pytest.mark.integration


def _addr(turn_server) -> TA:
    return TA(turn_server.host, turn_server.port)


def _creds(turn_server, user: str) -> Credentials:
    c = turn_server.credentials(user)
    return Credentials(c.username, c.password)


def test_binding_udp_tcp_and_blocking(turn_server):
    addr = _addr(turn_server)

    async def main():
        async with await UdpStunEndpoint.open("127.0.0.1") as ep:
            udp = await ep.request(binding_request(), addr, timeout=2)
        tcp = await stream_transaction(binding_request(), addr, timeout=2)
        return udp, tcp

    udp, tcp = asyncio.run(main())
    assert udp.message.cls == Class.RESPONSE and udp.message["XOR-MAPPED-ADDRESS"] == udp.local
    assert udp.message["SOFTWARE"].startswith("Coturn") and udp.sends == 1
    assert tcp.message["XOR-MAPPED-ADDRESS"] == tcp.local
    msg, rtt_ms, sends = sync.request(codec.binding_request(), addr, timeout=2)
    assert msg.cls == Class.RESPONSE and sends == 1 and 0 < rtt_ms < 2000


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_two_allocations_relay_both_ways(turn_server, transport):
    """Allocate, CreatePermission, Send/Data indications, ChannelBind, ChannelData both ways, Refresh, release."""
    addr = _addr(turn_server)

    async def main():
        ca, cb = _creds(turn_server, "stack-a"), _creds(turn_server, "stack-b")
        async with await TurnClient.open(addr, transport=transport, username=ca.username, password=ca.password) as a, \
                await TurnClient.open(addr, transport=transport, username=cb.username, password=cb.password) as b:
            ra = await a.allocate(lifetime=120)
            assert (await b.allocate(dont_fragment=transport == "udp")).ok
            assert ra.ok and ra.signed is True and ra.attempts == 2
            assert a.relayed.host == "127.0.0.1" and a.session.lifetime == ra.response["LIFETIME"] >= 120 and a.mapped is not None
            assert (await a.create_permission(b.relayed)).signed is True
            await b.create_permission(a.relayed)
            a.send(b.relayed, b"via Send indication")
            got = await b.recv(2)
            assert got is not None and (got.peer, got.data, got.channel) == (a.relayed, b"via Send indication", None)
            await a.channel_bind(b.relayed)
            await b.channel_bind(a.relayed)
            assert (await a.channel_bind(b.relayed)).ok  # rebinding the same number refreshes it
            for n in range(5):
                a.send(b.relayed, b"to b %d" % n)
                b.send(a.relayed, b"to a %d!" % n)  # odd length: padded over TCP
            to_b = [await b.recv(2) for _ in range(5)]
            to_a = [await a.recv(2) for _ in range(5)]
            assert [x.data for x in to_b] == [b"to b %d" % n for n in range(5)] and {x.channel for x in to_b} == {0x4000}
            assert [x.data for x in to_a] == [b"to a %d!" % n for n in range(5)] and {x.peer for x in to_a} == {b.relayed}
            refreshed = await a.refresh(900)
            assert refreshed.ok and a.session.lifetime == refreshed.response["LIFETIME"] > 0
            assert await a.release() is True and not a.session.allocated and not a.session.channels
            assert a.malformed == b.malformed == 0

    asyncio.run(main())


def test_blocking_client_relays_both_ways(turn_server):
    addr = _addr(turn_server)
    ca, cb = _creds(turn_server, "sync-a"), _creds(turn_server, "sync-b")
    with sync.SyncTurnClient(addr, username=ca.username, password=ca.password) as a, \
            sync.SyncTurnClient(addr, transport="tcp", username=cb.username, password=cb.password) as b:
        assert a.allocate().ok and b.allocate().ok
        a.channel_bind(b.relayed)
        b.create_permission(a.relayed)
        a.send(b.relayed, b"hello over a channel")
        got = b.recv(2)
        assert got is not None and got.data == b"hello over a channel" and got.peer == a.relayed
        b.send(a.relayed, b"hello back")
        back = a.recv(2)
        assert back is not None and back.data == b"hello back" and back.channel == 0x4000


def test_wrong_password_is_authentication_refused(turn_server):
    addr = _addr(turn_server)

    async def main():
        c = _creds(turn_server, "stack-wrong")
        async with await TurnClient.open(addr, username=c.username, password="not-it") as t:
            await t.allocate()

    with pytest.raises(AuthenticationRefused) as exc:
        asyncio.run(main())
    assert exc.value.error_code == 401 and exc.value.exit_code == 5 and exc.value.step == "allocate"


def test_ipv6_family_on_an_ipv4_server_is_refused(turn_server):
    addr = _addr(turn_server)

    async def main():
        c = _creds(turn_server, "stack-v6")
        async with await TurnClient.open(addr, username=c.username, password=c.password) as t:
            return await t.allocate(family=2, check=False)

    reply = asyncio.run(main())
    assert reply.code == 440 and isinstance(reply.error(), AllocationRefused)


def test_rfc6062_tcp_allocation_connect_and_data(turn_server):
    """Connect + ConnectionBind through coturn to a TCP echo server on loopback."""
    addr = _addr(turn_server)
    listener = socket.create_server(("127.0.0.1", 0))
    peer = TA("127.0.0.1", listener.getsockname()[1])

    async def main():
        async def echo(reader, writer):
            writer.write(await reader.read(100))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, sock=listener)
        c = _creds(turn_server, "stack-tcp")
        try:
            async with await TurnClient.open(addr, transport="tcp", username=c.username, password=c.password) as t:
                await t.allocate(transport=PROTO_TCP)
                reply = await t.connect(peer)
                cid = reply.response["CONNECTION-ID"]
                reader, writer = await t.open_data_connection(cid)
                writer.write(b"through an RFC 6062 relay")
                data = await asyncio.wait_for(reader.read(100), 3)
                writer.close()
                return data
        finally:
            server.close()

    assert asyncio.run(main()) == b"through an RFC 6062 relay"


def test_icmp_port_unreachable_fails_fast():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    dead = TA("127.0.0.1", s.getsockname()[1])
    s.close()

    async def main():
        async with await UdpStunEndpoint.open("127.0.0.1", remote=dead) as ep:
            await ep.request(binding_request(), dead, timeout=3)

    started = time.monotonic()
    with pytest.raises(ServerUnreachable, match="port unreachable"):
        asyncio.run(main())
    assert time.monotonic() - started < 1.0
    with pytest.raises(ServerUnreachable, match="port unreachable"):
        sync.request(codec.binding_request(), dead, timeout=3)


class _Mutator(asyncio.DatagramProtocol):
    """A loopback responder answering every request with ``make(request)``."""

    def __init__(self, make):
        self.make = make

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(self.make(codec.decode(data)), addr)


def test_malformed_answer_fails_the_transaction_at_once_and_is_counted():
    def short_xor_mapped(req: Message) -> bytes:
        ok = Message(Method.BINDING, Class.RESPONSE, req.transaction_id, [("SOFTWARE", "x")]).encode()
        bad = ok + b"\x00\x20\x00\x02\x00\x01\x00\x00"  # a 2-byte XOR-MAPPED-ADDRESS
        return bad[:2] + (len(bad) - 20).to_bytes(2, "big") + bad[4:]

    errors = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Mutator(short_xor_mapped), local_addr=("127.0.0.1", 0))
        server = TA(*transport.get_extra_info("sockname")[:2])
        try:
            async with await UdpStunEndpoint.open("127.0.0.1") as ep:
                ep.datagram_received(b"\xff" * 3, ("127.0.0.1", 9))  # stray garbage: counted, nothing raised
                started = time.monotonic()
                with pytest.raises(MalformedMessage) as exc:
                    await ep.request(binding_request(), server, timeout=3)
                return exc.value, time.monotonic() - started, ep.malformed
        finally:
            transport.close()

    exc, waited, counted = asyncio.run(main())
    assert "malformed response from 127.0.0.1:" in str(exc) and exc.attribute == "XOR-MAPPED-ADDRESS"
    assert waited < 0.5 and counted == 2 and not errors


# --------------------------------------------------------------------------- stund (RFC 3489, Debian stun-server)


@pytest.fixture(scope="module")
def stund():
    from natkit.pytest_plugin import require_root_netns  # noqa: F401  (plugin loaded)

    binary = shutil.which("stund") or ("/usr/sbin/stund" if os.access("/usr/sbin/stund", os.X_OK) else None)
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("stund (Debian stun-server) is not installed", pytrace=False)
        pytest.skip("stund (Debian stun-server) is not installed")
    from natkit.coturn.server import free_port

    port = free_port()
    proc = subprocess.Popen([binary, "-h", "127.0.0.1", "-a", "127.0.0.2", "-p", str(port), "-o", str(port + 1)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                sync.request(codec.binding_request(), TA("127.0.0.1", port), timeout=0.2, rto=0.05)
                break
            except TurnError:
                raise
            except Exception:
                if time.monotonic() > deadline:
                    raise
        yield TA("127.0.0.1", port)
    finally:
        proc.kill()
        proc.wait(5)


def test_binding_against_stund(stund):
    async def main():
        async with await UdpStunEndpoint.open("127.0.0.1") as ep:
            plain = await ep.request(binding_request(), stund, timeout=2)
            changed = await ep.request(binding_request(CHANGE_REQUEST=codec.CHANGE_PORT), stund, timeout=2)
            return plain, changed, ep.local_address

    plain, changed, local = asyncio.run(main())
    m = plain.message
    assert m.cls == Class.RESPONSE and m["MAPPED-ADDRESS"] == local
    assert m["SOURCE-ADDRESS"] == stund and m["CHANGED-ADDRESS"] == TA("127.0.0.2", stund.port + 1)
    assert changed.source == TA("127.0.0.1", stund.port + 1)  # answered from the other port, matched by transaction ID


# --------------------------------------------------------------------------- TLS (turns:, stuns:)


@pytest.fixture(scope="module")
def tls_coturn(tmp_path_factory):
    from natkit.coturn.config import CoturnConfig
    from natkit.coturn.server import CoturnServer, free_port
    from natkit.pytest_plugin import require_coturn
    from natkit.tls import self_signed

    require_coturn()
    cert, key = self_signed(["127.0.0.1"], days=1)
    ca = tmp_path_factory.mktemp("stack-tls") / "ca.pem"
    ca.write_bytes(cert)
    port, tls_port = free_port(), free_port()
    cfg = CoturnConfig(listening_port=port, tls_listening_port=tls_port, cert="cert.pem", pkey="key.pem",
                       static_auth_secrets=("stack-tls",), allow_loopback_peers=True, allowed_peer_ranges=("127.0.0.1",))
    old = os.environ.get("NATKIT_STATE_DIR")
    os.environ["NATKIT_STATE_DIR"] = str(tmp_path_factory.mktemp("stack-tls-state"))
    server = CoturnServer(cfg, backend="native", name=f"stack-tls-{tls_port}", extra_files={"cert.pem": cert, "key.pem": key})
    try:
        server.start()
    finally:
        if old is None:
            os.environ.pop("NATKIT_STATE_DIR", None)
        else:
            os.environ["NATKIT_STATE_DIR"] = old
    try:
        yield TA("127.0.0.1", tls_port), str(ca)
    finally:
        server.stop()


def test_turn_over_tls_relays_and_verifies_the_certificate(tls_coturn):
    from natkit.credentials import mint
    from natkit.stun.aio import client_ssl_context

    addr, ca = tls_coturn
    verified = client_ssl_context(True, ca)

    async def main():
        binding = await stream_transaction(binding_request(), addr, timeout=3, ssl=verified, server_hostname="127.0.0.1")
        ca_, cb_ = mint("stack-tls", "a", 600), mint("stack-tls", "b", 600)
        async with await TurnClient.open(addr, transport="tls", username=ca_.username, password=ca_.password, ssl=verified) as a, \
                await TurnClient.open(addr, transport="tls", username=cb_.username, password=cb_.password, ssl=verified) as b:
            await a.allocate()
            await b.allocate()
            await a.channel_bind(b.relayed)
            await b.create_permission(a.relayed)
            a.send(b.relayed, b"over TLS, padded")
            b.send(a.relayed, b"back over TLS")
            return binding, await b.recv(3), await a.recv(3)

    binding, to_b, to_a = asyncio.run(main())
    assert binding.message.cls == Class.RESPONSE and binding.message["XOR-MAPPED-ADDRESS"] == binding.local
    assert to_b is not None and to_b.data == b"over TLS, padded" and to_b.channel is None  # b has no channel: Data indication
    assert to_a is not None and to_a.data == b"back over TLS" and to_a.channel == 0x4000
    with sync.SyncTurnClient(addr, transport="tls", username=mint("stack-tls", "s", 60).username,
                             password=mint("stack-tls", "s", 60).password, ssl=verified) as s:
        assert s.allocate().ok and s.relayed.host == "127.0.0.1"


def test_untrusted_tls_certificate_is_unreachable_with_a_hint(tls_coturn):
    addr, _ = tls_coturn
    from natkit.stun.aio import client_ssl_context

    with pytest.raises(ServerUnreachable, match="certificate not trusted") as exc:
        asyncio.run(stream_transaction(binding_request(), addr, timeout=3, ssl=client_ssl_context(True)))
    assert exc.value.step == "tls" and "--ca" in exc.value.hint


# --------------------------------------------------------------------------- IPv6 (RFC 6156 / RFC 8656 address families)


def test_ipv6_allocations_relay_on_loopback(tmp_path, monkeypatch):
    from natkit.coturn.config import CoturnConfig
    from natkit.coturn.server import CoturnServer, free_port
    from natkit.credentials import mint
    from natkit.pytest_plugin import require_coturn

    require_coturn()
    port = free_port("::1")
    cfg = CoturnConfig(listening_ips=("::1",), listening_port=port, static_auth_secrets=("v6",),
                       allow_loopback_peers=True, allowed_peer_ranges=("::1",))
    addr = TA("::1", port)

    async def main():
        ca, cb = mint("v6", "a", 60), mint("v6", "b", 60)
        async with await TurnClient.open(addr, username=ca.username, password=ca.password) as a, \
                await TurnClient.open(addr, transport="tcp", username=cb.username, password=cb.password) as b:
            reply = await a.allocate(family=2)  # REQUESTED-ADDRESS-FAMILY IPv6
            await b.allocate(family=2)
            await a.channel_bind(b.relayed)
            await b.create_permission(a.relayed)
            a.send(b.relayed, b"over IPv6")
            return reply, a.relayed, a.mapped, await b.recv(3)

    with CoturnServer(cfg, backend="native", name=f"stack-v6-{port}"):
        reply, relayed, mapped, got = asyncio.run(main())
        binding, _, _ = sync.request(codec.binding_request(), addr, timeout=2)
    assert reply.ok and reply.signed is True and relayed.host == "::1" and relayed.family == 6 and mapped.host == "::1"
    assert got is not None and got.data == b"over IPv6" and got.peer == relayed
    assert binding["XOR-MAPPED-ADDRESS"].host == "::1"


def test_stale_nonce_is_retried_with_the_new_nonce():
    """coturn with stale-nonce=1: a request after the nonce expired gets 438 and the session retries once."""
    from natkit.coturn.config import CoturnConfig
    from natkit.coturn.server import CoturnServer, free_port
    from natkit.credentials import mint
    from natkit.pytest_plugin import require_coturn

    require_coturn()
    port = free_port()
    cfg = CoturnConfig(listening_port=port, static_auth_secrets=("stale",), stale_nonce=1)

    async def main():
        c = mint("stale", "a", 600)
        async with await TurnClient.open(TA("127.0.0.1", port), username=c.username, password=c.password) as t:
            await t.allocate()
            first_nonce = t.session.nonce
            await asyncio.sleep(2.2)  # let the server's 1 s nonce lifetime run out (a server timer, not synchronisation)
            reply = await t.refresh(600)
            return reply, first_nonce, t.session.nonce

    with CoturnServer(cfg, backend="native", name=f"stack-stale-{port}"):
        reply, before, after = asyncio.run(main())
    assert reply.ok and reply.signed is True and reply.attempts == 2
    assert reply.trail().startswith("438") and before != after


def test_refreshes_keep_allocation_permissions_and_channels_alive(turn_server):
    addr = _addr(turn_server)

    async def main():
        ca, cb = _creds(turn_server, "keep-a"), _creds(turn_server, "keep-b")
        async with await TurnClient.open(addr, username=ca.username, password=ca.password) as a, \
                await TurnClient.open(addr, username=cb.username, password=cb.password) as b:
            await a.allocate()
            await b.allocate()
            await a.channel_bind(b.relayed)
            await b.create_permission(a.relayed)  # a permission without a channel
            replies = await a.refresh_due(margin=10_000) + await b.refresh_due(margin=10_000)  # everything is "due"
            keeper = asyncio.ensure_future(a.maintain(margin=10_000, every=0.05))
            await asyncio.sleep(0.3)
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            a.send(b.relayed, b"still bound")
            return replies, list(a.refresh_failures), await b.recv(2)

    replies, failures, got = asyncio.run(main())
    assert [r.request.method for r in replies] == [Method.REFRESH, Method.CHANNEL_BIND, Method.REFRESH, Method.CREATE_PERMISSION]
    assert all(r.ok and r.signed for r in replies) and failures == []
    assert got is not None and got.data == b"still bound"
