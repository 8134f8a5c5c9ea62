"""The service's logs: where they go, their format, one event per request and per engine event.

Everything goes to standard error (under systemd: the journal; in a container: its log), at the
level of `--log-level`. `--log-format text` (the default) is uvicorn's access log and plain lines;
`--log-format json` is one JSON object a line, for log shippers:

    {"ts": "2026-12-02T05:01:02.345Z", "level": "info", "logger": "sandbox.request", "event": "request",
     "method": "POST", "route": "/v1/execute", "key_id": "key-6f1c…", "status": 200, "outcome": "ok",
     "wall_ms": 31.2, "cpu_ms": 12.0, "bytes_in": 35, "bytes_out": 412}
    {"ts": ..., "level": "warning", "logger": "sandbox.host.pool", "event": "jail_died", "slot": 0, ...}
    {"ts": ..., "level": "info", "logger": "sandbox.host.pool", "event": "jail_recycled", "slot": 1, "runs": 1000}
    {"ts": ..., "level": "info", "logger": "sandbox.sessions", "event": "session_ended", "reason": "..."}
    {"ts": ..., "level": "info", "logger": "sandbox.server", "event": "keys_reloaded", "keys": 3}

A request's `route` is the route's template (`/k/{api_key}/run_code`, never the path a key travels
in), `key_id` the key's owner id (deps.owner_of), never the key; `outcome` the run's outcome when the
request ran code; `cpu_ms` the CPU time of the code it ran. Every record also passes through the
process-wide key scrubber of serve.py (`scrub_keys`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .gate import OWNER

REQUEST_LOG = logging.getLogger("sandbox.request")
# The run(s) a request made: MeteredSandbox's Metrics.observe() writes here (a dict per request, shared
# by every task the request starts, since a copied context holds the same dict).
_RUNS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("sandbox_request_runs", default=None)
_KEY_IN_PATH = re.compile(r"/k/[^/]*")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


def note_run(outcome: str, cpu_ms: float) -> None:
    """Record a run's outcome and CPU time on the current request, if one is being logged."""
    runs = _RUNS.get()
    if runs is not None:
        runs["outcome"] = outcome
        runs["cpu_ms"] = round(runs.get("cpu_ms", 0.0) + cpu_ms, 3)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, event, message, and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(), "logger": record.name, "event": getattr(record, "event", "log")}
        if doc["event"] != "request":
            doc["message"] = record.getMessage()
        for name, value in vars(record).items():
            if name not in _STANDARD and name != "event" and not name.startswith("_"):
                doc[name] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            doc["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(fmt: str, level: str) -> dict[str, Any] | None:
    """Set up the process's logging; returns the log_config for uvicorn (None: uvicorn's default)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(levelname)s:  %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if fmt != "json":
        REQUEST_LOG.disabled = True  # text: uvicorn's access log is the request log
        return None
    # json: uvicorn's own loggers through the same handler; its access log replaced by our request events
    return {"version": 1, "disable_existing_loggers": False,
            "loggers": {"uvicorn": {"level": level.upper(), "handlers": [], "propagate": True},
                        "uvicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
                        "uvicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False}}}


class RequestLog:
    """ASGI middleware, outermost: one `request` event per HTTP request once its answer is sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or REQUEST_LOG.disabled or not REQUEST_LOG.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        runs: dict[str, Any] = {}
        token = _RUNS.set(runs)
        seen = {"in": 0, "out": 0, "status": 500}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen["in"] += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            _RUNS.reset(token)
            route = scope.get("route")
            template = getattr(route, "path", None) or _KEY_IN_PATH.sub("/k/***", scope.get("path", ""))
            key_id = scope.get("state", {}).get(OWNER)
            REQUEST_LOG.info("%s %s %s", scope.get("method"), template, seen["status"], extra={
                "event": "request", "method": scope.get("method"), "route": template, "key_id": key_id,
                "status": seen["status"], "outcome": runs.get("outcome"),
                "wall_ms": round((time.perf_counter() - t0) * 1000, 3), "cpu_ms": runs.get("cpu_ms"),
                "bytes_in": seen["in"], "bytes_out": seen["out"]})
