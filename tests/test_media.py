"""Synthetic media through the relay: relay-check --media and natkit peer --media, plus the pure measurement code."""

from __future__ import annotations

import json
import subprocess

from natkit.media import COUNTER_BITS, freezes, read_counter, write_counter


def test_frame_counter_round_trip():
    import numpy as np
    y = np.zeros((240, 320), dtype=np.uint8)
    for n in (0, 1, 12345, (1 << COUNTER_BITS) - 1):
        write_counter(y, n)
        assert read_counter(y) == n
    write_counter(y, 777)
    noisy = np.clip(y.astype(int) + np.random.default_rng(1).integers(-30, 30, y.shape), 0, 255).astype(np.uint8)
    assert read_counter(noisy) == 777  # survives codec-like noise
    grey = np.full((240, 320), 128, dtype=np.uint8)
    assert read_counter(grey) is None  # no counter: unreadable, not a wrong number


def test_freeze_detection():
    steady = [i / 30 for i in range(90)]
    assert freezes(steady)[:2] == (0, 0.0)
    # a 500 ms stall after frame 45: one freeze of 0.5 s
    stalled = [i / 30 for i in range(46)] + [45 / 30 + 0.5 + i / 30 for i in range(45)]
    count, total_ms, max_gap = freezes(stalled)
    assert count == 1 and abs(total_ms - 500) < 1 and abs(max_gap - 500) < 1
    # 100 ms gaps in a 30 fps stream: under avg + 150 ms, not a freeze
    jitter = [i / 30 + (0.07 if i == 50 else 0) for i in range(90)]
    assert freezes(jitter)[0] == 0
    assert freezes([]) == (0, 0.0, None)


def check_media(media: dict, seconds: float) -> None:
    v, a = media["video"], media["audio"]
    assert media["ok"], media["failures"]
    assert abs(media["window_s"] - seconds) < 0.5
    assert v["frames"] > 0 and v["fps"] >= 10, v  # 30 fps sent; a busy 2-core CI still gets well over 10
    assert (v["width"], v["height"]) == (320, 240)
    assert v["counter_readable"] and v["frames_lost"] is not None and v["frames_lost"] <= v["frames"]
    assert v["bitrate_kbps"] and v["bitrate_kbps"] > 20
    assert v["freeze_ms"] <= seconds * 1000 * 0.5
    assert a["frames"] > 0 and a["seconds"] > seconds * 0.5
    assert a["bitrate_kbps"] and a["bitrate_kbps"] > 5
    assert a["tone_hz"] and abs(a["tone_hz"] - 440) < 20
    assert a["level_dbfs"] and -20 < a["level_dbfs"] < -3


def test_relay_check_with_media(turn_server):
    from natkit.model import to_jsonable
    from natkit.relay import relay_check

    cred = turn_server.credentials()
    report = relay_check(turn_server.uri, username=cred.username, password=cred.password, messages=5, payload_bytes=100_000,
                         media=True, media_seconds=2.0)
    assert report.ok, report.failures
    assert report.path.selected_relay
    check_media(to_jsonable(report.media), 2.0)


def test_relay_check_without_media_has_no_media_field_value(turn_server):
    from natkit.relay import relay_check

    cred = turn_server.credentials()
    report = relay_check(turn_server.uri, username=cred.username, password=cred.password, messages=3, payload_bytes=0)
    assert report.ok and report.media is None


def test_relay_check_cli_media_json(turn_server):
    from natkit.signaling.process import natkit_command

    proc = subprocess.run(natkit_command("relay-check", turn_server.uri, "--secret", turn_server.secret, "--messages", "3",
                                         "--payload", "0", "--media", "--media-seconds", "1.5", "--json"),
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert list(doc)[-1] == "media" and doc["ok"] and doc["exit_code"] == 0  # media comes last
    check_media(doc["media"], 1.5)
    text = subprocess.run(natkit_command("relay-check", turn_server.uri, "--secret", turn_server.secret, "--messages", "3",
                                         "--payload", "0", "--media", "--media-seconds", "1"),
                          check=False, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and "media received" in text.stdout and "fps" in text.stdout


def test_peer_media_through_the_relay(room, peer_args):
    """B sends video + audio (--media); A, which sends nothing, measures what arrives."""
    from natkit.signaling.process import PeerProcess, run_pair

    name = room()
    common = ("--messages", "3", "--payload", "0", "--media-seconds", "2", "--timeout", "15")
    (ca, ra, ea), (cb, rb, eb) = run_pair(PeerProcess(*peer_args(name, *common)), PeerProcess(*peer_args(name, *common, "--media")))
    assert ca == 0 and cb == 0, (ea, eb)
    assert rb["media_sent"] and not ra["media_sent"]
    check_media(ra["media"], 2.0)
    assert ra["path"]["selected"]["local"]["local_type"] == "relay" and ra["path"]["selected"]["local"]["remote_type"] == "relay"
