"""The zygote's loop in a session jail: many interpreters that outlive one request, each a child
of the same warm fork server, each stopped between its calls.

A session is a child forked and isolated exactly like a stateless execution's (forkserver.py,
isolation.py: own uid, mount and IPC namespaces, tmpfs work dir, /tmp and /dev/shm, seccomp),
that runs runner.serve_session() instead of serving one request and exiting. The host puts it in
a cgroup of its own (memory and pids limits for the whole session) before its first request.

Host protocol (frames on fds 0 and 1; every frame names its session with "sid", a number the
host chose; the secret session id never enters the jail):
  host -> {op: "open", sid, profile}      zygote -> {op: "opened", sid, pid} | {op: "opened", sid, error}
  host -> {op: "call", sid, ...request}   zygote -> {op: "output", sid, stream} (+ chunk), 0..n
  (+ the request's blobs)                 zygote -> {op: "done", sid, alive, ...reply as zygote.supervise}
  host -> {op: "cancel", sid}             the call in flight is killed (its "done" says so)
  host -> {op: "close", sid}              zygote -> {op: "closed", sid}

Calls of different sessions run at once, one thread each: the zygote only moves bytes and
watches clocks, so its threads wait on poll() and never run user code. Replies from several
threads are whole frames, written under one lock.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field

from . import protocol, sysinfo
from .forkserver import Child, ForkServer, ForkServerDied
from .supervise import Live, Stream, Watch, build_reply, cpu_time_ns, exit_code_of, result_frame

@dataclass
class _Session:
    sid: int
    child: Child
    busy: bool = False
    cancelled: bool = False
    closing: bool = False
    ended: bool = False
    thread: threading.Thread | None = field(default=None, repr=False)


class _Host:
    """The zygote's end of the host protocol: whole frames, from any thread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, header: dict, blobs: list[bytes] = ()) -> None:
        frame = protocol.encode(header, blobs)
        with self.lock:
            protocol.write_all(self.fd, frame)


def _signal_group(child: Child, sig: int) -> None:
    """A signal to every process of a session (its process group, which nothing can leave)."""
    for target in (-child.pid, child.pid):
        try:
            os.kill(target, sig)
        except ProcessLookupError:
            pass


def serve(proto_in: int, proto_out: int, server: ForkServer, profile: dict) -> None:
    """Serve the host until it closes our input."""
    host = _Host(proto_out)
    forks = threading.Lock()   # the fork server's socket and state: one user at a time
    sessions: dict[int, _Session] = {}
    spare_profile = dict(profile, session=True)
    with forks:
        server.refill(spare_profile)
    while True:
        try:
            prefix = protocol.read_exact(proto_in, protocol.PREFIX.size)
        except protocol.ProtocolError:
            break  # the host closed our input: shut down
        head_len, body_len = protocol.parse_prefix(prefix, max_body=1 << 40)
        head = protocol.read_exact(proto_in, head_len)
        body = protocol.read_exact(proto_in, body_len) if body_len else b""
        header = protocol.parse_header(head)
        op, sid = header.get(protocol.OP), header.get("sid")
        live = sessions.get(sid)
        if op == protocol.OPEN:
            profile_ = dict(header.get("profile") or profile, session=True)
            try:
                with forks:
                    while server.handle(block=False):
                        pass
                    server.forget_reaped()
                    child = server.take(profile_)
                    server.refill(spare_profile)
                ready = child.wait_ready()
            except (OSError, RuntimeError) as exc:
                host.send({protocol.OP: protocol.OPENED, "sid": sid, "error": str(exc)[:2000]})
                if isinstance(exc, ForkServerDied):
                    break  # fail closed: the jail ends, and every process of it (the holders too)
                continue
            if ready != b"R":
                _retire(_Session(sid, child), server, forks)
                host.send({protocol.OP: protocol.OPENED, "sid": sid, "error": ready[1:].decode(errors="replace")[:2000]
                           or "the session's interpreter died during setup"})
                continue
            sessions[sid] = _Session(sid, child)
            host.send({protocol.OP: protocol.OPENED, "sid": sid, "pid": child.pid})
        elif op == protocol.CALL and live is not None and not live.busy:
            live.busy, live.cancelled = True, False
            live.thread = threading.Thread(target=_call, args=(live, prefix + head + body, header, host, server, forks),
                                           daemon=True)
            live.thread.start()
        elif op == protocol.CANCEL and live is not None:
            if live.busy:
                live.cancelled = True
                live.child.kill()
        elif op == protocol.CLOSE:
            if live is not None:
                del sessions[sid]
                live.closing = True
                live.child.kill()
                if not live.busy:  # else the call's thread retires it once it has answered
                    _retire(live, server, forks)
            host.send({protocol.OP: protocol.CLOSED, "sid": sid})
        else:
            host.send({protocol.OP: protocol.ERROR, "sid": sid, "error": f"cannot {op!r} session {sid!r} now"})
        del prefix, head, body


def _call(live: _Session, request: bytes, header: dict, host: _Host, server: ForkServer,
          forks: threading.Lock) -> None:
    """One call in a session (a thread of its own): wake the session, send the request, relay
    its output, wait for its result frame, stop the session again, answer."""
    try:
        reply, blobs = _supervise(live, request, header, host, server, forks)
    except Exception as exc:  # noqa: BLE001 - the session ends, the zygote goes on
        live.child.kill()
        reply, blobs = {protocol.OP: protocol.SETUP_FAILED, "detail": f"session call failed: {exc}"[:2000], "alive": False}, []
    reply["sid"] = live.sid
    sysinfo.check()  # a call that may have met a dead notifier never answers (sysinfo.py)
    live.busy = False  # before the answer: the host may send this session's next call at once
    host.send(reply, blobs)
    if not reply["alive"] or live.closing:
        _retire(live, server, forks)


def _retire(live: _Session, server: ForkServer, forks: threading.Lock) -> None:
    """Kill a session and have it reaped in the background; once only (its fds get reused)."""
    with forks:
        if not live.ended:
            live.ended = True
            server.retire(live.child)


def _supervise(live: _Session, request: bytes, header: dict, host: _Host, server: ForkServer,
               forks: threading.Lock) -> tuple[dict, list[bytes]]:
    """As zygote.supervise, for a child that stays: the call ends with its result frame (the
    session lives on, stopped), or with the child's death, the wall clock or the CPU limit
    (the session ends)."""
    child, sid = live.child, live.sid
    limits = header["limits"]
    cpu_limit_ns = int(header["profile"]["cpu_seconds"] * 1e9)
    # Wake the session. Its processes were stopped since its last call (or are a fresh child
    # blocked on its request pipe).
    _signal_group(child, signal.SIGCONT)
    cpu0 = cpu_time_ns(child.pid)

    output = Live(lambda stream, data: host.send({protocol.OP: protocol.OUTPUT, "sid": sid, "stream": stream}, [data])) \
        if header.get("stream") else None
    w = Watch(child, request,
              out=Stream(limits["max_stdout_bytes"], output and (lambda data: output.add("stdout", data))),
              err=Stream(limits["max_stderr_bytes"], output and (lambda data: output.add("stderr", data))),
              res=Stream(limits["max_result_bytes"]),
              deadline=time.monotonic() + limits["timeout"], stays=True,
              cpu_limit_ns=cpu_limit_ns, cpu0=cpu0, live=output).run()
    if w.finished:
        # Output written before the result frame is in the pipes already; what the session's
        # other threads write until they are stopped counts for this call too.
        cpu_ns = cpu_time_ns(child.pid) - cpu0
        _signal_group(child, signal.SIGSTOP)
        w.drain_rest()
        frame = result_frame(w.res)
        exit_code = exit_code_of(frame[0])
        main_cpu_ms = 0.0
        alive = frame[0] is not None and not live.cancelled
        if not alive:
            child.kill()
    else:
        child.kill()
        with forks:
            reaped = server.reaped(child)
        status = reaped["status"]
        exit_code = os.waitstatus_to_exitcode(status) if status is not None else -signal.SIGKILL
        cpu_ns = int(reaped["total_cpu"] * 1e9) - cpu0
        # A call killed for its CPU time reports what it used, which is at least the limit.
        main_cpu_ms = round(max(cpu_ns, cpu_limit_ns) / 1e6, 3) if w.cpu_out else 0.0
        frame = result_frame(w.res) if w.exited and not w.timed_out else (None, b"", b"", None)
        alive = False
    return build_reply(w.out, w.err, frame, timed_out=w.timed_out, exit_code=exit_code,
                       wall=w.wall, cpu_ns=cpu_ns, main_cpu_ms=main_cpu_ms, alive=alive, cancelled=live.cancelled)
