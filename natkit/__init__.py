"""natkit: STUN/TURN infrastructure toolkit.

Public API (imported lazily, so ``import natkit`` stays cheap):

- :func:`probe` -> :class:`ProbeReport` (public address discovery, RFC 8489)
- :func:`discover_nat` -> :class:`NatReport` (RFC 5780 NAT behaviour discovery)
- :func:`relay_check` -> :class:`RelayReport` (relay-only ICE proof)
- :func:`check` -> :class:`CheckReport` (probe + relay check, embedded coturn)
- :func:`doctor` -> :class:`DoctorReport` (why relay candidates appear but calls fail)
- :class:`CoturnServer`, :class:`CoturnConfig` (coturn provisioning)
- :func:`mint` (TURN REST credentials)
- :class:`TurnClient` (asyncio), :class:`SyncTurnClient` (blocking), :class:`TurnSession` (sans-I/O):
  natkit's STUN/TURN client stack, :mod:`natkit.stun`
- :class:`NatLab` with :class:`LabSpec`, :class:`NatSpec`, :class:`HostSpec`,
  :class:`ServerSpec` (real NATs in network namespaces; docs/lab.md)
- :class:`NatkitError` and its subclasses in :mod:`natkit.errors`; :class:`Failure`,
  the structured failure every report lists (its ``exit_code`` follows one policy)
- :class:`PathMetrics`: what relay-check and natkit peer measured on a WebRTC path
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "probe": "natkit.probe",
    "ProbeReport": "natkit.probe",
    "relay_check": "natkit.relay",
    "RelayReport": "natkit.relay",
    "discover_nat": "natkit.nat",
    "NatReport": "natkit.nat",
    "check": "natkit.check",
    "CheckReport": "natkit.check",
    "CoturnServer": "natkit.coturn.server",
    "CoturnConfig": "natkit.coturn.config",
    "mint": "natkit.credentials",
    "NatLab": "natkit.lab",
    "LabSpec": "natkit.lab",
    "NatSpec": "natkit.lab",
    "HostSpec": "natkit.lab",
    "ServerSpec": "natkit.lab",
    "peer": "natkit.peer",
    "PeerOptions": "natkit.peer",
    "PeerReport": "natkit.peer",
    "SignalingServer": "natkit.signaling.server",
    "SignalConfig": "natkit.signaling.server",
    "MediaReport": "natkit.media",
    "audit": "natkit.audit",
    "AuditReport": "natkit.audit",
    "doctor": "natkit.doctor",
    "DoctorReport": "natkit.doctor",
    "NatkitError": "natkit.errors",
    "Failure": "natkit.errors",
    "PathMetrics": "natkit.webrtc.metrics",
    "TransportAddress": "natkit.model",
    "TurnClient": "natkit.stun.aio_turn",
    "SyncTurnClient": "natkit.stun.sync",
    "TurnSession": "natkit.stun.turn",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'natkit' has no attribute {name!r}")


__all__ = sorted(_LAZY)
