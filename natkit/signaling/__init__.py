"""WebSocket signaling for natkit: rooms, offer/answer/trickle relay, the browser test page.

:class:`SignalingServer` (``natkit signal serve``) and :class:`SignalingClient`
(``natkit peer``); the message format is in :mod:`natkit.signaling.protocol`.
aiohttp is imported only when a server or client starts.
"""

from __future__ import annotations

from .protocol import ProtocolError, parse_client_message

__all__ = [
    "ProtocolError", "parse_client_message",
    "SignalConfig", "SignalingServer", "SignalingClient",
    "SignalingError", "SignalingUnreachable", "SignalingAuthRefused", "RoomFull",
]


def __getattr__(name: str):
    if name in ("SignalConfig", "SignalingServer"):
        from . import server

        return getattr(server, name)
    if name in ("SignalingClient", "SignalingError", "SignalingUnreachable", "SignalingAuthRefused", "RoomFull"):
        from . import client

        return getattr(client, name)
    raise AttributeError(name)
