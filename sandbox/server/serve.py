"""`sandbox serve`: the app under uvicorn on a socket we bind ourselves (so `--port 0` reports the port
it got), with access logs that never show a key."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import socket
import sys
from typing import Any

from ..errors import InvalidInputError, SandboxError
from .settings import Settings

_PATH_KEY = re.compile(r"/k/[^/?]+")


class RedactKeys(logging.Filter):
    """Access-log lines show `/k/***/...` for routes that carry the key in the path."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_PATH_KEY.sub("/k/***", a) if isinstance(a, str) else a for a in record.args)
        return True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other needs a key)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--slots", type=int, help="jails in the pool (default: one per core)")
    p.add_argument("--image", default="default", help="image to run in")
    p.add_argument("--api-key-file", help="file of API keys, one a line (also: SANDBOX_API_KEYS, comma separated)")
    p.add_argument("--max-queue", type=int, default=64, help="calls that may wait for a slot before 429 (default 64)")
    p.add_argument("--max-body-mb", type=int, default=64, help="largest request body in MiB (default 64)")
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds runs in flight get at shutdown before they are killed (default 5)")
    p.add_argument("--max-sessions-per-key", type=int, default=0,
                   help="sessions one API key may hold open (default 0: only the engine's own cap)")
    p.add_argument("--no-mcp", action="store_true", help="do not serve MCP at /mcp")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def settings_from(args: argparse.Namespace) -> Settings:
    settings = Settings(host=args.host, port=args.port, slots=args.slots, image=args.image, max_queue=args.max_queue,
                        max_body_bytes=args.max_body_mb << 20, shutdown_grace_seconds=args.grace,
                        mcp=not args.no_mcp, max_sessions_per_key=max(0, args.max_sessions_per_key)).with_keys_from(args.api_key_file)
    settings.check_bind()
    return settings


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(app: Any, settings: Settings, sock: socket.socket, log_level: str = "info") -> None:
    """Run the app on `sock` until SIGINT/SIGTERM; runs still in flight after the grace period are killed."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    # uvicorn's own cancel (a 500 and a traceback per request) is only a backstop: after the grace
    # period, `reap` closes the sandbox, which kills the runs still in flight, so each gets its result.
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=settings.shutdown_grace_seconds + 30,
                            lifespan="on", server_header=False)
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.access").addFilter(RedactKeys())
    auth = f"{len(settings.api_keys)} API key(s)" if settings.auth_required else "no API key (loopback only)"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def busy() -> int:
        """Runs in flight: the pool's, and calls in sessions (which run in the session jail)."""
        sb = app.state.sandbox
        try:
            return sb.stats().busy + app.state.sessions.in_flight if sb is not None else 0
        except SandboxError:  # closed meanwhile
            return 0

    async def reap() -> None:
        loop = asyncio.get_running_loop()
        while not server.should_exit:
            await asyncio.sleep(0.1)
        if busy():
            print(f"sandbox: shutting down: {busy()} run(s) in flight get {settings.shutdown_grace_seconds:g} s to finish",
                  file=sys.stderr, flush=True)
        deadline = loop.time() + settings.shutdown_grace_seconds
        while busy() and loop.time() < deadline:
            await asyncio.sleep(0.1)
        if busy():
            print(f"sandbox: killing {busy()} run(s) still in flight", file=sys.stderr, flush=True)
            await app.state.sandbox.close()

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            print(f"sandbox: serving on {url} ({auth}); playground {url}/, MCP {url}/mcp, OpenAPI {url}/openapi.json",
                  file=sys.stderr, flush=True)
        reaper = asyncio.create_task(reap())
        try:
            await task
        finally:
            reaper.cancel()

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:  # uvloop when installed
        runner.run(main())


def cmd_serve(args: argparse.Namespace) -> int:
    from ..host import doctor
    from .app import create_app

    try:
        settings = settings_from(args)
        sock = bind(settings.host, settings.port)
    except InvalidInputError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sandbox: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        doctor.require_safe_host()  # the engine checks again at start; failing here gives a clear message
        app = create_app(settings)
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        sock.close()
        return 3
    serve(app, settings, sock, args.log_level)
    return 0
