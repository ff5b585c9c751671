"""``natkit monitor``: outside-in monitoring of TURN servers (Prometheus metrics, /probe, /healthz).

* :mod:`natkit.monitor.config`: the TOML config (targets, credentials, interval, checks).
* :mod:`natkit.monitor.probe`: one probe on natkit's TURN client: Binding, Allocate,
  a relay-only data path between two allocations, the ``turns:`` certificate.
* :mod:`natkit.monitor.metrics`: the Prometheus collector over the latest results.
* :mod:`natkit.monitor.server`: the scheduler and the HTTP endpoints.
* :mod:`natkit.monitor.once`: one round as a report (``natkit monitor once --json``).

See docs/monitor.md.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "MonitorConfig": "config", "Target": "config", "CredentialSource": "config", "load_config": "config",
    "parse_config": "config", "cli_target": "config",
    "ProbeResult": "probe", "TlsFacts": "probe", "probe": "probe",
    "MonitorState": "metrics",
    "Monitor": "server", "serve_forever": "server",
    "MonitorReport": "once", "run_once": "once",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = ["CredentialSource", "Monitor", "MonitorConfig", "MonitorReport", "MonitorState", "ProbeResult", "Target",
           "TlsFacts", "cli_target", "load_config", "parse_config", "probe", "run_once", "serve_forever"]
