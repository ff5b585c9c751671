"""Micro-benchmarks of natkit's STUN/TURN core (pure, no network): codec and ChannelData data path.

    .venv/bin/python bench/bench_stun.py [--seconds 1]

Prints operations per second for: Binding request encode, Binding response decode, signed Allocate
encode, ChannelData build (TurnSession.send on a bound channel) and ChannelData receive
(TurnSession.receive), side by side with aioice.stun where it has the same operation. Figures
depend on the machine; rerun on a quiet one before quoting them.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0)
    s = ap.parse_args().seconds
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


if __name__ == "__main__":
    main()
