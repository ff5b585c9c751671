"""A bounded load generator for the signaling server (tests and ``bench/bench_signal.py``).

Loopback only by intent: point it at a server you started yourself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """One load run: ``rooms`` rooms of two peers each, all at once. Times in seconds /
    milliseconds; ``messages_per_s`` counts relayed messages (offer, answer, candidates, bye)."""

    rooms: int
    candidates: int
    completed: int
    errors: int
    first_error: str | None
    seconds: float
    connect_join_ms_p50: float | None  # WebSocket handshake + join of one room's two peers
    offer_ms_p50: float | None  # offer sent -> offer received by the other peer
    offer_ms_p95: float | None
    relayed_messages: int
    messages_per_s: float


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def load(ws_url: str, rooms: int, *, candidates: int = 8, sdp_bytes: int = 3000, limit: float = 60.0) -> LoadResult:
    """Run ``rooms`` concurrent rooms against ``ws_url``: both peers join, one offers (an SDP of
    ``sdp_bytes``) and trickles ``candidates`` candidates, the other answers and trickles as many,
    then ``bye``. Every step waits at most ``limit`` seconds overall (then the run is cut short
    and counted as errors). Needs aiohttp."""
    import aiohttp

    sdp = "v=0\r\n" + "a=x\r\n" * (sdp_bytes // 5)
    offer_lat: list[float] = []
    join_lat: list[float] = []
    done = 0

    async def recv_type(ws, kind: str):
        while True:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"connection closed waiting for {kind} (code {ws.close_code})")
            m = json.loads(msg.data)
            if m["type"] == kind:
                return m
            if m["type"] == "error":
                raise RuntimeError(f"server error {m.get('code')}: {m.get('message')}")

    def cand(k: int) -> str:
        return json.dumps({"type": "candidate", "candidate": {
            "candidate": f"candidate:{k} 1 udp 1 127.0.0.1 {k + 1} typ relay", "sdpMid": "0"}})

    async def room(i: int, session) -> None:
        nonlocal done
        name = f"load-{i}"
        t = time.monotonic()
        async with session.ws_connect(ws_url) as a, session.ws_connect(ws_url) as b:
            await a.send_str(json.dumps({"type": "join", "room": name}))
            await recv_type(a, "joined")
            await b.send_str(json.dumps({"type": "join", "room": name}))
            await recv_type(b, "joined")
            join_lat.append((time.monotonic() - t) * 1000.0)
            t = time.monotonic()
            await b.send_str(json.dumps({"type": "offer", "sdp": sdp}))
            for k in range(candidates):
                await b.send_str(cand(k))
            await recv_type(a, "offer")
            offer_lat.append((time.monotonic() - t) * 1000.0)
            for _ in range(candidates):
                await recv_type(a, "candidate")
            await a.send_str(json.dumps({"type": "answer", "sdp": sdp}))
            for k in range(candidates):
                await a.send_str(cand(k))
            await recv_type(b, "answer")
            for _ in range(candidates):
                await recv_type(b, "candidate")
            await b.send_str(json.dumps({"type": "bye"}))
            await recv_type(a, "bye")
            done += 1

    t0 = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.ensure_future(room(i, session)) for i in range(rooms)]
        finished, pending = await asyncio.wait(tasks, timeout=limit)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
    elapsed = time.monotonic() - t0
    errors = [t.exception() for t in finished if t.exception() is not None]
    first = repr(errors[0]) if errors else (f"{len(pending)} rooms unfinished after {limit:g}s" if pending else None)
    messages = rooms * (2 + 2 * candidates + 1)
    return LoadResult(rooms=rooms, candidates=candidates, completed=done, errors=len(errors) + len(pending), first_error=first,
                      seconds=elapsed, connect_join_ms_p50=_pct(join_lat, 50), offer_ms_p50=_pct(offer_lat, 50),
                      offer_ms_p95=_pct(offer_lat, 95), relayed_messages=messages, messages_per_s=messages / elapsed)
