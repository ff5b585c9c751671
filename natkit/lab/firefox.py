"""Debian's Firefox ESR as a lab agent, driven over WebDriver BiDi (W3C) from inside the host.

Playwright's Firefox needs Playwright's own patched build (its Juggler
protocol), which cannot be downloaded here; Debian's ``firefox-esr`` (128+)
speaks the standard WebDriver BiDi protocol itself, no geckodriver needed.
Its BiDi endpoint listens on the namespace's own loopback, out of the
controller's reach, so the agent is a process inside the host namespace
(``python -m natkit.lab.firefox HOST PAGE_URL``, started by
:class:`natkit.lab.peers.AgentClient`): it starts Firefox headless with a
fresh profile whose preferences switch off updates, telemetry, safe
browsing, remote settings, captive-portal and connectivity checks, DNS
prefetch, DNS over HTTPS and the OpenH264 download (:data:`PREFS`; the lab
has no route out in any case), opens the page from the lab's signaling
server, installs ``natkit/web/lab-agent.js`` as a preload script and then
answers the JSON-lines operations of :mod:`natkit.lab.peers` (``offer``,
``answer``, ``accept``, ``result``, ``media``, ``close``) by calling into the page
(``script.callFunction``). It exits, closing Firefox, when stdin closes or on SIGTERM/SIGHUP;
as the child subreaper of what Firefox starts (:mod:`natkit.lab.reaper`) it kills and reaps every
process Firefox left before it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING

from . import reaper

if TYPE_CHECKING:
    import aiohttp

FIREFOX = "/usr/bin/firefox-esr"

#: Firefox preferences (user.js) for a browser that must not talk to anything but the lab.
PREFS = {
    "remote.active-protocols": 1,  # WebDriver BiDi only
    "app.update.disabledForTesting": True, "app.update.auto": False, "app.normandy.enabled": False,
    "browser.shell.checkDefaultBrowser": False, "browser.startup.page": 0, "browser.newtabpage.enabled": False,
    "browser.safebrowsing.malware.enabled": False, "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.remote.enabled": False, "browser.safebrowsing.provider.mozilla.updateURL": "",
    "datareporting.policy.dataSubmissionEnabled": False, "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False, "toolkit.telemetry.server": "", "browser.ping-centre.telemetry": False,
    "network.captive-portal-service.enabled": False, "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True, "network.prefetch-next": False, "network.http.speculative-parallel-limit": 0,
    "network.trr.mode": 5, "security.OCSP.enabled": 0, "services.settings.server": "",
    "browser.region.network.url": "", "browser.region.update.enabled": False,
    "extensions.update.enabled": False, "extensions.getAddons.cache.enabled": False, "extensions.blocklist.enabled": False,
    "media.gmp-manager.url": "", "media.gmp-gmpopenh264.enabled": False,
    # real host candidates (no mDNS names), every interface, fake camera/microphone without prompts
    "media.peerconnection.ice.obfuscate_host_addresses": False, "media.peerconnection.ice.default_address_only": False,
    "media.navigator.streams.fake": True, "media.navigator.permission.disabled": True,
}


def firefox_binary() -> str:
    """``$NATKIT_FIREFOX`` or ``/usr/bin/firefox-esr``."""
    return os.environ.get("NATKIT_FIREFOX") or FIREFOX


def firefox_available() -> tuple[bool, str]:
    b = firefox_binary()
    if not (os.path.exists(b) or shutil.which(b)):
        return False, f"{b} is not installed (apt-get install firefox-esr)"
    return True, ""


def user_js(prefs: dict = PREFS) -> str:
    return "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())


class Bidi:
    """A minimal WebDriver BiDi client (commands multiplexed by id over one WebSocket)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            fut = self._pending.pop(data.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(data)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("Firefox closed the WebDriver BiDi connection"))

    async def cmd(self, method: str, params: dict, timeout: float = 60.0) -> dict:
        i = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[i] = fut
        await self.ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
        msg = await asyncio.wait_for(fut, timeout)
        if msg.get("type") == "error":
            raise RuntimeError(f"{method}: {msg.get('error')}: {msg.get('message')}")
        return msg["result"]


class FirefoxAgent:
    """The agent process: Firefox + one page, operations answered like :class:`natkit.lab.peers.Agent`."""

    def __init__(self, host: str, page_url: str | None, out) -> None:
        self.host = host
        self.page_url = page_url
        self.out = out
        self.proc: subprocess.Popen | None = None
        self.profile = tempfile.mkdtemp(prefix="natkit-firefox-")
        self.bidi: Bidi | None = None
        self.context: str | None = None
        self.version: str | None = None
        self._http: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> dict:
        import aiohttp

        from .browser import agent_script

        t = time.monotonic()
        self._spawn()
        url = await asyncio.get_running_loop().run_in_executor(None, self._bidi_url)
        self._http = http = aiohttp.ClientSession()
        ws = await http.ws_connect(url + "/session", max_msg_size=64 * 1024 * 1024)
        self.bidi = Bidi(ws)
        caps = await self.bidi.cmd("session.new", {"capabilities": {}})
        self.version = caps["capabilities"].get("browserVersion")
        await self.bidi.cmd("script.addPreloadScript", {"functionDeclaration": "() => {" + agent_script() + "}"})
        tree = await self.bidi.cmd("browsingContext.getTree", {})
        self.context = tree["contexts"][0]["context"]
        if self.page_url:
            await self.bidi.cmd("browsingContext.navigate", {"context": self.context, "url": self.page_url, "wait": "complete"})
        return {"pid": os.getpid(), "host": self.host, "ready": True, "browser": "firefox", "version": self.version,
                "start_ms": (time.monotonic() - t) * 1000.0}

    def _spawn(self) -> None:
        with open(os.path.join(self.profile, "user.js"), "w") as f:
            f.write(user_js())
        self.proc = subprocess.Popen(
            [firefox_binary(), "--headless", "--no-remote", "--profile", self.profile, "--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )

    def _bidi_url(self) -> str:
        proc = self.proc
        if proc is None or proc.stderr is None:
            raise RuntimeError("Firefox is not running")
        stderr = proc.stderr
        for line in stderr:
            if "WebDriver BiDi listening on " in line:
                # keep draining Firefox's stderr so it never blocks on a full pipe
                import threading

                threading.Thread(target=lambda: [None for _ in stderr], daemon=True).start()
                return line.split("listening on ", 1)[1].strip()
        raise RuntimeError(f"Firefox exited (code {proc.wait()}) before WebDriver BiDi listened")

    async def call(self, fn: str, *args):
        """``natkitLab[fn](...args)`` in the page, arguments and result as JSON."""
        declaration = "(fn, args) => natkitLab[fn](...JSON.parse(args)).then((r) => JSON.stringify(r))"
        if self.bidi is None:
            raise RuntimeError("Firefox's WebDriver BiDi session is not open")
        r = await self.bidi.cmd("script.callFunction", {
            "functionDeclaration": declaration, "awaitPromise": True, "target": {"context": self.context},
            "arguments": [{"type": "string", "value": fn}, {"type": "string", "value": json.dumps(list(args))}],
        }, timeout=120.0)
        if r.get("type") == "exception":
            details = r.get("exceptionDetails", {})
            raise RuntimeError(details.get("text") or "exception in the page")
        return json.loads(r["result"]["value"])

    async def op(self, op: str, args: dict):
        config = lambda: {"iceServers": args["ice"], "iceTransportPolicy": args.get("policy") or "all"}
        if op == "hello":
            return {"host": self.host, "agent": "firefox", "version": self.version}
        if op == "offer":
            return await self.call("offer", args["conn"], config(), args.get("media"))
        if op == "answer":
            return await self.call("answer", args["conn"], config(), args["sdp"], args.get("media"))
        if op == "accept":
            return await self.call("accept", args["conn"], args["sdp"])
        if op == "result":
            r = await self.call("result", args["conn"], args["timeout"], args.get("messages", 5))
            r["host"] = self.host
            return r
        if op == "media":
            return await self.call("media", args["conn"], args.get("seconds", 5.0))
        if op == "close":
            return await self.call("close", args["conn"])
        raise ValueError(f"unknown op {op!r}")

    async def reply(self, msg: dict) -> None:
        async with self._lock:
            self.out.write(json.dumps(msg) + "\n")
            self.out.flush()

    async def handle(self, req: dict) -> None:
        try:
            result = await self.op(req.get("op", ""), req.get("args", {}))
            await self.reply({"id": req.get("id"), "ok": True, "result": result})
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the controller
            await self.reply({"id": req.get("id"), "ok": False, "error": f"{exc.__class__.__name__}: {exc}", "kind": exc.__class__.__name__})

    async def stop(self) -> None:
        if self.bidi is not None:
            with contextlib.suppress(Exception):
                await self.bidi.cmd("browser.close", {}, timeout=3.0)
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        # what Firefox left (content processes outliving the browser, the fork server's children) was
        # re-parented to this process, the subreaper (see _main): killed and reaped here, not left to PID 1
        reaper.reap_all()
        shutil.rmtree(self.profile, ignore_errors=True)


async def _main(host: str, page_url: str | None) -> None:
    proto_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    # Firefox's processes that lose their parent come to this process (not PID 1), so stop() can reap them
    reaper.set_subreaper()
    agent = FirefoxAgent(host, page_url, proto_out)
    tasks: set = set()
    loop = asyncio.get_running_loop()
    reader: asyncio.StreamReader | None = None
    stopping = False
    main = asyncio.current_task()

    def on_signal() -> None:
        # SIGTERM / SIGHUP: stop as when stdin closes (Firefox closed, its processes reaped), exit 0
        nonlocal stopping
        stopping = True
        if reader is not None:
            reader.feed_eof()
        elif main is not None:
            main.cancel()  # still starting Firefox

    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal)
    try:
        try:
            ready = await agent.start()
            await agent.reply({"id": 0, "ok": True, "result": ready})
        except Exception as exc:  # noqa: BLE001
            await agent.reply({"id": 0, "ok": False, "error": f"Firefox did not start: {exc}", "kind": "browser"})
            return
        reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        if stopping:
            reader.feed_eof()
        while True:
            line = await reader.readline()
            if not line:
                break
            with contextlib.suppress(ValueError):
                task = asyncio.ensure_future(agent.handle(json.loads(line)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        for t in list(tasks):
            t.cancel()
        await agent.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(sys.argv[1] if len(sys.argv) > 1 else "?", sys.argv[2] if len(sys.argv) > 2 else None))
