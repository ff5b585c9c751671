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
