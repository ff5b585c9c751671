"""TURN servers that are not coturn, for natkit's tests.

``pionturn/main.go`` is natkit's own small Go main over pion/turn v2, built
offline from Debian's ``golang-github-pion-turn.v2-dev`` (GOPATH mode over
``/usr/share/gocode``, no module download) with ``golang-go``. The
:func:`pion_binary` fixture builds it once per test session into pytest's
cache directory; :class:`PionTurn` runs one server (optionally inside a
network namespace) and stops it.

Without Go or the pion sources the fixture skips, unless
``NATKIT_REQUIRE_PION=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import os
import secrets as pysecrets
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Self

import pytest

HERE = Path(__file__).resolve().parent
PION_SOURCE = HERE / "pionturn"
GOCODE = Path("/usr/share/gocode")
PION_PACKAGE = GOCODE / "src/github.com/pion/turn/v2"


def _require_pion(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("NATKIT_REQUIRE_PION") == "1":
        pytest.fail(f"{reason} (and NATKIT_REQUIRE_PION=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


def build_pion(cache: Path) -> Path:
    """Build ``pionturn`` into ``cache`` (incremental: Go's build cache lives there too).

    Raises ``RuntimeError`` with the compiler output when the build fails.
    """
    go = shutil.which("go")
    _require_pion(go is not None, "golang-go is not installed (apt install golang-go)")
    _require_pion(PION_PACKAGE.is_dir(), "pion/turn v2 sources missing (apt install golang-github-pion-turn.v2-dev)")
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / "pionturn"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cache),
        "GO111MODULE": "off",  # GOPATH mode: Debian's /usr/share/gocode, nothing downloaded
        "GOPATH": f"{cache / 'gopath'}:{GOCODE}",
        "GOCACHE": str(cache / "go-build"),
        "GOFLAGS": "",
        "GOPROXY": "off",
        "CGO_ENABLED": "0",
    }
    r = subprocess.run([go, "build", "-o", str(out), "."], cwd=PION_SOURCE, env=env, capture_output=True, text=True, timeout=300, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"building pionturn failed:\n{r.stdout}{r.stderr}")
    return out


_BUILT: dict[str, Path] = {}


def pion_binary(config: pytest.Config) -> Path:
    """Path of the built ``pionturn`` (built once per test session into pytest's cache directory)."""
    if getattr(config, "cache", None) is not None:
        cache = Path(config.cache.mkdir("natkit-pionturn"))
    else:  # -p no:cacheprovider
        import tempfile

        cache = Path(tempfile.gettempdir()) / f"natkit-pionturn-{os.getuid()}"
    if str(cache) not in _BUILT:
        _BUILT[str(cache)] = build_pion(cache)
    return _BUILT[str(cache)]


class PionTurn:
    """One running ``pionturn``: ``with PionTurn(binary, "203.0.113.40", ns=NS, secret=S, knobs=[...]) as srv``.

    ``host``/``port``: its UDP (and with ``tcp`` TCP) address; ``uri``:
    ``turn:host:port``. ``secret`` goes to a 0600 file, ``users`` (user ->
    password) to another; ``tls`` ``(cert file, key file)`` adds TURN over
    TLS on ``tls_port`` (``turns_uri``); ``args`` are further pionturn flags
    (``-deny``, ``-unsigned-channelbind``, ``-tls-min 1.2``, ...). Stopped
    (SIGTERM, then SIGKILL) on exit; startup failures raise ``RuntimeError``
    with the server's stderr.
    """

    def __init__(self, binary: Path, host: str, port: int = 3478, *, ns: str | None = None, secret: str | None = None,
                 users: dict[str, str] | None = None, args: list[str] | tuple[str, ...] = (), tcp: bool = False,
                 tls: tuple[str, str] | None = None, tls_port: int = 5349, workdir: Path | None = None) -> None:
        self.binary, self.host, self.port, self.ns = binary, host, port, ns
        self.secret, self.users, self.args, self.tcp = secret, dict(users or {}), list(args), tcp
        self.tls, self.tls_port = tls, tls_port
        self.workdir = Path(workdir or binary.parent) / f"run-{pysecrets.token_hex(4)}"
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"turn:{self.host}:{self.port}"

    @property
    def turns_uri(self) -> str:
        return f"turns:{self.host}:{self.tls_port}"

    def _write(self, name: str, text: str) -> str:
        path = self.workdir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return str(path)

    def __enter__(self) -> Self:
        self.workdir.mkdir(parents=True)
        argv = [str(self.binary), "-listen", f"{self.host}:{self.port}"]
        if self.secret is not None:
            argv += ["-secret-file", self._write("secret", self.secret)]
        if self.users:
            argv += ["-users-file", self._write("users", "".join(f"{u}:{p}\n" for u, p in self.users.items()))]
        if self.tcp:
            argv.append("-tcp")
        if self.tls:
            argv += ["-tls-listen", f"{self.host}:{self.tls_port}", "-tls-cert", self.tls[0], "-tls-key", self.tls[1]]
        argv += self.args
        if self.ns:
            argv = ["ip", "netns", "exec", self.ns, *argv]
        self.stderr = open(self.workdir / "stderr.log", "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready(10.0)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.05)
            if ready:
                line = self.proc.stdout.readline().decode(errors="replace")
                if line.startswith("ready "):
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"pionturn exited ({self.proc.returncode}): {self.log()}")
        raise RuntimeError(f"pionturn did not start within {timeout:g} s: {self.log()}")

    def log(self) -> str:
        try:
            return (self.workdir / "stderr.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if getattr(self, "stderr", None) is not None:
            self.stderr.close()

    def __exit__(self, *exc) -> None:
        self.stop()
