"""Shared value types and the JSON rendering of report dataclasses.

No I/O here. Reports are frozen dataclasses; :func:`to_jsonable` turns any of
them into plain JSON values (addresses become ``"ip:port"`` strings,
``[v6]:port`` for IPv6, enums their value).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from typing import Any


@dataclasses.dataclass(frozen=True, order=True)
class TransportAddress:
    """An IP address and a port: RFC 8489 §3's *transport address*.

    ``host`` is an IP literal without brackets; ``port`` is 0..65535.
    """

    host: str
    port: int

    @classmethod
    def of(cls, addr: tuple) -> "TransportAddress":
        """Build from a socket address tuple ``(host, port, ...)``."""
        return cls(str(addr[0]), int(addr[1]))

    @property
    def family(self) -> int:
        """4 or 6."""
        return ipaddress.ip_address(self.host).version

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def to_jsonable(value: Any) -> Any:
    """Convert a report (dataclass tree) into JSON-serialisable values."""
    if isinstance(value, TransportAddress):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float):
        return round(value, 3)
    return value


def format_duration(seconds: float) -> str:
    """A duration for people: ``"50 ms"``, ``"2.5 s"``, ``"10 s"``, ``"120 s"``.

    Below one second in whole milliseconds; below a minute rounded to 0.1 s
    (``9.99995`` is ``"10 s"``, never ``"9.99995s"``); whole seconds above.
    """
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return f"{seconds} s"
    if abs(seconds) < 0.9995:
        return f"{seconds * 1000:.0f} ms"
    if abs(seconds) < 59.95:
        text = f"{seconds:.1f}"
        return (text[:-2] if text.endswith(".0") else text) + " s"
    return f"{seconds:.0f} s"
