"""``natkit turn up|down|status|logs|config``: coturn managed by natkit."""

from __future__ import annotations

import time
from typing import List, Optional

import typer

from . import output

turn_app = typer.Typer(help="Provision coturn (Docker or the native turnserver) with a hardened configuration.", no_args_is_help=True)


def build_config(listen: List[str], port: int, secret: Optional[str], realm: str, external_ip: Optional[str], min_port: int, max_port: int, allow_loopback: bool, users: List[str]):
    """The :class:`CoturnConfig` the options describe (a fresh secret when none given)."""
    from ..coturn.config import CoturnConfig
    from ..credentials import new_secret
    from ..errors import UsageError

    parsed_users = []
    for u in users:
        if ":" not in u:
            raise UsageError(f"--lt-user takes NAME:PASSWORD, got {u!r}")
        parsed_users.append(tuple(u.split(":", 1)))
    allowed: tuple[str, ...] = ()
    if allow_loopback:
        # self-test on loopback: allow exactly the relay addresses, keep the rest denied
        allowed = tuple(ip for ip in listen if ip.startswith("127.") or ip == "::1")
    return CoturnConfig(
        listening_ips=tuple(listen),
        listening_port=port,
        realm=realm,
        auth="long-term" if parsed_users else "rest",
        static_auth_secrets=() if parsed_users else (secret or new_secret(),),
        users=tuple(parsed_users),
        external_ip=external_ip,
        min_port=min_port,
        max_port=max_port,
        allow_loopback_peers=bool(allowed),
        allowed_peer_ranges=allowed,
    )


_listen_opt = typer.Option(["127.0.0.1"], "--listen", "-l", help="listening IP (repeat for several; two of one family enable RFC 5780)")
_port_opt = typer.Option(3478, "--port", "-p", help="listening port (UDP and TCP)")
_secret_opt = typer.Option(None, "--secret", envvar="NATKIT_TURN_SECRET", help="REST shared secret (default: a fresh random one)")
_realm_opt = typer.Option("natkit", "--realm", help="realm")
_ext_opt = typer.Option(None, "--external-ip", help="public address (coturn external-ip), PUBLIC or PUBLIC/PRIVATE")
_min_opt = typer.Option(49152, "--min-port", help="lowest relay port")
_max_opt = typer.Option(65535, "--max-port", help="highest relay port")
_loop_opt = typer.Option(None, "--allow-loopback-peers/--deny-loopback-peers", help="allow relaying to the loopback listening address (default: only when listening on loopback)")
_users_opt = typer.Option([], "--lt-user", help="long-term user NAME:PASSWORD instead of REST secrets (repeatable)")


def tls_files(cert: Optional[str], key: Optional[str], names: List[str]) -> dict[str, bytes]:
    """``{"cert.pem": ..., "key.pem": ...}`` from files, or a fresh self-signed pair (with a warning)."""
    from ..errors import UsageError

    if cert or key:
        if not (cert and key):
            raise UsageError("--cert and --key go together")
        try:
            with open(cert, "rb") as c, open(key, "rb") as k:
                return {"cert.pem": c.read(), "key.pem": k.read()}
        except OSError as exc:
            raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    from ..tls import self_signed

    output.err("natkit: warning: --tls without --cert: using a self-signed certificate; clients must trust it "
               "(natkit relay-check --ca, or --insecure for a test)")
    cert_pem, key_pem = self_signed([*names, "localhost"], days=30)
    return {"cert.pem": cert_pem, "key.pem": key_pem}


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
    listen: List[str] = _listen_opt,
    port: int = _port_opt,
    secret: Optional[str] = _secret_opt,
    realm: str = _realm_opt,
    external_ip: Optional[str] = _ext_opt,
    min_port: int = _min_opt,
    max_port: int = _max_opt,
    allow_loopback: Optional[bool] = _loop_opt,
    users: List[str] = _users_opt,
    tls: bool = typer.Option(False, "--tls", help="also listen for TURN over TLS (turns:), TLS 1.2+ only"),
    tls_port: int = typer.Option(5349, "--tls-port", help="TLS listening port"),
    cert: Optional[str] = typer.Option(None, "--cert", help="PEM certificate (chain) for --tls; default: a self-signed one"),
    key: Optional[str] = typer.Option(None, "--key", help="PEM private key for --cert"),
    name: str = typer.Option("default", "--name", help="name of this server in natkit's state"),
    foreground: bool = typer.Option(False, "--foreground", help="stay attached until Ctrl-C, then stop the server"),
    ready_timeout: float = typer.Option(20.0, "--ready-timeout", help="seconds to wait for the first STUN answer"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Start coturn in the background; return once it answers a STUN Binding.

    Exit codes: 0 running, 2 bad option, 3 no backend / port in use / server failed to start.
    """

    def body() -> int:
        from ..coturn.server import CoturnServer

        loopback = allow_loopback if allow_loopback is not None else all(ip.startswith("127.") or ip == "::1" for ip in listen)
        import dataclasses

        config = build_config(listen, port, secret, realm, external_ip, min_port, max_port, loopback, users)
        files = {}
        if tls or cert:
            files = tls_files(cert, key, listen)
            config = dataclasses.replace(config, tls_listening_port=tls_port, cert="cert.pem", pkey="key.pem")
        server = CoturnServer(config, backend=backend, image=image, name=name, ready_timeout=ready_timeout, extra_files=files)
        output.progress(f"starting coturn ({backend}) on {', '.join(listen)} port {port}")
        info = server.start()
        try:
            if json_out:
                output.emit_json({"ok": True, "ready_ms": server.ready_seconds * 1000, "server": info.public()})
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
    listen: List[str] = _listen_opt,
    port: int = _port_opt,
    secret: Optional[str] = _secret_opt,
    realm: str = _realm_opt,
    external_ip: Optional[str] = _ext_opt,
    min_port: int = _min_opt,
    max_port: int = _max_opt,
    allow_loopback: Optional[bool] = _loop_opt,
    users: List[str] = _users_opt,
) -> None:
    """Print the turnserver.conf natkit would run with these options."""

    def body() -> int:
        loopback = bool(allow_loopback)
        print(build_config(listen, port, secret, realm, external_ip, min_port, max_port, loopback, users).render(), end="")
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
