"""``natkit turn up|down|status|logs|config``: coturn managed by natkit."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import time
from typing import Any, Callable, List, Optional

import typer

from . import options, output

turn_app = typer.Typer(help="Provision coturn (Docker or the native turnserver) with a hardened configuration.", no_args_is_help=True)


LT_USER_ARGV_WARNING = "--lt-user puts the password where every local user reads it in ps; prefer --lt-user-file FILE"


def _user(value: str, where: str) -> tuple[str, str]:
    """One ``NAME:PASSWORD``; the error names ``where`` and the name, never the password (nor a value without ':')."""
    from ..errors import UsageError

    name, sep, password = value.partition(":")
    if not sep:
        raise UsageError(f"{where} takes NAME:PASSWORD, got a value with no ':'")
    if not name or not password:
        raise UsageError(f"{where} takes NAME:PASSWORD, got {name!r} with " + ("no password" if name else "no name"))
    if any(c.isspace() or c == "#" for c in name):
        raise UsageError(f"{where}: user name {name!r} contains whitespace or '#' (turnserver.conf cannot carry them)")
    if any(c.isspace() or c == "#" for c in password):
        raise UsageError(f"{where}: the password of {name!r} contains whitespace or '#' (turnserver.conf cannot carry them)")
    return name, password


def parse_users(users: List[str], where: str = "--lt-user") -> tuple[tuple[str, str], ...]:
    """``--lt-user NAME:PASSWORD`` values as pairs; raises :class:`UsageError` (never echoing a password).

    A name or password with whitespace or ``#`` is refused: coturn's ``user=NAME:PASSWORD`` line
    would end there (or carry a second configuration line).
    """
    return tuple(_user(u, where) for u in users)


def read_users_file(path: str) -> tuple[tuple[str, str], ...]:
    """``--lt-user-file``: one ``NAME:PASSWORD`` a line (blank lines and ``#`` comments skipped), as :func:`parse_users`.

    Raises :class:`UsageError` (exit 2) for a file that cannot be read (``natkit.coturn.secrets``' rule),
    a bad line (named by its number, the password never shown) or no user at all.
    """
    from ..coturn.secrets import read_text_file
    from ..errors import UsageError

    users = []
    for number, raw in enumerate(read_text_file(path, "user", "--lt-user-file", "NAME:PASSWORD a line").splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            users.append(_user(line, f"--lt-user-file {path}, line {number}"))
    if not users:
        raise UsageError(f"user file {path} holds no NAME:PASSWORD line")
    return tuple(users)


def resolve_external_ip(external_ip: Optional[str], stun: List[str], listen: List[str]) -> Optional[str]:
    """``--external-ip auto``: detected with the ``--stun`` servers (PUBLIC/PRIVATE behind a 1:1 NAT, none without
    a NAT); a given value with ``--stun``: cross-checked against what they see. Raises CheckFailed/UsageError."""
    if external_ip != "auto" and not stun:
        return external_ip
    from ..coturn.profiles import detect_external_ip, detect_external_ip_value
    from ..errors import UsageError

    if not stun:
        raise UsageError("--external-ip auto needs --stun stun:HOST[:PORT] (two or more to cross-check)")
    if external_ip == "auto":
        value = detect_external_ip_value(list(stun), listening_ips=list(listen))
        output.progress(f"external-ip detected with STUN: {value or 'none needed (no NAT in front of this host)'}")
        return value
    detect_external_ip(list(stun), expected=external_ip)
    return external_ip


# The options that describe a hardened coturn, shared by `turn up` and `turn config`:
# one definition; a command decorated with @profile_options gets them all, as one
# ProfileOptions argument named `opts`.
PROFILE_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("profile", str, typer.Option("recommended", "--profile", help="hardening profile: recommended or strict")),
    ("listen", List[str], typer.Option(["127.0.0.1"], "--listen", "-l", help="listening IP (repeat for several; two of one family enable RFC 5780)")),
    ("port", int, options.integer(3478, "--port", "-p", help="listening port (UDP and TCP)", low=1, high=65535)),
    ("secrets", List[str], typer.Option([], "--secret", help="REST shared secret (repeat to rotate: newest first; default: $NATKIT_TURN_SECRET, else a fresh random one); visible in ps: prefer --secret-file")),
    ("secret_file", Optional[str], typer.Option(None, "--secret-file", help="file with the REST secret(s), one per line, newest first (keep it 0600)")),
    ("realm", str, typer.Option("natkit", "--realm", help="realm")),
    ("external_ip", Optional[str], typer.Option(None, "--external-ip", help="public address (coturn external-ip), PUBLIC or PUBLIC/PRIVATE; auto: detect it with --stun")),
    ("stun", List[str], typer.Option([], "--stun", help="STUN server for --external-ip auto, or to cross-check a given one (repeat: all must agree)")),
    ("min_port", int, options.integer(49152, "--min-port", help="lowest relay port", low=1, high=65535)),
    ("max_port", int, options.integer(65535, "--max-port", help="highest relay port", low=1, high=65535)),
    ("allow_loopback", Optional[bool], typer.Option(None, "--allow-loopback-peers/--deny-loopback-peers",
                                                    help="allow relaying to the loopback listening address (default: only when listening on loopback only)")),
    ("users", List[str], typer.Option([], "--lt-user", help="long-term user NAME:PASSWORD instead of REST secrets (repeatable); visible in ps: prefer --lt-user-file")),
    ("users_file", Optional[str], typer.Option(None, "--lt-user-file", metavar="FILE", help="file of long-term users, NAME:PASSWORD a line (keep it 0600); with or instead of --lt-user")),
    ("tls", bool, typer.Option(False, "--tls", help="also listen for TURN over TLS (turns:), TLS 1.2+ only")),
    ("tls_port", int, options.integer(5349, "--tls-port", help="TLS listening port", low=1, high=65535)),
    ("cert", Optional[str], options.input_file(None, "--cert", help="PEM certificate (chain) for --tls; default: a self-signed one")),
    ("key", Optional[str], options.input_file(None, "--key", help="PEM private key for --cert")),
    ("tcp_relay", bool, typer.Option(False, "--tcp-relay", help="allow RFC 6062 TCP allocations (recommended profile only)")),
    ("nat_discovery", bool, typer.Option(False, "--nat-discovery", help="answer RFC 5780 NAT discovery (needs two listening IPs of one family)")),
)


@dataclasses.dataclass(frozen=True)
class ProfileOptions:
    """The values of :data:`PROFILE_OPTIONS` as one object."""

    profile: str
    listen: List[str]
    port: int
    secrets: List[str]
    secret_file: Optional[str]
    realm: str
    external_ip: Optional[str]
    stun: List[str]
    min_port: int
    max_port: int
    allow_loopback: Optional[bool]
    users: List[str]
    users_file: Optional[str]
    tls: bool
    tls_port: int
    cert: Optional[str]
    key: Optional[str]
    tcp_relay: bool
    nat_discovery: bool

    def build(self):
        """The :class:`~natkit.coturn.profiles.Profile` these options describe (``coturn.profiles.from_options``)."""
        from ..coturn.profiles import from_options
        from ..coturn.secrets import loose_permissions, resolve

        # --secret, --secret-file or NATKIT_TURN_SECRET (coturn.secrets); --secret on argv is warned about
        secrets, secret_warnings = resolve(self.secrets, self.secret_file)
        users = parse_users(self.users)  # --lt-user on argv is warned about too
        if users:
            secret_warnings.append(LT_USER_ARGV_WARNING)
        if self.users_file:
            users += read_users_file(self.users_file)
            loose = loose_permissions(self.users_file, "user")
            if loose:
                secret_warnings.append(loose)
        names = [name for name, _ in users]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            from ..errors import UsageError

            raise UsageError(f"long-term user {', '.join(map(repr, twice))} given more than once", hint="one NAME:PASSWORD per user")
        built = from_options(
            self.profile, listen=tuple(self.listen), port=self.port, secrets=secrets, realm=self.realm,
            external_ip=resolve_external_ip(self.external_ip, self.stun, self.listen), min_port=self.min_port, max_port=self.max_port,
            allow_loopback=self.allow_loopback, users=users, tls=self.tls, tls_port=self.tls_port,
            cert_file=self.cert, key_file=self.key, tcp_relay=self.tcp_relay, nat_discovery=self.nat_discovery,
        )
        return dataclasses.replace(built, warnings=(*secret_warnings, *built.warnings))


def profile_options(func: Callable) -> Callable:
    """Give a command the :data:`PROFILE_OPTIONS` (listed first in --help), passed to it as ``opts``."""
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for name, p in inspect.signature(func).parameters.items() if name != "opts"]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
              for name, annotation, default in PROFILE_OPTIONS]
    names = [name for name, _, _ in PROFILE_OPTIONS]

    @functools.wraps(func)
    def command(**kwargs):
        opts = ProfileOptions(**{name: kwargs.pop(name) for name in names})
        return func(opts=opts, **kwargs)

    signature = inspect.Signature([*shared, *own])
    command.__signature__ = signature  # type: ignore[attr-defined]  # what inspect.signature (and typer) reads
    command.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    del command.__wrapped__  # typer must see the new signature, not func's
    return command


def _print_started(info, ready_ms: float, name: str) -> None:
    where = f"container {info.container_id[:12]}" if info.container_id else f"pid {info.pid}"
    named = f" --name {name}" if name != "default" else ""
    print(f"coturn is running ({info.backend}, {where}), ready in {ready_ms:.0f} ms")
    for uri in (*info.uris, *info.stun_uris):
        print(f"  {uri}")
    if info.secret:
        print(f"credentials: natkit creds{named}   (REST secret kept in natkit's state, 0600)")
    print(f"check it:    natkit check{named or ' --name default'}")
    print(f"stop it:     natkit turn down{named}")


@turn_app.command("up")
@profile_options
def up_cmd(
    opts: ProfileOptions,
    backend: str = typer.Option("auto", "--backend", "-b", help="auto, docker or native"),
    image: Optional[str] = typer.Option(None, "--image", help="Docker image; never pulled: it must be present locally (default: the official coturn image, pinned; natkit turn image build makes one offline)"),
    name: str = typer.Option("default", "--name", help="name of this server in natkit's state"),
    foreground: bool = typer.Option(False, "--foreground", help="stay attached until Ctrl-C, then stop the server"),
    ready_timeout: float = options.seconds(20.0, "--ready-timeout", help="seconds to wait for the first STUN answer", high=600),
    json_out: bool = options.json_flag(),
) -> None:
    """Start a hardened coturn in the background; return once it answers a STUN Binding.

    Exit codes: 0 running, 1 (--foreground) the server exited on its own, 2 bad option,
    3 no backend / port in use / server failed to start, 130 interrupted (the server is stopped).
    """

    def body() -> int:
        from ..coturn.server import CoturnServer

        built = opts.build()
        for warning in built.warnings:
            output.err(f"natkit: warning: {warning}")
        server = CoturnServer(built.config, backend=backend, image=image, name=name, ready_timeout=ready_timeout, extra_files=built.files)
        output.progress(f"starting coturn ({backend}, profile {opts.profile}) on {', '.join(opts.listen)} port {opts.port}")
        info = server.start()
        try:
            if json_out:
                output.emit_json({"ok": True, "ready_ms": server.ready_ms, "profile": opts.profile,
                                  "warnings": list(built.warnings), "server": info.public()})
            else:
                _print_started(info, server.ready_ms, name)
            sys.stdout.flush()  # a pipe (| tee, a supervisor) sees the URIs now, not when the server stops
            if not foreground:
                return 0
            from ..coturn.server import is_running

            output.progress("running in the foreground; Ctrl-C stops the server")
            while is_running(info):
                time.sleep(0.2)
            output.err("natkit: coturn exited on its own; see natkit turn logs")
            return 1
        finally:
            if foreground:
                server.stop()

    output.run(json_out, body)


@turn_app.command("down")
def down_cmd(
    name: Optional[str] = typer.Option(None, "--name", help="which server (default: the only one)"),
    all_: bool = typer.Option(False, "--all", help="stop every natkit-managed coturn of this state directory, and labelled containers crashed runs left (their config is gone)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Stop a natkit-managed coturn and remove its state. Exit 3 when none is running."""

    def body() -> int:
        from ..coturn.server import get_server, stop_all, stop_server

        if all_:
            names = stop_all()
        else:
            info = get_server(name)
            stop_server(info)
            names = [info.name]
        if json_out:
            output.emit_json({"ok": True, "stopped": names})
        else:
            print("stopped: " + (", ".join(names) if names else "nothing was running"))
        return 0

    output.run(json_out, body)


def _state_label(info, running: bool) -> str:
    if info.orphaned:
        return f"[yellow]orphaned[/yellow] (owner pid {info.owner_pid} gone{'' if running else ', stopped'})"
    return "running" if running else "[red]stopped[/red]"


@turn_app.command("status")
def status_cmd(json_out: bool = typer.Option(False, "--json")) -> None:
    """List natkit-managed coturn servers. Exit 0 when all listed are running and owned, 1 otherwise.

    An orphaned server belonged to a process that is gone (a killed natkit
    check or test run): the next server start, or turn down --all, removes it.
    """

    def body() -> int:
        from ..coturn.server import is_running, list_servers

        servers = [(s, is_running(s)) for s in list_servers()]
        ok = all(r and not s.orphaned for s, r in servers)
        if json_out:
            output.emit_json({"ok": ok, "servers": [dict(s.public(), running=r) for s, r in servers]})
        else:
            if not servers:
                print("no natkit-managed coturn")
            else:
                rows = [[s.name, s.backend, _state_label(s, r), s.container_id[:12] if s.container_id else s.pid, " ".join(s.uris)] for s, r in servers]
                output.console().print(output.table(None, ["name", "backend", "state", "pid/container", "uris"], rows))
                if any(s.orphaned for s, _ in servers):
                    output.err("natkit: orphaned servers are removed by the next natkit check / turn up, or now by natkit turn down --all")
        return 0 if ok else 1

    output.run(json_out, body)


@turn_app.command("logs")
def logs_cmd(
    name: Optional[str] = typer.Option(None, "--name"),
    tail: Optional[int] = options.integer(None, "--tail", "-n", help="only the last N lines", low=1),
    json_out: bool = options.json_flag("print {ok, name, lines: [...]} as one JSON document"),
) -> None:
    """Print the server's own log. Exit 3 when no such server is managed by natkit."""

    def body() -> int:
        from ..coturn.server import get_server, server_logs

        info = get_server(name)
        lines = server_logs(info, tail)
        if json_out:
            output.emit_json({"ok": True, "name": info.name, "lines": list(lines)})
        else:
            for line in lines:
                print(line)
        return 0

    output.run(json_out, body)


@turn_app.command("config")
@profile_options
def config_cmd(
    opts: ProfileOptions,
    json_out: bool = options.json_flag("print {ok, profile, config, warnings, files} (the REST secret masked) as one JSON document"),
) -> None:
    """Print the turnserver.conf natkit would run with these options (warnings on stderr).

    The text form is the file itself, secret included (it is what you would deploy);
    ``--json`` masks the secret. Exit codes: 0 printed, 2 bad option.
    """

    def body() -> int:
        built = opts.build()
        for warning in built.warnings:
            output.err(f"natkit: warning: {warning}")
        text = built.config.render()
        if json_out:
            for secret in built.config.static_auth_secrets:
                text = text.replace(secret, "***")
            for _, password in built.config.users:
                text = text.replace(password, "***")
            output.emit_json({"ok": True, "profile": built.name, "config": text.splitlines(),
                              "warnings": list(built.warnings), "files": sorted(built.files)})
        else:
            print(text, end="")
        return 0

    output.run(json_out, body)


image_app = typer.Typer(help="coturn images for the docker backend.", no_args_is_help=True)
turn_app.add_typer(image_app, name="image")


@image_app.command("build")
def image_build_cmd(
    tag: str = typer.Option("natkit/coturn:local", "--tag", "-t", help="image reference to create (replaced if it exists)"),
    turnserver: Optional[str] = typer.Option(None, "--turnserver", help="binary to pack (default: the installed turnserver)"),
    json_out: bool = options.json_flag(),
) -> None:
    """Build a coturn image offline from this host's turnserver (no registry needed). Exit 3 without Docker or turnserver."""

    def body() -> int:
        from ..coturn.image import build_local_image

        output.progress(f"packing this host's turnserver and its libraries into {tag}")
        ref = build_local_image(tag, turnserver)
        if json_out:
            output.emit_json({"ok": True, "image": ref})
        else:
            print(f"built {ref}\nuse it:  natkit turn up --backend docker --image {ref}")
        return 0

    output.run(json_out, body)


def _register_subcommands() -> None:
    # turn audit and turn render live in their own modules; cheap to import (their work is imported when they run)
    from .audit import audit_cmd
    from .load import load_cmd
    from .render import render_cmd

    turn_app.command("audit")(audit_cmd)
    turn_app.command("render")(render_cmd)
    turn_app.command("load")(load_cmd)


_register_subcommands()
