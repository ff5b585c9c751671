"""The NAT x NAT outcome matrix, through natkit's own pytest plugin.

The pure parts (outcome classification, rendering) run anywhere; the matrix
itself needs root, namespaces and coturn (the ``nat_matrix_lab`` and
``nat_pair`` fixtures skip without them, and fail under NATKIT_REQUIRE_NETNS=1).
Every cell of the expected matrix (docs/lab.md) is one test, STUN only and STUN+TURN.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from natkit.lab.matrix import MODES, MatrixCell, MatrixReport, hosts_for, pairs, render_text, run_matrix
from natkit.lab.peers import PairResult, SideResult, classify_pair
from natkit.lab.spec import MATRIX_BEHAVIOURS, expected_outcome

# ---------------------------------------------------------------- pure


def side(local="host", remote="srflx", connected=True, sent=5, ok=5, role="offerer") -> SideResult:
    return SideResult(host="h", role=role, connected=connected, ice_state="completed", local_type=local, local="10.0.1.10:1",
                      remote_type=remote, remote="198.51.100.11:2", gathered={}, gathering_ms=1.0, connected_ms=1.0,
                      echo_sent=sent, echo_ok=ok, rtt_ms=1.0, error=None)


@pytest.mark.parametrize("off,ans,want", [
    (side("host", "host"), side("host", "host", role="answerer"), "direct host"),
    (side("host", "srflx"), side("host", "host", role="answerer"), "direct srflx"),
    (side("host", "srflx"), side("host", "prflx", role="answerer"), "direct prflx"),
    (side("relay", "srflx"), side("host", "relay", role="answerer"), "relay"),
    (side("relay", "relay"), side("relay", "relay", role="answerer"), "relay"),
    (side("relay", "srflx"), side("host", "srflx", role="answerer"), "inconsistent"),
    (side(connected=False), side(role="answerer"), "failed"),
    (side(ok=4), side(role="answerer"), "failed"),  # an echo went missing
    (side(sent=0, ok=0), side(role="answerer"), "failed"),
    (None, side(role="answerer"), "failed"),
])
def test_classify_pair(off, ans, want):
    assert classify_pair(off, ans) == want


def test_pairs_cover_every_unordered_pair_once():
    ps = pairs()
    assert len(ps) == 15 and len(set(map(frozenset, ps))) == 15
    assert hosts_for("symmetric", "symmetric") == ("sym1", "sym2")
    assert hosts_for("open", "port_restricted") == ("open1", "prc2")


def test_render_text_shows_measured_next_to_expected():
    cells = []
    for mode in MODES:
        for a, b in pairs():
            want = expected_outcome(a, b, turn=mode == "stun+turn")
            got = {"direct": "direct srflx", "direct (prflx)": "direct prflx"}.get(want, want)
            if (a, b, mode) == ("full_cone", "restricted", "stun+turn"):
                got = "relay"
            r = PairResult("natkit.lab.pair/1", "x", "y", mode == "stun+turn", got, got != "failed", got == "relay",
                           side("relay" if got == "relay" else "host"), side(role="answerer"), 10.0, 100.0)
            cells.append(MatrixCell(a, b, mode, want, got, got == want or want.startswith("direct") and got.startswith("direct"), r))
    report = MatrixReport("natkit.lab.matrix/1", False, MATRIX_BEHAVIOURS, tuple(cells), 1, (), 10.0, 4,
                          {"build_ms": 100, "matrix_ms": 12000}, 15000.0)
    text = render_text(report)
    assert "== STUN only" in text and "== STUN + TURN" in text
    assert "direct prflx ✓" in text and "relay ✗" in text
    assert "✗ full cone x restricted (stun+turn): relay, expected direct" in text
    assert "29/30 cells as expected" in text


# ---------------------------------------------------------------- the plugin's marker


@pytest.mark.nat("symmetric", "port_restricted", expect="relay")
def test_marker_symmetric_vs_port_restricted_needs_the_relay(nat_pair):
    result = nat_pair.check()
    assert result.relay_proven and result.offerer.echo_ok == 5


@pytest.mark.nat("symmetric", "port_restricted", turn=False, expect="failed", deadline=4)
def test_marker_without_turn_the_same_pair_cannot_connect(nat_pair):
    nat_pair.check()


@pytest.mark.nat("full_cone", "symmetric", expect="direct (prflx)")
def test_marker_cone_vs_symmetric_connects_directly_via_prflx(nat_pair):
    nat_pair.check()


@pytest.mark.parametrize("nat_pair", [("open", "open"), {"a": "restricted", "b": "port_restricted", "turn": False}], indirect=True)
def test_indirect_parametrisation(nat_pair):
    assert nat_pair.check().outcome.startswith("direct")


# ---------------------------------------------------------------- the full matrix


@pytest.fixture(scope="module")
def matrix_report(nat_matrix_lab) -> MatrixReport:
    """Every cell once, several attempts at a time, on the session's matrix lab."""
    return run_matrix(nat_matrix_lab, deadline=8.0, concurrency=int(os.environ.get("NATKIT_MATRIX_CONCURRENCY", "6")))


@pytest.mark.integration
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("a,b", pairs())
def test_matrix_cell(matrix_report, a, b, mode):
    cell = matrix_report.cell(a, b, mode)
    r = cell.result
    assert cell.match, (
        f"{a} x {b} ({mode}): got {cell.outcome}, expected {cell.expected}; "
        f"{r.a}: {r.offerer and (r.offerer.local_type, r.offerer.remote_type)}, "
        f"{r.b}: {r.answerer and (r.answerer.local_type, r.answerer.remote_type)}; {r.notes}"
    )
    if cell.expected == "relay":
        assert r.relay_proven and r.offerer.echo_ok == r.offerer.echo_sent > 0


@pytest.mark.integration
def test_matrix_stays_fast(matrix_report):
    assert matrix_report.timings["matrix_ms"] < 60_000
    assert all(c.ok for c in matrix_report.checks)  # every NAT verified before use


@pytest.mark.integration
def test_cli_matrix_json_subset():
    from natkit.pytest_plugin import require_lab

    require_lab(True)
    r = subprocess.run(
        [sys.executable, "-m", "natkit.cli.app", "lab", "matrix", "--behaviours", "open,symmetric", "--mode", "stun+turn", "--json"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, NATKIT_QUIET="1"),
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "natkit.lab.matrix/1" and doc["ok"] is True and doc["mismatches"] == 0
    got = {(c["a"], c["b"]): c["outcome"] for c in doc["cells"]}
    assert got == {("open", "open"): "direct host", ("open", "symmetric"): "direct prflx", ("symmetric", "symmetric"): "relay"}


# ---------------------------------------------------------------- skip or fail without root


def test_lab_fixtures_skip_without_root_and_fail_when_required(monkeypatch):
    from natkit.pytest_plugin import require_lab

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("NATKIT_REQUIRE_NETNS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        require_lab()
    monkeypatch.setenv("NATKIT_REQUIRE_NETNS", "1")
    with pytest.raises(pytest.fail.Exception, match="NATKIT_REQUIRE_NETNS=1 forbids skipping"):
        require_lab()
