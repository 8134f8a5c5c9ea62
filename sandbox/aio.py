"""The asyncio bridge of `AsyncSandbox` and `AsyncSession`: blocking calls of the sync twins on
worker threads, with cancellation that kills the run and live output as async events."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from .results import DisplayOutput, Output, Result
from .types import TextCallback

T = TypeVar("T")


class Bridge:
    """Runs blocking calls on a thread pool of `workers` threads (created only as needed)."""

    def __init__(self, workers: int) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                               thread_name_prefix="sandbox-async")

    async def call(self, fn: Callable[[], T]) -> T:
        """fn() on a worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def cancellable(self, fn: Callable[[threading.Event], T]) -> T:
        """fn(cancel) on a worker thread; if the awaiting task is cancelled, `cancel` is set (the
        run is killed in its jail) and the cancellation goes on."""
        cancel = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, cancel)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()
            future.add_done_callback(_retrieve)
            raise

    async def events(self, fn: Callable[..., Result], outputs: bool = False
                     ) -> AsyncIterator[Output | DisplayOutput | Result]:
        """fn(on_stdout, on_stderr, cancel) on a worker thread, its output as Output events, then
        its Result. With `outputs`, fn(on_stdout, on_stderr, cancel, on_output), whose rich outputs
        come as DisplayOutput events among them. Leaving the iteration early kills the run."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Output | DisplayOutput | None] = asyncio.Queue()
        cancel = threading.Event()

        def emit(stream: str) -> TextCallback:
            return lambda text: loop.call_soon_threadsafe(events.put_nowait, Output(stream, text))

        def show(output: DisplayOutput) -> None:
            loop.call_soon_threadsafe(events.put_nowait, output)

        args = (emit("stdout"), emit("stderr"), cancel) + ((show,) if outputs else ())
        future = loop.run_in_executor(self._executor, fn, *args)
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

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False)


def _retrieve(future: Any) -> None:
    """Take a finished background call's outcome, so an abandoned one is not logged as lost."""
    if not future.cancelled():
        future.exception()
