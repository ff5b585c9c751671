"""The doctor's one report: :class:`DoctorReport`, its :class:`Check` steps and :class:`Finding` causes.

Pure: no I/O. The CLI renders one ``DoctorReport`` as a table or as JSON
(:func:`natkit.model.to_jsonable`); tests assert on the object.
"""

from __future__ import annotations

import dataclasses

from .causes import CAUSES, PRIORITY

SCHEMA = "natkit.doctor/1"
STATUSES = ("pass", "fail", "warn", "skip")


@dataclasses.dataclass(frozen=True)
class Check:
    """One step the doctor ran, in the order it ran them.

    ``id``: "reach", "tls", "auth", "allocate", "relayed-address", "permission",
    "data", "peer-path", "fallback", "family", "peer"; ``target``: what it ran
    against (``turn:203.0.113.10:3478 udp``); ``status``: "pass", "fail",
    "warn" or "skip" (``summary`` says why); ``evidence``: the exact requests
    and responses; ``duration_ms``: wall time in milliseconds.
    """

    id: str
    target: str
    status: str
    summary: str
    evidence: tuple[str, ...] = ()
    duration_ms: float | None = None


@dataclasses.dataclass(frozen=True)
class Finding:
    """One named cause (a :class:`~natkit.doctor.causes.Cause` id) with what proves it.

    ``severity``: "fail" or "warn"; ``evidence``: the responses that show
    it; ``fix``: what to change (coturn options); ``exit_code``: the
    documented exit code when this finding is the verdict; ``data``:
    machine-readable facts (addresses, codes, the clock offset ...).
    """

    cause: str
    title: str
    severity: str
    evidence: tuple[str, ...]
    fix: str
    exit_code: int
    data: dict = dataclasses.field(default_factory=dict)


def finding(cause: str, evidence: list[str] | tuple[str, ...], *, fix: str | None = None, data: dict | None = None) -> Finding:
    """A :class:`Finding` for ``cause`` with the catalogue's title, severity, fix and exit code
    (``fix`` replaces the catalogue's text, e.g. with the exact address to put in external-ip)."""
    c = CAUSES[cause]
    return Finding(cause, c.title, c.severity, tuple(evidence), fix or c.fix, c.exit_code, dict(data or {}))


@dataclasses.dataclass(frozen=True)
class DoctorReport:
    """Everything one ``natkit doctor`` run found.

    ``verdict``: the cause to fix first (the first failing finding in
    :data:`~natkit.doctor.causes.PRIORITY`), "healthy" when nothing fails;
    ``exit_code``: the most severe exit code among the failing findings
    (natkit's rule for several failures; the verdict's own when it is the
    only one), 0 when healthy, warnings included; ``credential``: "rest", "long-term" or "none" (never the
    secret); ``facts``: what was observed (addresses, relayed addresses,
    codes, clock offset), for scripts; ``duration_ms``: the whole run.
    """

    schema: str
    servers: tuple[str, ...]
    verdict: str
    ok: bool
    exit_code: int
    findings: tuple[Finding, ...]
    checks: tuple[Check, ...]
    credential: str
    facts: dict
    duration_ms: float

    @property
    def causes(self) -> list[str]:
        return [f.cause for f in self.findings]

    @property
    def failures(self) -> list:
        """The failing findings as :class:`natkit.errors.Failure` (kind from the exit code, step the cause id), as
        every natkit report gives them; ``exit_code_for(report.failures) == report.exit_code``."""
        from ..errors import (
            EXIT_ALLOCATION_REFUSED,
            EXIT_AUTH_REFUSED,
            EXIT_NO_CONNECTIVITY,
            EXIT_UNREACHABLE,
            AllocationRefused,
            AuthenticationRefused,
            CheckFailed,
            Failure,
            NoRelayConnectivity,
            ServerUnreachable,
        )

        kinds = {EXIT_UNREACHABLE: ServerUnreachable.kind, EXIT_AUTH_REFUSED: AuthenticationRefused.kind,
                 EXIT_ALLOCATION_REFUSED: AllocationRefused.kind, EXIT_NO_CONNECTIVITY: NoRelayConnectivity.kind}
        return [Failure(kinds.get(f.exit_code, CheckFailed.kind), f.cause, f.title) for f in self.findings if f.severity == "fail"]


def order(findings: list[Finding]) -> list[Finding]:
    """Findings in :data:`PRIORITY` order, each cause once (the first finding of a cause wins)."""
    seen: dict[str, Finding] = {}
    for f in findings:
        seen.setdefault(f.cause, f)
    return sorted(seen.values(), key=lambda f: PRIORITY.index(f.cause))


def verdict_of(findings: list[Finding]) -> tuple[str, int]:
    """``(verdict, exit_code)``: the first failing cause in :data:`PRIORITY` (what to fix first), and
    natkit's exit code for several failures: the most severe of the failing findings' codes
    (:data:`natkit.errors.SEVERITY`); with one failing cause both name the same. ("healthy", 0) without one."""
    from ..errors import most_severe

    failing = [f for f in order(findings) if f.severity == "fail"]
    if not failing:
        return "healthy", 0
    return failing[0].cause, most_severe(f.exit_code for f in failing)
