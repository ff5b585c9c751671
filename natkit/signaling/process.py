"""``natkit signal serve`` and ``natkit peer`` as child processes (tests, benchmarks, labs).

Both are context managers that stop what they started on exit, on error and
on Ctrl-C: SIGINT first (natkit's clean path), SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from typing import Self

from ..errors import ServerStartFailed

_URL_RE = re.compile(r"WebSocket (wss?://\S+)")
_JOINED_RE = re.compile(r"joined room '.*' as \S+;")  # natkit peer's event once the server has it in the room


def natkit_command(*args: str) -> list[str]:
    """The command line running natkit's CLI with this interpreter: ``[python, -m, natkit.cli.app, *args]``."""
    return [sys.executable, "-m", "natkit.cli.app", *args]


def _stop(proc: subprocess.Popen, grace: float) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except ProcessLookupError:
        pass


class SignalProcess:
    """A ``natkit signal serve --port 0`` child process; ``ws_url`` and ``url`` once started.

    ``args`` are extra ``signal serve`` options; ``popen`` replaces
    :class:`subprocess.Popen` (e.g. ``lambda argv, **kw: lab.popen("server", argv, **kw)``
    to run it inside a lab namespace). Raises
    :class:`ServerStartFailed` (with its stderr) when no URL is printed
    within ``ready_timeout`` seconds.
    """

    def __init__(self, *args: str, host: str = "127.0.0.1", ready_timeout: float = 15.0, env: dict | None = None,
                 popen=None) -> None:
        self.args = ["signal", "serve", "--host", host, "--port", "0", *args]
        self.ready_timeout = ready_timeout
        self.env = env
        self.popen = popen or subprocess.Popen
        self.proc: subprocess.Popen | None = None
        self.ws_url: str | None = None
        self.url: str | None = None
        self.stderr_lines: list[str] = []

    def start(self) -> Self:
        env = {**os.environ, **(self.env or {})}
        proc = self.proc = self.popen(natkit_command(*self.args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, env=env)
        found = threading.Event()  # the URL line came, or the process ended its stderr

        def reader() -> None:
            for line in proc.stderr or ():
                self.stderr_lines.append(line.rstrip("\n"))
                m = _URL_RE.search(line)
                if m and not found.is_set():
                    self.ws_url = m.group(1)
                    self.url = self.ws_url[: -len("ws")].replace("ws", "http", 1)
                    found.set()
            found.set()

        threading.Thread(target=reader, daemon=True).start()
        if not found.wait(self.ready_timeout) or self.ws_url is None:
            self.stop()
            raise ServerStartFailed("natkit signal serve did not start", step="signal serve", details=self.stderr_lines[-20:])
        return self

    def stop(self) -> None:
        """Stop the server (idempotent): SIGINT, then SIGKILL after 5 s."""
        if self.proc is not None:
            _stop(self.proc, 5.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class PeerProcess:
    """A ``natkit peer ... --json`` child process; :meth:`result` waits and parses its report.

    ``args`` are the ``natkit peer`` options (``--json`` is added); ``popen`` as for :class:`SignalProcess`.
    Its stderr is read as it comes (``stderr_lines``): :meth:`wait_joined`
    waits for the peer's "joined room" event, so the child's progress lines
    are always on (``NATKIT_QUIET`` is cleared for it).
    """

    def __init__(self, *args: str, env: dict | None = None, stdin: int | None = subprocess.DEVNULL, popen=None,
                 json: bool = True) -> None:
        self.args = ["peer", *args, *(["--json"] if json else [])]
        self.env = env
        self.stdin = stdin
        self.popen = popen or subprocess.Popen
        self.proc: subprocess.Popen | None = None
        self.stderr_lines: list[str] = []
        self.stdout = ""
        self.joined = threading.Event()  # the server acknowledged our join (the "joined room" event)
        self.joined_line: str | None = None
        self._readers: list[threading.Thread] = []

    def start(self) -> Self:
        env = {**os.environ, **(self.env or {}), "NATKIT_QUIET": ""}
        proc = self.proc = self.popen(natkit_command(*self.args), stdin=self.stdin, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env)
        self._readers = [threading.Thread(target=self._read_stderr, args=(proc,), daemon=True),
                         threading.Thread(target=self._read_stdout, args=(proc,), daemon=True)]
        for t in self._readers:
            t.start()
        return self

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr or ():
            line = line.rstrip("\n")
            self.stderr_lines.append(line)
            if not self.joined.is_set() and _JOINED_RE.search(line):
                self.joined_line = line
                self.joined.set()
        self.joined.set()  # the process is gone: nobody waits for a join that cannot come

    def _read_stdout(self, proc: subprocess.Popen) -> None:
        self.stdout = proc.stdout.read() if proc.stdout is not None else ""

    def wait_joined(self, timeout: float) -> bool:
        """Wait until the peer is in its room (True), or it exited / ``timeout`` seconds passed (False)."""
        return self.joined.wait(timeout) and self.joined_line is not None

    def result(self, timeout: float) -> tuple[int, dict | None, str]:
        """``(exit code, JSON report or None, stderr)``; the process is killed after ``timeout`` seconds."""
        import json

        if self.proc is None:
            raise RuntimeError("PeerProcess.result() before start()")
        killed = ""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            killed = f"\n[killed after {timeout:g}s]"
        for t in self._readers:
            t.join(10)
        try:
            doc = json.loads(self.stdout) if self.stdout.strip() else None
        except ValueError:
            doc = None
        return self.proc.returncode, doc, "\n".join(self.stderr_lines) + killed

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, 5.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_pair(a: PeerProcess, b: PeerProcess, *, timeout: float = 60.0, join_timeout: float = 30.0):
    """Start ``a``, wait until it is in the room, then start ``b``: ``a`` answers, ``b`` offers
    (the peer that joins second offers). Returns both :meth:`PeerProcess.result` tuples;
    both processes are stopped whatever happens. When ``a`` exits or does not join within
    ``join_timeout`` seconds, ``b`` is not started and its result is ``(None, None, reason)``.
    """
    try:
        a.start()
        if not a.wait_joined(join_timeout):
            ra = a.result(timeout)
            return ra, (None, None, f"not started: the first peer did not join its room (exit {ra[0]})")
        b.start()
        return a.result(timeout), b.result(timeout)
    finally:
        a.stop()
        b.stop()
