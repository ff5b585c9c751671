"""A sans-I/O TURN client session (RFC 8656, RFC 6062, RFC 8489 §9.2 long-term credentials).

The session builds requests and reads answers; it never touches a socket
or a clock (``now`` is passed in, in seconds). A driver
(:mod:`natkit.stun.aio`, :mod:`natkit.stun.sync`) runs each
:class:`Pending` request as a transaction and hands the answer back:

    pending = session.allocate()
    while True:
        response = <run a transaction for pending.data, pending.transaction_id>
        outcome = session.handle(pending, response, now)
        if isinstance(outcome, Pending):      # 401 challenge or 438 stale nonce:
            pending = outcome                 # send the signed retry
            continue
        reply = outcome                       # a Reply: success or final error
        break

What the session does for the caller:

* long-term credentials (§9.2): the first request goes out unsigned; a 401
  carrying REALM and NONCE gives the key MD5(username:realm:password) and
  the request is retried signed. A 438 Stale Nonce is retried with the new
  nonce (at most ``max_nonce_retries`` times). REST API credentials are
  long-term credentials minted from a shared secret
  (:meth:`Credentials.rest`).
* every answer says whether it was signed: :attr:`Reply.signed` is True
  when MESSAGE-INTEGRITY verified with the session key, False when it was
  present but wrong, None when the answer was unsigned (some servers send
  unsigned 400s or ChannelBind answers; RFC 8489 lets a client discard them,
  natkit reports them instead).
* allocation state: relayed and mapped addresses, lifetime and expiry,
  permissions (300 s, §9), channel bindings (600 s, §12) with rebinding,
  and which refreshes are due (:meth:`TurnSession.refreshes_due`).
* the data path: :meth:`TurnSession.send` picks ChannelData when a channel
  is bound to the peer and a Send indication otherwise; :meth:`receive`
  turns ChannelData and Data indications into :class:`PeerData`.
  ChannelData is one ``struct.pack`` and one concatenation per packet.
* the ERROR-CODE → natkit error mapping (:func:`error_for`), once.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable
from typing import Any, NamedTuple

from ..errors import (
    AllocationRefused,
    AuthenticationRefused,
    MalformedMessage,
    TurnError,
)
from ..model import TransportAddress
from .codec import (
    FAMILY_IPV4,
    FAMILY_IPV6,
    PROTO_TCP,
    PROTO_UDP,
    Class,
    Message,
    Method,
    _enc_xor_address,
    decode,
    long_term_key,
    method_name,
    new_transaction_id,
)
from .framing import CHANNEL_MAX, CHANNEL_MIN

PERMISSION_LIFETIME = 300.0  # s, RFC 8656 §9
CHANNEL_LIFETIME = 600.0  # s, RFC 8656 §12
DEFAULT_LIFETIME = 600  # s, RFC 8656 §3.2 (the server may choose another)
REFRESH_MARGIN = 60.0  # s before expiry a refresh is due

AUTH_CODES = frozenset({401, 441})  # Unauthorized, Wrong Credentials
ALLOCATION_CODES = frozenset({403, 437, 440, 442, 486, 508})  # Forbidden, Allocation Mismatch,
# Address Family not Supported, Unsupported Transport Protocol, Allocation Quota Reached, Insufficient Capacity

_AUTH_ATTRS = frozenset({"USERNAME", "REALM", "NONCE", "MESSAGE-INTEGRITY", "MESSAGE-INTEGRITY-SHA256", "FINGERPRINT"})
_CD = struct.Struct("!HH")
_ATTR = struct.Struct("!HH")
_SEND_TYPE = 0x0016  # Send indication: method 0x006, class indication
_COOKIE = struct.pack("!I", 0x2112A442)


def error_for(code: int | None, reason: str = "", *, method: int = Method.ALLOCATE, server: str | None = None,
              step: str | None = None) -> TurnError:
    """The natkit error for a TURN error response (RFC 8656 §18, RFC 8489 §14.8).

    401/441 → :class:`AuthenticationRefused` (exit 5); 403, 437, 440, 442,
    486, 508 → :class:`AllocationRefused` (exit 6); anything else →
    :class:`TurnError`. ``step`` defaults to the method's name in lower case.
    """
    name = method_name(method)
    where = step or name.lower()
    text = f"{code} {reason}".strip() if code is not None else "error response without ERROR-CODE"
    if code in AUTH_CODES:
        return AuthenticationRefused(
            f"authentication refused: {text}", server=server, step=where, error_code=code, reason=reason,
            hint="check the username/password or the shared secret (and the clock, for REST credentials)")
    if code in ALLOCATION_CODES:
        hint: str | None
        if method == Method.ALLOCATE:
            message = f"allocation refused: {text}"
            hint = "quota reached (486), server full (508) or the request is not allowed (403)"
        else:
            message = f"{name} refused: {text}"
            hint = "403: the server's peer ACL refuses that address" if code == 403 else None
        return AllocationRefused(message, server=server, step=where, error_code=code, reason=reason, hint=hint)
    return TurnError(f"{name} failed: {text}", server=server, step=where, error_code=code, reason=reason)


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Long-term credentials (RFC 8489 §9.2). ``password`` never appears in a repr."""

    username: str
    password: str = dataclasses.field(repr=False)

    @classmethod
    def rest(cls, secret: str, user: str = "natkit", ttl: int = 600, *, now: float | None = None) -> Credentials:
        """TURN REST API credentials minted from ``secret`` (coturn ``use-auth-secret``)."""
        from ..credentials import mint

        cred = mint(secret, user, ttl, now=now)
        return cls(cred.username, cred.password)


class PeerData(NamedTuple):
    """Application data from a peer: via ChannelData (``channel`` set) or a Data indication."""

    peer: TransportAddress | None  # None: ChannelData on a channel this session never bound
    data: bytes
    channel: int | None


@dataclasses.dataclass
class Pending:
    """One request ready to send: ``data`` are its bytes, ``transaction_id`` what the answer carries.

    ``attempt`` counts the sends of this call (1 for the first, 2 after a 401
    challenge ...); ``signed`` whether it carries MESSAGE-INTEGRITY;
    ``history`` the answers that led to this retry (the 401, a 438 ...).
    """

    method: int
    attributes: tuple[tuple[str, Any], ...]
    message: Message
    data: bytes
    attempt: int = 1
    nonce_retries: int = 0
    history: tuple[Message, ...] = ()

    @property
    def transaction_id(self) -> bytes:
        return self.message.transaction_id

    @property
    def signed(self) -> bool:
        return "USERNAME" in self.message


@dataclasses.dataclass(frozen=True)
class Reply:
    """The final answer to one TURN request.

    ``signed``: True MESSAGE-INTEGRITY verified, False present but wrong,
    None unsigned. ``attempts``: requests sent for this call (401 challenge
    and retry count as two). ``history``: every answer of the call in order,
    the final one last (evidence such as "401 → 438 → success").
    ``sent_bytes``: size of the final request on the wire.
    """

    request: Message
    response: Message
    signed: bool | None
    attempts: int
    history: tuple[Message, ...] = ()
    sent_bytes: int = 0

    def trail(self) -> str:
        """The call's answers as one line: "401 Unauthorized → success"."""
        return " → ".join(m.describe() for m in self.history or (self.response,))

    @property
    def ok(self) -> bool:
        """A success response without unknown comprehension-required attributes (RFC 8489 §6.3.3)."""
        return self.response.cls == Class.RESPONSE and not self.response.unknown_required

    @property
    def code(self) -> int | None:
        return None if self.ok else self.response.error_code

    @property
    def reason(self) -> str:
        ec = self.response.get("ERROR-CODE")
        return ec[1] if ec else ""

    def describe(self) -> str:
        """"success", "403 Forbidden" ..., with "(unsigned)"/"(bad signature)" when it matters."""
        text = self.response.describe()
        if self.signed is False:
            text += " (bad MESSAGE-INTEGRITY)"
        elif self.signed is None and self.request.get("USERNAME") is not None:
            text += " (unsigned)"
        return text

    def error(self, *, server: str | None = None, step: str | None = None) -> TurnError:
        """The natkit error for this (error) reply; see :func:`error_for`."""
        if self.response.cls == Class.RESPONSE and self.response.unknown_required:
            unknown = ", ".join(f"0x{t:04X}" for t in self.response.unknown_required)
            return TurnError(f"{method_name(self.request.method)} success response with unknown comprehension-required "
                             f"attributes {unknown}: treated as failed (RFC 8489 §6.3.3)", server=server,
                             step=step or method_name(self.request.method).lower())
        return error_for(self.code, self.reason, method=self.request.method, server=server, step=step)

    def raise_for_error(self, *, server: str | None = None, step: str | None = None) -> Reply:
        """Raise :meth:`error` unless the reply is a success; returns ``self``."""
        if not self.ok:
            raise self.error(server=server, step=step)
        return self


class TurnSession:
    """The client side of one TURN allocation (RFC 8656), without I/O.

    ``username``/``password`` None: requests go out unsigned (open-relay
    checks, ``no-auth`` servers). ``stream``: the control connection is TCP
    or TLS (ChannelData gets padded). ``software`` adds SOFTWARE to requests.
    ``fingerprint`` adds FINGERPRINT to requests.
    """

    def __init__(self, username: str | None = None, password: str | None = None, *, stream: bool = False,
                 software: str | None = None, fingerprint: bool = False, max_nonce_retries: int = 3) -> None:
        self.username = username
        self.password = password
        self.stream = stream
        self.software = software
        self.fingerprint = fingerprint
        self.max_nonce_retries = max_nonce_retries
        self.realm: str | None = None
        self.nonce: bytes | None = None
        self.key: bytes | None = None
        # allocation state
        self.relayed: tuple[TransportAddress, ...] = ()
        self.mapped: TransportAddress | None = None
        self.lifetime: int | None = None
        self.expires_at: float | None = None
        self.reservation_token: bytes | None = None
        self.permissions: dict[str, float] = {}  # peer IP -> expiry
        self.channels: dict[TransportAddress, int] = {}  # confirmed bindings peer -> number
        self.channel_expiry: dict[int, float] = {}
        self._peer_by_channel: dict[int, TransportAddress] = {}
        self._numbers: dict[TransportAddress, int] = {}  # numbers handed out (bound or not)
        self._next_channel = CHANNEL_MIN
        self.unsigned_replies = 0  # answers to signed requests that carried no MESSAGE-INTEGRITY
        self.bad_signatures = 0

    # ------------------------------------------------------------------ state
    @property
    def allocated(self) -> bool:
        return bool(self.relayed)

    @property
    def relayed_address(self) -> TransportAddress | None:
        """The (first) XOR-RELAYED-ADDRESS, None before a successful Allocate."""
        return self.relayed[0] if self.relayed else None

    def channel_for(self, peer: TransportAddress) -> int | None:
        """The confirmed channel number bound to ``peer``, else None."""
        return self.channels.get(peer)

    # --------------------------------------------------------------- requests
    def request(self, method: int, attributes: Iterable[tuple[str, Any]] = ()) -> Pending:
        """Any request with the session's credentials (signed once a realm and nonce are known)."""
        attrs = tuple(attributes)
        return Pending(method, attrs, *self._build(method, attrs))

    def _build(self, method: int, attrs: tuple[tuple[str, Any], ...]) -> tuple[Message, bytes]:
        msg = Message(method, Class.REQUEST, new_transaction_id(), attrs)
        if self.software:
            msg.add("SOFTWARE", self.software)
        key = None
        if self.key is not None and self.username is not None:
            msg.add("USERNAME", self.username).add("REALM", self.realm).add("NONCE", self.nonce)
            key = self.key
        return msg, msg.encode(key, fingerprint=self.fingerprint)

    def allocate(self, *, transport: int = PROTO_UDP, family: int | None = None, lifetime: int | None = None,
                 dont_fragment: bool = False, even_port: bool | None = None, reservation_token: bytes | None = None,
                 additional_family: int | None = None) -> Pending:
        """Allocate (RFC 8656 §7.1): ``transport`` 17 UDP or 6 TCP (RFC 6062);
        ``family`` 1 IPv4 / 2 IPv6 (REQUESTED-ADDRESS-FAMILY, RFC 8656 §18.6);
        ``additional_family`` 2 asks for a second (IPv6) relayed address."""
        if transport not in (PROTO_UDP, PROTO_TCP):
            raise ValueError(f"REQUESTED-TRANSPORT must be 17 (UDP) or 6 (TCP), not {transport}")
        attrs: list[tuple[str, Any]] = [("REQUESTED-TRANSPORT", transport)]
        if lifetime is not None:
            attrs.append(("LIFETIME", lifetime))
        if family is not None:
            if family not in (FAMILY_IPV4, FAMILY_IPV6):
                raise ValueError(f"address family must be 1 (IPv4) or 2 (IPv6), not {family}")
            attrs.append(("REQUESTED-ADDRESS-FAMILY", family))
        if additional_family is not None:
            attrs.append(("ADDITIONAL-ADDRESS-FAMILY", additional_family))
        if dont_fragment:
            attrs.append(("DONT-FRAGMENT", None))
        if even_port is not None:
            attrs.append(("EVEN-PORT", even_port))
        if reservation_token is not None:
            attrs.append(("RESERVATION-TOKEN", reservation_token))
        return self.request(Method.ALLOCATE, attrs)

    def refresh(self, lifetime: int | None = None) -> Pending:
        """Refresh (RFC 8656 §8): ``lifetime`` 0 releases the allocation."""
        return self.request(Method.REFRESH, [("LIFETIME", lifetime)] if lifetime is not None else [])

    def create_permission(self, *peers: TransportAddress) -> Pending:
        """CreatePermission (RFC 8656 §9) for one or more peer IPs (the port is ignored by servers)."""
        if not peers:
            raise ValueError("CreatePermission needs at least one peer address")
        return self.request(Method.CREATE_PERMISSION, [("XOR-PEER-ADDRESS", p) for p in peers])

    def channel_bind(self, peer: TransportAddress, channel: int | None = None) -> Pending:
        """ChannelBind (RFC 8656 §12.1): the peer's existing number is reused (a rebind refreshes it)."""
        number = channel or self._numbers.get(peer)
        if number is None:
            if self._next_channel > CHANNEL_MAX:
                raise ValueError("all 4096 channel numbers are in use")
            number = self._next_channel
            self._next_channel += 1
        if not CHANNEL_MIN <= number <= CHANNEL_MAX:
            raise ValueError(f"channel number 0x{number:04x} is outside 0x4000-0x4FFF")
        self._numbers[peer] = number
        return self.request(Method.CHANNEL_BIND, [("CHANNEL-NUMBER", number), ("XOR-PEER-ADDRESS", peer)])

    def connect(self, peer: TransportAddress) -> Pending:
        """Connect (RFC 6062 §4.3): ask a TCP allocation to open a connection to ``peer``."""
        return self.request(Method.CONNECT, [("XOR-PEER-ADDRESS", peer)])

    def connection_bind(self, connection_id: int) -> Pending:
        """ConnectionBind (RFC 6062 §4.4), sent on a new data connection to the server."""
        return self.request(Method.CONNECTION_BIND, [("CONNECTION-ID", connection_id)])

    # ---------------------------------------------------------------- answers
    def handle(self, pending: Pending, response: Message, now: float) -> Reply | Pending:
        """Read the answer to ``pending``: a :class:`Pending` retry (401 challenge, 438 stale nonce)
        or the final :class:`Reply`. Updates the allocation state on success."""
        code = response.error_code if response.cls == Class.ERROR else None
        if code == 401 and self.username is not None and self.password is not None and not pending.signed:
            realm, nonce = response.get("REALM"), response.get("NONCE")
            if realm is not None and nonce is not None:
                self.realm, self.nonce = realm, nonce
                self.key = long_term_key(self.username, realm, self.password)
                return self._retry(pending, response, nonce_retries=pending.nonce_retries)
        if code == 438 and pending.signed and pending.nonce_retries < self.max_nonce_retries:
            nonce = response.get("NONCE")
            if nonce is not None:
                self.nonce = nonce
                self.realm = response.get("REALM", self.realm)
                return self._retry(pending, response, nonce_retries=pending.nonce_retries + 1)
        signed = response.check_integrity(self.key) if self.key is not None else None
        if pending.signed:
            if signed is None:
                self.unsigned_replies += 1
            elif signed is False:
                self.bad_signatures += 1
        reply = Reply(pending.message, response, signed, pending.attempt, pending.history + (response,), len(pending.data))
        if reply.ok:
            self._apply(pending, response, now)
        return reply

    def _retry(self, pending: Pending, answer: Message, *, nonce_retries: int) -> Pending:
        msg, data = self._build(pending.method, pending.attributes)
        return Pending(pending.method, pending.attributes, msg, data, pending.attempt + 1, nonce_retries,
                       pending.history + (answer,))

    def _apply(self, pending: Pending, response: Message, now: float) -> None:
        method = pending.method
        if method == Method.ALLOCATE:
            self.relayed = tuple(response.get_all("XOR-RELAYED-ADDRESS"))
            self.mapped = response.get("XOR-MAPPED-ADDRESS")
            self.reservation_token = response.get("RESERVATION-TOKEN")
            self._set_lifetime(response.get("LIFETIME", DEFAULT_LIFETIME), now)
        elif method == Method.REFRESH:
            asked = dict(pending.attributes).get("LIFETIME")
            lifetime = response.get("LIFETIME", asked if asked is not None else DEFAULT_LIFETIME)
            if lifetime == 0 or asked == 0:
                self._released()
            else:
                self._set_lifetime(lifetime, now)
        elif method == Method.CREATE_PERMISSION:
            for name, peer in pending.attributes:
                if name == "XOR-PEER-ADDRESS":
                    self.permissions[peer.host if isinstance(peer, TransportAddress) else str(peer[0])] = now + PERMISSION_LIFETIME
        elif method == Method.CHANNEL_BIND:
            attrs = dict(pending.attributes)
            number, peer = attrs["CHANNEL-NUMBER"], attrs["XOR-PEER-ADDRESS"]
            if not isinstance(peer, TransportAddress):
                peer = TransportAddress(str(peer[0]), int(peer[1]))
            self.channels[peer] = number
            self._peer_by_channel[number] = peer
            self.channel_expiry[number] = now + CHANNEL_LIFETIME
            self.permissions[peer.host] = now + PERMISSION_LIFETIME  # a binding installs a permission (§12.2)

    def _set_lifetime(self, lifetime: int, now: float) -> None:
        self.lifetime = lifetime
        self.expires_at = now + lifetime

    def _released(self) -> None:
        self.relayed, self.lifetime, self.expires_at = (), 0, None
        self.permissions.clear()
        self.channels.clear()
        self.channel_expiry.clear()
        self._peer_by_channel.clear()
        self._numbers.clear()
        self._next_channel = CHANNEL_MIN

    def refreshes_due(self, now: float, margin: float = REFRESH_MARGIN) -> list[Pending]:
        """Requests that keep the allocation, its permissions and channels alive (RFC 8656 §8, §9, §12)."""
        due: list[Pending] = []
        if self.expires_at is not None and self.expires_at - now <= margin:
            due.append(self.refresh(self.lifetime))
        channel_hosts = {p.host for p in self.channels}  # a rebind refreshes those permissions
        hosts = [h for h, exp in self.permissions.items() if exp - now <= margin and h not in channel_hosts]
        if hosts:
            due.append(self.create_permission(*(TransportAddress(h, 0) for h in hosts)))
        for number, exp in self.channel_expiry.items():
            if exp - now <= margin:
                due.append(self.channel_bind(self._peer_by_channel[number], number))
        return due

    # -------------------------------------------------------------- data path
    def channel_data(self, channel: int, payload: bytes) -> bytes:
        """A ChannelData message (RFC 8656 §12.4), padded over TCP/TLS."""
        if self.stream and len(payload) & 3:
            return _CD.pack(channel, len(payload)) + payload + b"\x00" * (-len(payload) & 3)
        return _CD.pack(channel, len(payload)) + payload

    def send_indication(self, peer: TransportAddress, payload: bytes) -> bytes:
        """A Send indication (RFC 8656 §11.1) carrying ``payload`` to ``peer``."""
        txid = new_transaction_id()
        addr = _enc_xor_address(peer, txid)
        pad = -len(payload) & 3
        body = (_ATTR.pack(0x0012, len(addr)) + addr + _ATTR.pack(0x0013, len(payload)) + payload + b"\x00" * pad)
        return struct.pack("!HH", _SEND_TYPE, len(body)) + _COOKIE + txid + body

    def send(self, peer: TransportAddress, payload: bytes) -> bytes:
        """The bytes that carry ``payload`` to ``peer``: ChannelData on a bound channel, else a Send indication."""
        number = self.channels.get(peer)
        if number is not None:
            return self.channel_data(number, payload)
        return self.send_indication(peer, payload)

    def receive(self, data: bytes) -> PeerData | Message:
        """Read one datagram/frame from the server: :class:`PeerData` for ChannelData and
        Data indications, the decoded :class:`Message` for anything else.

        Raises :class:`~natkit.errors.MalformedMessage` when it does not parse.
        """
        if len(data) >= 4 and 0x40 <= data[0] < 0x80:
            channel, length = _CD.unpack_from(data)
            if 4 + length > len(data):
                raise MalformedMessage(f"length {length} but only {len(data) - 4} bytes of data", attribute="ChannelData", offset=2)
            return PeerData(self._peer_by_channel.get(channel), data[4:4 + length], channel)
        msg = decode(data)
        if msg.method == Method.DATA and msg.cls == Class.INDICATION:
            payload = msg.get("DATA")
            if payload is not None:
                return PeerData(msg.get("XOR-PEER-ADDRESS"), payload, None)
        return msg
