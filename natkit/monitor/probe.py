"""One monitor probe of one (target, transport), on natkit's TURN client (:mod:`natkit.stun.aio`).

What a probe sends, in order, each step bounded by what is left of the
probe's ``timeout`` (one budget for the whole probe; a step never waits
longer than :data:`STEP_CAP` seconds):

1. **connect** (TCP/TLS only) to the server; for ``turns:`` the TLS
   handshake verifies the chain and host name with ``cafile`` (or the
   system's CAs). A chain that does not verify is recorded
   (``tls_chain_valid`` 0, error ``tls``) and the probe goes on over an
   unverified connection so the relay figures stay known. The certificate's
   days left come from the handshake.
2. **binding**: one STUN Binding request (RFC 8489 §3) on that connection;
   its RTT is ``binding_rtt``.
3. **allocate**: Allocate (RFC 8656 §7) with REQUESTED-TRANSPORT UDP, the
   401 challenge answered with the long-term key (RFC 8489 §9.2; REST
   credentials minted per probe). The time from the first request to the
   final success is ``allocate_latency``. XOR-RELAYED-ADDRESS is compared
   with ``expect_relayed_ip`` (a wrong coturn ``external-ip`` shows here).
4. **relay**: a second allocation on a second connection (started
   alongside step 1-3), then CreatePermission both ways (§9), one echo
   A → B → A through Send/Data indications (§11), ChannelBind both ways
   (§12) and ``echoes - 1`` more echoes as ChannelData: a relay-only data
   path between two allocations, each datagram 32 bytes. Echo RTT is the
   median of the answered echoes; loss is the share unanswered. The relay
   passes when an echo came back and the loss is at most ``max_echo_loss``
   (default 0.2: at most 1 of 5 unanswered); more loss is a failed check.
5. **release**: Refresh LIFETIME 0 (§8) for both allocations, then close.

No aiortc peer is involved: an aiortc relay-check (ICE, DTLS, SCTP between
two peers) costs about 4 times the CPU of this probe once warm (~25 ms against
~6 ms here, bench/bench_monitor.py --compare-aiortc), ~300 ms for its first
run, and keeps aiortc, av and numpy in the monitor's memory, while proving
nothing more about the relay than data both ways through two allocations.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import os
import statistics
import time
from typing import TYPE_CHECKING, Any

from ..errors import (
    Failure,
    InternalError,
    MalformedMessage,
    NatkitError,
    ServerUnreachable,
    StunTimeout,
    TurnError,
    exit_code_for,
)
from .config import DEFAULT_MAX_ECHO_LOSS, Target

if TYPE_CHECKING:
    import ssl

    from ..model import TransportAddress
    from ..stun.aio import TurnClient

# the `code` label of natkit_monitor_errors_total: a fixed set, so label sets stay bounded
TRACKED_CODES = (401, 403, 437, 438, 441, 486, 508)
# "internal": the probe itself raised (a bug in natkit, never the server's doing), see internal_result()
ERROR_LABELS = (*(str(c) for c in TRACKED_CODES), "other", "timeout", "unreachable", "tls", "malformed", "internal")
STEP_CAP = {"connect": 1.0, "binding": 0.5, "allocate": 1.0, "permission": 0.5, "channel_bind": 0.5, "echo": 0.5, "release": 0.3}
PAYLOAD_LEN = 32
# RFC 8489 §6.2.1's RTO: a shorter one would retransmit before a distant server's answer, and the RTT of an
# answered retransmission (measured from the last send) would then read short
RTO = 0.5


@dataclasses.dataclass(frozen=True)
class TlsFacts:
    """The ``turns:`` server certificate as this probe saw it.

    ``chain_valid``: True when the handshake verified chain and host name,
    False when it did not (``chain_error`` says why), None when not checked
    (``verify_tls = false``). ``days_left`` until notAfter (negative: expired).
    """

    chain_valid: bool | None
    chain_error: str | None
    days_left: float | None
    not_after: str | None
    subject: str | None


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """One probe of one target over one transport (JSON in ``natkit monitor once --json``).

    Times in milliseconds; ``None`` means not measured (the step did not run
    or failed). ``errors`` are ``(step, code)`` pairs, ``code`` one of
    :data:`ERROR_LABELS`. ``ok`` means every requested check passed.
    """

    target: str
    uri: str
    transport: str
    ok: bool
    up: bool  # the server answered STUN/TURN at all (a Binding or an Allocate reply, even an error)
    exit_code: int
    started: float  # unix time, s
    duration_ms: float
    binding_rtt_ms: float | None
    allocate_ms: float | None
    credential_kind: str  # rest, long-term, none
    credential_accepted: bool | None
    relayed: str | None  # XOR-RELAYED-ADDRESS seen
    expect_relayed_ip: str | None
    relayed_match: bool | None
    relay_ok: bool | None
    echo_sent: int
    echo_received: int
    echo_rtt_ms: float | None  # median
    echo_rtt_max_ms: float | None
    tls: TlsFacts | None
    errors: tuple[tuple[str, str], ...]
    failures: tuple[Failure, ...]

    @property
    def echo_loss(self) -> float | None:
        return None if not self.echo_sent else 1.0 - self.echo_received / self.echo_sent

    @property
    def internal(self) -> bool:
        """True for :func:`internal_result`: the probe raised, so nothing about the server is known."""
        return ("probe", "internal") in self.errors

    @property
    def reason(self) -> str:
        """One line: "ok" or the first failure."""
        return "ok" if self.ok else (self.failures[0].one_line() if self.failures else "failed")


def error_label(exc: BaseException) -> str:
    """The ``code`` label for an error: a tracked ERROR-CODE, timeout, unreachable, tls, malformed or other."""
    if isinstance(exc, TurnError):
        return str(exc.error_code) if exc.error_code in TRACKED_CODES else "other"
    if isinstance(exc, StunTimeout):
        return "timeout"
    if isinstance(exc, MalformedMessage):
        return "malformed"
    if isinstance(exc, ServerUnreachable):
        return "tls" if exc.step == "tls" else "unreachable"
    return "other"


@functools.lru_cache(maxsize=32)
def _ssl_context(verify: bool, cafile: str | None) -> ssl.SSLContext:
    """One context per (verify, cafile): loading a CA bundle costs ~10 ms of CPU, a probe must not pay it."""
    from ..stun.aio import client_ssl_context

    return client_ssl_context(verify, cafile)


_cert_cache: dict[bytes, Any] = {}


def _cert_facts(der: bytes | None) -> tuple[float | None, str | None, str | None]:
    """(days left, notAfter, subject) of a DER certificate, parsed once per distinct certificate."""
    if not der:
        return None, None, None
    import datetime

    digest = hashlib.sha256(der).digest()
    info = _cert_cache.get(digest)
    if info is None:
        from ..tls import cert_info

        info = cert_info(der)
        if len(_cert_cache) >= 64:
            _cert_cache.clear()
        _cert_cache[digest] = info
    not_after = datetime.datetime.fromisoformat(info.not_after)
    days = (not_after - datetime.datetime.now(datetime.UTC)).total_seconds() / 86400.0
    return days, info.not_after, info.subject


def _peer_cert(client: TurnClient) -> bytes | None:
    transport = getattr(client.conn, "transport", None)
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    return ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None


class _Probe:
    """The state of one running probe: its deadline, what it measured, what failed."""

    def __init__(self, target: Target, timeout: float, echoes: int, max_echo_loss: float = DEFAULT_MAX_ECHO_LOSS) -> None:
        self.target = target
        self.echoes = echoes
        self.max_echo_loss = max_echo_loss
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.deadline = self.t0 + timeout
        self.errors: list[tuple[str, str]] = []
        self.failures: list[Failure] = []
        self.clients: list[TurnClient] = []
        self.m: dict[str, Any] = {"binding_rtt_ms": None, "allocate_ms": None, "credential_accepted": None, "relayed": None,
                                  "relay_ok": None, "answered": False, "echo_sent": 0, "echo_received": 0, "rtts": [], "tls": None}
        self.server_text = str(target.uri)

    def left(self, step: str) -> float:
        return min(STEP_CAP.get(step, 1.0), self.deadline - self.loop.time())

    def budget(self, step: str) -> float:
        """Seconds this step may take; raises StunTimeout when the probe's budget is spent."""
        left = self.left(step)
        if left <= 0.001:
            raise StunTimeout("the probe's time budget is spent", server=self.server_text, step=step, limit="budget")
        return left

    def record(self, step: str, exc: NatkitError, *, count: bool = True) -> None:
        if count:
            self.errors.append((step, error_label(exc)))
        failure = Failure.from_error(exc, server=self.server_text)
        self.failures.append(dataclasses.replace(failure, step=failure.step or step))

    # ------------------------------------------------------------- steps
    async def open(self, server: TransportAddress, username: str | None, password: str | None, *, main: bool) -> TurnClient:
        from ..stun.aio import TurnClient

        t = self.target
        ctx = _ssl_context(t.verify_tls, t.cafile) if t.uri.secure else None
        local = _local_host(server)
        kw: dict[str, Any] = {"transport": t.transport, "username": username, "password": password, "server_hostname": t.server_name or t.uri.host,
                                  "rto": RTO, "local_host": local}
        try:
            client = await TurnClient.open(server, ssl=ctx, timeout=self.budget("connect"), **kw)
        except ServerUnreachable as exc:
            if not (t.uri.secure and exc.step == "tls" and t.verify_tls and "not trusted" in exc.message):
                raise
            if main:  # the chain does not verify: say so, and go on unverified for the relay figures
                self.record("tls", exc)
                self.m["chain_error"] = exc.message
            client = await TurnClient.open(server, ssl=_ssl_context(False, None), timeout=self.budget("connect"), **kw)
        self.clients.append(client)
        if main and t.uri.secure:
            days, not_after, subject = _cert_facts(_peer_cert(client))
            chain = None if not t.verify_tls else "chain_error" not in self.m
            self.m["tls"] = TlsFacts(chain, self.m.get("chain_error"), days, not_after, subject)
        return client

    async def binding(self, client: TurnClient) -> None:
        from ..stun.aio import UdpStunEndpoint
        from ..stun.codec import binding_request

        msg = binding_request()
        budget = self.budget("binding")
        conn = client.conn
        if isinstance(conn, UdpStunEndpoint):
            resp = await conn.request(msg, client.server, timeout=budget, rto=RTO)
        else:
            resp = await conn.request(msg, timeout=budget)
        self.m["answered"] = True
        if resp.message.get("XOR-MAPPED-ADDRESS") is None and resp.message.get("MAPPED-ADDRESS") is None:
            self.failures.append(Failure("no_mapped_address", "binding", "Binding answer without a mapped address", self.server_text))
            return
        self.m["binding_rtt_ms"] = resp.rtt_ms

    async def allocate(self, client: TurnClient, server: TransportAddress, username: str | None, password: str | None, *,
                       main: bool) -> TurnClient | None:
        """Allocate on ``client``; returns the client holding the allocation (None when refused).

        A 437 Allocation Mismatch on a fresh socket means the kernel gave it the port of an allocation the
        server still holds (a released 5-tuple lingers in coturn for a moment): RFC 8656 §7.3 has the client
        pick another port, so the allocation is retried on a new connection (at most twice), opened while the
        refused socket still holds its port so the kernel cannot hand the same port back.
        """
        step = "allocate" if main else "relay_allocate"
        for attempt in (1, 2, 3):
            started = self.loop.time()
            reply = await client.allocate(timeout=self.budget("allocate"), check=False)
            if main:
                self.m["answered"] = True
            if reply.ok:
                break
            if reply.code == 437 and attempt < 3 and client.transport == "udp":
                refused = client
                client = await self.open(server, username, password, main=False)
                self.clients.remove(refused)
                refused.conn.close()
                continue
            exc = reply.error(server=self.server_text, step=step)
            if not main:  # reported only when the main allocation worked (else it is the same failure twice)
                raise exc
            self.record(step, exc)
            self.m["credential_accepted"] = False if reply.code in (401, 441) else (True if reply.code in (486, 508, 437) else None)
            return None
        if main:
            self.m["allocate_ms"] = (self.loop.time() - started) * 1000.0
            self.m["credential_accepted"] = True if client.session.username else None
            self.m["relayed"] = client.relayed
        return client

    async def relay(self, a: TurnClient, b: TurnClient) -> None:
        """Permissions, one echo by indications, channels, the rest of the echoes by ChannelData."""
        ra, rb = a.relayed, b.relayed
        assert ra is not None and rb is not None
        b.on_data = lambda item: b.send(ra, item.data)  # B echoes whatever A's relayed address sends
        for step, calls in (("permission", (a.create_permission(rb, timeout=self.budget("permission"), check=False),
                                            b.create_permission(ra, timeout=self.budget("permission"), check=False))),):
            replies = await asyncio.gather(*calls)
            bad = [r for r in replies if not r.ok]
            if bad:
                self.record(step, bad[0].error(server=self.server_text, step=step))
                self.m["relay_ok"] = False
                return
        await self.echo(a, rb, 1)
        binds = await asyncio.gather(a.channel_bind(rb, timeout=self.budget("channel_bind"), check=False),
                                     b.channel_bind(ra, timeout=self.budget("channel_bind"), check=False))
        bad = [r for r in binds if not r.ok]
        if bad:
            self.record("channel_bind", bad[0].error(server=self.server_text, step="channel_bind"))
        await self.echo(a, rb, self.echoes - 1)
        sent, received = self.m["echo_sent"], self.m["echo_received"]
        lossy = received > 0 and relay_lossy(sent, received, self.max_echo_loss)
        self.m["relay_ok"] = received > 0 and not lossy and not bad
        if not received:
            self.failures.append(Failure("no_connectivity", "echo",
                                         f"none of {sent} datagrams came back through the relay"
                                         + self._mismatch_hint(), self.server_text))
        elif lossy:
            self.failures.append(Failure.check("echo", f"{sent - received} of {sent} datagrams through the relay went unanswered "
                                                       f"({1 - received / sent:.0%} loss, more than max_echo_loss {self.max_echo_loss:.0%})",
                                               self.server_text))

    def _mismatch_hint(self) -> str:
        relayed, expected = self.m["relayed"], self.target.expect_relayed_ip
        if relayed is not None and expected and relayed.host != expected:
            return f" (the relayed address {relayed.host} is not {expected}: coturn external-ip?)"
        return ""

    async def echo(self, a: TurnClient, peer: TransportAddress, count: int) -> None:
        for _ in range(max(0, count)):
            wait = self.left("echo")
            if wait <= 0.001:
                return
            token = os.urandom(PAYLOAD_LEN)
            sent = self.loop.time()
            a.send(peer, token)
            self.m["echo_sent"] += 1
            while (left := min(wait, self.deadline - self.loop.time())) > 0:
                item = await a.recv(timeout=left)
                if item is None:
                    break
                if item.data == token:
                    self.m["echo_received"] += 1
                    self.m["rtts"].append((self.loop.time() - sent) * 1000.0)
                    break

    async def release(self) -> None:
        clients, self.clients = self.clients, []
        try:
            budget = max(0.05, min(STEP_CAP["release"], self.deadline - self.loop.time() + 0.2))
            await asyncio.gather(*(c.release(timeout=budget) for c in clients))
        finally:
            for c in clients:
                c.conn.close()

    def close_now(self) -> None:
        for c in self.clients:
            c.conn.close()
        self.clients = []


def relay_lossy(sent: int, received: int, max_echo_loss: float) -> bool:
    """Whether ``received`` of ``sent`` echoes is more loss than ``max_echo_loss`` (0-1) allows.

    With the defaults (5 echoes, 0.2) one unanswered echo passes and two fail;
    ``max_echo_loss`` 0 fails on any loss. Nothing sent is not loss.
    """
    if sent <= 0:
        return False
    return (sent - received) / sent > max_echo_loss + 1e-9  # 1 of 5 is 0.2 exactly, not a float hair above it


def _local_host(server: TransportAddress) -> str | None:
    """Bind client sockets to the loopback address of a loopback server: a wildcard bind could take coturn's relay ports."""
    if server.host.startswith("127.") or server.host == "::1":
        return server.host
    return None


async def probe(target: Target, *, timeout: float = 2.0, echoes: int = 5, max_echo_loss: float = DEFAULT_MAX_ECHO_LOSS) -> ProbeResult:
    """Probe ``target`` once (see the module docstring for what is sent); never raises for what the server does.

    ``timeout`` (s) bounds the whole probe, cleanup included (a little over:
    the release has a floor of 50 ms); ``echoes`` relay datagrams (>= 1), of
    which a share of at most ``max_echo_loss`` (0-1) may go unanswered.
    Returns a :class:`ProbeResult`. A bug in natkit may still raise: the
    monitor's scheduler turns that into :func:`internal_result`.
    """
    from ..stun.aio import resolve

    started_wall = time.time()
    run = _Probe(target, timeout, echoes, max_echo_loss)
    username, password = target.credentials.pair()
    try:
        server = await resolve(target.uri.host, target.uri.port, transport=target.uri.transport, timeout=run.budget("connect"))
        await asyncio.wait_for(_steps(run, server, username, password), max(0.001, run.deadline - run.loop.time()) + 0.05)
    except TimeoutError:
        run.record("probe", StunTimeout("the probe did not finish within its budget", server=run.server_text, step="probe", limit="budget"))
    except NatkitError as exc:
        run.record(exc.step or "connect", exc)
    finally:
        try:
            await run.release()
        except BaseException:
            run.close_now()
            raise
    return _result(run, target, started_wall)


async def _steps(run: _Probe, server: TransportAddress, username: str | None, password: str | None) -> None:
    t = run.target
    want_relay = t.wants("relay")

    async def second() -> TurnClient | None:
        try:
            b = await run.open(server, username, password, main=False)
            return await run.allocate(b, server, username, password, main=False)
        except NatkitError as exc:
            run.m["relay_error"] = exc
            return None

    b_task = asyncio.ensure_future(second()) if want_relay else None
    try:
        a = await run.open(server, username, password, main=True)
        if t.wants("binding"):
            try:
                await run.binding(a)
            except NatkitError as exc:
                run.record("binding", exc)
                if isinstance(exc, ServerUnreachable) and not isinstance(exc, StunTimeout):
                    return
        allocated = await run.allocate(a, server, username, password, main=True) if t.wants("allocate") else None
        b = await b_task if b_task is not None else None
        b_task = None
        if want_relay and allocated is not None and b is not None:
            await run.relay(allocated, b)
        elif want_relay:
            run.m["relay_ok"] = False
            if allocated is not None and "relay_error" in run.m:
                run.record("relay_allocate", run.m["relay_error"])
    finally:
        if b_task is not None:  # bounded by the probe's deadline; awaited, so its errors are retrieved
            await asyncio.gather(b_task, return_exceptions=True)


def _result(run: _Probe, target: Target, started_wall: float) -> ProbeResult:
    m = run.m
    failures = list(run.failures)
    relayed = m["relayed"]
    match = None
    if target.expect_relayed_ip and relayed is not None:
        match = relayed.host == target.expect_relayed_ip
        if not match:
            failures.append(Failure.check("relayed_address", f"XOR-RELAYED-ADDRESS is {relayed.host}, expected {target.expect_relayed_ip} "
                                          "(coturn external-ip/relay-ip?)", run.server_text))
    rtts = m["rtts"]
    wanted_relay = target.wants("relay")
    ok = not failures and (m["relay_ok"] is True or not wanted_relay)
    return ProbeResult(
        target=target.name, uri=str(target.uri), transport=target.transport, ok=ok, up=m["answered"], exit_code=exit_code_for(failures),
        started=started_wall, duration_ms=(run.loop.time() - run.t0) * 1000.0,
        binding_rtt_ms=m["binding_rtt_ms"], allocate_ms=m["allocate_ms"], credential_kind=target.credentials.kind,
        credential_accepted=m["credential_accepted"], relayed=str(relayed) if relayed is not None else None,
        expect_relayed_ip=target.expect_relayed_ip, relayed_match=match, relay_ok=(m["relay_ok"] is True) if wanted_relay else None,
        echo_sent=m["echo_sent"], echo_received=m["echo_received"],
        echo_rtt_ms=statistics.median(rtts) if rtts else None, echo_rtt_max_ms=max(rtts) if rtts else None,
        tls=m["tls"], errors=tuple(run.errors), failures=tuple(failures),
    )


def internal_result(target: Target, exc: BaseException, *, started: float, duration_ms: float) -> ProbeResult:
    """The failed result of a probe that raised where it never should (a bug in natkit, not the server's doing).

    ``ok`` False, nothing measured (``up`` False, but the metrics leave it out:
    the server was not asked), one error ``("probe", "internal")`` and one
    failure of kind ``internal`` (exit 70) naming the exception; ``started``
    unix time (s). The monitor serves this instead of the target's previous
    result, so a broken probe never reads as healthy.
    """
    failure = Failure(InternalError.kind, "probe", f"internal error in natkit's probe: {type(exc).__name__}: {exc}", str(target.uri))
    return ProbeResult(
        target=target.name, uri=str(target.uri), transport=target.transport, ok=False, up=False, exit_code=failure.exit_code,
        started=started, duration_ms=duration_ms, binding_rtt_ms=None, allocate_ms=None, credential_kind=target.credentials.kind,
        credential_accepted=None, relayed=None, expect_relayed_ip=target.expect_relayed_ip, relayed_match=None,
        relay_ok=None, echo_sent=0, echo_received=0, echo_rtt_ms=None, echo_rtt_max_ms=None,
        tls=None, errors=(("probe", "internal"),), failures=(failure,),
    )
