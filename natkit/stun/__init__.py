"""natkit's STUN/TURN client stack, sans-I/O at its core.

=====================  ======================================================
module                 what it owns
=====================  ======================================================
``stun.codec``         messages and attributes (RFC 8489/8656/5780/6062/8445),
                       MESSAGE-INTEGRITY(-SHA256), FINGERPRINT, keys
``stun.framing``       ChannelData and the TCP/TLS stream framer
``stun.transaction``   the RFC 8489 §6.2.1 retransmission state machine
``stun.turn``          the TURN client session (credentials, nonces,
                       allocation, permissions, channels) and the
                       ERROR-CODE → natkit error mapping
``stun.aio``           asyncio drivers: UDP endpoint, stream connection
``stun.aio_turn``      the asyncio TURN client (``TurnClient``)
``stun.sync``          blocking drivers (plain sockets; gevent-friendly)
=====================  ======================================================

Only the standard library is imported here: ``natkit probe`` stays light.
"""

_AIO_NAMES = frozenset({
    "UdpStunEndpoint", "StreamConnection", "StunResponse", "binding_request", "resolve",
    "client_ssl_context", "stream_transaction",
})


def __getattr__(name: str):  # the asyncio driver's names, imported on first use
    if name in _AIO_NAMES:
        from . import aio

        return getattr(aio, name)
    if name == "TurnClient":
        from .aio_turn import TurnClient

        return TurnClient
    raise AttributeError(f"module 'natkit.stun' has no attribute {name!r}")
