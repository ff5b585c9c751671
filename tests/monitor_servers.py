"""Servers for the natkit monitor tests: coturn variants on loopback and a real Prometheus.

* :func:`coturn` starts a native coturn on 127.0.0.1 (REST auth, loopback relaying allowed), optionally with TLS
  (certificate made here with ``cryptography``, valid for ``cert_days``) and an ``external_ip``.
* :class:`Prometheus` runs Debian's ``prometheus`` on loopback with a temporary config and storage directory,
  and queries its HTTP API.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Self

from natkit.pytest_plugin import _require, require_coturn


def require_prometheus() -> None:
    """Debian's prometheus and promtool; with NATKIT_REQUIRE_PROMETHEUS=1 a missing one fails instead of skipping."""
    missing = [b for b in ("prometheus", "promtool") if shutil.which(b) is None]
    _require("NATKIT_REQUIRE_PROMETHEUS", not missing, f"{', '.join(missing)} not installed (apt-get install prometheus)")


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def certificate(days: float, names=("127.0.0.1", "localhost")) -> tuple[bytes, bytes]:
    """A self-signed ECDSA certificate valid from an hour ago for ``days`` days (fractional days allowed)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "natkit monitor test")])
    now = datetime.datetime.now(datetime.UTC)
    sans = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


class Coturn:
    """A natkit-managed native coturn for one test; ``restart()`` brings it back on the same ports."""

    def __init__(self, state_dir: Path, *, tls_days: float | None = None, external_ip: str | None = None, name: str = "mon",
                 **overrides) -> None:
        """``overrides``: CoturnConfig fields replacing the defaults here (``user_quota=1``, ``allow_loopback_peers=False``)."""
        import dataclasses

        from natkit.coturn.config import CoturnConfig
        from natkit.coturn.server import free_port
        from natkit.credentials import new_secret

        self.state_dir = state_dir
        self.secret = new_secret()
        self.port = free_port()
        self.tls_port = free_port() if tls_days is not None else None
        self.files: dict[str, bytes] = {}
        self.ca: str | None = None
        if tls_days is not None:
            cert, key = certificate(tls_days)
            self.files = {"cert.pem": cert, "key.pem": key}
            ca = state_dir / f"ca-{self.port}.pem"
            ca.write_bytes(cert)
            self.ca = str(ca)
        self.config = CoturnConfig(
            listening_port=self.port, tls_listening_port=self.tls_port, cert="cert.pem" if tls_days is not None else None,
            pkey="key.pem" if tls_days is not None else None, static_auth_secrets=(self.secret,), allow_loopback_peers=True,
            allowed_peer_ranges=("127.0.0.1",), realm="natkit.monitor.test", external_ip=external_ip)
        self.config = dataclasses.replace(self.config, **overrides)
        self.name = f"{name}-{self.port}"
        self.server = None

    @property
    def udp(self) -> str:
        return f"turn:127.0.0.1:{self.port}"

    @property
    def tcp(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=tcp"

    @property
    def tls(self) -> str:
        return f"turns:127.0.0.1:{self.tls_port}"

    def start(self) -> Coturn:
        from natkit.coturn.server import CoturnServer

        require_coturn()
        with _state(self.state_dir):
            server = CoturnServer(self.config, backend="native", name=self.name, extra_files=self.files)
            server.start()
        self.server = server
        return self

    def stop(self) -> None:
        if self.server is not None:
            with _state(self.state_dir):
                self.server.stop()
            self.server = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def _state(path: Path):
    old = os.environ.get("NATKIT_STATE_DIR")
    os.environ["NATKIT_STATE_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("NATKIT_STATE_DIR", None)
        else:
            os.environ["NATKIT_STATE_DIR"] = old


class Prometheus:
    """Debian's prometheus on 127.0.0.1: scrapes ``jobs`` ({name: (metrics_path, [host:port], params)}) every ``scrape``."""

    def __init__(self, jobs: dict, *, scrape: str = "500ms", rules: str | None = None) -> None:
        require_prometheus()
        self.dir = Path(tempfile.mkdtemp(prefix="natkit-prometheus-"))
        self.port = free_tcp_port()
        lines = ["global:", f"  scrape_interval: {scrape}", f"  evaluation_interval: {scrape}", f"  scrape_timeout: {scrape}"]
        if rules:
            lines += ["rule_files:", f"  - {rules}"]
        lines.append("scrape_configs:")
        for name, (path, targets, params) in jobs.items():
            lines += [f"  - job_name: {name}", f"    metrics_path: {path}", "    static_configs:",
                      f"      - targets: {json.dumps(targets)}"]
            if params:
                lines.append("    params:")
                lines += [f"      {k}: {json.dumps(v)}" for k, v in params.items()]
        (self.dir / "prometheus.yml").write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Prometheus:
        self.log = open(self.dir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("prometheus exited: " + (self.dir / "prometheus.log").read_text()[-2000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("prometheus did not become ready in 30 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.load(r)
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> dict[tuple, float]:
        """An instant query: {(sorted label items except __name__ and job/instance): value}."""
        out = {}
        for item in self.api("query", query=expr)["result"]:
            labels = tuple(sorted((k, v) for k, v in item["metric"].items() if k not in ("__name__", "job", "instance")))
            out[labels] = float(item["value"][1])
        return out

    def wait_for(self, expr: str, predicate, timeout: float) -> tuple[float, dict]:
        """Poll ``expr`` until ``predicate(result)``; return (seconds waited, result). Raises AssertionError on timeout."""
        started = time.monotonic()
        result: dict = {}
        while time.monotonic() - started < timeout:
            result = self.query(expr)
            if predicate(result):
                return time.monotonic() - started, result
            time.sleep(0.1)
        raise AssertionError(f"{expr}: {result} after {timeout} s")
