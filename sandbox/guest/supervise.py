"""The one supervise loop: what happens while a child runs a request, for a stateless run
(zygote.supervise) and for a session's call (sessions._supervise) alike. `Watch` writes the
request, drains the child's pipes under the caps, keeps the wall clock (and a session's CPU
limit), takes a cancel, and ends at the runner's complete result frame or the child's death;
the helpers below build the reply. Neither caller imports the other.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import protocol

CHUNK = 1 << 16
CPU_CHECK = 0.05   # how often a session call's CPU time is compared with its limit (seconds)
LIVE_DELAY = 0.02  # live output is held this long at most before it goes to the host...
LIVE_BYTES = 1 << 16   # ...or until this much is held


class Live:
    """Live output on its way to the host, coalesced: what the program writes within LIVE_DELAY
    (up to LIVE_BYTES) goes as one frame per stream, in the order written. A program writing one
    byte at a time would otherwise cost the host a frame, a wake-up and a callback per byte, CPU
    outside the jail's own quota (issue 17: the host's work is bounded by the caps, not by how
    finely a program cuts its output)."""

    def __init__(self, send: Callable[[str, object], None]) -> None:
        self.send = send
        self.parts: list[list] = []     # [stream, bytearray] in order; a display as [stream, value]
        self.held = 0
        self.due: float | None = None   # when what is held must go

    def add(self, stream: str, data: bytes) -> None:
        if self.parts and self.parts[-1][0] == stream:
            self.parts[-1][1] += data
        else:
            self.parts.append([stream, bytearray(data)])
        self.held += len(data)
        if self.due is None:
            self.due = time.monotonic() + LIVE_DELAY
        if self.held >= LIVE_BYTES:
            self.flush()

    def display(self, value: object) -> None:
        """A display frame goes at once, after what was written before it."""
        self.flush()
        self.send("display", value)

    def flush(self) -> None:
        parts, self.parts, self.held, self.due = self.parts, [], 0, None
        for stream, data in parts:
            self.send(stream, bytes(data))

    def timeout_ms(self, timeout_ms: int | None) -> int | None:
        """`timeout_ms` for a poll, shortened to when what is held is due."""
        if self.due is None:
            return timeout_ms
        left = max(0, int((self.due - time.monotonic()) * 1000) + 1)
        return left if timeout_ms is None else min(timeout_ms, left)


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


DISPLAY_HEADER = 64 << 10  # room for a display frame's header beside its values


def _display_shape(header: dict, body_len: int) -> bool:
    """A display frame as the runner writes it (guest/runner.py, _send_display): main and truncated
    flags, and at most one [known MIME type, size] item a type, the sizes adding up to its body.
    Only such a frame is relayed, so what the host gets is small whatever the program wrote on
    the result channel (a forged one is dropped here, as the host would drop it)."""
    items = header.get("items")
    if not (isinstance(header.get("main"), bool) and isinstance(header.get("truncated"), bool)
            and isinstance(items, list) and len(items) <= len(protocol.OUTPUT_MIME_CAPS)):
        return False
    total = 0
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and item[0] in protocol.OUTPUT_MIME_CAPS and type(item[1]) is int and item[1] >= 0):
            return False
        total += item[1]
    return total == body_len


class Results(Stream):
    """The result channel. With `show` (a request with live outputs), the runner's display frames
    ahead of the result frame are taken off as they complete and handed to `show(header, body)`,
    at most `max_count` of them and `max_bytes` of values in all (the rest are dropped here: the
    result frame lists every output anyway); the first frame that is not one (the result, or
    garbage) and everything after it is kept as a plain Stream keeps it."""

    def __init__(self, cap: int, show: Callable[[dict, bytes], None] | None = None,
                 max_count: int = 0, max_bytes: int = 0) -> None:
        super().__init__(cap)
        self.show = show
        self.head = bytearray()
        self.left = [max_count, max_bytes]

    def feed(self, data: bytes) -> None:
        if self.show is None:
            super().feed(data)
            return
        head = self.head
        head += data
        while len(head) >= protocol.PREFIX.size:
            try:
                head_len, body_len = protocol.parse_prefix(bytes(head[:protocol.PREFIX.size]), self.left[1])
            except protocol.ProtocolError:
                break  # larger than any display left: the result frame
            end = protocol.PREFIX.size + head_len + body_len
            if head_len > DISPLAY_HEADER:
                break
            if len(head) < end:
                return  # wait for the rest of it
            try:
                header = protocol.parse_header(bytes(head[protocol.PREFIX.size:protocol.PREFIX.size + head_len]))
            except protocol.ProtocolError:
                break
            if header.get(protocol.OP) != protocol.DISPLAY:
                break
            body = bytes(head[protocol.PREFIX.size + head_len:end])
            del head[:end]
            if self.left[0] > 0 and _display_shape(header, len(body)):
                self.left[0] -= 1
                self.left[1] -= len(body)
                self.show(header, body)
        else:
            return
        self.show, self.head = None, bytearray()
        super().feed(bytes(head))

    def value(self) -> bytes:
        return super().value() + bytes(self.head)  # a display frame cut short is garbage too


@dataclass
class Watch:
    """One request in a child, watched to its end. `run()` returns when the runner's result frame
    is complete (`finished`: the fast path, the child is not waited for), or the child's main
    process has ended (`exited`), or the wall clock, the CPU limit or a cancel ended it (the
    child is killed, and its pipes drained to EOF).

    `quiet`: for its first `quiet` seconds the stdout and stderr pipes are not polled (only the
    result pipe, the child's exit, the control fd and the clocks wake the loop); they are drained
    when that time is up, when the result frame is in, or when the run ends, whichever is first.
    A short run's output then costs no wake-up of this process per write (print(1) wrote twice,
    and each write woke it); a run that fills a pipe within that time (1 MiB for a stateless
    child, forkserver.OUTPUT_PIPE) waits for the rest of it, once. Not with live output, which is
    relayed as it comes.
    `stays`: the child outlives its call (a session): garbage on its result channel ends it at
    once, since it would otherwise wait for the next call. `control`: an fd the host writes a
    cancel frame to. `cpu_limit_ns`: the call's CPU time, checked every CPU_CHECK seconds (a
    session's RLIMIT_CPU counts its whole life, so a call's limit is kept here)."""

    child: object
    request: bytes
    out: Stream
    err: Stream
    res: Stream
    deadline: float
    stays: bool = False
    control: int | None = None
    cpu_limit_ns: int | None = None
    cpu0: int = 0
    live: Live | None = None
    quiet: float = 0.0
    finished: bool = False
    exited: bool = False
    timed_out: bool = False
    cpu_out: bool = False
    cancelled: bool = False
    wall: float = 0.0
    _open: set[int] = field(default_factory=set)

    def run(self) -> Watch:
        child = self.child
        self._streams = {child.out_r: self.out, child.err_r: self.err, child.res_r: self.res}
        self._poller = poller = select.poll()
        for fd in self._streams:
            os.set_blocking(fd, False)
        poller.register(child.res_r, select.POLLIN)
        self._listening = False
        poller.register(child.pidfd, select.POLLIN)
        if self.control is not None:
            poller.register(self.control, select.POLLIN)
        self._open = set(self._streams)
        t0 = time.monotonic()
        quiet_until = t0 + self.quiet
        if self.quiet <= 0:
            self._listen()
        t_end = None
        # The request goes in as the child takes it, beside the draining of its output.
        os.set_blocking(child.req_w, False)
        pending = self._write(memoryview(self.request))
        if pending:
            poller.register(child.req_w, select.POLLOUT)
        tick = int(CPU_CHECK * 1000) if self.cpu_limit_ns is not None else None
        expected = None
        # Wait for both: all pipes at EOF *and* the main process gone (a child that closes its
        # pipes and spins must still meet the wall clock); or for a complete result frame.
        while self._open or not self.exited:
            ending = self.exited or self.timed_out or self.cpu_out or self.cancelled
            if not self._listening and (ending or time.monotonic() >= quiet_until):
                self._listen()
            if ending:
                timeout_ms = None  # everything is dead or dying: drain to EOF
            else:
                timeout_ms = max(0, int((self.deadline - time.monotonic()) * 1000) + 1)
                if tick is not None:
                    timeout_ms = min(timeout_ms, tick)
                if not self._listening:
                    timeout_ms = min(timeout_ms, max(0, int((quiet_until - time.monotonic()) * 1000) + 1))
            if self.live is not None:
                timeout_ms = self.live.timeout_ms(timeout_ms)
            for fd, _ in poller.poll(timeout_ms):
                if fd == child.pidfd:
                    poller.unregister(fd)
                    self.exited = True
                    t_end = t_end or time.monotonic()
                    # The execution is over when its main process ends: nothing it left behind runs on.
                    child.kill()
                elif fd == self.control:
                    poller.unregister(fd)
                    try:  # the host writes a cancel frame whole (it is far below PIPE_BUF)
                        self.cancelled = protocol.read_frame(fd, max_body=0)[0].get(protocol.OP) == protocol.CANCEL
                    except protocol.ProtocolError:  # the host is gone: nobody waits for this run
                        self.cancelled = True
                    if self.cancelled:
                        t_end = t_end or time.monotonic()
                        child.kill()
                elif fd == child.req_w:
                    pending = self._write(pending)
                    if not pending:
                        poller.unregister(fd)
                else:
                    drain(fd, self._streams[fd], poller, self._open)
            if self.live is not None and self.live.due is not None and time.monotonic() >= self.live.due:
                self.live.flush()
            if ending or self.exited or self.cancelled:
                continue
            now = time.monotonic()
            if now >= self.deadline:
                self.timed_out = True
            elif self.cpu_limit_ns is not None and cpu_time_ns(child.pid) - self.cpu0 >= self.cpu_limit_ns:
                self.cpu_out = True
            if self.timed_out or self.cpu_out:
                t_end = now
                child.kill()
                continue
            if expected is None:
                expected = frame_length(self.res)
            if expected == -1 and self.stays:  # garbage on the result channel: no frame will come
                child.kill()
                expected = 0
            elif expected is not None and 0 < expected <= self.res.kept:
                self.finished = True
                break
        self.wall = (t_end or time.monotonic()) - t0
        if pending:
            poller.unregister(child.req_w)
        self.flush_live()
        return self

    def flush_live(self) -> None:
        """What is held of the live output goes now (before the reply, which must come after it)."""
        if self.live is not None:
            self.live.flush()

    def _write(self, pending: memoryview) -> memoryview:
        """Write what the child's request pipe takes now; a stateless child's pipe is closed once
        the whole request is in (a session's stays open for its next call)."""
        child = self.child
        try:
            pending = pending[os.write(child.req_w, pending):] if pending else pending
        except BlockingIOError:
            return pending
        except OSError:  # the child closed its request pipe (or died): it will not answer
            pending = pending[len(pending):]
        if not pending and not self.stays and child.req_w >= 0:
            os.close(child.req_w)
            child.req_w = -1
        return pending

    def _listen(self) -> None:
        """Poll the stdout and stderr pipes from now on (see `quiet`)."""
        self._listening = True
        for fd in (self.child.out_r, self.child.err_r):
            if fd in self._open:
                self._poller.register(fd, select.POLLIN)

    def drain_rest(self) -> None:
        """After a finished call: what the child wrote before its result frame is in the pipes now."""
        if not self._listening:
            self._listen()
        for fd in (self.child.out_r, self.child.err_r):
            if fd in self._open:
                drain(fd, self._streams[fd], self._poller, self._open)
        self.flush_live()


def cpu_time_ns(pid: int, children: bool = True, stat_fd: int = -1) -> int:
    """CPU time of a live process (all its threads), from the kernel's per-process CPU clock,
    plus what its waited-for children used: nothing the process itself could forge.
    `children=False`: the clock alone, for a process known to have waited for none (a spare
    before its request: one syscall instead of reading /proc). `stat_fd`: its /proc/PID/stat,
    opened earlier (read again with pread; bound to that process, never to a reused pid)."""
    clock = ((~pid) << 3) | 2  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    try:
        own = time.clock_gettime_ns(clock)
        if not children:
            return own
        if stat_fd >= 0:
            raw = os.pread(stat_fd, 4096, 0)
        else:
            with open(f"/proc/{pid}/stat", "rb") as f:
                raw = f.read()
        fields = raw.rsplit(b")", 1)[1].split()
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
