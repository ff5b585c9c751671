"""Benchmark ``natkit monitor serve``: CPU for N targets at an interval, time to the first full scrape, RSS over a soak.

    .venv/bin/python bench/bench_monitor.py                       # 20 targets, 5 s, 60 s window, no soak
    .venv/bin/python bench/bench_monitor.py --soak 3600           # the 1-hour soak (RSS sampled every 30 s)
    .venv/bin/python bench/bench_monitor.py --compare-aiortc      # + CPU of one aiortc relay-check, for scale
    .venv/bin/python bench/bench_monitor.py --json                # one JSON document

Everything runs on loopback: ``--servers`` native coturns (REST auth, loopback relaying allowed, stopped at the
end) and one monitor process whose targets cycle over them and over udp, tcp and tls. CPU is the monitor
process' own user+system time from /proc over the window (percent of one core, and per probe from its
``natkit_monitor_probes_total``); the first scrape is the time from spawning the monitor to the first /metrics
that has ``natkit_monitor_probe_success`` for every target. Loops are bounded by ``--window`` and ``--soak``.
Figures on a shared machine are provisional: rerun on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


def count(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def write_config(path: Path, servers: list, n: int, interval: float) -> list[str]:
    lines = [f"interval = {interval}", "timeout = 2", 'listen = "127.0.0.1:0"']
    for i in range(len(servers)):
        lines += [f"[credentials.s{i}]", f'secret_env = "BENCH_SECRET_{i}"']
    names = []
    for k in range(n):
        i = k % len(servers)
        s = servers[i]
        transport = ("udp", "tcp", "tls")[(k // len(servers)) % 3]
        uri = {"udp": s.udp, "tcp": s.tcp, "tls": s.tls}[transport]
        names.append(f"t{k:02d}")
        lines += ["[[targets]]", f'name = "t{k:02d}"', f'uri = "{uri}"', f'credentials = "s{i}"', f'cafile = "{s.ca}"',
                  'expect_relayed_ip = "127.0.0.1"']
    path.write_text("\n".join(lines) + "\n")
    return names


def aiortc_relay_check_cpu(server) -> float:
    """CPU seconds of one in-process aiortc relay-check (two peers, relay-only ICE, 5 echoes), for scale."""
    from natkit.credentials import mint
    from natkit.relay import relay_check

    cred = mint(server.secret, "bench", 600)
    relay_check(server.udp, username=cred.username, password=cred.password, messages=5, payload_bytes=0)  # warm imports
    runs = []
    for _ in range(3):
        started = time.process_time()
        relay_check(server.udp, username=cred.username, password=cred.password, messages=5, payload_bytes=0)
        runs.append(time.process_time() - started)
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=20)
    ap.add_argument("--servers", type=int, default=4, help="coturn processes the targets are spread over")
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--window", type=float, default=60.0, help="seconds of CPU measurement after one warm-up interval")
    ap.add_argument("--soak", type=float, default=0.0, help="seconds of RSS sampling after the window (3600: the 1-hour soak)")
    ap.add_argument("--sample", type=float, default=30.0, help="seconds between RSS samples in the soak")
    ap.add_argument("--compare-aiortc", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not (1 <= args.targets <= 500 and 1 <= args.servers <= 20 and args.window <= 7200 and args.soak <= 4 * 3600):
        ap.error("bounds: --targets 1..500, --servers 1..20, --window <= 7200, --soak <= 14400")

    from monitor_servers import Coturn

    work = Path(tempfile.mkdtemp(prefix="natkit-bench-monitor-"))
    servers = [Coturn(work, tls_days=30, name=f"bench{i}") for i in range(args.servers)]
    proc = None
    out: dict = {"targets": args.targets, "servers": args.servers, "interval_s": args.interval, "cpus": os.cpu_count()}
    try:
        for s in servers:
            s.start()
        names = write_config(work / "monitor.toml", servers, args.targets, args.interval)
        env = {**os.environ, **{f"BENCH_SECRET_{i}": s.secret for i, s in enumerate(servers)}}
        spawned = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "natkit.cli.app", "monitor", "serve", "--config", str(work / "monitor.toml"), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
        lines = [proc.stdout.readline()]
        while lines[-1] and lines[-1] != "}\n":
            lines.append(proc.stdout.readline())
        url = json.loads("".join(lines))["url"]
        listening = time.monotonic() - spawned
        first_full = None
        while time.monotonic() - spawned < 10:
            text = scrape(url)
            if text is not None and all(f'target="{n}"' in text for n in names) and "natkit_monitor_probe_success" in text:
                first_full = time.monotonic() - spawned
                break
            time.sleep(0.01)
        out.update(listening_s=round(listening, 3), first_full_scrape_s=None if first_full is None else round(first_full, 3))
        time.sleep(args.interval)  # warm-up: every target probed at least twice
        text0, cpu0, t0 = scrape(url) or "", cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.window)
        text1, cpu1, t1 = scrape(url) or "", cpu_seconds(proc.pid), time.monotonic()
        probes = count(text1, "natkit_monitor_probes_total") - count(text0, "natkit_monitor_probes_total")
        failures = count(text1, "natkit_monitor_probes_total", result="failure") - count(text0, "natkit_monitor_probes_total", result="failure")
        durations = [float(m) for m in re.findall(r'^natkit_monitor_probe_duration_seconds\{[^}]*\} (\S+)$', text1, re.MULTILINE)]
        used = cpu1 - cpu0
        out.update(window_s=round(t1 - t0, 1), cpu_percent_of_one_core=round(100 * used / (t1 - t0), 2), probes=int(probes),
                   failed_probes=int(failures), cpu_ms_per_probe=round(1000 * used / probes, 2) if probes else None,
                   probe_duration_ms_max=round(1000 * max(durations), 1) if durations else None,
                   probe_duration_ms_median=round(1000 * statistics.median(durations), 1) if durations else None,
                   rss_mib_after_window=round(rss_mib(proc.pid), 1))
        if args.soak:
            samples = []
            started = time.monotonic()
            while time.monotonic() - started < args.soak:
                samples.append((round(time.monotonic() - started), round(rss_mib(proc.pid), 2)))
                time.sleep(min(args.sample, max(0.0, args.soak - (time.monotonic() - started))))
            samples.append((round(time.monotonic() - started), round(rss_mib(proc.pid), 2)))
            rss = [r for _, r in samples]
            half = len(rss) // 2
            out.update(soak_s=args.soak, rss_mib_first=rss[0], rss_mib_max=max(rss), rss_mib_last=rss[-1],
                       rss_mib_growth_second_half=round(rss[-1] - rss[half], 2), rss_samples=samples,
                       soak_failed_probes=int(count(scrape(url) or "", "natkit_monitor_probes_total", result="failure")))
        if args.compare_aiortc:
            out["aiortc_relay_check_cpu_ms"] = round(1000 * aiortc_relay_check_cpu(servers[0]), 1)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for s in servers:
            s.stop()
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            if k != "rss_samples":
                print(f"{k:32} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
