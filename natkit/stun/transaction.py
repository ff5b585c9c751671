"""The RFC 8489 §6.2 client transaction as a sans-I/O state machine.

Nothing here owns a socket or reads a clock: the driver passes ``now``
(seconds, any monotonic origin) and the machine answers what to do.

    tx = ClientTransaction(Retransmission(rto=0.5, budget=3.0), now=clock())
    while True:
        action = tx.poll(clock())
        if action is Action.SEND:
            sock.send(data)
        elif action is Action.TIMEOUT:
            raise tx.timeout_error(server)
        else:                        # Action.WAIT
            wait for a response until tx.wakeup; on one: tx.response(clock())

Over UDP (§6.2.1) the request is sent at 0, RTO, 3 RTO, 7 RTO ... (the
interval doubles) until Rc sends; after the last send the client waits
Rm x RTO. With RFC 8489's defaults (RTO 500 ms, Rc 7, Rm 16) that is 39.5 s.
Over TCP/TLS (§6.2.2) the request is sent once and the client waits Ti
(39.5 s). A total ``budget`` cuts either schedule short; the timeout says
which limit fired (:class:`Limit`).
"""

from __future__ import annotations

import enum

from ..errors import StunTimeout, UsageError
from ..model import format_duration

DEFAULT_RTO = 0.5  # s, RFC 8489 §6.2.1
DEFAULT_RC = 7
DEFAULT_RM = 16
DEFAULT_TI = 39.5  # s, RFC 8489 §6.2.2


class Action(enum.Enum):
    SEND = "send"  # (re)transmit the request now, then poll again
    WAIT = "wait"  # wait for a response until ``wakeup``
    TIMEOUT = "timeout"  # give up: ``limit`` says why
    DONE = "done"  # a response was accepted


class Limit(str, enum.Enum):
    """Which limit ended an unanswered transaction."""

    RC = "rc"  # Rc sends made and Rm x RTO waited after the last (RFC 8489 §6.2.1)
    TI = "ti"  # the reliable-transport timeout Ti (§6.2.2)
    BUDGET = "budget"  # the caller's total time budget


class Retransmission:
    """Retransmission parameters (RFC 8489 §6.2.1, §6.2.2). Times in seconds. Immutable.

    ``rto``: initial retransmission timeout; ``rc``: most sends; ``rm``:
    after the last send wait ``rm * rto``; ``budget``: total time from the
    first send (None: no budget); ``reliable``: TCP/TLS, one send and a wait
    of ``ti``. Raises :class:`~natkit.errors.UsageError` for values that are
    not finite and positive. (A plain class, not a dataclass: ``natkit probe``
    imports it and start-up time is part of the product.)
    """

    _FIELDS = ("rto", "rc", "rm", "budget", "reliable", "ti")
    __slots__ = ("budget", "rc", "reliable", "rm", "rto", "ti")
    rto: float
    rc: int
    rm: int
    budget: float | None
    reliable: bool
    ti: float

    def __init__(self, rto: float = DEFAULT_RTO, rc: int = DEFAULT_RC, rm: int = DEFAULT_RM, budget: float | None = None,
                 reliable: bool = False, ti: float = DEFAULT_TI) -> None:
        for name, value in (("rto", rto), ("ti", ti), ("budget", budget)):
            if value is not None and not 0 < value < float("inf"):  # also rejects nan
                raise UsageError(f"{name} must be a positive number of seconds, got {value}")
        if rc < 1 or rm < 1:
            raise UsageError(f"Rc and Rm must be at least 1, got Rc={rc} Rm={rm}")
        for name, value in (("rto", rto), ("rc", rc), ("rm", rm), ("budget", budget), ("reliable", reliable), ("ti", ti)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Retransmission is immutable; use replace()")

    def replace(self, **changes: object) -> Retransmission:
        """A copy with some parameters changed."""
        args = {name: getattr(self, name) for name in self._FIELDS}
        args.update(changes)
        return Retransmission(**args)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Retransmission) and all(getattr(self, n) == getattr(other, n) for n in self._FIELDS)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self._FIELDS))

    def __repr__(self) -> str:
        return "Retransmission(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self._FIELDS) + ")"

    def schedule(self) -> tuple[float, ...]:
        """Send times from 0 without a budget (UDP), e.g. (0, .5, 1.5, 3.5, 7.5, 15.5, 31.5)."""
        if self.reliable:
            return (0.0,)
        times, t, interval = [], 0.0, self.rto
        for _ in range(self.rc):
            times.append(t)
            t += interval
            interval *= 2
        return tuple(times)

    def lifetime(self) -> float:
        """Seconds until an unanswered transaction times out (39.5 s with the defaults)."""
        natural = self.ti if self.reliable else self.schedule()[-1] + self.rm * self.rto
        return natural if self.budget is None else min(natural, self.budget)


class ClientTransaction:
    """One request's retransmission state (RFC 8489 §6.2), driven by ``poll(now)``.

    ``sends`` counts transmissions; ``rtt`` (seconds, last send to the
    accepted response) is set by :meth:`response`; ``limit`` by a timeout.
    """

    __slots__ = ("_interval", "end", "last_sent", "limit", "next_at", "policy", "rtt", "sends", "started", "state")

    def __init__(self, policy: Retransmission, now: float) -> None:
        self.policy = policy
        self.started = now
        self.sends = 0
        self.last_sent: float | None = None
        self.next_at = now  # the first send is due at once
        self.end = now + policy.budget if policy.budget is not None else float("inf")
        self.state = Action.WAIT
        self.limit: Limit | None = None
        self.rtt: float | None = None
        self._interval = policy.rto

    @property
    def done(self) -> bool:
        return self.state in (Action.DONE, Action.TIMEOUT)

    @property
    def wakeup(self) -> float:
        """When the driver must poll again at the latest (absolute, same clock as ``now``)."""
        return min(self.next_at, self.end)

    def poll(self, now: float) -> Action:
        """What to do at ``now``: SEND (then poll again), WAIT, TIMEOUT or DONE."""
        if self.done:
            return self.state
        p = self.policy
        if now >= self.next_at and (self.sends == 0 or now < self.end):
            last = self.sends >= (1 if p.reliable else p.rc)
            if not last:
                self.sends += 1
                self.last_sent = now
                if p.reliable:
                    self.next_at = now + p.ti
                elif self.sends < p.rc:
                    self.next_at = now + self._interval
                    self._interval *= 2
                else:
                    self.next_at = now + p.rm * p.rto
                return Action.SEND
            return self._timeout(Limit.TI if p.reliable else Limit.RC)
        if now >= self.end:
            return self._timeout(Limit.BUDGET)
        return Action.WAIT

    def _timeout(self, limit: Limit) -> Action:
        self.state, self.limit = Action.TIMEOUT, limit
        return Action.TIMEOUT

    def response(self, now: float) -> float:
        """Accept a response at ``now``; returns the RTT in seconds from the last send."""
        if self.state is Action.WAIT:
            self.state = Action.DONE
            self.rtt = max(0.0, now - (self.last_sent if self.last_sent is not None else self.started))
        return self.rtt if self.rtt is not None else 0.0

    def describe_timeout(self) -> str:
        """One line: what was sent and which limit fired."""
        p, sends = self.policy, f"{self.sends} send{'s' if self.sends != 1 else ''}"
        if self.limit is Limit.BUDGET:
            return f"no response within the {format_duration(p.budget or 0.0)} budget ({sends})"
        if self.limit is Limit.TI:
            return f"no response within Ti={format_duration(p.ti)} over a reliable transport ({sends})"
        return f"no response after Rc={p.rc} sends and the final Rm x RTO={format_duration(p.rm * p.rto)} wait ({sends})"

    def timeout_error(self, server: str | None = None, *, step: str | None = None, hint: str | None = None) -> StunTimeout:
        """The :class:`~natkit.errors.StunTimeout` for this timeout (``limit`` set)."""
        return StunTimeout(self.describe_timeout(), server=server, step=step, hint=hint,
                           limit=self.limit.value if self.limit else None)


class TransactionTable:
    """Many concurrent transactions keyed by transaction ID, one clock (pion/stun's agent, sans-I/O).

    ``start`` registers one; ``due(now)`` returns the IDs to (re)send now and
    the transactions that timed out (removed); ``response(txid, now)``
    accepts an answer (returns the transaction, or None for a stray one);
    ``wakeup`` is the earliest time anything is due.
    """

    def __init__(self) -> None:
        self._tx: dict[bytes, ClientTransaction] = {}

    def __len__(self) -> int:
        return len(self._tx)

    def __contains__(self, txid: object) -> bool:
        return txid in self._tx

    def start(self, txid: bytes, policy: Retransmission, now: float) -> ClientTransaction:
        tx = ClientTransaction(policy, now)
        self._tx[txid] = tx
        return tx

    def response(self, txid: bytes, now: float) -> ClientTransaction | None:
        tx = self._tx.pop(txid, None)
        if tx is not None:
            tx.response(now)
        return tx

    def cancel(self, txid: bytes) -> None:
        self._tx.pop(txid, None)

    def due(self, now: float) -> tuple[list[bytes], list[tuple[bytes, ClientTransaction]]]:
        sends, expired = [], []
        for txid, tx in list(self._tx.items()):
            while True:
                action = tx.poll(now)
                if action is Action.SEND:
                    sends.append(txid)
                    continue
                if action is Action.TIMEOUT:
                    expired.append((txid, self._tx.pop(txid)))
                break
        return sends, expired

    @property
    def wakeup(self) -> float | None:
        return min((tx.wakeup for tx in self._tx.values()), default=None)
