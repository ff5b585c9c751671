"""``natkit relay-check``: relay-only ICE between two aiortc peers."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

import typer

from . import options, output

if TYPE_CHECKING:
    from ..relay import FleetEntry


def relay_check_cmd(
    turn_uris: List[str] = typer.Argument(..., metavar="TURN_URI...", help="turn:host[:port][?transport=udp|tcp] or turns:host[:port]; several: a fleet, checked concurrently"),
    secret: Optional[str] = options.secret_option(help="REST shared secret (a credential is minted; default: a natkit-managed coturn's, for its own URIs)"),
    secret_file: Optional[str] = options.secret_file_option(),
    user: Optional[str] = typer.Option(None, "--user", "-u", help="username (long-term credential), or the user part with --secret (default natkit; '' for none)"),
    password: Optional[str] = options.password_option("-p", help="password (long-term credential)"),
    password_file: Optional[str] = options.password_file_option(),
    messages: int = options.integer(20, "--messages", "-n", help="data-channel messages to echo", low=1, high=100_000),
    payload: int = options.integer(1_000_000, "--payload", help="bytes sent one way for the throughput figure (0: skip)", low=0, high=1 << 32),
    timeout: float = options.seconds(10.0, "--timeout", help="total time budget in seconds"),
    cafile: Optional[str] = options.ca_option("CA bundle to verify a turns: server"),
    insecure: bool = typer.Option(False, "--insecure", help="do not verify the turns: certificate"),
    json_out: bool = typer.Option(False, "--json"),
    media: bool = typer.Option(False, "--media", help="also send synthetic video + audio through the relay and measure frames, bitrate, fps, freezes"),
    media_seconds: float = options.seconds(5.0, "--media-seconds", help="media measurement window in seconds (with --media)", high=600),
) -> None:
    """Prove that a TURN server relays: two aiortc peers, relay-only ICE, data-channel echo.

    Exit codes: 0 relayed, 1 an assertion failed, 2 bad input, 4 unreachable,
    5 authentication refused (401/441), 6 allocation refused (486/508/403),
    7 relay candidates but no connectivity, 70 internal error. With several
    servers: 0 when all relayed, else the most severe of their codes
    (4 before 5 before 6 before 7 before 1).
    """

    def body() -> int:
        from ..credentials import resolve
        from ..relay import relay_check

        creds = resolve(secret=options.turn_secret(secret, secret_file), user=user,
                        password=options.turn_password(password, password_file), uris=turn_uris)
        if len(turn_uris) > 1:
            return fleet(turn_uris, creds)
        turn_uri = turn_uris[0]
        username, pw = creds.pair()
        output.progress(f"relay-only ICE through {turn_uri}")
        report = relay_check(turn_uri, username=username, password=pw, messages=messages, payload_bytes=payload,
                             timeout=timeout, verify_tls=not insecure, cafile=cafile, media=media, media_seconds=media_seconds)
        return output.report(json_out, report, render)

    def fleet(uris: list[str], creds) -> int:
        from ..relay import relay_check_fleet

        output.progress(f"relay-only ICE through {len(uris)} servers at once")
        report = relay_check_fleet(uris, credentials=lambda _uri: creds.pair(), messages=messages,
                                   payload_bytes=payload, timeout=timeout, verify_tls=not insecure, cafile=cafile,
                                   media=media, media_seconds=media_seconds)
        if json_out:
            output.emit_json(report)
        else:
            con = output.console()
            for entry in report.servers:
                if entry.report is not None:
                    render(entry.report, con)
                elif entry.error is not None:
                    con.print(f"[red]FAIL[/red] relay-check {entry.server}: {entry.error.one_line()}")
            rows = [_fleet_row(e) for e in report.servers]
            con.print(output.table(f"fleet: {report.passed}/{len(report.servers)} relayed in {report.duration_ms / 1000:.2f} s",
                                   ["server", "result", "connected", "echo rtt p50", "detail"], rows))
        return report.exit_code

    output.run(json_out, body)


def _fleet_row(e: FleetEntry) -> list[str | None]:
    """One server's row of the fleet table: its report's figures, or the error that stopped it."""
    result = "pass" if e.ok else "FAIL"
    if e.report is not None:
        path = e.report.path
        return [e.server, result, output.fmt_ms(path.connected_ms), output.fmt_ms(path.rtt_ms_p50), "; ".join(f.message for f in e.report.failures)]
    return [e.server, result, None, None, e.error.message if e.error is not None else None]


def render(report, con=None, heading: str | None = None) -> None:
    """The report as a table; ``heading`` replaces "relay-check SERVER (transport)" (natkit peer uses it)."""
    con = con or output.console()
    verdict = "[green]PASS[/green]" if report.ok else "[red]FAIL[/red]"
    con.print(f"{verdict} " + (heading or f"relay-check {report.server} ({report.transport}{', TLS' if report.tls else ''})"))
    pre, path = report.preflight, report.path
    rows = []
    if pre is not None:
        rows.append(["allocation", output.fmt_ms(pre.allocation_ms), f"relayed {pre.relayed_address}, mapped {pre.mapped_address}"])
    rows += [
        ["gathering", output.fmt_ms(path.gathering_ms), f"{len(path.candidates)} candidates, all relay: {'yes' if path.all_relay else 'NO'}"],
        ["connected", output.fmt_ms(path.connected_ms), "ICE + DTLS + SCTP, answer to data channel open"],
        ["first echo", output.fmt_ms(path.first_echo_ms), f"{path.messages_echoed}/{path.messages_sent} echoed, intact: {'yes' if path.echo_ok else 'NO'}"],
        ["echo rtt", f"p50 {output.fmt_ms(path.rtt_ms_p50)}", f"p95 {output.fmt_ms(path.rtt_ms_p95)}"],
        ["throughput", "–" if path.throughput_mbps is None else f"{path.throughput_mbps:.2f} MB/s", f"{path.payload_bytes} bytes one way"],
    ]
    for side, pair in path.selected.items():
        rows.append([f"{side} pair", "–" if pair is None else pair.describe(), "–" if pair is None else f"{pair.local} -> {pair.remote}"])
    con.print(output.table(None, ["step", "value", "detail"], rows))
    if report.media is not None:
        render_media(report.media, con)
    for f in report.failures:
        con.print(f"[red]✗[/red] {f.one_line()}")


def render_media(media, con) -> None:
    """Rows for a :class:`natkit.media.MediaReport` (what the receiving side measured)."""
    v, a = media.video, media.audio
    rows = []
    if v is not None:
        rows.append(["video", f"{v.frames} frames, {v.fps:.1f} fps",
                     f"{'–' if v.bitrate_kbps is None else f'{v.bitrate_kbps:.0f} kbit/s'}, {v.width}x{v.height}, "
                     f"freezes {v.freeze_count} ({v.freeze_ms:.0f} ms), lost {'–' if v.frames_lost is None else v.frames_lost}"])
    if a is not None:
        rows.append(["audio", f"{a.seconds:.2f} s of samples",
                     f"{'–' if a.bitrate_kbps is None else f'{a.bitrate_kbps:.0f} kbit/s'}, "
                     f"level {'–' if a.level_dbfs is None else f'{a.level_dbfs:.1f} dBFS'}, tone {'–' if a.tone_hz is None else f'{a.tone_hz:.0f} Hz'}"])
    con.print(output.table(f"media received over {media.window_s:.1f} s", ["track", "value", "detail"], rows))
