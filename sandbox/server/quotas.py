"""Places per key (or per session): at most `places` holders at once, at most `waiting` more queued in
order, and a 429 with Retry-After beyond that. Check and take happen in one step on the event loop (no
await between them), so concurrent callers can never both slip under a cap.

A waiter is a future on the event loop, not a thread: a key can queue its `waiting` calls and no more,
so it cannot park the engine's worker threads that other keys' calls need (issue 17, row 7).

With `share_window` set, the places are shared out among the keys active within that many seconds
(holding, waiting, or done with a call that recently): each gets `places // active` (at least one). A
key alone has them all; once a second key calls, the first stops taking new places beyond its share,
so after at most one of its runs per slot the second key always finds a place free (issue 17: a
tenant's flood does not slow another's calls). No run is ever cut short: a key over its share keeps
what it holds and queues its next calls until it is back within it.

    runs = Places(8, 32, "calls of this key")
    async with runs.hold(owner):        # waits its turn, or ApiError 429
        result = await sb.run(...)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import aclosing, asynccontextmanager
from typing import TypeVar

from .errors import ApiError

T = TypeVar("T")


class Places:
    def __init__(self, places: int, waiting: int, what: str, retry_after: int = 1, share_window: float = 0) -> None:
        self.places, self.waiting, self.what, self.retry_after = max(1, places), max(0, waiting), what, retry_after
        self.share_window = share_window
        self._held: dict[Hashable, int] = {}
        self._queue: dict[Hashable, deque[asyncio.Future[None]]] = {}
        self._seen: dict[Hashable, float] = {}   # key -> when it last took or gave back a place

    def share(self, key: Hashable) -> int:
        """How many places `key` may hold now: all of them, or its share among the active keys."""
        if not self.share_window:
            return self.places
        cutoff = time.monotonic() - self.share_window
        for k in [k for k, t in self._seen.items() if t < cutoff and k not in self._held and k not in self._queue]:
            del self._seen[k]   # bounded by the keys active in the window
        active = len(self._seen.keys() | self._held.keys() | self._queue.keys() | {key})
        return max(1, self.places // active)

    def held(self, key: Hashable) -> int:
        return self._held.get(key, 0)

    def queued(self, key: Hashable) -> int:
        return len(self._queue.get(key, ()))

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        await self._take(key)
        try:
            yield
        finally:
            self._give(key)

    async def run(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        """`await call()` holding a place."""
        async with self.hold(key):
            return await call()

    async def stream(self, key: Hashable, events: AsyncIterator[T]) -> AsyncIterator[T]:
        """`events` passed through, holding a place from the first event asked for to the last."""
        async with aclosing(events) as inner:  # type: ignore[type-var]
            async with self.hold(key):
                async for event in inner:
                    yield event

    async def _take(self, key: Hashable) -> None:
        queue = self._queue.get(key)
        if self.share_window:
            self._seen[key] = time.monotonic()
        if self._held.get(key, 0) < self.share(key) and not queue:
            self._held[key] = self._held.get(key, 0) + 1
            return
        if queue is None:
            queue = self._queue[key] = deque()
        if len(queue) >= self.waiting:
            raise ApiError(429, "too_many_calls",
                           f"{self.what}: {self.places} running and {len(queue)} waiting, the most this server "
                           "allows; retry later", {"Retry-After": str(self.retry_after)})
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(turn)
        try:
            await turn  # the place of a holder that left is handed over: `_held` does not change
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._give(key)   # handed over just as we were cancelled: pass it on
            else:
                try:
                    queue.remove(turn)
                except ValueError:
                    pass
                if not queue and self._queue.get(key) is queue:
                    del self._queue[key]
            raise

    def _give(self, key: Hashable) -> None:
        """A holder of `key` left: its place goes to the key's next waiters while the key is within its
        share (handed over: a woken waiter holds it at once), else back to everyone."""
        if self.share_window:
            self._seen[key] = time.monotonic()
        held = self._held.get(key, 0) - 1
        queue = self._queue.get(key)
        if queue:
            share = self.share(key)
            while queue and held < share:
                turn = queue.popleft()
                if not turn.done():
                    turn.set_result(None)
                    held += 1
            if not queue:
                del self._queue[key]
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)
