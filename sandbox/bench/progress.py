"""A small progress bar on stderr (redrawn in place on a terminal, a few plain lines otherwise)."""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    def __init__(self, label: str, total: int, stream=None, enabled: bool = True) -> None:
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()
        self._last = 0.0
        self._last_decile = -1
        self._lock = threading.Lock()
        self._draw(force=True)

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done = min(self.total, self.done + n)
            self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = now - self.t0
        if self.tty:
            if not force and now - self._last < 0.1 and self.done < self.total:
                return
            self._last = now
            width = 30
            filled = int(width * self.done / self.total)
            bar = "#" * filled + "." * (width - filled)
            eta = ""
            if 0 < self.done < self.total:
                eta = f" eta {elapsed / self.done * (self.total - self.done):5.0f}s"
            self.stream.write(f"\r  {self.label:<28} [{bar}] {self.done:>5}/{self.total:<5} {elapsed:6.1f}s{eta}  ")
            self.stream.flush()
        else:
            decile = int(10 * self.done / self.total)
            if force or decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(f"  {self.label}: {self.done}/{self.total} ({elapsed:.1f}s)\n")
                self.stream.flush()

    def close(self) -> None:
        with self._lock:
            if self.enabled and self.tty:
                self._draw(force=True)
                self.stream.write("\n")
                self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
