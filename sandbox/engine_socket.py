"""Where a warm engine listens on a Unix socket, and whether a client may trust what is there.

`sandbox serve --unix-socket [PATH]` serves the engine on a Unix socket; `sandbox run` sends its
request there instead of starting an engine of its own (~250 ms). This module is the client's half and
imports only the standard library: the point of the socket is a light client.

The path, one rule for server and client:

    $SANDBOX_SOCKET                                  if set (set and empty: no engine is looked for)
    $XDG_RUNTIME_DIR/sandbox/engine.sock             else, if XDG_RUNTIME_DIR is set
    /tmp/sandbox-<uid>/engine.sock                   else

An image other than `default` has `engine-<image>.sock` in the same directory, so a run never lands in
an engine serving another image (`$SANDBOX_SOCKET` names the default image's engine only).

A client uses a socket only if it is a socket, owned by the client's own uid, mode 0600, in a
directory owned by that uid or root that nobody else may write to (or a sticky one), and, once
connected, only if the process on the other end (SO_PEERCRED) runs as that uid or as root. Anything
else at the path is refused with EngineSocketError (the caller says so and stops: never a silent
fallback past something another user may have planted). No file at the path, or a socket nobody
answers on (a stale one), means no engine: the caller runs the code itself.
"""

from __future__ import annotations

import os
import socket
import stat
import struct

DEFAULT_IMAGE = "default"
_CREDS = struct.Struct("3i")   # struct ucred: pid, uid, gid


class EngineSocketError(Exception):
    """Something is at the engine's socket path that this user must not trust."""


def socket_path(image: str = DEFAULT_IMAGE, environ: dict[str, str] | None = None) -> str | None:
    """The engine socket for `image` by the rule above; None when `$SANDBOX_SOCKET` is set and empty."""
    env = os.environ if environ is None else environ
    explicit = env.get("SANDBOX_SOCKET")
    if explicit is not None and image == DEFAULT_IMAGE:
        return explicit or None
    name = "engine.sock" if image == DEFAULT_IMAGE else f"engine-{image}.sock"
    runtime = env.get("XDG_RUNTIME_DIR")
    base = os.path.join(runtime, "sandbox") if runtime else f"/tmp/sandbox-{os.geteuid()}"
    return os.path.join(base, name)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected AF_UNIX socket (SO_PEERCRED)."""
    _, uid, _ = _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
    return uid


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process at the other end of a connected AF_UNIX socket (SO_PEERCRED): the
    engine's, for `sandbox engine stop` and `status` (no pid file that could go stale)."""
    pid, _, _ = _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
    return pid


def safe_dir_problem(st: os.stat_result, uid: int) -> str | None:
    """Why a directory owned as `st` may not hold `uid`'s socket (None if it may): it must be owned by
    `uid` or root, and writable by nobody else unless sticky (then others cannot replace our file)."""
    if st.st_uid not in (uid, 0):
        return f"is owned by uid {st.st_uid}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        return f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o}) and not sticky"
    return None


def check(path: str) -> bool:
    """True if `path` is a socket this user may use, False if nothing is there; EngineSocketError if
    something is there that must not be used."""
    uid = os.geteuid()
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise EngineSocketError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise EngineSocketError(f"{path} is not a socket")
    if st.st_uid != uid:
        raise EngineSocketError(f"{path} is owned by uid {st.st_uid}, not by you (uid {uid})")
    if stat.S_IMODE(st.st_mode) != 0o600:
        raise EngineSocketError(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}, not 0600")
    parent = os.path.dirname(os.path.abspath(path))
    why = safe_dir_problem(os.stat(parent), uid)
    if why is not None:
        raise EngineSocketError(f"the directory {parent} of {path} {why}")
    return True


def connect(path: str, timeout: float | None = None) -> socket.socket:
    """A connected AF_UNIX socket to `path` whose server runs as this user or root; OSError if nobody
    answers (ConnectionRefusedError: a stale socket), EngineSocketError for a server of another uid."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        uid = peer_uid(sock)
        if uid not in (os.geteuid(), 0):
            raise EngineSocketError(f"the server on {path} runs as uid {uid}, not as you (uid {os.geteuid()}) or root")
    except BaseException:
        sock.close()
        raise
    return sock


def find(image: str = DEFAULT_IMAGE, environ: dict[str, str] | None = None) -> str | None:
    """The path of a live engine for `image` this user may use, or None (no socket, or a stale one);
    EngineSocketError if what is there must not be used."""
    path = socket_path(image, environ)
    if path is None or not check(path):
        return None
    try:
        connect(path, timeout=2.0).close()
    except (ConnectionRefusedError, FileNotFoundError):
        return None   # stale: its server is gone (the next `sandbox serve --unix-socket` removes it)
    except EngineSocketError:
        raise
    except OSError as exc:
        raise EngineSocketError(f"cannot connect to {path}: {exc.strerror or exc}") from None
    return path
