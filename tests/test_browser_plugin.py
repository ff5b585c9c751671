"""The browser fixtures and marker of natkit's pytest plugin, and the copy-paste example of
docs/pytest-plugin.md run exactly as written (its files are extracted from the page)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from natkit.lab.browser import page_outcome

DOC = Path(__file__).resolve().parent.parent / "docs" / "pytest-plugin.md"


def doc_files() -> dict[str, str]:
    """Fenced blocks with ``title="path"`` in docs/pytest-plugin.md, by path."""
    text = DOC.read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r'```\w+ title="([^"]+)"\n(.*?)```', text, re.DOTALL)}


def test_the_doc_has_the_whole_example():
    assert set(doc_files()) == {"chat/server.py", "chat/index.html", "chat/chat.js", "test_chat.py"}


@pytest.mark.parametrize("a,b,want", [
    ([{"state": "connected", "local": "relay", "remote": "srflx"}], [{"state": "connected", "local": "prflx", "remote": "relay"}], "relay"),
    ([{"state": "connected", "local": "srflx", "remote": "prflx"}], [{"state": "connected", "local": "prflx", "remote": "srflx"}], "direct prflx"),
    ([{"state": "connected", "local": "host", "remote": "srflx"}], [{"state": "connected", "local": "srflx", "remote": "host"}], "direct srflx"),
    ([{"state": "connected", "local": "relay", "remote": "srflx"}], [{"state": "connected", "local": "srflx", "remote": "srflx"}], "inconsistent"),
    ([{"state": "connecting", "local": None, "remote": None}], [{"state": "connected", "local": "srflx", "remote": "srflx"}], "failed"),
    ([], [], "failed"),
])
def test_page_outcome(a, b, want):
    assert page_outcome(a, b) == want


def test_the_docs_example_runs_as_written(tmp_path):
    from natkit.pytest_plugin import require_browser, require_lab

    require_lab(True)
    require_browser()
    for name, body in doc_files().items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    env = dict(os.environ, NATKIT_REQUIRE_NETNS="1", NATKIT_REQUIRE_BROWSER="1", NATKIT_LAB_DIR=str(tmp_path / "labs"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path / "test_chat.py")],
                       capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "3 passed" in r.stdout
    labs = tmp_path / "labs"
    assert not labs.exists() or list(labs.iterdir()) == []  # the session's lab is gone


@pytest.mark.nat_browsers("symmetric", "port_restricted", turn=False, expect="failed")
def test_marker_without_turn_the_app_cannot_connect(nat_browsers, nat_server, tmp_path):
    files = doc_files()
    for name in ("chat/server.py", "chat/index.html", "chat/chat.js"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(files[name])
    app = nat_server(["python", str(tmp_path / "chat" / "server.py"), "{host}", "{port}"])
    alice, _ = nat_browsers.open(app.url)
    assert alice.natkit.turn_uri is None and len(alice.natkit.ice_servers) == 1  # STUN only
    assert nat_browsers.check(timeout=6) == "failed"


def test_nat_server_serves_static_files(nat_browser, nat_server, tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><title>static</title><p id=x>hello from the server namespace</p>")
    site = nat_server(static=tmp_path)
    page = nat_browser("restricted", url=site.url)
    assert page.inner_text("#x") == "hello from the server namespace"
    assert page.evaluate("() => window.isSecureContext")  # the lab origin counts as secure
    assert page.natkit.behaviour == "restricted" and page.natkit.host.startswith("rc")


def test_nat_server_reports_a_server_that_dies(nat_server):
    from natkit.errors import ServerStartFailed

    with pytest.raises(ServerStartFailed, match="exited with code 3"):
        nat_server(["python", "-c", "import sys; print('boom'); sys.exit(3)"])
