"""``natkit check``: the main job, probe + relay-check against one TURN server.

Without a server, an embedded coturn is started on loopback (fresh random
secret, free port, backend auto) and stopped afterwards, whatever happens.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import Failure, NatkitError, ServerUnreachable, StunTimeout, UsageError, exit_code_for

if TYPE_CHECKING:
    from .probe import ProbeReport
    from .relay import RelayReport

SCHEMA = "natkit.check/2"


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """Result of :func:`check` (JSON schema ``natkit.check/2``): where the server came from, the probe
    and one relay check per TURN URI.

    ``failures`` has every failure of every URI (each with its ``server``):
    failed STUN Bindings, errors that stopped a relay check (unreachable, 401,
    486, ...) and failed relay assertions. ``exit_code`` is the most severe
    failure's code (:func:`natkit.errors.exit_code_for`): a wrong secret gives
    5 and a dead server 4 however many URIs were checked.
    """

    schema: str
    ok: bool
    exit_code: int
    embedded: bool  # natkit started (and stopped) the server itself
    backend: str | None  # docker or native for an embedded server
    server_ready_ms: float | None  # embedded server: start -> first STUN answer
    turn_uris: tuple[str, ...]
    probe: ProbeReport
    relay: tuple[RelayReport, ...]  # one per TURN URI whose check ran to the end
    failures: tuple[Failure, ...]
    duration_ms: float


_SILENT = ("timeout", "unreachable")  # probe error kinds that mean "nothing answers on that port"


def _is_plain_udp(uri: str) -> bool:
    from .uri import parse_turn_uri

    u = parse_turn_uri(uri)
    return u.transport == "udp" and not u.secure


def _stun_from_turn(uri: str) -> str:
    from .uri import parse_turn_uri

    u = parse_turn_uri(uri)
    host = f"[{u.host}]" if ":" in u.host else u.host
    return f"{'stuns' if u.secure else 'stun'}:{host}:{u.port}"


def _credentials(secret: str | None, username: str | None, password: str | None) -> Callable[[int], tuple[str, str]]:
    """``(username, password)`` for the n-th URI: minted from ``secret`` (one user part per URI: each leg's
    allocations count against its own user-quota, and coturn frees the previous leg's only after its
    Refresh(0) arrives), else the long-term pair. :class:`UsageError` without either."""
    from .credentials import mint

    if secret:
        rest = secret

        def minted(n: int) -> tuple[str, str]:
            cred = mint(rest, f"natkit-check-{n}", 600)
            return cred.username, cred.password

        return minted
    if username and password:
        pair = (username, password)
        return lambda _n: pair
    raise UsageError("checking an existing server needs --secret or --user/--password")


def check(
    turn: list[str] | None = None,
    *,
    secret: str | None = None,
    username: str | None = None,
    password: str | None = None,
    backend: str = "auto",
    image: str | None = None,
    timeout: float = 10.0,
    messages: int = 20,
    payload_bytes: int = 1_000_000,
    verify_tls: bool = True,
    cafile: str | None = None,
    on_step: Callable[[str], None] = lambda _: None,
) -> CheckReport:
    """Probe a TURN server with STUN, then prove it relays (see :func:`natkit.relay.relay_check`).

    ``turn``: TURN URIs to check; empty: start an embedded coturn on 127.0.0.1
    and check it over UDP and TCP. Credentials: ``secret`` (REST, minted here)
    or ``username``/``password``. ``on_step`` receives progress lines.

    Returns a :class:`CheckReport`: what went wrong with a server (unreachable,
    credentials refused, no relay) is in its ``failures`` and ``exit_code``.
    Raises :class:`UsageError` / :class:`InvalidURI` for bad input and, for
    the embedded server, :class:`BackendUnavailable` / :class:`ServerStartFailed`.
    """
    from .probe import probe
    from .relay import relay_check

    started = time.monotonic()
    server = None
    ready_ms = None
    backend_used = None
    if turn:
        credentials = _credentials(secret, username, password)
        uris = list(turn)
    else:
        from .coturn.profiles import build
        from .coturn.server import CoturnServer, free_port
        from .credentials import new_secret

        secret = new_secret()
        credentials = _credentials(secret, None, None)
        port = free_port("127.0.0.1")
        # the recommended hardened profile; only the loopback relay address is made relayable
        config = build("recommended", secrets=(secret,), listening_ips=("127.0.0.1",), port=port, realm="natkit.check",
                       allowed_peers=("127.0.0.1",), allow_loopback_peers=True).config
        # ephemeral: a SIGKILLed check leaves an orphan that the next check (or turn down --all) reaps
        server = CoturnServer(config, backend=backend, image=image, name=f"check-{port}", ephemeral=True)
        on_step(f"starting an embedded coturn on 127.0.0.1:{port} (backend {backend})")
    try:
        if server is not None:
            info = server.start()
            backend_used = info.backend
            ready_ms = server.ready_ms
            uris = list(info.uris)
            on_step(f"coturn ({info.backend}) answered STUN after {ready_ms:.0f} ms")
        stun_targets = list(dict.fromkeys(_stun_from_turn(u) for u in uris))
        on_step("STUN Binding: " + ", ".join(stun_targets))
        probe_report = probe(stun_targets, timeout=min(3.0, timeout), verify_tls=verify_tls, cafile=cafile)
        failures = list(probe_report.failures)
        silent = {r.uri: (r.error_kind, r.error) for r in probe_report.results if not r.ok and r.error_kind in _SILENT}
        relays = []
        for n, uri in enumerate(uris, 1):
            if _is_plain_udp(uri) and _stun_from_turn(uri) in silent:
                # the server did not answer a Binding on this very port: relay-check would only wait out --timeout again
                if len(uris) == 1:
                    kind, error = silent[_stun_from_turn(uri)]
                    raise (StunTimeout if kind == "timeout" else ServerUnreachable)(f"{error}; relay check skipped", step="binding")
                failures.append(Failure(silent[_stun_from_turn(uri)][0], "binding",
                                        "relay check skipped: the STUN Binding to this port was not answered", uri))
                continue
            user, pw = credentials(n)
            on_step(f"relay-only ICE through {uri}")
            try:
                report = relay_check(uri, username=user, password=pw, messages=messages, payload_bytes=payload_bytes,
                                     timeout=timeout, verify_tls=verify_tls, cafile=cafile)
            except NatkitError as exc:  # this URI's verdict; the others are still checked
                failures.append(Failure.from_error(exc, server=uri))
                continue
            relays.append(report)
            failures += [dataclasses.replace(f, server=uri) for f in report.failures]
    finally:
        if server is not None:
            on_step("stopping the embedded coturn")
            server.stop()
    return CheckReport(
        schema=SCHEMA, ok=not failures and bool(relays), exit_code=exit_code_for(failures),
        embedded=server is not None, backend=backend_used,
        server_ready_ms=ready_ms, turn_uris=tuple(uris), probe=probe_report, relay=tuple(relays),
        failures=tuple(failures), duration_ms=(time.monotonic() - started) * 1000.0,
    )
