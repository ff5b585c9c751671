"""Peers inside lab namespaces: a small agent process per host, and its controller side.

``python -m natkit.lab.peers`` (started by the lab with ``ip netns exec NS``)
is the agent: it reads one JSON request per line on stdin and answers one
JSON line on stdout, running requests concurrently. It can

- ``measure``: the host's NAT behaviour, end to end, with RFC 5780 probes
  against the lab server (:func:`natkit.nat.discover_nat_async`), plus a
  STUN-over-TCP check;
- ``offer`` / ``answer`` / ``accept`` / ``result`` / ``close``: one side of an
  aiortc ``RTCPeerConnection`` with a data channel echo. Offer and answer
  (with every candidate, no trickle) travel through the controller, which
  is the lab's signalling channel.

The agent exits when its stdin closes, so a controller that dies takes its
agents with it. Its stderr goes to ``<lab dir>/agent-<host>.log``.

ICE timers: aioice starts every STUN transaction (connectivity checks too)
with a 500 ms RTO. Lab round trips are well under a millisecond, so the
agent uses ``$NATKIT_LAB_RTO`` (default 0.1 s; RFC 8489 §6.2.1 allows an
RTO from the measured RTT): hole punching that needs one retransmission
costs 100 ms instead of 500, and an ICE attempt that cannot succeed fails
after ~6 s instead of ~30 s. ``$NATKIT_LAB_STOCK=1`` turns every natkit
adjustment of aioice off (RTO, nomination, relayed pairs last): the stock
agent that ``natkit lab matrix --agent stock`` measures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import IO, Any

from ..errors import LabAgentError, NatkitError

SCHEMA_PAIR = "natkit.lab.pair/1"


# ================================================================== results (pure)

@dataclasses.dataclass(frozen=True)
class SideResult:
    """What one peer saw. Times in milliseconds; candidate types are RFC 8445's."""

    host: str
    role: str  # offerer (ICE controlling) | answerer (controlled)
    connected: bool  # the data channel opened
    ice_state: str
    local_type: str | None  # nominated pair, this side's candidate: host | relay
    local: str | None
    remote_type: str | None  # host | srflx | prflx | relay
    remote: str | None
    gathered: dict  # candidate type -> count, this side
    gathering_ms: float | None
    connected_ms: float | None  # remote description applied -> data channel open
    echo_sent: int
    echo_ok: int  # messages that came back intact (offerer only)
    rtt_ms: float | None  # median echo round trip (offerer only)
    error: str | None
    first_local_type: str | None = None  # browsers: the pair selected first, before the agent settled
    first_remote_type: str | None = None
    settle_ms: float | None = None  # browsers: time spent waiting for a better pair than a relayed one


@dataclasses.dataclass(frozen=True)
class PairResult:
    """One connection attempt between two lab hosts (JSON schema ``natkit.lab.pair/1``).

    ``outcome``: ``"direct host"``, ``"direct srflx"``, ``"direct prflx"``,
    ``"relay"``, ``"failed"``, or ``"inconsistent"`` (the two sides nominated
    pairs of different kinds). ``relay_proven``: both sides' nominated pairs
    contain a relay candidate and the data echoed.
    """

    schema: str
    a: str  # offerer host
    b: str  # answerer host
    turn: bool  # TURN servers were offered (STUN+TURN), else STUN only
    outcome: str
    ok: bool  # connected and every echo came back intact
    relay_proven: bool
    offerer: SideResult | None
    answerer: SideResult | None
    deadline_s: float
    duration_ms: float
    notes: tuple[str, ...] = ()


def classify_pair(off: SideResult | None, ans: SideResult | None) -> str:
    """The outcome of an attempt from both sides' nominated pairs (pure).

    Failed unless both sides connected and the offerer's echoes all came
    back. ``relay`` when both nominated pairs contain a relay candidate
    (data crosses the TURN server both ways); ``direct prflx`` when a side
    had to learn a peer-reflexive candidate (RFC 8445 §7.3.1.3), else
    ``direct srflx`` / ``direct host`` by the most translated candidate used.
    """
    if off is None or ans is None or not (off.connected and ans.connected):
        return "failed"
    if off.echo_sent == 0 or off.echo_ok < off.echo_sent:
        return "failed"
    relay_off = "relay" in (off.local_type, off.remote_type)
    relay_ans = "relay" in (ans.local_type, ans.remote_type)
    if relay_off and relay_ans:
        return "relay"
    if relay_off or relay_ans:
        return "inconsistent"
    types = {off.remote_type, ans.remote_type}
    if "prflx" in types:
        return "direct prflx"
    if "srflx" in types:
        return "direct srflx"
    return "direct host"


def side_from_dict(d: dict | None) -> SideResult | None:
    if not d:
        return None
    return SideResult(**{f.name: d.get(f.name) for f in dataclasses.fields(SideResult)})  # type: ignore[arg-type]  # field by field from the agent's JSON


# ================================================================== agent (inside a namespace)

def _candidate_counts(sdp: str) -> dict[str, int]:
    from ..webrtc.metrics import candidate_counts, parse_candidates

    return candidate_counts(parse_candidates(sdp, "local"))


class _Conn:
    def __init__(self, pc, host: str, role: str) -> None:
        self.pc = pc
        self.host = host
        self.role = role
        self.channel: Any = None  # the RTCDataChannel, once created (offerer) or announced (answerer)
        self.opened = asyncio.Event()  # offerer: its channel is open; answerer: the offerer's channel arrived
        self.failed = asyncio.Event()  # ICE or the connection reported "failed"
        self.messages: asyncio.Queue = asyncio.Queue()
        self.gathering_ms: float | None = None
        self.gathered: dict[str, int] = {}
        self.t_remote: float | None = None
        self.echoed = 0
        self.echo_target: int | None = None
        self.echo_done = asyncio.Event()  # answerer: echo_target messages echoed

        def on_state() -> None:
            if "failed" in (pc.iceConnectionState, pc.connectionState):
                self.failed.set()

        pc.on("iceconnectionstatechange", on_state)
        pc.on("connectionstatechange", on_state)

    def count_echo(self) -> None:
        self.echoed += 1
        if self.echo_target is not None and self.echoed >= self.echo_target:
            self.echo_done.set()

    async def echo(self, seq: int, timeout: float) -> tuple[str, str | None]:
        """The offerer's side of one echo (:class:`natkit.webrtc.PathChannel`)."""
        payload = f"natkit-lab {seq:04d} {uuid.uuid4().hex}"
        self.channel.send(payload)
        try:
            return payload, await asyncio.wait_for(self.messages.get(), timeout)
        except TimeoutError:
            return payload, None

    async def bulk(self, nbytes: int, timeout: float) -> tuple[float | None, str | None]:
        return None, "lab agents measure no bulk payload"


async def _first(events: list[asyncio.Event], timeout: float) -> None:
    """Wait until one of ``events`` is set, or ``timeout`` seconds."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class Agent:
    """The request loop of one agent process."""

    def __init__(self, host: str, out) -> None:
        self.host = host
        self.out = out
        self.conns: dict[str, _Conn] = {}
        self._write_lock = asyncio.Lock()

    async def reply(self, msg: dict) -> None:
        async with self._write_lock:
            self.out.write(json.dumps(msg) + "\n")
            self.out.flush()

    async def handle(self, req: dict) -> None:
        rid = req.get("id")
        op = req.get("op", "")
        fn = getattr(self, f"op_{op}", None)
        try:
            if fn is None:
                raise ValueError(f"unknown op {op!r}")
            result = await fn(**req.get("args", {}))
            await self.reply({"id": rid, "ok": True, "result": result})
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the controller
            kind = exc.kind if isinstance(exc, NatkitError) else exc.__class__.__name__
            text = exc.one_line() if isinstance(exc, NatkitError) else f"{exc.__class__.__name__}: {exc}"
            await self.reply({"id": rid, "ok": False, "error": text, "kind": kind})

    # ---- basics ---------------------------------------------------------
    async def op_hello(self) -> dict:
        return {"pid": os.getpid(), "host": self.host}

    async def op_measure(self, server: str, port: int, timeout: float = 2.0, window: float = 0.6, tcp: bool = True) -> dict:
        return await measure_nat(server, port, timeout=timeout, window=window, tcp=tcp)

    async def op_udp_send(self, target: str, port: int, payload: str = "natkit") -> dict:
        """Send one UDP datagram (used by tests to poke at filters)."""
        import socket

        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.sendto(payload.encode(), (target, port))
            host, port_ = s.getsockname()[:2]
            return {"local": f"{host}:{port_}"}
        finally:
            s.close()

    # ---- WebRTC ---------------------------------------------------------
    def _pc(self, conn: str, ice: list[dict], role: str) -> _Conn:
        from aiortc import RTCPeerConnection

        from ..webrtc.session import IceServer, rtc_configuration

        if conn in self.conns:
            raise ValueError(f"connection {conn!r} exists")
        pc = RTCPeerConnection(rtc_configuration([IceServer.of(s) for s in ice]))
        c = _Conn(pc, self.host, role)
        self.conns[conn] = c
        return c

    async def op_offer(self, conn: str, ice: list[dict]) -> dict:
        c = self._pc(conn, ice, "offerer")
        c.channel = c.pc.createDataChannel("natkit-echo")
        c.channel.on("open", c.opened.set)
        c.channel.on("message", c.messages.put_nowait)
        t = time.monotonic()
        await c.pc.setLocalDescription(await c.pc.createOffer())
        c.gathering_ms = (time.monotonic() - t) * 1000.0
        sdp = c.pc.localDescription.sdp
        c.gathered = _candidate_counts(sdp)
        return {"sdp": sdp, "gathered": c.gathered, "gathering_ms": c.gathering_ms}

    async def op_answer(self, conn: str, ice: list[dict], sdp: str) -> dict:
        from aiortc import RTCSessionDescription

        c = self._pc(conn, ice, "answerer")

        @c.pc.on("datachannel")
        def on_channel(channel) -> None:
            c.channel = channel

            def echo(m) -> None:
                channel.send(m)
                c.count_echo()

            channel.on("message", echo)
            c.opened.set()

        t = time.monotonic()
        await c.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        c.t_remote = time.monotonic()
        await c.pc.setLocalDescription(await c.pc.createAnswer())
        c.gathering_ms = (time.monotonic() - t) * 1000.0
        out = c.pc.localDescription.sdp
        c.gathered = _candidate_counts(out)
        return {"sdp": out, "gathered": c.gathered, "gathering_ms": c.gathering_ms}

    async def op_accept(self, conn: str, sdp: str) -> dict:
        from aiortc import RTCSessionDescription

        c = self.conns[conn]
        c.t_remote = time.monotonic()
        await c.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        return {}

    async def op_result(self, conn: str, timeout: float, messages: int = 5) -> dict:
        """Wait (at most ``timeout`` s) for the data channel, echo, and report the nominated pair.

        The offerer measures the path (:func:`natkit.webrtc.session.measure`);
        the answerer reports once it has echoed the offerer's messages, so both
        sides read their nominated pair at about the same time.
        """
        from ..webrtc.metrics import parse_candidates
        from ..webrtc.session import measure, selected_pairs

        c = self.conns[conn]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await _first([c.opened, c.failed], deadline - loop.time())
        connected = c.opened.is_set()
        error = None
        if not connected:
            error = ("ICE failed: no candidate pair worked" if c.failed.is_set()
                     else f"not connected within the {timeout:g}s deadline (ICE state {c.pc.iceConnectionState})")
        connected_ms = (time.monotonic() - c.t_remote) * 1000.0 if connected and c.t_remote else None
        sent = ok = 0
        rtt = None
        pair = None
        if connected and c.role == "offerer":
            path, failures = await measure(c, peers={"local": c.pc}, candidates=parse_candidates(c.pc.localDescription.sdp, "local"),
                                           messages=messages, payload_bytes=0, deadline=deadline)
            sent, ok, rtt, pair = path.messages_sent, path.messages_intact, path.rtt_ms_p50, path.pair
            error = "; ".join(f.message for f in failures) or None
        elif connected:
            c.echo_target = messages
            if c.echoed >= messages:
                c.echo_done.set()
            await _first([c.echo_done, c.failed], deadline - loop.time())
            pair = selected_pairs({"local": c.pc})["local"]
        return {
            "host": self.host, "role": c.role, "connected": connected, "ice_state": c.pc.iceConnectionState,
            "local_type": pair.local_type if pair else None, "local": str(pair.local) if pair else None,
            "remote_type": pair.remote_type if pair else None, "remote": str(pair.remote) if pair else None,
            "gathered": c.gathered, "gathering_ms": c.gathering_ms, "connected_ms": connected_ms,
            "echo_sent": sent, "echo_ok": ok, "rtt_ms": rtt, "error": error,
        }

    async def op_close(self, conn: str) -> dict:
        from ..webrtc.session import close_peers

        c = self.conns.pop(conn, None)
        if c is not None:
            await close_peers([c.pc], timeout=5.0)
        return {}

    async def close_all(self) -> None:
        for conn in list(self.conns):
            await self.op_close(conn)


async def measure_nat(server: str, port: int, *, timeout: float = 2.0, window: float = 0.6, tcp: bool = True) -> dict:
    """This host's NAT behaviour towards the lab server (RFC 5780 §4.3-4.5).

    Returns ``{"method", "udp", "tcp", "nat", "mapping", "filtering",
    "hairpin", "public", "local", "notes"}``; mapping/filtering use RFC 4787
    words ("endpoint-independent", ...), "none" without a NAT, None when
    unknown. Measured with :func:`natkit.nat.discover_nat_async`, natkit's
    one RFC 5780 decision table.
    """
    from ..nat import discover_nat_async

    rep = await discover_nat_async([f"{server}:{port}"], timeout=timeout, window=window, hairpin=True)
    val = lambda f: None if f is None or f.value is None else getattr(f.value, "value", f.value)
    udp_blocked = val(rep.udp_blocked)
    out = {
        "method": "natkit.nat",
        "status": rep.status,
        "udp": None if udp_blocked is None else not udp_blocked,
        "nat": val(rep.nat_present),
        "mapping": val(rep.mapping),
        "filtering": val(rep.filtering),
        "hairpin": val(rep.hairpinning),
        "public": str(rep.public_address) if rep.public_address else None,
        "local": str(rep.local_address) if rep.local_address else None,
        "notes": list(rep.notes),
    }
    out["tcp"] = await _tcp_ok(server, port, timeout) if tcp else None
    return out


async def _tcp_ok(server: str, port: int, timeout: float) -> bool:
    from ..model import TransportAddress
    from ..stun import binding_request, stream_transaction

    try:
        await stream_transaction(binding_request(), TransportAddress(server, port), timeout=timeout)
        return True
    except NatkitError:
        return False


RELAY_GRACE = 1.5  # seconds a controlling agent lets better pairs try before checking a relayed one


async def _agent_main(host: str) -> None:
    from .. import _aiortc_private as private
    from ..webrtc.session import quiet_logging

    private.check_compatible()
    if os.environ.get("NATKIT_LAB_STOCK") != "1":  # "1": aiortc/aioice as released, for comparison
        private.check_rto(float(os.environ.get("NATKIT_LAB_RTO", "0.1"))).__enter__()  # for the agent's whole life
        private.keep_best_nomination()
        private.check_relay_pairs_last(float(os.environ.get("NATKIT_LAB_RELAY_GRACE", RELAY_GRACE)))
    quiet_logging()
    # the protocol owns the real stdout; stray prints go to stderr
    proto_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    agent = Agent(host, proto_out)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task] = set()
    await agent.reply({"id": 0, "ok": True, "result": {"pid": os.getpid(), "host": host, "ready": True}})
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                req = json.loads(line)
            except ValueError:
                continue
            task = asyncio.ensure_future(agent.handle(req))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for t in list(tasks):
            t.cancel()
        await agent.close_all()


def agent_main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m natkit.lab.peers HOST`` (the hidden agent mode)."""
    argv = sys.argv[1:] if argv is None else argv
    host = argv[0] if argv else "?"
    try:
        asyncio.run(_agent_main(host))
    except KeyboardInterrupt:
        pass


# ================================================================== controller side

class AgentClient:
    """The controller's handle on one agent process (thread-safe ``call``).

    ``module``: the agent's module (``python -m MODULE HOST *args`` inside ``ns``):
    this one's aiortc agent, or :mod:`natkit.lab.firefox`.
    """

    def __init__(self, host: str, ns: str, *, log_path: str | None = None, env: dict | None = None,
                 module: str = "natkit.lab.peers", args: tuple[str, ...] = ()) -> None:
        from .netns import netns_argv

        self.host = host
        self.ns = ns
        self._ids = itertools.count(1)
        self._pending: dict[int, concurrent.futures.Future] = {0: concurrent.futures.Future()}
        self.ready = self._pending[0]  # the agent's first line: {"pid", "host", "ready", ...}
        self._lock = threading.Lock()
        self._log: IO[bytes] | int = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - held for the agent's life, closed in close()
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            netns_argv(ns, [sys.executable, "-m", module, host, *args]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=full_env,
            start_new_session=True, close_fds=True,
        )
        self.pid = self.proc.pid
        if self.proc.stdin is None or self.proc.stdout is None:  # both were asked for as pipes
            raise LabAgentError(f"no pipes to the agent of {host}", step="agent")
        self._to_agent: IO[bytes] = self.proc.stdin
        self._from_agent: IO[bytes] = self.proc.stdout
        self._reader = threading.Thread(target=self._read, name=f"natkit-agent-{host}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self._from_agent:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            with self._lock:
                fut = self._pending.pop(msg.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        with self._lock:
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(LabAgentError(f"the agent on {self.host} exited (code {self.proc.poll()})", step="agent"))

    def wait_ready(self, timeout: float = 20.0) -> None:
        with self._lock:
            fut = self._pending.get(0)
        if fut is None:
            return
        self._result(fut, timeout, "start")

    def submit(self, op: str, **args) -> concurrent.futures.Future:
        rid = next(self._ids)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._pending[rid] = fut
        try:
            self._to_agent.write((json.dumps({"id": rid, "op": op, "args": args}) + "\n").encode())
            self._to_agent.flush()
        except (BrokenPipeError, ValueError, OSError):
            with self._lock:
                self._pending.pop(rid, None)
            raise LabAgentError(f"the agent on {self.host} is gone", step=op) from None
        return fut

    def _result(self, fut: concurrent.futures.Future, timeout: float, op: str) -> dict:
        try:
            msg = fut.result(timeout)
        except concurrent.futures.TimeoutError:
            raise LabAgentError(f"the agent on {self.host} did not answer {op!r} within {timeout:g}s", step=op) from None
        if not msg.get("ok"):
            raise LabAgentError(f"{op} on {self.host}: {msg.get('error')}", step=op)
        return msg.get("result") or {}

    def call(self, op: str, timeout: float = 30.0, **args) -> dict:
        """Run ``op`` in the agent and return its result; raises :class:`LabAgentError`."""
        return self._result(self.submit(op, **args), timeout, op)

    def close_stdin(self) -> None:
        try:
            self._to_agent.close()
        except OSError:
            pass

    def close(self, grace: float = 2.0) -> None:
        """Close stdin (the agent closes its connections and exits), wait ``grace`` s, kill if needed."""
        self.close_stdin()
        try:
            self.proc.wait(max(0.0, grace))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                pass
        if not isinstance(self._log, int):
            self._log.close()


ANSWER_DELAY = 0.2  # seconds between the answerer's answer and the offerer receiving it


def connect_pair(lab, a: str, b: str, *, turn: bool = True, deadline: float = 10.0, messages: int = 5,
                 answer_delay: float = ANSWER_DELAY, agents: tuple | None = None) -> PairResult:
    """One attempt: host ``a`` offers (ICE controlling), host ``b`` answers.

    Both gather host and srflx candidates from the lab's STUN server, and
    with ``turn`` relay candidates from its coturn (TURN over TCP for a host
    whose UDP is blocked). Offer and answer cross through this controller.
    The attempt ends by ``deadline`` seconds (ICE failure ends it earlier);
    the connections are closed afterwards whatever happened.

    ``answer_delay``: seconds the answer spends "in signalling" before the
    offerer gets it (a real signalling round trip takes about as long). The
    answerer starts its checks at once, so its NAT has opened towards the
    offerer when the offerer's checks go out. This matters because aioice,
    as the controlling agent, nominates aggressively: the first pair whose
    check succeeds wins. Without the delay a relay pair sometimes succeeds
    before a direct pair whose first check was dropped by a NAT that had not
    yet opened, and a cell that can connect directly is reported as relay.

    ``agents``: the two agents to use instead of the lab's aiortc agents of
    ``a`` and ``b`` (for example browsers: :class:`natkit.lab.browser.BrowserAgent`).
    """
    started = time.monotonic()
    conn = uuid.uuid4().hex[:12]
    ag_a, ag_b = agents if agents is not None else (lab.agent(a), lab.agent(b))
    notes: list[str] = []
    off = ans = None
    slack = 10.0  # answers must arrive this much after the agent's own deadline
    try:
        try:
            offer = ag_a.call("offer", timeout=deadline + slack, conn=conn, ice=lab.ice_servers(a, turn=turn))
            answer = ag_b.call("answer", timeout=deadline + slack, conn=conn, ice=lab.ice_servers(b, turn=turn), sdp=offer["sdp"])
            if answer_delay > 0:
                time.sleep(answer_delay)
            ag_a.call("accept", timeout=deadline + slack, conn=conn, sdp=answer["sdp"])
            left = max(0.5, deadline - (time.monotonic() - started))
            fa = ag_a.submit("result", conn=conn, timeout=left, messages=messages)
            fb = ag_b.submit("result", conn=conn, timeout=left, messages=messages)
            off = side_from_dict(ag_a._result(fa, left + slack, "result"))
            ans = side_from_dict(ag_b._result(fb, left + slack, "result"))
        except LabAgentError as exc:
            notes.append(exc.one_line())
    finally:
        for ag in (ag_a, ag_b):
            try:
                ag.submit("close", conn=conn)
            except LabAgentError:
                pass
    outcome = classify_pair(off, ans)
    for side in (off, ans):
        if side is not None and side.error:
            notes.append(f"{side.host}: {side.error}")
    ok = outcome not in ("failed", "inconsistent")
    return PairResult(
        schema=SCHEMA_PAIR, a=a, b=b, turn=turn, outcome=outcome, ok=ok,
        relay_proven=outcome == "relay", offerer=off, answerer=ans, deadline_s=deadline,
        duration_ms=(time.monotonic() - started) * 1000.0, notes=tuple(notes),
    )


if __name__ == "__main__":
    agent_main()
