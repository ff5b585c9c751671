"""natkit's pytest plugin (entry point ``pytest11: natkit``).

Fixtures:

- ``turn_server``: a coturn on 127.0.0.1 (backend from ``NATKIT_TEST_BACKEND``,
  default native; with docker, ``NATKIT_TEST_IMAGE`` or an image built offline
  from the host's turnserver), started once per session, with REST
  credentials; yields a :class:`TurnServerHandle`.
- ``nat_lab``: a factory of real NAT labs in network namespaces
  (:class:`natkit.lab.NatLab`), torn down when the test ends;
  ``nat_lab("open", turn=False)`` runs the lab's coturn STUN-only.
- ``nat_matrix_lab``: one session lab with two hosts per NAT behaviour.
- ``nat_pair``: two peers behind the behaviours of ``@pytest.mark.nat(a, b,
  expect=...)`` (or indirect parametrisation); ``.connect()`` / ``.check()``.
- ``nat_browser``: Playwright pages in a Debian Chromium inside lab hosts
  (``nat_browser("symmetric")``), the lab's ICE servers as ``window.NATKIT``;
  ``nat_server``: the user's server in the lab's server namespace;
  ``nat_browsers`` + ``@pytest.mark.nat_browsers(a, b, expect=...)``: two
  pages and an assertion on how their own connections connected.

Helpers: ``require_coturn``/``require_docker``/``require_root_netns``/``require_lab``
(skip, or fail in CI), ``wait_for_stun`` (the readiness of a server a test
started by hand).

docs/pytest-plugin.md has the reference table of every fixture, attribute
and environment variable; docs/lab.md how the NATs are built and the
expected matrix.

Environment switches: without root/namespaces/coturn/Docker the fixtures skip
with the reason; with ``NATKIT_REQUIRE_NETNS=1`` (root, namespaces, coturn) or
``NATKIT_REQUIRE_DOCKER=1`` (a Docker engine) or ``NATKIT_REQUIRE_BROWSER=1``
(chromium and playwright) they fail instead, so CI cannot pass by skipping.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest


def _require(env: str, ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get(env) == "1":
        pytest.fail(f"{reason} (and {env}=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


def require_coturn() -> None:
    """Skip (fail under NATKIT_REQUIRE_NETNS=1) when turnserver is not installed."""
    from natkit.coturn.native import find_binary

    _require("NATKIT_REQUIRE_NETNS", find_binary() is not None, "coturn's turnserver binary is not installed")


def require_root_netns() -> None:
    """Skip (fail under NATKIT_REQUIRE_NETNS=1) without root, iproute2 and nft."""
    ok = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("nft") is not None
    _require("NATKIT_REQUIRE_NETNS", ok, "needs root, iproute2 and nftables for network namespaces")


def require_docker() -> None:
    """Skip (fail under NATKIT_REQUIRE_DOCKER=1) when no Docker engine answers."""
    from natkit.coturn import docker as backend

    ok, reason = backend.available()
    _require("NATKIT_REQUIRE_DOCKER", ok, f"no usable Docker engine: {reason}")


@dataclasses.dataclass
class TurnServerHandle:
    """A running coturn for tests.

    ``uri``: ``turn:127.0.0.1:PORT`` (UDP); ``uris``: every TURN URI it serves
    (UDP, TCP); ``secret``: the REST shared secret; ``host``: ``127.0.0.1``;
    ``port``: the listening port; ``backend``: ``native`` or ``docker``;
    ``server``: the :class:`natkit.CoturnServer`; ``stun_uri``:
    ``stun:127.0.0.1:PORT``.
    """

    uri: str
    uris: tuple[str, ...]
    secret: str
    host: str
    port: int
    backend: str
    server: object
    stun_uri: str = ""

    def credentials(self, user: str = "test", ttl: int = 600):
        """A fresh REST credential (:class:`natkit.credentials.RestCredential`) for
        ``user``, valid ``ttl`` seconds (coturn's TURN REST API, ``use-auth-secret``)."""
        from natkit.credentials import mint

        return mint(self.secret, user, ttl)


@pytest.fixture(scope="session")
def turn_server(tmp_path_factory):
    """A coturn on 127.0.0.1 with REST auth and loopback relaying allowed, for the whole session."""
    require_coturn()
    from natkit.coturn.config import CoturnConfig
    from natkit.coturn.server import CoturnServer, free_port
    from natkit.credentials import new_secret

    secret = new_secret()
    port = free_port()
    config = CoturnConfig(
        listening_port=port, static_auth_secrets=(secret,), allow_loopback_peers=True,
        allowed_peer_ranges=("127.0.0.1",), realm="natkit.test",
    )
    backend = os.environ.get("NATKIT_TEST_BACKEND", "native")
    image = os.environ.get("NATKIT_TEST_IMAGE")
    if backend == "docker" and not image:
        from natkit.coturn.image import build_local_image

        image = build_local_image("natkit/coturn:pytest")
    # its own state directory (the environment's NATKIT_STATE_DIR is the tests' business), and
    # ephemeral: a killed test session leaves an orphan the next natkit start removes
    server = CoturnServer(config, backend=backend, image=image, name=f"pytest-{port}", ephemeral=True,
                          state_dir=tmp_path_factory.mktemp("natkit-turn-server"))
    try:
        info = server.start()
        yield TurnServerHandle(info.uris[0], info.uris, secret, "127.0.0.1", port, info.backend, server,
                               stun_uri=f"stun:127.0.0.1:{port}")
    finally:
        server.stop()


def wait_for_stun(host: str, port: int, *, timeout: float = 15.0, process=None, log=None) -> float:
    """Wait until a STUN server you started yourself answers a Binding on ``host:port``; return the seconds waited.

    STUN readiness (:func:`natkit.coturn.readiness.wait_stun`).
    ``process`` (a ``subprocess.Popen``): fail as soon as it exits; ``log``
    (a path): its last lines go into the failure. Fails the test
    (``pytest.fail``) when the server exits or ``timeout`` seconds pass.
    """
    from pathlib import Path

    from natkit.coturn.readiness import wait_stun
    from natkit.errors import ServerStartFailed
    from natkit.model import TransportAddress

    def tail() -> list[str]:
        try:
            return Path(log).read_text(errors="replace").splitlines()[-15:] if log else []
        except OSError:
            return []

    try:
        return wait_stun(TransportAddress(host, port), timeout, alive=(lambda: process.poll() is None) if process else None,
                         logs=tail, what=f"the server on {host}:{port}", step="wait_for_stun")
    except ServerStartFailed as exc:
        pytest.fail("\n".join([exc.message, *exc.details]), pytrace=False)


# ---------------------------------------------------------------------------
# natkit lab: real NATs in network namespaces (root). See docs/pytest-plugin.md.
# ---------------------------------------------------------------------------

NAT_MARKER = (
    "nat(a, b, expect=None, turn=True, deadline=10.0): run the test's nat_pair between a host behind "
    "NAT behaviour a and one behind b (open, full_cone, restricted, port_restricted, symmetric); "
    "expect: direct | direct (prflx) | relay | failed (default: the expected matrix of docs/lab.md)"
)


def pytest_configure(config):
    config.addinivalue_line("markers", NAT_MARKER)
    config.addinivalue_line("markers", NAT_BROWSERS_MARKER)


def require_lab(turn: bool = True) -> None:
    """Skip (fail under NATKIT_REQUIRE_NETNS=1) unless labs can be built here (and coturn runs, with ``turn``)."""
    require_root_netns()
    if turn:
        require_coturn()


@pytest.fixture
def nat_lab():
    """A factory for labs that are torn down when the test ends, passed or failed.

    ``nat_lab(spec_or_behaviours, **NatLab options) -> NatLab`` where the first
    argument is a :class:`natkit.lab.LabSpec` or behaviour names
    (``nat_lab("symmetric", "port_restricted")``: hosts ``sym1`` and ``prc1``).
    Options: ``turn`` (False: STUN-only server), ``stun`` (False with
    ``turn=False``: no server, needs ``verify=False``), ``verify``, ``agents``,
    ``name``, ``agent_env``, ``persistent`` (see :class:`natkit.lab.NatLab`).
    """
    from natkit.lab import LabSpec, NatLab

    labs = []

    def make(*spec, **kw):
        require_lab(kw.get("turn", True) or kw.get("stun", True))
        if len(spec) == 1 and isinstance(spec[0], LabSpec):
            lab_spec = spec[0]
        else:
            lab_spec = LabSpec.peers(*spec)
        lab = NatLab(lab_spec, **kw)
        labs.append(lab)
        return lab.up()

    try:
        yield make
    finally:
        for lab in reversed(labs):
            lab.down()


@pytest.fixture(scope="session")
def nat_matrix_lab():
    """One lab for the whole session with two hosts per NAT behaviour (``open1``,
    ``open2``, ``fc1``, ``fc2``, ``rc1``, ``rc2``, ``prc1``, ``prc2``, ``sym1``,
    ``sym2``), every NAT verified; torn down at the end of the session."""
    require_lab(True)
    from natkit.lab import LabSpec, NatLab

    lab = NatLab(LabSpec.matrix())
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


class NatPair:
    """Two hosts of the session lab behind the NAT behaviours of a ``nat`` marker.

    ``a`` offers (ICE controlling), ``b`` answers: host names in ``lab`` (the
    session's ``nat_matrix_lab``); ``behaviours``: the two normalised
    behaviours; ``expect``: the marker's expectation or the expected matrix;
    ``turn``, ``deadline`` (seconds): the marker's options. :meth:`connect`
    runs one attempt and returns a :class:`natkit.lab.PairResult`;
    :meth:`check` also asserts the expected outcome.
    """

    def __init__(self, lab, a: str, b: str, *, expect=None, turn: bool = True, deadline: float = 10.0) -> None:
        from natkit.lab.matrix import hosts_for
        from natkit.lab.spec import expected_outcome, normalise_behaviour

        self.lab = lab
        self.behaviours = (normalise_behaviour(a), normalise_behaviour(b))
        self.a, self.b = hosts_for(*self.behaviours)
        self.turn = turn
        self.deadline = deadline
        self.expect = _normalise_expect(expect) if expect else expected_outcome(*self.behaviours, turn=turn)

    def connect(self, *, turn: bool | None = None, deadline: float | None = None):
        """One WebRTC attempt a -> b (data channel echo) through the lab."""
        return self.lab.connect(self.a, self.b, turn=self.turn if turn is None else turn,
                                deadline=self.deadline if deadline is None else deadline)

    def check(self, *, turn: bool | None = None, deadline: float | None = None):
        """:meth:`connect`, then assert the outcome matches ``expect``; returns the result."""
        from natkit.lab.spec import RELAY, outcome_matches

        result = self.connect(turn=turn, deadline=deadline)
        ok = outcome_matches(self.expect, result.outcome) and (self.expect != RELAY or result.relay_proven)
        if not ok:
            side = lambda s: "none" if s is None else f"{s.local_type}/{s.remote_type}"  # noqa: E731
            pytest.fail(
                f"{self.behaviours[0]} x {self.behaviours[1]} ({'STUN+TURN' if result.turn else 'STUN only'}): "
                f"expected {self.expect}, got {result.outcome} "
                f"(nominated pairs {self.a}: {side(result.offerer)}, {self.b}: {side(result.answerer)}"
                + (f"; {'; '.join(result.notes)}" if result.notes else "") + ")",
                pytrace=False,
            )
        return result


def _normalise_expect(expect: str) -> str:
    e = expect.strip().lower().replace("_", " ")
    aliases = {"prflx": "direct (prflx)", "direct prflx": "direct (prflx)", "direct(prflx)": "direct (prflx)", "fail": "failed"}
    e = aliases.get(e, e)
    if e not in ("direct", "direct (prflx)", "relay", "failed", "direct host", "direct srflx"):
        raise pytest.UsageError(f"nat marker: unknown expect={expect!r} (direct, direct (prflx), relay, failed)")
    return e


@pytest.fixture
def nat_pair(request):
    """The peer-pair helper for a ``@pytest.mark.nat(a, b, expect=...)`` test (a :class:`NatPair`).

    Also usable with indirect parametrisation:
    ``@pytest.mark.parametrize("nat_pair", [("symmetric", "open")], indirect=True)``
    (a tuple ``(a, b)`` or a dict with ``a``, ``b``, ``expect``, ``turn``, ``deadline``).
    """
    param = getattr(request, "param", None)
    marker = request.node.get_closest_marker("nat")
    if isinstance(param, dict):
        args, kwargs = (param["a"], param["b"]), {k: v for k, v in param.items() if k not in ("a", "b")}
    elif isinstance(param, (tuple, list)):
        args, kwargs = tuple(param[:2]), {}
    elif marker is not None:
        args, kwargs = marker.args, dict(marker.kwargs)
    else:
        raise pytest.UsageError("nat_pair needs @pytest.mark.nat(a, b, ...) or indirect parametrisation")
    if len(args) != 2:
        raise pytest.UsageError(f"nat marker takes two NAT behaviours, got {args!r}")
    unknown = set(kwargs) - {"expect", "turn", "deadline"}
    if unknown:
        raise pytest.UsageError(f"nat marker: unknown options {sorted(unknown)}")
    lab = request.getfixturevalue("nat_matrix_lab")
    return NatPair(lab, *args, **kwargs)


# ---------------------------------------------------------------------------
# Real browsers behind the lab's NATs (Chromium in host namespaces). See docs/pytest-plugin.md.
# ---------------------------------------------------------------------------


def require_browser() -> None:
    """Skip (fail under NATKIT_REQUIRE_BROWSER=1) without Debian's chromium and the playwright package."""
    from natkit.lab.browser import browser_available

    ok, reason = browser_available()
    _require("NATKIT_REQUIRE_BROWSER", ok, reason)


NAT_BROWSERS_MARKER = (
    "nat_browsers(a, b, expect=None, turn=True): the test's nat_browsers fixture puts one Chromium behind NAT "
    "behaviour a and one behind b; nat_browsers.check() asserts how the pages' own RTCPeerConnections connected "
    "(direct | direct (prflx) | relay | failed; default: the expected matrix)"
)


def _lab_for(request, lab):
    return lab if lab is not None else request.getfixturevalue("nat_matrix_lab")


def _pick_host(lab, what: str, taken: set) -> str:
    """A host of ``lab`` by name, or the first free one behind NAT behaviour ``what``."""
    if what in lab.hosts:
        return what
    from natkit.lab.spec import normalise_behaviour

    b = normalise_behaviour(what)
    for h in lab.hosts:
        if lab.spec.behaviour_of(h) == b and h not in taken:
            return h
    raise pytest.UsageError(f"no free host behind a {b} NAT in lab {lab.name} (hosts: {', '.join(lab.hosts)})")


@pytest.fixture
def nat_browser(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """A factory of Playwright ``Page``\\ s inside lab hosts: ``nat_browser("symmetric", url=None, lab=None, media=False)``.

    The first argument is a NAT behaviour (the next free host behind one in the
    session's matrix lab, or in ``lab``) or a host name. The page runs in a
    Debian Chromium living in that host's network namespace; ``window.NATKIT``
    and ``page.natkit`` hold the lab's ``iceServers`` (STUN, and TURN with fresh
    REST credentials), ``stun_uri``, ``turn_uri``, ``username``, ``credential``.
    ``url`` (e.g. from ``nat_server``) is opened and treated as a secure context.
    Browsers are closed when the test ends.
    """
    require_browser()
    from natkit.lab.browser import SyncBrowsers

    sessions: dict = {}
    taken: set = set()

    def make(what: str, *, url: str | None = None, lab=None, media: bool = False, turn: bool = True):
        the_lab = _lab_for(request, lab)
        host = _pick_host(the_lab, what, taken)
        taken.add(host)
        key = (the_lab.name, media)
        if key not in sessions:
            sessions[key] = SyncBrowsers(the_lab, media=media).start()
        return sessions[key].page(host, url, turn=turn)

    try:
        yield make
    finally:
        for s in sessions.values():
            s.stop()


@pytest.fixture
def nat_server(request):
    """A factory that runs your server in the lab's server namespace (203.0.113.10), stopped at test end.

    ``nat_server(["python", "app.py", "--port", "{port}"])`` or ``nat_server(static="site/")``;
    optional ``port``, ``lab``, ``env``. Returns a :class:`natkit.lab.browser.LabServer` (``url``,
    ``host``, ``port``, ``log``). The process also gets ``$HOST``, ``$PORT``, ``$NATKIT_STUN_URI``,
    ``$NATKIT_TURN_URI`` and ``$NATKIT_TURN_SECRET``.
    """
    from natkit.lab.browser import start_server

    servers = []

    def make(command=None, *, static=None, port=None, lab=None, env=None):
        srv = start_server(_lab_for(request, lab), command, static=static, port=port, env=env)
        servers.append(srv)
        return srv

    try:
        yield make
    finally:
        for srv in servers:
            srv.stop()


class NatBrowsers:
    """Two Chromium pages behind the NATs of a ``nat_browsers`` marker: ``open(url)`` -> (a, b)."""

    def __init__(self, factory, a: str, b: str, *, expect=None, turn: bool = True) -> None:
        from natkit.lab.spec import expected_outcome, normalise_behaviour

        self._factory = factory
        self.behaviours = (normalise_behaviour(a), normalise_behaviour(b))
        self.turn = turn
        self.expect = _normalise_expect(expect) if expect else expected_outcome(*self.behaviours, turn=turn)
        self.pages: tuple = ()

    def open(self, url: str, *, stagger: float = 0.0):
        """Open ``url`` in the page behind ``a``, then in the one behind ``b``; returns both pages."""
        import time

        a = self._factory(self.behaviours[0], url=url, turn=self.turn)
        if stagger:
            time.sleep(stagger)
        b = self._factory(self.behaviours[1], url=url, turn=self.turn)
        self.pages = (a, b)
        return a, b

    def outcome(self, timeout: float = 20.0) -> str:
        """Wait (at most ``timeout`` s) until both pages have a connected RTCPeerConnection; the
        outcome from their selected pairs (:func:`natkit.lab.browser.page_outcome`)."""
        import time

        from natkit.lab.browser import page_outcome, selected_pairs

        deadline = time.monotonic() + timeout
        while True:
            got = page_outcome(selected_pairs(self.pages[0]), selected_pairs(self.pages[1]))
            if got != "failed" or time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def check(self, timeout: float = 20.0) -> str:
        """:meth:`outcome`, asserted against ``expect``; returns it."""
        from natkit.lab.spec import outcome_matches

        got = self.outcome(timeout if self.expect != "failed" else min(timeout, 10.0))
        if not outcome_matches(self.expect, got):
            from natkit.lab.browser import selected_pairs

            pytest.fail(f"{self.behaviours[0]} x {self.behaviours[1]} in the browser: expected {self.expect}, got {got} "
                        f"(pairs {selected_pairs(self.pages[0])} / {selected_pairs(self.pages[1])})", pytrace=False)
        return got


@pytest.fixture
def nat_browsers(request, nat_browser):
    """Two pages behind the NATs of ``@pytest.mark.nat_browsers(a, b, expect=..., turn=True)`` (a :class:`NatBrowsers`)."""
    marker = request.node.get_closest_marker("nat_browsers")
    if marker is None or len(marker.args) != 2:
        raise pytest.UsageError("nat_browsers needs @pytest.mark.nat_browsers(a, b, expect=...)")
    unknown = set(marker.kwargs) - {"expect", "turn"}
    if unknown:
        raise pytest.UsageError(f"nat_browsers marker: unknown options {sorted(unknown)}")
    return NatBrowsers(nat_browser, *marker.args, **marker.kwargs)
