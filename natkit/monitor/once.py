"""``natkit monitor once``: one round of the monitor's probes over every target, as one report."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from ..errors import Failure, exit_code_for
from .config import MonitorConfig
from .probe import ProbeResult, probe

SCHEMA = "natkit.monitor/1"


@dataclasses.dataclass(frozen=True)
class MonitorReport:
    """One round (JSON schema ``natkit.monitor/1``): a :class:`ProbeResult` per (target, transport).

    ``failures`` holds every result's failures; ``exit_code`` the most
    severe one's code, as ``natkit check`` (4 unreachable, 5 credentials
    refused, 6 allocation refused, 7 no relay, 1 a failed check such as a
    wrong relayed address).
    """

    schema: str
    ok: bool
    exit_code: int
    results: tuple[ProbeResult, ...]
    failures: tuple[Failure, ...]
    duration_ms: float


async def run_once(config: MonitorConfig) -> MonitorReport:
    """Probe every target of ``config`` once, all at once (each bounded by ``config.timeout``)."""
    started = time.monotonic()
    results = await asyncio.gather(*(probe(t, timeout=config.timeout, echoes=config.echoes, max_echo_loss=config.max_echo_loss) for t in config.targets))
    failures = tuple(f for r in results for f in r.failures)
    return MonitorReport(schema=SCHEMA, ok=all(r.ok for r in results), exit_code=exit_code_for(failures),
                         results=tuple(results), failures=failures, duration_ms=(time.monotonic() - started) * 1000.0)
