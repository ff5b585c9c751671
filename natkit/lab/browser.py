"""Real browsers inside lab namespaces: Debian's Chromium driven by Playwright.

A browser belongs to a lab host: it is started through a small launcher
script (``exec ip netns exec NS /usr/bin/chromium "$@"``) given to Playwright
as ``executable_path``, so Chromium and every process it forks (network
service, renderers) live in the host's network namespace, behind the host's
NAT, while Playwright keeps its ``--remote-debugging-pipe`` (file
descriptors 3 and 4 survive ``ip netns exec``). No browser is downloaded.

The browser runs headless with background networking, component updates,
sync, QUIC, domain reliability and mDNS host candidates off
(:func:`chromium_flags`); the host namespace has no default route, so there is
nowhere to go but the lab. The page is served by natkit's signaling server
running in the lab's server namespace (``http://203.0.113.10:PORT/``), so
even the page load crosses the host's NAT.

:class:`BrowserAgent` is a lab agent with the same operations as the aiortc
agent of :mod:`natkit.lab.peers` (``offer``, ``answer``, ``accept``,
``result``, ``close``, plus ``media``), implemented by ``natkit/web/lab-agent.js``
inside the page, so :func:`natkit.lab.peers.connect_pair` pairs any two
agents: Chromium x Chromium, Chromium x aiortc, aiortc x aiortc.
:class:`BrowserSession` owns the signaling server, one Playwright driver
thread and the browsers of a set of hosts, and stops all of them on exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from ..errors import EnvironmentProblem, LabAgentError

if TYPE_CHECKING:
    import subprocess

    from playwright.async_api import Browser, BrowserContext, Page, Playwright
    from playwright.sync_api import Browser as SyncBrowser
    from playwright.sync_api import Playwright as SyncPlaywright

    from ..signaling.process import SignalProcess
    from .peers import PairResult

CHROMIUM = "/usr/bin/chromium"

#: Flags for a browser that has no business talking to anything but the lab.
BASE_FLAGS = (
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--disable-default-apps", "--disable-extensions",
    "--no-default-browser-check", "--disable-domain-reliability", "--disable-client-side-phishing-detection",
    "--metrics-recording-only", "--disable-breakpad", "--disable-dev-shm-usage", "--mute-audio",
    # neither --disable-breakpad nor --disable-crash-reporter keeps Debian's Chromium from starting
    # chrome_crashpad_handler (double-forked, its own session): natkit.lab.reaper reaps it
    # WebRtcHideLocalIpsWithMdns: host candidates carry real addresses, not .local names
    "--disable-features=WebRtcHideLocalIpsWithMdns,OptimizationHints,MediaRouter,Translate,AutofillServerCommunication",
)
#: Names resolve to nothing; only the lab's own address literals (and loopback) are left alone.
RESOLVER_RULES = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost, EXCLUDE 203.0.113.*, EXCLUDE 198.51.100.*"
#: Chromium's fake camera (a test pattern, 30 fps: its default is 20) and microphone (a beep), prompts accepted.
MEDIA_FLAGS = ("--use-fake-device-for-media-stream=fps=30", "--use-fake-ui-for-media-stream")


#: Browsers launched at once: a launch is CPU-bound, more than the cores only makes each slower.
LAUNCH_CONCURRENCY = max(1, min(4, os.cpu_count() or 2))


def chromium_binary() -> str:
    """``$NATKIT_CHROMIUM`` or ``/usr/bin/chromium``."""
    return os.environ.get("NATKIT_CHROMIUM") or CHROMIUM


def browser_available() -> tuple[bool, str]:
    """``(True, "")`` when Chromium and the playwright package are both installed, else ``(False, reason)``."""
    binary = chromium_binary()
    if not (os.path.exists(binary) or shutil.which(binary)):
        return False, f"{binary} is not installed (apt-get install chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return False, "the playwright package is not installed (pip install playwright; no browser download needed)"
    return True, ""


def chromium_flags(*, secure_origins: Iterable[str] = (), media: bool = False) -> list[str]:
    """Chromium's command-line flags for a lab host.

    ``secure_origins``: origins (``http://203.0.113.10:8765``) treated as
    secure contexts, so a page served over plain HTTP inside the lab may call
    ``getUserMedia`` and ``crypto.subtle``. ``media``: the fake camera and
    microphone (:data:`MEDIA_FLAGS`).
    """
    flags = [*BASE_FLAGS, RESOLVER_RULES]
    origins = [o.rstrip("/") for o in secure_origins]
    if origins:
        flags.append("--unsafely-treat-insecure-origin-as-secure=" + ",".join(origins))
    if media:
        flags += MEDIA_FLAGS
    return flags


def write_launcher(ns: str, directory: Path, binary: str | None = None) -> Path:
    """A launcher script that runs ``binary`` inside namespace ``ns`` (``ip netns exec`` keeps
    PID and file descriptors: Playwright's pipe stays connected). Returns its path (mode 0700)."""
    from .netns import netns_argv

    argv = netns_argv(ns, [binary or chromium_binary()])  # refuses namespaces that are not natkit's
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"browser-{ns}.sh"
    path.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in argv) + ' "$@"\n')
    path.chmod(0o700)
    return path


def agent_script() -> str:
    """The in-page agent (``natkit/web/lab-agent.js``)."""
    from importlib import resources

    return resources.files("natkit.web").joinpath("lab-agent.js").read_text()


#: Seconds an interrupted or timed-out driver call gets to unwind (a launch aborts its browser).
CANCEL_GRACE = 10.0
_DRIVER_ENV_LOCK = threading.Lock()


def playwright_node() -> str | None:
    """The Node.js that Playwright runs its driver with (``$PLAYWRIGHT_NODEJS_PATH`` or the bundled one)."""
    node = os.environ.get("PLAYWRIGHT_NODEJS_PATH")
    if node:
        return node
    import playwright

    bundled = Path(playwright.__file__).parent / "driver" / "node"
    return str(bundled) if bundled.is_file() else None


@contextlib.contextmanager
def supervised_driver():
    """While Playwright starts its driver in this block, it runs it under :mod:`natkit.lab.reaper`
    (through ``$PLAYWRIGHT_NODEJS_PATH`` and a launcher script removed afterwards): stopping
    Playwright then returns once every process of its browsers is reaped, crashpad handlers and
    zygotes included, instead of leaving them to PID 1."""
    from . import reaper

    node = playwright_node()
    if node is None:  # Playwright raises its own error
        yield
        return
    with _DRIVER_ENV_LOCK, tempfile.TemporaryDirectory(prefix="natkit-driver-") as tmp:
        launcher = Path(tmp) / "node"
        argv = [sys.executable, "-I", "-S", reaper.__file__, node]
        launcher.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in argv) + ' "$@"\n')
        launcher.chmod(0o700)
        before = os.environ.get("PLAYWRIGHT_NODEJS_PATH")
        os.environ["PLAYWRIGHT_NODEJS_PATH"] = str(launcher)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("PLAYWRIGHT_NODEJS_PATH", None)
            else:
                os.environ["PLAYWRIGHT_NODEJS_PATH"] = before


class BrowserDriver:
    """One Playwright (async API) on an event loop in its own thread; thread-safe ``submit``.

    Playwright objects are not thread-safe; everything that touches them runs
    on this loop, and callers get :class:`concurrent.futures.Future` results.
    The driver runs under :func:`supervised_driver`.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="natkit-browser-driver", daemon=True)
        self.pw: Playwright | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> Self:
        from playwright.async_api import async_playwright

        self._thread.start()

        async def go():
            return await async_playwright().start()

        with supervised_driver():
            self.pw = self.run(go(), 60.0)
        return self

    @property
    def playwright(self) -> Playwright:
        """The started Playwright; :class:`LabAgentError` once :meth:`stop` ran (or before :meth:`start`)."""
        if self.pw is None:
            raise LabAgentError("the browser driver is not running", step="browser")
        return self.pw

    def submit(self, coro) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro, timeout: float):
        """``coro``'s result, run on the driver's loop. On a timeout or an interruption
        (KeyboardInterrupt: Ctrl-C, SIGTERM, SIGHUP) the task is cancelled and awaited (up
        to :data:`CANCEL_GRACE` seconds: Playwright aborts what it was doing, a launch
        included) before the exception propagates."""
        box: dict = {}

        async def tracked():
            box["task"] = asyncio.current_task()
            return await coro

        fut = self.submit(tracked())
        try:
            return fut.result(timeout)
        except BaseException:
            self._cancel(box)
            raise

    def _cancel(self, box: dict) -> None:
        # on the loop, after the task's first step (FIFO), so the coroutine has started and unwinds
        async def cancel_and_wait():
            task = box.get("task")
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=CANCEL_GRACE)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.submit(cancel_and_wait()).result(CANCEL_GRACE + 1.0)

    def stop(self) -> None:
        """Stop Playwright's driver (and so every browser process, :func:`supervised_driver`),
        cancel and await what is left on the loop, stop the loop (idempotent, bounded)."""
        if self.pw is not None:
            pw, self.pw = self.pw, None
            with contextlib.suppress(Exception):  # the lab's teardown kills what is left in its namespaces
                self.run(pw.stop(), 15.0)
        if self._thread.is_alive():
            async def cancel_rest():
                rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in rest:
                    t.cancel()
                if rest:
                    await asyncio.wait(rest, timeout=5.0)
                for t in rest:  # retrieved: no "exception was never retrieved" at exit
                    if t.done() and not t.cancelled():
                        t.exception()

            with contextlib.suppress(Exception):
                self.submit(cancel_rest()).result(6.0)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5.0)


class BrowserAgent:
    """A Chromium inside one lab host, with the lab agent operations of :mod:`natkit.lab.peers`.

    ``page_url``: the page every connection runs in (the lab's signaling
    server); ``media``: fake camera and microphone. ``start_ms`` is the
    time from launch to a loaded page, ``launch_ms`` to a connected browser.
    """

    kind = "chromium"

    def __init__(self, driver: BrowserDriver, host: str, ns: str, *, directory: Path, page_url: str | None = None,
                 media: bool = False, secure_origins: Iterable[str] = (), grant: bool = True) -> None:
        self.driver = driver
        self.grant = grant
        self.host = host
        self.ns = ns
        self.directory = Path(directory)
        self.page_url = page_url
        self.media = media
        self.secure_origins = tuple(secure_origins)
        self.browser: Browser | None = None
        self.context: BrowserContext | None = None
        self.page: Page | None = None
        self.console: list[str] = []
        self.launch_ms: float | None = None
        self.start_ms: float | None = None
        self.version: str | None = None

    # ---- lifecycle (on the driver's loop) -------------------------------
    async def launch(self) -> BrowserAgent:
        t = time.monotonic()
        launcher = write_launcher(self.ns, self.directory)
        try:
            browser = await self.driver.playwright.chromium.launch(
                executable_path=str(launcher), args=chromium_flags(secure_origins=self.secure_origins, media=self.media),
                headless=True, timeout=30_000, handle_sigint=False, handle_sigterm=False, handle_sighup=False,
            )
        except Exception as exc:  # noqa: BLE001 - Playwright's errors carry the browser's output
            raise EnvironmentProblem(f"Chromium did not start in {self.ns}: {str(exc).splitlines()[0]}", step="browser",
                                     details=str(exc).splitlines()[:20], hint="is Debian's chromium installed and runnable as this user?") from None
        self.browser = browser
        self.launch_ms = (time.monotonic() - t) * 1000.0
        self.version = browser.version
        self.page = await self.new_page(self.page_url)
        self.start_ms = (time.monotonic() - t) * 1000.0
        return self

    async def new_page(self, url: str | None = None, *, init_scripts: Iterable[str] = ()) -> Page:
        """A fresh context and page with the agent script installed (and ``init_scripts``), at ``url``."""
        if self.browser is None:
            raise LabAgentError(f"the browser on {self.host} is gone", step="page")
        context = await self.browser.new_context()
        if self.grant and self.secure_origins:
            # with camera/microphone permission Chromium enumerates every interface (host candidates
            # with real addresses: mDNS is off); without it, only the default route's address, and a
            # lab host has no default route
            await context.grant_permissions(["camera", "microphone"], origin=self.secure_origins[0])
        await context.add_init_script(script=agent_script())
        for s in init_scripts:
            await context.add_init_script(script=s)
        page = await context.new_page()
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        if url:
            await page.goto(url, timeout=15_000)
        if self.context is None:
            self.context = context
        return page

    async def aclose(self) -> None:
        if self.browser is not None:
            b, self.browser = self.browser, None
            with contextlib.suppress(Exception):  # the namespace teardown kills what is left
                await asyncio.wait_for(b.close(), 5.0)

    def close(self, grace: float = 5.0) -> None:
        with contextlib.suppress(Exception):
            self.driver.run(self.aclose(), grace + 1.0)

    # ---- agent operations -----------------------------------------------
    async def _op(self, op: str, args: dict) -> dict:
        fn = getattr(self, f"_op_{op}", None)
        try:
            if fn is None:
                raise ValueError(f"unknown op {op!r}")
            return {"ok": True, "result": await fn(**args)}
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
            text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            return {"ok": False, "error": f"{exc.__class__.__name__}: {text}", "kind": exc.__class__.__name__}

    async def _op_hello(self) -> dict:
        return {"host": self.host, "agent": "chromium", "version": self.version}

    async def _evaluate(self, expression: str, arg: object) -> dict:
        """``expression(arg)`` in the agent's page (its result, a JSON object)."""
        if self.page is None:
            raise LabAgentError(f"the browser on {self.host} has no page", step="page")
        return await self.page.evaluate(expression, arg)

    @staticmethod
    def _config(ice: list, policy: str | None) -> dict:
        return {"iceServers": ice, "iceTransportPolicy": policy or "all"}

    async def _op_offer(self, conn: str, ice: list, media: dict | None = None, policy: str | None = None) -> dict:
        return await self._evaluate("([c, s, m]) => natkitLab.offer(c, s, m)", [conn, self._config(ice, policy), media])

    async def _op_answer(self, conn: str, ice: list, sdp: str, media: dict | None = None, policy: str | None = None) -> dict:
        return await self._evaluate("([c, s, d, m]) => natkitLab.answer(c, s, d, m)", [conn, self._config(ice, policy), sdp, media])

    async def _op_accept(self, conn: str, sdp: str) -> dict:
        return await self._evaluate("([c, d]) => natkitLab.accept(c, d)", [conn, sdp])

    async def _op_result(self, conn: str, timeout: float, messages: int = 5) -> dict:
        r = await self._evaluate("([c, t, n]) => natkitLab.result(c, t, n)", [conn, timeout, messages])
        r["host"] = self.host
        return r

    async def _op_media(self, conn: str, seconds: float = 5.0) -> dict:
        return await self._evaluate("([c, s]) => natkitLab.media(c, s)", [conn, seconds])

    async def _op_close(self, conn: str) -> dict:
        return await self._evaluate("(c) => natkitLab.close(c)", conn)

    def submit(self, op: str, **args) -> concurrent.futures.Future:
        if self.browser is None:
            raise LabAgentError(f"the browser on {self.host} is gone", step=op)
        return self.driver.submit(self._op(op, args))

    def _result(self, fut: concurrent.futures.Future, timeout: float, op: str) -> dict:
        try:
            msg = fut.result(timeout)
        except concurrent.futures.TimeoutError:
            raise LabAgentError(f"the browser on {self.host} did not answer {op!r} within {timeout:g}s", step=op) from None
        if not msg.get("ok"):
            raise LabAgentError(f"{op} in the browser on {self.host}: {msg.get('error')}", step=op)
        return msg.get("result") or {}

    def call(self, op: str, timeout: float = 30.0, **args) -> dict:
        """Run ``op`` in the page and return its result; raises :class:`LabAgentError`."""
        return self._result(self.submit(op, **args), timeout, op)


class BrowserSession:
    """Browsers in lab hosts plus natkit's signaling server in the lab's server namespace.

    ``with BrowserSession(lab, ["sym1", "prc2"]) as s: s.agent("sym1")``.
    ``hosts`` start concurrently; ``media`` gives them the fake camera and
    microphone. On exit (and on errors while starting) every browser, the
    Playwright driver and the signaling server are stopped; processes left
    in the namespaces are killed by the lab's teardown in any case.
    ``timings``: ``signal_ms``, ``driver_ms``, ``browsers_ms`` (all hosts),
    and per host ``start_ms`` in :attr:`start_ms`.
    """

    def __init__(self, lab, hosts: Iterable[str] = (), *, media: bool = False, signaling: bool = True) -> None:
        self.lab = lab
        self.hosts = list(dict.fromkeys(hosts))
        self.media = media
        self.signaling = signaling
        self.signal: SignalProcess | None = None
        self.driver: BrowserDriver | None = None
        self.agents: dict[str, BrowserAgent] = {}
        self.timings: dict[str, float] = {}
        self.start_ms: dict[str, float] = {}

    @property
    def page_url(self) -> str | None:
        return self.signal.url if self.signal is not None else None

    @property
    def origin(self) -> str | None:
        return self.page_url.rstrip("/") if self.page_url else None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> Self:
        ok, reason = browser_available()
        if not ok:
            raise EnvironmentProblem(reason, step="browser")
        t = time.monotonic()
        if self.signaling:
            self.signal = start_signaling(self.lab)
        self.timings["signal_ms"] = (time.monotonic() - t) * 1000.0
        t = time.monotonic()
        self.driver = BrowserDriver().start()
        self.timings["driver_ms"] = (time.monotonic() - t) * 1000.0
        self.add(self.hosts)
        return self

    def add(self, hosts: Iterable[str]) -> list[BrowserAgent]:
        """Start browsers in ``hosts`` (concurrently) and return their agents."""
        driver = self.driver
        if driver is None:
            raise LabAgentError("the browser session is not started (or already stopped)", step="browser")
        new = [BrowserAgent(driver, h, self.lab.ns(h), directory=self.lab.dir, page_url=self.page_url, media=self.media,
                            secure_origins=[self.origin] if self.origin else []) for h in hosts if h not in self.agents]
        if not new:
            return []
        for a in new:  # stop() closes whatever got launched, even when this is interrupted
            self.agents[a.host] = a
        t = time.monotonic()

        async def launch_all():
            gate = asyncio.Semaphore(LAUNCH_CONCURRENCY)

            async def one(a):
                async with gate:
                    return await a.launch()

            return await asyncio.gather(*(one(a) for a in new), return_exceptions=True)

        results = driver.run(launch_all(), 90.0)  # interrupted: the launches are aborted and awaited
        failed = [(a, r) for a, r in zip(new, results) if isinstance(r, BaseException)]
        for a, r in zip(new, results):
            if not isinstance(r, BaseException) and a.start_ms is not None:
                self.start_ms[a.host] = a.start_ms
        for a, _ in failed:
            if a.browser is None:
                del self.agents[a.host]  # a later agent() tries again
        if failed:
            a, r = failed[0]
            raise r if isinstance(r, EnvironmentProblem) else EnvironmentProblem(f"browser on {a.host}: {r}", step="browser")
        self.timings["browsers_ms"] = self.timings.get("browsers_ms", 0.0) + (time.monotonic() - t) * 1000.0
        return new

    def agent(self, host: str) -> BrowserAgent:
        if host not in self.agents:
            self.add([host])
        return self.agents[host]

    def stop(self) -> None:
        """Close every browser, stop Playwright and the signaling server (idempotent)."""
        if self.driver is not None:
            agents, self.agents = list(self.agents.values()), {}

            async def close_all():
                await asyncio.gather(*(a.aclose() for a in agents), return_exceptions=True)

            with contextlib.suppress(Exception):  # the namespaces' teardown kills what is left
                self.driver.run(close_all(), 10.0)
            self.driver.stop()
            self.driver = None
        if self.signal is not None:
            self.signal.stop()
            self.signal = None


def start_signaling(lab, *args: str):
    """natkit's signaling server (and test page) inside the lab's server namespace on
    203.0.113.10, a free port; returns a started :class:`natkit.signaling.process.SignalProcess`.
    With the lab's coturn, ``/config.json`` hands the page fresh REST credentials."""
    from ..signaling.process import SignalProcess
    from .spec import SERVER_IPS

    extra, env = list(args), {}
    if lab.turn and "--turn" not in extra:
        extra = ["--stun", lab.stun_uri, "--turn", lab.turn_uri(), *extra]
        env["NATKIT_TURN_SECRET"] = lab.secret  # never in argv
    proc = SignalProcess(*extra, host=SERVER_IPS[0], env=env, popen=lambda argv, **kw: lab.popen("server", argv, **kw))
    return proc.start()


# ------------------------------------------------------------------ media calls

SCHEMA_CALL = "natkit.lab.call/1"


@dataclasses.dataclass(frozen=True)
class MediaSide:
    """What one browser received during the measurement window (getStats ``inbound-rtp``).

    Counts are deltas over the window, ``fps`` is frames decoded per second
    over the window, ``jitter_ms`` the RFC 3550 interarrival jitter at its
    end; ``packets_lost`` is the cumulative RTCP-style count (RFC 3550 §6.4.1)
    at the end, ``loss_pct`` the share of packets lost during the window.
    """

    host: str
    selected: tuple[str | None, str | None]  # (local, remote) candidate types of the selected pair
    state: str  # RTCPeerConnection.connectionState at the end
    frames_decoded: int
    fps: float
    frame_size: tuple[int | None, int | None]
    video_packets: int
    packets_lost: int
    loss_pct: float
    jitter_ms: float | None
    audio_packets: int
    audio_lost: int
    freezes: int | None


@dataclasses.dataclass(frozen=True)
class MediaCall:
    """A two-way browser call (fake camera and microphone on both sides), JSON schema ``natkit.lab.call/1``."""

    schema: str
    a: str  # offerer host
    b: str
    turn: bool
    connection: PairResult  # the data channel of the same connection
    window_s: float
    sides: tuple[MediaSide, ...]
    notes: tuple[str, ...] = ()


def _media_side(host: str, m: dict) -> MediaSide:
    v0, v1 = m["start"].get("video", {}), m["end"].get("video", {})
    a0, a1 = m["start"].get("audio", {}), m["end"].get("audio", {})
    d = lambda x, y, k: (y.get(k) or 0) - (x.get(k) or 0)
    window = m.get("seconds") or 1.0
    pk, lost = d(v0, v1, "packets"), d(v0, v1, "lost")
    sel = m.get("selected") or {}
    return MediaSide(
        host=host, selected=((sel.get("local") or {}).get("type"), (sel.get("remote") or {}).get("type")), state=m.get("state", "?"),
        frames_decoded=d(v0, v1, "frames_decoded"), fps=d(v0, v1, "frames_decoded") / window,
        frame_size=(v1.get("width"), v1.get("height")), video_packets=pk, packets_lost=v1.get("lost") or 0,
        loss_pct=100.0 * lost / (pk + lost) if pk + lost > 0 else 0.0, jitter_ms=v1.get("jitter_ms"),
        audio_packets=d(a0, a1, "packets"), audio_lost=a1.get("lost") or 0, freezes=v1.get("freezes"),
    )


def media_call(lab, session: BrowserSession, a: str, b: str, *, seconds: float = 5.0, turn: bool = True, deadline: float = 15.0,
               video: dict | None = None, warmup: float = 1.0, relay_only: bool = False) -> MediaCall:
    """A call from the browser on ``a`` to the one on ``b``: both send Chromium's fake camera
    (``video``: width/height/fps, default 640x480 at 30 fps) and microphone; after the data
    channel echo and ``warmup`` seconds, both measure inbound RTP over ``seconds``.

    ``relay_only``: ``iceTransportPolicy: "relay"`` on both sides (a relay/relay pair; otherwise
    libwebrtc behind two symmetric NATs sends from one side's mapped address to the other's
    relayed one). The session must have been started with ``media=True``. Raises
    :class:`~natkit.errors.LabAgentError` when a browser fails an operation.
    """
    import uuid

    from .peers import ANSWER_DELAY, PairResult, classify_pair, side_from_dict

    media = {"video": video or {"width": 640, "height": 480, "fps": 30}, "audio": True}
    policy = "relay" if relay_only else "all"
    ag_a, ag_b = session.agent(a), session.agent(b)
    conn = uuid.uuid4().hex[:12]
    started = time.monotonic()
    notes: list[str] = []
    try:
        offer = ag_a.call("offer", timeout=deadline + 10, conn=conn, ice=lab.ice_servers(a, turn=turn), media=media, policy=policy)
        answer = ag_b.call("answer", timeout=deadline + 10, conn=conn, ice=lab.ice_servers(b, turn=turn), sdp=offer["sdp"], media=media, policy=policy)
        time.sleep(ANSWER_DELAY)
        ag_a.call("accept", timeout=deadline + 10, conn=conn, sdp=answer["sdp"])
        fa, fb = ag_a.submit("result", conn=conn, timeout=deadline), ag_b.submit("result", conn=conn, timeout=deadline)
        off, ans = side_from_dict(ag_a._result(fa, deadline + 10, "result")), side_from_dict(ag_b._result(fb, deadline + 10, "result"))
        outcome = classify_pair(off, ans)
        pair = PairResult("natkit.lab.pair/1", a, b, turn, outcome, outcome not in ("failed", "inconsistent"), outcome == "relay",
                          off, ans, deadline, (time.monotonic() - started) * 1000.0)
        sides: tuple[MediaSide, ...] = ()
        if pair.ok:
            time.sleep(warmup)
            ma, mb = ag_a.submit("media", conn=conn, seconds=seconds), ag_b.submit("media", conn=conn, seconds=seconds)
            sides = (_media_side(a, ag_a._result(ma, seconds + 15, "media")), _media_side(b, ag_b._result(mb, seconds + 15, "media")))
        else:
            notes += [s.error for s in (off, ans) if s is not None and s.error]
    finally:
        for ag in (ag_a, ag_b):
            with contextlib.suppress(Exception):
                ag.call("close", timeout=5, conn=conn)
    window = min((s_.frames_decoded / s_.fps for s_ in sides if s_.fps), default=seconds) if sides else 0.0
    return MediaCall(SCHEMA_CALL, a, b, turn, pair, window, sides, tuple(notes))


# ------------------------------------------------------------------ pages for the user's own tests (sync API)

#: Recorded RTCPeerConnections (window.__natkitPeerConnections), so a test can read the selected
#: pair of whatever connection the user's app makes, without the app's cooperation.
PC_RECORDER = """(() => {
  const Native = window.RTCPeerConnection;
  if (!Native || Native.__natkit) return;
  const pcs = [];
  function RTCPeerConnection(...args) { const pc = new Native(...args); pcs.push(pc); return pc; }
  RTCPeerConnection.prototype = Native.prototype;
  Object.setPrototypeOf(RTCPeerConnection, Native);
  RTCPeerConnection.__natkit = true;
  window.RTCPeerConnection = RTCPeerConnection;
  window.__natkitPeerConnections = pcs;
})();"""

#: The selected pair of every recorded connection: [{state, local, remote}] (candidate types from getStats).
SELECTED_PAIRS_JS = """async () => {
  const out = [];
  for (const pc of window.__natkitPeerConnections || []) {
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
    const t = (id) => (stats.get(id) || {}).candidateType || null;
    out.push({ state: pc.connectionState, local: pair ? t(pair.localCandidateId) : null, remote: pair ? t(pair.remoteCandidateId) : null });
  }
  return out;
}"""


@dataclasses.dataclass(frozen=True)
class LabPageInfo:
    """What a page behind a lab NAT is given (also as ``window.NATKIT`` in the page).

    ``ice_servers``: RTCIceServer dicts (the lab's STUN server and coturn with
    fresh TURN REST credentials, RFC 8489 / draft-uberti-rtcweb-turn-rest);
    ``stun_uri``, ``turn_uri``, ``username``, ``credential`` the same pieces.
    """

    host: str
    behaviour: str
    namespace: str
    address: str | None
    ice_servers: list
    stun_uri: str
    turn_uri: str | None
    username: str | None
    credential: str | None

    def script(self) -> str:
        import json

        return "window.NATKIT = Object.freeze(" + json.dumps(dataclasses.asdict(self) | {"iceServers": self.ice_servers}) + ");"


class SyncBrowsers:
    """Chromium in lab hosts through Playwright's *sync* API (for the pytest fixtures:
    the objects belong to the thread that made them). One browser per host, launched
    on first use; :meth:`page` returns a fresh context's page. :meth:`stop` closes all."""

    def __init__(self, lab, *, media: bool = False) -> None:
        self.lab = lab
        self.media = media
        self._pw: SyncPlaywright | None = None
        self.browsers: dict[str, SyncBrowser] = {}
        self.start_ms: dict[str, float] = {}
        self.pages: list = []

    def start(self) -> Self:
        from playwright.sync_api import sync_playwright

        ok, reason = browser_available()
        if not ok:
            raise EnvironmentProblem(reason, step="browser")
        with supervised_driver():
            self._pw = sync_playwright().start()
        return self

    def info(self, host: str, *, turn: bool = True) -> LabPageInfo:
        servers = self.lab.ice_servers(host, turn=turn and self.lab.turn)
        turn_srv = next((s for s in servers if "username" in s), None)
        return LabPageInfo(host, self.lab.spec.behaviour_of(host), self.lab.ns(host), self.lab.ip(host), servers, self.lab.stun_uri,
                           turn_srv["urls"][0] if turn_srv else None, turn_srv and turn_srv["username"], turn_srv and turn_srv["credential"])

    def browser(self, host: str, secure_origins: Iterable[str] = ()) -> SyncBrowser:
        if self._pw is None:
            raise LabAgentError("the browsers are not started (or already stopped)", step="browser")
        if host not in self.browsers:
            t = time.monotonic()
            launcher = write_launcher(self.lab.ns(host), self.lab.dir)
            try:
                self.browsers[host] = self._pw.chromium.launch(
                    executable_path=str(launcher), args=chromium_flags(secure_origins=secure_origins, media=self.media),
                    headless=True, timeout=30_000, handle_sigint=False, handle_sigterm=False, handle_sighup=False)
            except Exception as exc:  # noqa: BLE001
                raise EnvironmentProblem(f"Chromium did not start in {self.lab.ns(host)}: {str(exc).splitlines()[0]}", step="browser") from None
            self.start_ms[host] = (time.monotonic() - t) * 1000.0
        return self.browsers[host]

    def page(self, host: str, url: str | None = None, *, turn: bool = True):
        """A page in ``host``'s browser with ``window.NATKIT`` (:class:`LabPageInfo`) and the
        connection recorder installed, at ``url``; ``page.natkit`` is the same info."""
        from urllib.parse import urlsplit

        origin = None
        if url:
            u = urlsplit(url)
            origin = f"{u.scheme}://{u.netloc}"
        b = self.browser(host, [origin] if origin else [])
        context = b.new_context()
        if origin:
            context.grant_permissions(["camera", "microphone"], origin=origin)
        info = self.info(host, turn=turn)
        context.add_init_script(script=info.script())
        context.add_init_script(script=PC_RECORDER)
        page: Any = context.new_page()  # a Playwright Page that also carries natkit and console_lines
        page.natkit = info
        page.console_lines = []
        page.on("console", lambda m: page.console_lines.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: page.console_lines.append(f"pageerror: {e}"))
        self.pages.append(page)
        if url:
            page.goto(url, timeout=15_000)
        return page

    def stop(self) -> None:
        for b in self.browsers.values():
            with contextlib.suppress(Exception):
                b.close()
        self.browsers = {}
        if self._pw is not None:
            pw, self._pw = self._pw, None
            with contextlib.suppress(Exception):
                pw.stop()


def selected_pairs(page) -> list[dict]:
    """``[{state, local, remote}]`` for every RTCPeerConnection the page made (candidate types)."""
    return page.evaluate(SELECTED_PAIRS_JS)


def page_outcome(pairs_a: list[dict], pairs_b: list[dict]) -> str:
    """The outcome of a two-page app from both pages' connected connections (pure):
    ``relay``, ``direct prflx``, ``direct srflx``, ``direct host``, ``inconsistent`` or ``failed``."""
    ca = [p for p in pairs_a if p.get("state") == "connected" and p.get("local")]
    cb = [p for p in pairs_b if p.get("state") == "connected" and p.get("local")]
    if not ca or not cb:
        return "failed"
    a, b = ca[-1], cb[-1]
    ra, rb = "relay" in (a["local"], a["remote"]), "relay" in (b["local"], b["remote"])
    if ra and rb:
        return "relay"
    if ra or rb:
        return "inconsistent"
    types = {a["remote"], b["remote"]}
    return "direct prflx" if "prflx" in types else "direct srflx" if "srflx" in types else "direct host"


# ------------------------------------------------------------------ the user's server in the server namespace

@dataclasses.dataclass
class LabServer:
    """A process of the user's (static files, a dev server, a signaling server) in the lab's
    server namespace, listening on ``host``:``port``; ``url`` is what pages behind the NATs open."""

    host: str
    port: int
    url: str
    proc: subprocess.Popen
    log: Path

    @property
    def origin(self) -> str:
        return self.url.rstrip("/")

    def stop(self) -> None:
        from ..signaling.process import _stop

        _stop(self.proc, 3.0)


def start_server(lab, command=None, *, static: str | os.PathLike | None = None, port: int | None = None,
                 ready_timeout: float = 15.0, env: dict | None = None) -> LabServer:
    """Start the user's server inside the lab's server namespace on 203.0.113.10.

    ``command``: argv whose items may contain ``{host}`` and ``{port}``
    (also given as ``$HOST``/``$PORT``, and ``$NATKIT_STUN_URI``,
    ``$NATKIT_TURN_URI``, ``$NATKIT_TURN_SECRET`` so it can mint TURN REST
    credentials itself); or ``static``: a directory served by Python's
    ``http.server``. Waits until the port listens (TCP) and raises
    :class:`~natkit.errors.ServerStartFailed` with the server's output when
    it exits or does not listen within ``ready_timeout`` seconds.
    """
    import random
    import subprocess

    from ..coturn.native import listeners
    from ..errors import ServerStartFailed, UsageError
    from .spec import SERVER_IPS

    if (command is None) == (static is None):
        raise UsageError("start_server needs a command or a static directory, not both")
    host = SERVER_IPS[0]
    port = port or random.randint(20_000, 40_000)
    if static is not None:
        command = ["python", "-m", "http.server", "{port}", "--bind", "{host}", "--directory", str(static)]
    argv = [str(a).format(host=host, port=port) for a in command]
    log = lab.dir / f"server-{port}.log"
    full_env = {**os.environ, "HOST": host, "PORT": str(port), "NATKIT_STUN_URI": lab.stun_uri, **(env or {})}
    if lab.turn:
        full_env.update({"NATKIT_TURN_URI": lab.turn_uri(), "NATKIT_TURN_SECRET": lab.secret})
    with open(log, "wb") as out:
        proc = lab.popen("server", argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    deadline = time.monotonic() + ready_timeout
    while True:
        tcp = listeners(proc.pid, (4,))  # the sockets of the server's namespace, seen through /proc/PID/net
        if ("tcp", host, port) in tcp or ("tcp", "0.0.0.0", port) in tcp:
            return LabServer(host, port, f"http://{host}:{port}/", proc, log)
        if proc.poll() is not None or time.monotonic() > deadline:
            from ..signaling.process import _stop

            _stop(proc, 2.0)
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            what = f"exited with code {proc.returncode}" if proc.returncode is not None else f"did not listen on {host}:{port} within {ready_timeout:g}s"
            raise ServerStartFailed(f"{argv[0]} {what} in the lab's server namespace", step="server", details=tail)
        time.sleep(0.02)
