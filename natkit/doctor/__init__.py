"""``natkit doctor``: name the cause when a TURN server hands out relay candidates but calls fail.

::

    from natkit.doctor import doctor

    report = doctor(["turn:turn.example.org", "turns:turn.example.org:5349"], secret="...")
    print(report.verdict, report.exit_code)   # "external-ip-missing", 7
    for f in report.findings:
        print(f.cause, f.evidence, f.fix)

- :mod:`natkit.doctor.observe`: the requests (natkit's STUN/TURN stack), into :class:`~natkit.doctor.facts.Facts`;
- :mod:`natkit.doctor.diagnose`: facts → checks and findings (pure);
- :mod:`natkit.doctor.causes`: the cause catalogue (ids, fixes, exit codes);
- :mod:`natkit.doctor.report`: :class:`DoctorReport`, the one report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from .report import SCHEMA, Check, DoctorReport, Finding, order, verdict_of

__all__ = ["Check", "DoctorReport", "Finding", "doctor", "doctor_async"]


async def doctor_async(
    uris: list[str] | tuple[str, ...],
    *,
    secret: str | None = None,
    username: str | None = None,
    password: str | None = None,
    user: str | None = None,
    peers: list[str] | tuple[str, ...] = (),
    cafile: str | None = None,
    fallbacks: bool = True,
    timeout: float = 1.5,
    data_timeout: float = 1.0,
) -> DoctorReport:
    """See :func:`doctor`."""
    from ..errors import UsageError
    from .diagnose import address_kind, diagnose, reach_summary, relayed_of
    from .observe import Options, observe

    if secret and (username or password):
        raise UsageError("give either --secret or --user/--password, not both")
    if (username is None) != (password is None):
        raise UsageError("give both --user and --password", hint="or --secret for REST credentials")
    if not 0 < timeout <= 60 or not 0 < data_timeout <= 60:
        raise UsageError("timeouts must be between 0 and 60 seconds")
    started = time.monotonic()
    opts = Options(tuple(uris), secret=secret, username=username, password=password, user=user, peers=tuple(peers),
                   cafile=cafile, fallbacks=fallbacks, timeout=timeout, data_timeout=data_timeout)
    facts = await observe(opts)
    checks, findings = diagnose(facts)
    ordered = order(findings)
    verdict, code = verdict_of(ordered)
    a = facts.alloc("A")
    summary = {
        "server_addresses": list(facts.server_ips),
        "reachable": reach_summary(list(facts.reach)),
        "relayed": relayed_of(facts.allocs),
        "relayed_kind": address_kind(a.relayed.host) if a is not None and a.relayed is not None else None,
        "mapped": str(a.mapped) if a is not None and a.mapped is not None else None,
        "auth": facts.auth.outcome if facts.auth else None,
        "server_clock_ahead_s": list(facts.auth.server_ahead_s) if facts.auth and facts.auth.server_ahead_s else None,
        "delivered": {d.leg: d.delivered for d in facts.data},
        "timings_ms": {k: round(v, 1) for k, v in facts.timings.items()},
    }
    mode = "rest" if secret else ("long-term" if username else "none")
    return DoctorReport(SCHEMA, tuple(uris), verdict, verdict == "healthy", code, tuple(ordered), tuple(checks), mode, summary,
                        (time.monotonic() - started) * 1000.0)


def doctor(uris: list[str] | tuple[str, ...], **kwargs) -> DoctorReport:
    """Diagnose the TURN servers behind ``uris`` and return one :class:`DoctorReport`.

    ``uris``: ``turn:``/``turns:`` URIs of one deployment (RFC 7065); with
    ``fallbacks`` (default) a ``turn:HOST:PORT`` also gets TCP on that port
    and TLS on 5349 tried. Credentials: ``secret`` (REST shared secret,
    coturn ``static-auth-secret``: fresh credentials are minted, and a
    refusal is told apart as wrong secret vs server clock ahead) or
    ``username``/``password`` (long-term; a REST-style username's timestamp
    is read for expiry). ``user``: the REST user part to mint for (default a
    fresh ``natkit-doctor-*`` per allocation). ``peers``: IP addresses that
    must be reachable through the relay (CreatePermission only: nothing is
    sent to them). ``cafile``: CA bundle for ``turns:``. ``timeout``: seconds
    per request; ``data_timeout``: seconds per data leg.

    Runs every step (reachability, TLS, authentication, allocations per
    transport and family, relayed address, permissions, data both ways) and
    stops at none. Raises :class:`~natkit.errors.UsageError` (exit 2) for bad
    input; everything the network does is a finding, with ``exit_code`` the
    most severe failing cause's (:mod:`natkit.doctor.causes`).
    """
    return asyncio.run(doctor_async(uris, **kwargs))


def _replace(report: DoctorReport, **kw) -> DoctorReport:
    return dataclasses.replace(report, **kw)
