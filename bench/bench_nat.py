"""Benchmark ``natkit nat`` against ``turnutils_natdiscovery -m -f`` and Debian's ``stun`` client.

    python bench/bench_nat.py [--runs N] [--markdown]

Starts one native coturn listening on 127.0.0.1 and 127.0.0.2 (two addresses
turn RFC 5780 on), then times each tool as a whole process against it,
interleaved run by run so that every tool sees the same machine state:

* ``natkit nat 127.0.0.1:P --json`` (mapping + filtering, RFC 5780 §4.3/§4.4),
* ``turnutils_natdiscovery -m -f -p P 127.0.0.1`` (coturn's own tool),
* ``stun 127.0.0.1:P`` (Debian ``stun-client``, RFC 3489 tests).

Reports median / min / max wall time, natkit's in-process discovery time,
each tool's verdict, and the ratios. By default loopback only (this host has
no NAT toward 127.0.0.1: the right answer is "no NAT, open"); every run is
bounded by --runs and a per-process timeout.

``--lab`` (root, opt-in) repeats the comparison behind real NATs: it builds a
:class:`natkit.lab.NatLab` (its own namespaces, nothing leaves them) with a
port-restricted and a symmetric NAT and runs every tool inside the hosts'
namespaces against the lab's coturn (RFC 5780 on 203.0.113.10/.11).
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

PROCESS_TIMEOUT = 30.0  # s, per tool run


def natkit_cmd() -> list[str]:
    # the console script itself, not a shim that adds its own start-up time
    venv = os.path.join(os.path.dirname(sys.executable), "natkit")
    if os.path.exists(venv):
        return [venv]
    exe = shutil.which("natkit")
    return [exe] if exe else [sys.executable, "-m", "natkit.cli.app"]


def timed(cmd: list[str], env: dict) -> tuple[float, int | None, str]:
    """(wall seconds, exit code or None on timeout, stdout+stderr) of one child process."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return time.perf_counter() - start, None, out
    return time.perf_counter() - start, proc.returncode, proc.stdout + proc.stderr


def verdict_natkit(out: str) -> str:
    try:
        doc = json.loads(out[: out.rindex("}") + 1])
    except ValueError:
        return "?"
    return f"{doc['verdict']} [{doc['classic']['value']}]"


def verdict_natdiscovery(out: str) -> str:
    found = re.findall(r"^(NAT with [^\n]*?|No NAT[^\n]*?)!?\s*$", out, re.MULTILINE)
    return "; ".join(found) or "?"


def verdict_stun(out: str) -> str:
    m = re.search(r"^Primary: ([^\n]*)$", out, re.MULTILINE)
    return m.group(1).strip() if m else "?"


def tool_table(port: int, host: str) -> dict:
    return {
        "natkit nat": ([*natkit_cmd(), "nat", f"{host}:{port}", "--json"], verdict_natkit),
        "turnutils_natdiscovery -m -f": (["turnutils_natdiscovery", "-m", "-f", "-p", str(port), host], verdict_natdiscovery),
        "stun (Debian stun-client)": (["stun", f"{host}:{port}"], verdict_stun),
    }


def measure(tools: dict, runs: int, env: dict, prefix: list[str] = ()) -> tuple[dict, list[float]]:
    """Run every tool ``runs`` times, interleaved; returns per-tool results and natkit's duration_ms."""
    missing = [name for name, (cmd, _) in tools.items() if not (os.path.exists(cmd[0]) or shutil.which(cmd[0]))]
    for name in missing:
        print(f"skipping {name}: {tools[name][0][0]} not installed", file=sys.stderr)
    tools = {k: v for k, v in tools.items() if k not in missing}
    results = {name: {"ms": [], "codes": set(), "verdicts": set()} for name in tools}
    inner: list[float] = []
    for _ in range(runs):
        for name, (cmd, parse) in tools.items():
            seconds, code, out = timed([*prefix, *cmd], env)
            r = results[name]
            r["ms"].append(seconds * 1000)
            r["codes"].add(code)
            r["verdicts"].add(parse(out))
            if name == "natkit nat":
                try:
                    inner.append(json.loads(out)["duration_ms"])
                except (ValueError, KeyError):
                    pass
    return results, inner


def render(title: str, results: dict, inner: list[float], markdown: bool) -> None:
    base = statistics.median(results["natkit nat"]["ms"]) if results.get("natkit nat", {}).get("ms") else None
    header = ["tool", "median", "min", "max", "vs natkit", "exit codes", "verdict"]
    rows = []
    for name, r in results.items():
        med = statistics.median(r["ms"])
        ratio = f"{med / base:.2f}x" if base else "–"
        codes = ",".join("timeout" if c is None else str(c) for c in sorted(r["codes"], key=lambda c: (c is None, c or 0)))
        rows.append([f"`{name}`", f"{med:.0f} ms", f"{min(r['ms']):.0f} ms", f"{max(r['ms']):.0f} ms", ratio, codes, " / ".join(sorted(r["verdicts"]))])
    print(f"\n{'**' + title + '**' if markdown else title}\n")
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        for row in (header, *rows):
            print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    if inner:
        print(f"\nnatkit nat in-process discovery (duration_ms): median {statistics.median(inner):.1f} ms, max {max(inner):.1f} ms")


def bench_loopback(runs: int, env: dict, markdown: bool) -> None:
    from natkit.coturn.config import CoturnConfig
    from natkit.coturn.server import CoturnServer, free_port, port_in_use

    ips = ("127.0.0.1", "127.0.0.2")
    for _ in range(100):
        port = free_port()
        if all(port_in_use(ip, p) is None for ip in ips for p in (port, port + 1)):
            break
    config = CoturnConfig(listening_ips=ips, listening_port=port, static_auth_secrets=("bench-nat",), realm="natkit.bench")
    with CoturnServer(config, backend="native", name=f"bench-nat-{port}"):
        results, inner = measure(tool_table(port, "127.0.0.1"), runs, env)
    render(f"loopback, no NAT: coturn on 127.0.0.1:{port} + 127.0.0.2:{port + 1}, {runs} interleaved runs per tool",
           results, inner, markdown)


def bench_lab(runs: int, env: dict, markdown: bool) -> None:
    from natkit.lab import LabSpec, NatLab

    with NatLab(LabSpec.peers("port_restricted", "symmetric"), verify=False, agents=False) as lab:
        server, port = lab.server_ips[0], lab.spec.server.port
        for host, label in (("prc1", "port-restricted cone"), ("sym1", "symmetric")):
            prefix = ["ip", "netns", "exec", lab.ns(host)]
            results, inner = measure(tool_table(port, server), runs, env, prefix)
            render(f"natkit.lab, behind a {label} NAT (nftables), lab coturn {server}:{port}, {runs} interleaved runs per tool, "
                   "every command started with ip netns exec", results, inner, markdown)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=9, help="runs per tool (1-50)")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables")
    ap.add_argument("--lab", action="store_true", help="also measure behind real NATs in a natkit.lab (root)")
    args = ap.parse_args()
    runs = max(1, min(args.runs, 50))

    state = tempfile.mkdtemp(prefix="natkit-bench-nat-")
    os.environ["NATKIT_STATE_DIR"] = state
    env = dict(os.environ, NATKIT_QUIET="1")
    try:
        bench_loopback(runs, env, args.markdown)
        if args.lab:
            bench_lab(runs, env, args.markdown)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    print(f"\npython {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
