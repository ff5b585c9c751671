"""The profiles' steps, run by the coordinator (:class:`natkit.load.runner.Run`).

* media (``audio``, ``video``, ``rate``): set up the sessions, measure for
  ``duration``; with ``ramp``, measure ``step_duration`` per step, raising
  the number of sending sessions by ``ramp_factor`` while a step passes, then
  bisecting between the last pass and the first failure down to 5 %, never
  above :meth:`~natkit.load.runner.Run.session_cap` (natkit's hard cap, the
  workers' open-files limit). A step passes when its round-trip loss is at
  most ``max_loss`` %, every session it asked for was set up and sent, and
  no worker was saturated (> 80 % of a core), starved (waited > 20 % of the
  step for a CPU) or behind its schedule.
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


def setup_baseline(run: Run) -> tuple[int, dict[str, int]]:
    """Setup failures so far and their codes: taken before a step grows, so the step sees its own refusals."""
    return run.total("failed"), run.errors()


def measure_media(run: Run, epoch: int, seconds: float, asked: int, before: tuple[int, dict[str, int]] | None = None) -> Step:
    """Run epoch ``epoch`` for ``seconds`` with ``asked`` sessions and judge it.

    ``before``: :func:`setup_baseline` taken before this step's sessions were
    set up (None: now), so sessions refused while growing fail the step. The
    step's ``sessions`` is the number that actually sent, which can be fewer
    than ``asked`` (refused now or in an earlier step): then it fails.
    """
    cfg = run.cfg
    run.phase = f"measuring {asked} sessions"
    failed0, errors0 = before if before is not None else setup_baseline(run)
    behind0 = run.total("not_sent")
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
    sending = run.total("sending")
    loss = loss_pct(sent, returned)
    reasons = []
    if loss is None or loss > cfg.max_loss:
        reasons.append(f"loss {loss if loss is not None else 100:.2f} % > {cfg.max_loss:g} %")
    failed = run.total("failed") - failed0
    errors = {k: v - errors0.get(k, 0) for k, v in run.errors().items() if v > errors0.get(k, 0)}
    local = {k: v for k, v in errors.items() if k.startswith("local")}
    if local:
        reasons.append(f"generator's own limit: {sum(local.values())} sessions not set up ({_codes(local)})")
    elif failed:
        reasons.append(f"{failed} sessions failed to set up ({_codes(errors)})")
    if sending < asked:
        reasons.append(f"{sending} of {asked} sessions sending")
    reasons += generator_reasons(run, cpu, run.total("not_sent") - behind0, sent)
    step = Step(index=len(run.steps), seconds=elapsed, sessions=sending, offered_per_s=cfg.offered_pps(sending),
                achieved_per_s=sent / elapsed if elapsed else None, returned_per_s=returned / elapsed if elapsed else None,
                loss_pct=loss, rtt_ms_p50=_ms(rtt.percentile(50)), rtt_ms_p99=_ms(rtt.percentile(99)),
                errors=run.errors(), worker_cpu_max_pct=max((cpu[p][0] for p in run.pids if p in cpu), default=None),
                server_cpu_pct=cpu[cfg.server_pid][0] if cfg.server_pid in cpu else None,
                passed=not reasons, reason="; ".join(reasons) or None)
    run.steps.append(step)
    return step


def generator_reasons(run: Run, cpu: dict, not_sent: int, sent: int) -> list[str]:
    """Why a step says nothing about the server: a worker saturated or starved, or behind its schedule
    (``not_sent`` packets of the schedule, more than 1 % of ``sent``). Every reason starts with "generator"."""
    from .build import STARVED_PCT

    busy = run.saturated(cpu)
    if busy is not None:
        return [f"generator saturated (a worker at {busy:.0f} % of a core)"]
    waited = max((cpu[p][2] for p in run.pids if p in cpu and cpu[p][2] is not None), default=None)
    if waited is not None and waited > STARVED_PCT:
        return [f"generator starved (a worker waited {waited:.0f} % of the step for a CPU)"]
    if not_sent > 0.01 * max(sent, 1):
        return [f"generator behind schedule ({not_sent} packets not sent)"]
    return []


def _codes(errors: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(errors.items())) or "no error code"


def next_ramp_size(n: int, passed: int | None, failed: int | None, factor: float, cap: int) -> tuple[int | None, str]:
    """The ramp's next number of sessions after a step of ``n``: ``(next, "")``, or ``(None, why)`` when it is over.

    ``passed``/``failed``: the largest passing and smallest failing step so far.
    Up ×``factor`` while nothing failed (never above ``cap``: ``why`` is
    ``"cap"`` when a step at the cap passed), down by half while nothing
    passed, then bisection until the two are within 5 % (``"bisected"``).
    """
    if passed is None:
        return (None, "nothing passed") if n <= 1 else (max(1, n // 2), "")
    if failed is None:
        if n >= cap:
            return None, "cap"
        return min(cap, max(n + 1, math.ceil(n * factor))), ""
    if failed - passed <= max(1, math.ceil(passed * 0.05)):
        return None, "bisected"
    return (passed + failed) // 2, ""


def drive_media(run: Run) -> None:
    cfg = run.cfg
    if not cfg.ramp:
        before = setup_baseline(run)
        grow_to(run, cfg.sessions)
        measure_media(run, 1, cfg.duration, cfg.sessions, before)
        return
    cap, cap_why = run.session_cap()
    n: int | None = min(cfg.sessions, cap)
    passed = failed = None
    epoch = 1
    deadline = time.monotonic() + cfg.duration if cfg.duration else None
    for _ in range(cfg.max_steps):
        assert n is not None
        before = setup_baseline(run)  # before growing: a session refused while growing fails this step
        grow_to(run, n)
        run.broadcast({"op": "active", "sessions": n})
        step = measure_media(run, epoch, cfg.step_duration, n, before)
        epoch += 2
        if run.total("capped"):
            run.notes.append("the packet cap ended the ramp")
            break
        if step.passed:
            passed = n
        else:
            failed = n
            # a step the generator failed still bisects: the figure (a lower bound of the server's capacity,
            # the verdict says so) is then as fine as a server-limited one, not a x1.5 step apart run to run
        n, why = next_ramp_size(n, passed, failed, cfg.ramp_factor, cap)
        if why == "cap":
            run.ramp_capped = cap_why
            run.notes.append(f"the ramp stopped at {cap:,} calls, {cap_why}: the server carried all of them, "
                             "so its limit is higher (add --workers or another machine)")
        if n is None:
            break
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
