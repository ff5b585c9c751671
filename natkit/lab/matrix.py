"""The outcome matrix: every unordered pair of NAT behaviours, STUN only and STUN+TURN.

:func:`run_matrix` builds (or uses) a lab with two hosts per behaviour,
verifies every NAT, then runs each cell as one WebRTC attempt between a
host of each behaviour (``X1`` offers to ``Y2``; ``X1`` to ``X2`` on the
diagonal), several at a time, and compares the outcome with NATLAB.md's
expected matrix (:func:`natkit.lab.spec.expected_outcome`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from typing import TYPE_CHECKING, Iterable

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
MODES = ("stun", "stun+turn")


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
    timings: dict[str, float]  # build_ms, coturn_ms, agents_ms, verify_ms, matrix_ms, teardown_ms
    duration_ms: float

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


def run_matrix(
    lab=None,
    *,
    behaviours: Iterable[str] = MATRIX_BEHAVIOURS,
    modes: Iterable[str] = MODES,
    deadline: float = 10.0,
    concurrency: int = 4,
    progress=None,
) -> MatrixReport:
    """Run the matrix and return a :class:`MatrixReport`.

    ``lab``: a running :class:`~natkit.lab.lab.NatLab` built from
    :meth:`LabSpec.matrix` (or a superset); None builds one for the run and
    tears it down after. ``deadline``: seconds per attempt. ``concurrency``:
    attempts in flight at once (cells that are expected to fail, and so take
    the whole deadline, start first). ``progress``: called with each
    finished :class:`MatrixCell`.
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
        # long ones first: an expected failure lasts the whole deadline
        jobs.sort(key=lambda j: expected_outcome(j[0], j[1], turn=j[2] == "stun+turn") != FAILED)

        def run(job) -> MatrixCell:
            a, b, mode = job
            ha, hb = hosts_for(a, b)
            result = lab.connect(ha, hb, turn=mode == "stun+turn", deadline=deadline)
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
            # on Ctrl-C do not wait for attempts in flight: the teardown below stops
            # the agents, which ends them at once
            pool.shutdown(wait=False, cancel_futures=True)
        matrix_ms = (time.monotonic() - t) * 1000.0
        order = {(a, b, m): i for i, (a, b, m) in enumerate((a, b, m) for m in modes for (a, b) in pairs(bs))}
        done.sort(key=lambda c: order[(c.a, c.b, c.mode)])
    finally:
        if own:
            lab.down()
    timings = dict(lab.timings)
    timings["matrix_ms"] = matrix_ms
    mismatches = sum(1 for c in done if not c.match)
    return MatrixReport(
        schema=SCHEMA, ok=mismatches == 0, behaviours=tuple(bs), cells=tuple(done), mismatches=mismatches,
        checks=lab.checks, deadline_s=deadline, concurrency=concurrency, timings=timings,
        duration_ms=(time.monotonic() - started) * 1000.0,
    )


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
    for mode in dict.fromkeys(c.mode for c in report.cells):
        title = {"stun": "STUN only (host + srflx candidates)", "stun+turn": "STUN + TURN (host + srflx + relay candidates)"}[mode]
        lines.append(f"== {title}: measured | expected (NATLAB.md)")
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
        side = lambda s: "–" if s is None else f"{s.local_type}->{s.remote_type}"  # noqa: E731
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
