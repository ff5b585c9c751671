"""Real Chromium behind real NATs: Debian's chromium inside lab host namespaces (natkit.lab.browser).

Needs root, namespaces and coturn (NATKIT_REQUIRE_NETNS=1 makes a skip fail)
and chromium + playwright (NATKIT_REQUIRE_BROWSER=1 likewise). The browsers
load natkit's test page from the signaling server in the lab's server
namespace and connect through the lab's coturn; nothing they send can leave
the lab, and a packet capture on this machine's own interfaces proves it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Self

import pytest

from natkit.lab.matrix import MODES, pairs


def lab_addresses(plan) -> frozenset[str]:
    """Every address the lab assigns in its namespaces (server, NAT WANs and LANs, hosts)."""
    return frozenset(ip for node in plan.nodes for ip in node.ips)


def require_browser_lab() -> None:
    from natkit.pytest_plugin import require_browser, require_lab

    require_lab(True)
    require_browser()


class PacketWatch:
    """Every frame on this machine's own interfaces (an AF_PACKET socket in the root
    namespace, nothing configured), keeping those whose IPv4 source is one of the lab's
    own addresses: such a frame has left the lab's namespaces.

    Only the source counts: this machine's other programs may talk to the same
    documentation ranges (a package mirror at 203.0.113.80, say), to and from the host's
    own address, and that is not the lab's traffic. Frames that merely carry an address
    of the lab's ranges are counted apart (``foreign_frames``), for the record.
    """

    RANGES = ("203.0.113.", "198.51.100.", "10.0.", "100.64.")

    def __init__(self, lab_addresses: Iterable[str]) -> None:
        host = _host_addresses()
        self.lab_addresses = frozenset(lab_addresses) - host
        assert self.lab_addresses, "no lab address to watch"
        self.frames: dict[str, int] = {}
        self.lab_frames: list[tuple[str, str, str]] = []
        self.foreign_frames = 0
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            ifname = addr[0]
            self.frames[ifname] = self.frames.get(ifname, 0) + 1
            if len(data) >= 34 and data[12:14] == b"\x08\x00":
                src, dst = socket.inet_ntoa(data[26:30]), socket.inet_ntoa(data[30:34])
                if src in self.lab_addresses:
                    self.lab_frames.append((ifname, src, dst))
                elif src.startswith(self.RANGES) or dst.startswith(self.RANGES):
                    self.foreign_frames += 1

    def __enter__(self) -> Self:
        self.counters_before = _counters()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
        self.counters_after = _counters()

    def tx_delta(self) -> dict[str, int]:
        return {k: self.counters_after[k] - self.counters_before.get(k, 0) for k in self.counters_after}


def _host_addresses() -> frozenset[str]:
    """The IPv4 addresses of the root namespace's interfaces (``ip -4 -o addr``)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return frozenset(line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3)


def _counters() -> dict[str, int]:
    out = {}
    for d in Path("/sys/class/net").iterdir():
        try:
            out[d.name] = int((d / "statistics" / "tx_packets").read_text())
        except (OSError, ValueError):
            pass
    return out


def _netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


# ---------------------------------------------------------------- pure


def test_chromium_flags_keep_the_browser_quiet():
    from natkit.lab.browser import chromium_flags

    flags = chromium_flags()
    for f in ("--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"):
        assert f in flags
    assert any(f.startswith("--disable-features=") and "WebRtcHideLocalIpsWithMdns" in f for f in flags)
    assert not any("fake-device" in f for f in flags)
    media = chromium_flags(media=True, secure_origins=["http://203.0.113.10:8000/"])
    assert "--use-fake-device-for-media-stream=fps=30" in media and "--use-fake-ui-for-media-stream" in media
    assert "--unsafely-treat-insecure-origin-as-secure=http://203.0.113.10:8000" in media


def test_launcher_enters_only_natkit_namespaces(tmp_path):
    from natkit.errors import NatkitError
    from natkit.lab.browser import write_launcher

    path = write_launcher("natkit-abc-sym1", tmp_path, "/usr/bin/chromium")
    text = path.read_text()
    assert text.startswith("#!/bin/sh\nexec ip netns exec natkit-abc-sym1 /usr/bin/chromium \"$@\"")
    assert path.stat().st_mode & 0o777 == 0o700
    with pytest.raises(NatkitError, match="not a natkit lab namespace"):
        write_launcher("default", tmp_path)


def test_comparison_lines_up_the_agents():
    from natkit.lab.matrix import (
        MatrixCell,
        MatrixComparison,
        MatrixReport,
        outcome_kind,
        render_comparison,
    )
    from natkit.lab.peers import PairResult
    from natkit.lab.spec import expected_outcome, outcome_matches

    def report(agent, override):
        cells = []
        for mode in MODES:
            for a, b in pairs():
                want = expected_outcome(a, b, turn=mode == "stun+turn")
                got = override.get((a, b, mode), {"direct": "direct srflx", "direct (prflx)": "direct prflx"}.get(want, want))
                r = PairResult("natkit.lab.pair/1", "x", "y", mode == "stun+turn", got, True, got == "relay", None, None, 8.0, 1.0)
                cells.append(MatrixCell(a, b, mode, want, got, outcome_matches(want, got), r))
        bad = sum(1 for c in cells if not c.match)
        return MatrixReport("natkit.lab.matrix/1", bad == 0, tuple(b for b, _ in pairs()[:5]), tuple(cells), bad, (), 8.0, 4,
                            {"matrix_ms": 9000.0}, 10000.0, agent=agent)

    stock = report("stock", {("open", "open", "stun+turn"): "relay"})
    chromium = report("chromium", {("open", "full_cone", "stun"): "direct prflx"})
    cmp = MatrixComparison("natkit.lab.matrix-compare/1", False, ("stock", "chromium"), {"stock": stock, "chromium": chromium},
                           ("open x open (stun+turn)", "open x full_cone (stun)"), 1.0)
    text = render_comparison(cmp)
    assert "stock aioice" in text and "Chromium" in text
    assert "relay ✗" in text and "direct prflx ✓" in text
    assert "stock aioice: 29/30 as expected" in text and "Chromium: 30/30 as expected" in text
    assert outcome_kind("direct host") == outcome_kind("direct srflx") == "direct" and outcome_kind("direct prflx") == "direct prflx"


def _run_reaper(script: str, **kw) -> subprocess.CompletedProcess:
    from natkit.lab import reaper

    return subprocess.run([sys.executable, "-I", "-S", reaper.__file__, "sh", "-c", script], check=False, capture_output=True, text=True, timeout=30, **kw)


def _gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def test_reaper_reaps_what_its_program_leaves_behind(tmp_path):
    """A double-forked daemon (as Chromium's crashpad handler) is re-parented to the reaper, killed and
    reaped before the reaper exits: not left running, not left as a zombie of PID 1."""
    pidfile = tmp_path / "pid"
    r = _run_reaper(f"(sleep 60 & echo $! > {pidfile}); echo out; exit 7")
    pid = int(pidfile.read_text())
    assert r.returncode == 7 and r.stdout == "out\n" and r.stderr == "", r  # code and streams are the program's
    assert _gone(pid), _describe([pid])
    # without the reaper the same daemon outlives its program (the test can fail)
    subprocess.run(["sh", "-c", f"(sleep 60 & echo $! > {pidfile})"], check=True, timeout=30)
    pid = int(pidfile.read_text())
    try:
        assert not _gone(pid)
    finally:
        os.kill(pid, signal.SIGKILL)


def test_reaper_ignores_ctrl_c_and_passes_sigterm_on(tmp_path):
    from natkit.lab import reaper

    p = subprocess.Popen([sys.executable, "-I", "-S", reaper.__file__, "sh", "-c", "trap 'exit 5' TERM; while :; do sleep 0.05; done"])
    try:
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group: natkit stops the driver
        time.sleep(0.3)
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 5
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.parametrize("stop", ["timeout", "interrupt"])
def test_driver_call_is_cancelled_and_awaited(stop):
    """An interrupted (Ctrl-C) or timed-out call has unwound on the driver's loop when run() raises,
    so nothing it started is left pending (no "Task was destroyed but it is pending!")."""
    import _thread
    import asyncio

    from natkit.lab.browser import BrowserDriver

    unwound: list[str] = []

    async def slow():
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.05)  # cleanup that itself awaits (a browser being closed)
            unwound.append("done")

    d = BrowserDriver()
    d._thread.start()
    try:
        if stop == "timeout":
            with pytest.raises(TimeoutError):
                d.run(slow(), 0.2)
        else:
            timer = threading.Timer(0.2, _thread.interrupt_main)
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                d.run(slow(), 30)
        assert unwound == ["done"]
        assert d.run(asyncio.sleep(0, "still usable"), 5) == "still usable"
    finally:
        d.stop()
    assert not d._thread.is_alive()


# ---------------------------------------------------------------- one browser


@pytest.fixture(scope="module")
def pair_lab():
    require_browser_lab()
    from natkit.lab import LabSpec, NatLab
    from natkit.lab.browser import BrowserSession

    with NatLab(LabSpec.peers("symmetric", "port_restricted", "full_cone")) as lab, BrowserSession(lab) as session:
        yield lab, session


def test_browser_lives_in_the_host_namespace_and_starts_fast(pair_lab):
    from natkit.lab.netns import namespace_pids

    lab, session = pair_lab
    t = time.monotonic()
    agent = session.agent("sym1")  # one browser on its own
    took = (time.monotonic() - t) * 1000.0
    pids = namespace_pids([lab.ns("sym1")])[lab.ns("sym1")]
    names = {Path(f"/proc/{p}/comm").read_text().strip() for p in pids if os.path.exists(f"/proc/{p}/comm")}
    assert any(n.startswith("chromium") for n in names), names  # browser, renderer, network service...
    assert len([n for n in names if n.startswith("chromium")]) >= 1
    # the browser process up in the namespace and Playwright connected (the target), then a page loaded
    assert agent.launch_ms is not None and agent.launch_ms <= 2000, f"browser start {agent.launch_ms:.0f} ms (target 2000 ms)"
    assert agent.start_ms <= took < 5000, f"launch {agent.launch_ms:.0f} ms, page loaded after {agent.start_ms:.0f} ms"
    # the page came from the signaling server in the server namespace, across the host's NAT
    assert session.page_url.startswith("http://203.0.113.10:")
    assert agent.driver.run(agent.page.evaluate("() => location.href"), 10).startswith(session.page_url)
    assert agent.version.split(".")[0].isdigit()


def test_session_stop_leaves_no_browser_process():
    """When BrowserSession.stop() returns, every process of its browser is gone: the browser, its
    zygotes (orphaned when the browser exits first) and crashpad handlers (double-forked at start),
    none of them left to PID 1, not even as a zombie."""
    require_browser_lab()
    from natkit.lab import LabSpec, NatLab
    from natkit.lab.browser import BrowserSession
    from natkit.lab.netns import namespace_pids

    with NatLab(LabSpec.peers("open"), turn=False, verify=False, agents=False) as lab:
        session = BrowserSession(lab, ["open1"], signaling=False).__enter__()
        try:
            pids = namespace_pids([lab.ns("open1")])[lab.ns("open1")]
            names = {Path(f"/proc/{p}/comm").read_text().strip() for p in pids if os.path.exists(f"/proc/{p}/comm")}
            assert "chromium" in names, names
        finally:
            session.stop()
        left = [p for p in pids if os.path.exists(f"/proc/{p}")]
        assert left == [], _describe(left)


def test_chromium_pair_through_the_nats(pair_lab):
    from natkit.lab.peers import connect_pair

    lab, session = pair_lab
    ag = session.agent
    relay = connect_pair(lab, "sym1", "prc1", turn=True, deadline=10, agents=(ag("sym1"), ag("prc1")))
    assert relay.outcome == "relay" and relay.relay_proven, relay
    assert relay.offerer.echo_ok == relay.offerer.echo_sent == 5
    assert relay.offerer.gathered.get("relay", 0) >= 1 and relay.offerer.gathered.get("srflx", 0) >= 1
    assert relay.offerer.gathered.get("host", 0) >= 1  # real addresses: mDNS is off
    prflx = connect_pair(lab, "fc1", "sym1", turn=True, deadline=10, agents=(ag("fc1"), ag("sym1")))
    assert prflx.outcome == "direct prflx", prflx
    failed = connect_pair(lab, "sym1", "prc1", turn=False, deadline=4, agents=(ag("sym1"), ag("prc1")))
    assert failed.outcome == "failed" and not failed.ok
    assert 3500 < failed.duration_ms < 9000


@pytest.mark.parametrize("browser_offers", [True, False])
def test_chromium_with_aiortc(pair_lab, browser_offers):
    """Mixed pairs: the browser and natkit's aiortc agent, each side offering once."""
    from natkit.lab.peers import connect_pair

    lab, session = pair_lab
    b, a = session.agent("sym1"), lab.agent("prc1")
    agents = (b, a) if browser_offers else (a, b)
    hosts = ("sym1", "prc1") if browser_offers else ("prc1", "sym1")
    r = connect_pair(lab, *hosts, turn=True, deadline=10, agents=agents)
    assert r.outcome == "relay" and r.relay_proven, r
    b2 = session.agent("fc1")
    agents = (b2, lab.agent("sym1")) if browser_offers else (lab.agent("fc1"), session.agent("sym1"))
    r = connect_pair(lab, "fc1", "sym1", turn=True, deadline=10, agents=agents)
    assert r.outcome == "direct prflx", r


def test_browsers_meet_through_the_signaling_server(pair_lab):
    """natkit's own test page in two hosts: WebSocket signaling in the server namespace, trickle ICE,
    ICE servers and fresh credentials from the server's /config.json (relay only)."""
    lab, session = pair_lab
    room = f"lab-{os.getpid()}"
    a, b = session.agent("sym1"), session.agent("prc1")
    url = session.page_url + f"?room={room}&auto=connect&messages=3"

    async def open_page(agent):
        return await agent.new_page(url)

    pa = a.driver.run(open_page(a), 20)
    deadline = time.monotonic() + 10
    while a.driver.run(pa.evaluate("() => window.natkit.result && window.natkit.result.myId"), 5) is None:
        assert time.monotonic() < deadline, "the first page did not join"
        time.sleep(0.05)
    pb = b.driver.run(open_page(b), 20)
    results = []
    for agent, page in ((a, pa), (b, pb)):
        deadline = time.monotonic() + 30
        while True:
            r = agent.driver.run(page.evaluate("() => window.natkit.result"), 5)
            if r and r.get("done"):
                break
            assert time.monotonic() < deadline, agent.driver.run(page.evaluate("() => document.getElementById('log').textContent"), 5)
            time.sleep(0.1)
        results.append(r)
    for r in results:
        assert r["ok"], r["failures"]
        assert r["selected"]["local"]["type"] == "relay" and r["selected"]["remote"]["type"] == "relay"
        assert r["pingsEchoed"] == 3 and r["pingsReceived"] == 3
        assert r["selected"]["remote"]["address"] in lab.server_ips  # a relayed address of the lab's coturn
    for agent, page in ((a, pa), (b, pb)):
        agent.driver.run(page.context.close(), 10)


# ---------------------------------------------------------------- the Chromium matrix


@pytest.fixture(scope="module")
def chromium_matrix(nat_matrix_lab):
    require_browser_lab()
    from natkit.lab.matrix import run_matrix

    with PacketWatch(lab_addresses(nat_matrix_lab.plan)) as watch:
        report = run_matrix(nat_matrix_lab, agent="chromium", deadline=8.0, concurrency=4)
    return report, watch


@pytest.mark.integration
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("a,b", pairs())
def test_chromium_matrix_cell(chromium_matrix, a, b, mode):
    report, _ = chromium_matrix
    cell = report.cell(a, b, mode)
    r = cell.result
    assert cell.match, (
        f"{a} x {b} ({mode}): Chromium got {cell.outcome}, expected {cell.expected}; "
        f"{r.a}: {r.offerer and (r.offerer.local_type, r.offerer.remote_type)}, "
        f"{r.b}: {r.answerer and (r.answerer.local_type, r.answerer.remote_type)}; {r.notes}"
    )
    if cell.expected != "failed":
        assert r.offerer.echo_ok == r.offerer.echo_sent == 5
        assert r.answerer.local_type in ("host", "srflx", "prflx", "relay")  # from the browser's getStats


@pytest.mark.integration
def test_chromium_matrix_time_and_browsers(chromium_matrix):
    report, _ = chromium_matrix
    assert report.agent == "chromium" and report.agent_info["version"]
    assert len(report.agent_info["start_ms"]) == 10
    assert report.timings["matrix_ms"] < 120_000
    assert report.duration_ms < 300_000  # the target for the whole Chromium matrix


@pytest.mark.integration
def test_nothing_left_the_lab_during_the_browser_matrix(chromium_matrix):
    _, watch = chromium_matrix
    assert watch.lab_frames == [], watch.lab_frames[:10]
    # every interface counter of this machine, for the record (other programs may use eth0)
    assert set(watch.tx_delta()) >= {"lo"}


def _frame(src: str, dst: str) -> bytes:
    """An Ethernet/IPv4/UDP frame no stack accepts: addressed to another MAC (dropped as
    PACKET_OTHERHOST) and with a wrong IPv4 header checksum, so nothing answers it."""
    payload = b"natkit packet-watch probe"
    udp = struct.pack("!HHHH", 9, 9, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 1, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    words = sum(struct.unpack("!10H", header))
    while words > 0xFFFF:
        words = (words & 0xFFFF) + (words >> 16)
    wrong = (~words & 0xFFFF) ^ 0x0101  # never the right checksum
    header = header[:10] + struct.pack("!H", wrong) + header[12:]
    return b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x08\x00" + header + udp


def test_packet_watch_counts_frames_from_the_lab_and_not_the_hosts_own_traffic():
    """The watch behind test_nothing_left_the_lab_*: a frame whose source is a lab address fails
    it; this machine's traffic to and from the same ranges (a mirror at 203.0.113.80) does not.
    The frames are injected on lo only, never routed."""
    from natkit.lab import LabSpec
    from natkit.lab.spec import plan
    from natkit.pytest_plugin import require_lab

    require_lab(True)
    p = plan(LabSpec.matrix(), "watchprobe")
    leak = p.node("sym1").ip
    assert leak is not None
    inject = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    inject.bind(("lo", 0))
    with inject, PacketWatch(lab_addresses(p)) as watch:
        assert leak in watch.lab_addresses and "203.0.113.80" not in watch.lab_addresses
        inject.send(_frame("127.0.0.1", "203.0.113.80"))  # this machine's pip toward the mirror
        inject.send(_frame("203.0.113.80", "127.0.0.1"))  # and its answer
        inject.send(_frame(leak, "127.0.0.1"))  # a lab host's packet outside its namespace
        deadline = time.monotonic() + 5
        while not watch.lab_frames and time.monotonic() < deadline:
            time.sleep(0.05)
    assert ("lo", leak, "127.0.0.1") in watch.lab_frames, watch.lab_frames
    assert {src for _, src, _ in watch.lab_frames} == {leak}, watch.lab_frames
    assert watch.foreign_frames >= 2  # seen, and not called a leak


# ---------------------------------------------------------------- media


@pytest.fixture(scope="module")
def media_lab():
    require_browser_lab()
    from natkit.lab import LabSpec, NatLab
    from natkit.lab.browser import BrowserSession

    with NatLab(LabSpec.peers("symmetric", "symmetric")) as lab, BrowserSession(lab, ["sym1", "sym2"], media=True) as s:
        yield lab, s


def test_video_call_through_the_relay_behind_two_symmetric_nats(media_lab):
    from natkit.lab.browser import media_call

    lab, session = media_lab
    call = media_call(lab, session, "sym1", "sym2", seconds=5, relay_only=True)
    assert call.connection.outcome == "relay", call.connection
    for side in call.sides:
        assert side.selected == ("relay", "relay"), side
        assert side.state == "connected"
        assert side.fps >= 25, side  # Chromium's fake camera sends 30 fps
        assert side.frames_decoded >= 125 and side.frame_size == (640, 480)
        assert side.packets_lost == 0 and side.audio_packets >= 200  # 50 Opus packets a second
        assert side.jitter_ms is not None and side.jitter_ms < 30
    # without the relay-only policy libwebrtc uses one relay: one side's mapped address to the other's relay
    call = media_call(lab, session, "sym1", "sym2", seconds=2)
    assert call.connection.outcome == "relay"
    assert all("relay" in s.selected and s.fps >= 25 for s in call.sides), call.sides


def test_video_call_survives_loss_on_the_nat_boxes():
    require_browser_lab()
    from natkit.lab import LabSpec, NatLab
    from natkit.lab.browser import BrowserSession, media_call

    with NatLab(LabSpec.peers("symmetric", "symmetric", loss=5)) as lab, BrowserSession(lab, ["sym1", "sym2"], media=True) as s:
        call = media_call(lab, s, "sym1", "sym2", seconds=5)
    assert call.connection.outcome == "relay", call.connection
    for side in call.sides:
        assert side.state == "connected"
        assert side.packets_lost > 0 and 2.0 <= side.loss_pct <= 25.0, side  # 5% per box, both boxes on the path
        assert side.frames_decoded > 50, side


# ---------------------------------------------------------------- clean-up


def _run_cli_matrix(tmp_path, *extra, env_extra=None, **kw):
    env = dict(os.environ, NATKIT_LAB_DIR=str(tmp_path / "labs"), NATKIT_QUIET="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "natkit.cli.app", "lab", "matrix", "--agent", "chromium",
                             "--behaviours", "open,symmetric", *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def _leftovers(tmp_path) -> tuple[list, list]:
    labs_dir = tmp_path / "labs"
    labs = [p.name for p in labs_dir.iterdir()] if labs_dir.exists() else []
    ns = [n for n in os.listdir("/run/netns") if any(n.startswith(f"natkit-{lab}-") for lab in labs)] if labs else []
    return labs, ns


def test_cli_chromium_matrix_json(tmp_path):
    require_browser_lab()
    p = _run_cli_matrix(tmp_path, "--mode", "stun+turn", "--json")
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err
    doc = json.loads(out)
    assert doc["agent"] == "chromium" and doc["ok"] and doc["agent_info"]["version"]
    got = {(c["a"], c["b"]): c["outcome"] for c in doc["cells"]}
    assert got == {("open", "open"): "direct host", ("open", "symmetric"): "direct prflx", ("symmetric", "symmetric"): "relay"}
    assert _leftovers(tmp_path) == ([], [])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_mid_matrix_leaves_nothing(tmp_path, sig):
    """SIGTERM/Ctrl-C/SIGHUP while the browsers start: one line, exit 130; lab, browsers, coturn,
    signaling server all gone."""
    require_browser_lab()
    p = _run_cli_matrix(tmp_path, "--deadline", "20")
    deadline = time.monotonic() + 60
    ns_names: list = []
    while time.monotonic() < deadline:  # wait until browsers run in the lab
        _, ns_names = _leftovers(tmp_path)
        if ns_names and _chromium_in(ns_names):
            break
        time.sleep(0.2)
    assert ns_names and _chromium_in(ns_names), "the browsers never started"
    pids = [pid for found in _ns_pids(ns_names).values() for pid in found]
    drivers = _children(p.pid)  # Playwright's driver (node) runs outside the lab, as our child
    assert drivers, "no Playwright driver process found"
    os.kill(p.pid, sig)
    _, err = p.communicate(timeout=60)
    assert (p.returncode, err) == (130, "natkit: interrupted\n")  # nothing else: no asyncio warning, no traceback
    assert _leftovers(tmp_path)[1] == []
    time.sleep(0.2)
    alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}") and Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"]
    assert alive == [], _describe(alive)  # chromium, coturn, signaling server, agents
    left = [d for d in drivers if os.path.exists(f"/proc/{d}")]
    assert left == [], _describe(left)


def _describe(pids) -> list[str]:
    """``PID STATE PPID cmdline`` of each process (what a failure message needs to name them)."""
    out = []
    for pid in pids:
        try:
            state, ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
        except (OSError, ValueError):
            state, ppid, cmd = "?", "?", "(gone)"
        out.append(f"{pid} {state} ppid={ppid} {cmd}")
    return out


def _children(pid: int) -> list[int]:
    """Descendants of ``pid`` (from /proc/*/stat parent links)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        kids = [c for c, p in parent.items() if p == cur]
        out += kids
        todo += kids
    return out


def test_browser_that_cannot_start_fails_cleanly(tmp_path):
    require_browser_lab()
    p = _run_cli_matrix(tmp_path, env_extra={"NATKIT_CHROMIUM": "/bin/false"})
    _, err = p.communicate(timeout=120)
    assert p.returncode == 3, err
    assert "Traceback" not in err and "Chromium did not start" in err, err
    assert _leftovers(tmp_path) == ([], [])


def _ns_pids(namespaces):
    from natkit.lab.netns import namespace_pids

    return namespace_pids(namespaces)


def _chromium_in(namespaces) -> bool:
    for pids in _ns_pids(namespaces).values():
        for pid in pids:
            try:
                if Path(f"/proc/{pid}/comm").read_text().startswith("chromium"):
                    return True
            except OSError:
                pass
    return False


# ---------------------------------------------------------------- Firefox (WebDriver BiDi)


def test_firefox_agent_behind_the_nats(pair_lab):
    """Debian's Firefox ESR inside host namespaces over WebDriver BiDi: with itself, with Chromium, with aiortc."""
    from natkit.lab.firefox import firefox_available
    from natkit.lab.peers import AgentClient, connect_pair
    from natkit.pytest_plugin import _require

    ok, reason = firefox_available()
    _require("NATKIT_REQUIRE_BROWSER", ok, reason)
    lab, session = pair_lab
    ff = {h: AgentClient(h, lab.ns(h), log_path=str(lab.dir / f"firefox-{h}.log"), module="natkit.lab.firefox",
                         args=(session.page_url,)) for h in ("sym1", "fc1")}
    try:
        ready = {h: a._result(a.ready, 60, "start") for h, a in ff.items()}
        assert all(r["browser"] == "firefox" and r["version"].split(".")[0].isdigit() for r in ready.values()), ready
        r = connect_pair(lab, "fc1", "sym1", turn=True, deadline=10, agents=(ff["fc1"], ff["sym1"]))
        assert r.outcome == "direct prflx", r
        assert r.offerer.gathered.get("host", 0) >= 1  # real host addresses, no mDNS names
        r = connect_pair(lab, "sym1", "prc1", turn=True, deadline=10, agents=(ff["sym1"], session.agent("prc1")))
        assert r.outcome == "relay" and r.relay_proven, r  # Firefox offers, Chromium answers
        r = connect_pair(lab, "prc1", "sym1", turn=True, deadline=10, agents=(lab.agent("prc1"), ff["sym1"]))
        assert r.outcome == "relay" and r.relay_proven, r  # aiortc offers, Firefox answers
        r = connect_pair(lab, "sym1", "prc1", turn=False, deadline=4, agents=(ff["sym1"], lab.agent("prc1")))
        assert r.outcome == "failed"
    finally:
        for a in ff.values():
            a.close(grace=5)
    from natkit.lab.netns import namespace_pids

    left = namespace_pids([lab.ns("fc1")])[lab.ns("fc1")]
    assert not [p for p in left if os.path.exists(f"/proc/{p}/comm") and "firefox" in Path(f"/proc/{p}/comm").read_text()]


def _firefox_processes(pids) -> list[int]:
    """The ones of ``pids`` that still exist (zombies included)."""
    return [p for p in pids if os.path.exists(f"/proc/{p}")]


@pytest.mark.parametrize("how", ["stdin", "sigterm"])
def test_firefox_agent_leaves_no_process_behind(how):
    """When the Firefox agent exits (its stdin closed, or SIGTERM), every process of its Firefox is
    gone: the browser, its content, socket and utility processes, the fork server and what it forked,
    none of them left to PID 1, not even as a zombie."""
    require_browser_lab()
    from natkit.lab import LabSpec, NatLab
    from natkit.lab.firefox import firefox_available
    from natkit.lab.netns import namespace_pids
    from natkit.lab.peers import AgentClient
    from natkit.pytest_plugin import _require

    ok, reason = firefox_available()
    _require("NATKIT_REQUIRE_BROWSER", ok, reason)
    with NatLab(LabSpec.peers("open"), turn=False, verify=False, agents=False) as lab:
        ns = lab.ns("open1")
        agent = AgentClient("open1", ns, log_path=str(lab.dir / "firefox-open1.log"), module="natkit.lab.firefox")
        try:
            ready = agent._result(agent.ready, 60, "start")
            assert ready["browser"] == "firefox"
            pids = [p for p in namespace_pids([ns])[ns] if p != agent.pid]
            assert len(pids) >= 2, _describe(pids)  # the browser and at least one child process
            if how == "sigterm":
                agent.proc.send_signal(signal.SIGTERM)
                assert agent.proc.wait(15) == 0  # stopped in order, not killed
        finally:
            agent.close(grace=15)
        left = _firefox_processes(pids)
        assert left == [], _describe(left)
