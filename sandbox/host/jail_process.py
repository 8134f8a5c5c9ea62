"""One running jail seen from the host: the nsjail process, its pidfd, the framed pipes to the
zygote inside, the jail's cgroup and its last words. A stateless `Slot` and a `SessionJail` each
hold one (composition: each builds its own way of using the pipes on top).

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
from collections.abc import Callable
from pathlib import Path

from ..guest import protocol
from ..limits import JailSettings
from . import cgroups, devices, jail
from .image import Image

log = logging.getLogger("sandbox.host.jail")

STARTUP_TIMEOUT = 300.0     # importing the whole stack on a loaded 2-core machine
WATCH_EVERY = 0.05          # how often `watch` is called while a read or write waits (seconds)
# The zygote's own frame headers (the ready frame, a reply's header, live output, a relayed display,
# a session op's answer) are small and few-valued; a program's result travels as a blob of the
# reply (checked in wire.parse_result). Anything past these is a broken jail.
MAX_FRAME_HEADER = 256 << 10
MAX_FRAME_VALUES = 4096


class SlotDied(Exception):
    """The jail ended or broke the protocol; whatever uses it must be replaced."""


class JailProcess:
    """A jail's process and pipes. The constructor only stores; `start()` spawns the jail and does
    the handshake (as gunicorn's Worker.__init__ / init_process)."""

    def __init__(self, image: Image, settings: JailSettings, name: str, per_uid_devices: bool = False) -> None:
        self.image = image
        self.settings = settings
        self.name = name
        self.per_uid_devices = per_uid_devices  # a session jail: device nodes per uid (devices.py)
        self.proc: object = None            # the nsjail subprocess.Popen, once started
        self.pidfd = -1
        self.zygote_pid = 0                 # host pid of the jail's pid 1
        self.cgroup: cgroups.SlotCgroup | None = None
        self.baseline = 0                   # the jail's memory once warm (bytes)
        # Called every WATCH_EVERY seconds while a read or write waits, when set (a run's cancel).
        self.watch: Callable[[], None] | None = None
        self._run_dir: Path | None = None
        self._in = self._out = -1
        self._pending = bytearray()         # read ahead from the jail's output
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._ending = threading.Lock()
        self._ended = False

    def start(self, init: dict, timeout: float = STARTUP_TIMEOUT) -> dict:
        """Spawn the jail, send the zygote its `init` frame and return its ready frame; find the
        zygote's host pid and set up the jail's cgroup (CPU share, baseline memory). On any
        failure the jail is killed and SlotDied carries its last words."""
        self.proc, self._run_dir = jail.spawn(self.image, self.settings, self.per_uid_devices)
        proc = self.proc
        assert proc.stdin and proc.stdout and proc.stderr
        self._in, self._out = proc.stdin.fileno(), proc.stdout.fileno()
        os.set_blocking(self._in, False)
        self.pidfd = os.pidfd_open(proc.pid)
        threading.Thread(target=self._drain_stderr, name=f"sandbox-{self.name}-stderr", daemon=True).start()
        try:
            deadline = time.monotonic() + timeout
            # The CPU bandwidth first, while the zygote is the jail's one process and waits for
            # its init frame: everything the jail runs is under it.
            self.zygote_pid = self._find_zygote(deadline)
            try:
                cgroups.limit_cpu(self.zygote_pid, self.settings.cpus, self.settings.cpu_period_ms, deadline)
            except FileNotFoundError:  # the jail died meanwhile (its cgroup went with it)
                raise SlotDied("the jail ended before its CPU limit was set") from None
            except TimeoutError as exc:
                raise SlotDied(str(exc)) from None
            self.write(protocol.encode(init), deadline)
            ready, _ = self.read_frame(deadline, max_body=0)
            self.cgroup = cgroups.SlotCgroup(self.zygote_pid)
            self.baseline = self.cgroup.usage()
        except SlotDied as exc:
            self.kill()
            raise SlotDied(f"{exc}; the jail's last words:\n{self.diagnostics()}") from None
        except BaseException:
            self.kill()
            raise
        finally:
            (self._run_dir / "nsjail.cfg").unlink(missing_ok=True)
        return ready

    # -- the jail's output and last words ---------------------------------------------------

    def _drain_stderr(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._stderr_tail.append(line)
            log.debug("%s: %s", self.name, line)

    def diagnostics(self) -> str:
        """The jail's last words: nsjail's warnings and errors, and anything the zygote printed."""
        lines = [ln for ln in self._stderr_tail if not ln.startswith(("[D]", "[I]"))]
        return "\n".join(lines[-12:]) or "(the jail printed nothing)"

    def _find_zygote(self, deadline: float) -> int:
        """The zygote's host pid (nsjail's one child; nsjail names the jail's cgroup after it)."""
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

    # -- framed pipes -----------------------------------------------------------------------

    def wait(self, fd: int, event: int, deadline: float) -> None:
        """Wait until fd is ready; a jail that dies meanwhile ends the wait at once (SlotDied),
        the deadline with TimeoutError. While `watch` is set it is called every WATCH_EVERY s."""
        poller = select.poll()
        poller.register(fd, event)
        poller.register(self.pidfd, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            watch = self.watch
            events = poller.poll(min(remaining, WATCH_EVERY if watch else 3600) * 1000 + 1)
            if events:
                break
            if watch is not None:
                watch()
        if all(f == self.pidfd for f, _ in events):
            raise SlotDied("the jail died")

    def write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._in, view):]
            except BlockingIOError:
                self.wait(self._in, select.POLLOUT, deadline)
            except (BrokenPipeError, ConnectionResetError):
                raise SlotDied("the jail closed its input") from None

    def send_small(self, data: bytes) -> None:
        """Write a frame far below PIPE_BUF (so whole, or not at all) without waiting: a cancel."""
        try:
            os.write(self._in, data)
        except (BlockingIOError, BrokenPipeError):
            pass

    def read_exact(self, n: int, deadline: float) -> bytes:
        """n bytes of the jail's output. Reads ahead (at most 64 KiB past what was asked), so a
        small reply costs one poll and one read instead of one per part of the frame."""
        while len(self._pending) < n:
            self.wait(self._out, select.POLLIN, deadline)
            chunk = os.read(self._out, max(n - len(self._pending), 1 << 16))
            if not chunk:
                raise SlotDied("the jail closed its output")
            self._pending += chunk
        data = bytes(self._pending[:n])
        del self._pending[:n]
        return data

    def read_frame(self, deadline: float, max_body: int, last: bool = True) -> tuple[dict, bytes]:
        """One frame, its body at most `max_body` bytes (checked before it is read). `last`: the
        jail must have sent nothing after it."""
        try:
            prefix = self.read_exact(protocol.PREFIX.size, deadline)
            head_len, body_len = protocol.parse_prefix(prefix, max_body)
            header = self.read_header(head_len, deadline)
            body = self.read_exact(body_len, deadline) if body_len else b""
        except protocol.ProtocolError as exc:
            raise SlotDied(f"protocol error from the jail: {exc}") from None
        except TimeoutError:
            raise SlotDied("the jail did not answer in time") from None
        if last and self._pending:  # the zygote sends exactly one reply per request
            raise SlotDied("the jail sent bytes after its reply")
        return header, body

    def read_header(self, head_len: int, deadline: float) -> dict:
        """A frame's header of `head_len` bytes (from its prefix), refused before it is read or
        parsed if it is larger or holds more values than any the zygote sends (ProtocolError)."""
        if head_len > MAX_FRAME_HEADER:
            raise protocol.ProtocolError(f"frame header of {head_len} bytes exceeds the cap of {MAX_FRAME_HEADER}")
        return protocol.parse_header(self.read_exact(head_len, deadline), max_values=MAX_FRAME_VALUES)

    @property
    def read_ahead(self) -> int:
        """Bytes read from the jail and not yet taken."""
        return len(self._pending)

    # -- lifecycle ----------------------------------------------------------------------------

    def dead(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def kill(self) -> None:
        """SIGKILL to nsjail's process group (nsjail and the zygote, pid 1 of the jail's pid
        namespace, whose death ends every other process in it); then release what the host
        holds for the jail: pipes, pidfd, device nodes, cgroup. Idempotent: threads may race to
        end a jail. There is nothing to flush, so a jail is never asked to exit: the zygote's own
        shutdown kept a closing caller waiting 300-770 ms, a kill costs about 10 ms."""
        with self._ending:
            if self._ended:
                return
            self._ended = True
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
        if self.pidfd >= 0:
            try:
                os.close(self.pidfd)
            except OSError:
                pass
        if self._run_dir is not None:
            devices.remove(self._run_dir)  # the jail's device nodes
        if self.cgroup is not None:
            # A killed nsjail cannot remove its cgroups; the host does, once the jail's
            # processes have left them (at once: SlotCgroup.kill_all).
            self.cgroup.kill_all()
            self.cgroup.close()
            self.cgroup.remove()
