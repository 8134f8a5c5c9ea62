"""The ASGI app: assembles routers, the error handlers, the Gate (key, then body cap) and the lifespan.
Nothing else."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import APIRouter, FastAPI

from .. import __version__
from ..client import AsyncSandbox, image_manifest
from ..errors import SandboxClosedError, SandboxError
from ..limits import Limits
from . import errors, health, image, playground, runs, sessions
from .deps import check_key
from .gate import Gate, body_caps
from .logs import RequestLog
from .metrics import MeteredSandbox, Metrics
from .metrics import router as metrics_router
from .settings import Settings


def peer_routers() -> list[APIRouter]:
    """The routers of `sandbox.server.peers` (compat formats), if that package is present."""
    try:
        peers = importlib.import_module(f"{__package__}.peers")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.peers":
            raise
        return []
    return list(getattr(peers, "ROUTERS", []))


def create_app(settings: Settings | None = None, sandbox: AsyncSandbox | None = None) -> FastAPI:
    """The service. It starts its own AsyncSandbox in the lifespan unless given one (then the caller
    starts and closes it; its runs are counted in /metrics only if it is a MeteredSandbox)."""
    settings = settings or Settings()
    metrics = sandbox.metrics if isinstance(sandbox, MeteredSandbox) else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            sb = sandbox
            if sb is None:
                sb = MeteredSandbox(metrics, settings.slots, image=settings.image, max_queue=settings.max_queue)
                await sb.start()
                stack.push_async_callback(sb.close)
            metrics.watch(sb)
            if settings.max_runs_per_key is None and app.state.sessions.runs is not None:
                app.state.sessions.runs.places = sb.capacity  # the default: one place per slot
            app.state.sandbox = sb
            stack.callback(setattr, app.state, "sandbox", None)
            stack.callback(app.state.sessions.clear)  # closing the sandbox ends every session
            for hook in app.state.lifespan_hooks:
                await stack.enter_async_context(hook(app))
            yield

    app = FastAPI(title="sandbox", version=__version__, lifespan=lifespan,
                  description="Run untrusted Python in warm, isolated jails: stdout, stderr, errors, figures, files.")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.retry_after = settings.retry_after_seconds
    app.state.ceiling = Limits.from_policy()  # per-call limits may tighten these, never loosen them
    app.state.sandbox = None
    app.state.sessions = sessions.Sessions(
        settings.max_sessions_per_key, metrics, runs_per_owner=settings.max_runs_per_key or 1,
        waiting_per_owner=settings.max_waiting_per_key, waiting_per_session=settings.max_waiting_per_session,
        retry_after=settings.retry_after_seconds, share_window=settings.share_window_seconds)
    app.state.lifespan_hooks = []

    def open_sessions() -> int:
        sb = app.state.sandbox
        try:
            return sb.stats().sessions if sb is not None else 0
        except SandboxError:  # closed meanwhile
            return 0

    metrics.open_sessions = open_sessions
    # Outermost: nothing (no route, no parser, no MCP) sees a request before its key and body cap are checked.
    # The keys are read from app.state.settings at each request: `sandbox serve` replaces them on SIGHUP.
    app.add_middleware(Gate, settings=settings, check_key=lambda given: check_key(app.state.settings, given),
                       cap=body_caps(settings, app.state.ceiling.max_code_bytes))
    app.add_middleware(RequestLog)  # outermost: one log event per request, refusals included
    errors.install(app)
    for router in (playground.router, health.router, image.router, runs.router, sessions.router, metrics_router, *peer_routers()):
        app.include_router(router)
    app.mount("/static", playground.assets, name="static")
    if settings.mcp:
        from .mcp_server import Mounted

        try:
            manifest = sandbox.image_info() if sandbox is not None else image_manifest(settings.image)
        except SandboxClosedError:  # a sandbox given but not started yet: its image is settings.image
            manifest = image_manifest(settings.image)
        mcp = Mounted(app, manifest, app.state.ceiling)
        app.state.lifespan_hooks.append(mcp.lifespan)
        app.add_route("/mcp", mcp, methods=["GET", "POST", "DELETE"], include_in_schema=False)
    return app
