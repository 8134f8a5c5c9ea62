"""The public API: `Sandbox` (threads) and `AsyncSandbox` (asyncio), twins over one pool."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .guest import protocol
from .host import cgroups, doctor, image as images, jail, packages as pkgs, wire
from .errors import InvalidInputError, RunCancelledError, SandboxClosedError, SandboxError
from .limits import JailSettings, Limits, PackageSettings, SessionSettings, seccomp_policy
from .host.pool import Pool, PoolStats
from .relay import Relay
from .results import DisplayOutput, Output, Result
from .types import Files, TextCallback
from .host.session_jail import SessionJail
from .sessions import AsyncSession, Session, SessionManager, _either
from .host.slot import Slot, SlotDied

if TYPE_CHECKING:
    from .aio import Bridge

SHUTDOWN_WAIT = 10.0  # seconds close() waits for the runs in flight to answer their kill, then ends the jails

__all__ = ["Sandbox", "AsyncSandbox", "Files", "TextCallback"]


def image_manifest(image: str = "default") -> dict[str, Any]:
    """An image's manifest (Python version, packages, preloaded modules) without starting a Sandbox."""
    return dict(images.load_any(image).manifest)


def image_package_file(relpath: str, image: str = "default") -> str | None:
    """The path of a file an image's packages ship (`relpath` under its site-packages, e.g.
    "plotly/package_data/plotly.min.js"), or None: how a server serves a viewer library from the
    image itself, with no CDN. Read-only; `relpath` must stay inside site-packages."""
    if relpath.startswith("/") or ".." in relpath.split("/"):
        return None
    try:
        venv = images.load_any(image).path / "venv"
    except SandboxError:
        return None
    for site in sorted(venv.glob("lib/python3*/site-packages")):
        path = site / relpath
        if path.is_file():
            return str(path)
    return None


def check_host() -> None:
    """Raise SandboxUnavailableError (saying what is missing) unless this host can run jails safely:
    the checks of `sandbox doctor`, which Sandbox() also makes before it starts."""
    doctor.require_safe_host()


class Sandbox:
    """A pool of warm jails. Thread-safe: call run() from as many threads as you like.

    >>> with Sandbox() as sb:
    ...     sb.run("print(1)").stdout
    '1\\n'
    """

    def __init__(self, slots: int | None = None, *, image: str = "default", limits: Limits | None = None,
                 max_queue: int = 1024, recycle_after: int = 10_000,
                 preload: bool | Iterable[str] = True, warm: bool = True) -> None:
        """`slots` jails (default: one per CPU). `preload`: True imports the image's whole
        preload list in each jail before the first run; False none of it (the pool starts in a
        fraction of the time and programs import what they use); module names, the entries of
        that list under those top-level packages. `warm=False`: jails for one run each (what a
        one-shot command wants): no preload, no standard-library set, one child waiting and no
        rehearsal run in it, so the jail is up the soonest and the run imports what it uses, as a
        bare interpreter would; isolation, limits and results are the same as a warm pool's, only
        later runs are slower."""
        if slots is not None and (not isinstance(slots, int) or slots < 1):
            raise InvalidInputError(f"slots must be a positive integer, not {slots!r}")
        if max_queue < 0 or recycle_after < 1:
            raise InvalidInputError("max_queue must be >= 0 and recycle_after >= 1")
        doctor.require_safe_host()  # refuses to start unsafely: same checks as `sandbox doctor`
        self.image = images.load_any(image)
        if not warm:
            modules = []
        elif isinstance(preload, bool):
            modules = list(self.image.preload) if preload else []
        else:
            wanted = set(preload)
            modules = [m for m in self.image.preload if m.split(".")[0] in wanted]
        self.limits = limits if limits is not None else Limits.from_policy()
        settings = JailSettings.from_policy()
        # Packages on demand (host/packages.py): the cache's sets, bound read-only into every jail.
        self.packages = pkgs.PackageStore(self.image, PackageSettings.from_policy())
        try:
            settings = dataclasses.replace(settings, packages_dir=str(self.packages.ensure()))
        except OSError:  # a cache this process cannot create: runs without packages still work
            pass
        seccomp = seccomp_policy()
        cgroups.ensure_parents()
        cgroups.remove_stale()
        jail.remove_stale_run_dirs()  # left by a host process killed before it could clean up
        self._closed = False
        self._stopping = threading.Event()  # close(): the runs in flight are killed, their output kept
        self._flight = threading.Condition()
        self._in_flight = 0
        t0 = time.monotonic()

        def factory(index: int) -> Slot:
            return Slot(index, self.image, settings, seccomp, self.limits, preload=modules, warm=warm).start()

        session_settings = SessionSettings.from_policy()
        self._sessions = SessionManager(
            lambda: SessionJail(self.image, settings, seccomp, self.limits, modules, session_settings).start(),
            session_settings, self.limits)
        self._pool = Pool(slots or os.cpu_count() or 1, factory, max_queue=max_queue, recycle_after=recycle_after)
        self._pool.start()
        self.start_seconds = time.monotonic() - t0

    def run(self, code: str, files: Files | None = None, *, stdin: bytes | str | None = None,
            timeout: float | None = None, limits: Limits | Mapping[str, Any] | None = None,
            filename: str = "main.py", on_stdout: TextCallback | None = None,
            on_stderr: TextCallback | None = None, cancel: threading.Event | None = None,
            env: Mapping[str, str] | None = None, fetch: Iterable[str] = (),
            packages: Iterable[str] | None = None,
            on_output: Callable[[DisplayOutput], None] | None = None) -> Result:
        """Run `code` with `files` placed in its working directory (a name under `/tmp/` goes to
        the run's own /tmp) and `stdin` as its standard input; never raises for what the code does.
        `packages` ("humanize", "polars>=1"...) are installed for this run from the policy's
        allow-list (see host/packages.py; downloaded on the host on first use, cached after; the
        run still has no network); the cost shows in `usage.packages_ms`.
        `env` adds environment variables for this run (never the sandbox's own, such as PATH, HOME,
        LANG, PYTHON*, LD_*: see wire.check_env). `fetch` names files under /tmp/ that come back
        with the outputs (the working directory's new and changed files always do).
        `on_stdout`/`on_stderr` receive the text as
        the program writes it (in order, on a thread of their own, all of it before run()
        returns); the Result holds the same text. `on_output` receives each rich output (a
        DisplayOutput) as it is displayed, the same way; the Result lists them too (and, if the run
        was killed before its end, the ones displayed until then). Setting `cancel` (from another
        thread) kills the run within about 50 ms; run() then raises RunCancelledError."""
        if self._closed:
            raise SandboxClosedError("the sandbox is closed")
        lim = Limits.coerce(limits, self.limits, timeout)
        found = self.packages.prepare(packages) if packages else None
        relay = Relay.maybe(on_stdout, on_stderr, on_output)
        extra = pkgs.request_extra(found)
        if on_output is not None:
            extra["live_outputs"] = True
        request = wire.encode_request(code, files, lim, filename, stdin,  # InvalidInputError first
                                      stream=relay is not None, env=env, fetch=tuple(fetch), extra=extra)
        try:
            result = self._execute(request, lim, relay, cancel)
            return pkgs.with_packages_ms(result, found.ms) if found is not None else result
        finally:
            if relay is not None:
                relay.close()

    def _execute(self, request: bytes, lim: Limits, relay: Relay | None,
                 cancel: threading.Event | None = None) -> Result:
        if cancel is not None and cancel.is_set():
            raise RunCancelledError("the run was cancelled before it started")
        slot = self._pool.acquire()
        with self._flight:
            self._in_flight += 1
        try:
            return self._execute_in(slot, request, lim, relay, cancel)
        finally:
            with self._flight:
                self._in_flight -= 1
                self._flight.notify_all()

    def _execute_in(self, slot: Slot, request: bytes, lim: Limits, relay: Relay | None,
                    cancel: threading.Event | None) -> Result:
        t0 = time.monotonic()
        try:
            header, body, peak, kills = slot.execute(request, lim, relay, _either(cancel, self._stopping),
                                                     relay.display if relay is not None and relay.wants_outputs else None)
        except (SlotDied, OSError) as exc:
            self._pool.release(slot, broken=True)
            return wire.sandbox_error(f"the jail failed during the run ({exc}); it was replaced, retry the call",
                                      wall_ms=(time.monotonic() - t0) * 1000)
        except BaseException:
            self._pool.release(slot, broken=True)
            raise
        broken = header.get(protocol.OP) == protocol.SETUP_FAILED
        self._pool.release(slot, broken=broken)
        shutdown = header.get("cancelled") is True and not (cancel is not None and cancel.is_set())
        if header.get("cancelled") is True and not shutdown:
            raise RunCancelledError("the run was cancelled; it was killed")
        result = wire.decode_reply(header, body, peak, kills, lim)
        if shutdown:  # close() while it ran: killed, with what it had written and displayed
            result = wire.ended_by_shutdown(result)
        if relay is not None and relay.shown and header.get("result") is not True:
            # Killed before its result (a timeout, a crash): what it displayed until then.
            result = dataclasses.replace(result, outputs=list(relay.shown))
        return result

    def session(self, ttl: float | None = None, *, limits: Limits | Mapping[str, Any] | None = None,
                packages: Iterable[str] | None = None) -> Session:
        """A stateful interpreter: variables, imports and files carry over from call to call.
        Closed after `ttl` idle seconds (policy default 600), at its maximum lifetime, by close()
        or when the Sandbox closes. `limits` are the session's own (memory and processes cover
        everything it holds). The first session starts the session jail (seconds); later ones
        take a waiting interpreter (milliseconds). SessionLimitError beyond max_sessions.
        `packages` as for run(), for the whole session (Session.install() adds more later)."""
        if self._closed:
            raise SandboxClosedError("the sandbox is closed")
        found = self.packages.prepare(packages) if packages else None  # refused before a session opens
        session = self._sessions.open(ttl, limits)
        session._package_store = self.packages
        if packages:
            session._use_packages(list(packages), found)
        return session

    def get_session(self, session_id: str) -> Session:
        """The open session with that id; SessionClosedError (with the reason) if it ended or never was."""
        return self._sessions.get(session_id)

    def sessions(self) -> list[Session]:
        """The sessions open now."""
        return self._sessions.sessions()

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
            # Runs in flight are killed by their zygotes, which answer with what they had written
            # (flushed stdout and stderr, live outputs): they end as sandbox_error, SandboxShutdown.
            self._stopping.set()
            with self._flight:
                self._flight.wait_for(lambda: self._in_flight == 0, timeout=SHUTDOWN_WAIT)
            self._sessions.close()
            self._pool.close()
            cgroups.settle(timeout=60)  # cgroups whose killed processes were slow to leave
            cgroups.remove_stale()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSandbox:
    """The asyncio twin of Sandbox: `async with AsyncSandbox() as sb: r = await sb.run(...)`."""

    def __init__(self, slots: int | None = None, **kwargs: Any) -> None:
        self._args = (slots, kwargs)
        self._max_queue = kwargs.get("max_queue", 1024)
        self._sync: Sandbox | None = None
        self._bridge: Bridge | None = None

    async def start(self) -> AsyncSandbox:
        import asyncio  # here, not at the top: a one-shot `sandbox run` should not pay for it

        from .aio import Bridge

        slots, kwargs = self._args
        self._sync = await asyncio.to_thread(Sandbox, slots, **kwargs)
        # One thread per call the pool admits (running plus queued, created only as needed), so
        # a call beyond max_queue gets QueueFullError here too instead of waiting unseen.
        # Sessions' calls and file operations get threads of their own on top (one call at a
        # time per session), so they can never hold up stateless runs.
        sessions = self._sync._sessions.settings.max_sessions
        self._bridge = Bridge(self._sync.capacity + self._max_queue + 2 * sessions + 1)
        return self

    async def run(self, code: str, files: Files | None = None, *, stdin: bytes | str | None = None,
                  timeout: float | None = None, limits: Limits | Mapping[str, Any] | None = None,
                  filename: str = "main.py", on_stdout: TextCallback | None = None,
                  on_stderr: TextCallback | None = None, env: Mapping[str, str] | None = None,
                  fetch: Iterable[str] = (), packages: Iterable[str] | None = None) -> Result:
        """Sandbox.run(), awaited: same arguments, same Result (callbacks run on a worker thread;
        stream() gives the same output as async events). Cancelling the awaiting task kills the
        run in its jail."""
        sync, bridge = self._started()
        return await bridge.cancellable(lambda cancel: sync.run(
            code, files, stdin=stdin, timeout=timeout, limits=limits, filename=filename,
            on_stdout=on_stdout, on_stderr=on_stderr, cancel=cancel, env=env, fetch=fetch, packages=packages))

    async def stream(self, code: str, files: Files | None = None, *, stdin: bytes | str | None = None,
                     timeout: float | None = None, limits: Limits | Mapping[str, Any] | None = None,
                     filename: str = "main.py", env: Mapping[str, str] | None = None,
                     fetch: Iterable[str] = (), packages: Iterable[str] | None = None
                     ) -> AsyncIterator[Output | DisplayOutput | Result]:
        """Run like run(), yielding Output(stream, text) events as the program writes and a
        DisplayOutput as each rich output is displayed, then the Result (which lists the rich
        outputs too). Closing the iterator early (or cancelling its consumer) kills the run."""
        sync, bridge = self._started()
        events = bridge.events(lambda on_stdout, on_stderr, cancel, on_output: sync.run(
            code, files, stdin=stdin, timeout=timeout, limits=limits, filename=filename,
            on_stdout=on_stdout, on_stderr=on_stderr, cancel=cancel, env=env, fetch=fetch,
            packages=packages, on_output=on_output), outputs=True)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()  # at once, not when the inner generator is collected: it kills the run

    def session(self, ttl: float | None = None, *, limits: Limits | Mapping[str, Any] | None = None,
                packages: Iterable[str] | None = None) -> AsyncSession:
        """Sandbox.session(), for asyncio: `async with asb.session() as s:` or `s = await asb.session()`."""
        sync, bridge = self._started()
        return AsyncSession(bridge, lambda: sync.session(ttl, limits=limits, packages=packages))

    async def get_session(self, session_id: str) -> AsyncSession:
        """The open session with that id (SessionClosedError if it ended or never was)."""
        sync, bridge = self._started()
        return AsyncSession(bridge, session=sync.get_session(session_id))

    def _started(self) -> tuple[Sandbox, Bridge]:
        if self._sync is None or self._bridge is None:
            raise SandboxClosedError("AsyncSandbox is not started: use `async with AsyncSandbox() as sb`")
        return self._sync, self._bridge

    def image_info(self) -> dict[str, Any]:
        return self._started()[0].image_info()

    def stats(self) -> PoolStats:
        return self._started()[0].stats()

    @property
    def capacity(self) -> int:
        return self._started()[0].capacity

    async def close(self) -> None:
        import asyncio

        if self._sync is not None:
            await asyncio.to_thread(self._sync.close)
            self._sync = None
        if self._bridge is not None:
            self._bridge.shutdown()
            self._bridge = None

    async def __aenter__(self) -> AsyncSandbox:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
