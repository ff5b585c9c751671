"""Micro-benchmarks of natkit's STUN/TURN core (pure, no network): codec and ChannelData data path.

    .venv/bin/python bench/bench_stun.py [--seconds 1] [--coturn [--packets 50000]]

Prints operations per second for: Binding request encode, Binding response decode, signed Allocate
encode, ChannelData build (TurnSession.send on a bound channel) and ChannelData receive
(TurnSession.receive), side by side with aioice.stun where it has the same operation. Figures
depend on the machine; rerun on a quiet one before quoting them.

With ``--coturn`` it also starts a native coturn on 127.0.0.1 (loopback relaying allowed) and pushes
``--packets`` ChannelData messages of ``--size`` bytes from one natkit TurnClient to another through it
(bounded in count and time; loopback only), printing packets per second sent and received.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from natkit.model import TransportAddress
from natkit.stun import codec
from natkit.stun.turn import TurnSession


def rate(fn, seconds: float) -> float:
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            fn()
        n += 1000
    return n / seconds


async def _through_coturn(port: int, secret: str, packets: int, size: int, rate: float) -> tuple[float, float, int]:
    from natkit.credentials import mint
    from natkit.stun.aio_turn import TurnClient

    addr = TransportAddress("127.0.0.1", port)
    ca, cb = mint(secret, "bench-a", 600), mint(secret, "bench-b", 600)
    async with await TurnClient.open(addr, username=ca.username, password=ca.password) as a, \
            await TurnClient.open(addr, username=cb.username, password=cb.password, rcvbuf=4 << 20) as b:
        await a.allocate()
        await b.allocate()
        channel = (await a.channel_bind(b.relayed)).request["CHANNEL-NUMBER"]
        await b.create_permission(a.relayed)
        got = {"n": 0, "last": 0.0}

        def on_data(item) -> None:
            got["n"] += 1
            got["last"] = time.perf_counter()

        b.on_data = on_data
        payload = b"x" * size
        started = time.perf_counter()
        sent = 0
        while sent < packets:  # paced: ``rate`` packets per second, sent in 1 ms slices
            due = min(packets, int((time.perf_counter() - started) * rate) + 1)
            while sent < due:
                a.send_channel(channel, payload)
                sent += 1
            await asyncio.sleep(0.001)
        sent_s = time.perf_counter() - started
        end = time.perf_counter() + 2.0
        while got["n"] < packets and time.perf_counter() < end:
            await asyncio.sleep(0.01)
        recv_s = max(1e-9, (got["last"] or time.perf_counter()) - started)
        return packets / sent_s, got["n"] / recv_s, got["n"]


def coturn_bench(packets: int, size: int, rate: float) -> None:
    import tempfile

    os.environ.setdefault("NATKIT_STATE_DIR", tempfile.mkdtemp(prefix="natkit-bench-"))
    from natkit.coturn.config import CoturnConfig
    from natkit.coturn.server import CoturnServer, free_port
    from natkit.credentials import new_secret

    secret, port = new_secret(), free_port()
    cfg = CoturnConfig(listening_port=port, static_auth_secrets=(secret,), allow_loopback_peers=True,
                       allowed_peer_ranges=("127.0.0.1",))
    with CoturnServer(cfg, backend="native", name=f"bench-stun-{port}"):
        send_pps, recv_pps, received = asyncio.run(_through_coturn(port, secret, packets, size, rate))
    print(f"ChannelData through coturn ({size} B, paced at {rate:,.0f}/s): sent {send_pps:,.0f}/s, received {recv_pps:,.0f}/s, "
          f"{received}/{packets} arrived")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--coturn", action="store_true", help="also push ChannelData through a local coturn")
    ap.add_argument("--packets", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--rate", type=float, default=20_000, help="packets per second offered (1..1e6)")
    args = ap.parse_args()
    if not 1 <= args.packets <= 1_000_000:
        ap.error("--packets must be 1..1000000")
    s = args.seconds
    peer = TransportAddress("127.0.0.1", 50000)
    resp = codec.Message(codec.Method.BINDING, codec.Class.RESPONSE, None, [
        ("XOR-MAPPED-ADDRESS", peer), ("MAPPED-ADDRESS", peer), ("RESPONSE-ORIGIN", peer),
        ("SOFTWARE", "Coturn-4.6.1 'Gorst'")]).encode(fingerprint=True)
    key = codec.long_term_key("1700000000:natkit", "natkit.test", "secret")
    session = TurnSession("u", "p")
    session.channels[peer] = 0x4000
    session._peer_by_channel[0x4000] = peer
    payload = b"x" * 100
    frame = session.send(peer, payload)
    rows = [
        ("natkit Binding request encode", lambda: codec.binding_request().encode()),
        ("natkit Binding response decode", lambda: codec.decode(resp)),
        ("natkit signed Allocate encode", lambda: codec.request(codec.Method.ALLOCATE, [
            ("REQUESTED-TRANSPORT", 17), ("USERNAME", "1700000000:natkit"), ("REALM", "natkit.test"),
            ("NONCE", b"0123456789abcdef")]).encode(key, fingerprint=True)),
        ("natkit ChannelData build (100 B)", lambda: session.send(peer, payload)),
        ("natkit ChannelData receive (100 B)", lambda: session.receive(frame)),
    ]
    try:
        from aioice import stun as a

        rows += [
            ("aioice Binding request encode", lambda: bytes(a.Message(a.Method.BINDING, a.Class.REQUEST))),
            ("aioice Binding response decode", lambda: a.parse_message(resp)),
        ]
    except ImportError:
        pass
    for name, fn in rows:
        print(f"{name:40s} {rate(fn, s):>12,.0f} /s")
    if args.coturn:
        if not 1 <= args.rate <= 1e6:
            ap.error("--rate must be 1..1000000")
        coturn_bench(args.packets, args.size, args.rate)


if __name__ == "__main__":
    main()
