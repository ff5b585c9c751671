"""coturn provisioning: configuration (pure), backends (docker, native), managed servers."""

from .config import DEFAULT_DENIED_PEER_RANGES, CoturnConfig
from .server import (
    CoturnServer,
    ServerInfo,
    choose_backend,
    get_server,
    list_servers,
    stop_all,
)

__all__ = [
    "DEFAULT_DENIED_PEER_RANGES",
    "CoturnConfig",
    "CoturnServer",
    "ServerInfo",
    "choose_backend",
    "get_server",
    "list_servers",
    "stop_all",
]
