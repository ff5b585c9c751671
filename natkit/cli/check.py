"""``natkit check``: the main job."""

from __future__ import annotations

from typing import List, Optional

import typer

from . import options, output


def check_cmd(
    turn: Optional[List[str]] = typer.Option(None, "--turn", help="TURN URI of an existing server (repeatable); default: an embedded local coturn"),
    secret: Optional[str] = options.secret_option(help="REST shared secret of that server (default: a natkit-managed coturn's, for its own URIs)"),
    secret_file: Optional[str] = options.secret_file_option(),
    user: Optional[str] = typer.Option(None, "--user", "-u", help="long-term username (with --password)"),
    password: Optional[str] = options.password_option("-p", help="long-term password"),
    password_file: Optional[str] = options.password_file_option(),
    name: Optional[str] = typer.Option(None, "--name", help="check the natkit-managed coturn with this name (from natkit turn up)"),
    backend: str = typer.Option("auto", "--backend", "-b", help="embedded server: auto, docker or native"),
    image: Optional[str] = typer.Option(None, "--image", help="embedded server, docker backend: image"),
    timeout: float = options.seconds(10.0, "--timeout", help="time budget in seconds per relay check"),
    messages: int = options.integer(20, "--messages", "-n", help="data-channel messages to echo", low=1, high=100_000),
    payload: int = options.integer(1_000_000, "--payload", help="bytes for the throughput figure (0: skip)", low=0, high=1 << 32),
    cafile: Optional[str] = options.ca_option("CA bundle to verify a turns: server"),
    insecure: bool = options.insecure_option("do not verify the turns: certificate"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Check a TURN server end to end: STUN probe, then relay-only ICE with data echo.

    With no --turn: start an embedded coturn on 127.0.0.1, check it over UDP and
    TCP, stop it. Exit codes: 0 pass, 1 check failed, 2 usage, 3 environment
    (no coturn / Docker, server would not start), 4 unreachable, 5 auth refused,
    6 allocation refused, 7 no relay connectivity, 70 internal error. With
    several URIs the most severe failure's code (4 before 5 before 6 before 7
    before 1).
    """

    def body() -> int:
        from ..check import check

        given_secret, given_password = options.turn_secret(secret, secret_file), options.turn_password(password, password_file)
        turn_uris, the_secret, the_user, the_password, ca = list(turn or []), None, None, None, cafile
        if turn_uris or name:  # an existing server; without either, check starts its own (and mints its own secret)
            from ..credentials import resolve

            creds = resolve(secret=given_secret, user=user, password=given_password, uris=turn_uris, name=name)
            turn_uris = list(creds.uris)
            the_secret, the_user, the_password = creds.secret, creds.username, creds.password
            if creds.server is not None and cafile is None:
                ca = _own_self_signed_cert(creds.server)
        report = check(turn_uris, secret=the_secret, username=the_user, password=the_password, backend=backend, image=image,
                       timeout=timeout, messages=messages, payload_bytes=payload, verify_tls=not insecure, cafile=ca,
                       on_step=output.progress)
        return output.report(json_out, report, render)

    output.run(json_out, body)


def _own_self_signed_cert(info) -> Optional[str]:
    """The self-signed certificate natkit generated for this server (natkit turn up --tls), to trust it."""
    from pathlib import Path

    from ..tls import cert_info

    server_dir = Path(info.config_path).parent
    try:
        lines = Path(info.config_path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("cert="):
            path = server_dir / Path(line[5:]).name
            try:
                if cert_info(path.read_bytes()).self_signed:
                    return str(path)
            except (OSError, ValueError):
                return None
    return None


def render(report) -> None:
    from .probe import render as render_probe
    from .relay import render as render_relay

    con = output.console()
    where = f"embedded coturn ({report.backend}, ready in {report.server_ready_ms:.0f} ms)" if report.embedded else "existing server"
    con.print(f"[bold]natkit check[/bold] — {where}")
    render_probe(report.probe)
    for r in report.relay:
        render_relay(r, con)
    verdict = "[green]PASS[/green]" if report.ok else "[red]FAIL[/red]"
    con.print(f"{verdict} in {report.duration_ms / 1000:.2f} s")
    for f in report.failures:
        con.print(f"[red]✗[/red] {f.one_line()}")
