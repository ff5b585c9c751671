"""``natkit turn up|down|status|logs|config``: coturn managed by natkit."""

from __future__ import annotations

import time
from typing import List, Optional

import typer

from . import output

turn_app = typer.Typer(help="Provision coturn (Docker or the native turnserver) with a hardened configuration.", no_args_is_help=True)


def build_profile(profile: str, listen: List[str], port: int, secrets: List[str], realm: str, external_ip: Optional[str],
                  min_port: int, max_port: int, allow_loopback: Optional[bool], users: List[str], tls: bool, tls_port: int,
                  cert: Optional[str], key: Optional[str], tcp_relay: bool, nat_discovery: bool):
    """The hardened :class:`~natkit.coturn.profiles.Profile` the options describe.

    A fresh REST secret when none is given; on loopback, exactly the loopback
    listening addresses stay relayable (self-tests), everything else of the
    deny list stays denied. ``--lt-user`` swaps REST for long-term credentials.
    """
    import dataclasses

    from ..coturn.profiles import build
    from ..credentials import new_secret
    from ..errors import UsageError

    loopback = [ip for ip in listen if ip.startswith("127.") or ip == "::1"]
    if allow_loopback is None:
        allow_loopback = bool(loopback) and len(loopback) == len(listen)
    files: dict[str, bytes] = {}
    if cert or key:
        if not (cert and key):
            raise UsageError("--cert and --key go together")
        try:
            with open(cert, "rb") as c, open(key, "rb") as k:
                files = {"turn_server_cert.pem": c.read(), "turn_server_pkey.pem": k.read()}
        except OSError as exc:
            raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    built = build(
        profile, secrets=tuple(secrets) or (new_secret(),), listening_ips=tuple(listen), port=port,
        tls_port=tls_port if (tls or cert) else None, realm=realm, external_ip=external_ip,
        min_port=min_port, max_port=max_port,
        cert="turn_server_cert.pem" if files else None, pkey="turn_server_pkey.pem" if files else None,
        tcp_relay=tcp_relay, nat_discovery=nat_discovery,
        allowed_peers=tuple(loopback) if allow_loopback else (), allow_loopback_peers=allow_loopback,
    )
    if files:
        built = dataclasses.replace(built, files={**built.files, **files})
    if users:
        parsed = []
        for u in users:
            if ":" not in u:
                raise UsageError(f"--lt-user takes NAME:PASSWORD, got {u!r}")
            parsed.append(tuple(u.split(":", 1)))
        built = dataclasses.replace(built, config=dataclasses.replace(
            built.config, auth="long-term", users=tuple(parsed), static_auth_secrets=()))
    return built


_profile_opt = typer.Option("recommended", "--profile", help="hardening profile: recommended or strict")
_listen_opt = typer.Option(["127.0.0.1"], "--listen", "-l", help="listening IP (repeat for several; two of one family enable RFC 5780)")
_port_opt = typer.Option(3478, "--port", "-p", help="listening port (UDP and TCP)")
_secret_opt = typer.Option([], "--secret", help="REST shared secret (repeat to rotate: newest first; default: a fresh random one)")
_realm_opt = typer.Option("natkit", "--realm", help="realm")
_ext_opt = typer.Option(None, "--external-ip", help="public address (coturn external-ip), PUBLIC or PUBLIC/PRIVATE")
_min_opt = typer.Option(49152, "--min-port", help="lowest relay port")
_max_opt = typer.Option(65535, "--max-port", help="highest relay port")
_loop_opt = typer.Option(None, "--allow-loopback-peers/--deny-loopback-peers", help="allow relaying to the loopback listening address (default: only when listening on loopback only)")
_users_opt = typer.Option([], "--lt-user", help="long-term user NAME:PASSWORD instead of REST secrets (repeatable)")
_tls_opt = typer.Option(False, "--tls", help="also listen for TURN over TLS (turns:), TLS 1.2+ only")
_tls_port_opt = typer.Option(5349, "--tls-port", help="TLS listening port")
_cert_opt = typer.Option(None, "--cert", help="PEM certificate (chain) for --tls; default: a self-signed one")
_key_opt = typer.Option(None, "--key", help="PEM private key for --cert")
_tcp_relay_opt = typer.Option(False, "--tcp-relay", help="allow RFC 6062 TCP allocations (recommended profile only)")
_nat_opt = typer.Option(False, "--nat-discovery", help="answer RFC 5780 NAT discovery (needs two listening IPs of one family)")


def _print_started(info, ready_seconds: float, name: str) -> None:
    where = f"container {info.container_id[:12]}" if info.container_id else f"pid {info.pid}"
    named = f" --name {name}" if name != "default" else ""
    print(f"coturn is running ({info.backend}, {where}), ready in {ready_seconds * 1000:.0f} ms")
    for uri in (*info.uris, *info.stun_uris):
        print(f"  {uri}")
    if info.secret:
        print(f"credentials: natkit creds{named}   (REST secret kept in natkit's state, 0600)")
    print(f"check it:    natkit check{named or ' --name default'}")
    print(f"stop it:     natkit turn down{named}")


@turn_app.command("up")
def up_cmd(
    backend: str = typer.Option("auto", "--backend", "-b", help="auto, docker or native"),
    image: Optional[str] = typer.Option(None, "--image", help="Docker image; never pulled: it must be present locally (default: the official coturn image, pinned; natkit turn image build makes one offline)"),
    profile: str = _profile_opt,
    listen: List[str] = _listen_opt,
    port: int = _port_opt,
    secret: List[str] = _secret_opt,
    realm: str = _realm_opt,
    external_ip: Optional[str] = _ext_opt,
    min_port: int = _min_opt,
    max_port: int = _max_opt,
    allow_loopback: Optional[bool] = _loop_opt,
    users: List[str] = _users_opt,
    tls: bool = _tls_opt,
    tls_port: int = _tls_port_opt,
    cert: Optional[str] = _cert_opt,
    key: Optional[str] = _key_opt,
    tcp_relay: bool = _tcp_relay_opt,
    nat_discovery: bool = _nat_opt,
    name: str = typer.Option("default", "--name", help="name of this server in natkit's state"),
    foreground: bool = typer.Option(False, "--foreground", help="stay attached until Ctrl-C, then stop the server"),
    ready_timeout: float = typer.Option(20.0, "--ready-timeout", help="seconds to wait for the first STUN answer"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Start a hardened coturn in the background; return once it answers a STUN Binding.

    Exit codes: 0 running, 2 bad option, 3 no backend / port in use / server failed to start.
    """

    def body() -> int:
        from ..coturn.server import CoturnServer

        built = build_profile(profile, listen, port, secret, realm, external_ip, min_port, max_port, allow_loopback,
                              users, tls, tls_port, cert, key, tcp_relay, nat_discovery)
        for warning in built.warnings:
            output.err(f"natkit: warning: {warning}")
        server = CoturnServer(built.config, backend=backend, image=image, name=name, ready_timeout=ready_timeout, extra_files=built.files)
        output.progress(f"starting coturn ({backend}, profile {profile}) on {', '.join(listen)} port {port}")
        info = server.start()
        try:
            if json_out:
                output.emit_json({"ok": True, "ready_ms": server.ready_seconds * 1000, "profile": profile,
                                  "warnings": list(built.warnings), "server": info.public()})
            else:
                _print_started(info, server.ready_seconds, name)
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
    all_: bool = typer.Option(False, "--all", help="stop every natkit-managed coturn, including labelled containers without state"),
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


@turn_app.command("status")
def status_cmd(json_out: bool = typer.Option(False, "--json")) -> None:
    """List natkit-managed coturn servers. Exit 0 when all listed are running, 1 otherwise."""

    def body() -> int:
        from ..coturn.server import is_running, list_servers

        servers = [(s, is_running(s)) for s in list_servers()]
        if json_out:
            output.emit_json({"ok": all(r for _, r in servers), "servers": [dict(s.public(), running=r) for s, r in servers]})
        else:
            if not servers:
                print("no natkit-managed coturn")
            else:
                rows = [[s.name, s.backend, "running" if r else "[red]stopped[/red]", s.container_id[:12] if s.container_id else s.pid, " ".join(s.uris)] for s, r in servers]
                output.console().print(output.table(None, ["name", "backend", "state", "pid/container", "uris"], rows))
        return 0 if all(r for _, r in servers) else 1

    output.run(json_out, body)


@turn_app.command("logs")
def logs_cmd(
    name: Optional[str] = typer.Option(None, "--name"),
    tail: Optional[int] = typer.Option(None, "--tail", "-n", help="only the last N lines"),
) -> None:
    """Print the server's own log."""

    def body() -> int:
        from ..coturn.server import get_server, server_logs

        for line in server_logs(get_server(name), tail):
            print(line)
        return 0

    output.run(False, body)


@turn_app.command("config")
def config_cmd(
    profile: str = _profile_opt,
    listen: List[str] = _listen_opt,
    port: int = _port_opt,
    secret: List[str] = _secret_opt,
    realm: str = _realm_opt,
    external_ip: Optional[str] = _ext_opt,
    min_port: int = _min_opt,
    max_port: int = _max_opt,
    allow_loopback: Optional[bool] = _loop_opt,
    users: List[str] = _users_opt,
    tls: bool = _tls_opt,
    tls_port: int = _tls_port_opt,
    cert: Optional[str] = _cert_opt,
    key: Optional[str] = _key_opt,
    tcp_relay: bool = _tcp_relay_opt,
    nat_discovery: bool = _nat_opt,
) -> None:
    """Print the turnserver.conf natkit would run with these options (warnings on stderr)."""

    def body() -> int:
        built = build_profile(profile, listen, port, secret, realm, external_ip, min_port, max_port, allow_loopback,
                              users, tls, tls_port, cert, key, tcp_relay, nat_discovery)
        for warning in built.warnings:
            output.err(f"natkit: warning: {warning}")
        print(built.config.render(), end="")
        return 0

    output.run(False, body)


image_app = typer.Typer(help="coturn images for the docker backend.", no_args_is_help=True)
turn_app.add_typer(image_app, name="image")


@image_app.command("build")
def image_build_cmd(
    tag: str = typer.Option("natkit/coturn:local", "--tag", "-t", help="image reference to create (replaced if it exists)"),
    turnserver: Optional[str] = typer.Option(None, "--turnserver", help="binary to pack (default: the installed turnserver)"),
    json_out: bool = typer.Option(False, "--json"),
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
