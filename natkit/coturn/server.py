"""coturn servers managed by natkit: backend choice, state, readiness, cleanup.

A server lives in ``<state dir>/servers/<name>/`` (``state.json``,
``turnserver.conf``, ``turnserver.log``), so ``natkit turn status|logs|down``
find it from another process. The state directory is the ``state_dir``
given to :class:`CoturnServer` (and to the listing functions), else
``$NATKIT_STATE_DIR``, else ``$XDG_STATE_HOME/natkit``, else
``~/.local/state/natkit``. Backends (:mod:`natkit.coturn.backend`) run the
process or container.

:class:`CoturnServer` is a context manager: leaving the ``with`` block, an
exception or Ctrl-C during startup stops the server and removes its state.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from ..errors import (
    BackendUnavailable,
    EnvironmentProblem,
    InternalError,
    NatkitError,
    NotRunning,
    ServerStartFailed,
    UsageError,
)
from ..model import TransportAddress, format_duration
from ..ownership import current_owner, owner_alive
from .backend import Backend
from .backend import get as get_backend
from .config import CoturnConfig

NAME_PREFIX = "natkit-"
LABEL = "natkit.managed"  # Docker label on every container natkit creates
DEFAULT_IMAGE = "coturn/coturn:4.6.3"  # official image, pinned
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,40}$")


StateDir = str | os.PathLike | None  # a state directory root; None: the environment's (state_dir())


def state_dir(root: StateDir = None) -> Path:
    """Root of natkit's state: ``root`` when given, else ``$NATKIT_STATE_DIR``, ``$XDG_STATE_HOME/natkit``, ``~/.local/state/natkit``."""
    if root is not None:
        return Path(root)
    base = os.environ.get("NATKIT_STATE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "natkit"


def _state_root(root: StateDir = None) -> Path:
    return state_dir(root)


STATE_HINT = "set NATKIT_STATE_DIR to a directory this user can write (default: ~/.local/state/natkit)"


def _servers_dir(root: StateDir = None) -> Path:
    """``<state dir>/servers``, created 0700. Raises :class:`EnvironmentProblem` when it cannot be used."""
    base = state_dir(root)
    d = base / "servers"
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not os.access(d, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        raise EnvironmentProblem(f"natkit's state directory {base} is not usable: {exc.strerror or exc}", hint=STATE_HINT) from None
    return d


def choose_backend(requested: str = "auto", image: str | None = None) -> str:
    """Resolve ``auto`` to ``docker`` when an engine answers and ``image`` is present locally, else ``native``.

    Raises :class:`BackendUnavailable` when the requested backend (or, for
    auto, both) cannot be used, with each one's reason.
    """
    if requested not in ("auto", "docker", "native"):
        raise UsageError(f"unknown backend {requested!r}", hint="use auto, docker or native")
    order = ["docker", "native"] if requested == "auto" else [requested]
    reasons = []
    for name in order:
        # auto also needs the image locally; an explicit docker request reports a missing image at start, with its hint
        ok, reason = get_backend(name).available(image if requested == "auto" else None)
        if ok:
            return name
        reasons.append(f"{name}: {reason}")
    raise BackendUnavailable("no coturn backend is usable: " + "; ".join(reasons), hint="apt-get install coturn, or start a Docker engine")


def port_in_use(ip: str, port: int) -> str | None:
    """Return "udp"/"tcp" when ``ip:port`` is already bound, else None.

    Raises :class:`EnvironmentProblem` when ``ip`` is not an address of this host.
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    for kind, name in ((socket.SOCK_DGRAM, "udp"), (socket.SOCK_STREAM, "tcp")):
        s = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise EnvironmentProblem(f"{ip} is not an address of this host", step="turn up",
                                         hint="listen on an address this host has (ip -br addr)") from None
            return name
        finally:
            s.close()
    return None


def free_port(ip: str = "127.0.0.1") -> int:
    """A port that is free for both UDP and TCP on ``ip`` right now."""
    for _ in range(50):
        s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ip, 0))
        port = s.getsockname()[1]
        s.close()
        if port_in_use(ip, port) is None:
            return port
    raise EnvironmentProblem(f"no free port on {ip}")


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    """What natkit records about one managed coturn (``state.json``).

    ``uris`` are the TURN URIs clients should use; ``secret`` is the REST
    shared secret (the state file is 0600).
    """

    name: str
    backend: str
    listen: tuple[str, ...]
    port: int
    tls_port: int | None
    realm: str
    secret: str | None
    uris: tuple[str, ...]
    stun_uris: tuple[str, ...]
    created: float
    pid: int | None = None
    pid_start: int | None = None  # native: the process's start time (clock ticks since boot), so a recycled PID is not it
    container_id: str | None = None
    image: str | None = None
    config_path: str = ""
    log_path: str = ""
    argv_prefix: tuple[str, ...] = ()  # native: words before turnserver (ip netns exec NS)
    owner_pid: int | None = None  # the process this server lives for (ephemeral servers); None: persistent
    owner_start: int | None = None  # that process's start time (clock ticks since boot): a recycled PID is no owner

    @property
    def orphaned(self) -> bool:
        """True when the server had an owner and that process is gone: nothing will ever stop it."""
        return owner_alive(self.owner_pid, self.owner_start) is False

    def to_state(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, data: dict) -> ServerInfo:
        fields = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in fields}
        for key in ("listen", "uris", "stun_uris", "argv_prefix"):
            data[key] = tuple(data.get(key) or ())
        return cls(**data)

    def public(self) -> dict:
        """The JSON view (without the secret), with ``orphaned``."""
        d = self.to_state()
        d["secret"] = "***" if self.secret else None
        d["orphaned"] = self.orphaned
        return d


def _uris(config: CoturnConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    host = config.listening_ips[0]
    h = f"[{host}]" if ":" in host else host
    turn = [f"turn:{h}:{config.listening_port}", f"turn:{h}:{config.listening_port}?transport=tcp"]
    if config.tls_listening_port:
        turn.append(f"turns:{h}:{config.tls_listening_port}")
    return tuple(turn), (f"stun:{h}:{config.listening_port}",)


def list_servers(state_dir: StateDir = None) -> list[ServerInfo]:
    """Every server with a state file (running or not) under ``state_dir`` (default: the environment's)."""
    out = []
    for state_file in sorted(_servers_dir(state_dir).glob("*/state.json")):
        try:
            out.append(ServerInfo.from_state(json.loads(state_file.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return out


def get_server(name: str | None = None, state_dir: StateDir = None) -> ServerInfo:
    """The server called ``name``; without a name, the only one there is.

    Raises :class:`NotRunning` when none (or, without a name, several) match.
    """
    servers = list_servers(state_dir)
    if name:
        for s in servers:
            if s.name == name:
                return s
        raise NotRunning(f"no natkit-managed coturn called {name!r}", hint="natkit turn status lists them")
    if not servers:
        raise NotRunning("no natkit-managed coturn is running", hint="start one with: natkit turn up")
    if len(servers) > 1:
        raise UsageError("several natkit-managed coturn servers exist: " + ", ".join(s.name for s in servers), hint="pass --name")
    return servers[0]


def is_running(info: ServerInfo) -> bool:
    """True when the server's process or container is running."""
    return get_backend(info.backend).is_running(info.to_state())


def server_logs(info: ServerInfo, tail: int | None = None) -> list[str]:
    """The server's own log lines (last ``tail`` lines when given)."""
    return get_backend(info.backend).logs(info.to_state(), tail)


def _wait_ports_free(info: ServerInfo, timeout: float = 3.0) -> bool:
    """Wait until none of the server's listening ports is bound any more."""
    ports = [p for p in (info.port, info.tls_port) if p]
    end = time.monotonic() + timeout
    while True:
        try:
            busy = [(ip, p) for ip in info.listen for p in ports if port_in_use(ip, p)]
        except NatkitError:  # the address is gone from this host: nothing can be bound there
            busy = []
        if not busy:
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.01)


def stop_server(info: ServerInfo) -> None:
    """Stop the server, wait until its ports are free, and remove its state directory."""
    try:
        get_backend(info.backend).stop(info.to_state())
        _wait_ports_free(info)
    finally:
        shutil.rmtree(Path(info.config_path).parent, ignore_errors=True)


def reap_orphans(state_dir: StateDir = None) -> list[str]:
    """Stop every server whose owner process is gone (:attr:`ServerInfo.orphaned`); return their names.

    An ephemeral server (``natkit check``'s embedded one, a test session's)
    whose owner was SIGKILLed or crashed is never stopped by that owner;
    :meth:`CoturnServer.start` calls this first, so the next natkit that
    starts a server cleans up after the dead one.
    """
    names = []
    for info in list_servers(state_dir):
        if info.orphaned:
            try:
                stop_server(info)
            except NatkitError:
                continue  # e.g. its Docker engine is gone; turn down --all retries
            names.append(info.name)
    return names


def stop_all(state_dir: StateDir = None) -> list[str]:
    """Stop every natkit-managed server of ``state_dir`` and every labelled container that is a
    leftover (its config file gone, or in this state directory); return their names.

    A labelled container whose config still exists in another state
    directory is another natkit's live server and is left alone.
    """
    state_dir_root = _state_root(state_dir)
    names = []
    for info in list_servers(state_dir):
        stop_server(info)
        names.append(info.name)
    try:
        from . import docker as docker_backend

        names += docker_backend.reap_labelled(root=state_dir_root)
    except NatkitError:
        pass
    return names


READY_POLL = 0.05  # s between readiness rounds
TLS_GRACE = 3.0  # s the TLS listener may lag behind UDP before startup counts as failed


def _listeners(info: ServerInfo) -> list[tuple[str, TransportAddress]]:
    """Every listener the server advertises (``info.uris``): UDP and TCP on ``port``, TLS on ``tls_port``."""
    host = info.listen[0]
    out = [("udp", TransportAddress(host, info.port)), ("tcp", TransportAddress(host, info.port))]
    if info.tls_port:
        out.append(("tls", TransportAddress(host, info.tls_port)))
    return out


def _listener_answers(kind: str, addr: TransportAddress) -> str | None:
    """None when a STUN Binding over ``kind`` (udp, tcp, tls) is answered with XOR-MAPPED-ADDRESS, else why not.

    Blocking sockets and no event loop (readiness is polled from sync code).
    TLS is not verified here: the check is that the listener completes a
    handshake and speaks STUN, whatever certificate it presents.
    """
    import ssl as ssl_module

    from ..stun import codec, sync

    ctx = None
    if kind == "tls":
        ctx = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl_module.CERT_NONE
    try:
        msg, _, _ = sync.request(codec.binding_request(), addr, timeout=0.1 if kind == "udp" else 1.0, rto=0.1,
                                 transport="udp" if kind == "udp" else "tcp", ssl=ctx)
    except NatkitError as exc:
        return exc.message
    if not msg.is_success or "XOR-MAPPED-ADDRESS" not in msg:
        return f"answered the Binding with {msg.describe()}"
    return None


def wait_ready(info: ServerInfo, timeout: float = 20.0) -> float:
    """Poll every advertised listener (UDP, TCP, TLS) with STUN Bindings until all answer; return seconds waited.

    Raises :class:`ServerStartFailed` (with the server's last log lines) when
    the server exits, when a listener does not answer within ``timeout``
    seconds, or when the TLS listener still fails its handshake
    :data:`TLS_GRACE` seconds after UDP answered (a certificate or key that is
    not PEM: coturn runs, but ``turns:`` cannot work).
    """
    started = time.monotonic()
    waiting = dict(_listeners(info))
    why: dict[str, str] = {}
    udp_ready_at: float | None = None
    seen_down = False
    while True:
        for kind, addr in list(waiting.items()):
            reason = _listener_answers(kind, addr)
            if reason is None:
                del waiting[kind]
            else:
                why[kind] = reason
        now = time.monotonic()
        if not waiting:
            return now - started
        if "udp" not in waiting and udp_ready_at is None:
            udp_ready_at = now
        # two observations one poll apart: right after exec, /proc/PID/cmdline can still be empty
        # (the kernel sets the new argv after the exec is reported to the parent)
        down = not is_running(info)
        if down and seen_down:
            raise ServerStartFailed(
                f"coturn ({info.backend}) exited during startup", server=info.name, step="turn up",
                details=server_logs(info, 15), hint="see the server log above")
        seen_down = down
        if set(waiting) == {"tls"} and udp_ready_at is not None and now - udp_ready_at > TLS_GRACE:
            raise ServerStartFailed(
                f"coturn ({info.backend}) answers STUN over UDP and TCP but its TLS listener {waiting['tls']} does not: {why['tls']}",
                server=info.name, step="turn up", details=server_logs(info, 15),
                hint="are --cert and --key a PEM certificate and its PEM private key?")
        if now - started > timeout:
            listed = ", ".join(f"{kind.upper()} {addr} ({why.get(kind, 'no answer')})" for kind, addr in waiting.items())
            raise ServerStartFailed(
                f"coturn ({info.backend}) did not answer a STUN Binding within {format_duration(timeout)} on {listed}",
                server=info.name, step="turn up", details=server_logs(info, 15))
        time.sleep(READY_POLL)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the first byte (secrets, keys)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


class CoturnServer:
    """A coturn process or container managed by natkit.

    ``config`` is the :class:`CoturnConfig` to run; ``backend`` "auto",
    "docker" or "native"; ``image`` the Docker image (docker backend only).
    ``ephemeral``: the server lives only as long as this process (its state
    records this process as the owner; once the owner is gone,
    ``turn status`` shows it as orphaned and the next start reaps it).
    ``state_dir``: the state root for this server (``<state_dir>/servers/<name>/``);
    default ``$NATKIT_STATE_DIR`` etc. (:func:`state_dir`), so a test
    fixture never needs to change the environment. ``argv_prefix``
    (native backend only): words that run turnserver in place, such as
    ``("ip", "netns", "exec", NS)``; such a server is on another network,
    so its ports are not checked on this host and readiness is its
    listening sockets (:func:`wait_listening`) instead of a STUN answer.
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        config: CoturnConfig,
        *,
        backend: str = "auto",
        image: str | None = None,
        name: str | None = None,
        ready_timeout: float = 20.0,
        extra_files: dict[str, bytes] | None = None,
        ephemeral: bool = False,
        state_dir: StateDir = None,
        argv_prefix: Sequence[str] = (),
    ) -> None:
        config.validate()
        if name is not None and not _NAME_RE.match(name):
            raise UsageError(f"invalid server name {name!r}", hint="use lowercase letters, digits, '-', '_' or '.'")
        if argv_prefix and backend not in ("native", "auto"):
            raise UsageError("an argv prefix (e.g. ip netns exec) needs the native backend", hint="backend='native'")
        self.config = config
        self.requested_backend = "native" if argv_prefix else backend
        self.image = image
        self.name = name or "default"
        self.ready_timeout = ready_timeout
        self.extra_files = extra_files or {}
        self.ephemeral = ephemeral
        self.state_dir = None if state_dir is None else Path(state_dir)
        self.argv_prefix = tuple(argv_prefix)
        self.info: ServerInfo | None = None
        self.ready_seconds: float | None = None

    @property
    def secret(self) -> str | None:
        return self.config.static_auth_secrets[0] if self.config.static_auth_secrets else None

    @property
    def ready_ms(self) -> float:
        """Milliseconds the last :meth:`start` waited until every listener answered.

        Raises :class:`InternalError` before a start (a caller's bug: there is nothing measured to report).
        """
        if self.ready_seconds is None:
            raise InternalError(f"coturn {self.name!r} has not been started: no readiness was measured", step="turn up")
        return self.ready_seconds * 1000.0

    @property
    def pid(self) -> int | None:
        """turnserver's PID (native backend, while started), else None."""
        return self.info.pid if self.info is not None else None

    def start(self) -> ServerInfo:
        """Start the server and wait until it is ready; return its :class:`ServerInfo`.

        Raises :class:`UsageError` when the name exists,
        :class:`EnvironmentProblem` when a port is taken or the state
        directory is unusable, :class:`BackendUnavailable` when no backend
        works, and :class:`ServerStartFailed` (nothing left running) when it
        does not become ready.
        """
        backend_name = choose_backend(self.requested_backend, self.image or DEFAULT_IMAGE)
        backend = get_backend(backend_name)
        self._clear_the_way()
        sdir = _servers_dir(self.state_dir) / self.name
        config = self._write_files(backend, sdir)
        turn_uris, stun_uris = _uris(config)
        info = ServerInfo(
            name=self.name, backend=backend_name, listen=config.listening_ips, port=config.listening_port,
            tls_port=config.tls_listening_port, realm=config.realm, secret=self.secret,
            uris=turn_uris, stun_uris=stun_uris, created=time.time(),
            config_path=str(sdir / "turnserver.conf"), log_path=str(sdir / "turnserver.log"),
            argv_prefix=self.argv_prefix, **(current_owner() if self.ephemeral else {}),
        )
        self.info = info
        try:
            self._write_state(info)  # before the start: a SIGKILL right after it leaves a findable server
            extra = backend.start(sdir / "turnserver.conf", sdir / "turnserver.log", name=self.name,
                                  image=self.image or DEFAULT_IMAGE, argv_prefix=self.argv_prefix)
            info = dataclasses.replace(info, **extra)
            self.info = info
            self._write_state(info)
            if self.argv_prefix:
                from .readiness import expected_listeners, wait_listening

                self.ready_seconds = wait_listening(info, expected_listeners(config), self.ready_timeout)
            else:
                self.ready_seconds = wait_ready(info, self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        return info

    def _clear_the_way(self) -> None:
        """Reap orphans, refuse a running namesake (remove a stale one), refuse ports in use on this host."""
        reap_orphans(self.state_dir)
        for existing in list_servers(self.state_dir):
            if existing.name == self.name:
                if is_running(existing):
                    raise UsageError(f"a natkit coturn called {self.name!r} is already running", hint="natkit turn down, or pass --name")
                stop_server(existing)  # stale state from a crashed run
        if self.argv_prefix:
            return  # another network (a namespace): this host's ports say nothing about it
        for ip in self.config.listening_ips:
            for port in filter(None, (self.config.listening_port, self.config.tls_listening_port)):
                busy = port_in_use(ip, port)
                if busy:
                    raise EnvironmentProblem(f"{busy.upper()} port {port} on {ip} is already in use", step="turn up",
                                             hint="choose another --port or stop what uses it")

    def _write_files(self, backend: Backend, sdir: Path) -> CoturnConfig:
        """The server directory (0700) with its extra files and turnserver.conf (0600); returns the config written."""
        try:
            sdir.mkdir(mode=0o700, exist_ok=True)
            os.chmod(sdir, 0o700)
            for fname, content in self.extra_files.items():
                _write_private(sdir / fname, content)
            # paths coturn itself writes: the pid file and its sqlite user db;
            # relative cert/pkey names refer to extra_files written into the server's directory
            def runtime(path: str | None) -> str | None:
                return backend.runtime_path(sdir, path) if path and not os.path.isabs(path) else path

            config = dataclasses.replace(
                self.config,
                pidfile=self.config.pidfile or backend.runtime_path(sdir, "turnserver.pid"),
                userdb=self.config.userdb or backend.runtime_path(sdir, "turndb"),
                cert=runtime(self.config.cert), pkey=runtime(self.config.pkey),
            )
            _write_private(sdir / "turnserver.conf", config.render().encode())
        except OSError as exc:
            shutil.rmtree(sdir, ignore_errors=True)
            raise EnvironmentProblem(f"cannot write the server's files in {sdir}: {exc.strerror or exc}", step="turn up", hint=STATE_HINT) from None
        return config

    def _write_state(self, info: ServerInfo) -> None:
        _write_private(Path(info.config_path).parent / "state.json", json.dumps(info.to_state(), indent=2).encode())

    def logs(self, tail: int | None = None) -> list[str]:
        return server_logs(self.info, tail) if self.info else []

    def stop(self) -> None:
        """Stop the server (idempotent) and remove its state."""
        if self.info is not None:
            stop_server(self.info)
            self.info = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
