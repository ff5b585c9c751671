"""``natkit probe``: public address discovery."""

from __future__ import annotations

from typing import List, Optional

import typer

from . import options, output


def probe_cmd(
    servers: List[str] = typer.Argument(..., metavar="SERVER...", help="host, host:port, stun:host[:port] or stuns:host[:port]"),
    transport: str = typer.Option("udp", "--transport", "-t", help="udp or tcp (stuns: is always TLS over TCP)"),
    timeout: float = options.seconds(3.0, "--timeout", help="total time budget in seconds"),
    local: Optional[str] = typer.Option(None, "--local", help="local IP to send from (default: any)"),
    insecure: bool = typer.Option(False, "--insecure", help="do not verify TLS certificates of stuns: servers"),
    cafile: Optional[str] = options.ca_option("CA bundle to verify stuns: servers"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Discover the public address with STUN Binding requests (RFC 8489), all servers at once.

    Exit codes: 0 at least one server answered, 1 servers answered but not with
    a usable Binding response, 2 bad input, 4 no server answered.
    """

    def body() -> int:
        from ..probe import probe

        report = probe(servers, transport=transport, timeout=timeout, local_host=local, verify_tls=not insecure, cafile=cafile)
        return output.report(json_out, report, render)

    output.run(json_out, body)


def render(report, out=None) -> None:
    """Plain text, one block per server (no rich: probe start-up time matters)."""
    import sys

    out = out or sys.stdout
    w = out.write
    for r in report.results:
        if r.ok:
            w(f"{r.uri}  answered in {output.fmt_ms(r.rtt_ms)}" + (f" after {r.sends} sends" if r.sends > 1 else "") + "\n")
        else:
            w(f"{r.uri}  FAILED: {r.error}\n")
            continue
        for label, value in (
            ("mapped (XOR-MAPPED-ADDRESS)", r.mapped_address),
            ("local", r.local_address),
            ("RESPONSE-ORIGIN", r.response_origin),
            ("OTHER-ADDRESS", r.other_address),
            ("SOFTWARE", r.software),
        ):
            w(f"  {label:<28} {'–' if value is None else value}\n")
    varies = {None: "unknown (needs 2+ UDP answers)", True: "yes (address/port-dependent mapping likely)", False: "no"}[report.mapping_varies]
    nat = {None: "unknown", True: "yes", False: "no (mapped = local address)"}[report.behind_nat]
    w(f"public IP: {report.public_ip or '–'}   behind NAT: {nat}   mapping differs between servers: {varies}\n")
