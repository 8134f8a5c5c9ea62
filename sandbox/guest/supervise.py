"""What the zygote and the session loop share while a child runs a request: draining its pipes
under the caps, reading the kernel's CPU clock, finding the runner's result frame, and building
the reply. Both loops (zygote.supervise for a run, sessions._supervise for a session's call)
import it; neither imports the other.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

from . import protocol

CHUNK = 1 << 16


class Stream:
    """Drains one pipe, keeping at most `cap` bytes and counting the rest. With `relay`, what is
    kept is also sent to the host as it arrives (live output), under the same cap."""

    def __init__(self, cap: int, relay: Callable[[bytes], None] | None = None) -> None:
        self.cap = cap
        self.relay = relay
        self.parts: list[bytes] = []
        self.kept = 0
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        room = self.cap - self.kept
        if room > 0:
            self.parts.append(data[:room])
            self.kept += min(room, len(data))
            if self.relay is not None:
                self.relay(data[:room])
        self.dropped += max(0, len(data) - max(room, 0))

    def value(self) -> bytes:
        return b"".join(self.parts)


def cpu_time_ns(pid: int) -> int:
    """CPU time of a live process (all its threads), from the kernel's per-process CPU clock,
    plus what its waited-for children used: nothing the process itself could forge."""
    clock = ((~pid) << 3) | 2  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    try:
        own = time.clock_gettime_ns(clock)
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        children_ticks = int(fields[13]) + int(fields[14])  # cutime, cstime (fields 16, 17 of proc(5))
    except OSError:
        return 0
    return own + children_ticks * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))


def result_frame(res: Stream) -> tuple[dict | None, bytes, bytes, str | None]:
    """(parsed header, raw header, body, problem) of the child's result frame. The raw header
    goes to the host as a blob: nesting it inside the reply's JSON would add to its depth."""
    raw = res.value()
    if res.dropped:
        return None, b"", b"", f"result exceeded {res.cap} bytes"
    if len(raw) < protocol.PREFIX.size:
        return None, b"", b"", "result frame cut short" if raw else None
    try:
        head_len, body_len = protocol.parse_prefix(raw[:protocol.PREFIX.size], res.cap)
        end = protocol.PREFIX.size + head_len
        if len(raw) < end + body_len:
            return None, b"", b"", "result frame cut short"
        if len(raw) > end + body_len:
            return None, b"", b"", "trailing bytes after the result frame"
        head = raw[protocol.PREFIX.size:end]
        return protocol.parse_header(head), head, raw[end:], None
    except protocol.ProtocolError as exc:
        return None, b"", b"", str(exc)


def frame_length(res: Stream) -> int | None:
    """Total length of the result frame once its prefix is in: None before, -1 if invalid."""
    if res.kept < protocol.PREFIX.size or res.dropped:
        return None
    prefix = b""
    for part in res.parts:
        prefix += part[:protocol.PREFIX.size - len(prefix)]
        if len(prefix) == protocol.PREFIX.size:
            break
    try:
        head_len, body_len = protocol.parse_prefix(prefix, res.cap)
    except protocol.ProtocolError:
        return -1  # the slow path reports it once the child has exited
    return protocol.PREFIX.size + head_len + body_len


def exit_code_of(result: dict | None) -> int:
    """The exit status a runner's result frame reports, clamped to 0-255 (anything else: 1)."""
    code = result.get("exit_code") if isinstance(result, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 255 else 1


def build_reply(out: Stream, err: Stream, frame: tuple, *, timed_out: bool, exit_code: int, wall: float,
                cpu_ns: int, main_cpu_ms: float, **extra: object) -> tuple[dict, list[bytes]]:
    """The reply to the host and its blobs: stdout, stderr and, if the child sent one, its
    result frame's raw header and body (see result_frame)."""
    result, head, body, problem = frame
    reply = {
        protocol.OP: protocol.DONE,
        **extra,
        "timed_out": timed_out,
        "exit_code": exit_code,
        "wall_ms": round(wall * 1000, 3),
        "cpu_ms": round(max(cpu_ns, 0) / 1e6, 3),
        "main_cpu_ms": main_cpu_ms,
        "stdout_dropped": out.dropped,
        "stderr_dropped": err.dropped,
        "result": result is not None,
        "result_error": problem,
    }
    blobs = [out.value(), err.value()] + ([head, body] if result is not None else [])
    reply["blob_sizes"] = [len(b) for b in blobs]
    return reply, blobs


def drain(fd: int, stream: Stream, poller: select.poll, open_fds: set[int]) -> None:
    """Read what a (non-blocking) pipe holds now; unregister it at EOF. Bounded, so a writer
    as fast as this reader cannot keep the zygote from checking the wall clock."""
    for _ in range(64):
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        if not data:
            poller.unregister(fd)
            open_fds.discard(fd)
            return
        stream.feed(data)
