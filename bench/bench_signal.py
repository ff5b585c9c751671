"""Benchmark the signaling server, ``natkit peer`` pairs and the browser page, all on loopback.

    python bench/bench_signal.py [--rooms 50,200,500,1000] [--runs 3] [--pairs 3] [--browser] [--markdown]

1. **Signaling load**: a ``natkit signal serve`` process; for each room count,
   that many rooms of two WebSocket peers at once (join, offer of 3 kB, 8
   trickled candidates each way, answer, bye), ``--runs`` times. Reports wall
   time, relayed messages per second, join and offer-relay latency, errors,
   and the server's peak RSS and CPU seconds. Each run is cut off after 60 s.
2. **Peer pairs**: a native coturn on 127.0.0.1 and ``--pairs`` times two
   ``natkit peer --relay-only`` processes through it (20 echoes, 1 MB bulk),
   plus one 20 MB ``--send`` transfer. Reports whole-process wall time (B's
   start to both exits) and the in-report figures.
3. ``--browser`` (needs Debian's chromium and the playwright package): the
   test page against a ``natkit peer``, page load to verdict.

Traffic goes only to 127.0.0.1, to servers this script starts and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

RUN_LIMIT = 60.0  # seconds per load run


def proc_stats(pid: int) -> tuple[float | None, float | None]:
    """(peak RSS in MB, CPU seconds user+system) of a live process, from /proc."""
    rss = cpu = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) / 1024
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        pass
    return rss, cpu


def bench_load(room_counts: list[int], runs: int) -> list[dict]:
    from natkit.signaling.load import load
    from natkit.signaling.process import SignalProcess

    rows = []
    need = 2 * max(room_counts) + 100
    with SignalProcess("--max-connections", str(need), env={"NATKIT_QUIET": "1"}) as server:
        for rooms in room_counts:
            results = []
            for _ in range(runs):
                results.append(asyncio.run(load(server.ws_url, rooms, limit=RUN_LIMIT)))
                time.sleep(0.5)
            rss, cpu = proc_stats(server.proc.pid)
            med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
            rows.append({
                "rooms": rooms, "connections": 2 * rooms, "runs": runs,
                "completed": sum(r.completed for r in results), "errors": sum(r.errors for r in results),
                "first_error": next((r.first_error for r in results if r.first_error), None),
                "seconds_median": med([r.seconds for r in results]),
                "seconds_max": max(r.seconds for r in results),
                "messages_per_s_median": med([r.messages_per_s for r in results]),
                "join_ms_p50_median": med([r.connect_join_ms_p50 for r in results if r.connect_join_ms_p50 is not None]),
                "offer_ms_p50_median": med([r.offer_ms_p50 for r in results if r.offer_ms_p50 is not None]),
                "offer_ms_p95_max": max((r.offer_ms_p95 for r in results if r.offer_ms_p95 is not None), default=None),
                "server_peak_rss_mb": rss, "server_cpu_s_cumulative": cpu,
            })
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def bench_pairs(pairs: int, browser: bool) -> dict:
    from natkit.coturn.config import CoturnConfig
    from natkit.coturn.server import CoturnServer, free_port
    from natkit.credentials import new_secret
    from natkit.signaling.process import PeerProcess, SignalProcess

    out: dict = {"pairs": []}
    state = tempfile.mkdtemp(prefix="natkit-bench-signal-")
    os.environ["NATKIT_STATE_DIR"] = state
    secret = new_secret()
    port = free_port()
    cfg = CoturnConfig(listening_port=port, static_auth_secrets=(secret,), allow_loopback_peers=True,
                       allowed_peer_ranges=("127.0.0.1",), realm="natkit.bench")
    env = {"NATKIT_QUIET": "1"}
    with CoturnServer(cfg, backend="native", name=f"bench-signal-{port}") as turn, \
            SignalProcess("--turn", turn.info.uris[0], "--secret", secret, env=env) as sig:
        uri = turn.info.uris[0]

        def args(room: str, *extra: str) -> list[str]:
            return ["--signal", sig.ws_url, "--room", room, "--turn", uri, "--secret", secret, "--relay-only",
                    "--timeout", "20", "--wait", "30", *extra]

        def pair(room: str, a_extra=(), b_extra=()):
            a = PeerProcess(*args(room, *a_extra), env=env).start()
            if not a.wait_joined(30):  # A is in the room (its start-up is not what is measured)
                raise SystemExit(f"the first peer did not join: {a.stderr_lines[-5:]}")
            t = time.perf_counter()
            b = PeerProcess(*args(room, *b_extra), env=env).start()
            try:
                ca, ra, ea = a.result(120)
                cb, rb, eb = b.result(120)
            finally:
                a.stop()
                b.stop()
            return time.perf_counter() - t, (ca, ra, ea), (cb, rb, eb)

        for i in range(pairs):
            wall, (ca, ra, ea), (cb, rb, eb) = pair(f"bench-{i}")
            if ca or cb:
                raise SystemExit(f"peer pair failed: {ea} {eb}")
            path = rb["path"]
            out["pairs"].append({"wall_s": wall, "connected_ms": path["connected_ms"], "rtt_ms_p50": path["rtt_ms_p50"],
                                 "rtt_ms_p95": path["rtt_ms_p95"], "throughput_mbps": path["throughput_mbps"],
                                 "pair": f"{path['selected']['local']['local_type']}/{path['selected']['local']['remote_type']}"})
            print(json.dumps(out["pairs"][-1]), file=sys.stderr, flush=True)
        with tempfile.NamedTemporaryFile(suffix=".bin") as f:
            f.write(os.urandom(20 * 1024 * 1024))
            f.flush()
            wall, (ca, ra, ea), (cb, rb, eb) = pair("bench-file", b_extra=("--send", f.name, "--payload", "0"))
            if ca or cb:
                raise SystemExit(f"file transfer failed: {ea} {eb}")
            out["file"] = {"bytes": rb["file"]["bytes"], "wall_s": wall, "sender_mbps": rb["file"]["throughput_mbps"],
                           "receiver_mbps": ra["file"]["throughput_mbps"], "sha256_ok": ra["file"]["ok"] and rb["file"]["ok"]}
            print(json.dumps(out["file"]), file=sys.stderr, flush=True)
        if browser:
            out["browser"] = bench_browser(sig, args, pairs, env)
    return out


def bench_browser(sig, args, runs: int, env: dict) -> list[dict]:
    from urllib.parse import urlencode

    from playwright.sync_api import sync_playwright

    from natkit.signaling.process import PeerProcess

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    from test_browser import CHROMIUM, CHROMIUM_FLAGS  # the same safe flags as the tests

    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            for i in range(runs):
                ctx = browser.new_context()
                page = ctx.new_page()
                room = f"bench-web-{i}"
                peer = PeerProcess(*args(room, "--messages", "10", "--payload", "100000"), env=env).start()
                if not peer.wait_joined(30):
                    raise SystemExit(f"natkit peer did not join: {peer.stderr_lines[-5:]}")
                t = time.perf_counter()
                page.goto(sig.url + "?" + urlencode({"room": room, "auto": "connect", "messages": "10"}))
                while not page.evaluate("() => !!(window.natkit.result && window.natkit.result.done)"):
                    if time.perf_counter() - t > 60:
                        raise SystemExit("the page did not finish")
                    time.sleep(0.02)
                wall = time.perf_counter() - t
                r = page.evaluate("() => window.natkit.result")
                code, rep, err = peer.result(60)
                peer.stop()
                ctx.close()
                rtts = sorted(r["rttMs"])
                rows.append({"wall_s": wall, "ok": r["ok"] and code == 0, "connected_ms": r["connectedMs"],
                             "rtt_ms_p50": rtts[len(rtts) // 2] if rtts else None,
                             "pair": f"{r['selected']['local']['type']}/{r['selected']['remote']['type']}"})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        finally:
            browser.close()
    return rows


def markdown(load_rows: list[dict], pairs: dict | None) -> str:
    f = lambda v, d=1: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = ["| rooms (connections) | runs | completed | errors | wall median / max | relayed msg/s | join p50 | offer relay p50 / p95 max | server peak RSS |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in load_rows:
        lines.append(f"| {r['rooms']} ({r['connections']}) | {r['runs']} | {r['completed']}/{r['rooms'] * r['runs']} | {r['errors']} | "
                     f"{f(r['seconds_median'], 2)} / {f(r['seconds_max'], 2)} s | {f(r['messages_per_s_median'], 0)} | "
                     f"{f(r['join_ms_p50_median'])} ms | {f(r['offer_ms_p50_median'])} / {f(r['offer_ms_p95_max'])} ms | "
                     f"{f(r['server_peak_rss_mb'])} MB |")
    if pairs:
        lines += ["", "| natkit peer pair (relay-only) | wall (B start -> both exit) | connected | echo RTT p50 / p95 | 1 MB bulk | pair |",
                  "|---|---|---|---|---|---|"]
        for i, p in enumerate(pairs["pairs"]):
            lines.append(f"| run {i + 1} | {f(p['wall_s'], 2)} s | {f(p['connected_ms'])} ms | {f(p['rtt_ms_p50'], 2)} / {f(p['rtt_ms_p95'], 2)} ms | "
                         f"{f(p['throughput_mbps'], 2)} MB/s | {p['pair']} |")
        fl = pairs.get("file")
        if fl:
            lines += ["", f"20 MB `--send`: {f(fl['wall_s'], 2)} s whole pair, sender {f(fl['sender_mbps'], 2)} MB/s "
                      f"(until the receiver's SHA-256 came back), receiver {f(fl['receiver_mbps'], 2)} MB/s, SHA-256 ok: {fl['sha256_ok']}"]
        if pairs.get("browser"):
            lines += ["", "| browser page vs natkit peer | page load -> verdict | data channel open | echo RTT p50 | pair | ok |", "|---|---|---|---|---|---|"]
            for i, b in enumerate(pairs["browser"]):
                lines.append(f"| run {i + 1} | {f(b['wall_s'], 2)} s | {f(b['connected_ms'])} ms | {f(b['rtt_ms_p50'], 2)} ms | {b['pair']} | {b['ok']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rooms", default="50,200,500,1000", help="room counts, comma separated (each room: 2 connections)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=3, help="natkit peer pairs (0: skip)")
    ap.add_argument("--browser", action="store_true", help="also time the page in headless chromium")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    rooms = [int(x) for x in a.rooms.split(",") if x]
    if any(r < 1 or r > 2000 for r in rooms) or not 1 <= a.runs <= 10:
        raise SystemExit("--rooms each 1..2000, --runs 1..10 (the load stays bounded)")
    load_rows = bench_load(rooms, a.runs)
    pairs = bench_pairs(a.pairs, a.browser) if a.pairs else None
    if a.markdown:
        print(markdown(load_rows, pairs))
    else:
        print(json.dumps({"load": load_rows, "peers": pairs}, indent=2))


if __name__ == "__main__":
    main()
