"""``natkit nat``: RFC 5780 NAT behaviour discovery (mapping, filtering, optional hairpinning and lifetime).

Start-up time matters here: nothing heavy is imported (no aiortc, no docker,
no rich); the text rendering is plain ``print``.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from . import options, output

HELP = """Discover how the NAT between you and the STUN servers behaves (RFC 5780).

Reports mapping behaviour (RFC 5780 §4.3) and filtering behaviour (§4.4) in
RFC 4787 terms with the classic RFC 3489 name second, what that means for
peer-to-peer, a confidence, and per-server validation. Mapping and filtering
tests run at once on separate sockets; tests that may get no answer wait one
window (max(250 ms, 10 x RTT), capped by --timeout, or --window).

At least one server should support RFC 5780 (two IPs: OTHER-ADDRESS and
CHANGE-REQUEST), for example coturn listening on two addresses or stund.

Exit codes: 0 mapping and filtering determined, 1 inconclusive,
2 bad input, 3 UDP blocked or no server usable for RFC 5780 tests.
"""


def nat_cmd(
    servers: List[str] = typer.Argument(..., metavar="SERVER...", help="host, host:port or stun:host[:port] (UDP)"),
    timeout: float = options.seconds(3.0, "--timeout", help="seconds to wait for each server's first answer; also caps the no-reply window", high=60),
    window: Optional[float] = options.seconds(None, "--window", help="fixed no-reply window in seconds (default: from the measured RTT)", high=60),
    hairpin: bool = typer.Option(False, "--hairpin", help="also test hairpinning (RFC 5780 §4.5)"),
    lifetime: bool = typer.Option(False, "--lifetime", help="also measure the mapping lifetime (RFC 5780 §4.6; takes up to --lifetime-max)"),
    lifetime_max: float = options.seconds(120.0, "--lifetime-max", help="upper bound of the lifetime search in seconds (at most 600)", high=600),
    local: Optional[str] = typer.Option(None, "--local", help="local IP to send from (default: any)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document (schema natkit.nat/1)"),
) -> None:
    def body() -> int:
        from ..nat import discover_nat, exit_code

        if lifetime:
            output.progress(f"measuring the mapping lifetime: this can take up to {lifetime_max:g} s")
        report = discover_nat(servers, timeout=timeout, window=window, hairpin=hairpin, lifetime=lifetime,
                              lifetime_max=lifetime_max, local_host=local)
        if json_out:
            output.emit_json(report)
        else:
            render(report)
        return exit_code(report)

    output.run(json_out, body)


nat_cmd.__doc__ = HELP



def _value(value) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if hasattr(value, "alive_s"):  # LifetimeBracket
        lo = "?" if value.alive_s is None else f"{value.alive_s:g} s"
        return f"alive after {lo}, " + ("still alive at the bound" if value.expired_s is None else f"gone by {value.expired_s:g} s")
    return str(getattr(value, "value", value))


def fact_text(fact) -> str:
    """``value — reason`` for a known :class:`~natkit.nat_classify.Fact`, ``unknown: reason`` otherwise."""
    if fact.value is None:
        return f"unknown: {fact.reason}" if fact.reason and not fact.reason.startswith(("not tested", "not applicable")) else (fact.reason or "unknown")
    if hasattr(fact.value, "alive_s"):  # a LifetimeBracket: the reason says it all
        return fact.reason or _value(fact.value)
    return _value(fact.value) + (f" — {fact.reason}" if fact.reason else "")


def render(report, out=None) -> None:
    """Plain-text rendering of a :class:`~natkit.nat_classify.NatReport`."""
    import sys

    w = (out or sys.stdout).write
    w(f"NAT behaviour: {report.verdict}\n")
    classic = report.classic.value or f"unknown ({report.classic.reason})"
    w(f"  classic name   {classic}\n")
    w(f"  peer-to-peer   {report.p2p}\n")
    w(f"  confidence     {report.confidence} (status: {report.status})\n\n")
    if report.public_address is not None:
        w(f"  {'public address':<18} {report.public_address}   (local {report.local_address or '–'})\n")
    for label, fact in (
        ("NAT present", report.nat_present),
        ("mapping", report.mapping),
        ("filtering", report.filtering),
        ("port preservation", report.port_preservation),
        ("ALG suspected", report.alg_suspected),
        ("CGNAT", report.cgnat),
        ("hairpinning", report.hairpinning),
        ("mapping lifetime", report.mapping_lifetime),
    ):
        w(f"  {label:<18} {fact_text(fact)}\n")
    if report.udp_blocked.value:
        w(f"  {'UDP':<18} blocked — {report.udp_blocked.reason}\n")
    w("\nservers\n")
    for s in report.servers:
        rtt = output.fmt_ms(s.rtt_ms) if s.answered else "no answer"
        usable = {True: "usable", False: "not usable", None: "unknown"}[s.rfc5780.value]
        line = f"  {s.uri}  {rtt}  RFC 5780: {usable}"
        if s.other_address:
            line += f"  OTHER-ADDRESS {s.other_address}"
        if s.software:
            line += f"  ({s.software})"
        w(line + "\n")
        for issue in s.issues:
            w(f"    ! {issue}\n")
    if report.notes:
        w("notes\n")
        for note in report.notes:
            w(f"  - {note}\n")
    took = output.fmt_ms(report.duration_ms)
    window = f", no-reply window {output.fmt_ms(report.window_ms)}" if report.window_ms is not None else ""
    w(f"took {took}{window}\n")
