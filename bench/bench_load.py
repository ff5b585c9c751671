"""natkit turn load vs coturn's turnutils_uclient, same coturn, same run (loopback only).

    .venv/bin/python bench/bench_load.py [--quick] [--runs 3] [--only alloc,pps,hold,ramp,locust] [--json OUT]

Every section starts its own native coturn 4.6 on 127.0.0.1 (relaying from 127.0.0.2,
relay ports 10000-32767, below Linux's ephemeral range, so no client socket can take a
relay port), runs natkit and the reference tool against it, and stops it.

* alloc   allocations/s. natkit: ``--profile alloc`` (rising rate until errors or
          Allocate p99 > 250 ms; with and without CreatePermission + ChannelBind).
          turnutils_uclient: ``-O`` ("DOS attack mode: quick connect and exit"),
          its closest mode on 4.6.1: allocations / wall time, counted in coturn's log.
* pps     delivered relay packets/s at < 1 % loss, 120-byte payloads, 100 sessions,
          UDP echo peer (turnutils_peer for uclient, natkit's own echo for natkit).
          uclient: ``-m 100 -n N -z Z -l 120 -c`` (its per-session interval Z ms);
          natkit: ``--profile rate --rate R``. "back" = packets returned to the
          clients per second (each crossed the relay twice), CPU of both sides.
* hold    10,000 concurrent allocations (with a channel each), then the ceilings:
          a 1,000-port relay range (508), user-quota=500 (486), coturn under a
          2,048 open-files limit (its log names the fd limit).
* ramp    ``--ramp`` for audio and video, ``--runs`` times: calls carried and spread.
* locust  the decision for single-machine runs: Locust's local runner with
          ``TurnCallUser.per_packet_events`` vs natkit's worker at the same offered load.

Figures depend on the machine and on what else runs on it: rerun on a quiet machine
before quoting them. Every load is bounded (sessions, packets, seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from natkit.coturn.config import CoturnConfig
from natkit.coturn.server import CoturnServer, free_port
from natkit.credentials import mint
from natkit.load import LoadConfig
from natkit.load import run_load as _run_load
from natkit.load.sysmon import CpuMeter
from natkit.model import TransportAddress

SECRET = "bench-load-secret"
RESULTS: dict = {}


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def coturn(name: str, *, verbose: bool = False, min_port: int = 10000, max_port: int = 32767, user_quota: int | None = None,
           nofile: int | None = None):
    """A native coturn on 127.0.0.1 (relay 127.0.0.2) in a scratch state dir; yields (server, port)."""
    state = tempfile.mkdtemp(prefix="natkit-bench-load-")
    os.environ["NATKIT_STATE_DIR"] = state
    wrapper = None
    if nofile:
        wrapper = os.path.join(state, "turnserver-limited")
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\nulimit -n {nofile}\nexec {shutil.which('turnserver')} \"$@\"\n")
        os.chmod(wrapper, 0o755)
        os.environ["NATKIT_TURNSERVER"] = wrapper
    port = free_port()
    cfg = CoturnConfig(listening_port=port, relay_ips=("127.0.0.2",), min_port=min_port, max_port=max_port, static_auth_secrets=(SECRET,),
                       allow_loopback_peers=True, allowed_peer_ranges=("127.0.0.1", "127.0.0.2"), realm="bench", user_quota=user_quota,
                       no_tcp_relay=True, extra=("verbose",) if verbose else ())
    server = CoturnServer(cfg, backend="native", name=name)
    try:
        server.start()
        yield server, port
    finally:
        server.stop()
        os.environ.pop("NATKIT_TURNSERVER", None)
        shutil.rmtree(state, ignore_errors=True)


def run_load(cfg: LoadConfig, **kw):
    """natkit.load.run_load, and Ctrl-C ends the whole benchmark (the run releases what it allocated first)."""
    report = _run_load(cfg, **kw)
    if report.interrupted:
        raise KeyboardInterrupt
    return report


def natkit_cfg(profile: str, port: int, server: CoturnServer, **kw) -> LoadConfig:
    cred = mint(SECRET, kw.pop("user", "bench"), 7200)
    base = {"username": cred.username, "password": cred.password, "echo_host": "127.0.0.1", "local_host": "127.0.0.1",
            "server_pid": server.info.pid, "timeout": 3.0, "max_time": 900.0, "server_port_range": (server.config.min_port, server.config.max_port),
            "server_quotas": (server.config.user_quota, server.config.total_quota)}
    base.update(kw)
    return LoadConfig(profile, TransportAddress("127.0.0.1", port), **base)


def uclient(port: int, *args: str, timeout: float = 300) -> tuple[str, float]:
    cmd = ["turnutils_uclient", "-W", SECRET, "-u", "bench", "-p", str(port), "-L", "127.0.0.1", *args, "127.0.0.1"]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    return out.stdout + out.stderr, time.monotonic() - t0


# ----------------------------------------------------------------------------- alloc
def bench_alloc(quick: bool) -> None:
    rows = []
    with coturn("bench-alloc", verbose=True) as (server, port):
        for channel in (True, False):
            r = run_load(natkit_cfg("alloc", port, server, rate=100, sessions=400, step_duration=2 if quick else 3, channel=channel,
                                    max_latency_ms=250, max_steps=12), read_server_log=server.logs)
            a = r.alloc
            rows.append({"tool": f"natkit --profile alloc{'' if channel else ' --no-channel'}", "allocs_per_s": a.best_rate_per_s,
                         "peak_allocs_per_s": a.peak_rate_per_s,
                         "p99_ms": a.latency_ms_p99, "errors": a.errors, "stopped": r.steps[-1].reason if r.steps else None,
                         "worker_cpu": r.cpu.worker_max_pct, "server_cpu": r.cpu.server_pct})
            log(f"alloc natkit channel={channel}: {a.best_rate_per_s} /s, stop: {rows[-1]['stopped']}")
        for m in ((200, 500) if quick else (200, 500, 1000)):
            before = sum("ALLOCATE processed, success" in ln for ln in server.logs())
            meter = CpuMeter([server.info.pid])
            out, wall = uclient(port, "-O", "-m", str(m), "-n", "1", "-c", "-e", "127.0.0.1", "-r", "9")
            cpu = meter.lap().get(server.info.pid, (None, None))[0]
            time.sleep(0.5)
            ok = sum("ALLOCATE processed, success" in ln for ln in server.logs()) - before
            rows.append({"tool": f"turnutils_uclient -O -m {m}", "allocs_per_s": ok / wall, "allocations": ok, "wall_s": wall,
                         "errors": len(re.findall(r"error \d{3}", out)), "server_cpu": cpu})
            log(f"alloc uclient -O -m {m}: {ok} in {wall:.2f}s = {ok / wall:.0f}/s")
    RESULTS["alloc"] = rows


# ----------------------------------------------------------------------------- pps
def _uclient_pps(port: int, peer_port: int, z: int, n: int) -> dict:
    out, wall = uclient(port, "-m", "100", "-n", str(n), "-z", str(z), "-l", "120", "-c", "-e", "127.0.0.1", "-r", str(peer_port), timeout=600)
    sent = int(m.group(1)) if (m := re.search(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", out, re.MULTILINE)) else 0
    recv = int(m.group(2)) if m else 0
    tx = int(t.group(1)) if (t := re.search(r"Total transmit time is (\d+)", out)) else None
    lost = float(x.group(1)) if (x := re.search(r"Total lost packets \d+ \(([\d.]+)%\)", out)) else None
    seconds = tx if tx else wall
    return {"tool": f"turnutils_uclient -m 100 -z {z} -n {n}", "sent": sent, "back": recv, "seconds": seconds,
            "back_pps": recv / seconds if seconds else None, "loss_pct": lost, "wall_s": wall}


def bench_pps(quick: bool) -> None:
    rows = []
    seconds = 5 if quick else 10
    with coturn("bench-pps") as (server, port):
        peer_port = free_port()
        peer = subprocess.Popen(["turnutils_peer", "-L", "127.0.0.1", "-p", str(peer_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            for z, n in ((5, 2000), (2, 4000), (1, 8000)):
                meter = CpuMeter([server.info.pid])
                row = _uclient_pps(port, peer_port, z, n // (2 if quick else 1))
                cpu = meter.lap()
                row["server_cpu"] = cpu.get(server.info.pid, (None,))[0]
                rows.append(row)
                log(f"pps {row['tool']}: back {row['back_pps']:.0f}/s loss {row['loss_pct']} %")
        finally:
            peer.terminate()
            peer.wait(5)
        for rate in ((10_000, 20_000, 30_000) if quick else (10_000, 15_000, 20_000, 30_000, 40_000, 50_000)):
            r = run_load(natkit_cfg("rate", port, server, rate=rate, sessions=100, size=120, duration=seconds))
            m = r.media
            rows.append({"tool": f"natkit --profile rate --rate {rate} --sessions 100", "sent": m.sent, "back": m.returned,
                         "seconds": m.seconds, "back_pps": m.returned_pps, "relayed_pps": m.relayed_pps, "loss_pct": m.loss_pct,
                         "rtt_p99_ms": m.rtt_ms_p99, "workers": r.workers, "worker_cpu": list(r.cpu.workers_pct),
                         "server_cpu": r.cpu.server_pct, "server_thread_cpu": r.cpu.server_busiest_thread_pct,
                         "drops": {"generator": r.drops.generator, "server": r.drops.server}, "limited_by": r.verdict.limited_by})
            log(f"pps natkit {rate}: back {m.returned_pps:.0f}/s loss {m.loss_pct} % cpu {r.cpu.workers_pct} server {r.cpu.server_pct}")
    RESULTS["pps"] = rows


# ----------------------------------------------------------------------------- hold
def bench_hold(quick: bool) -> None:
    rows = []
    target = 2000 if quick else 10_000
    with coturn("bench-hold") as (server, port):
        r = run_load(natkit_cfg("hold", port, server, sessions=target, duration=10, rate=1500), read_server_log=server.logs)
        rows.append(_hold_row(f"{target:,} allocations, relay ports 10000-32767", r))
    with coturn("bench-hold-508", min_port=40000, max_port=40999) as (server, port):
        r = run_load(natkit_cfg("hold", port, server, sessions=2000, duration=2), read_server_log=server.logs)
        rows.append(_hold_row("relay ports 40000-40999", r))
    with coturn("bench-hold-486", user_quota=500) as (server, port):
        r = run_load(natkit_cfg("hold", port, server, sessions=2000, duration=2), read_server_log=server.logs)
        rows.append(_hold_row("user-quota=500", r))
    with coturn("bench-hold-fd", nofile=2048) as (server, port):
        r = run_load(natkit_cfg("hold", port, server, sessions=3000, duration=2, timeout=2.0), read_server_log=server.logs)
        rows.append(_hold_row("coturn under ulimit -n 2048", r))
    for row in rows:
        log(f"hold {row['case']}: {row['reached']} — {row['reason']}")
    RESULTS["hold"] = rows


def _hold_row(case: str, r) -> dict:
    h = r.hold
    return {"case": case, "target": h.target, "reached": h.reached, "reason": h.reason, "errors": h.errors,
            "released": r.released, "release_failed": r.release_failed, "open_latency_p99_ms": h.latency_ms_p99,
            "fd_limit": r.server_facts.fd_limit, "seconds": r.duration_s, "worker_cpu": r.cpu.worker_max_pct, "server_cpu": r.cpu.server_pct}


# ----------------------------------------------------------------------------- ramp
def bench_ramp(quick: bool, runs: int) -> None:
    rows = []
    for profile, start in (("audio", 100), ("video", 40)):
        figures = []
        for i in range(runs):
            with coturn(f"bench-ramp-{profile}-{i}") as (server, port):
                r = run_load(natkit_cfg(profile, port, server, sessions=start, ramp=True, step_duration=2 if quick else 4,
                                        duration=300, max_steps=14))
            figures.append(r.verdict.value)
            rows.append({"profile": profile, "run": i + 1, "calls": r.verdict.value, "limited_by": r.verdict.limited_by,
                         "server_limit": r.verdict.server_limit, "notes": list(r.verdict.notes),
                         "steps": [(s.sessions, s.loss_pct, s.worker_cpu_max_pct, s.server_cpu_pct, s.reason) for s in r.steps]})
            log(f"ramp {profile} run {i + 1}: {r.verdict.value} calls ({r.verdict.limited_by})")
        vals = [v for v in figures if v]
        if vals:
            mean = sum(vals) / len(vals)
            rows.append({"profile": profile, "summary": True, "mean": mean, "spread_pct": 100 * (max(vals) - min(vals)) / 2 / mean})
    RESULTS["ramp"] = rows


# ----------------------------------------------------------------------------- locust
# Locust runs every User class it finds in the locustfile's namespace: `from natkit.load.locust import TurnCallUser`
# there ran half the users as the plain TurnCallUser (per-second MEDIA rtt events, no MEDIA packet events), which is
# why an earlier run showed "half delivered" with no loss. The module is imported instead, the class named on the
# command line, and the users count what they sent and what came back themselves (Locust's CSV is kept alongside).
LOCUSTFILE = """\
import json
import os
import time

from locust import events

import natkit.load.locust as turn_users

TOTALS = {"users": 0, "sent": 0, "returned": 0, "first": None, "last": None}


@events.request.add_listener
def _returned(request_type, name, **_kw):
    if request_type == "MEDIA" and name == "packet":
        now = time.time()
        TOTALS["returned"] += 1
        TOTALS["first"] = TOTALS["first"] or now
        TOTALS["last"] = now


@events.quitting.add_listener
def _dump(environment, **_kw):
    with open(os.environ["NATKIT_BENCH_TOTALS"], "w") as f:
        json.dump(TOTALS, f)


class PacketCall(turn_users.TurnCallUser):
    per_packet_events = True
    seconds_per_task = 2.0

    def on_stop(self):
        TOTALS["users"] += 1
        TOTALS["sent"] += getattr(self, "seq", 0)
        super().on_stop()
"""


def _locust_run(d: str, port: int, users: int, seconds: float) -> dict:
    import csv

    totals_file = os.path.join(d, f"totals-{users}.json")
    env = dict(os.environ, NATKIT_TURN_SECRET=SECRET, NATKIT_BENCH_TOTALS=totals_file)
    proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", "locustfile.py", "--headless", "-u", str(users), "-r", str(users),
                             "-t", f"{seconds}s", "--host", f"turn:127.0.0.1:{port}", "--csv", f"out{users}", "--only-summary", "PacketCall"],
                            cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)
    meter = CpuMeter([proc.pid])
    time.sleep(seconds - 4)
    cpu = meter.lap().get(proc.pid, (None,))[0]
    proc.wait(timeout=seconds + 60)
    with open(os.path.join(d, f"out{users}_stats.csv")) as f:
        stats = {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}
    with open(totals_file) as f:
        t = json.load(f)
    window = (t["last"] - t["first"]) if t["first"] and t["last"] else 0.0
    pk = stats.get(("MEDIA", "packet"), {})
    if t["users"] != users:
        log(f"locust: {t['users']} PacketCall users stopped of {users} started: the figures cover those")
    return {"runner": "Locust local runner, per-packet events", "users": t["users"], "offered_pps": users * 50,
            "sent": t["sent"], "returned": t["returned"], "window_s": window,
            "sent_pps": t["sent"] / window if window else None, "back_pps": t["returned"] / window if window else None,
            "delivered_pct": 100.0 * t["returned"] / t["sent"] if t["sent"] else None,
            "loss_seconds": int(stats.get(("MEDIA", "loss"), {}).get("Request Count", 0) or 0),
            "behind_seconds": int(stats.get(("MEDIA", "behind"), {}).get("Request Count", 0) or 0),
            "locust_packet_events": int(pk.get("Request Count", 0) or 0), "locust_requests_per_s": float(pk.get("Requests/s", 0) or 0),
            "cpu_pct": cpu}


def bench_locust(quick: bool) -> None:
    rows = []
    seconds = 8 if quick else 15
    with coturn("bench-locust") as (server, port), tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "locustfile.py"), "w") as f:
            f.write(LOCUSTFILE)
        for users in ((20, 60) if quick else (20, 60, 120)):
            rows.append(_locust_run(d, port, users, seconds))
            r = run_load(natkit_cfg("audio", port, server, sessions=users, duration=seconds, workers=1))
            rows.append({"runner": "natkit worker (1 process)", "offered_pps": users * 50, "sent_pps": r.media.sent_pps,
                         "back_pps": r.media.returned_pps, "loss_pct": r.media.loss_pct, "cpu_pct": r.cpu.worker_max_pct})
            log(f"locust {users} users: {rows[-2]} | natkit: {rows[-1]}")
    RESULTS["locust"] = rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller and shorter (a smoke run)")
    ap.add_argument("--runs", type=int, default=3, help="ramp runs per profile")
    ap.add_argument("--only", default="alloc,pps,hold,ramp,locust")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args()
    if shutil.which("turnserver") is None or shutil.which("turnutils_uclient") is None:
        sys.exit("needs coturn (turnserver, turnutils_uclient, turnutils_peer)")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # coturn inherits it: 10,000 sessions need ~20,000 files
    RESULTS["machine"] = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for part in args.only.split(","):
        {"alloc": lambda: bench_alloc(args.quick), "pps": lambda: bench_pps(args.quick), "hold": lambda: bench_hold(args.quick),
         "ramp": lambda: bench_ramp(args.quick, args.runs), "locust": lambda: bench_locust(args.quick)}[part]()
    RESULTS["machine"]["loadavg_end"] = os.getloadavg()
    text = json.dumps(RESULTS, indent=1, default=str)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
