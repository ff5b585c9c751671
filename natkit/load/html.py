"""``--report FILE.html``: one self-contained page (inline SVG plots by matplotlib, no script, no CDN).

Plots: allocation latency over the offered rate (``alloc``); loss and RTT
over concurrent sessions (a ramp); per-session loss, RTT and jitter (a
fixed media run); who was busy (generator workers vs server CPU per step).
matplotlib is the ``natkit[load]`` extra: :func:`require_plotting` raises
:class:`~natkit.errors.EnvironmentProblem` (exit 3) without it, before the run.
"""

from __future__ import annotations

import html
import io
import json
import time
from typing import Any

from ..errors import EnvironmentProblem
from .report import LoadReport


def require_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EnvironmentProblem("--report needs matplotlib", hint="pip install 'natkit[load]'") from None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "svg.fonttype": "none"})
    return plt


def figures(report: LoadReport) -> list[tuple[str, Any]]:
    """``[(title, matplotlib Figure)]`` for the report (empty when there is nothing to plot)."""
    plt = _pyplot()
    out: list[tuple[str, Any]] = []
    steps = report.steps
    if report.profile == "alloc" and steps:
        fig, ax = plt.subplots(figsize=(7, 3.4))
        rates = [s.offered_per_s for s in steps]
        for attr, label in (("latency_ms_p50", "p50"), ("latency_ms_p95", "p95"), ("latency_ms_p99", "p99")):
            ax.plot(rates, [getattr(s, attr) for s in steps], marker="o", label=f"Allocate {label}")
        ax.set_xlabel("offered allocations/s")
        ax.set_ylabel("latency (ms)")
        ax2 = ax.twinx()
        ax2.plot(rates, [s.achieved_per_s for s in steps], color="grey", linestyle="--", marker="x", label="allocated/s")
        ax2.set_ylabel("allocated/s")
        ax2.grid(False)
        _legend(ax, ax2)
        out.append(("Allocation latency over the offered rate", fig))
    elif report.media is not None and len(steps) > 1:
        order = sorted(steps, key=lambda s: s.sessions or 0)
        n = [s.sessions for s in order]
        fig, ax = plt.subplots(figsize=(7, 3.4))
        ax.plot(n, [s.loss_pct for s in order], marker="o", color="tab:red", label="loss %")
        ax.axhline(report.config.get("max_loss", 1.0), color="tab:red", linestyle=":", linewidth=1, label="--max-loss")
        ax.set_xlabel("concurrent sessions")
        ax.set_ylabel("round-trip loss (%)")
        ax2 = ax.twinx()
        ax2.plot(n, [s.rtt_ms_p50 for s in order], marker="s", color="tab:blue", label="RTT p50")
        ax2.plot(n, [s.rtt_ms_p99 for s in order], marker="^", color="tab:purple", label="RTT p99")
        ax2.set_ylabel("RTT (ms)")
        ax2.grid(False)
        _legend(ax, ax2)
        out.append(("Loss and RTT over concurrent sessions", fig))
    if report.media is not None and report.sessions:
        s = report.sessions
        fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
        axes[0].hist([x.loss_pct or 0.0 for x in s], bins=20, color="tab:red")
        axes[0].set_xlabel("loss per session (%)")
        axes[1].hist([x.rtt_ms_p99 or 0.0 for x in s], bins=20, color="tab:purple")
        axes[1].set_xlabel("RTT p99 per session (ms)")
        axes[2].hist([x.jitter_ms for x in s], bins=20, color="tab:green")
        axes[2].set_xlabel("jitter per session (ms, RFC 3550)")
        axes[0].set_ylabel("sessions")
        fig.tight_layout()
        out.append(("Per session", fig))
    if steps and any(x.worker_cpu_max_pct is not None for x in steps):
        fig, ax = plt.subplots(figsize=(7, 2.6))
        x = [s.sessions if report.profile != "alloc" else s.offered_per_s for s in steps]
        ax.plot(x, [s.worker_cpu_max_pct for s in steps], marker="o", label="busiest generator worker")
        ax.plot(x, [s.server_cpu_pct for s in steps], marker="s", label="server (all threads)")
        ax.axhline(80, color="grey", linestyle=":", linewidth=1, label="80 % of a core")
        ax.set_xlabel("concurrent sessions" if report.profile != "alloc" else "offered allocations/s")
        ax.set_ylabel("CPU (% of a core)")
        ax.legend(loc="upper left", fontsize=8)
        out.append(("Who was busy", fig))
    return out


def _legend(ax: Any, ax2: Any) -> None:
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def write_png(report: LoadReport, path: str, index: int = 0) -> None:
    """The report's ``index``-th plot as a PNG (the README's screenshot)."""
    figs = figures(report)
    if not figs:
        raise ValueError("this report has nothing to plot")
    figs[index][1].savefig(path, format="png", bbox_inches="tight", dpi=110)


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs)


def _summary(report: LoadReport) -> list[tuple[str, Any]]:
    v = report.verdict
    rows: list[tuple[str, Any]] = [
        ("server", f"{report.server} ({report.transport}, peer {report.peer})"),
        ("headline", f"{v.figure.replace('_', ' ')}: {'–' if v.value is None else f'{v.value:,.0f}'}"),
        ("limited by", ("the server's limit: " if v.server_limit else "") + v.limited_by),
        ("duration", f"{report.duration_s:.1f} s, {report.workers} worker(s)"
                     + (", interrupted" if report.interrupted else "")),
        ("generator CPU", ", ".join(f"{p:.0f} %" for p in report.cpu.workers_pct) or "–"),
        ("server CPU", "–" if report.cpu.server_pct is None else f"{report.cpu.server_pct:.0f} %"),
        ("socket drops", (f"generator {report.drops.generator}, server {report.drops.server}, "
                         f"host RcvbufErrors {report.drops.rcvbuf_errors}")),
        ("released", f"{report.released} (not confirmed: {report.release_failed})"),
    ]
    m = report.media
    if m is not None:
        rows += [("packets", f"sent {m.sent:,}, to peer {m.to_peer:,}, back {m.returned:,}"),
                 ("relayed", f"{m.relayed_pps:,.0f} packets/s"), ("loss", f"{_n(m.loss_pct, 3)} %"),
                 ("RTT", f"p50 {_n(m.rtt_ms_p50, 2)} ms, p99 {_n(m.rtt_ms_p99, 2)} ms"), ("jitter p95", f"{_n(m.jitter_ms_p95, 3)} ms")]
    if report.alloc is not None:
        a = report.alloc
        rows += [("allocations", f"{a.ok} of {a.attempts}"), ("errors", a.errors or "none"),
                 ("Allocate latency", f"p50 {_n(a.latency_ms_p50, 1)} ms, p99 {_n(a.latency_ms_p99, 1)} ms")]
    if report.hold is not None:
        rows += [("concurrent allocations", f"{report.hold.reached} of {report.hold.target}"), ("ceiling", report.hold.reason)]
    if report.cross_check is not None:
        rows.append(("coturn usage cross-check", f"{report.cross_check.sessions_matched}/{report.cross_check.sessions_checked} agree"))
    return rows


def render_html(report: LoadReport) -> str:
    plots = "".join(f"<section><h2>{html.escape(title)}</h2>{_svg(fig)}</section>" for title, fig in figures(report))
    steps = "".join(
        f"<tr><td>{s.index}</td><td>{s.sessions if s.sessions is not None else ''}</td><td>{_n(s.offered_per_s)}</td>"
        f"<td>{_n(s.achieved_per_s)}</td><td>{_n(s.loss_pct, 3)}</td><td>{_n(s.rtt_ms_p99, 2)}</td><td>{_n(s.latency_ms_p99, 1)}</td>"
        f"<td>{_n(s.worker_cpu_max_pct)}</td><td>{_n(s.server_cpu_pct)}</td>"
        f"<td>{'pass' if s.passed else html.escape(s.reason or '')}</td></tr>" for s in report.steps)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.verdict.notes)
    failures = "".join(f"<li>{html.escape(f.one_line())}</li>" for f in report.failures)
    config = html.escape(json.dumps({k: v for k, v in report.config.items() if k != "username"}, indent=1, default=str))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.started))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>natkit turn load {html.escape(report.profile)} {html.escape(report.server)}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:72em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border-bottom:1px solid #ddd;padding:.25em .8em;text-align:left;vertical-align:top}}svg{{max-width:100%;height:auto}}
.fail{{color:#b00}}</style></head><body>
<h1>natkit turn load: {html.escape(report.profile)}</h1><p>{html.escape(stamp)}, schema {html.escape(report.schema)}</p>
<table>{_rows(_summary(report))}</table>
{"<ul>" + notes + "</ul>" if notes else ""}{'<ul class="fail">' + failures + "</ul>" if failures else ""}
{plots}
{_steps_table(steps)}
<h2>Configuration</h2><pre>{config}</pre>
</body></html>
"""


STEP_COLUMNS = ("step", "sessions", "offered/s", "achieved/s", "loss %", "RTT p99 ms", "Allocate p99 ms", "gen CPU %", "server CPU %", "result")


def _steps_table(rows: str) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{c}</th>" for c in STEP_COLUMNS)
    return f"<h2>Steps</h2><table><tr>{head}</tr>{rows}</table>"


def _n(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def write_report(report: LoadReport, path: str) -> None:
    """Write the HTML report to ``path``."""
    text = render_html(report)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
