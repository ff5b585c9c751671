"""The report of one load run (JSON schema ``natkit.load/1``) and its comparison with a baseline.

Units: milliseconds (``*_ms``), packets or allocations per second
(``*_pps``, ``*_per_s``), percent (``*_pct``, of one core for CPU).
None means "not measured", never zero.

Packet counts of media profiles follow one packet through the relay::

    client --sent--> relay --to_peer--> peer (reflects) --> relay --returned--> client

``relayed_pps`` = (to_peer + returned) / duration: the packets the relay
delivered, both directions. ``loss_pct`` is the round trip's
(1 - returned / sent); ``forward_loss_pct`` and ``return_loss_pct`` split it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..errors import Failure, exit_code_for

SCHEMA = "natkit.load/1"


@dataclasses.dataclass(frozen=True)
class Cpu:
    """CPU use over the run (percent of one core). ``busiest_thread_pct``: the server's hottest thread."""

    workers_pct: tuple[float, ...] = ()  # each generator worker process
    workers_waiting_pct: tuple[float | None, ...] = ()  # share of the time each worker was runnable but had no CPU
    coordinator_pct: float | None = None
    server_pct: float | None = None  # all threads of the server process (None: not local / not measured)
    server_busiest_thread_pct: float | None = None
    host_loadavg: tuple[float, float] | None = None  # 1-minute load average at the start and the end (run queue + running)
    host_cpus: int | None = None

    @property
    def worker_max_pct(self) -> float | None:
        return max(self.workers_pct) if self.workers_pct else None


@dataclasses.dataclass(frozen=True)
class Drops:
    """Datagrams the kernel dropped during the run (None: not measured)."""

    generator: int | None = None  # on the generator's own UDP sockets (/proc/net/udp drops)
    server: int | None = None  # on the local server's UDP sockets
    rcvbuf_errors: int | None = None  # whole host: /proc/net/snmp Udp RcvbufErrors
    sndbuf_errors: int | None = None  # whole host: /proc/net/snmp Udp SndbufErrors
    generator_send_skipped: int = 0  # packets of the schedule the generator did not send (behind, full TCP queue, send refused)


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of a ramp (media: concurrent sessions; alloc: offered allocations/s)."""

    index: int
    seconds: float
    sessions: int | None = None
    offered_per_s: float | None = None  # media: packets/s; alloc: allocations/s
    achieved_per_s: float | None = None  # media: packets sent/s; alloc: successful allocations/s
    returned_per_s: float | None = None
    loss_pct: float | None = None
    rtt_ms_p50: float | None = None
    rtt_ms_p99: float | None = None
    latency_ms_p50: float | None = None  # alloc: Allocate latency (challenge included)
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    worker_cpu_max_pct: float | None = None
    server_cpu_pct: float | None = None
    passed: bool | None = None
    reason: str | None = None  # why it did not pass


@dataclasses.dataclass(frozen=True)
class MediaTotals:
    sessions: int
    sessions_failed: int
    seconds: float
    sent: int
    to_peer: int
    returned: int
    offered_pps: float
    sent_pps: float
    to_peer_pps: float
    returned_pps: float
    relayed_pps: float
    loss_pct: float | None
    forward_loss_pct: float | None
    return_loss_pct: float | None
    duplicates: int
    reordered: int
    malformed: int
    rtt_ms_p50: float | None
    rtt_ms_p95: float | None
    rtt_ms_p99: float | None
    rtt_ms_max: float | None
    jitter_ms_p50: float | None  # one-way (client → peer) RFC 3550 jitter, across sessions
    jitter_ms_p95: float | None
    jitter_ms_max: float | None
    setup_ms_p50: float | None
    setup_ms_p99: float | None


@dataclasses.dataclass(frozen=True)
class SessionResult:
    index: int
    sent: int
    to_peer: int
    returned: int
    loss_pct: float | None
    duplicates: int
    reordered: int
    jitter_ms: float
    jitter_return_ms: float
    rtt_ms_p50: float | None
    rtt_ms_p99: float | None
    setup_ms: float | None
    local: str | None
    relayed: str | None
    peer: str | None
    control_sent: int = 0
    control_received: int = 0


@dataclasses.dataclass(frozen=True)
class AllocTotals:
    attempts: int
    ok: int
    errors: dict[str, int]
    step_errors: dict[str, int]
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    latency_ms_p99: float | None
    best_rate_per_s: float | None  # the highest step that passed: successful allocations/s
    best_offered_per_s: float | None
    peak_rate_per_s: float | None = None  # the highest achieved rate of any step, passing or not


@dataclasses.dataclass(frozen=True)
class HoldTotals:
    target: int
    reached: int  # concurrent allocations held at once (the ceiling)
    attempts: int
    held_seconds: float
    errors: dict[str, int]
    first_refusal: dict | None  # {"code", "reason", "held"}
    reason: str  # the ceiling's reason, in words
    refreshes_ok: int
    refreshes_failed: dict[str, int]
    channels_failed: dict[str, int]
    latency_ms_p50: float | None
    latency_ms_p99: float | None


@dataclasses.dataclass(frozen=True)
class ServerFacts:
    """What is known about a local server (None: unknown)."""

    pid: int | None = None
    fd_limit: int | None = None  # "Max number of open files/sockets allowed" from its log
    max_sessions: int | None = None  # coturn's own estimate from the fd limit
    port_range: tuple[int, int] | None = None
    port_range_size: int | None = None
    user_quota: int | None = None
    total_quota: int | None = None


@dataclasses.dataclass(frozen=True)
class CrossCheck:
    """natkit's own counts against coturn's per-session ``usage``/``peer usage`` log lines."""

    sessions_checked: int
    sessions_matched: int
    mismatches: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.sessions_checked > 0 and not self.mismatches


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The headline figure and whether it is the server's limit."""

    figure: str  # "calls_carried", "relayed_pps", "allocations_per_s", "concurrent_allocations"
    value: float | None
    limited_by: str  # "server", "generator", "quota", "port range", "fd limit", "duration", "sessions", "session cap", "packet cap", "interrupted", "errors"
    server_limit: bool  # True only when the generator was not saturated and the server showed the limit
    notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class LoadReport:
    schema: str
    profile: str
    server: str
    transport: str
    peer: str
    started: float  # Unix time
    duration_s: float
    interrupted: bool
    workers: int
    config: dict
    verdict: Verdict
    cpu: Cpu
    drops: Drops
    server_facts: ServerFacts
    steps: tuple[Step, ...] = ()
    media: MediaTotals | None = None
    alloc: AllocTotals | None = None
    hold: HoldTotals | None = None
    sessions: tuple[SessionResult, ...] = ()
    released: int = 0
    release_failed: int = 0
    cross_check: CrossCheck | None = None
    baseline: dict | None = None  # comparison with --baseline
    failures: tuple[Failure, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else exit_code_for(self.failures)

    def to_json(self) -> dict:
        from ..model import to_jsonable

        out = to_jsonable(self)
        out["ok"], out["exit_code"] = self.ok, self.exit_code
        return out


# ------------------------------------------------------------------ baseline
# (figure path in the JSON, better direction, absolute slack): what a regression is, per profile
_COMPARED: dict[str, tuple[tuple[str, str, float], ...]] = {
    "alloc": (("alloc.best_rate_per_s", "higher", 0.0), ("alloc.latency_ms_p99", "lower", 1.0)),
    "hold": (("hold.reached", "higher", 0.0),),
    "audio": (("verdict.value", "higher", 0.0), ("media.loss_pct", "lower", 0.5), ("media.rtt_ms_p99", "lower", 1.0)),
    "video": (("verdict.value", "higher", 0.0), ("media.loss_pct", "lower", 0.5), ("media.rtt_ms_p99", "lower", 1.0)),
    "rate": (("media.relayed_pps", "higher", 0.0), ("media.loss_pct", "lower", 0.5), ("media.rtt_ms_p99", "lower", 1.0)),
}


def _get(doc: dict, path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def compare(current: dict, baseline: dict, tolerance: float) -> tuple[dict, list[str]]:
    """Compare two ``natkit.load/1`` documents of one profile.

    A figure regresses when it is worse than the baseline's by more than
    ``tolerance`` (a fraction: 0.1 = 10 %) plus a small absolute slack (0.5
    percentage points of loss, 1 ms of latency). Returns ``(table,
    regressions)``; ``table`` maps each figure to ``{baseline, current,
    change_pct, regressed}``. Raises ValueError for another schema or profile.
    """
    if baseline.get("schema") != SCHEMA:
        raise ValueError(f"the baseline is not a {SCHEMA} document (schema {baseline.get('schema')!r})")
    if baseline.get("profile") != current.get("profile"):
        raise ValueError(f"the baseline is a {baseline.get('profile')!r} run, this is {current.get('profile')!r}")
    table: dict[str, dict] = {}
    regressions: list[str] = []
    for path, better, slack in _COMPARED.get(current["profile"], ()):
        old, new = _get(baseline, path), _get(current, path)
        if old is None or new is None:
            table[path] = {"baseline": old, "current": new, "change_pct": None, "regressed": None}
            continue
        change = None if old == 0 else 100.0 * (new - old) / abs(old)
        if better == "higher":
            regressed = new < old * (1 - tolerance) - slack
        else:
            regressed = new > old * (1 + tolerance) + slack
        table[path] = {"baseline": old, "current": new, "change_pct": change, "regressed": regressed}
        if regressed:
            regressions.append(f"{path} {new:g} vs baseline {old:g} ({'+' if (change or 0) >= 0 else ''}{change or 0:.1f} %, "
                               f"tolerance {tolerance * 100:g} %)")
    return table, regressions


def load_baseline(path: str) -> dict:
    """Read a baseline JSON file; raises :class:`~natkit.errors.UsageError` when it cannot be used."""
    from ..errors import UsageError

    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read the baseline {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"the baseline {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise UsageError(f"the baseline {path} is not a {SCHEMA} report", hint="write one with natkit turn load ... --json > FILE")
    return doc
