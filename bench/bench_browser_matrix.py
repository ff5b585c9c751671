"""Benchmark real browsers behind the lab's NATs (root; Debian's chromium, firefox-esr optional).

    python bench/bench_browser_matrix.py [--runs 3] [--starts 5] [--compare] [--firefox] [--json FILE] [--markdown]

1. **Browser start** inside a host namespace: ``--starts`` times, one
   Chromium on its own (launcher -> ``ip netns exec`` -> chromium, Playwright
   connected, page loaded from the signaling server in the server namespace).
2. **The Chromium matrix** (15 cells x STUN only / STUN+TURN), ``--runs``
   times in a row, each on a fresh lab (build, NAT verification, browsers,
   teardown all counted): cells as expected, wall time, matrix time.
3. ``--compare``: stock aioice, natkit's aiortc agent, Chromium and Chromium x
   aiortc on one lab, cell by cell (``--firefox`` adds Firefox ESR).

Every run is bounded (per-attempt deadline, 300 s per matrix); traffic stays
inside the lab's namespaces, which have no route out. Figures measured while
other work loads the machine are provisional: rerun on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def bench_starts(n: int) -> dict:
    from natkit.lab import LabSpec, NatLab
    from natkit.lab.browser import BrowserSession

    starts, launches = [], []
    with NatLab(LabSpec.peers("symmetric", *["port_restricted"] * n), verify=False) as lab, BrowserSession(lab) as s:
        for h in [h for h in lab.hosts if h.startswith("prc")][:n]:
            a = s.agent(h)  # one at a time: nothing else starting
            starts.append(a.start_ms)
            launches.append(a.launch_ms)
        version = a.version
    return {"version": version, "start_ms": starts, "launch_ms": launches, "median_start_ms": statistics.median(starts),
            "max_start_ms": max(starts)}


def bench_matrix(runs: int, deadline: float, concurrency: int) -> list[dict]:
    from natkit.lab.matrix import run_matrix

    out = []
    for i in range(runs):
        t = time.monotonic()
        r = run_matrix(agent="chromium", deadline=deadline, concurrency=concurrency)
        wall = time.monotonic() - t
        bad = [f"{c.a} x {c.b} ({c.mode}): {c.outcome}" for c in r.cells if not c.match]
        out.append({"run": i + 1, "ok": r.ok, "as_expected": len(r.cells) - r.mismatches, "cells": len(r.cells), "wall_s": wall,
                    "matrix_s": r.timings["matrix_ms"] / 1000, "browsers_s": r.timings.get("browsers_ms", 0) / 1000,
                    "max_browser_start_ms": max(v for v in r.agent_info["start_ms"].values() if v), "mismatches": bad})
        print(f"run {i + 1}: {out[-1]['as_expected']}/{out[-1]['cells']} as expected, {wall:.1f} s "
              f"(matrix {out[-1]['matrix_s']:.1f} s, 10 browsers {out[-1]['browsers_s']:.1f} s)" + (f"; {bad}" if bad else ""), file=sys.stderr)
    return out


def bench_compare(agents, deadline: float, concurrency: int):
    from natkit.lab.matrix import render_comparison, run_comparison

    cmp = run_comparison(agents=agents, deadline=deadline, concurrency=concurrency)
    return cmp, render_comparison(cmp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--deadline", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("--firefox", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    if not 1 <= a.runs <= 10 or not 1 <= a.starts <= 20:
        ap.error("--runs 1..10, --starts 1..20")
    doc: dict = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}}
    doc["starts"] = bench_starts(a.starts)
    print(f"browser start in a namespace: median {doc['starts']['median_start_ms']:.0f} ms, max {doc['starts']['max_start_ms']:.0f} ms",
          file=sys.stderr)
    doc["matrix"] = bench_matrix(a.runs, a.deadline, a.concurrency)
    text = None
    if a.compare or a.firefox:
        agents = ["stock", "aiortc", "chromium", "mixed"] + (["firefox"] if a.firefox else [])
        cmp, text = bench_compare(agents, a.deadline, a.concurrency)
        doc["compare"] = {ag: {f"{c.a} x {c.b} ({c.mode})": c.outcome for c in r.cells} for ag, r in cmp.reports.items()}
        doc["compare_differences"] = list(cmp.differences)
        print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)
    if a.markdown:
        m = doc["matrix"]
        print("| run | cells as expected | wall | matrix | 10 browsers started |\n|---|---|---|---|---|")
        for r in m:
            print(f"| {r['run']} | {r['as_expected']}/{r['cells']} | {r['wall_s']:.1f} s | {r['matrix_s']:.1f} s | {r['browsers_s']:.1f} s |")
        s = doc["starts"]
        print(f"\nChromium {s['version']} start in a host namespace (launch to page loaded), {len(s['start_ms'])} starts: "
              f"median {s['median_start_ms']:.0f} ms, max {s['max_start_ms']:.0f} ms; load average {doc['machine']['load'][0]:.1f}")
    return 0 if all(r["ok"] for r in doc["matrix"]) else 1


if __name__ == "__main__":
    sys.exit(main())
