"""TURN REST API credentials (time-limited), as coturn's ``use-auth-secret`` checks them.

Scheme (draft-uberti-behave-turn-rest-00 §2.2, coturn ``static-auth-secret``):
``username = "<unix expiry>:<user>"`` and
``password = base64(HMAC-SHA1(secret, username))``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
import time
from typing import Callable

from .errors import UsageError

DEFAULT_TTL = 86400  # seconds
DEFAULT_USER = "natkit"


@dataclasses.dataclass(frozen=True)
class RestCredential:
    """A time-limited TURN credential.

    ``expires_at`` is a unix time in seconds; ``ttl`` the lifetime in seconds
    it was minted with (negative for a deliberately expired one).
    """

    username: str
    password: str
    expires_at: int
    ttl: int

    def ice_server(self, urls: list[str]) -> dict:
        """The WebRTC ``RTCIceServer`` dictionary (``urls``, ``username``, ``credential``, ``ttl``)."""
        return {"urls": list(urls), "username": self.username, "credential": self.password, "ttl": self.ttl}


def new_secret(nbytes: int = 24) -> str:
    """A fresh random shared secret (URL-safe text, ``nbytes`` bytes of entropy)."""
    return secrets.token_urlsafe(nbytes)


def rest_password(secret: str, username: str) -> str:
    """``base64(HMAC-SHA1(secret, username))``, the coturn REST API password."""
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def mint(secret: str, user: str = DEFAULT_USER, ttl: int = DEFAULT_TTL, *, now: float | None = None) -> RestCredential:
    """Mint a credential valid for ``ttl`` seconds from ``now`` (unix seconds).

    A negative ``ttl`` gives an already expired credential (used by audits and
    tests). Raises :class:`UsageError` for an empty secret or a user containing ':'.
    """
    if not secret:
        raise UsageError("the shared secret is empty")
    if ":" in user:
        raise UsageError(f"user {user!r} must not contain ':' (it separates expiry and user)")
    if ttl == 0:
        raise UsageError("ttl must not be 0", hint="give a lifetime in seconds")
    if abs(int(ttl)) > MAX_TTL:
        raise UsageError(f"ttl {ttl} s is more than ten years", hint="give a lifetime in seconds, e.g. 86400 for a day")
    expires = int(now if now is not None else time.time()) + int(ttl)
    username = f"{expires}:{user}" if user else str(expires)
    return RestCredential(username=username, password=rest_password(secret, username), expires_at=expires, ttl=int(ttl))


# ---- which credentials a command uses (one rule for every command)

MAX_TTL = 10 * 365 * 86400  # seconds; longer lifetimes are a typo, not a credential


@dataclasses.dataclass(frozen=True)
class TurnCredentials:
    """Credentials resolved for some TURN URIs by :func:`resolve`.

    ``kind`` is ``"none"`` (nothing to authenticate with), ``"rest"`` (``secret`` is a REST shared secret; :meth:`pair`
    mints a fresh credential with the user part ``user``, ``""`` for a bare
    expiry) or ``"long-term"`` (``username``/``password`` as given).
    ``uris`` are the URIs they are for: as given, or the managed server's own.
    ``server`` is the natkit-managed server (``ServerInfo``) whose secret is
    used, None when the credentials came from the command line.
    """

    kind: str
    uris: tuple[str, ...] = ()
    secret: str | None = dataclasses.field(default=None, repr=False)
    user: str = DEFAULT_USER
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    server: object | None = dataclasses.field(default=None, repr=False)

    def pair(self, *, user: str | None = None, ttl: int = 600) -> tuple[str, str]:
        """``(username, password)`` for one use: minted now (REST, ``user`` overrides the user part) or the long-term pair."""
        if self.kind == "rest":
            cred = mint(self.secret or "", self.user if user is None else user, ttl)
            return cred.username, cred.password
        return self.username or "", self.password or ""


def _normal(uri: str) -> str | None:
    from .errors import InvalidURI
    from .uri import parse_turn_uri

    try:
        return str(parse_turn_uri(uri))
    except InvalidURI:
        return None


def _managed_servers() -> list:
    from .coturn.server import list_servers

    return list_servers()


def _managed_for(uris: tuple[str, ...], servers: list):
    """The one managed server whose own URIs include every URI in ``uris`` (None: no such server)."""
    wanted = {_normal(u) for u in uris}
    if None in wanted:
        return None
    owners = [s for s in servers if s.secret and wanted <= {_normal(u) for u in s.uris}]
    return owners[0] if len(owners) == 1 else None


def resolve(
    *,
    secret: str | None = None,
    user: str | None = None,
    password: str | None = None,
    uris: tuple[str, ...] | list[str] = (),
    name: str | None = None,
    use_managed: bool = True,
    required: bool = True,
    servers: Callable[[], list] | None = None,
) -> TurnCredentials:
    """Decide which credentials a command uses, the same way for every command.

    1. ``secret`` (``--secret``, ``--secret-file`` or ``NATKIT_TURN_SECRET``, picked by
       :func:`natkit.cli.options.turn_secret`): REST; ``user`` is the
       user part (None: ``natkit``; ``""``: a bare expiry as username).
    2. ``user`` and ``password``: a long-term credential.
    3. Neither: a natkit-managed coturn's secret (with ``use_managed``), and only
       (a) the server named by ``name``, for any ``uris`` (naming it is consent);
       (b) without a name, the one managed server whose own URIs include every
       URI in ``uris``; (c) without URIs, the only managed server, for its URIs.
       A URI that is not a managed server's own never gets its secret.

    With ``required`` False, URIs that get no credentials by these rules give
    kind ``"none"`` instead of an error (``turn audit`` runs its unauthenticated
    checks). ``uris`` empty and a managed server chosen: its URIs are returned in
    ``uris``. ``servers`` lists managed servers (default
    :func:`natkit.coturn.server.list_servers`; injectable for tests).

    Raises :class:`UsageError` (exit 2) for an empty or contradictory value and
    for URIs with no credentials; :class:`~natkit.errors.NotRunning` (exit 3)
    when a server is needed and there is none (or ``name`` is unknown).
    """
    from .errors import NotRunning

    uris = tuple(uris)
    if secret is not None and not secret:
        raise UsageError("--secret is empty", hint="pass the shared secret, or leave --secret out")
    if password is not None and not password:
        raise UsageError("--password is empty")
    if secret and password:
        raise UsageError("give either --secret or --user/--password, not both")
    if password and not user:
        raise UsageError("--password needs --user", hint="long-term credentials are --user U --password-file FILE (or --password P)")
    if user and ":" in user and not password:
        raise UsageError(f"user {user!r} must not contain ':' (it separates expiry and user)")
    if password:
        return TurnCredentials("long-term", uris, username=user, password=password)
    rest_user = DEFAULT_USER if user is None else user
    list_fn = servers or _managed_servers
    if secret:
        server = None
        if not uris and use_managed and name:
            server = _named(name, list_fn())
            uris = tuple(server.uris)
        return TurnCredentials("rest", uris, secret=secret, user=rest_user, server=server)
    needs = "needs --secret or --user/--password"
    if not use_managed:
        if not required:
            return TurnCredentials("none", uris, user=rest_user)
        raise UsageError("credentials needed: --secret-file FILE (or --secret S), or --user U --password-file FILE")
    managed = list_fn()
    if name:
        server = _named(name, managed)
    elif uris:
        server = _managed_for(uris, managed)
        if server is None and not required:
            return TurnCredentials("none", uris, user=rest_user)
        if server is None:
            raise UsageError(f"{', '.join(uris)} {needs}",
                             hint="a natkit-managed server's secret is only used for its own URIs (or with --name)")
    else:
        if not managed:
            raise NotRunning("no secret given and no natkit-managed coturn is running",
                             hint="pass --secret-file FILE or --user U --password-file FILE, or start one with: natkit turn up")
        if len(managed) > 1:
            raise UsageError("several natkit-managed coturn servers exist: " + ", ".join(s.name for s in managed), hint="pass --name")
        server = managed[0]
    if not server.secret:
        raise UsageError(f"the natkit-managed coturn {server.name!r} uses long-term users, not a REST secret", hint="pass --user U --password-file FILE")
    return TurnCredentials("rest", uris or tuple(server.uris), secret=server.secret, user=rest_user, server=server)


def _named(name: str, servers: list):
    from .errors import NotRunning

    for s in servers:
        if s.name == name:
            return s
    raise NotRunning(f"no natkit-managed coturn called {name!r}", hint="natkit turn status lists them")
