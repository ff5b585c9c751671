"""Parsing of STUN and TURN server addresses (RFC 7064, RFC 7065).

Accepted forms: ``host``, ``host:port``, ``[v6]:port``, ``stun:host[:port]``,
``stuns:host[:port]``, ``turn:host[:port][?transport=udp|tcp]`` and
``turns:host[:port][?transport=tcp]``. Pure: no DNS lookups here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from .errors import InvalidURI

DEFAULT_PORT = 3478  # RFC 8489 §18.6 "stun" / RFC 8656 "turn"
DEFAULT_TLS_PORT = 5349  # "stuns" / "turns"

_HOST_RE = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+|[0-9A-Fa-f:]+:[0-9A-Fa-f:.]*))"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)


@dataclasses.dataclass(frozen=True)
class ServerURI:
    """A parsed server address.

    ``scheme`` is one of stun, stuns, turn, turns; ``transport`` is udp or tcp
    (``turns``/``stuns`` run TLS over tcp, ``secure`` is then True).
    """

    scheme: str
    host: str
    port: int
    transport: str

    @property
    def secure(self) -> bool:
        return self.scheme in ("stuns", "turns")

    @property
    def is_turn(self) -> bool:
        return self.scheme in ("turn", "turns")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"{self.scheme}:{host}:{self.port}"
        if self.is_turn and not (self.scheme == "turns" or self.transport == "udp"):
            text += f"?transport={self.transport}"
        return text


def _split_host_port(text: str, original: str) -> tuple[str, int | None]:
    if text.count(":") >= 2 and not text.startswith("["):
        # a bare IPv6 literal without a port
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise InvalidURI(f"malformed address {original!r}", hint="write IPv6 with a port as [addr]:port") from None
        return text, None
    m = _HOST_RE.match(text)
    if not m:
        raise InvalidURI(f"malformed address {original!r}", hint="expected host, host:port or stun:host:port")
    host = m.group("v6") or m.group("host")
    if m.group("v6"):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidURI(f"malformed IPv6 address in {original!r}") from None
    port = m.group("port")
    if port is not None:
        p = int(port)
        if not 1 <= p <= 65535:
            raise InvalidURI(f"port {p} out of range 1-65535 in {original!r}")
        return host, p
    return host, None


def parse_server(text: str, *, default_scheme: str = "stun", transport: str | None = None) -> ServerURI:
    """Parse ``text`` into a :class:`ServerURI`.

    Bare ``host[:port]`` takes ``default_scheme``. ``transport`` (udp/tcp)
    overrides the default transport for stun/turn. Raises :class:`InvalidURI`.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidURI("empty server address")
    original = text
    text = text.strip()
    scheme = default_scheme
    query = None
    m = re.match(r"^(stuns?|turns?):(?!//)(.*)$", text, re.IGNORECASE)
    if m:
        scheme, text = m.group(1).lower(), m.group(2)
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) or re.match(r"^[A-Za-z]+:[^0-9\[]", text):
        raise InvalidURI(f"unsupported scheme in {original!r}", hint="use stun:, stuns:, turn: or turns:")
    if "?" in text:
        text, query = text.split("?", 1)
    if scheme.startswith("stun") and query:
        raise InvalidURI(f"{scheme}: URIs take no query in {original!r} (RFC 7064)")
    uri_transport = None
    if query:
        qm = re.fullmatch(r"transport=(udp|tcp)", query, re.IGNORECASE)
        if not qm:
            raise InvalidURI(f"malformed query {query!r} in {original!r}", hint="only ?transport=udp|tcp is defined (RFC 7065)")
        uri_transport = qm.group(1).lower()
    if "@" in text:
        raise InvalidURI(f"credentials in the URI are not allowed: {original!r}", hint="pass --user/--password or --secret")
    host, port = _split_host_port(text, original)
    secure = scheme in ("stuns", "turns")
    if port is None:
        port = DEFAULT_TLS_PORT if secure else DEFAULT_PORT
    if secure:
        chosen = "tcp"
        if uri_transport == "udp":  # a --transport default does not apply to TLS schemes
            raise InvalidURI(f"{scheme}: runs over TLS/TCP; DTLS is not supported: {original!r}")
    else:
        chosen = uri_transport or transport or "udp"
    if chosen not in ("udp", "tcp"):
        raise InvalidURI(f"unknown transport {chosen!r}", hint="use udp or tcp")
    return ServerURI(scheme=scheme, host=host, port=port, transport=chosen)


def parse_turn_uri(text: str) -> ServerURI:
    """Parse a TURN URI (``turn:`` or ``turns:``, RFC 7065). Bare host defaults to ``turn:``."""
    uri = parse_server(text, default_scheme="turn")
    if not uri.is_turn:
        raise InvalidURI(f"{text!r} is a STUN URI; a TURN URI starts with turn: or turns:")
    return uri


def parse_ice_url(text: str) -> ServerURI:
    """Parse one ``urls`` entry of a WebRTC ``RTCIceServer``: a ``stun:``, ``stuns:``,
    ``turn:`` or ``turns:`` URI (RFC 7064, RFC 7065) with its scheme written out.

    Raises :class:`InvalidURI`.
    """
    if not isinstance(text, str) or not re.match(r"^(stuns?|turns?):", text.strip(), re.IGNORECASE):
        raise InvalidURI(f"{text!r} is not a STUN/TURN URI", hint="write it as turn:HOST[:PORT][?transport=tcp], turns:HOST[:PORT] or stun:HOST[:PORT]")
    return parse_server(text)
