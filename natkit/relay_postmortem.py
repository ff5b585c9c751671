"""Post-mortem of a failed relay check, with natkit's own TURN client.

relay-check's peers are aiortc/aioice. When they fail, aioice says little:
an Allocate "timed out", ICE "did not connect". Yet a server may have
answered in ways aioice discards (RFC 8489 §9.2.5: an answer to an
authenticated request without a valid MESSAGE-INTEGRITY is dropped, so an
unsigned 400 to a wrong password or an unsigned ChannelBind success look like
silence), or relay only some of the ways TURN can carry data. This module
asks the server again with natkit's own client, which sees every answer, and
names what happened (the pre-flight Allocate itself runs on natkit's client,
:func:`natkit.relay.preflight_allocate`, so it needs no post-mortem):

* :func:`no_connectivity`: relay candidates were gathered but ICE found no
  pair. Two allocations relay to each other by CreatePermission + Send
  indication (RFC 8656 §9, §11), then by ChannelBind + ChannelData (§12):
  which of them worked -> :class:`NoRelayConnectivity` (exit 7) with the
  finding as its message, the evidence in ``details`` and what to check.

It runs within a slice of relay-check's own ``--timeout`` kept for it
(:func:`reserve`). The post-mortem sends nothing but requests to the TURN
server and data between two relayed addresses of that same server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl

from .errors import (
    NatkitError,
    NoRelayConnectivity,
    StunTimeout,
)
from .model import TransportAddress, format_duration
from .uri import ServerURI

CHANNEL_BIND_ATTEMPTS = 3  # aioice binds once per send and retries on the next one


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


async def _client(uri: ServerURI, addr: TransportAddress, username: str, password: str, timeout: float,
                  ssl_context: ssl.SSLContext | None):
    from .stun.aio import TurnClient

    transport = "tls" if uri.secure else uri.transport
    return await TurnClient.open(addr, transport=transport, username=username, password=password, ssl=ssl_context,
                                 server_hostname=uri.host, timeout=timeout)


async def examine_relay(uri: ServerURI, addr: TransportAddress, username: str, password: str, *, timeout: float,
                        ssl_context: ssl.SSLContext | None = None) -> RelayPostmortem:
    """Two allocations on the server relay to each other: Send indications, then ChannelBind + ChannelData.

    ``timeout``: the whole post-mortem's budget in seconds (each request gets
    a sixth of it). Never raises for what the server does; the answers are
    in the returned :class:`RelayPostmortem`.
    """
    per = max(0.1, timeout / 6.0)
    lines: list[str] = []
    clients = []
    try:
        try:
            for _ in range(2):
                client = await _client(uri, addr, username, password, per, ssl_context)
                clients.append(client)
                reply = await client.allocate(lifetime=60, check=False)
                if not reply.ok or client.relayed is None:
                    lines.append(f"post-mortem Allocate → {reply.describe() if not reply.ok else 'success without XOR-RELAYED-ADDRESS'}")
                    return RelayPostmortem(None, None, (), False, None, tuple(lines), False)
        except NatkitError as exc:
            lines.append(f"post-mortem Allocate: {exc.message}")
            return RelayPostmortem(None, None, (), False, None, tuple(lines), False)
        a, b = clients
        return await _relay_both_ways(a, b, per, lines)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def _relay_both_ways(a, b, per: float, lines: list[str]) -> RelayPostmortem:
    ra, rb = a.relayed, b.relayed
    lines.append(f"post-mortem: allocations {ra} (A) and {rb} (B)")
    try:
        p1 = await a.create_permission(rb, check=False)
        p2 = await b.create_permission(ra, check=False)
    except NatkitError as exc:
        lines.append(f"CreatePermission: {exc.message}")
        return RelayPostmortem(None, None, (), False, None, tuple(lines), False)
    lines.append(f"CreatePermission A→B {p1.describe()}, B→A {p2.describe()}")
    if not (p1.ok and p2.ok):
        return RelayPostmortem(False, None, (), False, None, tuple(lines), False)
    payload = b"natkit post-mortem " + os.urandom(8).hex().encode()
    a.send(rb, payload)  # no channel yet: a Send indication
    send_ok = await _arrives(b, payload, per)
    lines.append(f"Send indication A→B: {'relayed' if send_ok else 'NOT relayed'}")
    answers = []
    channel = 0
    for _ in range(CHANNEL_BIND_ATTEMPTS):
        pending = a.session.channel_bind(rb)  # the same number each time (RFC 8656 §12.1 rebinding)
        channel = dict(pending.attributes)["CHANNEL-NUMBER"]
        try:
            reply = await a.call(pending, check=False)
        except StunTimeout:
            answers.append("no answer")
            continue
        except NatkitError:
            answers.append("malformed answer")
            continue
        answers.append(_classify(reply))
        if answers[-1] == "signed success":
            break
    lines.append("ChannelBind A→B: " + ", ".join(answers))
    a.send_channel(channel, payload)  # even unconfirmed: did the server bind it anyway?
    data_ok = await _arrives(b, payload, per)
    lines.append(f"ChannelData A→B on 0x{channel:04x}: {'relayed' if data_ok else 'NOT relayed'}")
    confirmed = "signed success" in answers
    return RelayPostmortem(True, send_ok, tuple(answers), confirmed, data_ok, tuple(lines), confirmed and data_ok and send_ok)


def _classify(reply) -> str:
    if not reply.ok:
        return reply.response.describe()
    return {True: "signed success", False: "success with a bad MESSAGE-INTEGRITY", None: "unsigned success"}[reply.signed]


async def _arrives(client, payload: bytes, timeout: float) -> bool:
    """A Data indication or ChannelData carrying ``payload`` reaches ``client`` within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        got = await client.recv(left)
        if got is None:
            return False
        if got.data == payload:
            return True
    return False


async def no_connectivity(uri: ServerURI, addr: TransportAddress, username: str, password: str, *, timeout: float,
                          waited: float, ice_state: str, ssl_context: ssl.SSLContext | None = None) -> NoRelayConnectivity:
    """The error to raise when relay candidates were gathered but no pair connected within ``waited`` seconds."""
    pm = await examine_relay(uri, addr, username, password, timeout=timeout, ssl_context=ssl_context)
    return NoRelayConnectivity(
        f"relay candidates were gathered but no candidate pair connected within {format_duration(waited)} (ICE state {ice_state}): {pm.summary()}",
        server=str(uri), step="connectivity", hint=pm.hint(), details=list(pm.lines))
