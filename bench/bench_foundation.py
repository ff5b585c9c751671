"""Benchmark natkit's foundation commands against coturn's own tools, same server, same run.

    python bench/bench_foundation.py [--runs N] [--markdown]

Starts one native coturn on 127.0.0.1 (free port, loopback relaying allowed),
then times, as whole processes:

* ``natkit probe`` vs ``turnutils_stunclient`` (one Binding);
* ``natkit relay-check`` vs ``turnutils_uclient -y`` (two allocations relaying
  to each other, 20 messages);
* ``natkit check`` (embedded server) for peak RSS;
* start-up: ``natkit --help``, ``natkit probe`` against the same server and
  the floors under them (``python -c pass``, ``python -c "import typer"``),
  plus the ten slowest imports of ``natkit probe`` (``python -X importtime``).

and reports medians, peak RSS (ru_maxrss of each child, via wait4) and the
ratios. ``--startup`` runs only the start-up part (seconds, not minutes).
Loopback only; every loop is bounded by --runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
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


def slowest_imports(cmd: list[str], env, top: int = 10) -> list[tuple[str, float]]:
    """The ``top`` imports with the largest self time (ms) in one run of ``python -X importtime`` + cmd."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *cmd], capture_output=True, text=True, env=env, timeout=60)
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m:
            rows.append((m.group(4), int(m.group(1)) / 1000.0))
    return sorted(rows, key=lambda r: -r[1])[:top]


def interleaved(cmds: dict[str, list[str]], runs: int, env) -> dict[str, dict]:
    """:func:`series` for several commands, one run of each per round, so load drift hits them alike."""
    times: dict[str, list[float]] = {k: [] for k in cmds}
    rss: dict[str, list[float]] = {k: [] for k in cmds}
    codes: dict[str, set[int]] = {k: set() for k in cmds}
    for _ in range(runs):
        for key, cmd in cmds.items():
            t, r, c, _out = timed(cmd, env)
            times[key].append(t * 1000)
            rss[key].append(r / 1024)
            codes[key].add(c)
    return {k: {"median_ms": statistics.median(times[k]), "min_ms": min(times[k]), "max_rss_mb": max(rss[k]),
                "codes": sorted(codes[k])} for k in cmds}


def startup(nk: list[str], port: int, runs: int, env, baseline: list[str] | None = None) -> list[str]:
    """Start-up lines: medians of whole processes, side by side with turnutils_stunclient (and ``baseline``, another natkit)."""
    cmds = {
        "`python -c pass`": [sys.executable, "-c", "pass"],
        '`python -c "import typer"`': [sys.executable, "-c", "import typer"],
        "`natkit --help`": [*nk, "--help"],
        "`natkit probe 127.0.0.1:PORT`": [*nk, "probe", f"127.0.0.1:{port}"],
        "`turnutils_stunclient -p PORT 127.0.0.1`": ["turnutils_stunclient", "-p", str(port), "127.0.0.1"],
    }
    if baseline:
        cmds["baseline `natkit --help`"] = [*baseline, "--help"]
        cmds["baseline `natkit probe 127.0.0.1:PORT`"] = [*baseline, "probe", f"127.0.0.1:{port}"]
    r = interleaved(cmds, runs, env)
    lines = ["| start-up, whole process | median | min | peak RSS | exit codes |", "|---|---|---|---|---|"]
    for label, v in r.items():
        lines.append(f"| {label} | {v['median_ms']:.0f} ms | {v['min_ms']:.0f} ms | {v['max_rss_mb']:.0f} MB | {v['codes']} |")
    probe, stun, floor = r["`natkit probe 127.0.0.1:PORT`"], r["`turnutils_stunclient -p PORT 127.0.0.1`"], r["`python -c pass`"]
    lines.append("")
    lines.append(f"natkit probe / turnutils_stunclient: {probe['median_ms'] / stun['median_ms']:.1f}x; natkit probe above the "
                 f"bare interpreter: {probe['median_ms'] - floor['median_ms']:.0f} ms; runs: {runs}, interleaved")
    slow = slowest_imports(["-m", "natkit.cli.app", "probe", f"127.0.0.1:{port}"], env)
    lines.append("slowest imports of natkit probe (self time, one run): " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in slow))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--startup", action="store_true", help="only the start-up measurements")
    ap.add_argument("--baseline", help="another natkit command line to time side by side (e.g. an older checkout's venv/bin/natkit)")
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
        start_lines = startup(nk, port, max(runs, 21), env, shlex.split(args.baseline) if args.baseline else None)
        if args.startup:
            print("\n".join(start_lines))
            shutil.rmtree(state, ignore_errors=True)
            return 0
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
    lines += ["", *start_lines]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
