"""A slot: one warm jail that serves one stateless run at a time (the pool holds several).

The jail's process and pipes are a JailProcess (jail_process.py); this module is the request
and reply of one run over them: the memory and pids limits set for the run, the live output it
streams, a cancel, and the cgroup's counters read around it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ..guest import protocol
from ..limits import JailSettings, Limits
from ..results import DisplayOutput
from . import jail, wire
from .image import Image
from .jail_process import JailProcess, SlotDied

__all__ = ["Slot", "SlotDied"]

log = logging.getLogger("sandbox.host.slot")

REPLY_GRACE = 5.0           # host backstop beyond the zygote's own wall clock


class Slot:
    """A warm jail for stateless runs. The constructor stores; `start()` starts the jail (seconds)."""

    def __init__(self, index: int, image: Image, settings: JailSettings, policy: dict, defaults: Limits,
                 preload: list[str] | None = None, warm: bool = True) -> None:
        """A slot whose zygote imports `preload` (default: the image's whole list). `warm=False`: a
        jail for one run (a one-shot command), whose zygote warms nothing ahead (no module set, no
        rehearsal) and keeps one child waiting; its isolation is the same (guest/zygote.warm_up)."""
        self.index = index
        self.runs = 0
        self.alive = False
        self.start_seconds = 0.0
        self.ready: dict = {}
        self.pids_overhead = 3
        self._image = image
        self._settings = settings
        self._policy = policy
        self._defaults = defaults
        self._preload = [] if not warm else image.preload if preload is None else preload
        self._warm = warm
        self.jail = JailProcess(image, settings, f"slot{index}")

    def start(self) -> Slot:
        """Start the jail and wait for its zygote's imports; SlotDied (with its last words) if it fails."""
        t0 = time.monotonic()
        settings = self._settings
        spares = {"lean": settings.spares_lean if self._preload else 1, "full": settings.spares_full}
        self.ready = self.jail.start(jail.zygote_init(
            self._policy, self._preload, self._defaults, settings, spares=spares,
            **({} if self._warm else {"warm": False})))
        self.pids_overhead = pids_overhead(self.ready)
        self.start_seconds = time.monotonic() - t0
        self.alive = True
        log.debug("slot %d ready in %.2f s (zygote imports %.0f ms, baseline %d MiB)", self.index,
                  self.start_seconds, self.ready.get("import_ms", 0), self.jail.baseline >> 20)
        return self

    # What the pool, the benchmarks and the tests read of a slot's jail.
    @property
    def cgroup(self):
        return self.jail.cgroup

    @property
    def baseline(self) -> int:
        return self.jail.baseline

    @property
    def proc(self):
        return self.jail.proc

    @property
    def jail_pid(self) -> int:
        return self.jail.zygote_pid

    @property
    def pidfd(self) -> int:
        """Readable once the jail has died: the pool's supervisor watches it."""
        return self.jail.pidfd

    def diagnostics(self) -> str:
        return self.jail.diagnostics()

    # -- executions -------------------------------------------------------------------------

    def execute(self, request: bytes, limits: Limits,
                on_output: Callable[[str, bytes], None] | None = None,
                cancel: threading.Event | None = None,
                on_display: Callable[[DisplayOutput], None] | None = None) -> tuple[dict, bytes, int, int]:
        """Send one request; return (reply header, reply body, peak memory bytes, OOM kills).
        With `on_output` (a request that asked for live output), each chunk the program writes
        arrives there first, within the same caps as the reply's copy; with `on_display` (a
        request with live outputs), each rich output as it is displayed. Setting `cancel` kills
        the run; its reply then says "cancelled"."""
        jp = self.jail
        # The zygote, the fork servers and their waiting children are always in the cgroup.
        jp.cgroup.set_limits(jp.baseline + limits.memory_bytes, limits.max_processes + self.pids_overhead)
        start = jp.cgroup.begin()
        deadline = time.monotonic() + limits.timeout_seconds + REPLY_GRACE
        jp.write(request, deadline)
        cap = limits.max_stdout_bytes + limits.max_stderr_bytes + limits.result_cap()
        room = {"stdout": limits.max_stdout_bytes, "stderr": limits.max_stderr_bytes}
        shown = {"outputs": limits.max_outputs, "bytes": limits.max_output_bytes,
                 "json_values": limits.max_output_json_values}
        if cancel is not None:
            jp.watch = _canceller(jp, cancel)
        try:
            while True:
                header, body = jp.read_frame(deadline, cap, last=False)
                if header.get(protocol.OP) == protocol.DISPLAY:
                    wire.take_display(header, body, on_display, shown, limits)
                    continue
                if header.get(protocol.OP) != protocol.OUTPUT:
                    break
                wire.take_output(header, body, on_output, room)
        finally:
            jp.watch = None
        if jp.read_ahead:
            raise SlotDied("the jail sent bytes after its reply")
        peak, kills = jp.cgroup.end(start)
        self.runs += 1
        return header, body, peak, kills

    # -- lifecycle ----------------------------------------------------------------------------

    def poll_dead(self) -> bool:
        return self.jail.dead()

    def close(self) -> None:
        """End the jail (killed: there is nothing to flush)."""
        self.kill()

    def kill(self) -> None:
        """End the jail and release what the host holds for it. Idempotent."""
        self.alive = False
        self.jail.kill()


def pids_overhead(ready: dict) -> int:
    """Processes a jail holds besides an execution's (zygote, fork servers, spares), as its zygote
    reported them; a small default if the number is missing or implausible."""
    overhead = ready.get("pids_overhead")
    return overhead if isinstance(overhead, int) and not isinstance(overhead, bool) and 0 < overhead < 64 else 3


def _canceller(jp: JailProcess, cancel: threading.Event) -> Callable[[], None]:
    """A watch that tells the zygote once, when `cancel` is set, to kill the run in flight."""
    sent = False

    def watch() -> None:
        nonlocal sent
        if not sent and cancel.is_set():
            sent = True
            jp.send_small(protocol.encode({protocol.OP: protocol.CANCEL}))

    return watch
