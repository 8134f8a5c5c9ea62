"""`sandbox serve --unix-socket [PATH]`: the app on a Unix socket, for a light local client (`sandbox run`).

- The socket file is created mode 0600 (under a umask of 0177, so it is never wider, not even between
  bind and chmod), owned by the user running the server. The path is refused if its directory is owned
  by another user, or writable by others without being sticky; a file already there is removed only if
  it is a socket of ours that nobody answers on (a stale one), never anything else.
- No API key is asked on the socket: the file mode is the access control. On top of it, every
  connection's peer is checked with SO_PEERCRED when it is accepted, before a byte of it is read: only
  the server's own uid, or root, may talk to it; any other is closed at once (and logged). The check
  lives in uvicorn's protocol class (the `http=` hook, as connections.py's deadlines do): only there is
  the connection's socket visible. A request that passed it carries the peer's uid in its ASGI scope
  (UNIX_PEER), which the Gate reads instead of a key.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat

from ..engine_socket import peer_uid, safe_dir_problem
from ..errors import InvalidInputError

log = logging.getLogger("sandbox.server")

UNIX_PEER = "sandbox_unix_peer_uid"   # in a request's scope: the uid of the peer on the Unix socket


def bind_unix(path: str, backlog: int) -> socket.socket:
    """A listening AF_UNIX socket at `path`, mode 0600. InvalidInputError for a path that must not be used."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    uid = os.geteuid()
    try:
        os.mkdir(parent, 0o700)   # the per-user directory of the default path, made private
    except FileExistsError:
        pass
    except OSError as exc:
        raise InvalidInputError(f"cannot create the directory {parent}: {exc.strerror}") from None
    why = safe_dir_problem(os.stat(parent), uid)
    if why is not None:
        raise InvalidInputError(f"refusing --unix-socket {path}: its directory {parent} {why}; "
                                "another user could replace the socket")
    _remove_stale(path, uid)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise InvalidInputError(f"cannot listen on {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    sock.set_inheritable(True)
    return sock


def _remove_stale(path: str, uid: int) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise InvalidInputError(f"refusing --unix-socket {path}: a file that is not a socket is there")
    if st.st_uid != uid:
        raise InvalidInputError(f"refusing --unix-socket {path}: a socket of uid {st.st_uid} is there")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise InvalidInputError(f"refusing --unix-socket {path}: {exc.strerror}") from None
    else:
        raise InvalidInputError(f"refusing --unix-socket {path}: a server is already listening there")
    finally:
        probe.close()
    os.unlink(path)   # a stale socket: its server is gone


def remove(path: str, made: os.stat_result) -> None:
    """Remove the socket file at shutdown, if it is still the one we made."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == (made.st_dev, made.st_ino):
            os.unlink(path)
    except OSError:
        pass


def peer_checked(base: type) -> type:
    """`base` (a uvicorn protocol class) that closes any connection on a Unix socket whose peer is not
    this process's uid or root, and marks the others' requests with the peer's uid."""
    allowed = {os.geteuid(), 0}

    class PeerCheckedProtocol(base):  # type: ignore[misc, valid-type]
        _unix_peer: int | None = None

        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is None or sock.family != socket.AF_UNIX:
                return
            try:
                uid = peer_uid(sock)
            except OSError:
                uid = -1
            if uid not in allowed:
                log.warning("closing a connection on the Unix socket from uid %s: only uid %s or root may use it",
                            uid, os.geteuid(), extra={"event": "unix_peer_refused", "uid": uid})
                transport.abort()
                return
            self._unix_peer = uid

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._unix_peer is not None:
                self.scope[UNIX_PEER] = self._unix_peer  # type: ignore[index]

    return PeerCheckedProtocol
