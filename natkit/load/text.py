"""What a person sees: live progress on stderr (rich) and the final tables of a :class:`LoadReport`."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from .report import LoadReport


def _f(value: float | None, fmt: str = "{:.1f}", unit: str = "") -> str:
    return "–" if value is None else fmt.format(value) + unit


class Progress:
    """A rich live line on stderr, refreshed from the runner's progress dicts (silent with NATKIT_QUIET or no TTY)."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self._live: Any = None
        self._last: tuple[float, int, int] | None = None
        self._rates = (0.0, 0.0)
        self.enabled = not os.environ.get("NATKIT_QUIET") and sys.stderr.isatty()
        self._plain_at = 0.0

    def update(self, state: dict) -> None:
        if os.environ.get("NATKIT_QUIET"):
            return
        text = self._line(state)
        if not self.enabled:
            now = time.monotonic()
            if now - self._plain_at >= 5.0:  # a log file gets a line every 5 s, not a redraw
                self._plain_at = now
                print(f"… {text}", file=sys.stderr, flush=True)
            return
        if self._live is None:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(stderr=True, highlight=False), refresh_per_second=4, transient=True)
            self._live.start()
        self._live.update(text)

    def _line(self, s: dict) -> str:
        head = f"{s['elapsed']:5.1f} s  {s['phase']}"
        if "sent" in s:
            now = time.monotonic()
            if self._last is not None and now > self._last[0]:
                dt = now - self._last[0]
                self._rates = ((s["sent"] - self._last[1]) / dt, (s["returned"] - self._last[2]) / dt)
            self._last = (now, s["sent"], s["returned"])
            return (f"{head} | {s['sessions']} sessions | sent {self._rates[0]:,.0f}/s back {self._rates[1]:,.0f}/s | "
                    f"last step loss {_f(s.get('loss_pct'), '{:.2f}', ' %')} rtt p99 {_f(s.get('rtt_ms_p99'), '{:.2f}', ' ms')}"
                    + (f" | {s['failed']} failed" if s.get("failed") else ""))
        if "held" in s:
            errs = ", ".join(f"{k} x{v}" for k, v in (s.get("errors") or {}).items())
            return f"{head} | held {s['held']:,} | attempts {s['attempts']:,}" + (f" | errors {errs}" if errs else "")
        errs = ", ".join(f"{k} x{v}" for k, v in (s.get("errors") or {}).items())
        return (f"{head} | in flight {s.get('in_flight', 0)} | last step {_f(s.get('rate'), '{:.0f}', '/s')} "
                f"p99 {_f(s.get('latency_ms_p99'), '{:.1f}', ' ms')}" + (f" | {errs}" if errs else ""))

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def render(report: LoadReport, con: Any = None) -> None:
    """The report as tables on stdout."""
    from rich.console import Console

    from ..cli import output

    con = con or Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 150)
    v = report.verdict
    head = "[green]DONE[/green]" if report.ok else ("[yellow]INTERRUPTED[/yellow]" if report.interrupted else "[red]FAIL[/red]")
    con.print(f"{head} turn load {report.profile} {report.server} ({report.transport}, peer {report.peer}, "
              f"{report.workers} worker{'s' if report.workers > 1 else ''}, {report.duration_s:.1f} s)")
    if report.steps:
        _steps(report, con, output)
    if report.media is not None:
        _media(report, con, output)
    if report.alloc is not None:
        a = report.alloc
        con.print(output.table("allocations", ["figure", "value"], [
            ["cycles", f"{a.attempts} started, {a.ok} allocated"],
            ["Allocate latency", f"p50 {_f(a.latency_ms_p50)} ms, p95 {_f(a.latency_ms_p95)} ms, p99 {_f(a.latency_ms_p99)} ms"],
            ["errors", _codes(a.errors) or "none"],
            ["permission/channel/release errors", _codes(a.step_errors) or "none"],
            ["best passing step", f"{_f(a.best_rate_per_s, '{:.0f}')} allocations/s (offered {_f(a.best_offered_per_s, '{:.0f}')}/s)"]]))
    if report.hold is not None:
        h = report.hold
        con.print(output.table("hold", ["figure", "value"], [
            ["concurrent allocations", f"{h.reached:,} of {h.target:,} asked ({h.attempts:,} attempts)"],
            ["ceiling", h.reason],
            ["held for", f"{h.held_seconds:.1f} s; refreshes ok {h.refreshes_ok}, failed {_codes(h.refreshes_failed) or 'none'}"],
            ["errors", _codes(h.errors) or "none"],
            ["Allocate latency", f"p50 {_f(h.latency_ms_p50)} ms, p99 {_f(h.latency_ms_p99)} ms"]]))
    _generator(report, con, output)
    figure = "–" if v.value is None else f"{v.value:,.0f}"
    limit = "the server's limit" if v.server_limit else f"limited by {v.limited_by}"
    con.print(f"[bold]{v.figure.replace('_', ' ')}: {figure}[/bold] ({limit})")
    for note in v.notes:
        con.print(f"  note: {note}")
    if report.cross_check is not None:
        c = report.cross_check
        state = "[green]agree[/green]" if c.ok else "[red]DISAGREE[/red]"
        con.print(f"coturn's usage lines {state}: {c.sessions_matched}/{c.sessions_checked} sessions")
        for m in c.mismatches[:5]:
            con.print(f"  {m}")
    if report.baseline:
        for path, row in report.baseline["figures"].items():
            mark = "[red]REGRESSED[/red]" if row["regressed"] else "ok"
            con.print(f"baseline {path}: {row['baseline']} -> {row['current']} {mark}")
    for f in report.failures:
        con.print(f"[red]✗[/red] {f.one_line()}")


def _codes(errors: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(errors.items()))


def _steps(report: LoadReport, con: Any, output: Any) -> None:
    media = report.profile != "alloc"
    cols = (["step", "sessions", "offered pps", "sent pps", "back pps", "loss", "rtt p50", "rtt p99", "gen cpu", "server cpu", "result"]
            if media else ["step", "offered/s", "allocated/s", "p50", "p95", "p99", "errors", "gen cpu", "server cpu", "result"])
    rows = []
    for s in report.steps:
        result = "pass" if s.passed else f"[red]stop[/red]: {s.reason}"
        cpu = [_f(s.worker_cpu_max_pct, "{:.0f}", " %"), _f(s.server_cpu_pct, "{:.0f}", " %")]
        if media:
            rows.append([s.index, s.sessions, _f(s.offered_per_s, "{:,.0f}"), _f(s.achieved_per_s, "{:,.0f}"),
                         _f(s.returned_per_s, "{:,.0f}"), _f(s.loss_pct, "{:.2f}", " %"), _f(s.rtt_ms_p50, "{:.2f}", " ms"),
                         _f(s.rtt_ms_p99, "{:.2f}", " ms"), *cpu, result])
        else:
            rows.append([s.index, _f(s.offered_per_s, "{:.0f}"), _f(s.achieved_per_s, "{:.0f}"), _f(s.latency_ms_p50, "{:.1f}", " ms"),
                         _f(s.latency_ms_p95, "{:.1f}", " ms"), _f(s.latency_ms_p99, "{:.1f}", " ms"), _codes(s.errors) or "–", *cpu, result])
    con.print(output.table("steps", cols, rows))


def _media(report: LoadReport, con: Any, output: Any) -> None:
    m = report.media
    assert m is not None
    con.print(output.table("media", ["figure", "value"], [
        ["sessions", f"{m.sessions} set up ({m.sessions_failed} failed), setup p50 {_f(m.setup_ms_p50)} ms p99 {_f(m.setup_ms_p99)} ms"],
        ["packets", f"sent {m.sent:,}  to peer {m.to_peer:,}  back {m.returned:,}  in {m.seconds:.1f} s"],
        ["rates", f"offered {m.offered_pps:,.0f}/s  sent {m.sent_pps:,.0f}/s  relayed {m.relayed_pps:,.0f}/s (both directions)"],
        ["loss", (f"{_f(m.loss_pct, '{:.3f}', ' %')} round trip (forward {_f(m.forward_loss_pct, '{:.3f}', ' %')}, "
                  f"return {_f(m.return_loss_pct, '{:.3f}', ' %')}); reordered {m.reordered}, duplicates {m.duplicates}")],
        ["RTT", (f"p50 {_f(m.rtt_ms_p50, '{:.2f}')} ms  p95 {_f(m.rtt_ms_p95, '{:.2f}')} ms  "
                 f"p99 {_f(m.rtt_ms_p99, '{:.2f}')} ms  max {_f(m.rtt_ms_max, '{:.2f}')} ms")],
        ["jitter (RFC 3550, one way)", (f"p50 {_f(m.jitter_ms_p50, '{:.3f}')} ms  p95 {_f(m.jitter_ms_p95, '{:.3f}')} ms  "
                                        f"max {_f(m.jitter_ms_max, '{:.3f}')} ms across sessions")]]))


def _generator(report: LoadReport, con: Any, output: Any) -> None:
    c, d = report.cpu, report.drops
    workers = ", ".join(f"{p:.0f} %" + ("" if w is None else f" (waited for a CPU {w:.0f} %)")
                        for p, w in zip(c.workers_pct, c.workers_waiting_pct or (None,) * len(c.workers_pct))) or "–"
    server = "not measured (pass --server-pid or --name)" if c.server_pct is None else \
        f"{c.server_pct:.0f} % (busiest thread {_f(c.server_busiest_thread_pct, '{:.0f}', ' %')})"
    con.print(output.table("who was busy", ["", "value"], [
        ["generator workers CPU", f"{workers} of a core each"],
        ["server CPU", server],
        ["host", "–" if not c.host_loadavg else f"load average {c.host_loadavg[0]:.1f} at the start, {c.host_loadavg[1]:.1f} at the end, {c.host_cpus} CPUs"],
        ["socket drops", (f"generator {_f(d.generator, '{:,.0f}')}, server {_f(d.server, '{:,.0f}')}, host RcvbufErrors "
                          f"{_f(d.rcvbuf_errors, '{:,.0f}')}, SndbufErrors {_f(d.sndbuf_errors, '{:,.0f}')}; not sent {d.generator_send_skipped:,}")],
        ["released", f"{report.released} allocations (Refresh LIFETIME 0), {report.release_failed} not confirmed"]]))
