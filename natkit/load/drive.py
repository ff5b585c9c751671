"""The profiles' steps, run by the coordinator (:class:`natkit.load.runner.Run`).

* media (``audio``, ``video``, ``rate``): set up the sessions, measure for
  ``duration``; with ``ramp``, measure ``step_duration`` per step, raising
  the number of sending sessions by ``ramp_factor`` while a step passes, then
  bisecting between the last pass and the first failure down to 5 %.
  A step passes when its round-trip loss is at most ``max_loss`` %, every
  session set up, and no worker was saturated (> 80 % of a core) or behind
  its schedule.
* ``alloc``: allocations per second in steps (first ``rate``, default 20/s,
  then x ``ramp_factor``) while a step passes: errors at most 1 % of the
  cycles started, Allocate p99 at most ``max_latency_ms``, at least 90 % of
  the offered rate achieved, no saturated worker.
* ``hold``: open, hold for ``duration``.

Measurement epochs are odd (1, 3, 5 ...); the even epoch between two is a
transition whose packets are not judged.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from .report import Step
from .stats import loss_pct

if TYPE_CHECKING:
    from .runner import Run

STEP_DRAIN = 0.4  # s after a step before its returns are counted
ALLOC_ERROR_RATIO = 0.01
ALLOC_ACHIEVED_RATIO = 0.9


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000.0


def grow_to(run: Run, n: int) -> None:
    """Set up sessions until ``n`` exist (numbered 0..n-1; session i on worker i mod W)."""
    have = run._have
    if n <= have:
        return
    run.phase = f"setting up {n - have} sessions"
    before = run.grown
    pending = 0
    for w in range(run.nworkers):
        indices = [i for i in range(have, n) if i % run.nworkers == w]
        if indices:
            run.send(w, {"op": "grow", "indices": indices})
            pending += 1
    run._have = n
    run.wait(run.cfg.timeout * max(2, math.ceil(n / 64) * 2) + 10.0, lambda: run.grown - before >= pending)
    if run.send_start is None:
        run.send_start = time.monotonic()


def measure_media(run: Run, epoch: int, seconds: float, sessions: int) -> Step:
    """Run epoch ``epoch`` for ``seconds`` and judge it."""
    cfg = run.cfg
    run.phase = f"measuring {sessions} sessions"
    failed0, skipped0 = run.total("failed"), run.total("skipped") + run.total("backpressure")
    run.broadcast({"op": "epoch", "epoch": epoch})
    from .sysmon import CpuMeter

    meter = CpuMeter(run.pids + ([cfg.server_pid] if cfg.server_pid else []))
    t0 = time.monotonic()
    try:
        run.wait(seconds, lambda: run.total("capped") > 0)
    finally:
        run.broadcast({"op": "epoch", "epoch": epoch + 1})
    elapsed = time.monotonic() - t0
    cpu = meter.lap()
    t1 = time.monotonic()
    run.wait(STEP_DRAIN)
    run.fresh(t1 + STEP_DRAIN)
    sent, returned, rtt = run.epoch(epoch)
    loss = loss_pct(sent, returned)
    reasons = []
    if loss is None or loss > cfg.max_loss:
        reasons.append(f"loss {loss if loss is not None else 100:.2f} % > {cfg.max_loss:g} %")
    failed = run.total("failed") - failed0
    if failed:
        reasons.append(f"{failed} sessions failed to set up ({_codes(run.errors())})")
    busy = run.saturated(cpu)
    behind = run.total("skipped") + run.total("backpressure") - skipped0
    if busy is not None:
        reasons.append(f"generator saturated (a worker at {busy:.0f} % of a core)")
    elif behind > 0.01 * max(sent, 1):
        reasons.append(f"generator behind schedule ({behind} packets not sent)")
    step = Step(index=len(run.steps), seconds=elapsed, sessions=sessions, offered_per_s=cfg.offered_pps(sessions),
                achieved_per_s=sent / elapsed if elapsed else None, returned_per_s=returned / elapsed if elapsed else None,
                loss_pct=loss, rtt_ms_p50=_ms(rtt.percentile(50)), rtt_ms_p99=_ms(rtt.percentile(99)),
                errors=run.errors(), worker_cpu_max_pct=max((cpu[p][0] for p in run.pids if p in cpu), default=None),
                server_cpu_pct=cpu[cfg.server_pid][0] if cfg.server_pid in cpu else None,
                passed=not reasons, reason="; ".join(reasons) or None)
    run.steps.append(step)
    return step


def _codes(errors: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(errors.items())) or "no error code"


def drive_media(run: Run) -> None:
    cfg = run.cfg
    if not cfg.ramp:
        grow_to(run, cfg.sessions)
        measure_media(run, 1, cfg.duration, cfg.sessions)
        return
    n, passed, failed = cfg.sessions, None, None
    epoch = 1
    deadline = time.monotonic() + cfg.duration if cfg.duration else None
    for _ in range(cfg.max_steps):
        grow_to(run, n)
        run.broadcast({"op": "active", "sessions": n})
        step = measure_media(run, epoch, cfg.step_duration, n)
        epoch += 2
        if run.total("capped"):
            run.notes.append("the packet cap ended the ramp")
            break
        if step.passed:
            passed = n
        else:
            failed = n
            if step.reason and "generator" in step.reason and passed is not None:
                break  # more sessions cannot tell anything about the server (fewer still might: halve below)
        if passed is None:
            if n == 1:
                break
            n = max(1, n // 2)
        elif failed is None:
            n = max(n + 1, math.ceil(n * cfg.ramp_factor))
        else:
            if failed - passed <= max(1, math.ceil(passed * 0.05)):
                break
            n = (passed + failed) // 2
        if deadline is not None and time.monotonic() > deadline and failed is not None:
            run.notes.append("--duration ended the ramp before the bisection finished")
            break
    run.ramp_result = (passed, failed)


def drive_alloc(run: Run) -> None:
    cfg = run.cfg
    rate = cfg.rate or 20.0
    for k in range(cfg.max_steps):
        epoch = k + 1
        run.phase = f"{rate:.0f} allocations/s"
        per = rate / run.nworkers
        run.broadcast({"op": "rate", "rate": per, "epoch": epoch})
        from .sysmon import CpuMeter

        meter = CpuMeter(run.pids + ([cfg.server_pid] if cfg.server_pid else []))
        t0 = time.monotonic()
        try:
            run.wait(cfg.step_duration)
        finally:
            run.broadcast({"op": "rate", "rate": 0.0, "epoch": epoch})
        elapsed = time.monotonic() - t0
        cpu = meter.lap()
        t1 = time.monotonic()

        def settled(t1: float = t1) -> bool:
            return all(t > t1 for t in run.snap_t) and run.total("in_flight") == 0

        run.wait(cfg.timeout + 1.0, settled)
        step = _judge_alloc(run, epoch, rate, elapsed, cpu)
        run.steps.append(step)
        if not step.passed:
            break
        rate *= cfg.ramp_factor


def _judge_alloc(run: Run, epoch: int, rate: float, elapsed: float, cpu: dict) -> Step:
    cfg = run.cfg
    st = run.alloc_step(epoch)
    errors = sum(st["errors"].values())
    lat = st["latency"]
    p99 = _ms(lat.percentile(99))
    achieved = st["ok"] / elapsed if elapsed else 0.0
    reasons = []
    if st["started"] and errors > ALLOC_ERROR_RATIO * st["started"]:
        reasons.append(f"{errors} errors in {st['started']} cycles ({_codes(st['errors'])})")
    if p99 is not None and p99 > cfg.max_latency_ms:
        reasons.append(f"Allocate p99 {p99:.0f} ms > {cfg.max_latency_ms:g} ms")
    if achieved < ALLOC_ACHIEVED_RATIO * rate:
        reasons.append(f"achieved {achieved:.0f}/s of {rate:.0f}/s offered")
    busy = run.saturated(cpu)
    if busy is not None:
        reasons.append(f"generator saturated (a worker at {busy:.0f} % of a core)")
    return Step(index=len(run.steps), seconds=elapsed, offered_per_s=rate, achieved_per_s=achieved,
                latency_ms_p50=_ms(lat.percentile(50)), latency_ms_p95=_ms(lat.percentile(95)), latency_ms_p99=p99,
                errors=dict(st["errors"]), worker_cpu_max_pct=max((cpu[p][0] for p in run.pids if p in cpu), default=None),
                server_cpu_pct=cpu[cfg.server_pid][0] if cfg.server_pid in cpu else None,
                passed=not reasons, reason="; ".join(reasons) or None)


def drive_hold(run: Run) -> None:
    cfg = run.cfg
    run.phase = f"opening up to {cfg.sessions} allocations"
    run.broadcast({"op": "open"})
    run.wait(1.0, lambda: all(s for s in run.snaps))
    run.wait(cfg.max_time, lambda: all(s and not s.get("opening", True) for s in run.snaps))
    run.phase = f"holding {run.total('held')} allocations"
    t0 = time.monotonic()
    try:
        run.wait(cfg.duration)
    finally:
        run.hold_seconds = time.monotonic() - t0


DRIVERS = {"audio": drive_media, "video": drive_media, "rate": drive_media, "alloc": drive_alloc, "hold": drive_hold}
