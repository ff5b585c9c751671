"""STUN/TURN messages: a pure, table-driven codec (no I/O, no clocks).

Covers RFC 8489 (STUN), RFC 8656 (TURN), RFC 5780 (NAT behaviour
discovery), RFC 6062 (TURN TCP allocations), RFC 6156/8656 address
families, RFC 8445's ICE attributes and the classic RFC 3489 addresses
that old servers (stund) still send.

* :class:`Message` holds a method, a class, a transaction ID and an ordered
  list of ``(name, value)`` attributes (an attribute may repeat, e.g.
  XOR-PEER-ADDRESS in CreatePermission). Names are the RFC names
  ("XOR-MAPPED-ADDRESS"); a type natkit does not know is named ``0xHHHH``
  and keeps its raw bytes.
* :func:`decode` parses one message and raises exactly one error type,
  :class:`~natkit.errors.MalformedMessage`, naming the attribute and byte
  offset. It is linear in the input and caps the attribute count.
* :meth:`Message.encode` writes a message, optionally signed with
  MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) and/or
  MESSAGE-INTEGRITY-SHA256 (§14.6) and closed with FINGERPRINT (§14.7).
* ChannelData (RFC 8656 §12.4) and the one stream framer for TCP/TLS
  (STUN and ChannelData interleaved, ChannelData padded to 4 bytes over
  streams, §12.5) live in :mod:`natkit.stun.framing`.

Value types: addresses are :class:`~natkit.model.TransportAddress`;
ERROR-CODE is ``(code, reason)``; REQUESTED-TRANSPORT is the IP protocol
number (17 UDP, 6 TCP); REQUESTED-ADDRESS-FAMILY 1 (IPv4) or 2 (IPv6);
flags (DONT-FRAGMENT, USE-CANDIDATE) are ``None``; strings are ``str``;
opaque values (NONCE, DATA, MESSAGE-INTEGRITY, RESERVATION-TOKEN) ``bytes``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import socket
import struct
import zlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from ..errors import MalformedMessage
from ..model import TransportAddress

MAGIC_COOKIE = 0x2112A442  # RFC 8489 §5
HEADER_LENGTH = 20
FINGERPRINT_XOR = 0x5354554E  # RFC 8489 §14.7
MAX_ATTRIBUTES = 128  # more than any real message; bounds the work per message
MAX_TEXT = 763  # RFC 8489: REALM, NONCE, SOFTWARE, reason phrase are < 128 characters (<= 763 bytes)
MAX_USERNAME = 513  # RFC 8489 §14.3

FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02
PROTO_UDP = 17  # REQUESTED-TRANSPORT (RFC 8656 §18.7)
PROTO_TCP = 6  # RFC 6062 §6.1
CHANGE_IP = 0x04  # CHANGE-REQUEST flags (RFC 5780 §7.2)
CHANGE_PORT = 0x02

_HEADER = struct.Struct("!HHI12s")
_ATTR = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class Class(enum.IntEnum):
    """The message class bits C1 C0 in place (RFC 8489 §5)."""

    REQUEST = 0x000
    INDICATION = 0x010
    RESPONSE = 0x100  # success response
    ERROR = 0x110  # error response


class Method(enum.IntEnum):
    """STUN/TURN methods (RFC 8489 §18.2, RFC 8656 §17, RFC 6062 §6.1)."""

    BINDING = 0x001
    SHARED_SECRET = 0x002  # RFC 3489 only
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    CONNECT = 0x00A
    CONNECTION_BIND = 0x00B
    CONNECTION_ATTEMPT = 0x00C


def method_name(method: int) -> str:
    """The RFC name of a method ("Allocate", "CreatePermission"), or ``0xHHH``."""
    try:
        return _METHOD_NAMES[Method(method)]
    except ValueError:
        return f"0x{method:03X}"


_METHOD_NAMES = {
    Method.BINDING: "Binding", Method.SHARED_SECRET: "SharedSecret", Method.ALLOCATE: "Allocate",
    Method.REFRESH: "Refresh", Method.SEND: "Send", Method.DATA: "Data",
    Method.CREATE_PERMISSION: "CreatePermission", Method.CHANNEL_BIND: "ChannelBind",
    Method.CONNECT: "Connect", Method.CONNECTION_BIND: "ConnectionBind",
    Method.CONNECTION_ATTEMPT: "ConnectionAttempt",
}


def message_type(method: int, cls: int) -> int:
    """The 14-bit message type: method bits M0-M11 around the class bits (RFC 8489 §5)."""
    return ((method & 0xF80) << 2) | ((method & 0x070) << 1) | (method & 0x00F) | cls


def split_type(mtype: int) -> tuple[int, int]:
    """``(method, class)`` of a message type; the inverse of :func:`message_type`."""
    return (mtype & 0x000F) | ((mtype & 0x00E0) >> 1) | ((mtype & 0x3E00) >> 2), mtype & 0x0110


def new_transaction_id() -> bytes:
    """96 random bits (RFC 8489 §5)."""
    return os.urandom(12)


# ---------------------------------------------------------------------------
# value codecs: decoders take (value, transaction_id) and raise _Bad(reason)


class _Bad(Exception):
    """A value that does not fit its attribute; :func:`decode` adds name and offset."""


def _ip_bytes(host: str) -> tuple[int, bytes]:
    try:
        if ":" in host:
            return FAMILY_IPV6, socket.inet_pton(socket.AF_INET6, host)
        return FAMILY_IPV4, socket.inet_pton(socket.AF_INET, host)
    except (OSError, TypeError):
        raise ValueError(f"not an IP address: {host!r}") from None


def _as_address(value: Any) -> tuple[str, int]:
    if isinstance(value, TransportAddress):
        return value.host, value.port
    host, port = value[0], value[1]
    return str(host), int(port)


def _enc_address(value: Any, txid: bytes) -> bytes:
    host, port = _as_address(value)
    family, packed = _ip_bytes(host)
    return bytes((0, family)) + _U16.pack(port) + packed


def _dec_address(v: bytes, txid: bytes) -> TransportAddress:
    if len(v) < 4:
        raise _Bad(f"{len(v)} bytes, an address needs 8 (IPv4) or 20 (IPv6)")
    family = v[1]
    if family == FAMILY_IPV4:
        if len(v) != 8:
            raise _Bad(f"{len(v)} bytes for an IPv4 address (needs 8)")
        return TransportAddress(socket.inet_ntop(socket.AF_INET, v[4:8]), _U16.unpack_from(v, 2)[0])
    if family == FAMILY_IPV6:
        if len(v) != 20:
            raise _Bad(f"{len(v)} bytes for an IPv6 address (needs 20)")
        return TransportAddress(socket.inet_ntop(socket.AF_INET6, v[4:20]), _U16.unpack_from(v, 2)[0])
    raise _Bad(f"unknown address family 0x{family:02x}")


def _xor_pad(txid: bytes) -> bytes:
    return _U32.pack(MAGIC_COOKIE) + txid


def _xor(data: bytes, pad: bytes) -> bytes:
    n = len(data)
    return (int.from_bytes(data, "big") ^ int.from_bytes(pad[:n], "big")).to_bytes(n, "big")


def _enc_xor_address(value: Any, txid: bytes) -> bytes:
    plain = _enc_address(value, txid)
    return plain[:2] + _xor(plain[2:], (MAGIC_COOKIE >> 16).to_bytes(2, "big") + _xor_pad(txid))


def _dec_xor_address(v: bytes, txid: bytes) -> TransportAddress:
    if len(v) in (8, 20):
        v = v[:2] + _xor(v[2:], (MAGIC_COOKIE >> 16).to_bytes(2, "big") + _xor_pad(txid))
    return _dec_address(v, txid)


def _fixed(n: int, what: str) -> Callable[[bytes], None]:
    def check(v: bytes) -> None:
        if len(v) != n:
            raise _Bad(f"{len(v)} bytes, {what} needs {n}")
    return check


def _dec_u32(v: bytes, txid: bytes) -> int:
    if len(v) != 4:
        raise _Bad(f"{len(v)} bytes, a 32-bit value needs 4")
    return _U32.unpack(v)[0]


def _enc_u32(value: int, txid: bytes) -> bytes:
    return _U32.pack(value)


def _dec_u64(v: bytes, txid: bytes) -> int:
    if len(v) != 8:
        raise _Bad(f"{len(v)} bytes, a 64-bit value needs 8")
    return _U64.unpack(v)[0]


def _enc_u64(value: int, txid: bytes) -> bytes:
    return _U64.pack(value)


def _dec_u16_rffu(v: bytes, txid: bytes) -> int:
    if len(v) != 4:
        raise _Bad(f"{len(v)} bytes, needs 4 (16-bit value and 2 RFFU bytes)")
    return _U16.unpack_from(v)[0]


def _enc_u16_rffu(value: int, txid: bytes) -> bytes:
    return _U16.pack(value) + b"\x00\x00"


def _dec_u8_rffu(v: bytes, txid: bytes) -> int:
    if len(v) != 4:
        raise _Bad(f"{len(v)} bytes, needs 4 (one value byte and 3 RFFU bytes)")
    return v[0]


def _enc_u8_rffu(value: int, txid: bytes) -> bytes:
    return bytes((value, 0, 0, 0))


def _dec_flag(v: bytes, txid: bytes) -> None:
    if v:
        raise _Bad(f"{len(v)} bytes, a flag attribute is empty")


def _enc_flag(value: Any, txid: bytes) -> bytes:
    return b""


def _dec_even_port(v: bytes, txid: bytes) -> bool:
    if len(v) != 1:
        raise _Bad(f"{len(v)} bytes, EVEN-PORT is 1 byte")
    return bool(v[0] & 0x80)


def _enc_even_port(value: bool, txid: bytes) -> bytes:
    return b"\x80" if value else b"\x00"


def _bytes(min_len: int = 0, max_len: int = 0xFFFF, multiple: int = 1):
    def dec(v: bytes, txid: bytes) -> bytes:
        if not min_len <= len(v) <= max_len or len(v) % multiple:
            exact = f"{min_len}" if min_len == max_len else f"{min_len}..{max_len}"
            raise _Bad(f"{len(v)} bytes, needs {exact}" + (f" in steps of {multiple}" if multiple > 1 else ""))
        return bytes(v)
    return dec


def _enc_bytes(value: bytes, txid: bytes) -> bytes:
    return bytes(value)


def _text(max_len: int):
    def dec(v: bytes, txid: bytes) -> str:
        if len(v) > max_len:
            raise _Bad(f"{len(v)} bytes, longer than the {max_len} bytes RFC 8489 allows")
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Bad(f"not UTF-8 (byte {exc.start})") from None
    return dec


def _enc_text(value: str, txid: bytes) -> bytes:
    return value.encode("utf-8")


def _dec_error_code(v: bytes, txid: bytes) -> tuple[int, str]:
    if len(v) < 4:
        raise _Bad(f"{len(v)} bytes, ERROR-CODE needs at least 4")
    if len(v) > 4 + MAX_TEXT:
        raise _Bad(f"reason phrase of {len(v) - 4} bytes, longer than {MAX_TEXT}")
    klass, number = v[2] & 0x07, v[3]
    if not 3 <= klass <= 6 or number > 99:
        raise _Bad(f"error code {klass}{number:02d} is outside 300..699")
    return klass * 100 + number, v[4:].decode("utf-8", "replace").rstrip("\x00 ")


def _enc_error_code(value: tuple[int, str], txid: bytes) -> bytes:
    code, reason = value
    return bytes((0, 0, code // 100, code % 100)) + reason.encode("utf-8")


def _dec_address_error_code(v: bytes, txid: bytes) -> tuple[int, int, str]:
    if len(v) < 4:
        raise _Bad(f"{len(v)} bytes, ADDRESS-ERROR-CODE needs at least 4")
    klass, number = v[2] & 0x07, v[3]
    if not 3 <= klass <= 6 or number > 99:
        raise _Bad(f"error code {klass}{number:02d} is outside 300..699")
    return v[0], klass * 100 + number, v[4:4 + MAX_TEXT].decode("utf-8", "replace").rstrip("\x00 ")


def _enc_address_error_code(value: tuple[int, int, str], txid: bytes) -> bytes:
    family, code, reason = value
    return bytes((family, 0, code // 100, code % 100)) + reason.encode("utf-8")


def _dec_unknown_attributes(v: bytes, txid: bytes) -> tuple[int, ...]:
    if len(v) % 2:
        raise _Bad(f"{len(v)} bytes, a list of 16-bit types needs an even length")
    return struct.unpack(f"!{len(v) // 2}H", v)


def _enc_unknown_attributes(value: Iterable[int], txid: bytes) -> bytes:
    types = tuple(value)
    return struct.pack(f"!{len(types)}H", *types)


def _dec_password_algorithms(v: bytes, txid: bytes) -> tuple[tuple[int, bytes], ...]:
    out, pos = [], 0
    while pos < len(v):
        if pos + 4 > len(v):
            raise _Bad(f"algorithm entry at value byte {pos} is truncated")
        alg, plen = _ATTR.unpack_from(v, pos)
        end = pos + 4 + plen
        if end > len(v):
            raise _Bad(f"parameters of algorithm {alg} run past the value")
        out.append((alg, bytes(v[pos + 4:end])))
        pos = end + (-plen & 3)
    return tuple(out)


def _enc_password_algorithms(value: Iterable[tuple[int, bytes]], txid: bytes) -> bytes:
    return b"".join(_ATTR.pack(a, len(p)) + p + bytes(-len(p) & 3) for a, p in value)


def _dec_password_algorithm(v: bytes, txid: bytes) -> tuple[int, bytes]:
    algs = _dec_password_algorithms(v, txid)
    if len(algs) != 1:
        raise _Bad("PASSWORD-ALGORITHM holds exactly one algorithm")
    return algs[0]


def _enc_password_algorithm(value: tuple[int, bytes], txid: bytes) -> bytes:
    return _enc_password_algorithms([value], txid)


def _dec_icmp(v: bytes, txid: bytes) -> tuple[int, int, int]:
    if len(v) != 8:
        raise _Bad(f"{len(v)} bytes, ICMP needs 8")
    return v[2], v[3], _U32.unpack_from(v, 4)[0]


def _enc_icmp(value: tuple[int, int, int], txid: bytes) -> bytes:
    icmp_type, code, data = value
    return bytes((0, 0, icmp_type, code)) + _U32.pack(data)


class AttributeSpec(NamedTuple):
    """One row of the attribute table: type code, RFC name, codec, source."""

    type: int
    name: str
    decode: Callable[[bytes, bytes], Any]
    encode: Callable[[Any, bytes], bytes]
    rfc: str


_A, _XA = (_dec_address, _enc_address), (_dec_xor_address, _enc_xor_address)
_U32C, _U64C = (_dec_u32, _enc_u32), (_dec_u64, _enc_u64)

ATTRIBUTES: tuple[AttributeSpec, ...] = tuple(AttributeSpec(t, n, d, e, r) for t, n, (d, e), r in (
    (0x0001, "MAPPED-ADDRESS", _A, "RFC 8489 §14.1"),
    (0x0002, "RESPONSE-ADDRESS", _A, "RFC 3489 §11.2.2"),
    (0x0003, "CHANGE-REQUEST", _U32C, "RFC 5780 §7.2"),
    (0x0004, "SOURCE-ADDRESS", _A, "RFC 3489 §11.2.5"),
    (0x0005, "CHANGED-ADDRESS", _A, "RFC 3489 §11.2.3"),
    (0x0006, "USERNAME", (_text(MAX_USERNAME), _enc_text), "RFC 8489 §14.3"),
    (0x0008, "MESSAGE-INTEGRITY", (_bytes(20, 20), _enc_bytes), "RFC 8489 §14.5"),
    (0x0009, "ERROR-CODE", (_dec_error_code, _enc_error_code), "RFC 8489 §14.8"),
    (0x000A, "UNKNOWN-ATTRIBUTES", (_dec_unknown_attributes, _enc_unknown_attributes), "RFC 8489 §14.9"),
    (0x000C, "CHANNEL-NUMBER", (_dec_u16_rffu, _enc_u16_rffu), "RFC 8656 §18.1"),
    (0x000D, "LIFETIME", _U32C, "RFC 8656 §18.2"),
    (0x0012, "XOR-PEER-ADDRESS", _XA, "RFC 8656 §18.3"),
    (0x0013, "DATA", (_bytes(), _enc_bytes), "RFC 8656 §18.4"),
    (0x0014, "REALM", (_text(MAX_TEXT), _enc_text), "RFC 8489 §14.9"),
    (0x0015, "NONCE", (_bytes(0, MAX_TEXT), _enc_bytes), "RFC 8489 §14.10"),
    (0x0016, "XOR-RELAYED-ADDRESS", _XA, "RFC 8656 §18.5"),
    (0x0017, "REQUESTED-ADDRESS-FAMILY", (_dec_u8_rffu, _enc_u8_rffu), "RFC 8656 §18.6"),
    (0x0018, "EVEN-PORT", (_dec_even_port, _enc_even_port), "RFC 8656 §18.7"),
    (0x0019, "REQUESTED-TRANSPORT", (_dec_u8_rffu, _enc_u8_rffu), "RFC 8656 §18.8"),
    (0x001A, "DONT-FRAGMENT", (_dec_flag, _enc_flag), "RFC 8656 §18.9"),
    (0x001C, "MESSAGE-INTEGRITY-SHA256", (_bytes(16, 32, 4), _enc_bytes), "RFC 8489 §14.6"),
    (0x001D, "PASSWORD-ALGORITHM", (_dec_password_algorithm, _enc_password_algorithm), "RFC 8489 §14.12"),
    (0x001E, "USERHASH", (_bytes(32, 32), _enc_bytes), "RFC 8489 §14.4"),
    (0x0020, "XOR-MAPPED-ADDRESS", _XA, "RFC 8489 §14.2"),
    (0x0022, "RESERVATION-TOKEN", (_bytes(8, 8), _enc_bytes), "RFC 8656 §18.10"),
    (0x0024, "PRIORITY", _U32C, "RFC 8445 §16.1"),
    (0x0025, "USE-CANDIDATE", (_dec_flag, _enc_flag), "RFC 8445 §16.1"),
    (0x0026, "PADDING", (_bytes(), _enc_bytes), "RFC 5780 §7.6"),
    (0x0027, "RESPONSE-PORT", (_dec_u16_rffu, _enc_u16_rffu), "RFC 5780 §7.5"),
    (0x002A, "CONNECTION-ID", _U32C, "RFC 6062 §6.2.1"),
    (0x8000, "ADDITIONAL-ADDRESS-FAMILY", (_dec_u8_rffu, _enc_u8_rffu), "RFC 8656 §18.11"),
    (0x8001, "ADDRESS-ERROR-CODE", (_dec_address_error_code, _enc_address_error_code), "RFC 8656 §18.12"),
    (0x8002, "PASSWORD-ALGORITHMS", (_dec_password_algorithms, _enc_password_algorithms), "RFC 8489 §14.11"),
    (0x8003, "ALTERNATE-DOMAIN", (_text(MAX_TEXT), _enc_text), "RFC 8489 §14.16"),
    (0x8004, "ICMP", (_dec_icmp, _enc_icmp), "RFC 8656 §18.13"),
    (0x8022, "SOFTWARE", (_text(MAX_TEXT), _enc_text), "RFC 8489 §14.14"),
    (0x8023, "ALTERNATE-SERVER", _A, "RFC 8489 §14.15"),
    (0x8028, "FINGERPRINT", _U32C, "RFC 8489 §14.7"),
    (0x8029, "ICE-CONTROLLED", _U64C, "RFC 8445 §16.1"),
    (0x802A, "ICE-CONTROLLING", _U64C, "RFC 8445 §16.1"),
    (0x802B, "RESPONSE-ORIGIN", _A, "RFC 5780 §7.3"),
    (0x802C, "OTHER-ADDRESS", _A, "RFC 5780 §7.4"),
))
BY_TYPE: dict[int, AttributeSpec] = {a.type: a for a in ATTRIBUTES}
BY_NAME: dict[str, AttributeSpec] = {a.name: a for a in ATTRIBUTES}

_MI, _MI256, _FP = 0x0008, 0x001C, 0x8028


def attribute_name(attr_type: int) -> str:
    """The RFC name of an attribute type, or ``0xHHHH`` when natkit does not know it."""
    spec = BY_TYPE.get(attr_type)
    return spec.name if spec else f"0x{attr_type:04X}"


def _spec_for(name: str) -> AttributeSpec:
    spec = BY_NAME.get(name)
    if spec is not None:
        return spec
    if name.startswith("0x"):
        try:
            t = int(name, 16)
        except ValueError:
            pass
        else:
            if 0 <= t <= 0xFFFF:
                return AttributeSpec(t, name, _bytes(), _enc_bytes, "unknown")
    raise ValueError(f"unknown STUN attribute name {name!r}")


# ---------------------------------------------------------------------------
# keys and integrity


def long_term_key(username: str, realm: str, password: str, algorithm: str = "md5") -> bytes:
    """The long-term credential key (RFC 8489 §9.2.2): MD5 (or SHA-256) of ``username:realm:password``.

    natkit applies no SASLprep/OpaqueString processing: ASCII credentials
    (every REST credential) are unaffected.
    """
    text = f"{username}:{realm}:{password}".encode()
    if algorithm == "md5":
        return hashlib.md5(text).digest()
    if algorithm == "sha256":
        return hashlib.sha256(text).digest()
    raise ValueError(f"unknown password algorithm {algorithm!r}")


def _mac(key: bytes, data: bytes | memoryview, end: int, attr_len: int, digest: str) -> bytes:
    """HMAC over ``data[:end]`` with the header length set to cover an attribute of ``attr_len`` at ``end``."""
    h = hmac.new(key, digestmod=digest)
    h.update(bytes(data[0:2]) + _U16.pack(end - HEADER_LENGTH + 4 + attr_len))
    h.update(data[4:end])
    return h.digest()


def _crc(data: bytes | memoryview, end: int) -> int:
    crc = zlib.crc32(bytes(data[0:2]) + _U16.pack(end - HEADER_LENGTH + 8))
    return zlib.crc32(data[4:end], crc) ^ FINGERPRINT_XOR


# ---------------------------------------------------------------------------
# messages


class Message:
    """One STUN/TURN message.

    ``method`` is an int (a :class:`Method` when natkit knows it), ``cls`` a
    :class:`Class`; ``attributes`` an ordered list of ``(name, value)``.
    After :func:`decode`, ``raw`` holds the bytes, ``unknown_required`` the
    comprehension-required attribute types (< 0x8000) natkit does not know
    (RFC 8489 §6.3.1: a response with such attributes is a failed
    transaction), and attributes after MESSAGE-INTEGRITY other than
    MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are dropped (§14.5).
    """

    __slots__ = (
        "_mi256_at",
        "_mi_at",
        "attributes",
        "cls",
        "magic",
        "method",
        "raw",
        "transaction_id",
        "unknown_required",
    )

    def __init__(self, method: int, cls: int = Class.REQUEST, transaction_id: bytes | None = None,
                 attributes: Iterable[tuple[str, Any]] | dict | None = None) -> None:
        self.method = method
        self.cls = cls
        self.transaction_id = transaction_id or new_transaction_id()
        if isinstance(attributes, dict):
            attributes = attributes.items()
        self.attributes: list[tuple[str, Any]] = list(attributes or ())
        self.raw: bytes | None = None
        self.unknown_required: tuple[int, ...] = ()
        self._mi_at: int | None = None
        self._mi256_at: int | None = None
        self.magic = True

    # attribute access -----------------------------------------------------
    def get(self, name: str, default: Any = None) -> Any:
        """The first value of attribute ``name`` (RFC 8489: only the first counts), else ``default``."""
        for n, v in self.attributes:
            if n == name:
                return v
        return default

    def get_all(self, name: str) -> list[Any]:
        """Every value of attribute ``name``, in order (XOR-PEER-ADDRESS may repeat)."""
        return [v for n, v in self.attributes if n == name]

    def __contains__(self, name: object) -> bool:
        return any(n == name for n, _ in self.attributes)

    def __getitem__(self, name: str) -> Any:
        for n, v in self.attributes:
            if n == name:
                return v
        raise KeyError(name)

    def add(self, name: str, value: Any = None) -> Message:
        """Append an attribute; returns the message (for chaining)."""
        self.attributes.append((name, value))
        return self

    def names(self) -> list[str]:
        return [n for n, _ in self.attributes]

    # properties ---------------------------------------------------------------
    @property
    def is_request(self) -> bool:
        return self.cls == Class.REQUEST

    @property
    def is_success(self) -> bool:
        return self.cls == Class.RESPONSE

    @property
    def is_error(self) -> bool:
        return self.cls == Class.ERROR

    @property
    def error_code(self) -> int | None:
        """The ERROR-CODE number, None when absent."""
        ec = self.get("ERROR-CODE")
        return ec[0] if ec else None

    def describe(self) -> str:
        """"success", "401 Unauthorized", "error without ERROR-CODE", "indication"."""
        if self.cls == Class.RESPONSE:
            return "success"
        if self.cls == Class.ERROR:
            ec = self.get("ERROR-CODE")
            return f"{ec[0]} {ec[1]}".strip() if ec else "error without ERROR-CODE"
        return "request" if self.cls == Class.REQUEST else "indication"

    def __repr__(self) -> str:
        cls = Class(self.cls).name if self.cls in Class._value2member_map_ else hex(self.cls)
        return f"Message({method_name(self.method)} {cls} {self.transaction_id.hex()} {self.attributes!r})"

    # integrity ------------------------------------------------------------------
    @property
    def has_integrity(self) -> bool:
        return self._mi_at is not None or self._mi256_at is not None

    def check_integrity(self, key: bytes) -> bool | None:
        """Verify MESSAGE-INTEGRITY-SHA256 and/or MESSAGE-INTEGRITY with ``key`` (RFC 8489 §9.1.4, §9.2.5).

        Returns None when the message carries neither (unsigned), True when
        every integrity attribute present matches, False otherwise. Only a
        decoded message (with ``raw``) can be checked.
        """
        if self.raw is None or not self.has_integrity:
            return None
        raw = self.raw
        if self._mi256_at is not None:
            at = self._mi256_at
            length = _U16.unpack_from(raw, at + 2)[0]
            if not hmac.compare_digest(_mac(key, raw, at, length, "sha256")[:length], raw[at + 4:at + 4 + length]):
                return False
        if self._mi_at is not None:
            at = self._mi_at
            if not hmac.compare_digest(_mac(key, raw, at, 20, "sha1"), raw[at + 4:at + 24]):
                return False
        return True

    # encoding ---------------------------------------------------------------------
    def encode(self, key: bytes | None = None, *, integrity: str = "sha1", fingerprint: bool = False) -> bytes:
        """The message as bytes.

        With ``key``, MESSAGE-INTEGRITY (``integrity="sha1"``),
        MESSAGE-INTEGRITY-SHA256 (``"sha256"``) or both (``"both"``) are
        appended; with ``fingerprint``, FINGERPRINT comes last. Raises
        ``ValueError`` for an unknown attribute name or a value that does
        not fit its attribute (for example a host that is not an IP).
        """
        txid = self.transaction_id
        parts = []
        size = 0
        for name, value in self.attributes:
            spec = _spec_for(name)
            try:
                v = spec.encode(value, txid)
            except (struct.error, TypeError, IndexError, OverflowError, AttributeError) as exc:
                raise ValueError(f"{name}: cannot encode {value!r}: {exc}") from None
            if len(v) > 0xFFFF:
                raise ValueError(f"{name}: value of {len(v)} bytes is longer than 65535")
            pad = -len(v) & 3
            parts.append(_ATTR.pack(spec.type, len(v)) + v + (b"\x00" * pad))
            size += 4 + len(v) + pad
        body = b"".join(parts)
        mtype = message_type(self.method, self.cls)
        if key is not None:
            if integrity not in ("sha1", "sha256", "both"):
                raise ValueError(f"integrity must be sha1, sha256 or both, not {integrity!r}")
            if integrity in ("sha1", "both"):
                hdr = _HEADER.pack(mtype, len(body) + 24, MAGIC_COOKIE, txid)
                body += _ATTR.pack(_MI, 20) + hmac.new(key, hdr + body, "sha1").digest()
            if integrity in ("sha256", "both"):
                hdr = _HEADER.pack(mtype, len(body) + 36, MAGIC_COOKIE, txid)
                body += _ATTR.pack(_MI256, 32) + hmac.new(key, hdr + body, "sha256").digest()
        if fingerprint:
            hdr = _HEADER.pack(mtype, len(body) + 8, MAGIC_COOKIE, txid)
            body += _ATTR.pack(_FP, 4) + _U32.pack(zlib.crc32(hdr + body) ^ FINGERPRINT_XOR)
        if len(body) > 0xFFFF:
            raise ValueError(f"message of {len(body)} bytes of attributes is longer than 65535")
        return _HEADER.pack(mtype, len(body), MAGIC_COOKIE, txid) + body

    def __bytes__(self) -> bytes:
        return self.encode()


def is_stun(data: bytes | memoryview) -> bool:
    """True when ``data`` starts like a STUN message (top two bits 00, 20 bytes or more)."""
    return len(data) >= HEADER_LENGTH and data[0] < 0x40


def decode(data: bytes | bytearray | memoryview, *, max_attributes: int = MAX_ATTRIBUTES) -> Message:
    """Parse one STUN message (RFC 8489 §5, §14).

    Checks the header (two zero bits, length a multiple of 4 that matches
    the data), every attribute's length against its type, padding, at most
    ``max_attributes`` attributes, FINGERPRINT when present (and that
    nothing follows it). A missing magic cookie is accepted (RFC 3489
    servers); ``message.magic`` is then False.

    Raises :class:`~natkit.errors.MalformedMessage` — and only that — naming
    the attribute and byte offset. Time is linear in ``len(data)``.
    """
    data = bytes(data)
    n = len(data)
    if n < HEADER_LENGTH:
        raise MalformedMessage(f"{n} bytes, shorter than the 20-byte STUN header", offset=0)
    mtype, length, cookie, txid = _HEADER.unpack_from(data)
    if mtype & 0xC000:
        raise MalformedMessage(f"first byte 0x{data[0]:02x}: the top two bits of a STUN message are zero", offset=0)
    if length != n - HEADER_LENGTH:
        raise MalformedMessage(f"length field says {length} bytes of attributes, {n - HEADER_LENGTH} follow the header", offset=2)
    if length & 3:
        raise MalformedMessage(f"length {length} is not a multiple of 4 (RFC 8489 §5)", offset=2)
    method, cls = split_type(mtype)
    msg = Message(method, Class(cls), txid)
    try:
        msg.method = Method(method)
    except ValueError:
        pass
    msg.raw = data
    msg.magic = cookie == MAGIC_COOKIE
    attrs = msg.attributes
    unknown: list[int] = []
    pos, count, mi_seen = HEADER_LENGTH, 0, False
    while pos < n:
        count += 1
        if count > max_attributes:
            raise MalformedMessage(f"more than {max_attributes} attributes", offset=pos)
        if pos + 4 > n:
            raise MalformedMessage(f"{n - pos} bytes left, an attribute header needs 4", offset=pos)
        atype, alen = _ATTR.unpack_from(data, pos)
        end = pos + 4 + alen
        spec = BY_TYPE.get(atype)
        name = spec.name if spec else f"0x{atype:04X}"
        if end + (-alen & 3) > n:
            raise MalformedMessage(f"length {alen} (padded to {alen + (-alen & 3)}) runs past the end of the message "
                                   f"({n - pos - 4} bytes left)", attribute=name, offset=pos)
        if atype == _FP:
            value = _decode_value(BY_TYPE[_FP], data[pos + 4:end], txid, name, pos)
            if value != _crc(data, pos):
                raise MalformedMessage("FINGERPRINT does not match the message (RFC 8489 §14.7)", attribute=name, offset=pos)
            if end != n:
                raise MalformedMessage("attributes follow FINGERPRINT", attribute=name, offset=pos)
            attrs.append((name, value))
            break
        if mi_seen and atype != _MI256:
            pos = end + (-alen & 3)  # not covered by MESSAGE-INTEGRITY: ignored (RFC 8489 §14.5)
            continue
        if spec is None:
            if atype < 0x8000:
                unknown.append(atype)
            attrs.append((name, data[pos + 4:end]))
        else:
            attrs.append((name, _decode_value(spec, data[pos + 4:end], txid, name, pos)))
            if atype == _MI:
                msg._mi_at, mi_seen = pos, True
            elif atype == _MI256:
                msg._mi256_at, mi_seen = pos, True
        pos = end + (-alen & 3)
    msg.unknown_required = tuple(unknown)
    return msg


def _decode_value(spec: AttributeSpec, value: bytes, txid: bytes, name: str, pos: int) -> Any:
    try:
        return spec.decode(value, txid)
    except _Bad as exc:
        raise MalformedMessage(str(exc), attribute=name, offset=pos) from None


def peek_transaction_id(data: bytes | memoryview) -> bytes | None:
    """The transaction ID of something that looks like STUN (even when it does not parse), else None."""
    if len(data) >= HEADER_LENGTH and data[0] < 0x40:
        return bytes(data[8:20])
    return None


# ---------------------------------------------------------------------------
# convenience constructors


def request(method: int, attributes: Iterable[tuple[str, Any]] | dict | None = None) -> Message:
    """A new request with a fresh transaction ID."""
    return Message(method, Class.REQUEST, None, attributes)


def binding_request(attributes: Iterable[tuple[str, Any]] | dict | None = None, **named: Any) -> Message:
    """A Binding request (RFC 8489 §3). Keyword names use ``_`` for ``-``:
    ``binding_request(CHANGE_REQUEST=CHANGE_IP)``."""
    msg = request(Method.BINDING, attributes)
    for key, value in named.items():
        msg.add(key.replace("_", "-"), value)
    return msg
