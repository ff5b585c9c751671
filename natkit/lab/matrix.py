"""The outcome matrix: every unordered pair of NAT behaviours, STUN only and STUN+TURN.

:func:`run_matrix` builds (or uses) a lab with two hosts per behaviour,
verifies every NAT, then runs each cell as one WebRTC attempt between a
host of each behaviour (``X1`` offers to ``Y2``; ``X1`` to ``X2`` on the
diagonal), several at a time, and compares the outcome with the expected
matrix of docs/lab.md (:func:`natkit.lab.spec.expected_outcome`, what
libwebrtc's own transport tests assert).

The ICE agents (:data:`AGENTS`): ``aiortc`` (natkit's lab agent: aiortc with
the adjustments of :mod:`natkit._aiortc_private`), ``stock`` (the same agent
with aioice as released), ``chromium`` (Debian's Chromium in every host,
:mod:`natkit.lab.browser`), ``mixed`` (Chromium offers, aiortc answers),
``firefox`` (Debian's Firefox ESR over WebDriver BiDi, :mod:`natkit.lab.firefox`).
Every agent gets the same signaling: complete SDP after gathering, carried
by the controller, the answer delayed by
:data:`natkit.lab.peers.ANSWER_DELAY`. :func:`run_comparison` runs several
agents on one lab and lines them up cell by cell.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Self

from ..errors import Failure, exit_code_for
from .spec import (
    BEHAVIOURS,
    FAILED,
    MATRIX_BEHAVIOURS,
    RELAY,
    SHORT,
    LabSpec,
    expected_outcome,
    normalise_behaviour,
    outcome_matches,
)

if TYPE_CHECKING:
    from .lab import HostCheck
    from .peers import PairResult

SCHEMA = "natkit.lab.matrix/1"
SCHEMA_COMPARE = "natkit.lab.matrix-compare/1"
MODES = ("stun", "stun+turn")
AGENTS = ("aiortc", "stock", "chromium", "mixed", "firefox")
AGENT_LABELS = {"stock": "stock aioice", "aiortc": "natkit aiortc", "chromium": "Chromium", "mixed": "Chromium x aiortc", "firefox": "Firefox"}


@dataclasses.dataclass(frozen=True)
class MatrixCell:
    """One attempt of the matrix."""

    a: str  # behaviour of the offerer's NAT
    b: str  # behaviour of the answerer's NAT
    mode: str  # "stun" (host + srflx candidates) or "stun+turn" (+ relay)
    expected: str  # direct | direct (prflx) | relay | failed
    outcome: str  # direct host | direct srflx | direct prflx | relay | failed | inconsistent
    match: bool
    result: PairResult


@dataclasses.dataclass(frozen=True)
class MatrixReport:
    """Result of :func:`run_matrix` (JSON schema ``natkit.lab.matrix/1``). Times in milliseconds."""

    schema: str
    ok: bool  # every cell matched the expectation
    behaviours: tuple[str, ...]
    cells: tuple[MatrixCell, ...]
    mismatches: int
    checks: tuple[HostCheck, ...]  # per host: the NAT verification
    deadline_s: float  # per attempt
    concurrency: int
    timings: dict[str, float]  # build_ms, coturn_ms, agents_ms, verify_ms, matrix_ms, teardown_ms (+ browsers_ms, signal_ms)
    duration_ms: float
    agent: str = "aiortc"  # one of AGENTS
    agent_info: dict = dataclasses.field(default_factory=dict)  # browser version, per-host browser start_ms

    @property
    def failures(self) -> tuple[Failure, ...]:
        """One failed assertion per cell whose outcome differs from the expected matrix."""
        return tuple(Failure.check("matrix", f"{c.a} x {c.b} ({c.mode}): expected {c.expected}, measured {c.outcome}")
                     for c in self.cells if not c.match)

    @property
    def exit_code(self) -> int:
        """0 when every cell matched, else 1."""
        return exit_code_for(self.failures)

    def cell(self, a: str, b: str, mode: str) -> MatrixCell:
        a, b = normalise_behaviour(a), normalise_behaviour(b)
        for c in self.cells:
            if c.mode == mode and {c.a, c.b} == {a, b} and (a != b or c.a == c.b):
                return c
        raise KeyError((a, b, mode))


def pairs(behaviours: Iterable[str] = MATRIX_BEHAVIOURS) -> list[tuple[str, str]]:
    """Every unordered pair, diagonal included, in matrix order."""
    bs = [normalise_behaviour(b) for b in behaviours]
    return [(bs[i], bs[j]) for i in range(len(bs)) for j in range(i, len(bs))]


def hosts_for(a: str, b: str) -> tuple[str, str]:
    """The hosts of a matrix lab that play a cell: ``X1`` offers to ``Y2``."""
    return f"{SHORT[a]}1", f"{SHORT[b]}2"


class AgentSet:
    """The ICE agents of one matrix run, by host (a context manager that stops what it started).

    ``aiortc``: the lab's own agents. ``stock``: separate aiortc agent
    processes with ``NATKIT_LAB_STOCK=1``. ``chromium``: a
    :class:`~natkit.lab.browser.BrowserSession` with a browser in every host
    (``session``: an already running one to use). ``mixed``: browsers in the
    offering hosts (``X1``), the lab's aiortc agents in the answering ones.
    """

    def __init__(self, lab, kind: str, hosts, *, session=None) -> None:
        from ..errors import UsageError

        if kind not in AGENTS:
            raise UsageError(f"unknown agent {kind!r}", hint="one of " + ", ".join(AGENTS))
        self.lab = lab
        self.kind = kind
        self.hosts = list(hosts)
        self.session = session
        self._own_session = False
        self._stock: dict = {}
        self.info: dict = {}

    def browser_hosts(self) -> list[str]:
        if self.kind == "chromium":
            return self.hosts
        if self.kind == "mixed":
            return [h for h in self.hosts if h.endswith("1")]
        return []

    def __enter__(self) -> Self:
        try:
            if self.kind in ("stock", "firefox"):
                self._start_processes()
            hosts = self.browser_hosts()
            if hosts:
                from .browser import BrowserSession

                if self.session is None:
                    self.session = BrowserSession(self.lab, hosts).__enter__()
                    self._own_session = True
                else:
                    self.session.add(hosts)
                first = self.session.agent(hosts[0])
                self.info = {**self.info, "browser": "chromium", "version": first.version,
                             "start_ms": {h: self.session.start_ms.get(h) for h in hosts}, "page": self.session.page_url,
                             **{k: v for k, v in self.session.timings.items()}}
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start_processes(self) -> None:
        from .peers import AgentClient

        args: tuple[str, ...] = ()
        if self.kind == "firefox":
            from ..errors import EnvironmentProblem
            from .browser import BrowserSession
            from .firefox import firefox_available

            ok, reason = firefox_available()
            if not ok:
                raise EnvironmentProblem(reason, step="browser")
            if self.session is None:  # only for its signaling server: the page Firefox opens
                self.session = BrowserSession(self.lab).__enter__()
                self._own_session = True
            args = (self.session.page_url,)
        t = time.monotonic()
        pace = [] if self.kind != "firefox" else self.hosts  # a browser launch is CPU-bound: a few at a time
        from .browser import LAUNCH_CONCURRENCY

        for i, h in enumerate(self.hosts):
            if h in pace and i >= LAUNCH_CONCURRENCY:
                earlier = self._stock[self.hosts[i - LAUNCH_CONCURRENCY]]
                earlier._result(earlier.ready, 60.0, "start")
            self._stock[h] = AgentClient(
                h, self.lab.ns(h), log_path=str(self.lab.dir / f"agent-{self.kind}-{h}.log"), args=args,
                module="natkit.lab.firefox" if self.kind == "firefox" else "natkit.lab.peers",
                env={**self.lab.agent_env, "NATKIT_LAB_STOCK": "1"} if self.kind == "stock" else self.lab.agent_env)
        starts = {}
        for h, ag in self._stock.items():
            ready = ag._result(ag.ready, 60.0, "start")
            starts[h] = ready.get("start_ms")
            if ready.get("browser"):
                self.info.update({"browser": ready["browser"], "version": ready.get("version"), "page": self.session.page_url})
        if self.kind == "firefox":
            self.info.update({"start_ms": starts, "browsers_ms": (time.monotonic() - t) * 1000.0})

    def __exit__(self, *exc) -> None:
        for ag in self._stock.values():
            ag.close_stdin()
        for ag in self._stock.values():
            ag.close(grace=0.5)
        self._stock = {}
        if self._own_session and self.session is not None:
            self.session.stop()
            self.session = None

    def get(self, host: str):
        if host in self._stock:
            return self._stock[host]
        if host in self.browser_hosts():
            return self.session.agent(host)
        return self.lab.agent(host)


def run_matrix(
    lab=None,
    *,
    agent: str = "aiortc",
    behaviours: Iterable[str] = MATRIX_BEHAVIOURS,
    modes: Iterable[str] = MODES,
    deadline: float = 10.0,
    concurrency: int = 4,
    progress=None,
    session=None,
) -> MatrixReport:
    """Run the matrix with one kind of ICE agent and return a :class:`MatrixReport`.

    ``lab``: a running :class:`~natkit.lab.lab.NatLab` built from
    :meth:`LabSpec.matrix` (or a superset); None builds one for the run and
    tears it down after. ``agent``: one of :data:`AGENTS`. ``deadline``:
    seconds per attempt. ``concurrency``: attempts in flight at once (cells
    that are expected to fail, and so take the whole deadline, start first).
    ``progress``: called with each finished :class:`MatrixCell`.
    ``session``: a running :class:`~natkit.lab.browser.BrowserSession` for
    the browser agents (else one is started and stopped for this run).
    Raises :class:`~natkit.errors.UsageError` for an unknown mode or agent,
    :class:`~natkit.errors.EnvironmentProblem` when a browser cannot start.
    """
    from .lab import NatLab

    started = time.monotonic()
    bs = [normalise_behaviour(b) for b in behaviours]
    modes = tuple(modes)
    for m in modes:
        if m not in MODES:
            from ..errors import UsageError

            raise UsageError(f"unknown matrix mode {m!r}", hint="stun or stun+turn")
    own = lab is None
    if own:
        lab = NatLab(LabSpec.matrix(behaviours=bs)).up()
    try:
        jobs = [(a, b, m) for m in modes for (a, b) in pairs(bs)]
        hosts = sorted({h for a, b, _ in jobs for h in hosts_for(a, b)})
        with AgentSet(lab, agent, hosts, session=session) as agents:
            done, matrix_ms = _run_cells(lab, agents, jobs, deadline, concurrency, progress)
            info = dict(agents.info)
        order = {(a, b, m): i for i, (a, b, m) in enumerate(jobs)}
        done.sort(key=lambda c: order[(c.a, c.b, c.mode)])
    finally:
        if own:
            lab.down()
    timings = dict(lab.timings)
    for k in ("signal_ms", "driver_ms", "browsers_ms"):
        if k in info:
            timings[k] = info.pop(k)
    timings["matrix_ms"] = matrix_ms
    mismatches = sum(1 for c in done if not c.match)
    return MatrixReport(
        schema=SCHEMA, ok=mismatches == 0, behaviours=tuple(bs), cells=tuple(done), mismatches=mismatches,
        checks=lab.checks, deadline_s=deadline, concurrency=concurrency, timings=timings,
        duration_ms=(time.monotonic() - started) * 1000.0, agent=agent, agent_info=info,
    )


def _run_cells(lab, agents: AgentSet, jobs, deadline: float, concurrency: int, progress) -> tuple[list, float]:
    from .peers import connect_pair

    # long ones first: an expected failure lasts the whole deadline
    jobs = sorted(jobs, key=lambda j: expected_outcome(j[0], j[1], turn=j[2] == "stun+turn") != FAILED)

    def run(job) -> MatrixCell:
        a, b, mode = job
        ha, hb = hosts_for(a, b)
        result = connect_pair(lab, ha, hb, turn=mode == "stun+turn", deadline=deadline, agents=(agents.get(ha), agents.get(hb)))
        want = expected_outcome(a, b, turn=mode == "stun+turn")
        ok = outcome_matches(want, result.outcome)
        if ok and want == RELAY:
            ok = result.relay_proven
        cell = MatrixCell(a, b, mode, want, result.outcome, ok, result)
        if progress is not None:
            progress(cell)
        return cell

    t = time.monotonic()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="natkit-matrix")
    try:
        done = list(pool.map(run, jobs))
    finally:
        # on Ctrl-C do not wait for attempts in flight: the teardown stops the agents, which ends them at once
        pool.shutdown(wait=False, cancel_futures=True)
    return done, (time.monotonic() - t) * 1000.0


@dataclasses.dataclass(frozen=True)
class MatrixComparison:
    """Several agents' matrices on one lab (JSON schema ``natkit.lab.matrix-compare/1``).

    ``reports``: agent -> :class:`MatrixReport`; ``differences``: the cells
    (``"a x b (mode)"``) where the agents' outcome kinds disagree.
    """

    schema: str
    ok: bool  # every agent matched the expected matrix in every cell
    agents: tuple[str, ...]
    reports: dict
    differences: tuple[str, ...]
    duration_ms: float


def outcome_kind(outcome: str) -> str:
    """``direct host``/``direct srflx`` -> ``direct``; prflx, relay, failed, inconsistent unchanged."""
    return "direct" if outcome in ("direct host", "direct srflx") else outcome


def run_comparison(lab=None, *, agents: Iterable[str] = ("stock", "aiortc", "chromium"), behaviours: Iterable[str] = MATRIX_BEHAVIOURS,
                   modes: Iterable[str] = MODES, deadline: float = 10.0, concurrency: int = 4, progress=None) -> MatrixComparison:
    """:func:`run_matrix` for each of ``agents`` on one lab (built here when ``lab`` is None), one after the other."""
    from .browser import BrowserSession
    from .lab import NatLab

    started = time.monotonic()
    bs = [normalise_behaviour(b) for b in behaviours]
    agents = tuple(agents)
    own = lab is None
    if own:
        lab = NatLab(LabSpec.matrix(behaviours=bs)).up()
    reports: dict = {}
    try:
        session = BrowserSession(lab) if any(a in ("chromium", "mixed") for a in agents) else None
        if session is not None:
            session.__enter__()
        try:
            for ag in agents:
                reports[ag] = run_matrix(lab, agent=ag, behaviours=bs, modes=modes, deadline=deadline, concurrency=concurrency,
                                         progress=progress, session=session)
        finally:
            if session is not None:
                session.stop()
    finally:
        if own:
            lab.down()
    diffs = []
    first = reports[agents[0]]
    for c in first.cells:
        kinds = {outcome_kind(reports[ag].cell(c.a, c.b, c.mode).outcome) for ag in agents}
        if len(kinds) > 1:
            diffs.append(f"{c.a} x {c.b} ({c.mode})")
    return MatrixComparison(SCHEMA_COMPARE, all(r.ok for r in reports.values()), agents, reports, tuple(diffs),
                            (time.monotonic() - started) * 1000.0)


def render_comparison(cmp: MatrixComparison) -> str:
    """One line per cell: expected, then each agent's outcome (✓/✗), then the selected pair types."""
    agents = cmp.agents
    first = cmp.reports[agents[0]]
    w = 47
    head = f"{'cell':<{w}}{'expected':<16}" + "".join(f"{AGENT_LABELS.get(a, a):<20}" for a in agents)
    lines = [head, "-" * len(head)]
    for c in first.cells:
        row = f"{_label(c.a) + ' x ' + _label(c.b) + ' (' + c.mode + ')':<{w}}{c.expected:<16}"
        for ag in agents:
            x = cmp.reports[ag].cell(c.a, c.b, c.mode)
            row += f"{x.outcome + (' ✓' if x.match else ' ✗'):<20}"
        lines.append(row)
    lines.append("")
    for ag in agents:
        r = cmp.reports[ag]
        lines.append(f"{AGENT_LABELS.get(ag, ag)}: {len(r.cells) - r.mismatches}/{len(r.cells)} as expected, "
                     f"matrix {r.timings.get('matrix_ms', 0) / 1000:.1f} s")
    lines.append("cells where the agents differ: " + (", ".join(cmp.differences) or "none"))
    return "\n".join(lines)


# ------------------------------------------------------------------ text rendering

_LABEL = {"open": "open", "full_cone": "full cone", "restricted": "restricted", "port_restricted": "port-restricted", "symmetric": "symmetric"}


def _label(b: str) -> str:
    return _LABEL.get(b, BEHAVIOURS[b][2])


def render_text(report: MatrixReport) -> str:
    """The matrix as text: per mode, measured outcomes (✓/✗) next to the expected ones."""
    bs = report.behaviours
    width = max(16, *(len(_label(b)) for b in bs)) + 1
    cellw = 24
    lines: list[str] = []
    agent = f" ({AGENT_LABELS.get(report.agent, report.agent)})" if report.agent != "aiortc" else ""
    for mode in dict.fromkeys(c.mode for c in report.cells):
        title = {"stun": "STUN only (host + srflx candidates)", "stun+turn": "STUN + TURN (host + srflx + relay candidates)"}[mode]
        lines.append(f"== {title}: measured{agent} | expected (docs/lab.md)")
        head = " " * width + "".join(f"{_label(b):<{cellw}}" for b in bs)
        lines.append(head + "  |  " + "".join(f"{_label(b):<{16}}" for b in bs))
        for i, a in enumerate(bs):
            row = f"{_label(a):<{width}}"
            exp = ""
            for j, b in enumerate(bs):
                if j < i:
                    row += " " * cellw
                    exp += " " * 16
                    continue
                c = next(c for c in report.cells if c.mode == mode and c.a == a and c.b == b)
                mark = "✓" if c.match else "✗"
                row += f"{c.outcome + ' ' + mark:<{cellw}}"
                exp += f"{c.expected:<16}"
            lines.append(row + "  |  " + exp)
        lines.append("")
    bad = [c for c in report.cells if not c.match]
    for c in bad:
        r = c.result
        side = lambda s: "–" if s is None else f"{s.local_type}->{s.remote_type}"
        lines.append(f"✗ {_label(c.a)} x {_label(c.b)} ({c.mode}): {c.outcome}, expected {c.expected}; "
                     f"pairs {r.a}: {side(r.offerer)}, {r.b}: {side(r.answerer)}" + (f"; {'; '.join(r.notes)}" if r.notes else ""))
    t = report.timings
    lines.append(
        f"{len(report.cells) - report.mismatches}/{len(report.cells)} cells as expected; "
        f"build {t.get('build_ms', 0):.0f} ms, coturn {t.get('coturn_ms', 0):.0f} ms, agents {t.get('agents_ms', 0):.0f} ms, "
        f"NAT verification {t.get('verify_ms', 0):.0f} ms, matrix {t.get('matrix_ms', 0) / 1000:.1f} s "
        f"({report.concurrency} at a time, {report.deadline_s:g} s deadline each), teardown {t.get('teardown_ms', 0):.0f} ms, "
        f"total {report.duration_ms / 1000:.1f} s"
    )
    if report.agent_info.get("start_ms"):
        starts = [v for v in report.agent_info["start_ms"].values() if v is not None]
        info = report.agent_info
        lines.append(f"{len(starts)} {info.get('browser', '').capitalize()} {info.get('version') or ''} browsers in the host namespaces, "
                     f"page from {report.agent_info.get('page')}; start to loaded page: max {max(starts):.0f} ms, "
                     f"all concurrently {t.get('browsers_ms', 0):.0f} ms")
    return "\n".join(lines)


def render_checks(checks) -> str:
    """One line per host: declared behaviour and what the probe measured."""
    out = []
    for c in checks:
        m = c.measured
        hp = m.get("hairpin")
        out.append(
            f"{'✓' if c.ok else '✗'} {c.host:<8} declared {c.declared:<16} measured {c.measured_label:<16} "
            f"mapping {m.get('mapping') or '–'}, filtering {m.get('filtering') or '–'}, "
            f"hairpin {'–' if hp is None else ('yes' if hp else 'no')}, public {m.get('public') or '–'}"
            + ("" if c.ok else "  <- " + "; ".join(c.problems))
        )
    return "\n".join(out)
