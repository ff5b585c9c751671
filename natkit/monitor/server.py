"""``natkit monitor serve``: the probe scheduler and the HTTP endpoints (:mod:`natkit.monitor.http`).

* ``/metrics``: the Prometheus exposition of :class:`~natkit.monitor.metrics.MonitorState`
  plus this process' CPU and memory (``process_*``).
* ``/probe?target=URI|NAME&module=NAME``: one probe now, blackbox-exporter
  style, so Prometheus drives the schedule. A configured target (by name or
  URI) is probed with its own settings; any other URI needs a module
  (``[modules.NAME]``, default ``default``) whose ``allow`` list admits the
  host — credentials are never sent to a host the operator did not name.
  The probe's budget is Prometheus' ``X-Prometheus-Scrape-Timeout-Seconds``
  less 0.25 s, at most the config's ``timeout``. At most
  ``probe_concurrency`` (default 8) /probe requests run at once, each holding
  two allocations on its target; one more is answered 503 with
  ``Retry-After: 1`` at once, so a client hammering /probe cannot make the
  monitor allocate on the configured hosts without bound.
* ``/healthz``: 200 only when this node allocates and relays now (every
  transport of the healthz target passed a probe at most ``healthz_cache``
  seconds old; else one is run, shared by concurrent requests), else 503
  with the reason. For load balancers.

Every target runs in its own task: a slow or dead target spends its own
probe budget and never delays another's schedule. A probe that raises (a bug
in natkit: anything but what the server does, which the probe reports) does
not end that task: the target's result becomes a failed one
(:func:`~natkit.monitor.probe.internal_result`, ``errors_total{code="internal"}``),
the error is logged with its traceback once per target and then at most every
:data:`INTERNAL_LOG_EVERY` seconds, and the next round runs on schedule.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, Self

from ..errors import EnvironmentProblem, UsageError
from .config import MAX_TARGETS, Module, MonitorConfig, Target
from .http import Request, Response
from .metrics import MonitorState, exposition, probe_exposition, registry
from .probe import ProbeResult, internal_result, probe

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
INTERNAL_LOG_EVERY = 600.0  # s: an internal error repeating every round is logged once per target in this time


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Monitor:
    """The running monitor: per-target probe tasks, the state they fill, and the HTTP site.

    ``start()`` binds the listener and starts the probes (first round at
    once); ``stop()`` cancels everything (bounded). ``on_result`` sees every
    result (``natkit monitor serve -v`` logs failures with it); ``log`` takes
    the monitor's own error reports (default: stderr). ``prober`` is the probe
    function (default :func:`~natkit.monitor.probe.probe`, same signature).
    """

    def __init__(self, config: MonitorConfig, *, on_result: Callable[[ProbeResult], None] | None = None,
                 log: Callable[[str], None] | None = None, prober: Callable[..., Any] | None = None) -> None:
        self.config = config
        self.state = MonitorState()
        self.state.expect((t.key for t in config.targets), config.interval)
        self.registry = registry(self.state)
        self.on_result = on_result
        self.log = log or _stderr
        self.prober = prober or probe
        self._internal_log: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (last logged, suppressed since)
        self._probes_in_flight = 0
        self.port: int | None = None
        self._tasks: list[asyncio.Task] = []
        self._runner: Any = None
        self._healthz: dict[tuple[str, str], ProbeResult] = {}
        self._healthz_task: asyncio.Task | None = None
        self.started = time.monotonic()

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> Monitor:
        from .http import HttpServer

        host, port = self.config.listen_address
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server((host, port), family=family, backlog=128)
            sock.setblocking(False)
            self._runner = HttpServer(sock, {"/": self._index, "/metrics": self._metrics, "/probe": self._probe,
                                             "/healthz": self._healthz_handler})
            await self._runner.start()
        except OSError as exc:
            self._runner = None
            raise EnvironmentProblem(f"cannot listen on {host}:{port}: {exc.strerror or exc}", step="listen",
                                     hint="choose another --listen address or port (port 0 picks a free one)") from None
        self.port = sock.getsockname()[1]
        n = len(self.config.targets)
        for i, target in enumerate(self.config.targets):
            # first round at once (a scrape a second after start sees every target); later rounds spread out
            self._tasks.append(asyncio.ensure_future(self._loop(target, offset=i / max(n, 1))))
        return self

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._healthz_task] if self._healthz_task else [])]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=3.0)
        self._tasks = []
        if self._runner is not None:
            await self._runner.stop()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        host, _ = self.config.listen_address
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    # ------------------------------------------------------------- schedule
    async def _loop(self, target: Target, *, offset: float) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.interval
        first = True
        next_at = loop.time()
        while True:
            result = await self.probe_once(target, timeout=self.config.timeout)
            self._observe(result)
            if first:  # spread the targets over the interval from the second round on
                next_at += interval * offset
                first = False
            next_at += interval * random.uniform(0.98, 1.02)
            now = loop.time()
            if next_at < now:  # a probe longer than the interval: skip the missed slots, never burst
                next_at = now + interval * 0.1
            await asyncio.sleep(next_at - now)

    async def probe_once(self, target: Target, *, timeout: float) -> ProbeResult:
        """One probe of ``target``; never raises but CancelledError (an unexpected error is a failed result, logged)."""
        started, t0 = time.time(), time.monotonic()
        try:
            return await self.prober(target, timeout=timeout, echoes=self.config.echoes, max_echo_loss=self.config.max_echo_loss)
        except Exception as exc:  # a bug in natkit: the target must read as failing, the schedule must go on
            self._internal(target.key, exc, "probing")
            return internal_result(target, exc, started=started, duration_ms=(time.monotonic() - t0) * 1000.0)

    def _observe(self, result: ProbeResult) -> None:
        key = (result.target, result.transport)
        try:
            self.state.observe(result)
        except Exception as exc:
            self._internal(key, exc, "recording the result of")
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception as exc:
                self._internal(key, exc, "reporting the result of")

    def _internal(self, key: tuple[str, str], exc: Exception, doing: str) -> None:
        """Log an internal error: with its traceback the first time per target, then a line at most every INTERNAL_LOG_EVERY s."""
        now = time.monotonic()
        last, suppressed = self._internal_log.get(key, (None, 0))
        if last is not None and now - last < INTERNAL_LOG_EVERY:
            self._internal_log[key] = (last, suppressed + 1)
            return
        if len(self._internal_log) >= 4 * MAX_TARGETS:  # /probe of many allowed hosts: keep the bookkeeping bounded
            self._internal_log.clear()
        self._internal_log[key] = (now, 0)
        counted = ", counted as a failed probe (errors_total code=internal)" if doing == "probing" else ""
        head = (f"natkit monitor: internal error {doing} {key[0]} ({key[1]}){counted}; a bug in natkit, please report it: "
                f"{type(exc).__name__}: {exc}")
        if last is None:
            self.log(head + "\n" + "".join(traceback.format_exception(exc)).rstrip())
        else:
            self.log(head + f" ({suppressed} more since the last report)")

    # ------------------------------------------------------------- healthz
    async def healthz(self) -> tuple[bool, str]:
        """(healthy, reason) for the healthz target, probing it now unless a result is fresh enough."""
        targets = self.config.healthz_targets()
        if not targets:
            return False, "no healthz target configured"
        fresh = self._fresh(targets)
        if fresh is None:
            if self._healthz_task is None or self._healthz_task.done():
                self._healthz_task = asyncio.ensure_future(self._healthz_round(targets))
            results = await asyncio.shield(self._healthz_task)
        else:
            results = fresh
        bad = [r for r in results if not r.ok]
        if bad:
            return False, "; ".join(f"{r.target} ({r.transport}): {r.reason}" for r in bad)
        return True, "; ".join(f"{r.target} ({r.transport}): allocated {r.relayed} and relayed {r.echo_received}/{r.echo_sent} "
                               f"echoes in {r.duration_ms:.0f} ms" for r in results)

    def _fresh(self, targets: tuple[Target, ...]) -> list[ProbeResult] | None:
        now = time.time()
        out = []
        for t in targets:
            candidates = [r for r in (self.state.latest.get(t.key), self._healthz.get(t.key)) if r is not None]
            newest = max(candidates, key=lambda r: r.started, default=None)
            if newest is None or now - (newest.started + newest.duration_ms / 1000.0) > self.config.healthz_cache:
                return None
            out.append(newest)
        return out

    async def _healthz_round(self, targets: tuple[Target, ...]) -> list[ProbeResult]:
        results = await asyncio.gather(*(self.probe_once(t, timeout=self.config.timeout) for t in targets))
        for r in results:
            self._healthz[(r.target, r.transport)] = r
        return list(results)

    # ------------------------------------------------------------- /probe
    def probe_target(self, text: str, module_name: str | None) -> Target:
        """The target a /probe request names. Raises :class:`UsageError` (400) or :class:`PermissionError` (403)."""
        if module_name is None:
            for t in self.config.targets:
                if text in (t.name, str(t.uri)):
                    return t
        from .config import cli_target

        module = self._module(module_name)
        parsed = cli_target(text, module.credentials)
        if not module.allows(parsed.uri.host, self.config.configured_hosts()):
            raise PermissionError(f"module {module.name!r} does not allow probing {parsed.uri.host}")
        return dataclasses.replace(parsed, checks=module.checks, cafile=module.cafile, verify_tls=module.verify_tls,
                                   expect_relayed_ip=module.expect_relayed_ip)

    def _module(self, name: str | None) -> Module:
        modules = self.config.modules
        if name is None:
            name = "default"
        if name not in modules:
            raise UsageError(f"unknown module {name!r}" + (f"; configured: {', '.join(modules)}" if modules else "; no [modules] configured"))
        return modules[name]

    # ------------------------------------------------------------- handlers
    async def _index(self, request: Request) -> Response:
        lines = ["natkit monitor", "", "/metrics   Prometheus metrics of every target", "/probe?target=URI|NAME[&module=NAME]   one probe now",
                 "/healthz   200 when this node allocates and relays now, else 503", "",
                 *(f"target {t.name} ({t.transport}) {t.uri}" for t in self.config.targets)]
        return Response.text(200, "\n".join(lines) + "\n")

    async def _metrics(self, request: Request) -> Response:
        return Response(200, exposition(self.registry), CONTENT_TYPE)

    async def _probe(self, request: Request) -> Response:
        text = request.query.get("target")
        if not text:
            return Response.text(400, "target parameter missing\n")
        try:
            target = self.probe_target(text, request.query.get("module"))
        except UsageError as exc:
            return Response.text(400, exc.one_line() + "\n")
        except PermissionError as exc:
            return Response.text(403, f"{exc}\n")
        limit = self.config.probe_concurrency
        if self._probes_in_flight >= limit:
            return Response.text(503, f"{limit} /probe requests are running already (probe_concurrency); retry later\n",
                                 headers=(("Retry-After", "1"),))
        budget = self.config.timeout
        header = request.headers.get("x-prometheus-scrape-timeout-seconds")
        try:
            if header:
                budget = max(0.1, min(budget, float(header) - 0.25))
        except ValueError:
            pass
        self._probes_in_flight += 1
        try:
            result = await self.probe_once(target, timeout=budget)
        finally:
            self._probes_in_flight -= 1
        return Response(200, probe_exposition(result), CONTENT_TYPE)

    async def _healthz_handler(self, request: Request) -> Response:
        ok, reason = await self.healthz()
        return Response.text(200 if ok else 503, ("ok: " if ok else "unhealthy: ") + reason + "\n",
                             headers=(("Cache-Control", "no-store"),))


async def serve_forever(config: MonitorConfig, *, ready: Callable[[Monitor], None] | None = None,
                        on_result: Callable[[ProbeResult], None] | None = None, log: Callable[[str], None] | None = None) -> None:
    """Run the monitor until cancelled (Ctrl-C, SIGTERM); ``ready(monitor)`` once it listens; ``log`` as :class:`Monitor`'s."""
    async with Monitor(config, on_result=on_result, log=log) as monitor:
        if ready is not None:
            ready(monitor)
        await asyncio.Event().wait()
