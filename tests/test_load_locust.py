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


CALL_SCRIPT = """\
import json
import time

from locust.env import Environment

from natkit.load.locust import TurnCallUser


class Caller:
    def __init__(self):
        self.sent_at = []
        self.stalled = False

    def send_channel(self, channel, payload):
        self.sent_at.append(time.monotonic())

    def recv(self, timeout):
        if not self.stalled and len(self.sent_at) >= 10:  # after 10 packets the greenlet does not run for a second
            self.stalled = True
            time.sleep(1.0)
            return None
        time.sleep(timeout)
        return None  # and nothing ever comes back


class Call(TurnCallUser):
    seconds_per_task = 1.5
    drain = 0.05


env = Environment(user_classes=[Call])
events = []
env.events.request.add_listener(lambda request_type, name, response_length, exception, **kw: events.append((name, response_length)))
user = Call(env)
user.caller, user.to_callee, user.index, user.seq = Caller(), 0x4000, 1, 0
user.talk()
sent = user.caller.sent_at
burst = max(sum(1 for t in sent if a <= t < a + 0.005) for a in sent)
print(json.dumps({"sent": len(sent), "burst": burst, "events": events}))
"""


def test_a_stalled_call_skips_instead_of_bursting_and_judges_its_last_second(tmp_path):
    """A caller that did not run for 1 s sends no burst of the 50 overdue packets (it skips what is more than 250 ms late,
    reported as MEDIA behind), and the task's last half second is judged for loss too."""
    (tmp_path / "call.py").write_text(CALL_SCRIPT)
    done = subprocess.run([sys.executable, "call.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    behind = [n for name, n in out["events"] if name == "behind"]
    losses = [n for name, n in out["events"] if name == "loss"]
    assert out["burst"] <= 14, out  # at most the 250 ms it may catch up (12.5 packets), not the whole second
    assert len(behind) == 1 and 35 <= behind[0] <= 40, out  # (1 s - 250 ms) / 20 ms skipped, in the second it happened
    assert len(losses) == 2 and sum(losses) == out["sent"], out  # two seconds judged: [0, 1) and the last [1, 1.5)
