"""From the workers' final counters to a :class:`~natkit.load.report.LoadReport` (and its verdict)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from ..errors import Failure
from . import coturn_log
from .report import (
    SCHEMA,
    AllocTotals,
    Cpu,
    CrossCheck,
    Drops,
    HoldTotals,
    LoadReport,
    MediaTotals,
    ServerFacts,
    SessionResult,
    Verdict,
)
from .stats import Histogram, loss_pct, percentile
from .sysmon import SATURATED_PCT

if TYPE_CHECKING:
    from .runner import Run

MAX_SESSIONS_IN_REPORT = 2000
STARVED_PCT = 20.0  # a worker that waited longer than this share of the run for a CPU did not pace its load
USAGE_WAIT = 6.0  # s to wait for coturn's usage lines after the releases


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000.0


def _finals(run: Run) -> list[dict]:
    return [f for f in run.finals if f is not None]


def read_log(run: Run) -> list[str] | None:
    """The server's log lines: ``run.read_server_log()`` or ``server_log``'s file (None: unknown)."""
    reader = run.read_server_log
    if reader is not None:
        try:
            return list(reader())
        except Exception:  # noqa: BLE001 - a log that cannot be read is "not measured", whatever the backend raised
            return None
    if run.cfg.server_log:
        try:
            with open(run.cfg.server_log, errors="replace") as f:
                return f.read().splitlines()
        except OSError:
            return None
    return None


def server_facts(run: Run) -> ServerFacts:
    cfg = run.cfg
    lines = read_log(run)
    facts = coturn_log.startup_facts(lines) if lines else coturn_log.StartupFacts()
    pr = cfg.server_port_range
    return ServerFacts(pid=cfg.server_pid, fd_limit=facts.fd_limit, max_sessions=facts.max_sessions, port_range=pr,
                       port_range_size=(pr[1] - pr[0] + 1) if pr else None, user_quota=cfg.server_quotas[0],
                       total_quota=cfg.server_quotas[1])


def _media(run: Run) -> tuple[MediaTotals, tuple[SessionResult, ...]]:
    results: list[dict] = []
    failed = 0
    setup = Histogram()
    malformed = 0
    for f in _finals(run):
        results += f["results"].get("sessions", [])
        failed += len(f["results"].get("failed", []))
        setup.merge(Histogram.from_dict(f["results"].get("setup", {})))
        malformed += f["results"].get("malformed", 0)
    results.sort(key=lambda r: r["index"])
    rtt = Histogram()
    sessions = []
    for r in results:
        h = Histogram.from_dict(r["rtt"])
        rtt.merge(h)
        sessions.append(SessionResult(
            index=r["index"], sent=r["sent"], to_peer=r["peer_received"], returned=r["returned"],
            loss_pct=loss_pct(r["sent"], r["returned"]), duplicates=r["duplicates"], reordered=r["reordered"],
            jitter_ms=r["jitter_ms"], jitter_return_ms=r["jitter_return_ms"], rtt_ms_p50=_ms(h.percentile(50)),
            rtt_ms_p99=_ms(h.percentile(99)), setup_ms=r["setup_ms"], local=r["local"], relayed=r["relayed"],
            peer=r["peer"], control_sent=r["control_sent"], control_received=r["control_received"]))
    sent = sum(s.sent for s in sessions)
    to_peer = sum(s.to_peer for s in sessions)
    peer_sent = sum(r["peer_sent"] for r in results)
    returned = sum(s.returned for s in sessions)
    seconds = ((run.send_end or time.monotonic()) - run.send_start) if run.send_start else 0.0
    per = (lambda n: n / seconds) if seconds > 0 else (lambda n: 0.0)
    jit = [s.jitter_ms for s in sessions if s.sent]
    offered = per(sum(f["data"].get("offered", 0) for f in _finals(run)))
    totals = MediaTotals(
        sessions=len(sessions), sessions_failed=failed, seconds=seconds, sent=sent, to_peer=to_peer, returned=returned,
        offered_pps=offered, sent_pps=per(sent), to_peer_pps=per(to_peer), returned_pps=per(returned),
        relayed_pps=per(to_peer + returned), loss_pct=loss_pct(sent, returned), forward_loss_pct=loss_pct(sent, to_peer),
        return_loss_pct=loss_pct(peer_sent, returned), duplicates=sum(s.duplicates for s in sessions),
        reordered=sum(s.reordered for s in sessions), malformed=malformed, rtt_ms_p50=_ms(rtt.percentile(50)),
        rtt_ms_p95=_ms(rtt.percentile(95)), rtt_ms_p99=_ms(rtt.percentile(99)), rtt_ms_max=_ms(rtt.percentile(100)),
        jitter_ms_p50=percentile(jit, 50), jitter_ms_p95=percentile(jit, 95), jitter_ms_max=max(jit) if jit else None,
        setup_ms_p50=_ms(setup.percentile(50)), setup_ms_p99=_ms(setup.percentile(99)))
    return totals, tuple(sessions)


def _alloc(run: Run) -> AllocTotals:
    attempts = ok = 0
    errors: dict[str, int] = {}
    step_errors: dict[str, int] = {}
    lat = Histogram()
    for e in {e for s in run.snaps for e in (s.get("steps") or {})}:
        st = run.alloc_step(e)
        attempts += st["started"]
        ok += st["ok"]
        lat.merge(st["latency"])
        for src, dst in ((st["errors"], errors), (st["step_errors"], step_errors)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
    best = [s for s in run.steps if s.passed]
    return AllocTotals(attempts=attempts, ok=ok, errors=errors, step_errors=step_errors,
                       latency_ms_p50=_ms(lat.percentile(50)), latency_ms_p95=_ms(lat.percentile(95)),
                       latency_ms_p99=_ms(lat.percentile(99)),
                       best_rate_per_s=max((s.achieved_per_s or 0.0 for s in best), default=None),
                       best_offered_per_s=max((s.offered_per_s or 0.0 for s in best), default=None),
                       peak_rate_per_s=max((s.achieved_per_s or 0.0 for s in run.steps), default=None))


def _hold(run: Run, facts: ServerFacts) -> HoldTotals:
    snaps = [f["data"] for f in _finals(run)] or run.snaps
    errors: dict[str, int] = {}
    refresh_failed: dict[str, int] = {}
    channels_failed: dict[str, int] = {}
    lat = Histogram()
    first = None
    for s in snaps:
        for src, dst in ((s.get("errors", {}), errors), (s.get("refreshes_failed", {}), refresh_failed),
                         (s.get("channels_failed", {}), channels_failed)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
        lat.merge(Histogram.from_dict(s.get("latency", {})))
        fr = s.get("first_refusal")
        if fr and first is None:
            first = dict(fr)
    reached = sum(s.get("peak", 0) for s in snaps)
    if first is not None:
        first["held"] = reached
    return HoldTotals(target=run.cfg.sessions, reached=reached, attempts=sum(s.get("attempts", 0) for s in snaps),
                      held_seconds=run.hold_seconds, errors=errors, first_refusal=first,
                      reason=hold_reason(run.cfg.sessions, reached, first, errors, facts),
                      refreshes_ok=sum(s.get("refreshes_ok", 0) for s in snaps), refreshes_failed=refresh_failed,
                      channels_failed=channels_failed, latency_ms_p50=_ms(lat.percentile(50)), latency_ms_p99=_ms(lat.percentile(99)))


def hold_reason(target: int, reached: int, first: dict | None, errors: dict[str, int], facts: ServerFacts) -> str:
    """The ceiling of a hold run in words, naming the server's limit where it is known."""
    if reached >= target and not errors:
        return f"target reached: {reached} concurrent allocations (no refusal)"
    code = first["code"] if first else (max(errors, key=lambda k: errors[k]) if errors else None)
    reason = (first or {}).get("reason") or ""
    if code == "486":
        quotas = [f"user-quota={facts.user_quota}" if facts.user_quota else "", f"total-quota={facts.total_quota}" if facts.total_quota else ""]
        known = " ".join(q for q in quotas if q)
        return (f"486 Allocation Quota Reached after {reached} allocations" + (f" (coturn {known})" if known else "")
                + (f": {reason}" if reason and "Quota" not in reason else ""))
    if code == "508":
        return f"508 Insufficient Capacity after {reached} allocations: " + capacity_cause(reached, facts)[1]
    if code and code.startswith("local"):
        return f"the generator's own limit ({code}) after {reached} allocations: not the server's"
    if code == "timeout":
        text = f"requests timed out after {reached} allocations"
        if facts.fd_limit:
            text += f" (coturn's fd limit is {facts.fd_limit}, about {facts.max_sessions or facts.fd_limit // 2} sessions)"
        return text
    if code:
        return f"{code} {reason}".strip() + f" after {reached} allocations"
    return f"{reached} of {target} allocations held"


def capacity_cause(reached: int, facts: ServerFacts) -> tuple[str, str]:
    """Which of coturn's limits a 508 after ``reached`` allocations points to (one relay socket per UDP allocation):
    ``("port range" | "fd limit" | "capacity", words)``."""
    if facts.port_range_size and reached >= facts.port_range_size - 2:
        lo, hi = facts.port_range or (0, 0)
        return "port range", f"the relay port range {lo}-{hi} has {facts.port_range_size} ports"
    if facts.fd_limit and reached >= facts.fd_limit * 0.9:
        return "fd limit", (f"coturn's open-files limit is {facts.fd_limit} (its log at start), one socket per allocation"
                            + (f"; the relay port range has {facts.port_range_size} ports" if facts.port_range_size else ""))
    known = [f"relay port range of {facts.port_range_size} ports" if facts.port_range_size else "",
             f"fd limit {facts.fd_limit}" if facts.fd_limit else ""]
    return "capacity", "neither limit known to natkit is reached (" + (", ".join(k for k in known if k) or "pass --name or --server-log") + ")"


def cross_check(run: Run, sessions: tuple[SessionResult, ...]) -> CrossCheck | None:
    """Compare the sessions' counts with coturn's ``usage`` / ``peer usage`` lines (needs ``server_log`` of a ``-v`` coturn)."""
    lines = read_log(run) if sessions and run.cfg.peer == "echo" else None
    if not lines:
        return None
    if not any("usage: realm=" in line or "incoming packet" in line or ": new, realm=" in line for line in lines):
        run.notes.append("the server's log has no per-session usage lines: start coturn with -v (verbose) for the cross-check")
        return None
    want = {s.local: s for s in sessions if s.local}
    deadline = time.monotonic() + USAGE_WAIT
    while True:
        usage = coturn_log.sessions(read_log(run) or [])
        by_remote = {u.remote: u for u in usage.values() if u.remote and u.peer_sp is not None and u.client_rp is not None}
        if all(k in by_remote for k in want) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    mismatches = []
    matched = checked = 0
    for local, s in want.items():
        u = by_remote.get(local)
        if u is None:
            mismatches.append(f"session {s.index} ({local}): no usage line in the server's log")
            continue
        checked += 1
        diffs = []
        if u.peer_sp != s.to_peer:
            diffs.append(f"sent to peer: coturn {u.peer_sp}, natkit's peer received {s.to_peer}")
        if u.client_rp != s.sent + s.control_sent:
            diffs.append(f"from client: coturn {u.client_rp}, natkit sent {s.sent} data + {s.control_sent} requests")
        if u.client_sp != s.returned + s.duplicates + s.control_received:
            diffs.append(f"to client: coturn {u.client_sp}, natkit received {s.returned} data + {s.control_received} answers")
        if diffs:
            mismatches.append(f"session {s.index} ({local}): " + "; ".join(diffs))
        else:
            matched += 1
    return CrossCheck(checked, matched, tuple(mismatches))


def _cpu(run: Run) -> Cpu:
    res = run.cpu_result
    srv = res.get(run.cfg.server_pid) if run.cfg.server_pid else None
    me = res.get(os.getpid())
    load = (run.loadavg0, os.getloadavg()[0]) if getattr(run, "loadavg0", None) is not None else None
    return Cpu(workers_pct=tuple(res[p][0] for p in run.pids if p in res), workers_waiting_pct=tuple(res[p][2] for p in run.pids if p in res),
               coordinator_pct=me[0] if me else None,
               server_pct=srv[0] if srv else None, server_busiest_thread_pct=srv[1] if srv else None,
               host_loadavg=load, host_cpus=os.cpu_count())


def verdict(run: Run, media: MediaTotals | None, alloc: AllocTotals | None, hold: HoldTotals | None, cpu: Cpu,
            facts: ServerFacts | None = None) -> Verdict:
    """The headline figure; ``server_limit`` only when the generator kept up and the server showed the limit."""
    cfg = run.cfg
    notes = list(run.notes)
    gen_busy = cpu.worker_max_pct is not None and cpu.worker_max_pct > SATURATED_PCT
    failing = next((s for s in run.steps if not s.passed), None)
    why = f"saturated (> {SATURATED_PCT:.0f} % of a core per worker)"
    if failing is not None and failing.reason and "generator" in failing.reason:
        gen_busy = True
        why = next(p for p in failing.reason.split("; ") if "generator" in p).replace("generator ", "", 1)
    if gen_busy:
        notes.append(f"the generator was {why}: the figure is a lower bound of the server's capacity, not its limit; "
                     "add --workers or another machine (Locust)")
    waited = max((w for w in cpu.workers_waiting_pct if w is not None), default=None)
    if waited is not None and waited > STARVED_PCT:
        gen_busy = True
        notes.append(f"a generator worker waited {waited:.0f} % of the run for a CPU (other processes on the host): "
                     "it was starved, so the figure is not the server's limit")
    elif waited is not None and waited > 5.0:
        notes.append(f"a generator worker waited {waited:.0f} % of the run for a CPU")
    if cpu.host_loadavg and cpu.host_cpus and max(cpu.host_loadavg) > cpu.host_cpus:
        notes.append(f"the host's load average ({max(cpu.host_loadavg):.1f}) exceeded its {cpu.host_cpus} CPUs: other processes "
                     "competed for the CPU, so the generator (or the server) may have waited to run; rerun on a quiet machine")
    if d_gen := run._gen_drops:
        notes.append(f"the generator's own sockets dropped {d_gen:,} datagrams: it did not read fast enough, the loss is not the server's")
    if cpu.server_busiest_thread_pct is not None and cpu.server_busiest_thread_pct > SATURATED_PCT:
        notes.append(f"the server's busiest thread ran at {cpu.server_busiest_thread_pct:.0f} % of a core")
    limited, value, figure = "duration", None, ""
    if cfg.profile == "hold" and hold is not None:
        figure, value = "concurrent_allocations", float(hold.reached)
        code = (hold.first_refusal or {}).get("code")
        limited = {"486": "quota"}.get(code or "", "sessions" if hold.reached >= hold.target else "errors")
        if code == "508":
            limited = capacity_cause(hold.reached, facts or ServerFacts())[0]
        if code and code.startswith("local"):
            limited, gen_busy = "generator", True
    elif cfg.profile == "alloc" and alloc is not None:
        figure, value = "allocations_per_s", alloc.best_rate_per_s
        limited = "server" if failing is not None else "steps"
    elif media is not None and cfg.ramp:
        passed, _failed = run.ramp_result
        figure, value = "calls_carried", float(passed) if passed is not None else None
        limited = "server" if failing is not None else "session cap" if run.ramp_capped else "sessions"
    elif media is not None:
        figure, value = ("relayed_pps" if cfg.profile == "rate" else "calls_carried"), (media.relayed_pps if cfg.profile == "rate" else float(media.sessions))
        limited = "duration"
        if media.loss_pct is not None and media.loss_pct > cfg.max_loss:
            limited = "server"
    if run.total("capped"):
        limited = "packet cap"
    if run.interrupted:
        limited = "interrupted"
    if run._gen_drops:
        gen_busy = True
    if gen_busy and limited in ("server", "errors"):
        limited = "generator"
    # a refusal (486, 508) is the server's own word whatever the generator's state; a rate or a loss is not, from a busy generator
    server_limit = not run.interrupted and (limited in ("quota", "port range", "fd limit", "capacity") or (limited == "server" and not gen_busy))
    return Verdict(figure, value, limited, server_limit, tuple(notes))


def _failures(run: Run, media: MediaTotals | None, hold: HoldTotals | None, released: tuple[int, int]) -> list[Failure]:
    cfg = run.cfg
    out: list[Failure] = []
    if media is not None and not cfg.ramp and media.loss_pct is not None and media.loss_pct > cfg.max_loss:
        out.append(Failure.check("loss", f"round-trip loss {media.loss_pct:.2f} % is above --max-loss {cfg.max_loss:g} %"))
    if media is not None and not cfg.ramp and media.sessions_failed:
        codes = ", ".join(f"{k} x{v}" for k, v in sorted(run.errors().items()))
        out.append(Failure.check("setup", f"{media.sessions_failed} of {media.sessions + media.sessions_failed} sessions could not be "
                                          f"set up ({codes or 'no answer'})"))
    if media is not None and media.sessions == 0:
        out.append(nothing_allocated("setup", "no session could be set up", run.errors()))
    if hold is not None and hold.reached == 0:
        out.append(nothing_allocated("allocate", "no allocation succeeded", hold.errors))
    if released[1]:
        out.append(Failure.check("release", f"{released[1]} allocations were not confirmed released (Refresh LIFETIME 0)"))
    return out


def nothing_allocated(step: str, what: str, errors: dict[str, int]) -> Failure:
    """The failure of a run in which the server allocated nothing, with the exit code of its most frequent answer:
    401/441 → 5, 403/437/486/508 … → 6, timeouts → 4, else 1."""
    from ..stun.turn import ALLOCATION_CODES, AUTH_CODES

    codes = ", ".join(f"{k} x{v}" for k, v in sorted(errors.items())) or "no answer"
    top = max(errors, key=lambda k: errors[k]) if errors else "timeout"
    kind = ("auth_refused" if top.isdigit() and int(top) in AUTH_CODES else
            "allocation_refused" if top.isdigit() and int(top) in ALLOCATION_CODES else
            "unreachable" if top in ("timeout", "unreachable") else "check_failed")
    return Failure(kind, step, f"{what} ({codes})")


def build_report(run: Run) -> LoadReport:
    cfg = run.cfg
    facts = server_facts(run)
    media = alloc = hold = None
    sessions: tuple[SessionResult, ...] = ()
    if cfg.profile in ("audio", "video", "rate"):
        media, sessions = _media(run)
    elif cfg.profile == "alloc":
        alloc = _alloc(run)
    else:
        hold = _hold(run, facts)
    released = (sum(f["released"][0] for f in _finals(run)), sum(f["released"][1] for f in _finals(run)))
    if alloc is not None:  # every cycle released its own allocation
        released = (alloc.ok - alloc.step_errors.get("release", 0), alloc.step_errors.get("release", 0))
    d = run.drops()
    own = [f.get("drops") for f in _finals(run)]
    known = [int(x) for x in own if x is not None]
    run._gen_drops = sum(known) if own and len(known) == len(own) else None
    drops = Drops(generator=run._gen_drops, server=d.get("server"), rcvbuf_errors=d.get("rcvbuf_errors"),
                  sndbuf_errors=d.get("sndbuf_errors"),
                  generator_send_skipped=run.total("not_sent"))
    cpu = _cpu(run)
    check = cross_check(run, sessions)
    failures = _failures(run, media, hold, released)
    if alloc is not None and alloc.attempts and alloc.ok == 0:
        failures.append(nothing_allocated("allocate", "no allocation succeeded", alloc.errors))
    for message in run.worker_errors:
        failures.append(Failure("internal", "worker", message))
    if len(run.finals) and any(f is None for f in run.finals):
        failures.append(Failure.check("workers", f"{sum(f is None for f in run.finals)} workers sent no final counters"))
    return LoadReport(
        schema=SCHEMA, profile=cfg.profile, server=cfg.uri or str(cfg.server), transport=cfg.transport, peer=cfg.peer,
        started=run.started, duration_s=time.monotonic() - run.t0, interrupted=run.interrupted, workers=run.nworkers,
        config=cfg.public(), verdict=verdict(run, media, alloc, hold, cpu, facts), cpu=cpu, drops=drops, server_facts=facts,
        steps=tuple(run.steps), media=media, alloc=alloc, hold=hold, sessions=sessions[:MAX_SESSIONS_IN_REPORT],
        released=released[0], release_failed=released[1], cross_check=check, failures=tuple(failures))


def attach_baseline(report: LoadReport, baseline: dict, tolerance: float) -> LoadReport:
    """The report with ``baseline`` compared in, and a failure per regression (exit 1)."""
    import dataclasses

    from .report import compare

    table, regressions = compare(report.to_json(), baseline, tolerance)
    failures = report.failures + tuple(Failure.check("baseline", r) for r in regressions)
    return dataclasses.replace(report, baseline={"tolerance": tolerance, "figures": table}, failures=failures)


__all__ = ["Any", "attach_baseline", "build_report", "cross_check", "hold_reason"]
