"""Stateful sessions: `Sandbox.session()` gives an interpreter whose variables, imports and files
carry over from call to call, like the cells of one notebook.

Sessions live in one session jail per Sandbox (session_jail.py), started with the first session.
This module holds what the caller sees: `Session` (and its asyncio twin `AsyncSession`), and the
`SessionManager` that opens them, enforces the idle ttl, the maximum lifetime and the maximum
number of open sessions, and closes whatever is left when the Sandbox closes.
"""

from __future__ import annotations

import collections
import logging
import mimetypes
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .host import packages as pkgs, wire
from .guest import protocol
from .errors import (InvalidInputError, NoSuchFileError, RunCancelledError, SandboxClosedError,
                     SessionClosedError, SessionLimitError)
from .limits import Limits, SessionSettings
from .relay import Relay
from .types import Files, TextCallback
from .results import Outcome, Output, Result
from .host.session_jail import SessionJail
from .host.slot import SlotDied

if TYPE_CHECKING:
    from .aio import Bridge

log = logging.getLogger("sandbox.sessions")

# Fixed when a session opens (its cgroup, mounts and rlimits): a call may not change them.
SESSION_LIMITS = ("memory_bytes", "max_processes", "file_size_bytes", "open_files", "workdir_bytes",
                  "tmp_bytes", "shm_bytes")
MAX_FILE_LISTING = 10_000
REMEMBERED = 4096   # ids of ended sessions kept with their reason


@dataclass(frozen=True)
class FileInfo:
    """A regular file in a session's working directory (its content: Session.read_file)."""

    path: str
    size: int
    mime_type: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_ENDINGS = {
    Outcome.TIMEOUT: "a call ran out of time and its interpreter was killed",
    Outcome.MEMORY_LIMIT: "a call hit the session's memory limit",
    Outcome.CPU_LIMIT: "a call used up its CPU time limit",
    Outcome.POLICY_VIOLATION: "a call made a system call the sandbox does not allow",
    Outcome.CRASHED: "the session's interpreter crashed",
    Outcome.SANDBOX_ERROR: "the session's jail failed",
}


class Session:
    """One stateful interpreter. Calls run one at a time, in order; `run()` returns the same
    Result as Sandbox.run(), with the figures and files of that call. Thread-safe.

    >>> with sb.session() as s:
    ...     s.run("x = 41")
    ...     s.run("print(x + 1)").stdout
    '42\\n'
    """

    def __init__(self, manager: SessionManager, jail: SessionJail, sid: int, limits: Limits, ttl: float) -> None:
        self.id = secrets.token_urlsafe(24)
        self.ttl = ttl
        self.limits = limits
        self.created_at = time.time()
        self.expires_at = self.created_at + ttl
        self.closed = False
        self.close_reason: str | None = None
        self._manager = manager
        self._jail = jail
        self._sid = sid
        self._cgroup: Any = None
        self._lock = threading.Lock()       # one call at a time
        self._busy = threading.Event()      # a call is in flight (for close() and the ttl)
        self._cancel = threading.Event()    # close() during a call: end the call
        self._shutdown = False              # ...because the sandbox is closing: the call returns its output
        self._package_store: Any = None     # the Sandbox's PackageStore (host/packages.py)
        self._package_specs: list[str] = []   # what install() and session(packages=) asked for
        self._package_set: pkgs.PackageSet | None = None
        self._packages_ms = 0.0             # the last install's cost, reported in the next call's usage

    def __repr__(self) -> str:
        return f"<Session {self.id[:8]}… {'closed: ' + str(self.close_reason) if self.closed else 'open'}>"

    # -- calls ---------------------------------------------------------------------------------

    def run(self, code: str, files: Files | None = None, *, stdin: bytes | str | None = None,
            timeout: float | None = None, limits: Limits | Mapping[str, Any] | None = None,
            filename: str = "main.py", on_stdout: TextCallback | None = None,
            on_stderr: TextCallback | None = None, cancel: threading.Event | None = None,
            env: Mapping[str, str] | None = None, fetch: Iterable[str] = ()) -> Result:
        """Run `code` in the session's interpreter (see Sandbox.run for the arguments; `env` holds
        for this call only, `fetch` names files under the session's /tmp/ to return). Per-call
        limits may change the clocks and output caps, not what the session was opened with.
        Raises SessionClosedError once the session has ended; a call that ends it (timeout,
        memory limit, crash, policy violation) returns its Result and closes it."""
        lim = self._call_limits(timeout, limits)
        live = on_stdout is not None or on_stderr is not None
        request = wire.encode_request(code, files, lim, filename, stdin, stream=live,
                                      extra={"sid": self._sid, **pkgs.request_extra(self._package_set)},
                                      env=env, fetch=tuple(fetch))
        relay = Relay.maybe(on_stdout, on_stderr)

        def finish(header: dict, body: bytes, peak: int, kills: int) -> tuple[Result | None, str | None]:
            if header.get("cancelled") is True:
                if self._shutdown and not (cancel is not None and cancel.is_set()):
                    return wire.ended_by_shutdown(wire.decode_reply(header, body, peak, kills, lim)), \
                        "the sandbox was closed"
                return None, "a call was cancelled and its interpreter was killed"
            result = wire.decode_reply(header, body, peak, kills, lim)
            ended = header.get("alive") is not True or kills
            return result, _ENDINGS.get(result.outcome, "the session's interpreter ended") if ended else None

        try:
            result = self._call(request, lim, relay, cancel, finish)
        finally:
            if relay is not None:
                relay.close()
        if result is None:
            raise RunCancelledError("the call was cancelled; it was killed and the session ended")
        ms, self._packages_ms = self._packages_ms, 0.0
        return pkgs.with_packages_ms(result, ms)

    @property
    def packages(self) -> dict[str, str]:
        """The packages installed in this session beyond the image: name -> version."""
        return dict(self._package_set.packages) if self._package_set is not None else {}

    def install(self, packages: list[str]) -> dict[str, str]:
        """Add `packages` (as Sandbox.run's `packages=`) for the rest of the session: the session's
        requests so far and these are resolved together into one set, which goes first on the
        interpreter's sys.path from the next call on (modules already imported stay as they are).
        Returns what the session now has beyond the image (name -> version); InvalidInputError
        names a refused package, and the session keeps what it had."""
        self._check_open()
        if self._package_store is None:
            raise InvalidInputError("this session has no package store")
        new = pkgs.parse_request(list(packages), self._package_store.settings.max_packages)
        names = {r.name for r in new}
        merged = [s for s in self._package_specs
                  if pkgs.parse_request([s], 1)[0].name not in names] + [str(r) for r in new]
        self._use_packages(merged, self._package_store.prepare(merged))
        return self.packages

    def _use_packages(self, specs: list[str], found: pkgs.PackageSet | None) -> None:
        self._package_specs = specs
        self._package_set = found
        self._packages_ms += found.ms if found is not None else 0.0

    def _call(self, request: bytes, lim: Limits, relay: Callable[[str, bytes], None] | None,
              cancel: threading.Event | None, finish: Callable[[dict, bytes, int, int], tuple[Any, str | None]]) -> Any:
        """One request to the session's interpreter, under the session's lock: `finish` makes
        the answer of the reply and says whether the session ended, which is then closed before
        the lock is let go (a next call waiting on it finds it closed, never half-closed)."""
        with self._lock:
            self._check_open()
            self._busy.set()
            try:
                start = self._cgroup.begin()
                events = _either(cancel, self._cancel)
                try:
                    header, body = self._jail.call(self._sid, request, lim, relay, events)
                    peak, kills = self._cgroup.end(start)
                    peak += start.usage  # the whole session's peak: its limit covers its state too
                except SlotDied as exc:
                    self._end(f"the session's jail failed: {exc}")
                    header, body, peak, kills = {protocol.OP: protocol.SETUP_FAILED, "detail": f"{exc}; the session ended"}, b"", 0, 0
                finally:
                    self.expires_at = time.time() + self.ttl
                answer, ended = finish(header, body, peak, kills)
                if ended:
                    self._end(ended)
                return answer
            finally:
                self._busy.clear()

    def _file_op(self, kind: str, path: str = "", data: bytes = b"", max_bytes: int = 0) -> tuple[list, bytes]:
        """A listing, read, write or delete in the working directory, done by the session's own
        interpreter (the host never follows a path into a sandbox-writable place)."""
        lim = self.limits
        header = {protocol.OP: protocol.CALL, "sid": self._sid, "kind": kind, "path": path, "max_bytes": max_bytes,
                  "limits": lim.replace(timeout_seconds=min(lim.timeout_seconds, 30)).per_request(),
                  "profile": lim.profile(), "files": [], "stdin": 0}
        request = protocol.encode(header, [data] if data else [])
        header, body = self._call(request, lim, None, None, lambda h, b, _p, _k: (
            (h, b), None if h.get("alive") is True else "the session's interpreter ended during a file operation"))
        if header.get("alive") is not True:
            raise SessionClosedError(self.close_reason or "the session ended")
        try:
            blobs = protocol.split_blobs(body, header.get("blob_sizes"))
            doc = wire.parse_listing(blobs[2], MAX_FILE_LISTING)
            meta, content = doc.get("files"), blobs[3]
        except (protocol.ProtocolError, IndexError, TypeError, AttributeError):
            raise SessionClosedError(self._end("the session's interpreter answered a file operation wrongly")) from None
        error = doc.get("error")
        if isinstance(error, dict):
            message = str(error.get("message"))[:500]
            if error.get("type") in ("FileNotFoundError", "IsADirectoryError", "NotADirectoryError"):
                raise NoSuchFileError(f"no regular file {path!r} in the session: {message}")
            raise InvalidInputError(f"{kind} {path!r} failed in the session: {message}")
        if not isinstance(meta, list):
            raise SessionClosedError(self._end("the session's interpreter answered a file operation wrongly"))
        return meta, content

    def files(self) -> list[FileInfo]:
        """The regular files in the session's working directory now (links are not followed)."""
        meta, _ = self._file_op("list")
        out = []
        for m in meta[:MAX_FILE_LISTING]:
            try:
                path = wire.check_path(m.get("path"), "session file path")
            except (InvalidInputError, AttributeError):
                continue
            size = m.get("size")
            if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
                out.append(FileInfo(path, size, mimetypes.guess_type(path)[0] or "application/octet-stream"))
        return sorted(out, key=lambda f: f.path)

    def read_file(self, path: str) -> bytes:
        """The bytes of one file of the working directory (at most the session's max_file_bytes)."""
        wire.check_path(path, "path")
        cap = self.limits.max_file_bytes
        _, content = self._file_op("read", path, max_bytes=cap)
        if len(content) > cap:
            raise InvalidInputError(f"{path!r} is larger than max_file_bytes={cap}")
        return content

    def write_file(self, path: str, data: bytes | str) -> None:
        """Put a file in the working directory (replacing one of the same name)."""
        wire.check_path(path, "path")
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInputError(f"data must be bytes or str, not {type(data).__name__}")
        if len(data) > self.limits.max_input_bytes:
            raise InvalidInputError(f"data is larger than max_input_bytes={self.limits.max_input_bytes}")
        self._file_op("write", path, bytes(data))

    def delete_file(self, path: str) -> None:
        """Remove one file of the working directory."""
        wire.check_path(path, "path")
        self._file_op("delete", path)

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """End the session: its processes are killed and its files and memory are gone. Idempotent;
        a call in flight is cancelled."""
        if self._busy.is_set():
            self._cancel.set()
        with self._lock:
            self._end("the session was closed")

    def _end(self, reason: str) -> str:
        """Close the session for `reason` (the first reason stays). Returns the reason."""
        with self._manager.lock:
            if self.closed:
                return self.close_reason or reason
            self.closed = True
            self.close_reason = reason
        log.info("session %s… ended: %s", self.id[:8], reason,
                 extra={"event": "session_ended", "session": self.id[:8], "reason": reason})
        self._manager.forget(self)
        self._jail.close_session(self._sid)
        return reason

    def _check_open(self) -> None:
        if not self.closed and not self._jail.alive:
            self._end("the session's jail ended (killed or failed); the session's state is lost")
        if self.closed:
            raise SessionClosedError(self.close_reason or "the session is closed")

    def _call_limits(self, timeout: float | None, limits: Limits | Mapping[str, Any] | None) -> Limits:
        lim = Limits.coerce(limits, self.limits, timeout)
        fixed = sorted(k for k in SESSION_LIMITS if getattr(lim, k) != getattr(self.limits, k))
        if fixed:
            raise InvalidInputError(f"{', '.join(fixed)} is fixed when the session opens: "
                                    "pass it to session(limits=...)")
        return lim

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Either:
    """Set when either of two events is (the caller's cancel, or close() during the call)."""

    def __init__(self, a: threading.Event, b: threading.Event) -> None:
        self._a, self._b = a, b

    def is_set(self) -> bool:
        return self._a.is_set() or self._b.is_set()


def _either(a: threading.Event | None, b: threading.Event) -> Any:
    return b if a is None else _Either(a, b)


SHUTDOWN_WAIT = 10.0  # seconds close() waits for calls in flight to answer their kill


class SessionManager:
    """A Sandbox's sessions: opens them in its session jail (started with the first session and
    again if it dies), closes the idle and the old, and refuses the one too many."""

    def __init__(self, factory: Callable[[], SessionJail], settings: SessionSettings, defaults: Limits) -> None:
        self.settings = settings
        self.defaults = defaults
        self.lock = threading.Lock()
        self._factory = factory
        self._jail: SessionJail | None = None
        self._starting = threading.Lock()
        self._open: dict[str, Session] = {}
        self._pending: dict[int, Limits] = {}   # limits of sessions being opened (counted by _admit)
        self._ended: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._next_sid = 0
        self._closed = False
        self._wake = threading.Condition(self.lock)
        self._janitor: threading.Thread | None = None
        # Sessions opened ahead with the default limits, each in its cgroup already: moving a
        # process between cgroups waits for an RCU grace period (about 6 ms per hierarchy),
        # which would otherwise be on the caller's clock.
        self._ready: collections.deque[tuple[SessionJail, int, Any]] = collections.deque()
        self._refill = threading.Condition(self.lock)
        self._refiller: threading.Thread | None = None

    def open(self, ttl: float | None, limits: Limits | Mapping[str, Any] | None) -> Session:
        if ttl is None:
            ttl = self.settings.ttl_seconds
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= self.settings.max_ttl_seconds:
            raise InvalidInputError(f"ttl must be a number of seconds in (0, {self.settings.max_ttl_seconds:g}], not {ttl!r}")
        lim = Limits.coerce(limits, self.defaults)
        with self.lock:
            if self._closed:
                raise SandboxClosedError("the sandbox is closed")
            if len(self._open) >= self.settings.max_sessions:
                raise SessionLimitError(f"{len(self._open)} sessions are open, the most this sandbox allows "
                                        f"(max_sessions={self.settings.max_sessions}); close one first")
            self._admit(lim)
            self._next_sid += 1
            sid = self._next_sid
            # Held until the session is in _open: concurrent opens cannot pass the caps together.
            self._open[f"pending-{sid}"] = None  # type: ignore[assignment]
            self._pending[sid] = lim
        try:
            jail = self._jail_running()
            ready = self._take_ready(jail, lim)
            if ready is not None:
                session = Session(self, jail, ready[1], lim, float(ttl))
                session._cgroup = ready[2]
                session._cgroup.set_limits(lim.memory_bytes, lim.max_processes + 1)
            else:
                session = Session(self, jail, sid, lim, float(ttl))
                session._cgroup = jail.open(sid, lim.profile(), lim.memory_bytes, lim.max_processes + 1)
        except (SlotDied, OSError) as exc:
            raise SessionClosedError(f"the session could not be opened: {exc}") from None
        finally:
            with self.lock:
                del self._open[f"pending-{sid}"]
                del self._pending[sid]
        with self.lock:
            self._open[session.id] = session
            self._start_janitor()
            self._wake.notify()
        return session

    def _admit(self, lim: Limits) -> None:
        """Refuse a session whose limits would take the sessions' together over the session jail's
        totals: the jail's own limits then never bind before a session's, so no session can spend
        memory or processes another was promised (the jail's OOM killer would pick any of them)."""
        held = [s.limits for s in self._open.values() if s is not None] + list(self._pending.values())
        memory = sum(x.memory_bytes for x in held) + lim.memory_bytes
        processes = sum(x.max_processes + 1 for x in held) + lim.max_processes + 1
        if memory > self.settings.total_memory_bytes or processes > self.settings.total_processes:
            raise SessionLimitError(
                f"the open sessions' limits leave no room for this one ({memory >> 20} MiB of "
                f"{self.settings.total_memory_bytes >> 20} MiB, {processes} of {self.settings.total_processes} "
                "processes in all with it): close one, or ask for smaller memory_bytes/max_processes")

    def _jail_running(self) -> SessionJail:
        with self._starting:
            if self._jail is None or not self._jail.alive:
                if self._jail is not None:
                    self._jail.kill()
                self._jail = self._factory()
                with self.lock:
                    self._ready.clear()
                    if self._refiller is None:
                        self._refiller = threading.Thread(target=self._refill_loop, name="sandbox-session-refill",
                                                          daemon=True)
                        self._refiller.start()
                    self._refill.notify()
            return self._jail

    def _take_ready(self, jail: SessionJail, lim: Limits) -> tuple[SessionJail, int, Any] | None:
        """A session opened ahead, if `lim` opens one like it (same mounts and rlimits)."""
        if lim.profile() != self.defaults.profile():
            return None
        with self.lock:
            while self._ready:
                ready = self._ready.popleft()
                if ready[0] is jail and jail.alive:
                    self._refill.notify()
                    return ready
        return None

    def _refill_loop(self) -> None:
        """Keep `spares` sessions opened ahead in the running session jail."""
        lim = self.defaults
        with self.lock:
            while not self._closed:
                jail = self._jail
                if jail is None or not jail.alive or len(self._ready) >= self.settings.spares:
                    self._refill.wait(1.0)
                    continue
                self._next_sid += 1
                sid = self._next_sid
                self.lock.release()
                try:
                    cgroup = jail.open(sid, lim.profile(), lim.memory_bytes, lim.max_processes + 1)
                except (SlotDied, OSError) as exc:
                    log.debug("could not open a session ahead: %s", exc)
                    cgroup = None
                    time.sleep(0.5)
                finally:
                    self.lock.acquire()
                if cgroup is not None:
                    if self._closed or jail is not self._jail:
                        self.lock.release()
                        try:
                            jail.close_session(sid)
                        finally:
                            self.lock.acquire()
                    else:
                        self._ready.append((jail, sid, cgroup))

    def get(self, session_id: str) -> Session:
        with self.lock:
            session = self._open.get(session_id) if isinstance(session_id, str) else None
            reason = self._ended.get(session_id) if isinstance(session_id, str) else None
        if session is None:
            raise SessionClosedError(reason or "no such session")
        session._check_open()
        return session

    def sessions(self) -> list[Session]:
        with self.lock:
            return [s for s in self._open.values() if s is not None]

    def count(self) -> int:
        with self.lock:
            return sum(1 for s in self._open.values() if s is not None)

    def forget(self, session: Session) -> None:
        with self.lock:
            if self._open.get(session.id) is session:
                del self._open[session.id]
            self._ended[session.id] = session.close_reason or "the session is closed"
            while len(self._ended) > REMEMBERED:
                self._ended.popitem(last=False)

    def close(self) -> None:
        """Close every session and the session jail: nothing is left behind."""
        with self.lock:
            self._closed = True
            sessions = [s for s in self._open.values() if s is not None]
            self._wake.notify()
            self._refill.notify()
        # Calls in flight are killed by the zygote, which answers with what they had written.
        busy = [s for s in sessions if s._busy.is_set()]
        for s in busy:
            s._shutdown = True
            s._cancel.set()
        deadline = time.monotonic() + SHUTDOWN_WAIT
        for s in busy:
            if s._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                s._lock.release()
        for s in sessions:
            with s._manager.lock:
                if not s.closed:
                    s.closed, s.close_reason = True, "the sandbox was closed"
            self.forget(s)
        with self._starting:
            if self._jail is not None:
                self._jail.kill()
        for thread in (self._janitor, self._refiller):
            if thread is not None:
                thread.join(timeout=5)

    # -- the janitor: idle ttl and maximum lifetime --------------------------------------------

    def _start_janitor(self) -> None:
        if self._janitor is None:
            self._janitor = threading.Thread(target=self._expire_loop, name="sandbox-session-janitor", daemon=True)
            self._janitor.start()

    def _expire_loop(self) -> None:
        with self.lock:
            while not self._closed:
                now = time.time()
                due, next_at = [], now + 60
                for s in self._open.values():
                    if s is None:
                        continue
                    if s._busy.is_set():  # its clock restarts when the call ends: look again soon
                        next_at = min(next_at, now + 0.5)
                        continue
                    end_of_life = s.created_at + self.settings.max_lifetime_seconds
                    if now >= end_of_life:
                        due.append((s, f"the session reached its maximum lifetime of {self.settings.max_lifetime_seconds:g} s"))
                    elif now >= s.expires_at:
                        due.append((s, f"the session was idle for more than its ttl of {s.ttl:g} s"))
                    else:
                        next_at = min(next_at, s.expires_at, end_of_life)
                if due:
                    self.lock.release()
                    try:
                        for s, why in due:
                            if s._lock.acquire(blocking=False):  # not if a call just started
                                try:
                                    s._end(why)
                                finally:
                                    s._lock.release()
                    finally:
                        self.lock.acquire()
                    continue
                self._wake.wait(max(0.05, next_at - now))


class AsyncSession:
    """The asyncio twin of Session: `async with asb.session() as s: r = await s.run(...)`,
    or `s = await asb.session()`. Method by method the same arguments as Session."""

    def __init__(self, bridge: Bridge, opener: Callable[[], Session] | None = None,
                 session: Session | None = None) -> None:
        self._bridge = bridge
        self._opener = opener
        self._session = session

    def __await__(self):
        return self._open().__await__()

    async def _open(self) -> AsyncSession:
        if self._session is None and self._opener is not None:
            self._session = await self._bridge.call(self._opener)
        return self

    def _s(self) -> Session:
        if self._session is None:
            raise SessionClosedError("the session is not open yet: use `async with asb.session() as s` or await it")
        return self._session

    @property
    def id(self) -> str:
        return self._s().id

    @property
    def ttl(self) -> float:
        return self._s().ttl

    @property
    def expires_at(self) -> float:
        return self._s().expires_at

    @property
    def closed(self) -> bool:
        return self._s().closed

    @property
    def close_reason(self) -> str | None:
        return self._s().close_reason

    async def run(self, code: str, files: Files | None = None, *, stdin: bytes | str | None = None,
                  timeout: float | None = None, limits: Limits | Mapping[str, Any] | None = None,
                  filename: str = "main.py", on_stdout: TextCallback | None = None,
                  on_stderr: TextCallback | None = None, env: Mapping[str, str] | None = None,
                  fetch: Iterable[str] = ()) -> Result:
        """Session.run(), awaited; cancelling the awaiting task kills the call (and ends the session)."""
        session = self._s()
        return await self._bridge.cancellable(lambda cancel: session.run(
            code, files, stdin=stdin, timeout=timeout, limits=limits, filename=filename,
            on_stdout=on_stdout, on_stderr=on_stderr, cancel=cancel, env=env, fetch=fetch))

    async def install(self, packages: list[str]) -> dict[str, str]:
        """Session.install(), awaited."""
        session = self._s()
        return await self._bridge.call(lambda: session.install(packages))

    async def stream(self, code: str, files: Files | None = None, *, stdin: bytes | str | None = None,
                     timeout: float | None = None, limits: Limits | Mapping[str, Any] | None = None,
                     filename: str = "main.py", env: Mapping[str, str] | None = None,
                     fetch: Iterable[str] = ()) -> AsyncIterator[Output | Result]:
        """Run like run(), yielding Output(stream, text) events as the code writes, then the Result."""
        session = self._s()
        events = self._bridge.events(lambda on_stdout, on_stderr, cancel: session.run(
            code, files, stdin=stdin, timeout=timeout, limits=limits, filename=filename,
            on_stdout=on_stdout, on_stderr=on_stderr, cancel=cancel, env=env, fetch=fetch))
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()  # at once, not when the inner generator is collected: it kills the call

    async def files(self) -> list[FileInfo]:
        return await self._bridge.call(lambda: self._s().files())

    async def read_file(self, path: str) -> bytes:
        return await self._bridge.call(lambda: self._s().read_file(path))

    async def write_file(self, path: str, data: bytes | str) -> None:
        await self._bridge.call(lambda: self._s().write_file(path, data))

    async def delete_file(self, path: str) -> None:
        await self._bridge.call(lambda: self._s().delete_file(path))

    async def close(self) -> None:
        if self._session is not None:
            await self._bridge.call(lambda: self._s().close())

    async def __aenter__(self) -> AsyncSession:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
