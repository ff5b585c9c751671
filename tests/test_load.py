"""natkit.load's pure parts: histograms, RFC 3550 jitter, sequence tracking, payloads, coturn's log, baselines, reasons."""

import random

import pytest

from natkit.errors import UsageError
from natkit.load import coturn_log, packet
from natkit.load.build import hold_reason
from natkit.load.config import LoadConfig
from natkit.load.report import SCHEMA, ServerFacts, compare
from natkit.load.stats import (
    Histogram,
    Jitter,
    SeqTracker,
    bucket_of,
    bucket_value,
    loss_pct,
    percentile,
)
from natkit.model import TransportAddress

SERVER = TransportAddress("127.0.0.1", 3478)


def test_histogram_percentiles_within_bucket_error():
    rng = random.Random(7)
    values = [int(rng.lognormvariate(7, 1.2)) for _ in range(20_000)]
    h = Histogram()
    for v in values:
        h.add(v)
    for p in (50, 90, 95, 99, 99.9):
        exact = percentile(values, p)
        assert abs(h.percentile(p) - exact) <= exact / 32 + 1, p
    assert h.percentile(100) == max(values) and h.count == len(values) and h.min == min(values)


def test_histogram_small_values_are_exact_and_merge_adds():
    a, b = Histogram(), Histogram()
    for v in range(64):
        a.add(v)
        assert bucket_value(bucket_of(v)) == v
    b.add(1000)
    merged = Histogram.from_dict(a.to_dict()).merge(b)
    assert merged.count == 65 and merged.max == 1000 and merged.percentile(50) == 32
    assert Histogram().percentile(50) is None


def test_bucket_index_is_monotonic():
    last = -1
    for v in list(range(5000)) + [10**6, 10**7, 6 * 10**7]:
        b = bucket_of(v)
        assert b >= last
        last = b


def test_jitter_rfc3550():
    j = Jitter()
    for _ in range(100):
        j.update(5.0)  # constant transit: no jitter
    assert j.value == 0.0
    j = Jitter()
    for i in range(2000):
        j.update(0.0 if i % 2 else 10.0)  # |D| = 10 every packet: J converges to 10
    assert j.value == pytest.approx(10.0, rel=1e-6)
    j = Jitter()
    j.update(0.0)
    assert j.update(16.0) == 1.0  # J += (|D| - J) / 16


def test_seq_tracker_counts_duplicates_and_reordering():
    t = SeqTracker(capacity=100)
    for seq in (0, 1, 3, 2, 2, 4, 150, 149):
        t.add(seq)
    assert (t.received, t.duplicates, t.reordered, t.highest) == (7, 1, 2, 150)
    assert loss_pct(10, 7) == 30.0 and loss_pct(0, 0) is None and loss_pct(5, 6) == 0.0


def test_payload_roundtrip_and_stamp():
    p = packet.encode(7, 42, 3, 123456789, 200)
    assert len(p) == 200
    stamped = packet.stamp(p, 987654321)
    assert packet.decode(bytes(stamped)) == (7, 42, 3, 123456789, 987654321)
    with pytest.raises(ValueError):
        packet.decode(b"short")


LOG = """\
Max number of open files/sockets allowed for this process: 4096
max supported number of TURN Sessions possible is: 2000 (approximately)
8: : session 001000000000000001: new, realm=<natkit>, username=<1796121000:u1>, lifetime=600
9: : session 001000000000000001: usage: realm=<natkit>, username=<1796121000:u1>, rp=14, rb=1392, sp=13, sb=1412
9: : session 001000000000000001: peer usage: realm=<natkit>, username=<1796121000:u1>, rp=9, rb=900, sp=10, sb=1000
9: : session 001000000000000001: closed (2nd stage), user <1796121000:u1> realm <natkit> origin <>, \
local 127.0.0.1:3478, remote 127.0.0.1:50583, reason: allocation timeout
"""


def test_coturn_log_usage_and_limits():
    sessions = coturn_log.sessions(LOG.splitlines())
    s = sessions["001000000000000001"]
    assert (s.client_rp, s.client_sp, s.peer_rp, s.peer_sp) == (14, 13, 9, 10)
    assert s.remote == "127.0.0.1:50583" and s.username == "1796121000:u1" and s.close_reason == "allocation timeout"
    facts = coturn_log.startup_facts(LOG.splitlines())
    assert (facts.fd_limit, facts.max_sessions) == (4096, 2000)
    assert coturn_log.startup_facts([]).fd_limit is None


def test_hold_reasons_name_the_server_limit():
    facts = ServerFacts(port_range=(50000, 50099), port_range_size=100, fd_limit=20000, max_sessions=10000, user_quota=20)
    r486 = hold_reason(50, 20, {"code": "486", "reason": "Allocation Quota Reached", "held": 20}, {"486": 1}, facts)
    assert r486.startswith("486 Allocation Quota Reached after 20 allocations") and "user-quota=20" in r486
    r508 = hold_reason(500, 100, {"code": "508", "reason": "", "held": 100}, {"508": 3}, facts)
    assert r508.endswith("the relay port range 50000-50099 has 100 ports")
    fd = ServerFacts(port_range=(10000, 32767), port_range_size=22768, fd_limit=2048)
    r_fd = hold_reason(3000, 2014, {"code": "508", "reason": "Cannot create socket", "held": 2014}, {"508": 1}, fd)
    assert "open-files limit is 2048" in r_fd and "22768 ports" in r_fd
    assert hold_reason(10, 10, None, {}, facts).startswith("target reached")
    assert "generator's own limit" in hold_reason(10, 5, {"code": "local:EMFILE", "reason": "", "held": 5}, {"local:EMFILE": 1}, facts)


def _doc(profile="rate", **figures):
    doc = {"schema": SCHEMA, "profile": profile, "media": {"relayed_pps": 1000.0, "loss_pct": 0.0, "rtt_ms_p99": 2.0},
           "verdict": {"value": 10.0}}
    for path, value in figures.items():
        section, key = path.split("__")
        doc[section][key] = value
    return doc


def test_baseline_regressions_beyond_tolerance():
    base = _doc()
    table, regressions = compare(_doc(media__relayed_pps=950.0), base, 0.10)
    assert not regressions and table["media.relayed_pps"]["regressed"] is False
    _, regressions = compare(_doc(media__relayed_pps=850.0), base, 0.10)
    assert len(regressions) == 1 and "media.relayed_pps 850" in regressions[0]
    _, regressions = compare(_doc(media__loss_pct=2.0), base, 0.10)  # 0 % -> 2 %: beyond the 0.5 point slack
    assert regressions and "loss_pct" in regressions[0]
    with pytest.raises(ValueError):
        compare(_doc(), _doc(profile="alloc"), 0.1)
    with pytest.raises(ValueError):
        compare(_doc(), {"schema": "other"}, 0.1)


@pytest.mark.parametrize("kwargs, text", [
    ({"profile": "nope"}, "unknown profile"),
    ({"profile": "rate"}, "needs --rate"),
    ({"profile": "audio", "duration": float("inf")}, "--duration"),
    ({"profile": "audio", "max_time": 10_000}, "--max-time"),
    ({"profile": "hold", "ramp": True}, "--ramp"),
    ({"profile": "audio", "size": 10}, "--size"),
    ({"profile": "audio", "sessions": 0}, "--sessions"),
    ({"profile": "audio", "peer": "browser"}, "unknown peer"),
])
def test_config_refuses_unbounded_or_impossible_runs(kwargs, text):
    with pytest.raises(UsageError, match=text):
        LoadConfig(server=SERVER, **kwargs).validate()


def test_traffic_shapes():
    audio = LoadConfig("audio", SERVER, sessions=10)
    video = LoadConfig("video", SERVER, sessions=10)
    rate = LoadConfig("rate", SERVER, sessions=4, rate=1000)
    assert audio.offered_pps() == pytest.approx(500) and audio.traffic.size_min == 200
    assert video.traffic.packets_per_frame == 3 and video.offered_pps() == pytest.approx(900)
    assert rate.offered_pps() == 1000 and rate.traffic.pps == pytest.approx(250)
    assert LoadConfig("rate", SERVER, rate=60_000).worker_count(2) == 1  # the server on this host keeps a CPU
    assert LoadConfig("rate", TransportAddress("192.0.2.1", 3478), rate=60_000).worker_count(2) == 2
    assert LoadConfig("rate", SERVER, rate=60_000).worker_count(8) == 4
    assert LoadConfig("audio", SERVER, sessions=10).worker_count(2) == 1
    assert "password" not in LoadConfig("audio", SERVER, password="s3cret").public()


def test_cpu_meter_sees_this_process_busy():
    import os
    import time

    from natkit.load.sysmon import CpuMeter, udp_counters

    meter = CpuMeter([os.getpid(), 999_999_999])
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    lap = meter.lap()
    assert 999_999_999 not in lap  # a process that does not exist is "not measured", not 0 %
    busy, thread, waited = lap[os.getpid()]
    # a process that never sleeps either runs or waits for a CPU: the two add up to ~100 % on any host load
    # (the busiest thread is read a moment after the process: one clock tick, 10 ms in 0.3 s, apart)
    assert waited is not None and busy + waited > 70 and thread <= busy * 1.05 + 5
    counters = udp_counters()
    assert counters is not None and "RcvbufErrors" in counters and "SndbufErrors" in counters


# ------------------------------------------------------------ media accounting (packets, never frames)
def test_frame_clock_counts_packets_not_frames():
    from natkit.load.stats import FrameClock

    clock = FrameClock(1 / 30, 3, now=0.0)  # video: 30 frames/s x 3 packets
    assert clock.due(0.1, 10) == 30 and (clock.offered, clock.skipped) == (90, 0)  # on schedule: 10 calls x 3 frames
    # the worker stalls for a second: 300 frames owed, 250 ms of them (75) sent, the rest skipped, all in packets
    assert clock.due(1.1, 10) == 75
    assert clock.offered == 90 + 900 and clock.skipped == 900 - 75 * 3


def test_pace_counts_every_packet_it_did_not_send(monkeypatch):
    """A video worker that stalls and meets send errors: offered = sent + not sent, every term in packets."""
    import asyncio
    import types

    from natkit.errors import NatkitError
    from natkit.load import media

    load = media.MediaLoad(LoadConfig("video", SERVER, sessions=10), 1)
    sent_by: dict[int, int] = {}
    for i in range(10):
        s = media.MediaSession(i, load)
        s.a = types.SimpleNamespace(transport="udp")

        def send(payload, i=i):
            if i == 0:
                raise NatkitError("refused by the socket")
            sent_by[i] = sent_by.get(i, 0) + 1

        s.send = send
        load.sessions.append(s)
    times = iter([0.0, 1.0])  # the clock starts, then a whole second passed before the first frame

    def monotonic():
        try:
            return next(times)
        except StopIteration:
            load.sending = False
            return 1.0

    monkeypatch.setattr(media, "time", types.SimpleNamespace(monotonic=monotonic, monotonic_ns=lambda: 0))
    asyncio.run(load.pace())
    snap = load.snapshot()
    assert snap["offered"] == 10 * 90  # one second of 10 video calls, whether sent or not
    assert snap["skipped"] == (300 - 75) * 3  # frames beyond 250 ms behind, as packets
    assert snap["send_errors"] == 8 * 3  # session 0 had 8 of the 75 frames sent round-robin, 3 packets each
    assert snap["sent"] == sum(sent_by.values()) == 75 * 3 - 8 * 3
    assert snap["not_sent"] == snap["offered"] - snap["sent"]


def test_a_worker_steps_down_to_its_lowest_set_up_sessions():
    """A ramp back to 4 calls after session 1 was refused still sends 4 (0, 2, 3, 4), split over the workers by number."""
    from natkit.load import media

    loads = [media.MediaLoad(LoadConfig("audio", SERVER), 2, w) for w in (0, 1)]
    for i in (0, 2, 3, 4, 5, 6):
        loads[i % 2].sessions.append(media.MediaSession(i, loads[i % 2]))
    for load in loads:
        load.set_active(4)
    assert [s.index for s in loads[0]._sending_sessions()] == [0, 2]
    assert [s.index for s in loads[1]._sending_sessions()] == [3, 5]
    loads[1].set_active(1)
    assert loads[1]._sending_sessions() == []


# ------------------------------------------------------------ the ramp's bounds
def test_ramp_never_grows_past_the_cap():
    from natkit.load.config import HARD_MAX_SESSIONS
    from natkit.load.drive import next_ramp_size

    assert next_ramp_size(100, 100, None, 1.5, 10_000) == (150, "")
    assert next_ramp_size(100, 100, None, 1.5, 120) == (120, "")  # up, but not past the cap
    assert next_ramp_size(120, 120, None, 1.5, 120) == (None, "cap")  # the cap passed: over, and the caller says why
    n, sizes = 70_000, []
    while n is not None:
        sizes.append(n)
        n, _why = next_ramp_size(n, n, None, 1.5, HARD_MAX_SESSIONS)
    assert sizes == [70_000, HARD_MAX_SESSIONS]
    assert next_ramp_size(8, None, 8, 1.5, 100) == (4, "") and next_ramp_size(1, None, 1, 1.5, 100) == (None, "nothing passed")
    assert next_ramp_size(100, 100, 150, 1.5, 1000) == (125, "") and next_ramp_size(100, 100, 104, 1.5, 1000) == (None, "bisected")


def test_session_cap_from_the_workers_fd_limits():
    from natkit.load.config import HARD_MAX_SESSIONS
    from natkit.load.runner import FD_RESERVE, Run

    run = Run(LoadConfig("audio", SERVER, workers=2, ramp=True))
    assert run.session_cap() == (HARD_MAX_SESSIONS, f"natkit's hard cap of {HARD_MAX_SESSIONS:,} sessions")
    run.fd_limits = [(1024, 20), (1024, 24)]
    cap, why = run.session_cap()
    assert cap == 2 * (1024 - 24 - FD_RESERVE) and "open-files limit (1,024 per worker x 2 workers, 1 socket per call)" in why
    run = Run(LoadConfig("audio", SERVER, workers=1, ramp=True, peer="allocation"))
    run.fd_limits = [(1024, 20)]
    assert run.session_cap()[0] == (1024 - 20 - FD_RESERVE) // 2  # two allocations per call
    run.fd_limits = [None]
    assert run.session_cap()[0] == HARD_MAX_SESSIONS  # a worker that did not say: only the hard cap


# ------------------------------------------------------------ a generator's limit is never the server's
def _media_totals(loss: float, sessions: int = 10):
    from natkit.load.report import MediaTotals

    return MediaTotals(sessions=sessions, sessions_failed=0, seconds=3.0, sent=1000, to_peer=1000, returned=int(1000 * (1 - loss / 100)),
                       offered_pps=1000.0, sent_pps=1000.0, to_peer_pps=1000.0, returned_pps=900.0, relayed_pps=1900.0, loss_pct=loss,
                       forward_loss_pct=0.0, return_loss_pct=loss, duplicates=0, reordered=0, malformed=0, rtt_ms_p50=1.0,
                       rtt_ms_p95=2.0, rtt_ms_p99=3.0, rtt_ms_max=4.0, jitter_ms_p50=0.1, jitter_ms_p95=0.2, jitter_ms_max=0.3,
                       setup_ms_p50=5.0, setup_ms_p99=9.0)


def _ramp_run(step_reason: str | None, capped: str | None = None):
    from natkit.load.report import Step
    from natkit.load.runner import Run

    run = Run(LoadConfig("audio", SERVER, workers=1, ramp=True))
    run.steps = [Step(index=0, seconds=3.0, sessions=100, passed=True),
                 Step(index=1, seconds=3.0, sessions=150, loss_pct=4.0, passed=step_reason is None, reason=step_reason)]
    run.ramp_result = (100, 150 if step_reason else None)
    run.ramp_capped = capped
    return run


@pytest.mark.parametrize("cpu, drops, server_limit, limited_by", [
    ({"workers_pct": (40.0,), "workers_waiting_pct": (2.0,)}, None, True, "server"),  # the control: this one is the server's
    ({"workers_pct": (93.0,), "workers_waiting_pct": (2.0,)}, None, False, "generator"),  # a worker saturated over the run
    ({"workers_pct": (35.0,), "workers_waiting_pct": (45.0,)}, None, False, "generator"),  # starved: runnable, no CPU
    ({"workers_pct": (40.0,), "workers_waiting_pct": (2.0,)}, 1234, False, "generator"),  # its own sockets dropped
])
def test_a_busy_generator_is_never_the_servers_limit(cpu, drops, server_limit, limited_by):
    from natkit.load.build import verdict
    from natkit.load.report import Cpu

    run = _ramp_run("loss 4.00 % > 1 %")
    run._gen_drops = drops
    v = verdict(run, _media_totals(4.0), None, None, Cpu(host_loadavg=(0.5, 0.5), host_cpus=2, **cpu))
    assert (v.server_limit, v.limited_by, v.value) == (server_limit, limited_by, 100.0)
    assert server_limit or any("not the server" in n or "lower bound" in n for n in v.notes)


@pytest.mark.parametrize("reason", ["generator saturated (a worker at 91 % of a core)",
                                    "generator starved (a worker waited 40 % of the step for a CPU)",
                                    "loss 4.00 % > 1 %; generator behind schedule (900 packets not sent)",
                                    "generator's own limit: 3 sessions not set up (local:EMFILE x3)"])
def test_a_step_the_generator_failed_is_never_the_servers_limit(reason):
    """The run's averages look idle; the failing step's own measurement said the generator gave out."""
    from natkit.load.build import verdict
    from natkit.load.report import Cpu

    v = verdict(_ramp_run(reason), _media_totals(4.0), None, None, Cpu(workers_pct=(30.0,), workers_waiting_pct=(1.0,)))
    assert v.server_limit is False and v.limited_by == "generator" and any("lower bound" in n for n in v.notes)


def test_a_ramp_stopped_by_the_session_cap_is_not_the_servers_limit():
    from natkit.load.build import verdict
    from natkit.load.report import Cpu

    v = verdict(_ramp_run(None, capped="the generator's open-files limit"), _media_totals(0.0), None, None,
                Cpu(workers_pct=(30.0,), workers_waiting_pct=(1.0,)))
    assert (v.limited_by, v.server_limit, v.value) == ("session cap", False, 100.0)


def test_step_judgement_names_the_generators_state():
    from natkit.load.drive import generator_reasons
    from natkit.load.runner import Run

    run = Run(LoadConfig("audio", SERVER, workers=2))
    run.pids = [11, 12]
    assert generator_reasons(run, {11: (40.0, 40.0, 3.0), 12: (50.0, 50.0, 4.0)}, 5, 1000) == []  # 0.5 % not sent: within 1 %
    assert generator_reasons(run, {11: (40.0, 40.0, 3.0), 12: (85.0, 85.0, 4.0)}, 0, 1000) == ["generator saturated (a worker at 85 % of a core)"]
    assert generator_reasons(run, {11: (30.0, 30.0, 35.0), 12: (20.0, 20.0, None)}, 0, 1000)[0].startswith("generator starved (a worker waited 35 %")
    assert generator_reasons(run, {11: (40.0, 40.0, 3.0)}, 30, 1000) == ["generator behind schedule (30 packets not sent)"]
