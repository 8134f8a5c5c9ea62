"""`sandbox serve`: the app under uvicorn on a socket we bind ourselves (so `--port 0` reports the port
it got), with uvicorn's connection limits and timeouts set, and logs that never show a key: every log
record of the process is scrubbed as it is made (`scrub_keys`), whatever logger made it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import socket
import sys
import time
from dataclasses import replace
from typing import Any, Callable

from ..errors import InvalidInputError, SandboxError
from . import connections, logs, unix
from .settings import Settings

_PATH_KEY = re.compile(r"/k/[^/?\s\"']+")
_QUERY = re.compile(r"(?<=[?&])([^=&#\s\"']*)=[^&#\s\"']*")


def redact(text: str, keys: tuple[str, ...] = ()) -> str:
    """`/k/KEY/...` as `/k/***/...`, every query value as `***` (a key may be sent as `?api_key=`), and
    any configured key anywhere as `***`."""
    if "/k/" in text:
        text = _PATH_KEY.sub("/k/***", text)
    if "=" in text and "?" in text:
        text = _QUERY.sub(r"\1=***", text)
    for key in keys:
        if key in text:
            text = text.replace(key, "***")
    return text


class RedactKeys(logging.Filter):
    """Access-log lines show `/k/***/...` for routes that carry the key in the path, `?x=***` for queries."""

    def __init__(self, keys: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.keys = keys

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record, self.keys)
        return True


def scrub_record(record: logging.LogRecord, keys: tuple[str, ...]) -> None:
    """Redact a record's message, arguments (each in place, so formatters that unpack them still work)
    and traceback text."""
    if isinstance(record.msg, str):
        record.msg = redact(record.msg, keys)
    if isinstance(record.args, tuple):
        record.args = tuple(_scrub_arg(a, keys) for a in record.args)
    elif isinstance(record.args, dict):
        record.args = {k: _scrub_arg(v, keys) for k, v in record.args.items()}
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info), keys)
    if record.stack_info:
        record.stack_info = redact(record.stack_info, keys)


def _scrub_arg(arg: object, keys: tuple[str, ...]) -> object:
    if isinstance(arg, (int, float)) or arg is None:
        return arg
    text = arg if isinstance(arg, str) else str(arg)
    clean = redact(text, keys)
    return arg if clean == text and not isinstance(arg, str) else clean


_SCRUBBED: list[str] = []  # every key this process has known (a key removed on SIGHUP stays scrubbed)


def scrub_keys(keys: tuple[str, ...]) -> None:
    """Every log record this process makes, on any logger, is scrubbed as it is created. Called
    again (a reload), the new keys are scrubbed too."""
    _SCRUBBED.extend(k for k in keys if k not in _SCRUBBED)
    make = logging.getLogRecordFactory()
    if getattr(make, "scrubs_keys", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        scrub_record(record, tuple(_SCRUBBED))
        return record

    factory.scrubs_keys = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; any other needs a key)")
    p.add_argument("--port", type=int, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--unix-socket", nargs="?", const="", metavar="PATH",
                   help="serve on a Unix socket (mode 0600, no key; only this uid or root may connect), where "
                        "`sandbox run` finds it; without PATH the per-user path `sandbox run` looks at "
                        "(docs/cli.md). TCP too only if --host or --port is given")
    p.add_argument("--slots", type=int, help="jails in the pool (default: one per core)")
    p.add_argument("--idle-exit", type=float, metavar="SECONDS",
                   help="stop after this long without a request, a run or an open session (default: never; "
                        "`sandbox engine start` sets it)")
    p.add_argument("--image", default="default", help="image to run in")
    p.add_argument("--api-key-file", help="file of API keys, one a line (also: SANDBOX_API_KEYS, comma separated)")
    p.add_argument("--max-queue", type=int, default=64, help="calls that may wait for a slot before 429 (default 64)")
    p.add_argument("--max-body-mb", type=int, default=64, help="largest request body in MiB (default 64)")
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds runs in flight get at shutdown before they are killed (default 5)")
    d = Settings()
    q = p.add_argument_group("quotas per API key (beyond one: 429 with Retry-After; see docs/threat-model.md)")
    _numeric(q, "--max-sessions-per-key", int, d.max_sessions_per_key, "sessions one key may hold open")
    q.add_argument("--max-runs-per-key", type=int, default=d.max_runs_per_key,
                   help="one key's calls in the engine at once, running or queued for a slot (default: the number of "
                        "slots, so another key's first call waits at most one run per slot)")
    _numeric(q, "--share-window", float, d.share_window_seconds, "those places are shared out among the keys that "
             "called within this many seconds, so a key's flood leaves the other keys their share of the slots; 0: off")
    _numeric(q, "--max-waiting-per-key", int, d.max_waiting_per_key, "one key's calls waiting for one of those")
    _numeric(q, "--max-waiting-per-session", int, d.max_waiting_per_session,
             "calls waiting behind a session's running one")
    _numeric(q, "--max-mcp-sessions-per-key", int, d.max_mcp_sessions_per_key, "MCP sessions one key may hold open")
    _numeric(q, "--peer-spaces-per-key", int, d.peer_spaces_per_key, "E2B contexts and LibreChat sessions one key keeps")
    _numeric(q, "--peer-store-mb-per-key", int, d.peer_bytes_per_key >> 20, "MiB of peer files one key keeps")
    _numeric(p, "--max-connections", int, d.max_connections, "connections served at once; beyond, 503")
    _numeric(p, "--max-connections-per-client", int, d.max_connections_per_client,
             "of them from one client address; beyond, 503 at once. 0: no cap (behind a proxy on this host, "
             "where every client has the proxy's address: let the proxy cap per client)")
    c = p.add_argument_group("slow clients (a connection that misses one is closed; docs/threat-model.md)")
    _numeric(c, "--head-timeout", float, d.head_timeout_seconds, "seconds for a request's head to arrive")
    _numeric(c, "--body-timeout", float, d.body_timeout_seconds, "seconds for its body to arrive after the head")
    _numeric(c, "--write-stall-timeout", float, d.write_stall_seconds, "seconds a response may go unread")
    p.add_argument("--no-mcp", action="store_true", help="do not serve MCP at /mcp")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="text (uvicorn's access log) or json: one JSON object a line on stderr, one per request "
                        "and per engine event (docs/operations.md)")
    t = p.add_argument_group("TLS (keys cross the network: beyond loopback, HTTPS or an explicit --insecure-http)")
    t.add_argument("--ssl-certfile", help="PEM certificate (chain): serve HTTPS")
    t.add_argument("--ssl-keyfile", help="PEM private key of --ssl-certfile")
    t.add_argument("--insecure-http", action="store_true",
                   help="allow plain HTTP beyond loopback (a TLS proxy in front on another host, a private network)")


def _numeric(group: Any, flag: str, kind: type, default: float, what: str) -> None:
    """A numeric flag whose help ends with its default (Settings' own), so the default is written once."""
    group.add_argument(flag, type=kind, default=default, help=f"{what} (default {default:g})")


# The numeric flags' ranges, checked before anything is built: (flags, "is out of range", what they must be).
FLAG_RANGES: tuple[tuple[tuple[str, ...], Callable[[Any], bool], str], ...] = (
    (("max_sessions_per_key", "max_runs_per_key", "max_mcp_sessions_per_key", "peer_spaces_per_key",
      "peer_store_mb_per_key", "max_connections"), lambda v: v is not None and v < 1, "must be at least 1"),
    (("head_timeout", "body_timeout", "write_stall_timeout"), lambda v: not v > 0, "must be more than 0 seconds"),
    (("max_waiting_per_key", "max_waiting_per_session", "share_window", "max_connections_per_client"),
     lambda v: v < 0, "must be 0 or more"),
)


def check_ranges(args: argparse.Namespace) -> None:
    """InvalidInputError naming the first flag out of its range (FLAG_RANGES)."""
    for flags, out_of_range, must in FLAG_RANGES:
        for flag in flags:
            if out_of_range(getattr(args, flag)):
                raise InvalidInputError(f"--{flag.replace('_', '-')} {must}")


def settings_from(args: argparse.Namespace) -> Settings:
    check_ranges(args)
    if getattr(args, "idle_exit", None) is not None and not args.idle_exit > 0:
        raise InvalidInputError("--idle-exit must be more than 0 seconds")
    unix_socket = None
    if args.unix_socket is not None:
        from ..engine_socket import socket_path
        unix_socket = args.unix_socket or socket_path(args.image)
        if not unix_socket:
            raise InvalidInputError("SANDBOX_SOCKET is set and empty: give --unix-socket PATH")
    tcp = unix_socket is None or args.host is not None or args.port is not None
    settings = Settings(host=args.host or "127.0.0.1", port=8080 if args.port is None else args.port,
                        unix_socket=unix_socket, tcp=tcp, slots=args.slots, image=args.image, max_queue=args.max_queue,
                        max_body_bytes=args.max_body_mb << 20, shutdown_grace_seconds=args.grace,
                        mcp=not args.no_mcp, max_sessions_per_key=args.max_sessions_per_key,
                        max_runs_per_key=args.max_runs_per_key, share_window_seconds=args.share_window,
                        max_waiting_per_key=args.max_waiting_per_key,
                        max_waiting_per_session=args.max_waiting_per_session,
                        max_mcp_sessions_per_key=args.max_mcp_sessions_per_key,
                        peer_spaces_per_key=args.peer_spaces_per_key, peer_bytes_per_key=args.peer_store_mb_per_key << 20,
                        max_connections=args.max_connections,
                        max_connections_per_client=args.max_connections_per_client, key_file=args.api_key_file,
                        head_timeout_seconds=args.head_timeout, body_timeout_seconds=args.body_timeout,
                        write_stall_seconds=args.write_stall_timeout,
                        ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                        insecure_http=args.insecure_http).with_keys_from(args.api_key_file)
    if settings.tcp:
        settings.check_bind()
    return settings


def bind(host: str, port: int, backlog: int = Settings.backlog) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Any, settings: Settings, log_level: str = "info", log_config: dict | None = None) -> Any:
    """uvicorn's config: connections served at once capped (beyond: 503 at once), the listen backlog,
    idle keep-alive connections closed, request heads capped, deadlines on slow clients (connections.py)."""
    import uvicorn

    # uvicorn's own cancel (a 500 and a traceback per request) is only a backstop: after the grace
    # period, `reap` closes the sandbox, which kills the runs still in flight, so each gets its result.
    extra: dict[str, Any] = {"log_config": log_config} if log_config is not None else {}
    if settings.tls:
        extra.update(ssl_certfile=settings.ssl_certfile, ssl_keyfile=settings.ssl_keyfile)
    http = connections.protocol_class(settings.head_timeout_seconds, settings.body_timeout_seconds,
                                      settings.write_stall_seconds, settings.max_connections_per_client)
    if settings.unix_socket is not None:
        http = unix.peer_checked(http)  # SO_PEERCRED on each connection of the Unix socket
    return uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=settings.shutdown_grace_seconds + 30,
                          **extra, http=http,
                          lifespan="on", server_header=False, limit_concurrency=settings.max_connections,
                          backlog=settings.backlog, timeout_keep_alive=settings.keep_alive_seconds,
                          h11_max_incomplete_event_size=64 << 10)


def reload_keys(app: Any) -> None:
    """SIGHUP: read the key file again and swap the app's keys. A removed key gets 401 from the next
    request on; sessions belong to a key's owner id (its hash), so those of unchanged keys go on. A file
    that cannot be read, is empty or holds a bad key changes nothing (and says why)."""
    log = logging.getLogger("sandbox.server")
    settings: Settings = app.state.settings
    if settings.key_file is None:
        log.warning("SIGHUP: no --api-key-file to read again; keys unchanged", extra={"event": "keys_unchanged"})
        return
    try:
        new = settings.reload_keys()
    except InvalidInputError as exc:
        log.error("SIGHUP: keys unchanged: %s", exc, extra={"event": "keys_unchanged"})
        return
    scrub_keys(new.api_keys)  # before any record could name them
    app.state.settings = replace(settings, api_keys=new.api_keys)
    log.info("SIGHUP: %d API key(s) loaded", len(new.api_keys), extra={"event": "keys_reloaded", "keys": len(new.api_keys)})


class Activity:
    """ASGI wrapper that knows when the last request ended and how many are in flight, for
    `--idle-exit`. `GET /v1/health` does not count as activity (so `sandbox engine status` does not keep
    an engine alive); its answer carries the idle time in `x-sandbox-idle-seconds`."""

    HEALTH = "/v1/health"

    def __init__(self, app: Any, idle_exit: float | None) -> None:
        self.app, self.idle_exit = app, idle_exit
        self.active, self.last = 0, time.monotonic()

    def idle(self) -> float:
        return 0.0 if self.active else time.monotonic() - self.last

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope.get("path") == self.HEALTH:
            async def send_idle(message: Any) -> None:
                if message["type"] == "http.response.start":
                    extra = [(b"x-sandbox-idle-seconds", b"%.1f" % self.idle())]
                    if self.idle_exit:
                        extra.append((b"x-sandbox-idle-exit", b"%g" % self.idle_exit))
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
                await send(message)
            return await self.app(scope, receive, send_idle)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            self.last = time.monotonic()


def serve(app: Any, settings: Settings, sock: socket.socket | list[socket.socket], log_level: str = "info",
          log_format: str = "text", idle_exit: float | None = None) -> None:
    """Run the app on `sock` (a TCP socket, a Unix one, or both in a list) until SIGINT/SIGTERM (SIGHUP:
    reload the keys); runs still in flight after the grace period are killed. With `idle_exit`, also
    once that many seconds pass with no request (but health checks), no run and no open session."""
    import uvicorn

    socks = sock if isinstance(sock, list) else [sock]
    # Our socket files, removed as soon as the server begins to stop (new `sandbox run`s then start their
    # own engine); not after it has stopped: uvicorn re-raises SIGTERM then, and the process ends there.
    made = [(s.getsockname(), os.lstat(s.getsockname())) for s in socks if s.family == socket.AF_UNIX]
    tcp = next((s for s in socks if s.family != socket.AF_UNIX), None)
    scrub_keys(settings.api_keys)
    activity = Activity(app, idle_exit)
    config = uvicorn_config(activity, settings, log_level, logs.configure(log_format, log_level))
    server = uvicorn.Server(config)
    auth = f"{len(settings.api_keys)} API key(s)" if settings.auth_required else "no API key (loopback only)"
    where = [f"unix:{s.getsockname()} (no key; uid {os.geteuid()} or root only)" for s in socks
             if s.family == socket.AF_UNIX]
    url = ""
    if tcp is not None:
        host, port = tcp.getsockname()[:2]
        url = f"{'https' if settings.tls else 'http'}://{'[' + host + ']' if ':' in host else host}:{port}"
        where.insert(0, f"{url} ({auth})")

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
        for path, st in made:
            unix.remove(path, st)
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
        if settings.auth_required:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_keys, app)
        task = asyncio.create_task(server.serve(sockets=socks))
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            mcp = f", MCP {url}/mcp" if settings.mcp else ""
            pages = f"; playground {url}/{mcp}, OpenAPI {url}/openapi.json" if url else ""
            print(f"sandbox: serving on {' and '.join(where)}{pages}", file=sys.stderr, flush=True)
        reaper = asyncio.create_task(reap())
        idler = asyncio.create_task(idle_watch()) if idle_exit else None
        try:
            await task
        finally:
            reaper.cancel()
            if idler is not None:
                idler.cancel()

    async def idle_watch() -> None:
        assert idle_exit
        while not server.should_exit:
            await asyncio.sleep(min(1.0, idle_exit / 4))
            sessions = getattr(app.state, "sessions", None)
            if activity.idle() >= idle_exit and not busy() and not (sessions is not None and sessions.count()):
                logging.getLogger("sandbox.server").info(
                    "no request for %g s (--idle-exit): stopping", idle_exit, extra={"event": "idle_exit"})
                print(f"sandbox: no request for {idle_exit:g} s (--idle-exit): stopping", file=sys.stderr, flush=True)
                server.should_exit = True

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:  # uvloop when installed
        runner.run(main())


def check_tls(settings: Settings) -> None:
    """Load the certificate and key once before binding, so a bad pair is a message, not a traceback."""
    if not settings.tls:
        return
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInputError(f"cannot load --ssl-certfile/--ssl-keyfile: {exc}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from ..client import check_host
    from .app import create_app

    socks: list[socket.socket] = []
    try:
        settings = settings_from(args)
        check_tls(settings)
        if settings.tcp:
            socks.append(bind(settings.host, settings.port, settings.backlog))
        if settings.unix_socket is not None:
            socks.append(unix.bind_unix(settings.unix_socket, settings.backlog))
    except InvalidInputError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        for s in socks:
            s.close()
        return 2
    except OSError as exc:
        print(f"sandbox: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        check_host()  # the engine checks again at start; failing here gives a clear message
        app = create_app(settings)
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        for s in socks:
            s.close()
            if s.family == socket.AF_UNIX:
                os.unlink(s.getsockname())
        return 3
    serve(app, settings, socks, args.log_level, args.log_format, idle_exit=args.idle_exit or None)
    return 0
