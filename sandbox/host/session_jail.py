"""The host's end of a session jail: one jail whose zygote holds many sessions at once.

A session is not a jail of its own (a jail costs ~250 MiB and seconds to start): it is a child of
this jail's warm fork server, isolated like every execution's child (guest/session_loop.py), that
lives across calls and is stopped between them. The host gives each session a cgroup of its own
below the jail's, before its first request: the session's memory and process limits hold for
everything it will ever run, and its OOM kills are counted apart from every other session's.

Calls of several sessions are in flight at once. Requests are whole frames written under a
lock; one reader thread takes every frame the jail sends and hands it to the op waiting for that
session. Every byte from the jail is hostile: a frame for a session with nothing in flight, or
larger than that op's caps, ends the jail (and with it every session in it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import resource
import secrets
import threading
import time
from typing import Callable

from . import cgroups, devices, jail, wire
from ..guest import protocol
from .image import Image
from ..limits import JailSettings, Limits, SessionSettings
from .jail_process import JailProcess, SlotDied
from .slot import pids_overhead

log = logging.getLogger("sandbox.sessions")

OPEN_TIMEOUT = 60.0   # a fork from the warm server, when no spare is waiting (a loaded machine)
IDLE_WAIT = 3600.0    # the reader's poll between frames (it loops)


class _Op:
    """One request in flight for a session: its reply, or why none will come."""

    def __init__(self, cap: int, on_output: Callable[[str, bytes], None] | None = None,
                 room: dict[str, int] | None = None) -> None:
        self.cap = cap
        self.on_output = on_output
        self.room = room or {}
        self.done = threading.Event()
        self.header: dict = {}
        self.body = b""
        self.error: str | None = None


class SessionJail:
    """A jail in session mode (see the module docstring). The constructor stores; `start()` starts
    the jail and its reader."""

    def __init__(self, image: Image, settings: JailSettings, policy: dict, defaults: Limits,
                 preload: list[str], sessions: SessionSettings) -> None:
        spares = sessions.spares
        self._session_cpu = (settings.cpus, settings.cpu_period_ms)  # each session's own quota
        # A uid for every live session and spare; calls of different sessions may use every core.
        # (spares waiting in the fork server, and as many opened ahead by the SessionManager)
        self._settings = dataclasses.replace(settings, user_uids=sessions.max_sessions + 2 * spares + 4,
                                             cpus=float(os.cpu_count() or 1))
        self._init = jail.zygote_init(
            policy, preload, defaults, self._settings, spares={"lean": 0 if preload else spares, "full": spares},
            mode="sessions", lean_uids=1 if preload else None,
            # Each session's child binds its uid's own device nodes (devices.py).
            per_uid_devices={"dir": devices.PER_UID_MOUNT, "names": list(devices.NODES)})
        self._sessions = sessions
        self.jail = JailProcess(image, self._settings, "sessions", per_uid_devices=True)
        self.ready: dict = {}
        self._send_lock = threading.Lock()
        self._ops_lock = threading.Lock()
        self._ops: dict[int, _Op] = {}
        self._children: dict[int, cgroups.SlotCgroup] = {}
        self._leaving: queue.SimpleQueue[cgroups.SlotCgroup | None] = queue.SimpleQueue()
        self.failure: str | None = None
        self.alive = False

    def start(self) -> SessionJail:
        """Start the jail (seconds: its zygote imports the stack), cap it at the sessions' totals
        and delegate its cgroup, so each session gets one of its own below it."""
        self.ready = self.jail.start(self._init)
        try:
            # Beyond the sessions' totals: the jail's own memory and processes (zygote, sysinfo
            # notifier, fork servers, spares), as for a slot.
            self.jail.cgroup.set_limits(self.jail.baseline + self._sessions.total_memory_bytes,
                                        self._sessions.total_processes + pids_overhead(self.ready))
            self.jail.cgroup.delegate()
        except BaseException:
            self.jail.kill()
            raise
        _raise_fd_limit()  # three counter files stay open per session cgroup
        self.alive = True
        threading.Thread(target=self._read_loop, name="sandbox-sessions-reader", daemon=True).start()
        threading.Thread(target=self._remove_loop, name="sandbox-sessions-cgroups", daemon=True).start()
        return self

    @property
    def cgroup(self) -> cgroups.SlotCgroup:
        return self.jail.cgroup

    @property
    def jail_pid(self) -> int:
        return self.jail.zygote_pid

    @property
    def proc(self):
        return self.jail.proc

    def diagnostics(self) -> str:
        return self.jail.diagnostics()

    # -- requests ------------------------------------------------------------------------------

    def _request(self, sid: int, header: dict, blobs: list[bytes] = (), *, op: _Op | None = None,
                 raw: bytes | None = None) -> _Op:
        """Send one frame for session `sid`; with `op`, register it first to receive the reply."""
        if op is not None:
            with self._ops_lock:
                if self.failure is not None:
                    raise SlotDied(self.failure)
                if sid in self._ops:
                    raise SlotDied(f"session {sid} already has a request in flight")
                self._ops[sid] = op
        frame = raw if raw is not None else protocol.encode(dict(header, sid=sid), blobs)
        try:
            with self._send_lock:
                self.jail.write(frame, time.monotonic() + OPEN_TIMEOUT)
        except (SlotDied, TimeoutError, OSError) as exc:
            self._fail(f"the session jail stopped taking requests ({exc})")
            raise SlotDied(self.failure or str(exc)) from None
        return op or _Op(0)

    def _await(self, sid: int, op: _Op, deadline: float, cancel: threading.Event | None = None) -> _Op:
        """Wait for `op`'s reply; tell the zygote once if `cancel` is set; past `deadline` the
        zygote is not keeping its own clocks, and the whole jail is ended."""
        cancelled = False
        while not op.done.wait(0.05 if cancel is not None and not cancelled else 1.0):
            if cancel is not None and not cancelled and cancel.is_set():
                cancelled = True
                self._request(sid, {protocol.OP: protocol.CANCEL})
            if time.monotonic() > deadline:
                self._fail("the session jail did not answer in time")
                self.kill()
        if op.error is not None:
            raise SlotDied(op.error)
        return op

    def open(self, sid: int, profile: dict, memory_bytes: int, processes: int) -> cgroups.SlotCgroup:
        """Start session `sid` (a waiting interpreter, forked with `profile`) in a cgroup of its own."""
        op = self._await(sid, self._request(sid, {protocol.OP: protocol.OPEN, "profile": profile}, op=_Op(0)),
                         time.monotonic() + OPEN_TIMEOUT)
        if "error" in op.header or not isinstance(op.header.get("pid"), int):
            raise SlotDied(f"the session could not start: {str(op.header.get('error'))[:500]}")
        try:
            host_pid = self._host_pid(op.header["pid"])
            # A name that says nothing (the session sees it in /proc/self/cgroup): not its
            # number, which counts every session the server has opened.
            cgroup = self.cgroup.child(f"session-{secrets.token_hex(8)}")
            self._children[sid] = cgroup
            cgroup.set_limits(memory_bytes, processes)
            cgroup.set_cpu(*self._session_cpu)
            # Before its first request: nothing the session ever runs starts outside it.
            cgroup.add(host_pid)
            cgroup.freeze()  # until its first call
        except (OSError, SlotDied) as exc:
            self.close_session(sid)
            raise SlotDied(f"the session's cgroup could not be set up: {exc}") from None
        return cgroup

    def _host_pid(self, ns_pid: int) -> int:
        """The host pid of a process the zygote names by its pid inside the jail, found among the
        jail's own cgroup's processes by the kernel's NSpid."""
        for pid in self.cgroup.procs():
            try:
                with open(f"/proc/{pid}/status", "rb") as f:
                    for line in f:
                        if line.startswith(b"NSpid:"):
                            # Outermost first: this host's pid, the jail's, then a session's own
                            # namespace's: the zygote names processes by the jail's.
                            fields = line.split()
                            if len(fields) > 2 and int(fields[2]) == ns_pid:
                                return pid
                            break
            except (OSError, ValueError):
                continue
        raise SlotDied(f"the session's process ({ns_pid} in the jail) is not in the jail's cgroup")

    def call(self, sid: int, request: bytes, limits: Limits,
             on_output: Callable[[str, bytes], None] | None = None,
             cancel: threading.Event | None = None) -> tuple[dict, bytes]:
        """One call in session `sid`: (reply header, reply body), as Slot.execute's."""
        cap = limits.max_stdout_bytes + limits.max_stderr_bytes + limits.result_cap()
        op = _Op(cap, on_output, {"stdout": limits.max_stdout_bytes, "stderr": limits.max_stderr_bytes})
        cgroup = self._children.get(sid)
        if cgroup is not None:
            cgroup.thaw()  # the zygote then sends SIGCONT: stopped and frozen, both undone
        self._request(sid, {}, op=op, raw=request)
        self._await(sid, op, time.monotonic() + limits.timeout_seconds + 30.0, cancel)
        if cgroup is not None and op.header.get("alive") is True:
            # Between calls the session is frozen by its cgroup, which its code cannot undo
            # (SIGSTOP alone, the zygote's, is undone by any SIGCONT from its POSIX session).
            cgroup.freeze()
        return op.header, op.body

    def close_session(self, sid: int) -> None:
        """End session `sid`: its processes are killed, then its cgroup is removed."""
        cgroup = self._children.get(sid)
        if cgroup is not None:
            self._thaw(cgroup)  # a frozen process does not die of SIGKILL until thawed (v1)
        if self.failure is None:
            try:
                self._await(sid, self._request(sid, {protocol.OP: protocol.CLOSE}, op=_Op(0)), time.monotonic() + 10.0)
            except SlotDied:
                pass
        cgroup = self._children.pop(sid, None)
        if cgroup is not None:
            cgroup.close()
            # Its processes are killed and being reaped: the cgroup goes once they have left it,
            # off the caller's clock.
            self._leaving.put(cgroup)

    def _remove_loop(self) -> None:
        """Remove the cgroups of closed sessions (retrying while their killed processes leave)."""
        while (cgroup := self._leaving.get()) is not None:
            cgroup.remove(wait=10.0)

    # -- replies -------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            while True:
                try:
                    prefix = self.jail.read_exact(protocol.PREFIX.size, time.monotonic() + IDLE_WAIT)
                except TimeoutError:
                    continue
                deadline = time.monotonic() + 60.0  # the zygote writes its frames whole
                head_len, body_len = protocol.parse_prefix(prefix, max_body=1 << 40)
                header = self.jail.read_header(head_len, deadline)
                sid = header.get("sid")
                with self._ops_lock:
                    op = self._ops.get(sid) if isinstance(sid, int) else None
                if op is None or body_len > op.cap:
                    raise SlotDied(f"the jail sent an unexpected frame ({header.get(protocol.OP)!r} for session {sid!r})")
                body = self.jail.read_exact(body_len, deadline) if body_len else b""
                if header.get(protocol.OP) == protocol.OUTPUT:
                    wire.take_output(header, body, op.on_output, op.room)
                    continue
                with self._ops_lock:
                    del self._ops[sid]
                op.header, op.body = header, body
                op.done.set()
        except (SlotDied, protocol.ProtocolError, TimeoutError, OSError, ValueError) as exc:
            self._fail(f"the session jail failed: {exc}" if not isinstance(exc, SlotDied) else str(exc))
            self.kill()

    def _fail(self, why: str, quiet: bool = False) -> None:
        """Every op in flight ends with `why`; no op is taken any more."""
        with self._ops_lock:
            if self.failure is None:
                self.failure = why
                if not quiet:
                    log.warning("%s; its sessions are closed", why)
            ops, self._ops = list(self._ops.values()), {}
        for op in ops:
            op.error = self.failure
            op.done.set()

    def kill(self) -> None:
        """End the jail and every session in it; the sessions' cgroups go before the jail's."""
        self._fail("the session jail was closed", quiet=True)
        self.alive = False
        for cgroup in list(self._children.values()):
            self._thaw(cgroup)  # or its killed processes would stay, frozen, and the jail with them
            cgroup.close()  # idempotent: close_session of a session of this dead jail may close it again
        self.jail.kill()  # removes the jail's cgroup with every session's below it
        self._leaving.put(None)

    def close(self) -> None:
        self.kill()


    @staticmethod
    def _thaw(cgroup: cgroups.SlotCgroup) -> None:
        try:
            cgroup.thaw()
        except OSError:  # removed already
            pass


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
