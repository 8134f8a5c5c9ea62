"""Live output to the caller's callbacks (`on_stdout`/`on_stderr` of a run or a session call)."""

from __future__ import annotations

import codecs
import logging
import queue
import threading

from .types import TextCallback

log = logging.getLogger("sandbox")


class Relay:
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

    @classmethod
    def maybe(cls, on_stdout: TextCallback | None, on_stderr: TextCallback | None) -> Relay | None:
        """A Relay if either callback is given (the request then asks for live output), else None."""
        return cls(on_stdout, on_stderr) if on_stdout is not None or on_stderr is not None else None

    def __call__(self, stream: str, data: bytes) -> None:
        self._queue.put((stream, data))

    def close(self) -> None:
        """Deliver what is queued, then stop; returns once every callback has been called."""
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
