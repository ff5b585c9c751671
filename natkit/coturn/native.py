"""The native backend: the ``turnserver`` binary as a managed subprocess.

The process runs in its own session (process group), writes its log to a file
in the server's state directory, and is identified later by PID plus its
command line (which names natkit's config file), so a recycled PID is never
signalled by mistake.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import BackendUnavailable
from ..ownership import process_start_time

NAME = "native"


ENV_BINARY = "NATKIT_TURNSERVER"


def _executable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_binary() -> str | None:
    """Path of ``turnserver`` (``$NATKIT_TURNSERVER`` first, then PATH and /usr/bin); None when there is none.

    A ``$NATKIT_TURNSERVER`` that is not an executable file gives None, never a fallback.
    """
    explicit = os.environ.get(ENV_BINARY)
    if explicit:
        return explicit if _executable_file(explicit) else None
    return shutil.which("turnserver") or next(
        (p for p in ("/usr/bin/turnserver", "/usr/local/bin/turnserver") if _executable_file(p)), None
    )


def missing_reason() -> str:
    """Why :func:`find_binary` found nothing (one line)."""
    explicit = os.environ.get(ENV_BINARY)
    if explicit:
        return f"{ENV_BINARY}={explicit} is not an executable file"
    return "the turnserver binary is not installed (apt-get install coturn)"


def available(image: str | None = None) -> tuple[bool, str]:
    """(usable, reason); ``image`` is ignored (no images here)."""
    binary = find_binary()
    if binary is None:
        return False, missing_reason()
    return True, binary


def runtime_path(server_dir: Path, filename: str) -> str:
    """Where the server writes a runtime file (pid file, sqlite db): its state dir."""
    return str(server_dir / filename)


def start(config_path: Path, log_path: Path, *, name: str = "", image: str | None = None, argv_prefix: Sequence[str] = ()) -> dict:
    """Start ``[*argv_prefix, turnserver, -c, config_path]`` detached; return the state fields ``{"pid"}``.

    ``argv_prefix`` runs turnserver through another program that execs it
    in place, e.g. ``("ip", "netns", "exec", NS)`` for a server inside a
    network namespace: the recorded PID is then turnserver's own. The
    process gets its own session (process group) and writes its log to
    ``log_path``. Raises :class:`BackendUnavailable` when the binary is
    missing or the kernel cannot run it.
    """
    binary = find_binary()
    if binary is None:
        raise BackendUnavailable(f"native backend: {missing_reason()}", hint=f"apt-get install coturn, fix {ENV_BINARY}, or use --backend docker")
    with open(log_path, "ab", buffering=0) as log:
        try:
            proc = subprocess.Popen(
                [*argv_prefix, binary, "-c", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:  # not a program this kernel runs (exec format error, ...)
            raise BackendUnavailable(f"native backend: cannot run {binary}: {exc.strerror or exc}",
                                     hint=f"{ENV_BINARY} (or PATH) must name coturn's turnserver") from None
    # the PID with its start time names this process for good: a recycled PID has another start time,
    # and /proc/PID/cmdline is empty while a process execs (ip netns exec -> turnserver) or exits
    return {"pid": proc.pid, "pid_start": process_start_time(proc.pid)}


_PROC_NET = {"udp": ("udp", "udp6"), "tcp": ("tcp", "tcp6")}
_TCP_LISTEN = "0A"


def _decode_address(hex_addr: str) -> tuple[str, int]:
    """``/proc/net/*`` local address ("0100007F:0D96") -> ("127.0.0.1", 3478).

    The address is printed as 32-bit words in host byte order.
    """
    import ipaddress

    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw)), int(port, 16)


def listeners(pid: int, families: tuple[int, ...] = (4, 6)) -> set[tuple[str, str, int]]:
    """``("udp"|"tcp", ip, port)`` of every bound UDP and listening TCP socket in the network namespace of ``pid``.

    Reads ``/proc/PID/net/{udp,udp6,tcp,tcp6}``, which show the namespace the
    process is in, so it works for a server behind ``ip netns exec`` without
    entering the namespace. ``families``: read only these address families'
    tables (the kernel builds each on every read). Empty when the process is gone.
    """
    out = set()
    for kind, (v4, v6) in _PROC_NET.items():
        for fname in (*((v4,) if 4 in families else ()), *((v6,) if 6 in families else ())):
            try:
                lines = Path(f"/proc/{pid}/net/{fname}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                parts = line.split()
                if len(parts) > 3 and (kind == "udp" or parts[3] == _TCP_LISTEN):
                    try:
                        out.add((kind, *_decode_address(parts[1])))
                    except ValueError:
                        continue
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _find_by_config(config_path: str | None) -> int | None:
    """The PID of a turnserver running ``-c config_path`` (a state written before its PID was known)."""
    if not config_path:
        return None
    want = f"\0-c\0{config_path}\0".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if want in cmdline + b"\0":  # natkit's config paths are unique to one server
                return int(entry)
    return None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def is_running(state: dict) -> bool:
    """True when the recorded process is alive: the same PID and start time (``pid_start``), not a zombie.

    A state without ``pid_start`` (written by an older natkit) falls back to
    "its command line names natkit's config".
    """
    pid = state.get("pid")
    if not pid:
        return False
    _reap(pid)
    if _is_zombie(pid):
        return False
    if state.get("pid_start") is not None:
        return process_start_time(pid) == state["pid_start"]
    return str(state.get("config_path", "")) in _cmdline(pid)


def _exited(pid: int) -> bool:
    """True once ``pid`` has exited: reaped when it is our child, else gone or a
    zombie (an exited process has closed its sockets). ``/proc/PID/cmdline``
    empties while a process is still exiting, so it is no evidence."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid  # else our child, still running
    except ChildProcessError:
        return _is_zombie(pid)  # not our child: gone, or exited and waiting for its parent


def wait_exited(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to exit (see :func:`_exited`).

    Polls after 1 ms, doubling to every 10 ms: coturn is usually gone within
    a few milliseconds of SIGTERM, and every teardown waits for it.
    """
    end = time.monotonic() + timeout
    delay = 0.001
    while not _exited(pid):
        if time.monotonic() >= end:
            return False
        time.sleep(delay)
        delay = min(0.01, delay * 2)
    return True


def stop(state: dict, timeout: float = 5.0) -> None:
    """SIGTERM the server's process group, SIGKILL after ``timeout`` seconds.

    Returns once the process has exited (and, when it is this process's child,
    has been reaped), so its ports are closed.
    """
    pid = state.get("pid") or _find_by_config(state.get("config_path"))
    if not pid or not is_running(dict(state, pid=pid)):
        if pid:
            _reap(pid)
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            wait_exited(pid, timeout)
            return
        except PermissionError:
            os.kill(pid, sig)
        if wait_exited(pid, timeout):
            return


def logs(state: dict, tail: int | None = None) -> list[str]:
    """The server's log lines (the last ``tail`` when given)."""
    path = state.get("log_path")
    try:
        lines = Path(path).read_text(errors="replace").splitlines() if path else []
    except OSError:
        return []
    return lines[-tail:] if tail else lines
