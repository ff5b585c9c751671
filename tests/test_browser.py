"""The test page in a real headless Chromium (Debian's chromium, driven by Playwright).

Page, ``natkit signal serve``, ``natkit peer`` and coturn all on 127.0.0.1.
The browser starts with background networking, component updates, sync,
QUIC and mDNS candidates disabled, and a host resolver that resolves
nothing: it has no reason and no way to reach anything off this machine.

Skips without chromium or the playwright package, unless
``NATKIT_REQUIRE_BROWSER=1`` (then it fails).
"""

from __future__ import annotations

import os
import shutil
import time
from urllib.parse import urlencode

import pytest

pytest.importorskip("aiohttp")

from natkit.signaling.process import PeerProcess  # noqa: E402

CHROMIUM = os.environ.get("NATKIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
    # belt and braces for "nothing leaves this machine"
    "--disable-default-apps", "--disable-extensions", "--no-default-browser-check", "--disable-domain-reliability",
    "--disable-client-side-phishing-detection", "--metrics-recording-only",
    "--disable-features=WebRtcHideLocalIpsWithMdns,OptimizationHints,MediaRouter,Translate,AutofillServerCommunication",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]


def _require_browser():
    reason = None
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        reason = f"{CHROMIUM} is not installed (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is not installed (pip install playwright; no browser download needed)"
    if reason:
        if os.environ.get("NATKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason} (and NATKIT_REQUIRE_BROWSER=1 forbids skipping)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True, timeout=30_000)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    pg = context.new_page()
    pg.console_lines = []
    pg.on("console", lambda m: pg.console_lines.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: pg.console_lines.append(f"pageerror: {e}"))
    try:
        yield pg
    finally:
        context.close()


def page_url(signal_server, turn_server, name: str, auto: str = "connect", messages: int = 5, with_ice: bool = True) -> str:
    q = {"room": name, "auto": auto, "messages": str(messages)}
    if with_ice:
        cred = turn_server.credentials("web")
        q.update({"turn": turn_server.uri + "?transport=udp", "username": cred.username, "credential": cred.password, "relay": "1"})
    return signal_server.url + "?" + urlencode(q)


def wait_result(pg, key: str = "result", timeout: float = 40.0) -> dict:
    """Poll ``window.natkit[key]`` until done (page.evaluate: Playwright's wait_for_function needs eval, which the CSP forbids)."""
    deadline = time.monotonic() + timeout
    while True:
        r = pg.evaluate(f"() => window.natkit && window.natkit.{key}")
        if r and r.get("done"):
            return r
        if time.monotonic() > deadline:
            log = pg.evaluate("() => document.getElementById('log').textContent")
            pytest.fail(f"the page did not finish within {timeout:g}s; its log:\n{log}\nconsole: {pg.console_lines}")
        time.sleep(0.1)


def no_csp_violations(pg) -> None:
    bad = [line for line in pg.console_lines if "Content Security Policy" in line or line.startswith(("error:", "pageerror:"))]
    assert not bad, bad


BROWSER_PEER = ("--payload", "100000")  # what check_pair expects the page to receive


def check_pair(r: dict, peer: dict, n: int = 5) -> None:
    # the browser's own view (getStats) of the selected pair
    assert r["ok"] and r["verdict"] == "pass", r["failures"]
    assert r["selected"]["local"]["type"] == "relay" and r["selected"]["remote"]["type"] == "relay", r["selected"]
    assert r["pingsEchoed"] == n and r["echoOk"]  # browser -> peer -> browser
    assert r["pingsReceived"] == 5  # the peer's pings arrived in the browser
    assert r["bulkBytes"] == 100_000  # and its bulk payload
    assert r["remoteAgent"] == "natkit-peer/1" and r["remoteReport"]["ok"] is True
    assert all(c["type"] == "relay" for c in r["candidates"])
    # natkit peer's view
    assert peer["ok"] and peer["exit_code"] == 0, peer["failures"]
    assert peer["remote_agent"] == "natkit-web/1"
    sel = peer["path"]["selected"]["local"]
    assert (sel["local_type"], sel["remote_type"]) == ("relay", "relay")
    assert peer["path"]["messages_echoed"] == 5 and peer["pings_answered"] == n
    assert peer["remote_report"]["ok"] is True and peer["remote_report"]["agent"] == "natkit-web/1"
    assert (peer["remote_report"]["local_type"], peer["remote_report"]["remote_type"]) == ("relay", "relay")
    # both agree on the pair
    assert sel["local"] == f"{r['selected']['remote']['address']}:{r['selected']['remote']['port']}"


def test_browser_offers_to_waiting_peer(page, signal_server, turn_server, room, peer_args):
    """natkit peer waits; the page joins second, offers and trickles its candidates."""
    name = room()
    with PeerProcess(*peer_args(name, *BROWSER_PEER)) as peer:
        assert peer.wait_joined(20), peer.stderr_lines  # the peer is in the room first
        page.goto(page_url(signal_server, turn_server, name))
        r = wait_result(page)
        code, report, err = peer.result(40)
    assert code == 0, (err, report)
    assert r["role"] == "offerer" and report["role"] == "answerer"
    check_pair(r, report)
    assert report["notes"] == []  # every trickled candidate was usable
    no_csp_violations(page)


def test_peer_offers_to_waiting_browser(page, signal_server, turn_server, room, peer_args):
    """The page waits; natkit peer joins second and offers (candidates in its SDP)."""
    name = room()
    page.goto(page_url(signal_server, turn_server, name))
    deadline = time.monotonic() + 10
    while page.evaluate("() => window.natkit.result && window.natkit.result.myId") is None:
        assert time.monotonic() < deadline, "the page did not join"
        time.sleep(0.05)
    with PeerProcess(*peer_args(name, *BROWSER_PEER)) as peer:
        r = wait_result(page)
        code, report, err = peer.result(40)
    assert code == 0, (err, report)
    assert r["role"] == "answerer" and report["role"] == "offerer"
    check_pair(r, report)
    assert page.inner_text("#verdict").startswith("PASS")
    no_csp_violations(page)


def test_gathering_lists_relay_candidates(page, signal_server, turn_server, room):
    page.goto(page_url(signal_server, turn_server, room(), auto="gather"))
    g = wait_result(page, "gather")
    assert g["candidates"] and all(c["type"] == "relay" and c["address"] == "127.0.0.1" for c in g["candidates"])
    assert g["errors"] == []
    rows = page.locator("#candidates tbody tr")
    assert rows.count() == len(g["candidates"]) and "relay" in rows.first.inner_text()
    no_csp_violations(page)


def test_gathering_shows_turn_errors(page, signal_server, turn_server):
    """A wrong credential: no relay candidate, and the TURN error is listed (like the Trickle ICE page)."""
    q = {"turn": turn_server.uri, "username": "nobody", "credential": "wrong", "relay": "1", "auto": "gather"}
    page.goto(signal_server.url + "?" + urlencode(q))
    g = wait_result(page, "gather")
    assert g["candidates"] == []
    assert g["errors"] and g["errors"][0]["code"] in (401, 701), g["errors"]


def test_two_tabs_with_server_credentials(browser, signal_server, room):
    """Two tabs meet in a room; ICE servers and credentials come from the server's /config.json."""
    name = room()
    ctx = browser.new_context()
    try:
        a, b = ctx.new_page(), ctx.new_page()
        url = signal_server.url + "?" + urlencode({"room": name, "auto": "connect", "messages": "3"})
        a.goto(url)
        deadline = time.monotonic() + 10
        while a.evaluate("() => window.natkit.result && window.natkit.result.myId") is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        b.goto(url)
        ra, rb = wait_result(a), wait_result(b)
        assert a.evaluate("() => document.getElementById('relay').checked")  # relay-only from the server
        for r in (ra, rb):
            assert r["ok"], r["failures"]
            assert r["selected"]["local"]["type"] == "relay" and r["selected"]["remote"]["type"] == "relay"
            assert r["pingsEchoed"] == 3 and r["pingsReceived"] == 3 and r["remoteAgent"] == "natkit-web/1"
        # a chat line typed in one tab arrives in the other
        b.fill("#chat-text", "hello from tab b")
        b.click("#chat-send")
        deadline = time.monotonic() + 5
        while "hello from tab b" not in a.inner_text("#chat-log"):
            assert time.monotonic() < deadline, a.inner_text("#chat-log")
            time.sleep(0.05)
    finally:
        ctx.close()
