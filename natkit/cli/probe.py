"""``natkit probe``: public address discovery."""

from __future__ import annotations

from typing import List, Optional

import typer

from . import output


def probe_cmd(
    servers: List[str] = typer.Argument(..., metavar="SERVER...", help="host, host:port, stun:host[:port] or stuns:host[:port]"),
    transport: str = typer.Option("udp", "--transport", "-t", help="udp or tcp (stuns: is always TLS over TCP)"),
    timeout: float = typer.Option(3.0, "--timeout", help="total time budget in seconds"),
    local: Optional[str] = typer.Option(None, "--local", help="local IP to send from (default: any)"),
    insecure: bool = typer.Option(False, "--insecure", help="do not verify TLS certificates of stuns: servers"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Discover the public address with STUN Binding requests (RFC 8489), all servers at once.

    Exit codes: 0 at least one server answered, 2 bad input, 4 no server answered.
    """

    def body() -> int:
        from ..errors import EXIT_UNREACHABLE
        from ..probe import probe

        report = probe(servers, transport=transport, timeout=timeout, local_host=local, verify_tls=not insecure)
        if json_out:
            output.emit_json(report)
        else:
            render(report)
        return 0 if report.ok else EXIT_UNREACHABLE

    output.run(json_out, body)


def render(report) -> None:
    rows = []
    for r in report.results:
        rows.append([
            r.uri,
            r.mapped_address if r.ok else f"[red]{r.error}[/red]",
            r.local_address,
            output.fmt_ms(r.rtt_ms) if r.ok else None,
            r.response_origin,
            r.other_address,
            r.software,
        ])
    con = output.console()
    con.print(output.table(None, ["server", "mapped (XOR-MAPPED-ADDRESS)", "local", "rtt", "RESPONSE-ORIGIN", "OTHER-ADDRESS", "SOFTWARE"], rows))
    varies = {None: "unknown (needs 2+ answers over UDP)", True: "yes: address/port-dependent mapping likely", False: "no"}[report.mapping_varies]
    nat = {None: "unknown", True: "yes", False: "no (mapped = local address)"}[report.behind_nat]
    con.print(f"public IP: [bold]{report.public_ip or '–'}[/bold]   behind NAT: {nat}   mapping differs between servers: {varies}")
