"""Post-mortem of a failed relay check, with natkit's own TURN client.

relay-check's peers are aiortc/aioice. When they fail, aioice says little:
an Allocate "timed out", ICE "did not connect". Yet a server may have
answered in ways aioice discards (RFC 8489 §9.2.5: an answer to an
authenticated request without a valid MESSAGE-INTEGRITY is dropped, so an
unsigned 400 to a wrong password or an unsigned ChannelBind success look like
silence), or relay only some of the ways TURN can carry data. This module
asks the server again with natkit's own client, which sees every answer, and
names what happened:

* :func:`unanswered_allocate`: aioice's Allocate got no answer. Was the 401
  challenge answered and the credentials then refused (unsigned 400 or
  silence)? -> :class:`AuthenticationRefused` (exit 5) instead of "unreachable".
* :func:`no_connectivity`: relay candidates were gathered but ICE found no
  pair. Two allocations relay to each other by CreatePermission + Send
  indication (RFC 8656 §9, §11), then by ChannelBind + ChannelData (§12):
  which of them worked -> :class:`NoRelayConnectivity` (exit 7) with the
  finding as its message, the evidence in ``details`` and what to check.

Both run within a slice of relay-check's own ``--timeout`` kept for them
(:func:`reserve`). The post-mortem sends nothing but requests to the TURN
server and data between two relayed addresses of that same server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl
import struct

from .errors import (
    AllocationRefused,
    AuthenticationRefused,
    NatkitError,
    NoRelayConnectivity,
    StunTimeout,
    TurnError,
)
from .model import TransportAddress, format_duration
from .uri import ServerURI

CHANNEL_BIND_ATTEMPTS = 3  # aioice binds once per send and retries on the next one
_CHANNEL = 0x4000  # RFC 8656 §12: 0x4000..0x4FFF


def reserve(timeout: float) -> float:
    """Seconds of a ``timeout`` budget kept for a post-mortem: a quarter, within 0.3..3 s."""
    return min(3.0, max(0.3, timeout / 4.0), timeout / 2.0)


@dataclasses.dataclass(frozen=True)
class RelayPostmortem:
    """What the server did for natkit's own client (one field per way of relaying, None: not reached).

    ``permission``: CreatePermission toward the other allocation's relayed
    address accepted; ``send_relayed``: a Send indication arrived as a Data
    indication; ``channel_bind``: the answer to each ChannelBind attempt
    ("signed success", "unsigned success", "403 Forbidden", "no answer", ...);
    ``channel_confirmed``: one was a success signed with the session key
    (what aioice needs); ``channeldata_relayed``: ChannelData arrived at the
    other allocation. ``lines``: the evidence, step by step.
    """

    permission: bool | None
    send_relayed: bool | None
    channel_bind: tuple[str, ...]
    channel_confirmed: bool
    channeldata_relayed: bool | None
    lines: tuple[str, ...]
    relays_work: bool  # permission, channel and ChannelData all worked: the TURN relay is not the problem

    def summary(self) -> str:
        """One sentence: what went wrong at the TURN level (or that nothing did)."""
        if self.permission is None:
            return "; ".join(self.lines[-1:]) or "the post-mortem could not allocate"
        if self.permission is False:
            return "the server refuses its own relayed addresses as peers (CreatePermission refused)"
        if self.relays_work:
            return "the server relays between two allocations (Send, ChannelBind and ChannelData all worked for natkit's own client)"
        parts = []
        if not self.channel_confirmed:
            answers = ", ".join(f"{n} {a}" for a, n in _counts(self.channel_bind))
            parts.append(f"ChannelBind never confirmed: {len(self.channel_bind)} attempts ({answers})")
        if self.channeldata_relayed is False:
            parts.append("the server did not relay ChannelData")
        if self.send_relayed is True:
            parts.append("Send indications are relayed")
        elif self.send_relayed is False:
            parts.append("Send indications are not relayed either")
        return "; ".join(parts)

    def hint(self) -> str:
        if self.permission is False:
            return ("allow the server's own relay address as a peer (coturn: allowed-peer-ip=RELAY_IP before the denied-peer-ip "
                    "list; on loopback also allow-loopback-peers)")
        if self.relays_work:
            return "the TURN relay works; a firewall between the peers and the relay ports, or the ICE checks themselves, failed"
        tips = []
        if any(a == "unsigned success" for a in self.channel_bind):
            tips.append("the server must sign its ChannelBind answers with MESSAGE-INTEGRITY (RFC 8489 §9.2.4; aioice discards "
                        "unsigned ones, RFC 8489 §9.2.5)")
        if self.channeldata_relayed is False:
            tips.append("ChannelData must be relayed (RFC 8656 §12.6): check the server and any proxy or load balancer in front of "
                        "it that drops non-STUN packets")
        if self.send_relayed:
            tips.append("browsers relay through such a server with Send indications, so they may work where aiortc does not")
        return "; ".join(tips) or "check the server's TURN logs for the two allocations"


def _counts(items: tuple[str, ...]) -> list[tuple[str, int]]:
    out: dict[str, int] = {}
    for a in items:
        out[a] = out.get(a, 0) + 1
    return list(out.items())


async def _session(uri: ServerURI, addr: TransportAddress, username: str, password: str, timeout: float,
                   ssl_context: ssl.SSLContext | None):
    from .audit import _Conn, _Session

    kind = "tls" if uri.secure else uri.transport
    if kind == "tls" and ssl_context is None:
        from .relay import tls_context

        ssl_context = tls_context(uri)
    conn = await _Conn.open(addr.host, addr.port, kind, ssl=ssl_context, server_hostname=uri.host, timeout=timeout)
    return _Session(conn, username, password, timeout)


def _refusal_error(resp, sess, server: str) -> NatkitError:
    why = sess.refusal(resp)
    code, reason = resp.code, (resp.attrs.get("ERROR-CODE") or (None, ""))[1]
    if why:
        return AuthenticationRefused(why, server=server, step="allocate", error_code=code, reason=reason,
                                     hint="check the username/password or the shared secret (and the clock, for REST credentials)")
    if code in (403, 437, 442, 486, 508):
        return AllocationRefused(f"allocation refused: {resp.describe()}", server=server, step="allocate", error_code=code, reason=reason)
    return TurnError(f"Allocate failed: {resp.describe()}", server=server, step="allocate", error_code=code, reason=reason)


async def unanswered_allocate(uri: ServerURI, addr: TransportAddress, username: str, password: str, *, timeout: float,
                              waited: float, ssl_context: ssl.SSLContext | None = None) -> NatkitError:
    """The error to raise when aioice's pre-flight Allocate got no answer within ``waited`` seconds.

    Asks once more with natkit's client (``timeout`` seconds at most):
    :class:`AuthenticationRefused` when the server answers the 401 challenge
    and then refuses the credentials (401/441, an unsigned 400) or goes
    silent after them; :class:`AllocationRefused`/:class:`TurnError` for
    other answers aioice dropped; else :class:`StunTimeout`.
    """
    from .audit import _CredentialsRefused, _MalformedResponse, _RequestTimeout

    server = str(uri)
    silent = StunTimeout(f"no Allocate answer within {format_duration(waited)}", server=server, step="allocate")
    try:
        sess = await _session(uri, addr, username, password, timeout, ssl_context)
    except (OSError, NatkitError):
        return silent
    try:
        resp = await sess.allocate(lifetime=60)
    except _CredentialsRefused as exc:
        exc.server, exc.step = server, "allocate"
        return exc
    except (_RequestTimeout, _MalformedResponse, OSError):
        return silent
    finally:
        await sess.close()
    if resp.is_success:  # answered natkit, not aioice: say what aioice could not accept
        return TurnError("the server answered natkit's own Allocate but not aioice's (an answer aioice discards?)",
                         server=server, step="allocate")
    return _refusal_error(resp, sess, server)


async def examine_relay(uri: ServerURI, addr: TransportAddress, username: str, password: str, *, timeout: float,
                        ssl_context: ssl.SSLContext | None = None) -> RelayPostmortem:
    """Two allocations on the server relay to each other: Send indications, then ChannelBind + ChannelData.

    ``timeout``: the whole post-mortem's budget in seconds (each request gets
    a sixth of it). Never raises for what the server does; the answers are
    in the returned :class:`RelayPostmortem`.
    """
    from .audit import _MalformedResponse, _RequestTimeout

    per = max(0.1, timeout / 6.0)
    lines: list[str] = []
    sessions = []
    try:
        try:
            for _ in range(2):
                sess = await _session(uri, addr, username, password, per, ssl_context)
                sessions.append(sess)
                resp = await sess.allocate(lifetime=60)
                if not resp.is_success or sess.relayed is None:
                    lines.append(f"post-mortem Allocate → {resp.describe() if not resp.is_success else 'success without XOR-RELAYED-ADDRESS'}")
                    return RelayPostmortem(None, None, (), False, None, tuple(lines), False)
        except (_RequestTimeout, _MalformedResponse, AuthenticationRefused, OSError) as exc:
            lines.append(f"post-mortem Allocate: {getattr(exc, 'message', None) or exc}")
            return RelayPostmortem(None, None, (), False, None, tuple(lines), False)
        a, b = sessions
        return await _relay_both_ways(a, b, per, lines)
    finally:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


async def _relay_both_ways(a, b, per: float, lines: list[str]) -> RelayPostmortem:
    from ._aioice import Method
    from .audit import _MalformedResponse, _RequestTimeout

    ra, rb = a.relayed, b.relayed
    lines.append(f"post-mortem: allocations {ra[0]}:{ra[1]} (A) and {rb[0]}:{rb[1]} (B)")
    try:
        p1 = await a.call(Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": rb})
        p2 = await b.call(Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": ra})
    except (_RequestTimeout, _MalformedResponse) as exc:
        lines.append(f"CreatePermission: {exc.message}")
        return RelayPostmortem(None, None, (), False, None, tuple(lines), False)
    lines.append(f"CreatePermission A→B {p1.describe()}, B→A {p2.describe()}")
    if not (p1.is_success and p2.is_success):
        return RelayPostmortem(False, None, (), False, None, tuple(lines), False)
    payload = b"natkit post-mortem " + os.urandom(8).hex().encode()
    send = _send_indication(a, rb, payload)
    send_ok = await _arrives(b, payload, per)
    lines.append(f"Send indication A→B: {'relayed' if send_ok else 'NOT relayed'} ({len(send)} bytes)")
    answers = []
    for _ in range(CHANNEL_BIND_ATTEMPTS):
        try:
            r = await a.call(Method.CHANNEL_BIND, {"XOR-PEER-ADDRESS": rb, "CHANNEL-NUMBER": _CHANNEL})
        except _RequestTimeout:
            answers.append("no answer")
            continue
        except _MalformedResponse:
            answers.append("malformed answer")
            continue
        answers.append(_classify_signed(r, a.key))
        if answers[-1] == "signed success":
            break
    lines.append("ChannelBind A→B: " + ", ".join(answers))
    a.conn.send(struct.pack("!HH", _CHANNEL, len(payload)) + payload)
    data_ok = await _arrives(b, payload, per)
    lines.append(f"ChannelData A→B on 0x{_CHANNEL:04x}: {'relayed' if data_ok else 'NOT relayed'}")
    confirmed = "signed success" in answers
    return RelayPostmortem(True, send_ok, tuple(answers), confirmed, data_ok, tuple(lines), confirmed and data_ok and send_ok)


def _classify_signed(resp, key: bytes | None) -> str:
    if not resp.is_success:
        return resp.describe()
    if not resp.signed:
        return "unsigned success"
    from ._aioice import parse_message

    try:
        ok = key is not None and parse_message(resp.raw).check_message_integrity(key)
    except ValueError:
        ok = False
    return "signed success" if ok else "success with a bad MESSAGE-INTEGRITY"


def _send_indication(sess, peer: tuple[str, int], payload: bytes) -> bytes:
    from ._aioice import Class, Message, Method

    msg = Message(message_method=Method.SEND, message_class=Class.INDICATION,
                  attributes={"XOR-PEER-ADDRESS": peer, "DATA": payload})
    data = bytes(msg)
    sess.conn.send(data)
    return data


async def _arrives(sess, payload: bytes, timeout: float) -> bool:
    """A Data indication or ChannelData carrying ``payload`` reaches ``sess`` within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        try:
            item = await asyncio.wait_for(sess.conn.inbox.get(), left)
        except TimeoutError:
            return False
        if item[0] == "stun" and item[1].attrs.get("DATA") == payload:
            return True
        if item[0] == "channel" and item[2] == payload:
            return True
    return False


async def no_connectivity(uri: ServerURI, addr: TransportAddress, username: str, password: str, *, timeout: float,
                          waited: float, ice_state: str, ssl_context: ssl.SSLContext | None = None) -> NoRelayConnectivity:
    """The error to raise when relay candidates were gathered but no pair connected within ``waited`` seconds."""
    pm = await examine_relay(uri, addr, username, password, timeout=timeout, ssl_context=ssl_context)
    return NoRelayConnectivity(
        f"relay candidates were gathered but no candidate pair connected within {format_duration(waited)} (ICE state {ice_state}): {pm.summary()}",
        server=str(uri), step="connectivity", hint=pm.hint(), details=list(pm.lines))
