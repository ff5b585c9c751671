"""``natkit turn load URI --profile alloc|hold|audio|video|rate``: how much can this TURN server carry?

Exit codes: 0 the run completed (fixed-size media runs within ``--max-loss``,
no regression against ``--baseline``); 1 loss above ``--max-loss``, a
regression beyond ``--tolerance``, or allocations not confirmed released;
2 bad options; 3 environment (a local resource); 4 server unreachable;
5 authentication refused (401/441) on the first allocation; 6 the first
allocation refused (486/508/403); 130 interrupted (the report of what was
measured is still printed).
"""

from __future__ import annotations

from typing import Any

import typer

from . import options, output


def _between(flag: str, low: float, high: float, unit: str = ""):
    """A float option's check: finite, ``low < value <= high`` (``low`` itself allowed when it is 0)."""
    return options._number(flag, low, high, low_open=low > 0, unit=unit)


PROFILE_HELP = ("alloc: allocations/s at a rising rate | hold: N concurrent allocations | audio: 50 pps x 200 B calls | "
                "video: 90 pps x ~1.1 kB calls | rate: a fixed total packet rate")


def load_cmd(
    turn_uri: str = typer.Argument(..., metavar="TURN_URI", help="turn:host[:port][?transport=udp|tcp] or turns:host[:port]"),
    profile: str = typer.Option("audio", "--profile", "-P", help=PROFILE_HELP),
    secret: str | None = options.secret_option(help="REST shared secret (default: a natkit-managed coturn's, for its own URIs)"),
    secret_file: str | None = options.secret_file_option(),
    user: str | None = typer.Option(None, "--user", "-u", help="username (long-term), or the user part with --secret"),
    password: str | None = options.password_option("-p", help="password (long-term credential)"),
    password_file: str | None = options.password_file_option(),
    name: str | None = typer.Option(None, "--name", help="the natkit-managed coturn behind the URI (its secret, CPU, log and limits)"),
    sessions: int = options.integer(None, "--sessions", "-n", help="audio/video: calls (ramp: the first step); hold: allocations; rate: allocations sharing --rate; alloc: cycles in flight at most", low=1, high=100_000),
    duration: float = options.seconds(10.0, "--duration", "-d", help="seconds of measurement (hold: of holding; ramp: a bound on the whole ramp)"),
    rate: float | None = typer.Option(None, "--rate", help="rate: total packets/s; alloc: first step's allocations/s (default 20); hold: allocations/s while opening", callback=_between("--rate", 0, 10_000_000, "")),
    size: int = options.integer(200, "--size", help="rate: payload bytes per packet (28-1400)", low=28, high=1400),
    ramp: bool = typer.Option(False, "--ramp", help="audio/video: raise the calls until loss exceeds --max-loss; report the calls carried"),
    max_loss: float = typer.Option(1.0, "--max-loss", help="percent of round-trip loss a step (or a fixed run) may have", callback=_between("--max-loss", 0, 100, " %")),
    max_latency: float = typer.Option(250.0, "--max-latency", help="alloc: Allocate p99 in ms that ends the rising rate", callback=_between("--max-latency", 0, 60_000, " ms")),
    step: float = options.seconds(3.0, "--step-duration", help="seconds per ramp / alloc step", high=600),
    peer: str | None = typer.Option(None, "--peer", help="echo (a UDP echo on this host, default for a server on loopback) or allocation (a second allocation per call, as browsers do)"),
    send_indications: bool = typer.Option(False, "--send-indications", help="Send/Data indications instead of ChannelData"),
    same_user: bool = typer.Option(False, "--same-user", help="with --secret: one REST user for every allocation (default: a user each, as different people; --same-user meets coturn's user-quota)"),
    no_channel: bool = typer.Option(False, "--no-channel", help="alloc/hold: no CreatePermission + ChannelBind per allocation"),
    workers: int | None = options.integer(None, "--workers", "-w", help="generator processes (default: from the offered load, at most one per CPU)", low=1, high=64),
    lifetime: int | None = options.integer(None, "--lifetime", help="hold: LIFETIME to ask for (seconds)", low=1, high=86_400),
    refresh: float = options.seconds(60.0, "--refresh-interval", help="hold: seconds between Refreshes of one allocation", high=3600),
    max_packets: int = options.integer(10_000_000, "--max-packets", help="hard cap on packets sent", low=1, high=50_000_000),
    max_time: float = options.seconds(600.0, "--max-time", help="hard cap on the whole run in seconds"),
    timeout: float = options.seconds(3.0, "--timeout", help="seconds per TURN request (challenge included)", high=60),
    echo_host: str | None = typer.Option(None, "--echo-host", help="address the UDP echo peer binds (default: the server's, when it is on loopback, else 0.0.0.0)"),
    server_pid: int | None = options.integer(None, "--server-pid", help="PID of a local server to measure (CPU, socket drops)", low=1),
    server_log: str | None = options.input_file(None, "--server-log", help="the server's log file (its limits; with coturn -v, the usage cross-check)"),
    cafile: str | None = options.ca_option("CA bundle to verify a turns: server"),
    insecure: bool = options.insecure_option("do not verify the turns: certificate"),
    json_out: bool = options.json_flag(),
    report_file: str | None = options.output_file(None, "--report", help="also write an HTML report with plots to FILE (needs natkit[load])"),
    baseline: str | None = options.input_file(None, "--baseline", help="an earlier --json report: exit 1 on a regression beyond --tolerance"),
    tolerance: float = typer.Option(10.0, "--tolerance", help="percent a figure may be worse than the baseline's", callback=_between("--tolerance", 0, 1000, " %")),
) -> None:
    """Load-test a TURN server: allocations/s, concurrent allocations, calls carried, delivered packets/s.

    Every figure comes with the generator's own CPU and socket drops, and is
    called the server's limit only when the generator was not saturated.
    Load only servers you operate. Exit codes: 0 done, 1 loss above
    --max-loss / regression / release not confirmed, 2 usage, 4 unreachable,
    5 authentication refused, 6 allocation refused, 130 interrupted.
    """

    def body() -> int:
        from ..load.report import load_baseline

        cfg, read_log = build_config(turn_uri, profile=profile, secret=options.turn_secret(secret, secret_file), user=user,
                                     password=options.turn_password(password, password_file), name=name,
                                     sessions=sessions, duration=duration, rate=rate, size=size, ramp=ramp, max_loss=max_loss,
                                     max_latency=max_latency, step=step, peer=peer, send_indications=send_indications,
                                     channel=not no_channel, workers=workers, lifetime=lifetime, refresh=refresh,
                                     max_packets=max_packets, max_time=max_time, timeout=timeout, echo_host=echo_host,
                                     server_pid=server_pid, server_log=server_log, cafile=cafile, insecure=insecure,
                                     same_user=same_user)
        base = load_baseline(baseline) if baseline else None
        if report_file:
            from ..load.html import require_plotting

            require_plotting()
        return execute(cfg, read_log, json_out=json_out, report_file=report_file, baseline=base, tolerance=tolerance / 100.0)

    output.run(json_out, body)


def build_config(turn_uri: str, *, profile: str, secret, user, password, name, sessions, duration, rate, size, ramp, max_loss,
                 max_latency, step, peer, send_indications, channel, workers, lifetime, refresh, max_packets, max_time,
                 timeout, echo_host, server_pid, server_log, cafile, insecure, same_user=False):
    """The :class:`~natkit.load.LoadConfig` and a log reader for the options (a managed server fills in what it knows)."""
    import asyncio

    from ..credentials import resolve
    from ..load.config import PROFILES, LoadConfig
    from ..stun.aio import resolve as resolve_host
    from ..uri import parse_turn_uri

    parsed = parse_turn_uri(turn_uri)
    if profile not in PROFILES:
        from ..errors import UsageError

        raise UsageError(f"unknown profile {profile!r}", hint="use " + ", ".join(PROFILES))
    creds = resolve(secret=secret, user=user, password=password, uris=[turn_uri], name=name)
    username, pw = creds.pair(ttl=int(max_time) + 3600)
    rest: dict[str, Any] = {"secret": creds.secret, "user": creds.user or "natkit-load"} if creds.kind == "rest" else {}
    server = asyncio.run(resolve_host(parsed.host, parsed.port, transport=parsed.transport))
    transport = "tls" if parsed.secure else parsed.transport
    local: Any = creds.server or _managed(turn_uri, name)
    read_log = None
    port_range = quotas = None
    if local is not None:
        server_pid = server_pid or _pid_of(local)
        port_range, quotas = _limits(local.config_path)
        if not server_log:
            from ..coturn.server import server_logs

            read_log = lambda: server_logs(local)
    loopback = server.host.startswith("127.") or server.host == "::1"
    defaults = {"alloc": 200, "hold": 1000, "audio": 10, "video": 10, "rate": 10}
    cfg = LoadConfig(
        profile=profile, server=server, transport=transport, uri=str(parsed), username=username, password=pw, same_user=same_user,
        **rest,
        sessions=sessions or defaults[profile], duration=duration, rate=rate, size=size, ramp=ramp, max_loss=max_loss,
        max_latency_ms=max_latency, peer=peer or ("echo" if loopback else "allocation"), send_indications=send_indications,
        channel=channel, workers=workers, max_packets=max_packets, max_time=max_time, timeout=timeout, lifetime=lifetime,
        refresh_interval=refresh, step_duration=step, echo_host=echo_host or (server.host if loopback else "0.0.0.0"),
        local_host=server.host if loopback and transport == "udp" else None,
        verify_tls=not insecure, cafile=cafile, server_hostname=parsed.host if parsed.secure else None,
        server_pid=server_pid, server_log=server_log, server_port_range=port_range, server_quotas=quotas or (None, None))
    cfg.validate()
    return cfg, read_log


def _managed(uri: str, name: str | None):
    """The natkit-managed coturn behind ``uri`` (by ``name``, or the one whose own URIs include it), else None."""
    from ..coturn.server import list_servers
    from ..credentials import _managed_for

    servers = list_servers()
    if name:
        return next((s for s in servers if s.name == name), None)
    return _managed_for((uri,), [s for s in servers if s.secret] or servers)


def _pid_of(info) -> int | None:
    if info.pid:
        return info.pid
    if info.container_id:
        try:
            import docker

            return docker.from_env(timeout=5).containers.get(info.container_id).attrs["State"]["Pid"] or None
        except Exception:  # noqa: BLE001 - no engine, container gone: the server's CPU is then "not measured"
            return None
    return None


def _limits(config_path: str) -> tuple[tuple[int, int] | None, tuple[int | None, int | None]]:
    """(relay port range, (user-quota, total-quota)) from a turnserver.conf natkit wrote."""
    values: dict[str, int] = {}
    try:
        with open(config_path) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key in ("min-port", "max-port", "user-quota", "total-quota") and value.isdigit():
                    values[key] = int(value)
    except OSError:
        return None, (None, None)
    pr = (values.get("min-port", 49152), values.get("max-port", 65535))
    return pr, (values.get("user-quota"), values.get("total-quota"))


def execute(cfg, read_log, *, json_out: bool, report_file: str | None, baseline: dict | None, tolerance: float) -> int:
    """Run the load with live progress on stderr, then print the table (or JSON) and write the HTML report."""
    from ..load.build import attach_baseline
    from ..load.runner import run_load
    from ..load.text import Progress, render

    output.progress(f"{cfg.profile} load on {cfg.uri} ({cfg.transport}, peer {cfg.peer}); Ctrl-C stops and reports")
    live = Progress(cfg)
    try:
        report = run_load(cfg, progress=live.update, read_server_log=read_log)
    finally:
        live.close()
    if baseline is not None:
        try:
            report = attach_baseline(report, baseline, tolerance)
        except ValueError as exc:
            from ..errors import UsageError

            raise UsageError(str(exc)) from None
    if report_file:
        from ..load.html import write_report

        write_report(report, report_file)
        output.progress(f"HTML report: {report_file}")
    if json_out:
        output.emit_json(report.to_json())
    else:
        render(report)
    return report.exit_code
