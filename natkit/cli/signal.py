"""``natkit signal serve`` (WebSocket signaling + the browser test page) and ``natkit peer``.

Nothing heavy at import time: aiohttp and aiortc are imported inside the commands.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from . import options, output

signal_app = typer.Typer(help="WebSocket signaling server with rooms, and the browser test page.", no_args_is_help=True)


@signal_app.command("serve")
def serve_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0 or :: for every interface)"),
    port: int = typer.Option(8765, "--port", help="TCP port (0: pick a free one)"),
    token: Optional[str] = typer.Option(None, "--token", envvar="NATKIT_SIGNAL_TOKEN", help="shared token every join must carry"),
    room_size: int = typer.Option(2, "--room-size", help="peers per room (2..64)"),
    max_message: int = typer.Option(64 * 1024, "--max-message", help="largest accepted message in bytes (bigger: error reply)"),
    idle_timeout: float = options.seconds(300.0, "--idle-timeout", help="close a connection silent for this many seconds", high=86_400),
    max_connections: int = typer.Option(2000, "--max-connections", help="TCP connections at once, WebSockets and HTTP requests still arriving (beyond: 503)"),
    request_timeout: float = options.seconds(10.0, "--request-timeout", help="seconds a connection has to send a complete HTTP request (beyond: 408, closed)", high=3600),
    turn: List[str] = typer.Option([], "--turn", help="TURN URI handed to the page, repeatable (needs --secret-file or --secret)"),
    secret: Optional[str] = options.secret_option(help="TURN REST secret: the page gets fresh credentials"),
    secret_file: Optional[str] = options.secret_file_option(),
    stun: List[str] = typer.Option([], "--stun", help="STUN URI handed to the page, repeatable"),
    cert: Optional[str] = options.input_file(None, "--cert", help="PEM certificate chain: serve https:// and wss://"),
    key: Optional[str] = options.input_file(None, "--key", help="PEM private key of --cert"),
    no_page: bool = typer.Option(False, "--no-page", help="signaling only, no test page"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log joins and leaves to stderr"),
    json_out: bool = options.json_flag("once listening, print {ok, ws_url, page_url, ...} as one JSON document (errors too)"),
) -> None:
    """Run the signaling server until Ctrl-C.

    WebSocket at ws://HOST:PORT/ws (JSON messages join, offer, answer,
    candidate, bye; see natkit.signaling.protocol), the test page at
    http://HOST:PORT/ (add ?turn=...&username=...&credential=...&room=... or
    start with --turn/--secret so the page gets credentials from the server).

    Malformed or refused requests are one line each on stderr (at most 10
    per 10 s), never a traceback.

    Exit codes: 2 bad option, 3 cannot listen, 130 stopped by Ctrl-C, SIGTERM or SIGHUP.
    """

    def body() -> int:
        from .._async import run
        from ..signaling.server import SignalConfig, serve_forever

        config = SignalConfig(
            host=host, port=port, token=token, room_size=room_size, max_message=max_message,
            idle_timeout=idle_timeout, max_connections=max_connections, request_timeout=request_timeout, turn_uris=tuple(turn),
            turn_secret=options.turn_secret(secret, secret_file), stun_uris=tuple(stun), serve_page=not no_page, verbose=verbose, cert=cert, key=key,
        ).validate()

        def ready(server) -> None:
            if json_out:
                output.emit_json({"ok": True, "ws_url": server.ws_url, "page_url": server.url if config.serve_page else None,
                                  "host": config.host, "port": server.port,
                                  "room_size": config.room_size, "token": "***" if config.token else None,
                                  "turn": list(config.turn_uris), "stun": list(config.stun_uris)})
            output.err(f"natkit signal: WebSocket {server.ws_url}" + (f"  test page {server.url}" if config.serve_page else ""))
            output.err("natkit signal: Ctrl-C to stop")

        run(serve_forever(config, ready=ready))  # returns only on an interrupt (output.run: exit 130)
        return 0

    output.run(json_out, body)


PEER_HELP = """Join a signaling room, connect to whoever is there, and check the path.

The peer that joins second sends the offer. Over a data channel both sides
echo each other's messages and measure their own round trips; the report is
relay-check's (selected pair, candidate types, RTT, throughput).
--send FILE transfers a file with a SHA-256 check on arrival; --chat then
turns the channel into a line chat (Ctrl-D ends it); --media sends a
synthetic video track and an audio tone and the other side measures them.

Exit codes: 0 passed, 1 a check failed (or no peer came within --wait),
2 bad input, 4 signaling or TURN server unreachable, 5 credentials or token
refused, 6 allocation refused or room full, 7 no working candidate pair.
"""


def peer_cmd(
    signal: str = typer.Option(..., "--signal", help="signaling server: ws://HOST:PORT (path /ws by default) or wss://"),
    room: str = typer.Option(..., "--room", help="room name (both peers use the same)"),
    turn: List[str] = typer.Option([], "--turn", help="TURN URI (turn:host[:port][?transport=tcp] or turns:), repeatable"),
    stun: List[str] = typer.Option([], "--stun", help="STUN URI, repeatable"),
    relay_only: bool = typer.Option(False, "--relay-only", help="gather relay candidates only (iceTransportPolicy=relay)"),
    secret: Optional[str] = options.secret_option(help="TURN REST shared secret (a credential is minted)"),
    secret_file: Optional[str] = options.secret_file_option(),
    user: Optional[str] = typer.Option(None, "--user", "-u", help="TURN username, or the user part with --secret"),
    password: Optional[str] = options.password_option("-p", help="TURN password"),
    password_file: Optional[str] = options.password_file_option(),
    token: Optional[str] = typer.Option(None, "--token", envvar="NATKIT_SIGNAL_TOKEN", help="the signaling server's token"),
    messages: int = options.integer(20, "--messages", "-n", help="echo round trips to measure", low=1, high=100_000),
    payload: int = options.integer(1_000_000, "--payload", help="bytes sent one way for the throughput figure (0: skip)", low=0, high=1 << 32),
    send: Optional[str] = options.input_file(None, "--send", help="send this file (progress on stderr, SHA-256 checked by the receiver)"),
    receive: Optional[str] = options.output_dir(None, "--receive", help="save files the other peer sends into this directory (default: verify only)"),
    chat: bool = typer.Option(False, "--chat", help="after the checks, a line chat over the data channel (stdin/stdout)"),
    media: bool = typer.Option(False, "--media", help="send a synthetic video track and audio tone"),
    media_seconds: float = options.seconds(5.0, "--media-seconds", help="media measurement window in seconds", high=600),
    wait: float = options.seconds(120.0, "--wait", help="seconds to wait for another peer to join", high=86_400),
    timeout: float = options.seconds(20.0, "--timeout", help="seconds for negotiation and the checks once a peer is there"),
    cafile: Optional[str] = options.ca_option("CA bundle for turns: / wss:"),
    insecure: bool = typer.Option(False, "--insecure", help="do not verify turns: / wss: certificates"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document (schema natkit.peer/2)"),
) -> None:
    def body() -> int:
        from ..peer import PeerOptions, peer

        if signal.lower().startswith(("http://", "https://")):
            from ..errors import UsageError
            from ..signaling.client import check_url

            raise UsageError(f"--signal takes the WebSocket URL (ws:// or wss://), not the page's {signal.split('://')[0]}:// URL",
                             hint=f"use --signal {check_url(signal)}")
        the_secret, the_password = options.turn_secret(secret, secret_file), options.turn_password(password, password_file)
        username = pw = None
        if turn:
            from ..credentials import resolve

            username, pw = resolve(secret=the_secret, user=user, password=the_password, uris=turn).pair()
        if json_out:  # stdout holds exactly one JSON document: chat goes to stderr
            def on_chat(line: str) -> None:
                output.err(f"peer> {line}")
        else:
            def on_chat(line: str) -> None:
                print(f"peer> {line}", flush=True)

        opts = PeerOptions(
            signal=signal, room=room, turn=tuple(turn), stun=tuple(stun), username=username, password=pw,
            relay_only=relay_only, token=token, messages=messages, payload_bytes=payload, send_file=send,
            receive_dir=receive, chat=chat, media=media, media_seconds=media_seconds, wait=wait, timeout=timeout,
            verify_tls=not insecure, cafile=cafile, on_event=output.progress, on_progress=ProgressBar(), on_chat=on_chat,
        )
        report = peer(opts)
        if json_out:
            output.emit_json(report)
        else:
            render_peer(report)
        return report.exit_code

    output.run(json_out, body)


peer_cmd.__doc__ = PEER_HELP


def render_peer(report, con=None) -> None:
    """The relay-check table (same rows), then the peer's own lines: room, file, media."""
    from .relay import render

    con = con or output.console()
    render(report, con, heading=f"peer {report.role} in room {report.room!r} (TURN {report.server})")
    remote = report.remote_agent or "unknown agent"
    con.print(f"  remote peer {report.remote_id} ({remote}) via {report.signal}" + (
        f", its verdict: {'PASS' if report.remote_report.ok else 'FAIL'}" if report.remote_report else ""))
    if report.file is not None:
        f = report.file
        mark = "[green]✓[/green]" if f.ok else "[red]✗[/red]"
        speed = "" if f.throughput_mbps is None else f", {f.throughput_mbps:.2f} MB/s"
        con.print(f"  {mark} file {f.direction} {f.name}: {f.bytes} bytes{speed}, sha256 {f.sha256[:16]}…"
                  + (f" saved to {f.saved_to}" if f.saved_to else ""))
    for note in report.notes:
        con.print(f"  note: {note}")


class ProgressBar:
    """File transfer progress on stderr: one updating line on a terminal, a line per 10% otherwise."""

    def __init__(self) -> None:
        import os
        import sys

        self.quiet = bool(os.environ.get("NATKIT_QUIET"))
        self.tty = sys.stderr.isatty()
        self.last_step: dict[str, int] = {}
        self.last_draw = 0.0

    def __call__(self, direction: str, done: int, total: int, seconds: float) -> None:
        import sys
        import time

        if self.quiet:
            return
        frac = 1.0 if total <= 0 else min(1.0, done / total)
        rate = done / seconds / 1e6 if seconds > 0 else 0.0
        text = f"{direction} {done / 1e6:.1f}/{total / 1e6:.1f} MB {frac * 100:5.1f}% {rate:.2f} MB/s"
        if self.tty:
            now = time.monotonic()
            if frac < 1.0 and now - self.last_draw < 0.1:
                return
            self.last_draw = now
            width = 30
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            sys.stderr.write(f"\r[{bar}] {text}" + ("\n" if frac >= 1.0 else ""))
            sys.stderr.flush()
        else:
            step = int(frac * 10)
            if self.last_step.get(direction) != step:
                self.last_step[direction] = step
                print(f"… {text}", file=sys.stderr, flush=True)

