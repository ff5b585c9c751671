"""``natkit probe`` start-up, this checkout against another git revision, interleaved.

    .venv/bin/python bench/bench_probe_startup.py [--base REV] [--runs 20]

Exports ``REV``'s ``natkit/`` into a temporary directory (``git archive``), compiles both trees'
bytecode, starts stund (Debian's stun-server) on 127.0.0.1 as the STUN server, then runs
``natkit probe 127.0.0.1:PORT`` as a whole process ``--runs`` times per tree, alternating the two
trees so that machine load hits both alike, and prints medians and minimums. It also prints the
import cost of the STUN stack of each tree (best of 25 fresh interpreters, bytecode cached).
Loopback only; bounded by ``--runs``. Figures from a loaded machine are provisional.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LAUNCH = """import sys
root = sys.argv.pop(1)
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, root)
sys.argv[0] = "natkit"
from natkit.cli.app import main
main()
"""


def _free_udp_pair() -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65535:
            return port
    raise RuntimeError("no free UDP port")


def _import_cost(root: str, module: str, runs: int = 25) -> float:
    code = (f"import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            f"sys.path.insert(0, {root!r}); import asyncio, dataclasses, ipaddress, socket, struct, enum, typing; "
            f"import natkit.errors, natkit.model; import time; t = time.perf_counter(); import {module}; "
            f"print((time.perf_counter() - t) * 1000)")
    return min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/").stdout)
               for _ in range(runs))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="main", help="git revision to compare with (default: main)")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    if not 1 <= args.runs <= 200:
        ap.error("--runs must be 1..200")
    stund = shutil.which("stund") or "/usr/sbin/stund"
    if not os.access(stund, os.X_OK):
        sys.exit("stund (Debian stun-server) is needed")
    tmp = tempfile.mkdtemp(prefix="natkit-startup-")
    base = os.path.join(tmp, "base")
    os.makedirs(base)
    archive = subprocess.run(["git", "-C", ROOT, "archive", args.base, "natkit"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", base], input=archive, check=True)
    launcher = os.path.join(tmp, "launch.py")
    with open(launcher, "w") as f:
        f.write(LAUNCH)
    for tree in (base, ROOT):
        subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(tree, "natkit")], check=True, capture_output=True)
    port = _free_udp_pair()
    server = subprocess.Popen([stund, "-h", "127.0.0.1", "-a", "127.0.0.2", "-p", str(port), "-o", str(port + 1)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        trees = {f"{args.base} ({base})": base, f"this checkout ({ROOT})": ROOT}
        times: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.runs):
            for name, tree in trees.items():
                t = time.perf_counter()
                subprocess.run([sys.executable, launcher, tree, "probe", f"127.0.0.1:{port}", "--timeout", "2"],
                               stdout=subprocess.DEVNULL, check=True, cwd=tmp)
                times[name].append((time.perf_counter() - t) * 1000)
        for name, ts in times.items():
            print(f"natkit probe  {name:60s} median {statistics.median(ts):6.1f} ms  min {min(ts):6.1f} ms  (n={len(ts)})")
    finally:
        server.kill()
        server.wait()
    for name, tree, module in ((args.base, base, "natkit.stun"), ("this checkout", ROOT, "natkit.stun.aio")):
        try:
            print(f"import {module:18s} {name:16s} {_import_cost(tree, module):5.2f} ms (best of 25)")
        except subprocess.CalledProcessError:
            print(f"import {module:18s} {name:16s} n/a")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
