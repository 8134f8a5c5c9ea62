"""A slot: one warm jail and the host's end of its protocol. One execution at a time.

Every byte the jail sends is hostile: reads are bounded by a deadline and a size cap that is
checked before anything is allocated. A jail that stops answering is killed, never waited on.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from . import cgroups, devices, jail
from ..guest import protocol
from .image import Image
from ..limits import JailSettings, Limits

log = logging.getLogger("sandbox.host.slot")

STARTUP_TIMEOUT = 300.0     # importing the whole stack on a loaded 2-core machine
REPLY_GRACE = 5.0           # host backstop beyond the zygote's own wall clock
CANCEL_POLL = 0.05          # how often a cancellable run's event is looked at (seconds)


class SlotDied(Exception):
    """The jail ended or broke the protocol; the slot must be replaced."""


class Slot:
    def __init__(self, index: int, image: Image, settings: JailSettings, policy: dict, defaults: Limits,
                 preload: list[str] | None = None, init_extra: dict | None = None) -> None:
        """Start one jail; its zygote imports `preload` (default: the image's whole list).
        `init_extra` adds to the zygote's init message (a session jail's mode and spares)."""
        self.index = index
        self.runs = 0
        self.alive = False
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._pending = bytearray()  # read ahead from the jail's output
        self._ending = threading.Lock()
        self._ended = False
        self._cancel: threading.Event | None = None   # the run in flight's, while execute() waits
        self._cancel_sent = False
        t0 = time.monotonic()
        self.proc, self._run_dir = jail.spawn(image, settings)
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._in, False)
        self.pidfd = os.pidfd_open(self.proc.pid)
        threading.Thread(target=self._drain_stderr, name=f"sandbox-slot{index}-stderr", daemon=True).start()
        try:
            preload = image.preload if preload is None else preload
            init = {"policy": policy, "preload": preload, "uid": jail.USER_UID,
                    "gid": jail.USER_GID, "workdir": jail.WORKDIR, "profile": defaults.profile(),
                    "uids": settings.user_uids, "spares": {"lean": settings.spares_lean if preload else 1, "full": settings.spares_full},
                    **(init_extra or {})}
            deadline = time.monotonic() + STARTUP_TIMEOUT
            self._write(protocol.encode(init), deadline)
            self.ready, _ = self._read_frame(deadline, max_body=0)
            self.jail_pid = self._jail_pid(deadline)
            self.cgroup = cgroups.SlotCgroup(self.jail_pid)
            self.cgroup.set_cpu(settings.cpus, settings.cpu_period_ms)
            overhead = self.ready.get("pids_overhead")
            self.pids_overhead = overhead if isinstance(overhead, int) and 0 < overhead < 64 else 3
            self.baseline = self.cgroup.usage()
        except SlotDied as exc:
            self.kill()
            raise SlotDied(f"{exc}; the jail's last words:\n{self.diagnostics()}") from None
        except BaseException:
            self.kill()
            raise
        finally:
            (self._run_dir / "nsjail.cfg").unlink(missing_ok=True)
        self.start_seconds = time.monotonic() - t0
        self.alive = True
        log.debug("slot %d ready in %.2f s (zygote imports %.0f ms, baseline %d MiB)", index,
                  self.start_seconds, self.ready.get("import_ms", 0), self.baseline >> 20)

    # -- protocol ---------------------------------------------------------------------------

    def _drain_stderr(self) -> None:
        assert self.proc.stderr
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._stderr_tail.append(line)
            log.debug("slot %d: %s", self.index, line)

    def diagnostics(self) -> str:
        """The jail's last words: nsjail's warnings and errors, and anything the zygote printed."""
        lines = [ln for ln in self._stderr_tail if not ln.startswith(("[D]", "[I]"))]
        return "\n".join(lines[-12:]) or "(the jail printed nothing)"

    def _jail_pid(self, deadline: float) -> int:
        """The zygote's host pid (nsjail's one child; nsjail names the slot's cgroup after it)."""
        pid = self.proc.pid
        while True:
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:  # a kernel without CONFIG_PROC_CHILDREN
                import psutil

                children = [str(c.pid) for c in psutil.Process(pid).children()]
            if len(children) == 1:
                return int(children[0])
            if len(children) > 1 or self.proc.poll() is not None or time.monotonic() > deadline:
                raise SlotDied(f"expected one jailed process under nsjail, found {len(children)}")
            time.sleep(0.0005)

    def _wait(self, fd: int, event: int, deadline: float) -> None:
        """Wait until fd is ready; a jail that dies meanwhile ends the wait at once. While a run
        may be cancelled, look at its event every CANCEL_POLL seconds and tell the zygote once."""
        poller = select.poll()
        poller.register(fd, event)
        poller.register(self.pidfd, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            watching = self._cancel is not None and not self._cancel_sent
            events = poller.poll(min(remaining, CANCEL_POLL if watching else 3600) * 1000 + 1)
            if events:
                break
            if watching and self._cancel.is_set():  # type: ignore[union-attr]
                self._cancel_sent = True
                try:
                    os.write(self._in, protocol.encode({protocol.OP: protocol.CANCEL}))  # whole: far below PIPE_BUF
                except (BlockingIOError, BrokenPipeError):
                    pass
        if all(f == self.pidfd for f, _ in events):
            raise SlotDied("the jail died")

    def _write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._in, view):]
            except BlockingIOError:
                self._wait(self._in, select.POLLOUT, deadline)
            except (BrokenPipeError, ConnectionResetError):
                raise SlotDied("the jail closed its input") from None

    def _read_exact(self, n: int, deadline: float) -> bytes:
        """n bytes of the jail's output. Reads ahead (at most 64 KiB past what was asked), so a
        small reply costs one poll and one read instead of one per part of the frame."""
        while len(self._pending) < n:
            self._wait(self._out, select.POLLIN, deadline)
            chunk = os.read(self._out, max(n - len(self._pending), 1 << 16))
            if not chunk:
                raise SlotDied("the jail closed its output")
            self._pending += chunk
        data = bytes(self._pending[:n])
        del self._pending[:n]
        return data

    def _read_frame(self, deadline: float, max_body: int, last: bool = True) -> tuple[dict, bytes]:
        try:
            prefix = self._read_exact(protocol.PREFIX.size, deadline)
            head_len, body_len = protocol.parse_prefix(prefix, max_body)
            header = protocol.parse_header(self._read_exact(head_len, deadline))
            body = self._read_exact(body_len, deadline) if body_len else b""
        except protocol.ProtocolError as exc:
            raise SlotDied(f"protocol error from the jail: {exc}") from None
        except TimeoutError:
            raise SlotDied("the jail did not answer in time") from None
        if last and self._pending:  # the zygote sends exactly one reply per request
            raise SlotDied("the jail sent bytes after its reply")
        return header, body

    # -- executions -------------------------------------------------------------------------

    def execute(self, request: bytes, limits: Limits,
                on_output: Callable[[str, bytes], None] | None = None,
                cancel: threading.Event | None = None) -> tuple[dict, bytes, int, int]:
        """Send one request; return (reply header, reply body, peak memory bytes, OOM kills).
        With `on_output` (a request that asked for live output), each chunk the program writes
        arrives there first, within the same caps as the reply's copy. Setting `cancel` kills
        the run; its reply then says "cancelled"."""
        # The zygote, the fork servers and their waiting children are always in the cgroup.
        self.cgroup.set_limits(self.baseline + limits.memory_bytes, limits.max_processes + self.pids_overhead)
        start = self.cgroup.begin()
        deadline = time.monotonic() + limits.timeout_seconds + REPLY_GRACE
        self._write(request, deadline)
        cap = limits.max_stdout_bytes + limits.max_stderr_bytes + limits.result_cap()
        room = {"stdout": limits.max_stdout_bytes, "stderr": limits.max_stderr_bytes}
        self._cancel, self._cancel_sent = cancel, False
        try:
            while True:
                header, body = self._read_frame(deadline, cap, last=False)
                if header.get(protocol.OP) != protocol.OUTPUT:
                    break
                self._output(header, body, on_output, room)
        finally:
            self._cancel = None
        if self._pending:
            raise SlotDied("the jail sent bytes after its reply")
        peak, kills = self.cgroup.end(start)
        self.runs += 1
        return header, body, peak, kills

    @staticmethod
    def _output(header: dict, body: bytes, on_output: Callable[[str, bytes], None] | None,
                room: dict[str, int]) -> None:
        """One live-output frame: checked against what was asked and the caps, then handed on."""
        stream = header.get("stream")
        if on_output is None or stream not in room or len(body) > room[stream]:
            raise SlotDied("the jail sent output it was not asked for, or beyond the caps")
        room[stream] -= len(body)
        on_output(stream, body)

    # -- lifecycle ----------------------------------------------------------------------------

    def poll_dead(self) -> bool:
        return self.proc.poll() is not None

    def close(self) -> None:
        """End the jail. There is nothing to flush, so it is killed rather than asked to exit:
        the zygote's own shutdown (kill(-1), reaping every child, the namespaces' teardown)
        kept a closing caller waiting 300-770 ms, a kill costs about 10 ms."""
        self.kill()

    def kill(self) -> None:
        """SIGKILL to nsjail's process group (nsjail and the zygote, pid 1 of the jail's pid
        namespace, whose death ends every other process in it); then release what the host
        holds for the jail. Idempotent: the pool's threads may race to end a slot."""
        with self._ending:
            if self._ended:
                return
            self._ended = True
        self.alive = False
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            os.close(self.pidfd)
        except OSError:
            pass
        devices.remove(self._run_dir)  # the jail's device nodes
        cgroup = getattr(self, "cgroup", None)
        if cgroup is not None:
            # A killed nsjail cannot remove its cgroups; the host does, once the jail's
            # processes have left them.
            cgroup.close()
            cgroup.remove()
