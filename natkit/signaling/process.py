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
import time

from ..errors import ServerStartFailed

_URL_RE = re.compile(r"WebSocket (wss?://\S+)")


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

    def start(self) -> "SignalProcess":
        env = {**os.environ, **(self.env or {})}
        self.proc = self.popen(natkit_command(*self.args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=env)
        found = threading.Event()

        def reader() -> None:
            for line in self.proc.stderr:
                self.stderr_lines.append(line.rstrip("\n"))
                m = _URL_RE.search(line)
                if m and not found.is_set():
                    self.ws_url = m.group(1)
                    self.url = self.ws_url[: -len("ws")].replace("ws", "http", 1)
                    found.set()

        threading.Thread(target=reader, daemon=True).start()
        deadline = time.monotonic() + self.ready_timeout
        while not found.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServerStartFailed("natkit signal serve did not start", step="signal serve", details=self.stderr_lines[-20:])
        return self

    def stop(self) -> None:
        """Stop the server (idempotent): SIGINT, then SIGKILL after 5 s."""
        if self.proc is not None:
            _stop(self.proc, 5.0)

    def __enter__(self) -> "SignalProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class PeerProcess:
    """A ``natkit peer ... --json`` child process; :meth:`result` waits and parses its report.

    ``args`` are the ``natkit peer`` options (``--json`` is added); ``popen`` as for :class:`SignalProcess`.
    """

    def __init__(self, *args: str, env: dict | None = None, stdin: int | None = subprocess.DEVNULL, popen=None) -> None:
        self.args = ["peer", *args, "--json"]
        self.env = env
        self.stdin = stdin
        self.popen = popen or subprocess.Popen
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PeerProcess":
        env = {**os.environ, **(self.env or {})}
        self.proc = self.popen(natkit_command(*self.args), stdin=self.stdin, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
        return self

    def result(self, timeout: float) -> tuple[int, dict | None, str]:
        """``(exit code, JSON report or None, stderr)``; the process is killed after ``timeout`` seconds."""
        import json

        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            out, err = self.proc.communicate()
            err += f"\n[killed after {timeout:g}s]"
        try:
            doc = json.loads(out) if out.strip() else None
        except ValueError:
            doc = None
        return self.proc.returncode, doc, err

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, 5.0)

    def __enter__(self) -> "PeerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_pair(a: PeerProcess, b: PeerProcess, *, stagger: float = 0.3, timeout: float = 60.0):
    """Start ``a`` (it joins first and answers), then ``b`` after ``stagger`` seconds;
    return both :meth:`PeerProcess.result` tuples. Both processes are stopped whatever happens."""
    import time

    try:
        a.start()
        time.sleep(stagger)  # B first would only swap the roles
        b.start()
        return a.result(timeout), b.result(timeout)
    finally:
        a.stop()
        b.stop()
