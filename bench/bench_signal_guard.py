"""The signaling server under connection abuse, on 127.0.0.1 (bounded: 250 connections, ~20 s).

    .venv/bin/python bench/bench_signal_guard.py [--connections 250] [--nofile 100]

1. ``--connections`` half-sent HTTP requests against ``natkit signal serve`` (default
   limits): when does the server close them (``--request-timeout``, 10 s by default)?
2. The same against a server started with ``ulimit -n NOFILE``: how many stderr lines
   and how much CPU does the server spend in 5 s (before: a traceback per accept() at
   100 % CPU)?

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natkit.signaling.process import SignalProcess

HALF = b"GET / HTTP/1.1\r\nHost: bench\r\n"


def _port(proc: SignalProcess) -> int:
    return int(proc.ws_url.rsplit(":", 1)[1].split("/")[0])


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def half_sent(n: int, limit: float = 20.0) -> dict:
    with SignalProcess() as proc:
        socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", _port(proc)))
            s.sendall(HALF)
            socks.append(s)
        t0 = time.monotonic()
        pending, closed = set(socks), []
        while pending and time.monotonic() - t0 < limit:
            ready, _, _ = select.select(list(pending), [], [], 0.5)
            for s in ready:
                data = s.recv(4096)
                if not data or b" 408 " in data:
                    closed.append(time.monotonic() - t0)
                    pending.discard(s)
                    s.close()
        for s in pending:
            s.close()
    return {"connections": n, "closed": len(closed), "still_open": len(pending),
            "first_closed_s": round(min(closed), 2) if closed else None, "last_closed_s": round(max(closed), 2) if closed else None}


def low_nofile(n: int, nofile: int, window: float = 5.0) -> dict:
    def popen(argv, **kw):
        return subprocess.Popen(argv, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)), **kw)  # noqa: PLW1509

    with SignalProcess(popen=popen) as proc:
        before = len(proc.stderr_lines)
        socks = []
        for _ in range(n):
            try:
                s = socket.create_connection(("127.0.0.1", _port(proc)), timeout=2)
                s.sendall(HALF)
                socks.append(s)
            except OSError:
                break
        cpu0 = _cpu(proc.proc.pid)
        time.sleep(window)
        cpu = _cpu(proc.proc.pid) - cpu0
        lines = len(proc.stderr_lines) - before
        for s in socks:
            s.close()
    return {"nofile": nofile, "connections": len(socks), "stderr_lines": lines, "server_cpu_s": round(cpu, 2), "window_s": window}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=250)
    ap.add_argument("--nofile", type=int, default=100)
    a = ap.parse_args()
    n = max(1, min(a.connections, 1000))
    print(json.dumps({"half_sent": half_sent(n), "low_nofile": low_nofile(n, max(40, a.nofile))}, indent=2))


if __name__ == "__main__":
    main()
