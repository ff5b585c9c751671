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
    expires = int(now if now is not None else time.time()) + int(ttl)
    username = f"{expires}:{user}" if user else str(expires)
    return RestCredential(username=username, password=rest_password(secret, username), expires_at=expires, ttl=int(ttl))
