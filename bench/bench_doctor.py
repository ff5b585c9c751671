"""The doctor's verdict matrix: every fault of natkit.lab.faults x N runs, with timings,
side by side with coturn's own turnutils_uclient on the same fault.

    sudo .venv/bin/python bench/bench_doctor.py [--runs 3] [--faults a,b] [--pion PATH] [--no-uclient] [--json FILE]

(PATH: the pionturn binary tests/servers builds, e.g. .pytest_cache/d/natkit-pionturn/pionturn)

For each fault the lab is built once (namespaces, nftables, coturn behind the
1:1 NAT) and ``natkit doctor --json`` runs ``--runs`` times inside the
client's namespace. Printed: a Markdown table (fault, expected cause,
verdicts, correct, doctor time median/max, process wall time median) and the
totals; the targets are >= 95 % correct, every verdict <= 10 s, healthy
<= 2 s. With ``--pion PATH`` (a built tests/servers/pionturn) the faults pion
can express run again against pion/turn. ``turnutils_uclient -y`` (two
clients relaying to each other, 2 messages) runs once per fault for
comparison: its time and what it reports.

Needs root. Figures depend on the machine: rerun on a quiet one before quoting them.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natkit.lab import faults as F


def uclient(lab: F.FaultLab) -> tuple[float, str]:
    """coturn's turnutils_uclient in client-to-client mode on the fault: (seconds, its verdict line)."""
    from natkit.credentials import mint

    if lab.fault.credential in ("user", "expired"):  # the very credential the doctor gets
        username, password = lab.doctor_credential()
    else:
        cred = mint(lab.secret if lab.fault.credential != "wrong-secret" else "not-" + lab.secret, "uclient", 3600)
        username, password = cred.username, cred.password
    argv = ["timeout", "20", "turnutils_uclient", "-y", "-n", "2", "-m", "1", "-u", username, "-w", password,
            "-r", F.REALM, F.PUBLIC_IP]
    t = time.monotonic()
    r = lab.exec("client", argv, timeout=30)
    seconds = time.monotonic() - t
    text = r.stdout + r.stderr
    lost = re.search(r"Total lost packets (\d+) \(([\d.]+)%\)", text)
    if r.returncode == 124:
        return seconds, "gave up after 20 s"
    if lost:
        return seconds, f"lost {lost.group(2).rstrip('0').rstrip('.')} %"
    err = re.findall(r"(?i)(error[^\n]*|cannot[^\n]*|\b4\d\d\b[^\n]*)", text)
    return seconds, (err[-1].strip()[:60] if err else f"exit {r.returncode}")


def run_fault(fault: F.FaultSpec, runs: int, *, with_uclient: bool, pion: Path | None = None) -> dict:
    import contextlib

    with F.FaultLab(fault, server="none" if pion else "coturn") as lab, contextlib.ExitStack() as stack:
        if pion is not None:
            from tests.servers import PionTurn

            tls = (lab.tls["cert"], lab.tls["key"]) if lab.tls else None
            stack.enter_context(PionTurn(pion, F.SERVER_IP, F.PORT, ns=lab.ns("server"), secret=lab.secret,
                                         args=F.pion_args(fault), tcp=fault.tcp, tls=tls, tls_port=F.TLS_PORT, workdir=lab.dir))
            lab.start_holders()
        verdicts, doctor_s, wall_s = [], [], []
        for _ in range(runs):
            report, wall, _ = lab.run_doctor()
            verdicts.append(report.get("verdict"))
            doctor_s.append(report.get("duration_ms", 0.0) / 1000.0)
            wall_s.append(wall)
        uc = uclient(lab) if with_uclient and pion is None else None
    return {"fault": fault.id + (" (pion)" if pion else ""), "expected": fault.cause, "verdicts": verdicts,
            "correct": sum(v == fault.cause for v in verdicts), "runs": runs,
            "doctor_median_s": statistics.median(doctor_s), "doctor_max_s": max(doctor_s),
            "wall_median_s": statistics.median(wall_s), "uclient": uc}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--faults", default="", help="comma-separated fault ids (default: all)")
    ap.add_argument("--no-uclient", action="store_true", help="skip the turnutils_uclient comparison")
    ap.add_argument("--json", default=None, help="also write the results as JSON to this file")
    ap.add_argument("--pion", type=Path, default=None, help="a built tests/servers pionturn: run pion's faults on it too")
    args = ap.parse_args()
    ids = [f for f in args.faults.split(",") if f] or list(F.FAULTS)
    plan = [(fid, None) for fid in ids if "coturn" in F.FAULTS[fid].servers]
    if args.pion:
        plan += [(fid, args.pion) for fid in ids if "pion" in F.FAULTS[fid].servers]
    rows = []
    for fid, pion in plan:
        row = run_fault(F.FAULTS[fid], args.runs, with_uclient=not args.no_uclient, pion=pion)
        rows.append(row)
        print(f"… {row['fault']}: {row['correct']}/{row['runs']} {row['verdicts'][0]} {row['doctor_max_s']:.2f} s", file=sys.stderr,
              flush=True)
    print("| fault | expected cause | verdicts | correct | doctor median / max | wall median | turnutils_uclient -y |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        verdicts = ", ".join(sorted(set(r["verdicts"])))
        uc = f"{r['uclient'][0]:.1f} s, {r['uclient'][1]}" if r["uclient"] else "–"
        print(f"| {r['fault']} | `{r['expected']}` | {verdicts} | {r['correct']}/{r['runs']} | "
              f"{r['doctor_median_s']:.2f} / {r['doctor_max_s']:.2f} s | {r['wall_median_s']:.2f} s | {uc} |")
    total = sum(r["runs"] for r in rows)
    correct = sum(r["correct"] for r in rows)
    worst = max(r["doctor_max_s"] for r in rows)
    healthy = [r["doctor_max_s"] for r in rows if r["expected"] == "healthy"]
    print(f"\n{correct}/{total} verdicts correct ({100.0 * correct / total:.1f} %); slowest verdict {worst:.2f} s; "
          f"healthy at most {max(healthy) if healthy else float('nan'):.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if correct == total and worst <= 10.0 and all(h <= 2.0 for h in healthy) else 1


if __name__ == "__main__":
    sys.exit(main())
