"""natkit turn load against a real coturn (started with -v): counts agree with coturn's own usage lines,
no loss at low rates on loopback, errors counted by code, 486 at the quota, everything released.

coturn relays from 127.0.0.2 while natkit's clients and echo bind 127.0.0.1, so the generator's
ephemeral ports never collide with coturn's relay ports (docs/load.md explains why that matters).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from natkit.coturn.config import CoturnConfig
from natkit.coturn.server import CoturnServer, free_port
from natkit.credentials import mint
from natkit.load import LoadConfig, run_load
from natkit.load.coturn_log import sessions as usage_sessions
from natkit.model import TransportAddress
from natkit.pytest_plugin import require_coturn

SECRET = "load-secret"


class Server:
    def __init__(self, server: CoturnServer, port: int, tls_port: int | None, state: str, ca: str | None) -> None:
        self.server, self.port, self.tls_port, self.state, self.ca = server, port, tls_port, state, ca
        self.pid = server.info.pid
        self.name = server.name

    def logs(self) -> list[str]:
        return self.server.logs()

    def config(self, profile: str, **kw) -> LoadConfig:
        cred = mint(SECRET, kw.pop("user", "load"), 600)
        defaults = {"username": cred.username, "password": cred.password, "echo_host": "127.0.0.1", "local_host": "127.0.0.1",
                        "server_pid": self.pid, "timeout": 2.0, "max_time": 60.0, "step_duration": 1.0}
        defaults.update(kw)
        return LoadConfig(profile, TransportAddress("127.0.0.1", self.port), **defaults)

    def run(self, cfg: LoadConfig):
        return run_load(cfg, read_server_log=self.logs)


def _start(tmp_path_factory, name: str, **config) -> Server:
    require_coturn()
    from natkit.tls import self_signed

    cert, key = self_signed(["127.0.0.1", "localhost"], days=1)
    ca = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.write_bytes(cert)
    port, tls_port = free_port(), free_port()
    cfg = CoturnConfig(listening_port=port, tls_listening_port=tls_port, cert="cert.pem", pkey="key.pem", relay_ips=("127.0.0.2",),
                       min_port=61000, max_port=61999, static_auth_secrets=(SECRET,), allow_loopback_peers=True,
                       allowed_peer_ranges=("127.0.0.1", "127.0.0.2"), realm="natkit.load", extra=("verbose",), **config)
    state = str(tmp_path_factory.mktemp(f"{name}-state"))
    old = os.environ.get("NATKIT_STATE_DIR")
    os.environ["NATKIT_STATE_DIR"] = state
    try:
        server = CoturnServer(cfg, backend="native", name=name, extra_files={"cert.pem": cert, "key.pem": key})
        server.start()
    finally:
        if old is None:
            os.environ.pop("NATKIT_STATE_DIR", None)
        else:
            os.environ["NATKIT_STATE_DIR"] = old
    return Server(server, port, tls_port, state, str(ca))


@pytest.fixture(scope="module")
def coturn(tmp_path_factory):
    server = _start(tmp_path_factory, "load")
    try:
        yield server
    finally:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("NATKIT_STATE_DIR", server.state)
            server.server.stop()


@pytest.fixture(scope="module")
def quota_coturn(tmp_path_factory):
    server = _start(tmp_path_factory, "quota", user_quota=5)
    try:
        yield server
    finally:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("NATKIT_STATE_DIR", server.state)
            server.server.stop()


def _released_on_server(server: Server, report, expected: int, timeout: float = 8.0) -> int:
    """How many of the report's sessions coturn logged as ended (usage lines), waiting up to ``timeout``."""
    locals_ = {s.local for s in report.sessions}
    end = time.monotonic() + timeout
    while True:
        ended = {u.remote for u in usage_sessions(server.logs()).values() if u.client_rp is not None} & locals_
        if len(ended) >= expected or time.monotonic() > end:
            return len(ended)
        time.sleep(0.2)


def test_audio_counts_agree_with_coturns_usage_lines(coturn):
    report = coturn.run(coturn.config("audio", sessions=4, duration=2.0))
    m = report.media
    assert report.ok and report.exit_code == 0, report.failures
    assert m.sessions == 4 and m.sent > 4 * 50 and m.returned == m.sent and m.to_peer == m.sent
    assert m.loss_pct == 0.0 and m.duplicates == 0 and m.rtt_ms_p50 is not None and m.jitter_ms_p50 is not None
    assert report.cross_check is not None and report.cross_check.ok, report.cross_check
    assert report.cross_check.sessions_checked == 4
    assert report.released == 4 and report.release_failed == 0
    assert report.drops.generator == 0 and report.cpu.server_pct is not None and report.cpu.workers_pct
    assert report.steps[0].passed and report.verdict.figure == "calls_carried" and report.verdict.value == 4
    assert _released_on_server(coturn, report, 4) == 4


def test_video_through_a_second_allocation_per_call(coturn):
    report = coturn.run(coturn.config("video", sessions=2, duration=1.5, peer="allocation"))
    m = report.media
    assert report.ok, report.failures
    assert m.sent >= 2 * 90 and m.to_peer == m.sent and m.returned == m.sent and m.loss_pct == 0.0
    assert all(s.peer.startswith("127.0.0.2:") for s in report.sessions)  # the peer is the other allocation's relayed address
    assert report.released == 4  # two allocations per call


def test_send_indications_agree_with_coturn(coturn):
    report = coturn.run(coturn.config("audio", sessions=2, duration=1.0, send_indications=True))
    assert report.ok and report.media.returned == report.media.sent > 0, report.failures
    assert report.cross_check.ok, report.cross_check


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_rate_over_tcp_and_tls(coturn, transport):
    port = coturn.tls_port if transport == "tls" else coturn.port
    cfg = coturn.config("rate", sessions=2, rate=400, size=300, duration=1.5, transport=transport, cafile=coturn.ca,
                        server_hostname="127.0.0.1", local_host=None)
    cfg = type(cfg)(**{**cfg.__dict__, "server": TransportAddress("127.0.0.1", port)})
    report = coturn.run(cfg)
    m = report.media
    assert report.ok, report.failures
    assert m.sent >= 400 and m.returned == m.sent and m.loss_pct == 0.0 and report.released == 2


def test_hold_stops_at_the_user_quota_with_486(quota_coturn):
    cfg = quota_coturn.config("hold", sessions=8, duration=1.0, server_quotas=(5, None), user="quota")
    report = quota_coturn.run(cfg)
    h = report.hold
    assert h.reached == 5 and h.first_refusal["code"] == "486" and h.errors.get("486", 0) >= 1
    assert h.reason.startswith("486 Allocation Quota Reached after 5 allocations") and "user-quota=5" in h.reason
    assert report.verdict.limited_by == "quota" and report.verdict.server_limit is True
    assert report.released == 5 and report.release_failed == 0


def test_alloc_counts_errors_by_code(coturn):
    cfg = coturn.config("alloc", rate=30, sessions=20, max_steps=1)
    cfg = type(cfg)(**{**cfg.__dict__, "password": "wrong"})
    report = run_load(cfg, check_first=False)
    assert report.alloc.ok == 0 and report.alloc.errors.get("401", 0) == report.alloc.attempts >= 20
    assert report.steps[0].passed is False and "401" in report.steps[0].reason
    assert report.exit_code == 5 and report.failures[-1].kind == "auth_refused"  # nothing allocated: the server's answer decides


def test_alloc_steps_and_releases(coturn):
    report = coturn.run(coturn.config("alloc", rate=40, sessions=50, max_steps=2))
    a = report.alloc
    assert a.ok == a.attempts > 40 and not a.errors
    assert set(a.step_errors) <= {"437 on a reused 5-tuple, retried"}  # the kernel reused a just-released local port
    assert a.latency_ms_p50 is not None and a.best_rate_per_s > 30 and len(report.steps) == 2


def _cli(server: Server, *args: str, timeout: float = 60.0, **popen):
    env = dict(os.environ, NATKIT_STATE_DIR=server.state, NATKIT_QUIET="1")
    cmd = [sys.executable, "-m", "natkit.cli.app", "turn", "load", f"turn:127.0.0.1:{server.port}", "--name", server.name, *args]
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_cli_json_schema_and_baseline_regression(coturn, tmp_path):
    page = tmp_path / "load.html"
    done = _cli(coturn, "--profile", "audio", "--sessions", "3", "--duration", "1", "--json", "--report", str(page))
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    assert "<svg" in text and "<script" not in text and 'src="http' not in text and "Per session" in text
    doc = json.loads(done.stdout)
    assert doc["schema"] == "natkit.load/1" and doc["ok"] and doc["media"]["loss_pct"] == 0.0
    assert doc["server_facts"]["port_range"] == [61000, 61999] and doc["server_facts"]["fd_limit"] > 0
    assert "password" not in doc["config"] and SECRET not in done.stdout
    doc["verdict"]["value"] = 30.0  # a baseline that carried 10x the calls
    base = tmp_path / "base.json"
    base.write_text(json.dumps(doc))
    again = _cli(coturn, "--profile", "audio", "--sessions", "3", "--duration", "1", "--baseline", str(base), "--json")
    assert again.returncode == 1, again.stderr
    out = json.loads(again.stdout)
    assert out["baseline"]["figures"]["verdict.value"]["regressed"] is True
    assert any(f["step"] == "baseline" for f in out["failures"])


def test_cli_exit_codes(coturn):
    wrong = _cli(coturn, "--profile", "alloc", "--user", "nobody", "--password", "wrong")
    assert wrong.returncode == 5 and wrong.stderr.count("\n") == 1 and "Traceback" not in wrong.stderr
    dead_port = free_port()
    env = dict(os.environ, NATKIT_QUIET="1")
    dead = subprocess.run([sys.executable, "-m", "natkit.cli.app", "turn", "load", f"turn:127.0.0.1:{dead_port}",
                           "--secret", "s", "--timeout", "1"], capture_output=True, text=True, env=env, timeout=30, check=False)
    assert dead.returncode == 4 and "Traceback" not in dead.stderr
    bad = _cli(coturn, "--profile", "rate")  # the rate profile needs --rate
    assert bad.returncode == 2 and "--rate" in bad.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_still_reports_and_releases(coturn, sig):
    proc = _cli(coturn, "--profile", "audio", "--sessions", "3", "--duration", "60", "--json", start_new_session=True)
    time.sleep(4.0)
    os.killpg(proc.pid, sig)  # what a terminal (Ctrl-C) or a supervisor (SIGTERM) does: the whole process group
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 130, err
    doc = json.loads(out)
    assert doc["interrupted"] is True and doc["verdict"]["limited_by"] == "interrupted"
    assert doc["media"]["sent"] > 0 and doc["released"] == 3 and doc["release_failed"] == 0
    locals_ = {s["local"] for s in doc["sessions"]}
    end = time.monotonic() + 8
    while time.monotonic() < end:
        ended = {u.remote for u in usage_sessions(coturn.logs()).values() if u.client_rp is not None}
        if locals_ <= ended:
            break
        time.sleep(0.2)
    assert locals_ <= ended  # coturn ended every session now, not 600 s later


def test_rest_secret_gives_every_call_its_own_user(quota_coturn):
    """user-quota=5: 8 calls of 8 users all set up; 8 calls of one user (--same-user) meet the quota with 486."""
    own = quota_coturn.run(quota_coturn.config("audio", sessions=8, duration=1.0, username=None, password=None, secret=SECRET))
    assert own.ok and own.media.sessions == 8 and own.media.sessions_failed == 0, own.failures
    same = quota_coturn.run(quota_coturn.config("audio", sessions=8, duration=1.0, username=None, password=None, secret=SECRET,
                                                same_user=True))
    assert same.media.sessions == 5 and same.media.sessions_failed == 3 and same.exit_code == 1
    assert any(f.step == "setup" and "486 x3" in f.message for f in same.failures)


def test_ramp_carries_calls_and_releases_them(coturn):
    """--ramp in CI: a few audio calls raised x1.5 per 1 s step; every step recorded, every call released."""
    report = coturn.run(coturn.config("audio", sessions=3, ramp=True, step_duration=1.0, max_steps=4, duration=30.0))
    v, m = report.verdict, report.media
    assert v.figure == "calls_carried" and isinstance(v.value, float) and v.value >= 3, (v, report.steps)
    assert [s.sessions for s in report.steps][:2] == [3, 5] and len(report.steps) <= 4
    assert all(s.loss_pct is not None and s.rtt_ms_p50 is not None for s in report.steps)
    assert v.value == max(s.sessions for s in report.steps if s.passed)
    assert m.sessions == max(s.sessions for s in report.steps) and m.sessions_failed == 0
    assert report.released == m.sessions and report.release_failed == 0
    assert report.cross_check is not None and report.cross_check.ok, report.cross_check
    assert _released_on_server(coturn, report, m.sessions) == m.sessions


def test_ramp_counts_calls_refused_while_growing(quota_coturn):
    """user-quota=5, one user: the step that asks for 6 calls gets a 486 and fails; the calls carried are at most 5."""
    cfg = quota_coturn.config("audio", sessions=4, ramp=True, step_duration=1.0, max_steps=6, duration=30.0, username=None,
                              password=None, secret=SECRET, same_user=True, server_quotas=(5, None))
    report = quota_coturn.run(cfg)
    steps = report.steps
    assert steps[0].sessions == 4 and steps[0].passed, steps
    refused = [s for s in steps if s.reason and "486" in s.reason]
    assert refused and all(not s.passed for s in refused), steps  # a step that met the quota never passes
    assert all(s.sessions <= 5 for s in steps)  # a step's calls are those that sent, never the number asked for
    assert report.verdict.figure == "calls_carried" and report.verdict.value is not None and report.verdict.value <= 5, report.verdict
    assert report.verdict.limited_by == "server"
    assert report.media.sessions == 5 and report.media.sessions_failed >= 1
    assert report.released == 5 and report.release_failed == 0


def test_ramp_stops_at_the_generators_open_files_limit(coturn):
    """Under ulimit -n 128 the workers can hold ~20 calls: the ramp stops there and says so, rather than meeting EMFILE."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    env = dict(os.environ, NATKIT_STATE_DIR=coturn.state, NATKIT_QUIET="1")
    cmd = [sys.executable, "-m", "natkit.cli.app", "turn", "load", f"turn:127.0.0.1:{coturn.port}", "--name", coturn.name,
           "--profile", "audio", "--ramp", "--sessions", "8", "--step-duration", "1", "--duration", "40", "--workers", "1", "--json"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90, check=False, preexec_fn=limit)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    v, steps = doc["verdict"], doc["steps"]
    assert v["limited_by"] == "session cap" and v["server_limit"] is False, (v, steps)
    cap = int(v["value"])
    assert 8 < cap < 128 and max(s["sessions"] for s in steps) == cap and all(s["passed"] for s in steps), steps
    assert any(f"the ramp stopped at {cap} calls, the generator's open-files limit (128 per worker" in n for n in v["notes"]), v["notes"]
    assert not doc["media"]["sessions_failed"] and doc["released"] == cap and doc["release_failed"] == 0


@pytest.fixture(scope="module")
def docker_coturn(tmp_path_factory):
    """The same -v coturn in a container (host networking, an image built offline from this host's turnserver)."""
    import contextlib

    from natkit.pytest_plugin import require_docker

    require_docker()
    require_coturn()
    from natkit.coturn import docker as backend
    from natkit.coturn.image import build_local_image

    tag = build_local_image("natkit/coturn:pytest-load")
    port = free_port()
    cfg = CoturnConfig(listening_port=port, relay_ips=("127.0.0.2",), min_port=62000, max_port=62099, static_auth_secrets=(SECRET,),
                       allow_loopback_peers=True, allowed_peer_ranges=("127.0.0.1", "127.0.0.2"), realm="natkit.load", extra=("verbose",))
    state = str(tmp_path_factory.mktemp("docker-load-state"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NATKIT_STATE_DIR", state)
        server = CoturnServer(cfg, backend="docker", image=tag, name="load-docker")
        server.start()
        try:
            yield Server(server, port, None, state, None)
        finally:
            server.stop()
            client = backend.client()
            with contextlib.suppress(Exception):
                client.images.remove(tag, noprune=False)
            client.close()


def test_docker_backend_audio_and_hold(docker_coturn):
    """--name of a containerised coturn: its PID (docker inspect), its log (the usage cross-check), its port range."""
    done = _cli(docker_coturn, "--profile", "audio", "--sessions", "3", "--duration", "1", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["media"]["loss_pct"] == 0.0 and doc["released"] == 3
    assert doc["cross_check"]["sessions_checked"] == 3 and not doc["cross_check"]["mismatches"]
    assert doc["cpu"]["server_pct"] is not None and doc["server_facts"]["pid"]
    hold = _cli(docker_coturn, "--profile", "hold", "--sessions", "150", "--duration", "1", "--json")
    h = json.loads(hold.stdout)["hold"]
    assert h["reached"] == 100 and h["first_refusal"]["code"] == "508"
    assert h["reason"].endswith("the relay port range 62000-62099 has 100 ports"), h["reason"]
