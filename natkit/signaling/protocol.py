"""The natkit signaling protocol (``natkit.signal/1``): pure validation, no I/O.

One JSON object per WebSocket text frame, always with a string ``type``.

Client to server:

========== =============================================================
type       fields
========== =============================================================
join       ``room`` (1-64 of ``A-Za-z0-9_.:-``), ``token`` (when the server
           has one), ``meta`` (optional object, at most 1 KiB as JSON,
           handed to the other peers: e.g. ``{"agent": "natkit-peer"}``)
offer      ``sdp`` (string), ``to`` (optional peer id)
answer     ``sdp`` (string), ``to`` (optional peer id)
candidate  ``candidate``: ``{"candidate", "sdpMid", "sdpMLineIndex",
           "usernameFragment"}`` or null (end of candidates), ``to``
bye        ``reason`` (optional string), ``to`` (optional)
ping       nothing: the server answers ``pong`` (keeps an idle peer alive)
========== =============================================================

Server to client: ``joined`` (``room``, ``id``, ``peers``: ``[{"id", "meta"}]``,
``room_size``), ``peer-joined`` (``id``, ``meta``), ``peer-left`` (``id``,
``reason``), ``pong``, relayed ``offer``/``answer``/``candidate``/``bye`` with
``from`` added, and ``error`` (``code``, ``message``, ``ref``: the type of the
offending message when known).

Roles are deterministic: the peer that joins a room where others already are
(``joined.peers`` not empty) sends the offer; peers already in the room wait
for it. Relayed messages without ``to`` go to every other peer of the room.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import ProtocolError  # raised here; part of natkit's error tree

VERSION = 1
ROOM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
PEER_ID_RE = re.compile(r"^[0-9a-f]{8,32}$")
MAX_META_BYTES = 1024
MAX_CANDIDATE_CHARS = 1024
MAX_REASON_CHARS = 200
RELAYED = ("offer", "answer", "candidate", "bye")
CLIENT_TYPES = ("join", "ping") + RELAYED

# error codes sent in {"type": "error", "code": ...}
BAD_JSON = "bad-json"
NOT_OBJECT = "not-object"
UNKNOWN_TYPE = "unknown-type"
BAD_FIELD = "bad-field"
TOO_LARGE = "too-large"
BINARY = "binary-frame"
NOT_JOINED = "not-joined"
ALREADY_JOINED = "already-joined"
ROOM_FULL = "room-full"
BAD_TOKEN = "bad-token"
NO_SUCH_PEER = "no-such-peer"
RATE_LIMITED = "rate-limited"
SERVER_FULL = "server-full"
TOO_MANY_ERRORS = "too-many-errors"
IDLE = "idle-timeout"


def error_message(code: str, message: str, ref: str | None = None) -> dict:
    """``{"type": "error", "code", "message", "ref"}``."""
    return {"type": "error", "code": code, "message": message, "ref": ref}


def _opt_str(msg: dict, key: str, max_chars: int, ref: str) -> str | None:
    value = msg.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_chars:
        raise ProtocolError(BAD_FIELD, f"{key!r} must be a string of at most {max_chars} characters", ref)
    return value


def _to(msg: dict, ref: str) -> str | None:
    to = msg.get("to")
    if to is None:
        return None
    if not isinstance(to, str) or not PEER_ID_RE.match(to):
        raise ProtocolError(BAD_FIELD, "'to' must be a peer id", ref)
    return to


def parse_client_message(text: str | bytes, max_bytes: int) -> dict:
    """Validate one client frame and return the normalised message.

    ``text``: the frame's payload (str; bytes are accepted for tests);
    ``max_bytes``: the size limit of a message, in UTF-8 bytes.

    The result holds only the known fields of its type (extra fields are
    dropped, never relayed). Raises :class:`ProtocolError` with the code to
    send back: ``too-large``, ``bad-json``, ``not-object``, ``unknown-type``
    or ``bad-field``.
    """
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolError(TOO_LARGE, f"message of {size} bytes exceeds the limit of {max_bytes} bytes")
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(BAD_JSON, f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(NOT_OBJECT, "a message must be a JSON object")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(UNKNOWN_TYPE, "a message needs a string 'type'")
    ref = kind[:32]
    if kind not in CLIENT_TYPES:
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {ref!r} (expected one of {', '.join(CLIENT_TYPES)})", ref)
    out: dict[str, Any] = {"type": kind}
    if kind == "join":
        room = msg.get("room")
        if not isinstance(room, str) or not ROOM_RE.match(room):
            raise ProtocolError(BAD_FIELD, "'room' must be 1-64 characters of A-Z a-z 0-9 _ . : - (starting alphanumeric)", ref)
        out["room"] = room
        token = _opt_str(msg, "token", 256, ref)
        if token is not None:
            out["token"] = token
        meta = msg.get("meta")
        if meta is not None:
            if not isinstance(meta, dict) or len(json.dumps(meta)) > MAX_META_BYTES:
                raise ProtocolError(BAD_FIELD, f"'meta' must be an object of at most {MAX_META_BYTES} bytes as JSON", ref)
            out["meta"] = meta
        else:
            out["meta"] = {}
    elif kind in ("offer", "answer"):
        sdp = msg.get("sdp")
        if not isinstance(sdp, str) or not sdp.startswith("v=0"):
            raise ProtocolError(BAD_FIELD, f"{kind} needs an 'sdp' string starting with v=0", ref)
        out["sdp"] = sdp
        out["to"] = _to(msg, ref)
    elif kind == "candidate":
        if "candidate" not in msg:
            raise ProtocolError(BAD_FIELD, "candidate needs a 'candidate' object (or null for end of candidates)", ref)
        cand = msg["candidate"]
        if cand is not None:
            if not isinstance(cand, dict):
                raise ProtocolError(BAD_FIELD, "'candidate' must be an object or null", ref)
            line = cand.get("candidate")
            if not isinstance(line, str) or len(line) > MAX_CANDIDATE_CHARS:
                raise ProtocolError(BAD_FIELD, f"'candidate.candidate' must be a string of at most {MAX_CANDIDATE_CHARS} characters", ref)
            mid = cand.get("sdpMid")
            if mid is not None and (not isinstance(mid, str) or len(mid) > 32):
                raise ProtocolError(BAD_FIELD, "'candidate.sdpMid' must be a short string or null", ref)
            index = cand.get("sdpMLineIndex")
            if index is not None and (not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 1024):
                raise ProtocolError(BAD_FIELD, "'candidate.sdpMLineIndex' must be an integer 0..1023 or null", ref)
            ufrag = cand.get("usernameFragment")
            if ufrag is not None and (not isinstance(ufrag, str) or len(ufrag) > 256):
                raise ProtocolError(BAD_FIELD, "'candidate.usernameFragment' must be a string or null", ref)
            cand = {"candidate": line, "sdpMid": mid, "sdpMLineIndex": index, "usernameFragment": ufrag}
        out["candidate"] = cand
        out["to"] = _to(msg, ref)
    elif kind == "bye":
        out["reason"] = _opt_str(msg, "reason", MAX_REASON_CHARS, ref)
        out["to"] = _to(msg, ref)
    return out


def relayed(msg: dict, sender: str) -> dict:
    """The message as forwarded to other peers: ``to`` removed, ``from`` added."""
    out = {k: v for k, v in msg.items() if k != "to"}
    out["from"] = sender
    return out


def encode(msg: dict) -> str:
    """One frame's text (compact JSON)."""
    return json.dumps(msg, separators=(",", ":"))
