"""Benchmark natkit's foundation commands against coturn's own tools, same server, same run.

    python bench/bench_foundation.py [--runs N] [--markdown]

Starts one native coturn on 127.0.0.1 (free port, loopback relaying allowed),
then times, as whole processes:

* ``natkit probe`` vs ``turnutils_stunclient`` (one Binding);
* ``natkit relay-check`` vs ``turnutils_uclient -y`` (two allocations relaying
  to each other, 20 messages);
* ``natkit check`` (embedded server) for peak RSS;

and reports medians, peak RSS (ru_maxrss of each child, via wait4) and the
ratios. Loopback only; every loop is bounded by --runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def natkit_cmd() -> list[str]:
    exe = shutil.which("natkit")
    # the console script itself, not a shim that adds its own start-up time
    venv = os.path.join(os.path.dirname(sys.executable), "natkit")
    if os.path.exists(venv):
        return [venv]
    return [exe] if exe else [sys.executable, "-m", "natkit.cli.app"]


GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def timed(cmd: list[str], env=None) -> tuple[float, int, int, str]:
    """(seconds, peak RSS KiB, exit code, stdout) of one child process.

    Peak RSS comes from GNU time (apt-get install time) when present: a child
    forked straight from this Python process would report this process's
    size as its own peak.
    """
    rss_file = None
    if GNU_TIME:
        fd, rss_file = tempfile.mkstemp()
        os.close(fd)
        cmd = [GNU_TIME, "-q", "-f", "%M", "-o", rss_file, *cmd]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    out = proc.stdout.read()
    _, status, rusage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    rss = rusage.ru_maxrss
    if rss_file:
        try:
            rss = int(open(rss_file).read().split()[-1])
        except (ValueError, IndexError):
            pass
        os.unlink(rss_file)
    return elapsed, rss, code, out.decode(errors="replace")


def series(cmd: list[str], runs: int, env=None) -> dict:
    times, rss, codes, last = [], [], [], ""
    for _ in range(runs):
        t, r, c, out = timed(cmd, env)
        times.append(t * 1000)
        rss.append(r / 1024)
        codes.append(c)
        last = out
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_rss_mb": max(rss), "codes": sorted(set(codes)), "last": last}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    runs = max(1, min(args.runs, 100))

    from natkit.coturn.config import CoturnConfig
    from natkit.coturn.server import CoturnServer, free_port
    from natkit.credentials import mint, new_secret

    state = tempfile.mkdtemp(prefix="natkit-bench-")
    os.environ["NATKIT_STATE_DIR"] = state
    env = dict(os.environ, NATKIT_QUIET="1")
    secret = new_secret()
    port = free_port()
    config = CoturnConfig(listening_port=port, static_auth_secrets=(secret,), allow_loopback_peers=True,
                          allowed_peer_ranges=("127.0.0.1",), realm="natkit.bench")
    nk = natkit_cmd()
    rows = []
    with CoturnServer(config, backend="native", name="bench"):
        probe = series([*nk, "probe", f"127.0.0.1:{port}", "--json"], runs, env)
        stunclient = series(["turnutils_stunclient", "-p", str(port), "127.0.0.1"], runs, env)
        rows.append(("STUN Binding, whole process", "natkit probe", probe, "turnutils_stunclient", stunclient))

        cred = mint(secret, "bench", 3600)
        relay_runs = max(1, runs // 3)
        relay = series([*nk, "relay-check", f"turn:127.0.0.1:{port}", "--user", cred.username, "--password", cred.password,
                        "--messages", "20", "--payload", "0", "--json"], relay_runs, env)
        uclient = series(["turnutils_uclient", "-y", "-c", "-n", "20", "-l", "64", "-m", "1", "-u", "bench", "-W", secret,
                          "-p", str(port), "127.0.0.1"], relay_runs, env)
        rows.append(("relay, 20 messages, whole process", "natkit relay-check", relay, "turnutils_uclient -y", uclient))
        relay_doc = json.loads(relay["last"]) if relay["codes"] == [0] else {}
        m = re.search(r"Average round trip delay ([0-9.]+) ms", uclient["last"])
        uclient_rtt = float(m.group(1)) if m else None
    check = series([*nk, "check", "--backend", "native", "--json", "--payload", "1000000"], max(1, runs // 5), env)
    shutil.rmtree(state, ignore_errors=True)

    lines = ["| operation | natkit | median | peak RSS | reference | median | peak RSS | natkit / reference |",
             "|---|---|---|---|---|---|---|---|"]
    for op, na, a, nb, b in rows:
        lines.append(f"| {op} | `{na}` | {a['median_ms']:.0f} ms | {a['max_rss_mb']:.0f} MB | `{nb}` | {b['median_ms']:.0f} ms | "
                     f"{b['max_rss_mb']:.0f} MB | {a['median_ms'] / b['median_ms']:.2f}x |")
    lines.append(f"| natkit check (embedded coturn, UDP+TCP relay, 1 MB each) | `natkit check` | {check['median_ms']:.0f} ms | "
                 f"{check['max_rss_mb']:.0f} MB | – | – | – | – |")
    lines.append("")
    if relay_doc:
        pre, path = relay_doc["preflight"], relay_doc["path"]
        lines.append(f"relay-check in process: allocation {pre['allocation_ms']:.1f} ms, gathering {path['gathering_ms']:.1f} ms, "
                     f"time to connected {path['connected_ms']:.1f} ms, echo RTT p50 {path['rtt_ms_p50']:.2f} ms / "
                     f"p95 {path['rtt_ms_p95']:.2f} ms; turnutils_uclient average RTT {uclient_rtt} ms.")
    lines.append(f"exit codes: probe {probe['codes']}, stunclient {stunclient['codes']}, relay-check {relay['codes']}, "
                 f"uclient {uclient['codes']}, check {check['codes']}; runs: {runs} (relay {relay_runs}, check {max(1, runs // 5)})")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
