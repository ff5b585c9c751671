"""natkit's Locust users, distributed: a headless master and two workers on this machine against a loopback coturn.

Bounded: 6 users for 6 s; every allocation released (coturn's log has a usage line for each session).
"""

from __future__ import annotations

import csv
import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from natkit.load.coturn_log import sessions as usage_sessions

# Never import locust in the test process: importing it gevent-monkey-patches the whole interpreter
# (sockets, threads, asyncio's selectors) for every test that runs after it. Locust runs in subprocesses.
if importlib.util.find_spec("locust") is None:
    pytest.skip("Locust is natkit's [load] extra", allow_module_level=True)

from test_load_coturn import SECRET, _start  # noqa: E402  (the same -v coturn)

LOCUSTFILE = """\
from natkit.load.locust import TurnAllocationUser, TurnCallUser  # noqa: F401
"""


@pytest.fixture(scope="module")
def coturn(tmp_path_factory):
    server = _start(tmp_path_factory, "locust")
    try:
        yield server
    finally:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("NATKIT_STATE_DIR", server.state)
            server.server.stop()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(path: Path) -> dict[tuple[str, str], dict]:
    with path.open() as f:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}


def test_master_and_two_workers_drive_turn_users(coturn, tmp_path):
    (tmp_path / "locustfile.py").write_text(LOCUSTFILE)
    locust = [sys.executable, "-m", "locust", "-f", "locustfile.py"]
    env = dict(os.environ, NATKIT_TURN_SECRET=SECRET, PYTHONUNBUFFERED="1")
    port = _port()
    host = f"turn:127.0.0.1:{coturn.port}"
    master = subprocess.Popen([*locust, "--headless", "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                               "--expect-workers", "2", "--expect-workers-max-wait", "30", "-u", "6", "-r", "6", "-t", "6s",
                               "--stop-timeout", "5", "--host", host, "--csv", "out", "--only-summary"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers = [subprocess.Popen([*locust, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        out, _ = master.communicate(timeout=90)
        for w in workers:
            w.wait(timeout=30)
    finally:
        for p in (master, *workers):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert master.returncode == 0, out
    assert "2 workers connected" in out or "workers connected" in out.lower(), out
    rows = _rows(tmp_path / "out_stats.csv")
    alloc = rows[("TURN", "Allocate")]
    assert int(alloc["Request Count"]) >= 10 and int(alloc["Failure Count"]) == 0
    assert int(rows[("TURN", "Refresh")]["Failure Count"]) == 0
    rtt = rows[("MEDIA", "rtt")]
    assert int(rtt["Request Count"]) >= 4 and ("MEDIA", "loss") not in rows  # calls without loss on loopback
    # every allocation ended at once (Refresh LIFETIME 0), so coturn logged its usage line within seconds
    end = time.monotonic() + 8
    while True:
        lines = coturn.logs()
        allocated = sum(1 for line in lines if "incoming packet ALLOCATE processed, success" in line)
        ended = sum(1 for u in usage_sessions(lines).values() if u.client_rp is not None)
        if ended >= allocated or time.monotonic() > end:
            break
        time.sleep(0.3)
    assert allocated >= int(alloc["Request Count"]) and ended >= allocated


def test_the_test_process_never_imports_locust():
    """A collected Locust import would monkey-patch every later test with gevent (this broke the browser tests once)."""
    import sys

    assert "locust" not in sys.modules and "gevent.monkey" not in sys.modules
