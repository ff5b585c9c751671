"""Capacity tests of a TURN server that measure the server, not the generator (``natkit turn load``).

    from natkit.load import LoadConfig, run_load
    report = run_load(LoadConfig("audio", TransportAddress("127.0.0.1", 3478), username=u, password=p, sessions=50))
    report.media.loss_pct, report.verdict

=================  ==========================================================
module             what it owns
=================  ==========================================================
``config``         :class:`LoadConfig`, the profiles and their traffic shapes
``stats``          histograms/percentiles, RFC 3550 jitter, loss, reordering
``packet``         the numbered, time-stamped payload
``media``          media sessions, the UDP echo peer, pacing (worker side)
``alloc``          the alloc and hold workloads (worker side)
``worker``         one worker process (asyncio), steered over a pipe
``runner``         the coordinator: workers, steps, Ctrl-C, self-measurement
``drive``          the profiles' steps and pass/fail rules
``build``          final counters → :class:`LoadReport`, verdict, cross-check
``report``         the report (schema ``natkit.load/1``) and baselines
``sysmon``         /proc: CPU of processes and threads, UDP drops
``coturn_log``     coturn's own log: limits at start, per-session usage
``html``           ``--report FILE.html`` (matplotlib, optional extra)
``locust``         Locust users on the same TURN client (``pip install natkit[load]``)
=================  ==========================================================

Every TURN message goes through natkit's one client stack
(:class:`natkit.stun.aio.TurnClient` in the workers,
:class:`natkit.stun.sync.SyncTurnClient` in Locust users).
"""

from __future__ import annotations

from .config import PROFILES, LoadConfig
from .report import SCHEMA, LoadReport
from .runner import run_load

__all__ = ["PROFILES", "SCHEMA", "LoadConfig", "LoadReport", "run_load"]
