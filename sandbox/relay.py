"""Live output to the caller's callbacks (`on_stdout`/`on_stderr` of a run or a session call, and
`on_output` of a run: its rich outputs as they are displayed)."""

from __future__ import annotations

import codecs
import logging
import queue
import threading
from collections.abc import Callable

from .results import DisplayOutput
from .types import TextCallback

log = logging.getLogger("sandbox")


class Relay:
    """Hands live output to the caller's callbacks on a thread of its own, in order, so a slow
    callback never holds up the reading of the jail's pipe (the zygote would block writing to
    it, and its wall clock with it). A callback that raises is logged and called no more."""

    def __init__(self, on_stdout: TextCallback | None, on_stderr: TextCallback | None,
                 on_output: Callable[[DisplayOutput], None] | None = None) -> None:
        self._callbacks: dict = {"stdout": on_stdout, "stderr": on_stderr, "output": on_output}
        # Incremental: a character split across two chunks is decoded whole.
        self._decoders = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in ("stdout", "stderr")}
        self.shown: list[DisplayOutput] = []  # the rich outputs relayed, in order
        self._queue: queue.SimpleQueue[tuple[str, bytes | DisplayOutput] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="sandbox-output", daemon=True)
        self._thread.start()

    @classmethod
    def maybe(cls, on_stdout: TextCallback | None, on_stderr: TextCallback | None,
              on_output: Callable[[DisplayOutput], None] | None = None) -> Relay | None:
        """A Relay if any callback is given (the request then asks for live output), else None."""
        if on_stdout is None and on_stderr is None and on_output is None:
            return None
        return cls(on_stdout, on_stderr, on_output)

    @property
    def wants_outputs(self) -> bool:
        return self._callbacks["output"] is not None

    def __call__(self, stream: str, data: bytes) -> None:
        self._queue.put((stream, data))

    def display(self, output: DisplayOutput) -> None:
        self.shown.append(output)
        self._queue.put(("output", output))

    def close(self) -> None:
        """Deliver what is queued, then stop; returns once every callback has been called."""
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            stream, data = item
            self._deliver(stream, data if isinstance(data, DisplayOutput) else self._decoders[stream].decode(data))
        for stream, decoder in self._decoders.items():
            self._deliver(stream, decoder.decode(b"", final=True))

    def _deliver(self, stream: str, item: str | DisplayOutput) -> None:
        callback = self._callbacks[stream]
        if not item or callback is None:
            return
        try:
            callback(item)
        except Exception:  # noqa: BLE001 - the caller's bug must not break the run
            log.exception("the %s callback raised; it gets no more output of this run", stream)
            self._callbacks[stream] = None
