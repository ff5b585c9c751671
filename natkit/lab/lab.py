"""``NatLab``: a running lab (namespaces + coturn + agents) as a context manager.

::

    from natkit.lab import LabSpec, NatLab

    with NatLab(LabSpec.peers("symmetric", "port_restricted")) as lab:
        result = lab.connect("sym1", "prc1", turn=True)
        assert result.outcome == "relay"

``up()`` builds the namespaces, starts coturn inside the server namespace
(two addresses, so it answers RFC 5780; STUN only with ``turn=False``),
starts one agent per host and measures every host's NAT end to end; a NAT that does not behave as
declared raises :class:`LabVerificationFailed` and the lab is torn down.
``down()`` (also on exceptions, Ctrl-C and SIGTERM while the lab is up)
stops every process it started and deletes every namespace.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import secrets
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Callable, Self

from ..errors import LabVerificationFailed, NatkitError, ServerStartFailed, UsageError
from ..nat_classify import Mapping
from ..ownership import process_start_time
from . import netns
from .netns import LabError
from .spec import SERVER_IPS, LabSpec, Plan, classify, effective_behaviour, plan, word

if TYPE_CHECKING:
    from ..coturn.server import CoturnServer
    from ..credentials import RestCredential
    from .peers import AgentClient

SCHEMA_CHECK = "natkit.lab.check/1"


@dataclasses.dataclass(frozen=True)
class HostCheck:
    """The end-to-end measurement of one host against what its NAT chain declares."""

    host: str
    declared: str  # behaviour of the innermost box (open without one)
    expected: dict  # mapping, filtering, hairpin, udp_blocked (None: not predicted)
    measured: dict  # what the probe saw (see natkit.lab.peers.measure_nat)
    measured_label: str  # classic name of the measured mapping/filtering
    problems: tuple[str, ...]  # empty when the host behaves as declared
    ok: bool


def judge(expected: dict, measured: dict) -> list[str]:
    """Compare a host's measurement with its expectation (pure); returns the problems.

    An open host must see its own address (no NAT); a NATed host's mapping
    and filtering must equal the declared RFC 4787 behaviours; hairpinning is
    compared when both sides know it; ``udp_blocked`` means no UDP answer but
    a working STUN over TCP.
    """
    problems = []
    if expected.get("udp_blocked"):
        if measured.get("udp"):
            problems.append("UDP is declared blocked but a STUN Binding over UDP was answered")
        if measured.get("tcp") is False:
            problems.append("STUN over TCP does not work either (TURN over TCP would fail)")
        return problems
    if not measured.get("udp"):
        return ["no STUN answer over UDP from the lab server" + _notes(measured)]
    if expected.get("mapping") in (None, Mapping.NONE):
        if measured.get("nat"):
            problems.append(f"declared open, but the server saw {measured.get('public')} for local {measured.get('local')}")
        return problems
    if not measured.get("nat"):
        problems.append(f"declared behind a NAT, but the server saw the host's own address {measured.get('public')}")
        return problems
    for key in ("mapping", "filtering"):
        if measured.get(key) != expected[key]:
            problems.append(f"{key}: declared {word(expected[key])}, measured {measured.get(key) or 'unknown'}"
                            + (_notes(measured) if not measured.get(key) else ""))
    if expected.get("hairpin") is not None and measured.get("hairpin") is not None and measured["hairpin"] != expected["hairpin"]:
        problems.append(f"hairpinning: declared {'on' if expected['hairpin'] else 'off'}, measured {'on' if measured['hairpin'] else 'off'}")
    return problems


def _notes(measured: dict) -> str:
    notes = measured.get("notes") or []
    return f" ({'; '.join(notes[:2])})" if notes else ""


_LIVE: weakref.WeakSet[NatLab] = weakref.WeakSet()


@atexit.register
def _teardown_leftovers() -> None:  # a lab never closed by its owner still goes away
    for lab in list(_LIVE):
        if not lab.persistent:
            lab.down()


class NatLab:
    """A lab built from a :class:`LabSpec`.

    ``name``: lab id (default: the spec's, else random); ``turn``: the lab's
    coturn also relays (TURN); with ``turn=False`` it runs as a STUN server only
    (coturn's ``stun-only``: srflx candidates, RFC 5780 verification, no relay);
    ``stun=False`` together with ``turn=False``: no server process at all
    (then ``verify`` must be False); ``verify``: measure every host's NAT at
    start; ``persistent``: leave the lab running when this object goes away
    (``natkit lab up``); ``agents``: keep one agent per host running for
    :meth:`connect` (else they stop after verification).

    Raises :class:`UsageError` for ``verify=True`` without a STUN server.
    """

    def __init__(self, spec: LabSpec, *, name: str | None = None, turn: bool = True, verify: bool = True,
                 persistent: bool = False, agents: bool = True, agent_env: dict | None = None, stun: bool = True) -> None:
        spec.validate()
        self.spec = spec
        self.name = name or spec.name or secrets.token_hex(3)
        self.plan: Plan = plan(spec, self.name)
        self.turn = turn and spec.server.turn
        self.stun = stun or self.turn  # coturn runs in the server namespace (STUN only without turn)
        if verify and not self.stun:
            raise UsageError("verification needs the lab's STUN server, and stun=False runs none",
                             hint="keep stun=True (the default; turn=False still runs a STUN-only coturn) or pass verify=False")
        self.do_verify = verify
        self.persistent = persistent
        self.keep_agents = agents
        self.agent_env = dict(agent_env or {})
        self.secret = secrets.token_urlsafe(24)
        self.dir = netns.lab_dir(self.name)
        self.timings: dict[str, float] = {}
        self.checks: tuple[HostCheck, ...] = ()
        self._agents: dict[str, AgentClient] = {}
        self._agent_lock = threading.Lock()
        self._procs: list[subprocess.Popen] = []
        self._coturn: CoturnServer | None = None  # once started
        self._up = False
        # the SIGTERM handler this lab replaced (signal.getsignal's values), while it is up
        self._old_sigterm: Callable[[int, FrameType | None], object] | int | None = None

    # ---- naming ---------------------------------------------------------
    def ns(self, node: str) -> str:
        """The namespace of a node (host, NAT box, "server" or "internet")."""
        return self.plan.node(node).ns

    def ip(self, node: str) -> str | None:
        """The node's own address: a host's ``eth0`` (a LAN address behind a NAT),
        a NAT box's public (WAN) side, the server's first address; None for the
        internet bridge. What a peer elsewhere sees for a host is measured, not
        planned: see :attr:`checks` (``measured["public"]``)."""
        return self.plan.node(node).ip

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.spec.hosts)

    @property
    def server_ips(self) -> tuple[str, str]:
        """The server namespace's two addresses (203.0.113.10, 203.0.113.11): coturn
        listens on both, on ``port`` and ``port + 1`` (RFC 5780 alternate address and port)."""
        return SERVER_IPS

    @property
    def stun_uri(self) -> str:
        """``stun:203.0.113.10:PORT`` (PORT: the spec's server port, 3478 by default)."""
        return f"stun:{SERVER_IPS[0]}:{self.spec.server.port}"

    def turn_uri(self, transport: str = "udp") -> str:
        """``turn:203.0.113.10:PORT?transport=udp|tcp``; REST credentials from :meth:`credentials`."""
        return f"turn:{SERVER_IPS[0]}:{self.spec.server.port}?transport={transport}"

    def credentials(self, user: str = "lab", ttl: int = 3600) -> RestCredential:
        """A TURN REST credential for the lab's coturn (:class:`natkit.credentials.RestCredential`)."""
        from ..credentials import mint

        return mint(self.secret, user, ttl)

    def ice_servers(self, host: str, *, turn: bool = True) -> list[dict]:
        """ICE servers for a peer on ``host``: the lab STUN server (none with
        ``stun=False``), and with ``turn`` the lab coturn (over TCP when the
        host's UDP is blocked). Raises :class:`UsageError` for ``turn`` in a
        lab built with ``turn=False``."""
        servers: list[dict[str, str | list[str]]] = [{"urls": [self.stun_uri]}] if self.stun else []
        if turn:
            if not self.turn:
                raise UsageError("this lab runs no TURN server", hint="build it with turn=True")
            transport = "tcp" if effective_behaviour(self.spec, host)["udp_blocked"] else "udp"
            cred = self.credentials(f"lab-{host}")
            servers.append({"urls": [self.turn_uri(transport)], "username": cred.username, "credential": cred.password})
        return servers

    # ---- lifecycle ------------------------------------------------------
    def __enter__(self) -> Self:
        return self.up()

    def __exit__(self, *exc) -> None:
        if not self.persistent:
            self.down()
        else:
            self._stop_agents()

    def _state(self, *, complete: bool = False) -> dict:
        # a persistent lab has no owner once it is up; while it is being built, the builder owns it
        # (so a builder killed half-way leaves a lab that `lab list` calls a leftover and `lab down --all` removes)
        owner = None if (self.persistent and complete) else os.getpid()
        return {
            "lab": self.name, "namespaces": list(self.plan.namespaces), "persistent": self.persistent, "complete": complete,
            "owner_pid": owner, "owner_start": process_start_time(owner) if owner else None,
            "created": time.time(), "spec": self.spec.to_dict(), "secret": self.secret,
            "server_ips": list(SERVER_IPS), "port": self.spec.server.port,
            "pids": {"coturn": self._coturn.pid} if self._coturn is not None and self._coturn.pid else {},
            "hosts": {h: self.ns(h) for h in self.hosts},
        }

    def up(self) -> Self:
        """Build, start coturn, start agents, verify. Tears down and re-raises on any failure."""
        if self._up:
            return self
        preflight()
        self._install_sigterm()
        _LIVE.add(self)
        self._up = True
        try:
            netns.write_state(self.name, self._state())
            t = time.monotonic()
            netns.build(self.plan)
            self.timings["build_ms"] = (time.monotonic() - t) * 1000.0
            if self.stun:
                t = time.monotonic()
                self._start_coturn()
                self.timings["coturn_ms"] = (time.monotonic() - t) * 1000.0
                netns.write_state(self.name, self._state())
            if self.do_verify or self.keep_agents:
                t = time.monotonic()
                self._start_agents(self.hosts)
                self.timings["agents_ms"] = (time.monotonic() - t) * 1000.0
            if self.do_verify:
                t = time.monotonic()
                self.checks = self.verify()
                self.timings["verify_ms"] = (time.monotonic() - t) * 1000.0
                bad = [c for c in self.checks if not c.ok]
                if bad:
                    raise LabVerificationFailed(
                        "NAT does not behave as declared: " + "; ".join(f"{c.host} ({c.declared}): {c.problems[0]}" for c in bad),
                        step="verify", details=[f"{c.host}: {p}" for c in bad for p in c.problems],
                        hint="the kernel's netfilter behaves differently than natkit's rules assume; see the measured values with natkit lab up --json",
                    )
            if not self.keep_agents:
                self._stop_agents()
            netns.write_state(self.name, self._state(complete=True))
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Stop agents and coturn, delete every namespace and the lab's state. Idempotent."""
        if not self._up:
            return
        t = time.monotonic()
        self._up = False
        try:
            self._stop_agents()
            if self._coturn is not None:
                try:
                    self._coturn.stop()  # SIGTERM, wait for it to exit, remove its state
                except NatkitError:
                    pass  # the namespace teardown below kills whatever is left in it
                self._coturn = None
            pids = [p.pid for p in self._procs if p.poll() is None]
            netns.destroy(self.plan.namespaces, extra_pids=pids)
            for p in self._procs:
                try:
                    p.wait(1.0)
                except subprocess.TimeoutExpired:
                    pass
            netns.remove_state(self.name)
        finally:
            _LIVE.discard(self)
            self._restore_sigterm()
            self.timings["teardown_ms"] = (time.monotonic() - t) * 1000.0

    def _install_sigterm(self) -> None:
        # SIGTERM during a lab's life raises KeyboardInterrupt in the main thread, so the
        # with-block (or the fixture) tears down, unless someone else handles SIGTERM
        if self.persistent or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            def on_term(signum, frame):
                raise KeyboardInterrupt("SIGTERM")

            self._old_sigterm = signal.signal(signal.SIGTERM, on_term)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            if not any(lab._old_sigterm is not None for lab in _LIVE if lab is not self):
                signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    # ---- coturn ---------------------------------------------------------
    def _start_coturn(self) -> None:
        """The lab's coturn: natkit's native backend behind ``ip netns exec`` in the server namespace,
        its files in the lab's directory, ready once every listener (both addresses, the RFC 5780
        alternate port, TCP) is open."""
        from ..coturn.native import find_binary, missing_reason
        from ..coturn.profiles import Limits, lab_profile
        from ..coturn.server import CoturnServer

        if find_binary() is None:
            raise ServerStartFailed(f"coturn cannot run: {missing_reason()}", step="coturn",
                                    hint="apt-get install coturn, or NatLab(turn=False, stun=False, verify=False) for a lab without a server")
        s = self.spec.server
        # the hardened profile, with exceptions for exactly the lab's internet ranges,
        # RFC 5780 on (NAT verification) and quotas sized for a concurrent matrix
        conf = lab_profile(
            (self.secret,), lab_ranges=self.plan.allowed_peer_ranges(),
            listening_ips=SERVER_IPS, port=s.port, relay_ips=SERVER_IPS, min_port=s.min_port, max_port=s.max_port,
            realm=s.realm, tcp_relay=True, nat_discovery=True, limits=Limits(user_quota=500, total_quota=5000, max_bps=0),
        ).config
        if not self.turn:  # turn=False: STUN Binding (RFC 5780 included) only, every TURN request ignored
            conf = dataclasses.replace(conf, extra=(*conf.extra, "stun-only"))
        server = CoturnServer(conf, backend="native", name="coturn", state_dir=self.dir, ready_timeout=15.0,
                              argv_prefix=netns.netns_argv(self.ns("server"), []), ephemeral=not self.persistent)
        self._coturn = server
        try:
            server.start()
        except NatkitError as exc:
            raise ServerStartFailed(f"coturn did not start in the lab's server namespace: {exc.message}", step="coturn",
                                    details=exc.details) from None

    @property
    def coturn(self) -> CoturnServer | None:
        """The lab's :class:`~natkit.coturn.server.CoturnServer` (its ``info`` has the config and log
        paths); STUN-only with ``turn=False``, None with ``stun=False``."""
        return self._coturn

    # ---- agents ---------------------------------------------------------
    def _start_agents(self, hosts: Sequence[str]) -> None:
        from .peers import AgentClient

        new = []
        with self._agent_lock:
            for h in hosts:
                if h not in self._agents:
                    self._agents[h] = AgentClient(h, self.ns(h), log_path=str(self.dir / f"agent-{h}.log"), env=self.agent_env)
                    new.append(self._agents[h])
        for ag in new:
            ag.wait_ready(30.0)

    def _stop_agents(self) -> None:
        with self._agent_lock:
            agents, self._agents = list(self._agents.values()), {}
        for ag in agents:  # all at once: each closes its peer connections and exits
            ag.close_stdin()
        deadline = time.monotonic() + 0.3  # then they are killed: the namespaces go away anyway
        for ag in agents:
            ag.close(grace=deadline - time.monotonic())

    def agent(self, host: str) -> AgentClient:
        """The agent process of ``host`` (started on first use)."""
        self.spec.host(host)
        if not self._up:
            raise UsageError("the lab is not up")
        with self._agent_lock:
            ag = self._agents.get(host)
        if ag is None:
            self._start_agents([host])
            ag = self._agents[host]
        return ag

    # ---- operations -----------------------------------------------------
    def verify(self, hosts: Sequence[str] | None = None) -> tuple[HostCheck, ...]:
        """Measure every host's NAT (concurrently) and compare it with the spec."""
        hosts = list(hosts or self.hosts)
        if not self.stun:
            raise UsageError("verification needs the lab's STUN server, and this lab runs none (stun=False)",
                             hint="build the lab with stun=True (the default) or verify=False")
        futures = {h: self.agent(h).submit("measure", server=SERVER_IPS[0], port=self.spec.server.port) for h in hosts}
        checks = []
        for h, fut in futures.items():
            measured = self.agent(h)._result(fut, 30.0, "measure")
            expected = effective_behaviour(self.spec, h)
            problems = judge(expected, measured)
            checks.append(HostCheck(
                host=h, declared=self.spec.behaviour_of(h), expected=expected, measured=measured,
                measured_label=classify(measured.get("mapping"), measured.get("filtering")),
                problems=tuple(problems), ok=not problems,
            ))
        return tuple(checks)

    def connect(self, a: str, b: str, *, turn: bool | None = None, deadline: float = 10.0, messages: int = 5,
                answer_delay: float | None = None):
        """One WebRTC attempt from ``a`` (offerer) to ``b``; returns a :class:`~natkit.lab.peers.PairResult`.

        ``turn``: offer the lab's TURN server to both peers (default: whether
        the lab runs one). See :func:`natkit.lab.peers.connect_pair` for
        ``deadline`` (seconds) and ``answer_delay``.
        """
        if turn is None:
            turn = self.turn
        from .peers import ANSWER_DELAY, connect_pair

        if not self._up:
            raise UsageError("the lab is not up")
        return connect_pair(self, a, b, turn=turn, deadline=deadline, messages=messages,
                            answer_delay=ANSWER_DELAY if answer_delay is None else answer_delay)

    def exec(self, node: str, argv: Sequence[str], *, timeout: float = 30.0, check: bool = False, input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command inside a node's namespace and capture its output."""
        return netns.run_in(self.ns(node), argv, timeout=timeout, check=check, input=input)

    def popen(self, node: str, argv: Sequence[str], **kw) -> subprocess.Popen:
        """Start a process inside a node's namespace; it is stopped at teardown."""
        kw.setdefault("start_new_session", True)
        kw["env"] = netns.installation_env(kw.get("env"))
        p = subprocess.Popen(netns.netns_argv(self.ns(node), list(argv)), **kw)
        self._procs.append(p)
        return p


def preflight() -> None:
    """Raise :class:`LabError` unless this process can build labs (root, iproute2, nft)."""
    import shutil

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces and nftables)", step="preflight", hint="run as root, e.g. in a CI container")
    missing = [b for b in ("ip", "nft", "sysctl") if shutil.which(b) is None]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)}", step="preflight", hint="apt-get install iproute2 nftables procps")
