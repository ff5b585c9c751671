"""``natkit doctor URI...``: name the cause when relay candidates appear but calls fail.

Exit codes: the failing cause's, the most severe one when several fail (``docs/doctor.md``): 0 healthy (warnings included),
1 a check failed (TLS certificate, open relay), 2 bad input, 4 unreachable
(UDP blocked, nothing listening), 5 authentication refused, 6 allocation
refused (quota, ports, address family), 7 relay candidates that cannot carry
a call (external-ip, deny list, relay ports).
"""

from __future__ import annotations

from typing import Annotated

import typer

from . import options, output

_STATUS = {"pass": "[green]ok[/]", "fail": "[red]FAIL[/]", "warn": "[yellow]warn[/]", "skip": "[dim]skip[/]"}


def doctor_cmd(
    uris: Annotated[list[str] | None, typer.Argument(help="turn:HOST[:PORT] and turns:HOST[:PORT] URIs of one deployment "
                                                          "(none: the natkit-managed coturn's own)")] = None,
    secret: str | None = options.secret_option(help="REST shared secret (coturn static-auth-secret)"),
    secret_file: str | None = options.secret_file_option(),
    user: Annotated[str | None, typer.Option("--user", "-u", help="long-term username (with --password), or the REST user part (with --secret)")] = None,
    password: str | None = options.password_option("-p", help="long-term password"),
    password_file: str | None = options.password_file_option(),
    peers: Annotated[list[str] | None, typer.Option("--peer", help="an IP address that must be reachable through the relay (repeatable; only asked about, never sent to)")] = None,
    ca: Annotated[str | None, typer.Option("--ca", help="CA bundle (PEM) for turns: certificates")] = None,
    name: Annotated[str | None, typer.Option("--name", help="diagnose the natkit-managed coturn with this name (its URIs and secret)")] = None,
    no_fallbacks: Annotated[bool, typer.Option("--no-fallbacks", help="try only the URIs given (no TCP on the same port, no TLS on 5349)")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds per STUN/TURN request", min=0.05, max=60)] = 1.5,
    data_timeout: Annotated[float, typer.Option("--data-timeout", help="seconds to wait for data through the relay", min=0.05, max=60)] = 1.0,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as one JSON document")] = False,
) -> None:
    """Diagnose a TURN server: reachability per transport, authentication, allocations, relayed address, permissions, data both ways, TLS.

    Every finding names a cause, shows the exact responses and the coturn
    option that fixes it; the exit code is the cause's (the most severe when several fail).
    """

    def body() -> int:
        import os

        from ..credentials import resolve
        from ..doctor import doctor
        from ..errors import UsageError

        if ca is not None and not os.path.isfile(ca):
            raise UsageError(f"--ca {ca}: no such file")
        the_password = options.turn_password(password, password_file)
        # one credential rule for every command; URIs without credentials get the unauthenticated steps
        creds = resolve(secret=options.turn_secret(secret, secret_file), user=user, password=the_password, uris=tuple(uris or ()),
                        name=name, required=False)
        if user and creds.kind != "rest" and not the_password:
            raise UsageError("--user needs --password-file (or NATKIT_TURN_PASSWORD, --password), or --secret-file for a REST user part")
        targets = list(uris or creds.uris)
        if not targets:
            raise UsageError("no server given", hint="natkit doctor turn:HOST[:PORT] [turns:HOST:5349], or --name of a managed coturn")
        output.progress(f"diagnosing {', '.join(targets)}")
        report = doctor(targets, secret=creds.secret if creds.kind == "rest" else None,
                        username=creds.username if creds.kind == "long-term" else None,
                        password=creds.password if creds.kind == "long-term" else None,
                        user=user if creds.kind == "rest" else None, peers=list(peers or []), cafile=ca,
                        fallbacks=not no_fallbacks, timeout=timeout, data_timeout=data_timeout)
        return output.report(json_out, report, render)

    output.run(json_out, body)


def render(report) -> None:
    """The report as a step table, then the findings (cause, evidence, fix) and the verdict."""
    from rich.markup import escape

    con = output.console()
    rows = [[_STATUS.get(c.status, c.status), c.id, escape(c.target), escape(c.summary)] for c in report.checks]
    con.print(output.table(None, ["", "step", "target", "result"], rows))
    for f in report.findings:
        style = "red" if f.severity == "fail" else "yellow"
        con.print(f"\n[{style}]{f.cause}[/]: {escape(f.title)} (exit {f.exit_code})")
        for line in f.evidence:
            con.print(f"  evidence: {line}", markup=False)
        if f.fix:
            con.print(f"  fix: {f.fix}", markup=False)
    verdict = "[green]healthy[/]" if report.ok else f"[red]{report.verdict}[/]"
    con.print(f"\nverdict: {verdict} (exit {report.exit_code}, {report.duration_ms / 1000:.2f} s)")
