"""`sandbox engine start|stop|status`: a per-user warm engine that `sandbox run` uses when it is up.

- start: `sandbox serve --unix-socket` at the per-user socket path (engine_socket.py) in the
  background, in its own session, with `--idle-exit` (default 900 s: it ends after that long without a
  request, a run or an open session), its log beside the socket (`engine.log`, mode 0600). Waits until
  the socket answers; if an engine is up already, says so and changes nothing.
- stop: SIGTERM to the process on the other end of the socket (its pid from SO_PEERCRED, so no pid file
  can go stale or name another process), then waits until it is gone.
- status: whether it is up, its pid, slots (live/busy), open sessions and idle time; exit 3 if down.

Only this user's engine is touched: engine_socket's checks (owner, mode 0600, the server's uid) apply.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable

from . import engine_socket
from .warmrun import EXIT_ERROR, EXIT_OK, EXIT_OTHER, EXIT_USAGE, exchange

DEFAULT_IDLE_EXIT = 900.0


def _say(msg: str) -> None:
    print(f"sandbox: {msg}", file=sys.stderr, flush=True)


def _live(image: str) -> tuple[str | None, str | None]:
    """(socket path, path of a live engine or None); EngineSocketError for a socket not to trust."""
    path = engine_socket.socket_path(image)
    return path, engine_socket.find(image) if path is not None else None


def _log_path(sock_path: str) -> str:
    return sock_path.removesuffix(".sock") + ".log"


def cmd_start(args: argparse.Namespace) -> int:
    if args.idle_exit is not None and args.idle_exit < 0:
        _say("--idle-exit must be 0 (never) or more seconds")
        return EXIT_USAGE
    try:
        path, live = _live(args.image)
    except engine_socket.EngineSocketError as exc:
        _say(f"not starting: {exc}")
        return EXIT_OTHER
    if path is None:
        _say("SANDBOX_SOCKET is set and empty: no engine socket to start on")
        return EXIT_USAGE
    if live is not None:
        with engine_socket.connect(live, timeout=5.0) as s:
            _say(f"an engine is already up on unix:{live} (pid {engine_socket.peer_pid(s)})")
        return EXIT_OK
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, 0o700, exist_ok=True)
        why = engine_socket.safe_dir_problem(os.stat(parent), os.geteuid())
        if why is not None:   # checked before the log is written there (the server checks it again)
            _say(f"not starting: the directory {parent} {why}; another user could replace the socket")
            return EXIT_OTHER
        log_fd = os.open(_log_path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        _say(f"cannot write the engine's log in {parent}: {exc.strerror}")
        return EXIT_OTHER
    import subprocess   # here: `sandbox run`'s parser builds this command's too

    idle = DEFAULT_IDLE_EXIT if args.idle_exit is None else args.idle_exit
    cmd = [sys.executable, "-m", "sandbox", "serve", "--unix-socket", path, "--no-mcp", "--image", args.image]
    if idle:
        cmd += ["--idle-exit", f"{idle:g}"]
    if args.slots is not None:
        cmd += ["--slots", str(args.slots)]
    with os.fdopen(log_fd, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + args.wait
    while True:
        if _ready(args.image):
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.terminate()
            with open(_log_path(path), errors="replace") as f:
                tail = f.read()[-2000:]
            _say(f"the engine did not start (log {_log_path(path)}):\n{tail}")
            return EXIT_OTHER
        time.sleep(0.1)
    after = f", exits after {idle:g} s without requests" if idle else ""
    _say(f"engine up on unix:{path} (pid {proc.pid}{after}); log {_log_path(path)}")
    return EXIT_OK


def _ready(image: str) -> bool:
    """The engine answers on its socket and its health says a slot is live (the socket is bound
    before the pool starts, so a connection alone says little)."""
    try:
        live = engine_socket.find(image)
        if live is None:
            return False
        with engine_socket.connect(live, timeout=5.0) as s:
            return exchange(s, None, "GET", "/v1/health")[0] == 200
    except (OSError, ValueError, engine_socket.EngineSocketError):
        return False


def _pid_of(live: str) -> int:
    with engine_socket.connect(live, timeout=5.0) as s:
        return engine_socket.peer_pid(s)


def _live_or_exit(image: str, down: Callable[[str | None], int]) -> str | int:
    """The live engine's socket, or the command's exit code when there is none (`down(path)` says
    so) or its socket is not to be trusted."""
    try:
        path, live = _live(image)
    except engine_socket.EngineSocketError as exc:
        _say(str(exc))
        return EXIT_OTHER
    return live if live is not None else down(path)


def _stopped_already(path: str | None) -> int:
    _say(f"no engine is up on unix:{path}" if path else "SANDBOX_SOCKET is set and empty: no engine socket")
    return EXIT_OK


def _down(path: str | None) -> int:
    print(f"down: no engine on unix:{path}" if path else "down: SANDBOX_SOCKET is set and empty")
    return EXIT_OTHER


def cmd_stop(args: argparse.Namespace) -> int:
    live = _live_or_exit(args.image, _stopped_already)
    if isinstance(live, int):
        return live
    pid = _pid_of(live)
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError as exc:
        _say(f"cannot stop the engine (pid {pid}): {exc.strerror}")
        return EXIT_OTHER
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        _say(f"the engine (pid {pid}) is still stopping after {args.wait:g} s (runs in flight get their grace)")
        return EXIT_OTHER
    _say(f"engine stopped (pid {pid})")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    live = _live_or_exit(args.image, _down)
    if isinstance(live, int):
        return live
    with engine_socket.connect(live, timeout=5.0) as s:
        pid = engine_socket.peer_pid(s)
        try:
            status, _, body, headers = exchange(s, None, "GET", "/v1/health")
            doc = json.loads(body)
            pool, sessions = doc["pool"], doc["sessions"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"up: pid {pid}, unix:{live}; its health check did not answer ({exc})")
            return EXIT_ERROR
    idle = headers.get(b"x-sandbox-idle-seconds", b"?").decode()
    idle_exit = headers.get(b"x-sandbox-idle-exit")
    state = {"pid": pid, "socket": live, "status": doc.get("status"), "slots": pool.get("size"),
             "live": pool.get("live"), "busy": pool.get("busy"), "runs": pool.get("runs"), "sessions": sessions,
             "idle_seconds": float(idle) if idle != "?" else None,
             "idle_exit_seconds": float(idle_exit) if idle_exit else None}
    if args.json:
        print(json.dumps(state))
        return EXIT_OK
    ends = f", exits after {idle_exit.decode()} s idle" if idle_exit else ", no idle exit"
    print(f"up: pid {pid}, unix:{live}, {doc.get('status')}; slots {pool.get('size')} "
          f"({pool.get('live')} live, {pool.get('busy')} busy), {pool.get('runs')} runs, {sessions} session(s); "
          f"idle {idle} s{ends}")
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("engine", help="a per-user warm engine that `sandbox run` uses (start, stop, status)")
    esub = e.add_subparsers(dest="engine_command", required=True)
    st = esub.add_parser("start", help="start the per-user engine in the background (its socket: docs/cli.md)")
    st.add_argument("--idle-exit", type=float, metavar="SECONDS",
                    help=f"stop after this long without requests (default {DEFAULT_IDLE_EXIT:g}; 0: never)")
    st.add_argument("--slots", type=int, help="jails in the pool (default: one per core)")
    st.add_argument("--wait", type=float, default=180.0, help="seconds to wait for it to answer (default 180)")
    st.set_defaults(func=cmd_start)
    sp = esub.add_parser("stop", help="stop it (SIGTERM to the process behind the socket)")
    sp.add_argument("--wait", type=float, default=60.0, help="seconds to wait for it to end (default 60)")
    sp.set_defaults(func=cmd_stop)
    ss = esub.add_parser("status", help="whether it is up, its pid, slots and idle time (exit 3 if down)")
    ss.add_argument("--json", action="store_true", help="one JSON object")
    ss.set_defaults(func=cmd_status)
    for p in (st, sp, ss):
        p.add_argument("--image", default="default", help="the image's engine (default: default)")
