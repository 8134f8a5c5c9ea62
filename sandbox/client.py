"""The public API: `Sandbox` (threads) and `AsyncSandbox` (asyncio), twins over one pool."""

from __future__ import annotations

import codecs
import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from . import cgroups, doctor, image as images, wire
from .errors import InvalidInputError, RunCancelledError, SandboxClosedError
from .limits import JailSettings, Limits, SessionSettings, seccomp_policy
from .pool import Pool, PoolStats
from .results import Output, Result
from .session_jail import SessionJail
from .sessions import AsyncSession, Session, SessionManager
from .slot import Slot, SlotDied

Files = Mapping[str, "bytes | str"]
TextCallback = Callable[[str], object]
log = logging.getLogger("sandbox")


class Sandbox:
    """A pool of warm jails. Thread-safe: call run() from as many threads as you like.

    >>> with Sandbox() as sb:
    ...     sb.run("print(1)").stdout
    '1\\n'
    """

    def __init__(self, slots: int | None = None, *, image: str = "default", limits: Limits | None = None,
                 max_queue: int = 1024, recycle_after: int = 10_000,
                 preload: bool | Iterable[str] = True) -> None:
        """`slots` jails (default: one per CPU). `preload`: True imports the image's whole
        preload list in each jail before the first run; False none of it (the pool starts in a
        fraction of the time and programs import what they use); module names, the entries of
        that list under those top-level packages (what a one-shot command that knows its
        program's imports wants)."""
        if slots is not None and (not isinstance(slots, int) or slots < 1):
            raise InvalidInputError(f"slots must be a positive integer, not {slots!r}")
        if max_queue < 0 or recycle_after < 1:
            raise InvalidInputError("max_queue must be >= 0 and recycle_after >= 1")
        doctor.require_safe_host()  # refuses to start unsafely: same checks as `sandbox doctor`
        self.image = images.load_any(image)
        if isinstance(preload, bool):
            modules = list(self.image.preload) if preload else []
        else:
            wanted = set(preload)
            modules = [m for m in self.image.preload if m.split(".")[0] in wanted]
        self.limits = limits if limits is not None else Limits.from_policy()
        settings = JailSettings.from_policy()
        seccomp = seccomp_policy()
        cgroups.ensure_parents()
        cgroups.remove_stale()
        self._closed = False
        t0 = time.monotonic()

        def factory(index: int) -> Slot:
            return Slot(index, self.image, settings, seccomp, self.limits, preload=modules)

        session_settings = SessionSettings.from_policy()
        self._sessions = SessionManager(
            lambda: SessionJail(self.image, settings, seccomp, self.limits, modules, session_settings),
            session_settings, self.limits)
        self._pool = Pool(slots or os.cpu_count() or 1, factory, max_queue=max_queue, recycle_after=recycle_after)
        self._pool.start()
        self.start_seconds = time.monotonic() - t0

    def run(self, code: str, files: Files | None = None, *, stdin: bytes | str | None = None,
            timeout: float | None = None, limits: Limits | Mapping[str, Any] | None = None,
            filename: str = "main.py", on_stdout: TextCallback | None = None,
            on_stderr: TextCallback | None = None, cancel: threading.Event | None = None) -> Result:
        """Run `code` with `files` placed in its working directory and `stdin` as its standard
        input; never raises for what the code does. `on_stdout`/`on_stderr` receive the text as
        the program writes it (in order, on a thread of their own, all of it before run()
        returns); the Result holds the same text. Setting `cancel` (from another thread) kills
        the run within about 50 ms; run() then raises RunCancelledError."""
        lim = self._limits_for(timeout, limits)
        live = on_stdout is not None or on_stderr is not None
        request = wire.encode_request(code, files, lim, filename, stdin, stream=live)  # InvalidInputError first
        relay = _Relay(on_stdout, on_stderr) if live else None
        try:
            return self._execute(request, lim, relay, cancel)
        finally:
            if relay is not None:
                relay.close()

    def _execute(self, request: bytes, lim: Limits, relay: _Relay | None,
                 cancel: threading.Event | None = None) -> Result:
        if cancel is not None and cancel.is_set():
            raise RunCancelledError("the run was cancelled before it started")
        slot = self._pool.acquire()
        t0 = time.monotonic()
        try:
            header, body, peak, kills = slot.execute(request, lim, relay, cancel)
        except (SlotDied, OSError) as exc:
            self._pool.release(slot, broken=True)
            return wire.sandbox_error(f"the jail failed during the run ({exc}); it was replaced, retry the call",
                                      wall_ms=(time.monotonic() - t0) * 1000)
        except BaseException:
            self._pool.release(slot, broken=True)
            raise
        broken = header.get("status") == "setup_failed"
        self._pool.release(slot, broken=broken)
        if header.get("cancelled") is True:
            raise RunCancelledError("the run was cancelled; it was killed")
        return wire.decode_reply(header, body, peak, kills, lim)

    def session(self, ttl: float | None = None, *, limits: Limits | Mapping[str, Any] | None = None) -> Session:
        """A stateful interpreter: variables, imports and files carry over from call to call.
        Closed after `ttl` idle seconds (policy default 600), at its maximum lifetime, by close()
        or when the Sandbox closes. `limits` are the session's own (memory and processes cover
        everything it holds). The first session starts the session jail (seconds); later ones
        take a waiting interpreter (milliseconds). SessionLimitError beyond max_sessions."""
        if self._closed:
            raise SandboxClosedError("the sandbox is closed")
        return self._sessions.open(ttl, limits)

    def get_session(self, session_id: str) -> Session:
        """The open session with that id; SessionClosedError (with the reason) if it ended or never was."""
        return self._sessions.get(session_id)

    def sessions(self) -> list[Session]:
        """The sessions open now."""
        return self._sessions.sessions()

    def _limits_for(self, timeout: float | None, limits: Limits | Mapping[str, Any] | None) -> Limits:
        if self._closed:
            raise SandboxClosedError("the sandbox is closed")
        lim = self.limits
        if isinstance(limits, Limits):
            lim = limits
        elif isinstance(limits, Mapping):
            lim = lim.replace(**limits)
        elif limits is not None:
            raise InvalidInputError("limits must be a Limits or a mapping of limit names to values")
        if timeout is not None:
            lim = lim.replace(timeout_seconds=timeout)
        return lim

    def image_info(self) -> dict[str, Any]:
        """The image's manifest: Python version, package versions, preloaded modules."""
        return dict(self.image.manifest)

    def stats(self) -> PoolStats:
        """How many slots exist, are running, idle or starting, how many calls wait, how many
        sessions are open."""
        return dataclasses.replace(self._pool.stats(), sessions=self._sessions.count())

    @property
    def capacity(self) -> int:
        """How many runs can execute at once (the number of slots)."""
        return self._pool.size

    def close(self) -> None:
        """Stop every jail and end every session. Leaves no process, mount or cgroup behind."""
        if not self._closed:
            self._closed = True
            self._sessions.close()
            self._pool.close()
            cgroups.settle(timeout=60)  # cgroups whose killed processes were slow to leave
            cgroups.remove_stale()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Relay:
    """Hands live output to the caller's callbacks on a thread of its own, in order, so a slow
    callback never holds up the reading of the jail's pipe (the zygote would block writing to
    it, and its wall clock with it). A callback that raises is logged and called no more."""

    def __init__(self, on_stdout: TextCallback | None, on_stderr: TextCallback | None) -> None:
        self._callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        # Incremental: a character split across two chunks is decoded whole.
        self._decoders = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in self._callbacks}
        self._queue: queue.SimpleQueue[tuple[str, bytes] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="sandbox-output", daemon=True)
        self._thread.start()

    def __call__(self, stream: str, data: bytes) -> None:
        self._queue.put((stream, data))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            self._deliver(item[0], self._decoders[item[0]].decode(item[1]))
        for stream, decoder in self._decoders.items():
            self._deliver(stream, decoder.decode(b"", final=True))

    def _deliver(self, stream: str, text: str) -> None:
        callback = self._callbacks[stream]
        if not text or callback is None:
            return
        try:
            callback(text)
        except Exception:  # noqa: BLE001 - the caller's bug must not break the run
            log.exception("the %s callback raised; it gets no more output of this run", stream)
            self._callbacks[stream] = None


class AsyncSandbox:
    """The asyncio twin of Sandbox: `async with AsyncSandbox() as sb: r = await sb.run(...)`."""

    def __init__(self, slots: int | None = None, **kwargs: Any) -> None:
        self._args = (slots, kwargs)
        self._max_queue = kwargs.get("max_queue", 1024)
        self._sync: Sandbox | None = None
        self._executor: Any = None  # a ThreadPoolExecutor once started

    async def start(self) -> AsyncSandbox:
        import asyncio  # here, not at the top: a one-shot `sandbox run` should not pay for it
        import concurrent.futures

        slots, kwargs = self._args
        self._sync = await asyncio.to_thread(Sandbox, slots, **kwargs)
        # One thread per call the pool admits (running plus queued, created only as needed), so
        # a call beyond max_queue gets QueueFullError here too instead of waiting unseen.
        # Sessions' calls and file operations get threads of their own on top (one call at a
        # time per session), so they can never hold up stateless runs.
        sessions = self._sync._sessions.settings.max_sessions
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._sync.capacity + self._max_queue + 2 * sessions + 1, thread_name_prefix="sandbox-async")
        return self

    async def run(self, code: str, files: Files | None = None, *, stdin: bytes | str | None = None,
                  timeout: float | None = None, limits: Limits | Mapping[str, Any] | None = None,
                  filename: str = "main.py", on_stdout: TextCallback | None = None,
                  on_stderr: TextCallback | None = None) -> Result:
        """Sandbox.run(), awaited: same arguments, same Result (callbacks run on a worker thread;
        stream() gives the same output as async events). Cancelling the awaiting task kills the
        run in its jail."""
        sync = self._started()
        return await self._cancellable(lambda cancel: sync.run(
            code, files, stdin=stdin, timeout=timeout, limits=limits, filename=filename,
            on_stdout=on_stdout, on_stderr=on_stderr, cancel=cancel))

    async def stream(self, code: str, files: Files | None = None, *, stdin: bytes | str | None = None,
                     timeout: float | None = None, limits: Limits | Mapping[str, Any] | None = None,
                     filename: str = "main.py") -> AsyncIterator[Output | Result]:
        """Run like run(), yielding Output(stream, text) events as the program writes, then the
        Result. Closing the iterator early (or cancelling its consumer) kills the run."""
        sync = self._started()
        events = self._events(lambda on_stdout, on_stderr, cancel: sync.run(
            code, files, stdin=stdin, timeout=timeout, limits=limits, filename=filename,
            on_stdout=on_stdout, on_stderr=on_stderr, cancel=cancel))
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()  # at once, not when the inner generator is collected: it kills the run

    def session(self, ttl: float | None = None, *, limits: Limits | Mapping[str, Any] | None = None) -> AsyncSession:
        """Sandbox.session(), for asyncio: `async with asb.session() as s:` or `s = await asb.session()`."""
        self._started()
        return AsyncSession(self, ttl, limits)

    async def get_session(self, session_id: str) -> AsyncSession:
        """The open session with that id (SessionClosedError if it ended or never was)."""
        return AsyncSession(self, session=self._started().get_session(session_id))

    async def _call(self, fn: Callable[[Sandbox], Any]) -> Any:
        """fn(the Sandbox) on the worker threads."""
        import asyncio

        sync = self._started()
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: fn(sync))

    async def _cancellable(self, fn: Callable[[threading.Event], Any]) -> Any:
        """fn(cancel) on a worker thread; if the awaiting task is cancelled, `cancel` is set (the
        run is killed in its jail) and the cancellation goes on."""
        import asyncio

        cancel = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, cancel)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()
            future.add_done_callback(_retrieve)
            raise

    async def _events(self, fn: Callable[..., Result]) -> AsyncIterator[Output | Result]:
        """fn(on_stdout, on_stderr, cancel) on a worker thread, its output as Output events, then
        its Result. Leaving the iteration early kills the run."""
        import asyncio

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Output | None] = asyncio.Queue()
        cancel = threading.Event()

        def emit(stream: str) -> TextCallback:
            return lambda text: loop.call_soon_threadsafe(events.put_nowait, Output(stream, text))

        future = loop.run_in_executor(self._executor, fn, emit("stdout"), emit("stderr"), cancel)
        # Every Output was queued before run() returned, so this marker comes after the last.
        future.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (event := await events.get()) is not None:
                yield event
            yield await future
        finally:
            if not future.done():
                cancel.set()
                future.add_done_callback(_retrieve)

    def _started(self) -> Sandbox:
        if self._sync is None:
            raise SandboxClosedError("AsyncSandbox is not started: use `async with AsyncSandbox() as sb`")
        return self._sync

    def image_info(self) -> dict[str, Any]:
        return self._started().image_info()

    def stats(self) -> PoolStats:
        return self._started().stats()

    @property
    def capacity(self) -> int:
        return self._started().capacity

    async def close(self) -> None:
        import asyncio

        if self._sync is not None:
            await asyncio.to_thread(self._sync.close)
            self._sync = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def __aenter__(self) -> AsyncSandbox:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _retrieve(future: Any) -> None:
    """Take a finished background call's outcome, so an abandoned one is not logged as lost."""
    if not future.cancelled():
        future.exception()
