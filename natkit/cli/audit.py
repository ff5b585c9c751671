"""``natkit turn audit URI...``: prove a TURN server (or a fleet) is not an open relay.

Exit codes, the most severe in natkit's order (what stopped a check
outranks what the others found): 2 bad options; 4 a server could not be
reached, or a check stopped on unanswered requests; 5 the given credentials
were refused (the checks needing them did not run); 6 the server refused an
allocation a check needed; 1 a failed finding at or above ``--fail-on``, or a
check that could not complete otherwise (malformed answers, its time
budget); 0 everything checked passed or is not applicable to the input
("not checked" never passes).
"""

from __future__ import annotations

from typing import List, Optional

import typer

from . import options, output

_SEV_STYLE = {"info": "dim", "low": "cyan", "medium": "yellow", "high": "red", "critical": "bold red"}


def audit_cmd(
    uris: List[str] = typer.Argument(None, help="turn:HOST[:PORT] and turns:HOST:PORT URIs; several hosts are audited concurrently"),
    secret: Optional[str] = options.secret_option(help="REST shared secret (mints valid, expired and forged credentials)"),
    secret_file: Optional[str] = options.secret_file_option(),
    user: Optional[str] = typer.Option(None, "--user", help="long-term username; with --secret, the REST user part ('' for a bare expiry)"),
    password: Optional[str] = options.password_option(help="long-term password"),
    password_file: Optional[str] = options.password_file_option(),
    name: Optional[str] = typer.Option(None, "--name", help="audit a natkit-managed coturn (its URIs and secret) when no URI is given"),
    fail_on: str = typer.Option("high", "--fail-on", help="exit 1 when a finding at or above this severity fails: info, low, medium, high, critical"),
    checks: List[str] = typer.Option([], "--check", help="run only these checks (repeatable)"),
    junit: Optional[str] = options.output_file(None, "--junit", help="also write JUnit XML to FILE (checked before the audit starts)"),
    ca: Optional[str] = options.ca_option("CA bundle for the TLS chain check"),
    timeout: float = options.seconds(2.0, "--timeout", help="seconds per STUN/TURN request (the per-request timeout)", high=60),
    check_timeout: float = options.seconds(30.0, "--check-timeout", help="seconds per check (its whole time budget)", high=3600),
    flood_max: int = options.integer(64, "--flood-max", help="at most this many allocations in the quota flood", low=1, high=10_000),
    flood_seconds: float = options.seconds(10.0, "--flood-seconds", help="at most this long for the quota flood", high=600),
    json_out: bool = typer.Option(False, "--json", help="print the report as one JSON document"),
) -> None:
    """Audit TURN servers: open relay, peer ACL (403 toward forbidden ranges), TCP relay, TLS, credentials, quota, SOFTWARE, amplification, admin ports.

    Relay-toward-forbidden checks send requests, not traffic, to forbidden
    peers (CreatePermission, ChannelBind); a server that accepts a TCP
    CONNECT opens a connection. Audit only servers you operate.
    """

    def body() -> int:
        from ..audit import SEVERITIES, audit, junit_xml
        from ..errors import UsageError

        from ..credentials import resolve

        targets = list(uris or [])
        # no URI: the managed server's own; URIs of a managed server get its secret; other URIs without
        # credentials get the unauthenticated checks only
        creds = resolve(secret=options.turn_secret(secret, secret_file), user=user,
                        password=options.turn_password(password, password_file), uris=targets, name=name, required=False)
        if not targets:
            targets = [u for u in creds.uris if "?transport=tcp" not in u]
        sec = creds.secret
        if fail_on not in SEVERITIES:
            raise UsageError(f"unknown severity {fail_on!r}", hint="use " + ", ".join(SEVERITIES))
        output.progress(f"auditing {', '.join(targets)}")
        rest_user = user if creds.kind == "rest" else None  # the user part, one rule with relay-check and creds
        report = audit(targets, secret=sec, rest_user=rest_user, username=creds.username, password=creds.password,
                       checks=checks or None, fail_on=fail_on, timeout=timeout, check_timeout=check_timeout,
                       flood_max=flood_max, flood_seconds=flood_seconds, cafile=ca)
        if junit:
            with open(junit, "w") as f:
                f.write(junit_xml(report))
        return output.report(json_out, report, _print)

    output.run(json_out, body)


def _print(report) -> None:
    con = output.console()
    for s in report.servers:
        if s.error:
            con.print(f"[bold]{s.server}[/bold]  [red]not audited:[/red] {s.error}")
            continue
        rows = []
        for f in s.findings:
            if f.status == "not_checked":
                verdict = "[dim]not checked[/dim]" if not f.incomplete else f"[yellow]NOT CHECKED[/yellow] ({f.reason})"
            else:
                verdict = {"pass": "[green]pass[/green]", "fail": "[red]FAIL[/red]"}[f.status]
            sev = f"[{_SEV_STYLE[f.severity]}]{f.severity}[/{_SEV_STYLE[f.severity]}]" if f.failed else "–"
            rows.append([f.id, verdict, sev, f.evidence[0] if f.evidence else ""])
        con.print(output.table(f"{s.server}  ({' '.join(s.uris)})", ["check", "result", "severity", "evidence"], rows))
        for f in s.findings:
            if f.failed:
                con.print(f"  [{_SEV_STYLE[f.severity]}]{f.id}[/{_SEV_STYLE[f.severity]}]: " + "; ".join(f.evidence[:6]))
                if f.fix:
                    con.print(f"    fix: {f.fix}")
            elif f.incomplete:
                con.print(f"  [yellow]{f.id} not checked ({f.reason})[/yellow]: " + "; ".join(f.evidence[:6]))
        con.print()
    counts = ", ".join(f"{n} {sev}" for sev, n in report.counts.items() if n) or "no failed findings"
    if report.ok:
        verdict = "[green]OK[/green]"
    elif report.incomplete and not report.failures(report.fail_on):
        verdict = "[yellow]INCOMPLETE[/yellow]"
    else:
        verdict = "[red]FAILED[/red]"
    tail = f"; not checked: {', '.join(f'{c} ({r})' for _, c, r in report.incomplete)}" if report.incomplete else ""
    con.print(f"{verdict}  {len(report.servers)} server(s), {counts} (fail on {report.fail_on} and above){tail}, "
              f"{report.duration_ms / 1000:.1f} s")
