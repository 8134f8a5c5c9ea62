"""The pool: N warm slots, a bounded FIFO wait queue, and a supervisor that replaces dead jails.

Like gunicorn's arbiter, one loop watches every worker (here: a pidfd per jail) and replaces
whatever dies, whether idle or busy. Callers block in acquire() until a slot is free; beyond
`max_queue` waiting callers they get QueueFullError at once instead of an unbounded backlog.
A released slot is handed straight to the longest waiter, so a caller that just finished
cannot take it back first and starve the others.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import select
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

from ..errors import ImageError, QueueFullError, SandboxClosedError, SandboxUnavailableError
from .slot import Slot

log = logging.getLogger("sandbox.host.pool")

START_ATTEMPTS = 3


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of the pool, for health checks, metrics and schedulers."""

    size: int           # slots the pool keeps
    live: int           # slots running (idle or busy)
    idle: int           # slots ready for a call now
    busy: int           # slots running a call
    starting: int       # slots being started or replaced
    waiting: int        # calls queued for a slot
    replacements: int   # slots replaced since start (deaths and recycles)
    runs: int           # runs served since start (by live slots and by those replaced)
    sessions: int = 0   # sessions open (Sandbox.session)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class _Waiter:
    """One caller waiting in acquire(); release() hands it a slot directly."""

    __slots__ = ("cond", "slot")

    def __init__(self, lock: threading.Lock) -> None:
        self.cond = threading.Condition(lock)
        self.slot: Slot | None = None


class Pool:
    def __init__(self, size: int, factory: Callable[[int], Slot], *, max_queue: int, recycle_after: int) -> None:
        self.size = size
        self._factory = factory
        self._max_queue = max_queue
        self._recycle_after = recycle_after
        self._recycle_at: dict[int, int] = {}  # index -> runs after which that slot is recycled
        self._lock = threading.Lock()
        self._idle: list[Slot] = []
        self._live: dict[int, Slot] = {}   # index -> slot, idle or busy
        self._busy: set[Slot] = set()      # handed out: only their holder may close them
        self._mourned: set[Slot] = set()   # died while busy: their holder will give them back
        self._starting = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._closed = False
        self.last_error: str | None = None
        self.replacements = 0
        self._runs_before = 0  # runs served by slots since replaced, so stats().runs never goes back
        self._workers: set[threading.Thread] = set()  # slot starts and replacements under way
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._supervisor = threading.Thread(target=self._supervise, name="sandbox-supervisor", daemon=True)

    # -- start and replace ------------------------------------------------------------------

    def start(self) -> None:
        """Start every slot in parallel; return when all are warm. Fails if none could start."""
        with self._lock:
            self._starting = self.size
        threads = [threading.Thread(target=self._start_slot, args=(i,), daemon=True) for i in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with self._lock:
            if not self._live:
                raise SandboxUnavailableError(f"no slot could start: {self.last_error}")
        self._supervisor.start()

    def _start_slot(self, index: int) -> None:
        delay = 0.5
        for attempt in range(START_ATTEMPTS):
            if self._closed:
                break
            try:
                slot = self._factory(index)
            except Exception as exc:  # noqa: BLE001 - report and retry, whatever broke
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("slot %d failed to start (attempt %d): %s", index, attempt + 1, self.last_error)
                if isinstance(exc, ImageError):
                    break  # a configuration problem: trying again changes nothing
                time.sleep(delay)
                delay *= 2
                continue
            with self._lock:
                self._starting -= 1
                if self._closed:
                    slot.close()
                    return
                self._live[index] = slot
                # Jitter, as gunicorn's max_requests: slots started together do not all recycle at once.
                self._recycle_at[index] = max(1, round(self._recycle_after * random.uniform(0.9, 1.1)))
                self._offer(slot)
            self._wake()
            return
        with self._lock:
            self._starting -= 1
            self._notify_waiters()  # they may need to learn that nothing is coming

    def _replace(self, slot: Slot) -> None:
        """A slot died (or broke its protocol): kill what is left of it, start another."""
        self._take_out(slot, lambda: slot.kill())

    def _retire(self, slot: Slot) -> None:
        """A slot served its share of runs: close it gracefully and start another. Not a death."""
        log.info("slot %d served %d runs; recycling it", slot.index, slot.runs,
                 extra={"event": "jail_recycled", "slot": slot.index, "runs": slot.runs})
        self._take_out(slot, lambda: slot.close())

    def _take_out(self, slot: Slot, end: Callable[[], None]) -> None:
        with self._lock:
            if self._live.get(slot.index) is not slot:
                return  # already handled
            del self._live[slot.index]
            self._runs_before += slot.runs
            self._mourned.discard(slot)
            if slot in self._idle:
                self._idle.remove(slot)
            restart = not self._closed
            if restart:
                self._starting += 1
                self.replacements += 1
        self._wake()  # the supervisor stops watching it: an ending it caused is no death
        self._spawn(end, f"sandbox-end{slot.index}")
        if restart:
            self._spawn(lambda: self._start_slot(slot.index), f"sandbox-start{slot.index}")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        with self._lock:
            self._workers = {w for w in self._workers if w.is_alive()}
            self._workers.add(t)
        t.start()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def _supervise(self) -> None:
        """Replace any jail the moment it dies (its pidfd becomes readable)."""
        while not self._closed:
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            with self._lock:
                by_fd = {s.pidfd: s for s in self._live.values() if s not in self._mourned}
            for fd in by_fd:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    os.read(self._wake_r, 4096)
                elif fd in by_fd and not self._closed:
                    slot = by_fd[fd]
                    with self._lock:
                        if self._live.get(slot.index) is not slot:
                            continue  # retired or replaced meanwhile: it was ended, it did not die
                        busy = slot in self._busy
                        self._mourned.add(slot)  # its pidfd stays readable: stop watching it
                    last = slot.diagnostics()[-500:]
                    log.warning("slot %d died; replacing it. Last words: %s", slot.index, last,
                                extra={"event": "jail_died", "slot": slot.index, "last_words": last})
                    if not busy:
                        self._replace(slot)
                    # A busy slot's run sees the death through its own pidfd and gives the slot
                    # back as broken; closing its fds here would hand their numbers to the
                    # replacement under the running thread.

    # -- use ---------------------------------------------------------------------------------

    def _offer(self, slot: Slot) -> None:
        """A slot became free (lock held): give it to the longest waiter, else make it idle."""
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.slot = slot
            waiter.cond.notify()
        else:
            self._idle.append(slot)

    def _notify_waiters(self) -> None:
        for w in self._waiters:
            w.cond.notify()

    def acquire(self, timeout: float | None = None) -> Slot:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            slot = self._acquire_any(deadline, timeout)
            if not slot.poll_dead():
                return slot
            with self._lock:
                self._busy.discard(slot)
            self._replace(slot)

    def _acquire_any(self, deadline: float | None, timeout: float | None) -> Slot:
        with self._lock:
            if self._closed:
                raise SandboxClosedError("the sandbox is closed")
            if self._idle and not self._waiters:
                slot = self._idle.pop()
                self._busy.add(slot)
                return slot
            # A slot being started (a recycle, a replacement) is capacity on its way: one caller per
            # such slot may wait for it beyond max_queue, so a strictly sequential caller never
            # gets QueueFullError just because its last run recycled the slot.
            if len(self._waiters) >= self._max_queue + self._starting:
                raise QueueFullError(f"all {self.size} slots are busy and {len(self._waiters)} calls are already waiting")
            waiter = _Waiter(self._lock)
            self._waiters.append(waiter)
            try:
                while waiter.slot is None:
                    if self._closed:
                        raise SandboxClosedError("the sandbox is closed")
                    if not self._live and not self._starting:
                        raise SandboxUnavailableError(f"no slot is running and none could start: {self.last_error}")
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise QueueFullError(f"no slot became free within {timeout} s")
                    waiter.cond.wait(remaining)
                self._busy.add(waiter.slot)
                return waiter.slot
            finally:
                if waiter.slot is None:
                    self._waiters.remove(waiter)

    def release(self, slot: Slot, broken: bool = False) -> None:
        with self._lock:
            self._busy.discard(slot)
        if broken or slot.poll_dead():
            self._replace(slot)
        elif slot.runs >= self._recycle_at.get(slot.index, self._recycle_after):
            self._retire(slot)
        else:
            with self._lock:
                if self._live.get(slot.index) is slot:
                    self._offer(slot)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            slots = list(self._live.values())
            self._live.clear()
            self._idle.clear()
            self._notify_waiters()
        self._wake()
        # A slot still starting closes itself once it sees _closed; wait for it, so that
        # nothing of this pool outlives close().
        for w in list(self._workers):
            w.join()
        threads = [threading.Thread(target=s.close) for s in slots]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self._supervisor.is_alive():
            self._supervisor.join(timeout=2)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(size=self.size, live=len(self._live), idle=len(self._idle), busy=len(self._busy),
                             starting=self._starting, waiting=len(self._waiters), replacements=self.replacements,
                             runs=self._runs_before + sum(s.runs for s in self._live.values()))
