"""``natkit monitor`` configuration: targets, credentials, interval, checks (TOML, pure but for secret reading).

A config file (``tomllib``; every key optional but ``[[targets]]`` or
``--target``)::

    interval = 15            # seconds between probe rounds of one target (>= 1)
    timeout = 2.0            # seconds one probe may take in all (every step shares it)
    listen = "127.0.0.1:9479"
    echoes = 5               # relay echo datagrams per probe
    max_echo_loss = 0.2      # share of echoes that may go unanswered and the relay still passes (0-1)
    probe_concurrency = 8    # /probe requests served at once; more get 503 (each holds two allocations)
    healthz_cache = 2.0      # seconds a /healthz verdict is reused

    [credentials.fleet]      # REST (coturn use-auth-secret) ...
    secret_env = "TURN_SECRET"            # or secret_file = "/run/secrets/turn"
    user = "natkit-monitor"               # the REST user part
    # ... or long-term: username = "u", password_env = "P" or password_file = "..."

    [[targets]]
    name = "edge-1"                       # the `target` label (default: the URI)
    uris = ["turn:203.0.113.10:3478", "turns:turn.example.org:5349"]
    credentials = "fleet"                 # default: the only [credentials.*] table
    expect_relayed_ip = "203.0.113.10"    # what XOR-RELAYED-ADDRESS must say (external-ip)
    checks = ["binding", "allocate", "relay", "tls"]   # default: all that apply
    cafile = "/etc/ssl/certs/ca-certificates.crt"      # turns: trust (default: the system's)
    server_name = "turn.example.org"      # TLS SNI / hostname check (default: the URI host)

    [healthz]
    target = "edge-1"                     # /healthz checks this target (default: the first)

    [modules.default]                     # for /probe?target=...&module=default
    credentials = "fleet"
    allow = ["*.example.org", "203.0.113.0/24"]   # targets /probe may reach (default: configured hosts only)

Secrets are never taken from argv or the file itself: only from the
environment variable or file named. They are read once at load and never
logged, rendered or put in a label. Raises :class:`~natkit.errors.UsageError`
for anything malformed, naming the key.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InvalidURI, UsageError
from ..uri import ServerURI, parse_turn_uri

CHECKS = ("binding", "allocate", "relay", "tls")
DEFAULT_INTERVAL = 15.0
DEFAULT_TIMEOUT = 2.0
DEFAULT_LISTEN = "127.0.0.1:9479"
DEFAULT_ECHOES = 5
# at most 1 of the default 5 echoes may go unanswered: one lost datagram is the network, two are the relay
DEFAULT_MAX_ECHO_LOSS = 0.2
DEFAULT_PROBE_CONCURRENCY = 8  # /probe requests in flight at once; each holds two allocations on the target
DEFAULT_HEALTHZ_CACHE = 2.0
MAX_TARGETS = 500  # label sets stay bounded: targets come from the config, never from traffic


@dataclasses.dataclass(frozen=True)
class CredentialSource:
    """Where a target's TURN credentials come from.

    ``kind`` "rest" (``secret``, minted per probe with user part ``user`` and
    lifetime ``ttl`` s), "long-term" (``username``/``password``) or "none".
    ``origin`` says where the secret was read ("env TURN_SECRET", "file
    /run/...") for messages; the secret itself is never in a repr.
    """

    name: str
    kind: str
    secret: str | None = dataclasses.field(default=None, repr=False)
    user: str = "natkit-monitor"
    ttl: int = 600
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    origin: str = ""

    def pair(self, *, now: float | None = None) -> tuple[str | None, str | None]:
        """``(username, password)`` for one probe (REST: minted now)."""
        if self.kind == "rest":
            from ..credentials import mint

            cred = mint(self.secret or "", self.user, self.ttl, now=now)
            return cred.username, cred.password
        if self.kind == "long-term":
            return self.username, self.password
        return None, None


NO_CREDENTIALS = CredentialSource("none", "none")


@dataclasses.dataclass(frozen=True)
class Target:
    """One probed (target, transport): the label pair of every metric.

    ``name`` is the ``target`` label; ``uri`` the parsed TURN URI; its
    ``transport`` label is "udp", "tcp" or "tls" (``turns:``).
    """

    name: str
    uri: ServerURI
    credentials: CredentialSource = NO_CREDENTIALS
    checks: tuple[str, ...] = CHECKS
    expect_relayed_ip: str | None = None
    cafile: str | None = None
    verify_tls: bool = True
    server_name: str | None = None

    @property
    def transport(self) -> str:
        return "tls" if self.uri.secure else self.uri.transport

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.transport)

    def wants(self, check: str) -> bool:
        if check == "tls":
            return "tls" in self.checks and self.uri.secure
        return check in self.checks


@dataclasses.dataclass(frozen=True)
class Module:
    """A /probe module (blackbox-exporter style): credentials, checks and which targets it may reach."""

    name: str
    credentials: CredentialSource = NO_CREDENTIALS
    checks: tuple[str, ...] = CHECKS
    allow: tuple[str, ...] = ()  # host globs or CIDRs; empty: the hosts of configured targets
    cafile: str | None = None
    verify_tls: bool = True
    expect_relayed_ip: str | None = None

    def allows(self, host: str, configured_hosts: frozenset[str]) -> bool:
        """Whether /probe may send this module's credentials to ``host``."""
        if not self.allow:
            return host in configured_hosts
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        for pattern in self.allow:
            if "/" in pattern and ip is not None:
                try:
                    if ip in ipaddress.ip_network(pattern, strict=False):
                        return True
                except ValueError:
                    continue
            elif fnmatch.fnmatchcase(host.lower(), pattern.lower()):
                return True
        return False


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """The whole monitor: ``targets`` (one per (name, transport)), schedule and endpoints.

    ``interval``/``timeout``/``healthz_cache`` in seconds; ``listen`` is
    ``host:port`` for the HTTP endpoints; ``echoes`` relay datagrams per probe,
    of which a share of at most ``max_echo_loss`` (0-1) may go unanswered for
    the relay check to pass; ``probe_concurrency`` /probe requests are served
    at once (more get 503).
    """

    targets: tuple[Target, ...]
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    listen: str = DEFAULT_LISTEN
    echoes: int = DEFAULT_ECHOES
    max_echo_loss: float = DEFAULT_MAX_ECHO_LOSS
    probe_concurrency: int = DEFAULT_PROBE_CONCURRENCY
    healthz_target: str | None = None
    healthz_cache: float = DEFAULT_HEALTHZ_CACHE
    modules: Mapping[str, Module] = dataclasses.field(default_factory=dict)

    @property
    def listen_address(self) -> tuple[str, int]:
        return split_listen(self.listen)

    def healthz_targets(self) -> tuple[Target, ...]:
        """The targets /healthz checks: every transport of the named target (default: the first target's)."""
        if not self.targets:
            return ()
        name = self.healthz_target or self.targets[0].name
        return tuple(t for t in self.targets if t.name == name)

    def configured_hosts(self) -> frozenset[str]:
        return frozenset(t.uri.host for t in self.targets)


def split_listen(text: str) -> tuple[str, int]:
    """``"host:port"`` / ``"[v6]:port"`` / ``":port"`` → ``(host, port)``. Raises :class:`UsageError`."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"listen address {text!r} is not host:port", hint="for example 127.0.0.1:9479")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


# ---------------------------------------------------------------------------
# parsing


def _number(table: Mapping[str, Any], key: str, default: float, *, low: float, high: float, where: str) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise UsageError(f"{where}{key} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _strings(value: Any, key: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f"{where}{key} must be a string or a list of strings")
    return tuple(value)


def _read_secret(table: Mapping[str, Any], stem: str, where: str, env: Mapping[str, str]) -> tuple[str | None, str]:
    """``<stem>_env`` or ``<stem>_file`` → (value, origin). A literal ``<stem>`` is refused.

    A ``secret_file`` gives its first secret line, a ``password_file`` its first non-blank line
    (:mod:`natkit.coturn.secrets`, as the ``--secret-file``/``--password-file`` options)."""
    if stem in table:
        raise UsageError(f"{where}{stem} must not be written into the config",
                         hint=f"use {stem}_env = \"VARIABLE\" or {stem}_file = \"/path\"")
    var, path = table.get(f"{stem}_env"), table.get(f"{stem}_file")
    if var is not None and path is not None:
        raise UsageError(f"{where}give {stem}_env or {stem}_file, not both")
    if var is not None:
        if not isinstance(var, str) or not var:
            raise UsageError(f"{where}{stem}_env must name an environment variable")
        value = env.get(var)
        if not value:
            raise UsageError(f"{where}environment variable {var} is empty or not set")
        return value, f"env {var}"
    if path is not None:
        if not isinstance(path, str) or not path:
            raise UsageError(f"{where}{stem}_file must be a path")
        from ..coturn.secrets import first_secret, read_password_file

        # the rule of every natkit secret file: the first secret line; a password's first non-blank line
        read = first_secret if stem == "secret" else read_password_file
        try:
            value = read(path, f"{stem}_file")
        except UsageError as exc:
            raise UsageError(f"{where}{exc.message}", hint=exc.hint) from None
        return value, f"file {path}"
    return None, ""


def parse_credentials(name: str, table: Mapping[str, Any], env: Mapping[str, str]) -> CredentialSource:
    """One ``[credentials.NAME]`` table. Raises :class:`UsageError`."""
    where = f"credentials.{name}: "
    known = {"secret_env", "secret_file", "secret", "user", "ttl", "username", "password", "password_env", "password_file"}
    unknown = set(table) - known
    if unknown:
        raise UsageError(f"{where}unknown key(s) {', '.join(sorted(unknown))}")
    secret, origin = _read_secret(table, "secret", where, env)
    password, p_origin = _read_secret(table, "password", where, env)
    username = table.get("username")
    if secret and (password or username):
        raise UsageError(f"{where}give a REST secret or username/password, not both")
    if secret:
        user = table.get("user", "natkit-monitor")
        if not isinstance(user, str) or ":" in user:
            raise UsageError(f"{where}user must be text without ':'")
        ttl = int(_number(table, "ttl", 600, low=60, high=86400 * 7, where=where))
        return CredentialSource(name, "rest", secret=secret, user=user, ttl=ttl, origin=origin)
    if password or username:
        if not (isinstance(username, str) and username and password):
            raise UsageError(f"{where}long-term credentials need username and password_env/password_file")
        return CredentialSource(name, "long-term", username=username, password=password, origin=p_origin)
    raise UsageError(f"{where}no secret_env/secret_file or username/password_env given")


def _checks(value: Any, where: str) -> tuple[str, ...]:
    checks = _strings(value, "checks", where)
    bad = [c for c in checks if c not in CHECKS]
    if bad:
        raise UsageError(f"{where}unknown check(s) {', '.join(bad)}", hint="checks are " + ", ".join(CHECKS))
    if "relay" in checks and "allocate" not in checks:
        checks = ("allocate", *checks)  # a relay check allocates
    return tuple(dict.fromkeys(checks))


def _ip(value: Any, key: str, where: str) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except (ValueError, TypeError):
        raise UsageError(f"{where}{key} must be an IP address, got {value!r}") from None


def _uri(text: str, where: str) -> ServerURI:
    try:
        return parse_turn_uri(text)
    except InvalidURI as exc:
        raise UsageError(f"{where}{exc.message}", hint=exc.hint) from None


def parse_targets(entries: Any, creds: Mapping[str, CredentialSource], defaults: Mapping[str, Any]) -> list[Target]:
    """``[[targets]]`` → one :class:`Target` per URI. Raises :class:`UsageError`."""
    if not isinstance(entries, list):
        raise UsageError("targets must be an array of tables ([[targets]])")
    out: list[Target] = []
    known = {"name", "uri", "uris", "credentials", "checks", "expect_relayed_ip", "cafile", "verify_tls", "server_name"}
    for n, entry in enumerate(entries, 1):
        where = f"targets[{n}]: "
        if not isinstance(entry, dict):
            raise UsageError(f"{where}must be a table")
        unknown = set(entry) - known
        if unknown:
            raise UsageError(f"{where}unknown key(s) {', '.join(sorted(unknown))}")
        uris = _strings(entry.get("uris", entry.get("uri", [])), "uris", where)
        if not uris:
            raise UsageError(f"{where}needs uri or uris")
        cred_name = entry.get("credentials")
        cred = _pick_credentials(cred_name, creds, where)
        checks = _checks(entry["checks"], where) if "checks" in entry else CHECKS
        for text in uris:
            uri = _uri(text, where)
            out.append(Target(
                name=str(entry.get("name") or uri), uri=uri, credentials=cred, checks=checks,
                expect_relayed_ip=_ip(entry.get("expect_relayed_ip"), "expect_relayed_ip", where),
                cafile=entry.get("cafile", defaults.get("cafile")), verify_tls=bool(entry.get("verify_tls", True)),
                server_name=entry.get("server_name")))
    return out


def _pick_credentials(name: Any, creds: Mapping[str, CredentialSource], where: str) -> CredentialSource:
    if name is None:
        if len(creds) == 1:
            return next(iter(creds.values()))
        if not creds:
            return NO_CREDENTIALS
        raise UsageError(f"{where}several [credentials.*] tables: name one with credentials = \"...\"")
    if name not in creds:
        raise UsageError(f"{where}no [credentials.{name}] table")
    return creds[name]


def check_unique(targets: list[Target]) -> None:
    seen: set[tuple[str, str]] = set()
    for t in targets:
        if t.key in seen:
            raise UsageError(f"target {t.name!r} has two {t.transport} URIs", hint="give each its own name")
        seen.add(t.key)
    if len(targets) > MAX_TARGETS:
        raise UsageError(f"{len(targets)} targets: at most {MAX_TARGETS} per monitor")


def parse_config(doc: Mapping[str, Any], *, env: Mapping[str, str] | None = None,
                 extra_targets: list[Target] | None = None) -> MonitorConfig:
    """A parsed TOML document (``tomllib.loads``) → :class:`MonitorConfig`. Raises :class:`UsageError`."""
    env = os.environ if env is None else env
    known = {"interval", "timeout", "listen", "echoes", "max_echo_loss", "probe_concurrency", "healthz", "healthz_cache", "credentials",
             "targets", "modules", "cafile"}
    unknown = set(doc) - known
    if unknown:
        raise UsageError(f"unknown key(s) {', '.join(sorted(unknown))}", hint="see docs/monitor.md")
    cred_tables = doc.get("credentials", {})
    if not isinstance(cred_tables, dict):
        raise UsageError("credentials must be tables ([credentials.NAME])")
    creds = {name: parse_credentials(name, t, env) for name, t in cred_tables.items()}
    targets = parse_targets(doc.get("targets", []), creds, doc) + list(extra_targets or [])
    check_unique(targets)
    healthz = doc.get("healthz", {})
    if not isinstance(healthz, dict):
        raise UsageError("healthz must be a table")
    hz_target = healthz.get("target")
    if hz_target is not None and hz_target not in {t.name for t in targets}:
        raise UsageError(f"healthz.target {hz_target!r} is not a configured target name")
    modules = {name: _module(name, m, creds) for name, m in (doc.get("modules") or {}).items()}
    listen = doc.get("listen", DEFAULT_LISTEN)
    split_listen(str(listen))
    return MonitorConfig(
        targets=tuple(targets),
        interval=_number(doc, "interval", DEFAULT_INTERVAL, low=1, high=86400, where=""),
        timeout=_number(doc, "timeout", DEFAULT_TIMEOUT, low=0.05, high=60, where=""),
        listen=str(listen),
        echoes=int(_number(doc, "echoes", DEFAULT_ECHOES, low=1, high=100, where="")),
        max_echo_loss=_number(doc, "max_echo_loss", DEFAULT_MAX_ECHO_LOSS, low=0, high=1, where=""),
        probe_concurrency=int(_number(doc, "probe_concurrency", DEFAULT_PROBE_CONCURRENCY, low=1, high=1000, where="")),
        healthz_target=hz_target,
        healthz_cache=_number(healthz, "cache", doc.get("healthz_cache", DEFAULT_HEALTHZ_CACHE), low=0, high=300, where="healthz."),
        modules=modules,
    )


def _module(name: str, table: Any, creds: Mapping[str, CredentialSource]) -> Module:
    where = f"modules.{name}: "
    if not isinstance(table, dict):
        raise UsageError(f"{where}must be a table")
    unknown = set(table) - {"credentials", "checks", "allow", "cafile", "verify_tls", "expect_relayed_ip"}
    if unknown:
        raise UsageError(f"{where}unknown key(s) {', '.join(sorted(unknown))}")
    allow = _strings(table.get("allow", []), "allow", where) if table.get("allow") else ()
    return Module(name=name, credentials=_pick_credentials(table.get("credentials"), creds, where),
                  checks=_checks(table["checks"], where) if "checks" in table else CHECKS, allow=allow,
                  cafile=table.get("cafile"), verify_tls=bool(table.get("verify_tls", True)),
                  expect_relayed_ip=_ip(table.get("expect_relayed_ip"), "expect_relayed_ip", where))


def load_config(path: str | os.PathLike | None, *, env: Mapping[str, str] | None = None,
                extra_targets: list[Target] | None = None, overrides: Mapping[str, Any] | None = None) -> MonitorConfig:
    """Read a TOML config file (None: only ``extra_targets``); ``overrides`` replace top-level keys.

    Raises :class:`UsageError` when the file cannot be read or parsed.
    """
    import tomllib

    doc: dict[str, Any] = {}
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise UsageError(f"cannot read the config {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{path} is not valid TOML: {exc}") from None
    for key, value in (overrides or {}).items():
        if value is not None:
            doc[key] = value
    config = parse_config(doc, env=env, extra_targets=extra_targets)
    if not config.targets:
        raise UsageError("no targets", hint="give --target URI or a config file with [[targets]]")
    return config


def cli_target(uri: str, credentials: CredentialSource, *, checks: tuple[str, ...] = CHECKS,
               expect_relayed_ip: str | None = None, cafile: str | None = None, verify_tls: bool = True) -> Target:
    """A target from ``--target URI`` (its label is the URI)."""
    parsed = _uri(uri, "--target: ")
    return Target(name=str(parsed), uri=parsed, credentials=credentials, checks=checks,
                  expect_relayed_ip=_ip(expect_relayed_ip, "--expect-relayed-ip", ""), cafile=cafile, verify_tls=verify_tls)
