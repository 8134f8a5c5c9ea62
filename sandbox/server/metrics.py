"""Prometheus metrics of the service, on the app's own registry (so two apps in one process never
share counters): runs by outcome, run latency, queue depth, live slots, open sessions."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..client import AsyncSandbox, Files, TextCallback
from ..limits import Limits
from ..results import Output, Result
from .logs import note_run

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The service's instruments. `observe()` records one run; gauges are read from the pool at scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs = Counter("sandbox_runs", "Runs finished, by outcome", ["outcome"], registry=self.registry)
        self.rejected = Counter("sandbox_runs_rejected", "Runs refused before they ran, by reason", ["reason"],
                                registry=self.registry)
        self.latency = Histogram("sandbox_run_seconds", "Wall time of a run as the service saw it (queueing included)",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.abandoned = Counter("sandbox_runs_abandoned", "Runs killed because their client disconnected",
                                 registry=self.registry)
        self.open_sessions: Callable[[], int] = lambda: 0

    def observe(self, result: Result, seconds: float) -> None:
        self.runs.labels(result.outcome.value).inc()
        self.latency.observe(seconds)
        note_run(result.outcome.value, result.usage.cpu_ms)  # for the request's log event

    async def run(self, call: Awaitable[Result]) -> Result:
        """Await one run (a sandbox's or a session's) and count it, or count why it was refused."""
        t0 = time.perf_counter()
        try:
            result = await call
        except Exception as exc:
            self.rejected.labels(type(exc).__name__).inc()
            raise
        self.observe(result, time.perf_counter() - t0)
        return result

    async def stream(self, events: AsyncIterator[Output | Result]) -> AsyncIterator[Output | Result]:
        """Pass a run's events through, counting its result. Closing this closes `events` (which kills
        the run if it has not ended)."""
        t0 = time.perf_counter()
        async with aclosing(events):  # type: ignore[type-var]
            try:
                async for event in events:
                    if isinstance(event, Result):
                        self.observe(event, time.perf_counter() - t0)
                    yield event
            except Exception as exc:
                self.rejected.labels(type(exc).__name__).inc()
                raise

    def watch(self, sandbox: AsyncSandbox) -> None:
        self.registry.register(_PoolCollector(sandbox, self))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PoolCollector(Collector):
    def __init__(self, sandbox: AsyncSandbox, metrics: Metrics) -> None:
        self.sandbox = sandbox
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            s = self.sandbox.stats()
        except Exception:  # noqa: BLE001 - a closed sandbox has no gauges
            return
        yield GaugeMetricFamily("sandbox_queue_depth", "Calls waiting for a slot", value=s.waiting)
        yield GaugeMetricFamily("sandbox_slots_live", "Slots running (idle or busy)", value=s.live)
        yield GaugeMetricFamily("sandbox_slots_busy", "Slots running a call", value=s.busy)
        yield GaugeMetricFamily("sandbox_slots", "Slots the pool keeps", value=s.size)
        yield GaugeMetricFamily("sandbox_sessions_open", "Sessions open", value=self.metrics.open_sessions())


class MeteredSandbox(AsyncSandbox):
    """The app's AsyncSandbox: every run through it, from any route or tool, streamed or not, is counted."""

    def __init__(self, metrics: Metrics, slots: int | None = None, **kwargs: Any) -> None:
        super().__init__(slots, **kwargs)
        self.metrics = metrics

    async def run(self, code: str, files: Files | None = None, *, stdin: bytes | str | None = None,
                  timeout: float | None = None, limits: Limits | Mapping[str, Any] | None = None,
                  filename: str = "main.py", on_stdout: TextCallback | None = None,
                  on_stderr: TextCallback | None = None) -> Result:
        return await self.metrics.run(super().run(code, files, stdin=stdin, timeout=timeout, limits=limits,
                                                  filename=filename, on_stdout=on_stdout, on_stderr=on_stderr))

    def stream(self, code: str, files: Files | None = None, *, stdin: bytes | str | None = None,
               timeout: float | None = None, limits: Limits | Mapping[str, Any] | None = None,
               filename: str = "main.py") -> AsyncIterator[Output | Result]:
        return self.metrics.stream(super().stream(code, files, stdin=stdin, timeout=timeout, limits=limits,
                                                  filename=filename))


router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
