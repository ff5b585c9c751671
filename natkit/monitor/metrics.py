"""Prometheus metrics of ``natkit monitor`` (``prometheus_client``): one collector over the latest probe results.

Every series carries ``target`` (the configured name) and ``transport``
(udp, tcp, tls), both from the config; ``errors_total`` adds a ``step`` and
a ``code`` from fixed sets (:data:`~natkit.monitor.probe.ERROR_LABELS`) and
``credential_accepted`` a ``kind`` from the config. One label value comes
from traffic: ``relayed_address_info{seen}`` is the IP of the server's
XOR-RELAYED-ADDRESS (RFC 8656 §18.5), always an IP address (decoded, never
free text). Only the latest is exposed, so there is one live series per
(target, transport) and the number of series stays fixed by the config; a
server that hands out another relay IP starts a new series in Prometheus'
TSDB (the old one goes stale), which is what makes the change visible.
Series for a value a probe could not measure are left out ("not checked
is not false"): a dead server has ``probe_success 0`` and no
``binding_rtt_seconds``; a probe that raised (an internal error, a bug in
natkit) has ``probe_success 0``, ``errors_total{step="probe",code="internal"}``
and no ``up``: the server was not asked.

``last_probe_timestamp_seconds`` is when the last probe that asked the
server ended (set to the monitor's start for every configured target, so a
target that never got a result shows too); with ``probe_interval_seconds``
it tells an alert (``NatkitMonitorProbesStale``) that a target's series
are no longer fresh.

=====================================================  =========  ===========================================
name                                                   type       meaning
=====================================================  =========  ===========================================
natkit_monitor_up                                      gauge      1: the server answered (Binding or Allocate, even an error)
natkit_monitor_probe_success                           gauge      1: every check of the last probe passed
natkit_monitor_probe_duration_seconds                  gauge      the last probe, all steps
natkit_monitor_probes_total{result}                    counter    probes by result (success, failure)
natkit_monitor_last_success_timestamp_seconds          gauge      unix time of the last successful probe
natkit_monitor_last_probe_timestamp_seconds            gauge      unix time the last probe that asked the server ended
natkit_monitor_probe_interval_seconds                  gauge      the configured interval between probes (serve only)
natkit_monitor_binding_rtt_seconds                     gauge      STUN Binding round trip (RFC 8489)
natkit_monitor_allocate_latency_seconds                histogram  Allocate, first request to success
natkit_monitor_credential_accepted{kind}               gauge      1: Allocate authenticated (kind rest, long-term)
natkit_monitor_relay_success                           gauge      1: data went both ways through two allocations
natkit_monitor_relay_echo_rtt_seconds                  gauge      median echo RTT through the relay
natkit_monitor_relay_echo_loss_ratio                   gauge      share of echoes unanswered in the last probe
natkit_monitor_relay_echoes_sent_total / _received_total counter  echo datagrams, for loss over any window
natkit_monitor_errors_total{step,code}                 counter    401 403 437 438 441 486 508 other timeout unreachable tls malformed internal
natkit_monitor_relayed_address_match                   gauge      1: XOR-RELAYED-ADDRESS is expect_relayed_ip
natkit_monitor_relayed_address_info{seen,expected}     gauge      1, the relayed IP last seen
natkit_monitor_tls_cert_days_left                      gauge      turns: days until the certificate's notAfter
natkit_monitor_tls_cert_expiry_timestamp_seconds       gauge      turns: notAfter as unix time
natkit_monitor_tls_chain_valid                         gauge      turns: 1 chain and name verified, 0 not
=====================================================  =========  ===========================================
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .probe import ProbeResult

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

PREFIX = "natkit_monitor_"
ALLOCATE_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LABELS = ("target", "transport")


class _Histogram:
    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * len(ALLOCATE_BUCKETS)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(ALLOCATE_BUCKETS):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        return [*((_fmt(b), float(c)) for b, c in zip(ALLOCATE_BUCKETS, self.counts)), ("+Inf", float(self.count))]


def _fmt(bound: float) -> str:
    return repr(float(bound))


class MonitorState:
    """What the exporter knows: the latest result per (target, transport) and the cumulative series.

    :meth:`observe` takes every finished :class:`ProbeResult`; the object is
    also a ``prometheus_client`` collector (:meth:`collect`). Memory is bounded
    by the number of targets (the error counters by targets x steps x codes).
    """

    def __init__(self) -> None:
        self.latest: dict[tuple[str, str], ProbeResult] = {}
        self.last_success: dict[tuple[str, str], float] = {}
        self.last_probe: dict[tuple[str, str], float] = {}
        self.intervals: dict[tuple[str, str], float] = {}
        self.histograms: dict[tuple[str, str], _Histogram] = {}
        self.probes: dict[tuple[str, str, str], int] = {}
        self.errors: dict[tuple[str, str, str, str], int] = {}
        self.echo_sent: dict[tuple[str, str], int] = {}
        self.echo_received: dict[tuple[str, str], int] = {}

    def expect(self, keys: Iterable[tuple[str, str]], interval: float, *, now: float | None = None) -> None:
        """Announce the scheduled (target, transport) keys: their interval (s), and ``now`` as their last probe.

        A target whose probes never produce a result then still has a
        ``last_probe_timestamp_seconds`` (the monitor's start) for the stale alert.
        """
        now = time.time() if now is None else now
        for key in keys:
            self.intervals[key] = interval
            self.last_probe.setdefault(key, now)

    def observe(self, result: ProbeResult) -> None:
        key = (result.target, result.transport)
        self.latest[key] = result
        if not result.internal:
            self.last_probe[key] = result.started + result.duration_ms / 1000.0
        outcome = "success" if result.ok else "failure"
        self.probes[(*key, outcome)] = self.probes.get((*key, outcome), 0) + 1
        self.probes.setdefault((*key, "failure" if result.ok else "success"), 0)
        if result.ok:
            self.last_success[key] = result.started + result.duration_ms / 1000.0
        if result.allocate_ms is not None:
            self.histograms.setdefault(key, _Histogram()).observe(result.allocate_ms / 1000.0)
        for step, code in result.errors:
            self.errors[(*key, step, code)] = self.errors.get((*key, step, code), 0) + 1
        self.echo_sent[key] = self.echo_sent.get(key, 0) + result.echo_sent
        self.echo_received[key] = self.echo_received.get(key, 0) + result.echo_received

    # ------------------------------------------------------------- collector
    def describe(self) -> Iterable[Any]:
        return []  # collected on demand; nothing to pre-register

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Any:
            return GaugeMetricFamily(PREFIX + name, doc, labels=[*LABELS, *extra])

        g = {
            "up": gauge("up", "1 when the server answered STUN/TURN in the last probe (a Binding or Allocate reply, even an error)"),
            "success": gauge("probe_success", "1 when every check of the last probe passed, else 0"),
            "duration": gauge("probe_duration_seconds", "Duration of the last probe, all steps, in seconds"),
            "last_ok": gauge("last_success_timestamp_seconds", "Unix time of the last successful probe"),
            "last_probe": gauge("last_probe_timestamp_seconds", "Unix time the last probe that asked the server ended (any result)"),
            "interval": gauge("probe_interval_seconds", "Configured seconds between two probes of the target"),
            "binding": gauge("binding_rtt_seconds", "STUN Binding round-trip time of the last probe (RFC 8489), seconds"),
            "cred": gauge("credential_accepted", "1 when the last Allocate authenticated with the configured credential", ("kind",)),
            "relay": gauge("relay_success", "1 when data went both ways between two allocations through the relay"),
            "echo_rtt": gauge("relay_echo_rtt_seconds", "Median echo round trip through the relay in the last probe, seconds"),
            "echo_loss": gauge("relay_echo_loss_ratio", "Share of relay echoes unanswered in the last probe (0-1)"),
            "match": gauge("relayed_address_match", "1 when XOR-RELAYED-ADDRESS is the expected relay IP (external-ip)"),
            "info": gauge("relayed_address_info", "The relayed IP last seen and the one expected", ("seen", "expected")),
            "days": gauge("tls_cert_days_left", "Days until the turns: certificate's notAfter (negative: expired)"),
            "expiry": gauge("tls_cert_expiry_timestamp_seconds", "The turns: certificate's notAfter as unix time"),
            "chain": gauge("tls_chain_valid", "1 when the turns: chain and host name verified, 0 when not"),
        }
        for key, r in sorted(self.latest.items()):
            labels = list(key)
            if not r.internal:  # a probe that raised asked the server nothing
                g["up"].add_metric(labels, 1.0 if r.up else 0.0)
            g["success"].add_metric(labels, 1.0 if r.ok else 0.0)
            g["duration"].add_metric(labels, r.duration_ms / 1000.0)
            if key in self.last_success:
                g["last_ok"].add_metric(labels, self.last_success[key])
            if r.binding_rtt_ms is not None:
                g["binding"].add_metric(labels, r.binding_rtt_ms / 1000.0)
            if r.credential_accepted is not None and r.credential_kind != "none":
                g["cred"].add_metric([*labels, r.credential_kind], 1.0 if r.credential_accepted else 0.0)
            if r.relay_ok is not None:
                g["relay"].add_metric(labels, 1.0 if r.relay_ok else 0.0)
            if r.echo_rtt_ms is not None:
                g["echo_rtt"].add_metric(labels, r.echo_rtt_ms / 1000.0)
            if r.echo_loss is not None:
                g["echo_loss"].add_metric(labels, r.echo_loss)
            if r.relayed_match is not None:
                g["match"].add_metric(labels, 1.0 if r.relayed_match else 0.0)
            if r.relayed is not None:
                seen = r.relayed.rsplit(":", 1)[0].strip("[]")
                g["info"].add_metric([*labels, seen, r.expect_relayed_ip or ""], 1.0)
            if r.tls is not None:
                if r.tls.days_left is not None:
                    g["days"].add_metric(labels, r.tls.days_left)
                if r.tls.not_after:
                    g["expiry"].add_metric(labels, datetime.datetime.fromisoformat(r.tls.not_after).timestamp())
                if r.tls.chain_valid is not None:
                    g["chain"].add_metric(labels, 1.0 if r.tls.chain_valid else 0.0)
        for key, at in sorted(self.last_probe.items()):
            g["last_probe"].add_metric(list(key), at)
        for key, interval in sorted(self.intervals.items()):
            g["interval"].add_metric(list(key), interval)
        yield from g.values()
        probes = CounterMetricFamily(PREFIX + "probes", "Probes by result", labels=[*LABELS, "result"])
        for (t, tr, outcome), n in sorted(self.probes.items()):
            probes.add_metric([t, tr, outcome], n)
        yield probes
        errors = CounterMetricFamily(PREFIX + "errors", "Errors by step and code (ERROR-CODE, timeout, unreachable, tls, malformed, other)",
                                     labels=[*LABELS, "step", "code"])
        for (t, tr, step, code), n in sorted(self.errors.items()):
            errors.add_metric([t, tr, step, code], n)
        yield errors
        sent = CounterMetricFamily(PREFIX + "relay_echoes_sent", "Echo datagrams sent through the relay", labels=list(LABELS))
        received = CounterMetricFamily(PREFIX + "relay_echoes_received", "Echo datagrams that came back through the relay", labels=list(LABELS))
        for key in sorted(self.echo_sent):
            sent.add_metric(list(key), self.echo_sent[key])
            received.add_metric(list(key), self.echo_received.get(key, 0))
        yield sent
        yield received
        hist = HistogramMetricFamily(PREFIX + "allocate_latency_seconds", "Allocate latency, first request to success (401 round included)",
                                     labels=list(LABELS))
        for key, h in sorted(self.histograms.items()):
            hist.add_metric(list(key), h.buckets(), sum_value=h.sum)
        yield hist


def registry(state: MonitorState, *, process: bool = True) -> CollectorRegistry:
    """A registry with ``state`` (and the process' own CPU/memory metrics when ``process``)."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    reg = CollectorRegistry(auto_describe=False)
    reg.register(state)
    if process:
        ProcessCollector(registry=reg)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The text exposition format (``text/plain; version=0.0.4``)."""
    from prometheus_client import generate_latest

    return generate_latest(reg)


def probe_exposition(result: ProbeResult) -> bytes:
    """A /probe answer: the metrics of one probe, plus blackbox-style ``probe_success``/``probe_duration_seconds``."""
    from prometheus_client.core import GaugeMetricFamily

    state = MonitorState()
    state.observe(result)

    class _Blackbox:
        def collect(self) -> Iterator[Any]:
            yield GaugeMetricFamily("probe_success", "1 when the probe succeeded", value=1.0 if result.ok else 0.0)
            yield GaugeMetricFamily("probe_duration_seconds", "Probe duration in seconds", value=result.duration_ms / 1000.0)

    reg = registry(state, process=False)
    reg.register(_Blackbox())
    return exposition(reg)
