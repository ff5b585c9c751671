"""natkit's WebRTC session layer: aiortc peers set up one way, and one measurement of the path.

:mod:`natkit.webrtc.metrics` holds the values (:class:`PathMetrics`,
:class:`CandidateInfo`, :class:`SelectedPair`); :mod:`natkit.webrtc.session`
builds ICE servers, sets peers up (:class:`PeerSetup`) and measures a data
channel (:func:`measure`). relay-check, natkit peer and the lab agents use
both. Importing this package does not import aiortc.
"""

from .metrics import (
    CandidateInfo,
    EchoSeries,
    PathMetrics,
    SelectedPair,
    echo_series,
    parse_candidates,
    percentile,
)
from .session import (
    IceServer,
    PathChannel,
    PeerSetup,
    ice_url,
    measure,
    resolve_ice_servers,
    rtc_configuration,
    rto_from_rtt,
)

__all__ = [
    "CandidateInfo", "EchoSeries", "IceServer", "PathChannel", "PathMetrics", "PeerSetup", "SelectedPair",
    "echo_series", "ice_url", "measure", "parse_candidates", "percentile", "resolve_ice_servers",
    "rtc_configuration", "rto_from_rtt",
]
