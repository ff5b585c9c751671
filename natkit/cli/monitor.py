"""``natkit monitor serve`` (Prometheus exporter, /probe, /healthz) and ``natkit monitor once``."""

from __future__ import annotations

import typer

from . import options, output

monitor_app = typer.Typer(help="Monitor TURN servers from outside: Prometheus metrics, /probe, /healthz; or one round.",
                          no_args_is_help=True)

def _config(config: str | None, target: list[str], secret_file: str | None, user: str | None,
            password_file: str | None, rest_user: str | None, checks: str | None, expect_relayed_ip: str | None,
            cafile: str | None, insecure: bool, overrides: dict):
    import os

    from ..monitor.config import CHECKS, CredentialSource, cli_target, load_config

    targets = []
    if target:
        cred = _cli_credentials(target, secret_file, user, password_file, rest_user, os.environ)
        wanted = tuple(c.strip() for c in checks.split(",")) if checks else CHECKS
        from ..monitor.config import _checks

        wanted = _checks(list(wanted), "--checks: ")
        targets = [cli_target(t, cred if isinstance(cred, CredentialSource) else cred(t), checks=wanted,
                              expect_relayed_ip=expect_relayed_ip, cafile=cafile, verify_tls=not insecure) for t in target]
    return load_config(config, extra_targets=targets, overrides=overrides)


def _cli_credentials(targets: list[str], secret_file, user, password_file, rest_user, env):
    """Credentials for --target: --secret-file / NATKIT_TURN_SECRET (REST), --user with --password-file /
    NATKIT_TURN_PASSWORD, else a natkit-managed coturn's secret for its own URIs, else none.

    ``secret_file`` and ``password_file`` are what those files hold (read while the options were parsed,
    :func:`natkit.cli.options.secret_file_option`)."""
    from ..errors import UsageError
    from ..monitor.config import NO_CREDENTIALS, CredentialSource

    secret = options.turn_secret(None, secret_file, env)
    password = options.turn_password(None, password_file, env)
    ru = rest_user or "natkit-monitor"
    if secret and user and password:
        raise UsageError("give a REST secret or --user with a password, not both")
    if secret:
        return CredentialSource("cli", "rest", secret=secret, user=ru, origin="--secret-file" if secret_file else "env NATKIT_TURN_SECRET")
    if user or password:
        if not (user and password):
            raise UsageError("--user needs --password-file or NATKIT_TURN_PASSWORD (never a password on the command line)")
        return CredentialSource("cli", "long-term", username=user, password=password)
    from ..credentials import resolve

    creds = resolve(uris=tuple(targets), required=False)
    if creds.kind == "rest":
        return CredentialSource("managed", "rest", secret=creds.secret, user=ru, origin="natkit-managed coturn")
    return NO_CREDENTIALS


_TARGET = typer.Option([], "--target", "-t", help="TURN URI to probe (repeatable; with or besides --config)")
_CONFIG = options.input_file(None, "--config", "-c", help="TOML config: targets, credentials, interval, checks (docs/monitor.md)")
_SECRET_FILE = options.secret_file_option("file whose first line is the REST shared secret for --target (or NATKIT_TURN_SECRET; keep it 0600)")
_USER = typer.Option(None, "--user", "-u", help="long-term username for --target (password: --password-file or NATKIT_TURN_PASSWORD)")
_PASSWORD_FILE = options.password_file_option("file whose first line is the long-term password for --target (or NATKIT_TURN_PASSWORD)")
_REST_USER = typer.Option(None, "--rest-user", help="user part of minted REST credentials (default natkit-monitor)")
_CHECKS = typer.Option(None, "--checks", help="for --target: comma-separated binding,allocate,relay,tls (default all)")
_EXPECT = typer.Option(None, "--expect-relayed-ip", help="for --target: the IP XOR-RELAYED-ADDRESS must carry (coturn external-ip)")


@monitor_app.command("serve")
def serve_cmd(
    config: str | None = _CONFIG,
    target: list[str] = _TARGET,
    secret_file: str | None = _SECRET_FILE,
    user: str | None = _USER,
    password_file: str | None = _PASSWORD_FILE,
    rest_user: str | None = _REST_USER,
    checks: str | None = _CHECKS,
    expect_relayed_ip: str | None = _EXPECT,
    listen: str | None = typer.Option(None, "--listen", "-l", help="HOST:PORT for /metrics, /probe, /healthz (default 127.0.0.1:9479; port 0 picks one)"),
    interval: float | None = options.seconds(None, "--interval", help="seconds between probes of one target (default 15)", low=1, high=86_400),
    timeout: float | None = options.seconds(None, "--timeout", help="seconds one probe may take (default 2)", high=60),
    cafile: str | None = options.ca_option("CA bundle to verify turns: targets given with --target"),
    insecure: bool = options.insecure_option("do not verify turns: certificates of --target (days left are still reported)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log every failed probe to stderr"),
    json_out: bool = options.json_flag("once listening, print {ok, url, targets} as one JSON document (errors too)"),
) -> None:
    """Probe TURN servers continuously; serve /metrics, /probe and /healthz until Ctrl-C.

    Secrets come from files or the environment only (--secret-file,
    NATKIT_TURN_SECRET, --password-file, NATKIT_TURN_PASSWORD, or the
    config's secret_env/secret_file); they never appear in argv, logs or
    labels. Exit codes: 2 bad input, 3 cannot listen, 130 stopped by Ctrl-C,
    SIGTERM or SIGHUP.
    """

    def body() -> int:
        from .._async import run
        from ..monitor.server import serve_forever

        cfg = _config(config, target, secret_file, user, password_file, rest_user, checks, expect_relayed_ip, cafile, insecure,
                      {"listen": listen, "interval": interval, "timeout": timeout})

        def ready(monitor) -> None:
            if json_out:
                output.emit_json({"ok": True, "url": monitor.url, "metrics": monitor.url + "/metrics", "healthz": monitor.url + "/healthz",
                                  "interval": cfg.interval, "timeout": cfg.timeout,
                                  "targets": [{"name": t.name, "uri": str(t.uri), "transport": t.transport, "checks": list(t.checks),
                                               "credentials": t.credentials.kind} for t in cfg.targets]})
            output.err(f"natkit monitor: {len(cfg.targets)} target(s) every {cfg.interval:g} s; {monitor.url}/metrics  /healthz  /probe")
            output.err("natkit monitor: Ctrl-C to stop")

        def log(result) -> None:
            if verbose and not result.ok:
                output.err(f"natkit monitor: {result.target} ({result.transport}): {result.reason}")

        run(serve_forever(cfg, ready=ready, on_result=log, log=output.err))
        return 0

    output.run(json_out, body)


@monitor_app.command("once")
def once_cmd(
    config: str | None = _CONFIG,
    target: list[str] = _TARGET,
    secret_file: str | None = _SECRET_FILE,
    user: str | None = _USER,
    password_file: str | None = _PASSWORD_FILE,
    rest_user: str | None = _REST_USER,
    checks: str | None = _CHECKS,
    expect_relayed_ip: str | None = _EXPECT,
    timeout: float | None = options.seconds(None, "--timeout", help="seconds one probe may take (default 2)", high=60),
    cafile: str | None = options.ca_option("CA bundle to verify turns: targets given with --target"),
    insecure: bool = options.insecure_option("do not verify turns: certificates of --target"),
    json_out: bool = options.json_flag(),
) -> None:
    """One round of the monitor's probes over every target, for scripts and cron.

    Exit codes: 0 every target passed, 1 a check failed (for example a wrong
    relayed address), 2 bad input, 4 unreachable, 5 credentials refused,
    6 allocation refused, 7 no data through the relay; with several targets
    the most severe failure's code, as natkit check.
    """

    def body() -> int:
        from .._async import run
        from ..monitor.once import run_once

        cfg = _config(config, target, secret_file, user, password_file, rest_user, checks, expect_relayed_ip, cafile, insecure,
                      {"timeout": timeout})
        report = run(run_once(cfg))
        return output.report(json_out, report, render)

    output.run(json_out, body)


def _s(value_ms: float | None) -> str:
    return output.fmt_ms(value_ms)


def render(report) -> None:
    """Plain text: one block per (target, transport), then the failures."""
    import sys

    w = sys.stdout.write
    for r in report.results:
        w(f"{r.target} ({r.transport})  {'PASS' if r.ok else 'FAIL'} in {r.duration_ms:.0f} ms\n")
        w(f"  Binding RTT {_s(r.binding_rtt_ms)}   Allocate {_s(r.allocate_ms)}   credentials ({r.credential_kind}) "
          f"{ {True: 'accepted', False: 'refused', None: '–'}[r.credential_accepted] }\n")
        relayed = r.relayed or "–"
        if r.expect_relayed_ip:
            relayed += f"  (expected {r.expect_relayed_ip}: {'ok' if r.relayed_match else 'MISMATCH' if r.relayed_match is False else '–'})"
        w(f"  relayed {relayed}\n")
        if r.relay_ok is not None:
            w(f"  relay {'ok' if r.relay_ok else 'FAILED'}: {r.echo_received}/{r.echo_sent} echoes, RTT {_s(r.echo_rtt_ms)}\n")
        if r.tls is not None:
            chain = {True: "valid", False: f"INVALID ({r.tls.chain_error})", None: "not checked"}[r.tls.chain_valid]
            days = "–" if r.tls.days_left is None else f"{r.tls.days_left:.1f}"
            w(f"  TLS certificate {days} days left, chain {chain}\n")
    for f in report.failures:
        w(f"✗ {f.one_line()}\n")
    w(f"{'PASS' if report.ok else 'FAIL'}: {sum(r.ok for r in report.results)}/{len(report.results)} in {report.duration_ms:.0f} ms\n")


__all__ = ["monitor_app"]
