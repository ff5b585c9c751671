"""RFC 5780 NAT behaviour discovery: the probe plan and its timers.

:func:`discover_nat` sends the Binding requests of RFC 5780 §4.3 (mapping)
and §4.4 (filtering), optionally §4.5 (hairpinning) and §4.6 (mapping
lifetime), and hands every observed exchange to the pure classifier
:func:`natkit.nat_classify.classify`, which returns the :class:`NatReport`.
See :mod:`natkit.nat_classify` for the test plan and the decision rules.

Speed, without guessing:

* Mapping and filtering tests run at the same time on separate local sockets
  (a fresh filtering socket per server has talked to nothing but the primary
  address, so its filters are exactly what RFC 5780 §4.4 needs), and every
  server is probed concurrently.
* The retransmission timeout follows the round trip measured by Test I
  (RFC 6298's first-sample rule, RTO = 3 x RTT, clamped to 50-500 ms),
  instead of RFC 8489's fixed 500 ms start.
* Test I waits up to ``timeout`` for each server, but once one server has
  answered, the others get FIRST_CONTACT_GRACE (1 s, or 20 RTTs) more: a dead
  server in the list does not hold the run for the full timeout.
* A test whose answer may legitimately never come (a filtered CHANGE-REQUEST)
  waits one window: ``max(250 ms, 10 x RTT)``, capped by ``timeout``, or the
  fixed ``window`` given. All such tests of a run share that one window, so
  a NAT that filters costs one window, not 3 s per test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, cast

from .errors import (
    MalformedMessage,
    NatkitError,
    ServerUnreachable,
    StunTimeout,
    UsageError,
    exit_code_of,
)
from .model import TransportAddress
from .nat_classify import (  # re-exported: the public names of this operation
    CHANGE_IP,
    CHANGE_PORT,
    CONTROL_II,
    CONTROL_III,
    FILTER_I,
    FILTER_II,
    FILTER_III,
    SCHEMA,
    STATUS_KINDS,
    TEST_I,
    TEST_II,
    TEST_III,
    TEST_IV,
    Exchange,
    Fact,
    Filtering,
    HairpinObservation,
    LifetimeBracket,
    LifetimeObservation,
    LifetimeSample,
    Mapping,
    NatObservations,
    NatReport,
    ServerObservation,
    alternate_addresses,
    classify,
    exchanges_in_order,
    validate_primary,
)
from .probe import route_local_ip
from .stun import UdpStunEndpoint, binding_request, resolve
from .uri import parse_server

__all__ = [
    "EXIT_BY_STATUS",
    "SCHEMA",
    "Exchange",
    "Fact",
    "Filtering",
    "LifetimeBracket",
    "Mapping",
    "NatObservations",
    "NatReport",
    "discover_nat",
    "discover_nat_async",
    "exit_code",
    "lifetime_checkpoints",
    "plan_timers",
]

FIRST_RTO = 0.25  # s, retransmission timeout before any RTT is known
RTO_MIN = 0.05  # s, lower clamp of the measured RTO
RTO_MAX = 0.5  # s, upper clamp (RFC 8489 §6.2.1's recommended initial RTO)
WINDOW_MIN = 0.25  # s, shortest no-reply window
WINDOW_RTTS = 10  # the no-reply window lasts at least this many round trips
LIFETIME_MAX = 600.0  # s, hard cap of the --lifetime search
FIRST_CONTACT_GRACE = 1.0  # s, how long other servers may still answer Test I once one has

# exit codes of ``natkit nat`` by report status (documented in the CLI help), from the error tree
EXIT_BY_STATUS = {"determined": 0, **{status: exit_code_of(kind) for status, kind in STATUS_KINDS.items()}}


def exit_code(report: NatReport) -> int:
    """0 determined, 1 inconclusive, 3 UDP blocked or no usable server (``report.exit_code``)."""
    return report.exit_code


def plan_timers(rtt_ms: float | None, timeout: float, window: float | None = None) -> tuple[float, float]:
    """Return ``(rto, window)`` in seconds for the tests after Test I.

    ``rtt_ms`` is Test I's measured round trip in milliseconds (None:
    unknown). RTO = 3 x RTT (RFC 6298 §2.2 after one sample: SRTT + 4 x
    RTTVAR with RTTVAR = RTT/2) within [RTO_MIN, RTO_MAX]. The no-reply
    window is ``window`` when given, else max(WINDOW_MIN, WINDOW_RTTS x RTT)
    capped at ``timeout``. Pure.
    """
    rtt = (rtt_ms / 1000.0) if rtt_ms is not None else FIRST_RTO
    rto = min(RTO_MAX, max(RTO_MIN, 3.0 * rtt))
    if window is None:
        window = min(timeout, max(WINDOW_MIN, WINDOW_RTTS * rtt))
    return rto, window


def lifetime_checkpoints(bound_s: float) -> tuple[float, ...]:
    """Seconds after which a mapping is probed during the lifetime search (RFC 5780 §4.6).

    Every second up to 10 s, then steps of about 10 %, ending with the bound
    itself: a lifetime is bracketed within ~10 % with one socket per
    checkpoint, all probed in a single pass (no sequential binary search).
    Pure. Raises :class:`UsageError` for a bound outside (0, 600] seconds.
    """
    if not 0 < bound_s <= LIFETIME_MAX:
        raise UsageError(f"lifetime search bound must be in (0, {LIFETIME_MAX:g}] seconds, got {bound_s:g}")
    points: list[float] = []
    t = 1.0
    while t < bound_s:
        points.append(t)
        t += max(1.0, float(round(t * 0.1)))
    points.append(float(bound_s))
    return tuple(points)


class _Endpoint(UdpStunEndpoint):
    """A :class:`UdpStunEndpoint` that can also wait for a message it did not ask for
    (hairpinning and RESPONSE-PORT tests: the answer lands on another socket)."""

    def __init__(self) -> None:
        super().__init__()
        self._watches: dict[bytes, asyncio.Future] = {}

    def watch(self, transaction_id: bytes) -> asyncio.Future:
        """A future resolved with the source address of the first STUN message carrying ``transaction_id``."""
        fut = asyncio.get_running_loop().create_future()
        self._watches[transaction_id] = fut
        return fut

    def datagram_received(self, data: bytes, addr) -> None:
        if self._watches and len(data) >= 20:
            fut = self._watches.get(data[8:20])  # RFC 8489 §5: transaction ID, bytes 8-19
            if fut is not None and not fut.done():
                fut.set_result(TransportAddress.of(addr))
        super().datagram_received(data, addr)


@dataclasses.dataclass
class _Timers:
    rto: float | None = None
    window: float | None = None


class _Run:
    """One discovery: sockets, timers and the per-server plans. Close with :meth:`close`."""

    def __init__(self, *, timeout: float, window: float | None, local_host: str | None) -> None:
        self.timeout = timeout
        self.window_override = window
        self.local_host = local_host
        self.timers = _Timers()
        self._opening: list[asyncio.Task] = []
        self._mapping: dict[int, asyncio.Task] = {}
        self._routes: dict[str, str | None] = {}
        loop = asyncio.get_running_loop()
        self.anchor: asyncio.Future = loop.create_future()  # (server, primary, Exchange) of the first answer
        self.first_answer = asyncio.Event()  # some server answered a Test I
        self.first_rtt_ms: float | None = None

    # sockets -----------------------------------------------------------------
    async def open(self, family: int) -> _Endpoint:
        host = self.local_host or ("::" if family == 6 else "0.0.0.0")
        task = asyncio.ensure_future(_Endpoint.open(host))
        self._opening.append(task)
        return await task

    async def mapping_socket(self, family: int) -> _Endpoint:
        # one mapping socket per family, opened once even when servers race for it
        if family not in self._mapping:
            host = self.local_host or ("::" if family == 6 else "0.0.0.0")
            self._mapping[family] = task = asyncio.ensure_future(_Endpoint.open(host))
            self._opening.append(task)
        return await self._mapping[family]

    def close(self) -> None:
        for task in self._opening:
            if task.done() and not task.cancelled() and task.exception() is None:
                task.result().close()
            elif not task.done():
                task.cancel()

    def local_for(self, ep: _Endpoint, dest: TransportAddress) -> TransportAddress:
        """The socket's local address with a wildcard IP replaced by the routed source IP."""
        local = ep.local_address
        if local.host not in ("0.0.0.0", "::"):
            return local
        if dest.host not in self._routes:
            self._routes[dest.host] = route_local_ip(dest)
        ip = self._routes[dest.host]
        return TransportAddress(ip, local.port) if ip else local

    def plan(self, rtt_ms: float | None) -> tuple[float, float]:
        """RTO and window after a measured RTT; the first measurement fixes them for the run."""
        rto, window = plan_timers(rtt_ms, self.timeout, self.window_override)
        if self.timers.window is None:
            self.timers = _Timers(rto, window)
        return rto, window

    # one transaction -----------------------------------------------------------
    async def exchange(self, ep: _Endpoint, socket: str, test: str, dest: TransportAddress, *,
                       change: int = 0, timeout: float, rto: float) -> Exchange:
        """Run one Binding transaction and record it as an :class:`Exchange` (never raises NatkitError)."""
        attrs = {"CHANGE-REQUEST": change} if change else {}
        local = self.local_for(ep, dest)
        base: dict[str, Any] = {"test": test, "socket": socket, "destination": dest, "local": local, "change_request": change}
        started = time.monotonic()
        try:
            resp = await ep.request(binding_request(**attrs), dest, timeout=timeout, rto=rto)
        except StunTimeout:
            waited = time.monotonic() - started
            return Exchange(**base, failure=f"no answer within {waited * 1000:.0f} ms", waited_ms=waited * 1000.0)
        except (ServerUnreachable, MalformedMessage) as exc:
            return Exchange(**base, failure=exc.message)
        except OSError as exc:
            return Exchange(**base, failure=f"send failed: {exc.strerror or exc}")
        a = resp.message
        error = None
        if resp.is_error:
            code, reason = resp.error or (0, "")
            error = f"{code} {reason}".strip()
        other, other_attr = a.get("OTHER-ADDRESS"), "OTHER-ADDRESS"
        if other is None and "CHANGED-ADDRESS" in a:
            other, other_attr = a["CHANGED-ADDRESS"], "CHANGED-ADDRESS"
        origin = a.get("RESPONSE-ORIGIN") or a.get("SOURCE-ADDRESS")
        software = a.get("SOFTWARE")
        return Exchange(
            **base, answered=True, source=resp.source,
            xor_mapped=a.get("XOR-MAPPED-ADDRESS"),
            mapped=a.get("MAPPED-ADDRESS"),
            response_origin=origin,
            other_address=other,
            other_attribute=other_attr if other else None,
            software=software.rstrip("\x00") if isinstance(software, str) else None,
            error=error, rtt_ms=resp.rtt_ms, sends=resp.sends,
        )

    async def first_contact(self, ep: _Endpoint, socket: str, test: str, dest: TransportAddress) -> Exchange:
        """Test I: wait up to ``timeout``, but no longer than FIRST_CONTACT_GRACE (or 20 RTTs)
        after another server has answered, so that one dead server does not hold up the run."""
        started = time.monotonic()
        ask = asyncio.ensure_future(self.exchange(ep, socket, test, dest, timeout=self.timeout, rto=FIRST_RTO))

        async def cutoff() -> None:
            await self.first_answer.wait()
            await asyncio.sleep(max(FIRST_CONTACT_GRACE, 0.02 * (self.first_rtt_ms or 0.0)))

        cut = asyncio.ensure_future(cutoff())
        try:
            await asyncio.wait({ask, cut}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cut.cancel()
        if ask.done():
            ex = ask.result()
            if ex.ok and not self.first_answer.is_set():
                self.first_rtt_ms = ex.rtt_ms
                self.first_answer.set()
            return ex
        ask.cancel()
        await asyncio.gather(ask, return_exceptions=True)
        waited = (time.monotonic() - started) * 1000.0
        return Exchange(test=test, socket=socket, destination=dest, local=self.local_for(ep, dest),
                        failure=f"no answer within {waited:.0f} ms (given up {FIRST_CONTACT_GRACE:g} s after another server answered)",
                        waited_ms=waited)

    # per-server plan -------------------------------------------------------------
    async def server(self, index: int, text: str, uri) -> ServerObservation:
        """RFC 5780 §4.3 on the shared mapping socket and §4.4 on a fresh filtering socket, concurrently."""
        try:
            addr = await resolve(uri.host, uri.port, timeout=self.timeout)
        except NatkitError as exc:
            return ServerObservation(text, str(uri), None, error=exc.one_line())
        fam = "v6" if addr.family == 6 else "v4"
        try:
            mep = await self.mapping_socket(addr.family)
            fep = await self.open(addr.family)
        except NatkitError as exc:
            return ServerObservation(text, str(uri), addr, error=exc.one_line())
        exchanges: list[Exchange] = []
        msock, fsock = f"mapping/{fam}", f"filtering/{index}"

        async def mapping_side() -> None:
            first = await self.first_contact(mep, msock, TEST_I, addr)
            exchanges.append(first)
            if not first.ok:
                return
            if not self.anchor.done():
                self.anchor.set_result((text, addr, first))
            other, _ = validate_primary(first)
            if other is None:
                return
            rto, window = self.plan(first.rtt_ms)
            dests = alternate_addresses(addr, other)
            tests = await asyncio.gather(*(
                self.exchange(mep, msock, t, dests[t], timeout=window, rto=rto) for t in (TEST_II, TEST_III, TEST_IV)
            ))
            exchanges.extend(tests)
            if all(ex.ok and ex.source == ex.destination for ex in tests):
                # controls: this socket has now talked to IP2:P2 and IP1:P2
                exchanges.extend(await asyncio.gather(
                    self.exchange(mep, msock, CONTROL_II, addr, change=CHANGE_IP | CHANGE_PORT, timeout=window, rto=rto),
                    self.exchange(mep, msock, CONTROL_III, addr, change=CHANGE_PORT, timeout=window, rto=rto),
                ))

        async def filtering_side() -> None:
            first = await self.first_contact(fep, fsock, FILTER_I, addr)
            exchanges.append(first)
            other, _ = validate_primary(first)
            if other is None:
                return
            rto, window = self.plan(first.rtt_ms)
            exchanges.extend(await asyncio.gather(
                self.exchange(fep, fsock, FILTER_II, addr, change=CHANGE_IP | CHANGE_PORT, timeout=window, rto=rto),
                self.exchange(fep, fsock, FILTER_III, addr, change=CHANGE_PORT, timeout=window, rto=rto),
            ))

        await asyncio.gather(mapping_side(), filtering_side())
        return ServerObservation(text, str(uri), addr, exchanges=exchanges_in_order(exchanges))

    # §4.5 hairpinning ------------------------------------------------------------
    async def hairpin(self) -> HairpinObservation | None:
        """Two fresh sockets learn their mapped addresses, then send a Binding request to each other's.

        Both directions at once, so that address-dependent filtering does not
        hide a NAT that hairpins (each request also opens the sender's filter).
        """
        anchor = await self.anchor
        if anchor is None:
            return HairpinObservation("", None, "not run: no server answered")
        server, addr, first = anchor
        rto, window = self.plan(first.rtt_ms)
        h1, h2 = await asyncio.gather(self.open(addr.family), self.open(addr.family))
        e1, e2 = await asyncio.gather(
            self.exchange(h1, "hairpin/1", "H-1", addr, timeout=self.timeout, rto=FIRST_RTO),
            self.exchange(h2, "hairpin/2", "H-2", addr, timeout=self.timeout, rto=FIRST_RTO),
        )
        if not (e1.ok and e2.ok):
            return HairpinObservation(server, None, "not run: the server did not answer the hairpin sockets")
        r1, r2 = binding_request(), binding_request()
        arrivals = {h2.watch(r1.transaction_id), h1.watch(r2.transaction_id)}
        senders = [
            asyncio.ensure_future(h1.request(r1, e2.reflexive, timeout=window, rto=rto)),
            asyncio.ensure_future(h2.request(r2, e1.reflexive, timeout=window, rto=rto)),
        ]
        try:
            done, _ = await asyncio.wait(arrivals, timeout=window, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*senders, *arrivals):
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
        if done:
            return HairpinObservation(server, True, f"{e1.reflexive} and {e2.reflexive} reached each other", window)
        return HairpinObservation(server, False, f"nothing arrived between {e1.reflexive} and {e2.reflexive}", window)

    # §4.6 mapping lifetime ---------------------------------------------------------
    async def _response_port_probe(self, sender: _Endpoint, target: _Endpoint, port: int,
                                   addr: TransportAddress, rto: float, window: float) -> str | None:
        """Send a Binding with RESPONSE-PORT=port from ``sender``: "target" if the answer
        reached ``target``, "sender" if the server ignored RESPONSE-PORT, None if nothing came."""
        req = binding_request(**{"RESPONSE-PORT": port})
        arrival = target.watch(req.transaction_id)
        ask = asyncio.ensure_future(sender.request(req, addr, timeout=window, rto=rto))
        try:
            done, _ = await asyncio.wait({arrival, ask}, timeout=window, return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrival.cancel()
            ask.cancel()
            await asyncio.gather(ask, return_exceptions=True)
        if arrival in done:
            return "target"
        if ask in done and not ask.cancelled() and ask.exception() is None:
            return "sender"
        return None

    async def lifetime(self, bound_s: float) -> LifetimeObservation:
        """RFC 5780 §4.6 in one pass: one fresh mapping per checkpoint, all made at t0;
        at each checkpoint a separate socket asks the server (RESPONSE-PORT) to answer
        to that mapping. The search stops at the first mapping that has expired."""
        checkpoints = lifetime_checkpoints(bound_s)
        anchor = await self.anchor
        if anchor is None:
            return LifetimeObservation("", None, "no server answered", bound_s)
        server, addr, first = anchor
        rto, window = self.plan(first.rtt_ms)
        asker, check = await asyncio.gather(self.open(addr.family), self.open(addr.family))
        e_ask, e_check = await asyncio.gather(
            self.exchange(asker, "lifetime/ask", "L-ask", addr, timeout=self.timeout, rto=FIRST_RTO),
            self.exchange(check, "lifetime/check", "L-check", addr, timeout=self.timeout, rto=FIRST_RTO),
        )
        if not (e_ask.ok and e_check.ok):
            return LifetimeObservation(server, None, "the server did not answer the lifetime sockets", bound_s)
        got = await self._response_port_probe(asker, check, cast(TransportAddress, e_check.reflexive).port, addr, rto, window)
        if got != "target":
            detail = ("the answer came back to the requesting socket: the server ignores RESPONSE-PORT"
                      if got == "sender" else "no answer to a request carrying RESPONSE-PORT")
            return LifetimeObservation(server, False if got == "sender" else None, detail, bound_s)
        if e_check.reflexive == e_check.local:
            return LifetimeObservation(server, True, "RESPONSE-PORT honoured", bound_s, skipped="no NAT: no mapping to time out")
        sockets = await asyncio.gather(*(self.open(addr.family) for _ in checkpoints))
        made = await asyncio.gather(*(
            self.exchange(ep, f"lifetime/{i}", f"L-{i}", addr, timeout=self.timeout, rto=FIRST_RTO)
            for i, ep in enumerate(sockets)
        ))
        t0 = time.monotonic()
        samples: list[LifetimeSample] = []
        for after, ep, ex in zip(checkpoints, sockets, made):
            if not ex.ok:
                continue
            await asyncio.sleep(max(0.0, t0 + after - time.monotonic()))
            got = await self._response_port_probe(asker, ep, cast(TransportAddress, ex.reflexive).port, addr, rto, window)
            samples.append(LifetimeSample(after, got == "target"))
            ep.close()
            if got != "target":
                break
        return LifetimeObservation(server, True, "RESPONSE-PORT honoured", bound_s, tuple(samples))


async def discover_nat_async(
    servers: list[str],
    *,
    timeout: float = 3.0,
    window: float | None = None,
    hairpin: bool = False,
    lifetime: bool = False,
    lifetime_max: float = 120.0,
    local_host: str | None = None,
) -> NatReport:
    """Run the RFC 5780 probe plan against ``servers`` concurrently; see :func:`discover_nat`."""
    if not servers:
        raise UsageError("no STUN server given", hint="natkit nat stun:HOST[:PORT]")
    if not 0 < timeout < float("inf"):  # also nan
        raise UsageError(f"timeout must be a positive number of seconds, got {timeout}")
    if window is not None and not 0 < window < float("inf"):
        raise UsageError(f"window must be a positive number of seconds, got {window}")
    if lifetime:
        lifetime_checkpoints(lifetime_max)  # validates the bound
    uris = [parse_server(s) for s in servers]  # raises InvalidURI first
    for text, uri in zip(servers, uris):
        if uri.transport != "udp":
            raise UsageError(f"{text}: RFC 5780 behaviour discovery runs over UDP only", hint="use stun:HOST[:PORT]")
    started = time.monotonic()
    run = _Run(timeout=timeout, window=window, local_host=local_host)
    extras: dict[str, asyncio.Future[Any]] = {}
    try:
        if hairpin:
            extras["hairpin"] = asyncio.ensure_future(run.hairpin())
        if lifetime:
            extras["lifetime"] = asyncio.ensure_future(run.lifetime(lifetime_max))
        try:
            observed = await asyncio.gather(*(run.server(i, s, u) for i, (s, u) in enumerate(zip(servers, uris))))
        finally:
            if not run.anchor.done():
                run.anchor.set_result(None)
        results = {name: await task for name, task in extras.items()}
    finally:
        for task in extras.values():
            task.cancel()
        run.close()
    duration_ms = (time.monotonic() - started) * 1000.0
    obs = NatObservations(
        servers=tuple(observed), timeout_s=timeout, window_s=run.timers.window, rto_s=run.timers.rto,
        hairpin=results.get("hairpin"), lifetime=results.get("lifetime"),
    )
    return classify(obs, duration_ms=duration_ms)


def discover_nat(
    servers: list[str],
    *,
    timeout: float = 3.0,
    window: float | None = None,
    hairpin: bool = False,
    lifetime: bool = False,
    lifetime_max: float = 120.0,
    local_host: str | None = None,
) -> NatReport:
    """Discover NAT mapping and filtering behaviour (RFC 5780 §4.3, §4.4) from UDP STUN servers.

    ``servers``: ``host``, ``host:port`` or ``stun:host[:port]`` (UDP only).
    At least one should support RFC 5780 (OTHER-ADDRESS and CHANGE-REQUEST);
    the others still add mapping evidence. ``timeout`` (seconds) bounds the
    wait for each server's first answer and caps the no-reply window;
    ``window`` (seconds) fixes that window instead of deriving it from the
    RTT. ``hairpin`` adds RFC 5780 §4.5; ``lifetime`` adds §4.6, searching up
    to ``lifetime_max`` seconds (at most 600) — the call then lasts up to
    that long behind a NAT. ``local_host`` binds every socket to that IP.

    Returns a :class:`NatReport` whatever the network did (no answer is a
    finding, see ``report.status`` and :func:`exit_code`). Raises
    :class:`~natkit.errors.InvalidURI` / :class:`~natkit.errors.UsageError`
    for bad input and :class:`~natkit.errors.NatkitError` when a socket cannot be bound.
    """
    return asyncio.run(discover_nat_async(
        servers, timeout=timeout, window=window, hairpin=hairpin, lifetime=lifetime,
        lifetime_max=lifetime_max, local_host=local_host,
    ))
