"""The zygote: pid 1 of a jail. Imports the library set once, then serves executions forever.

Warm-up forks two fork servers (forkserver.py): "lean" after the standard library, "full" after
the image's preload list. Each keeps isolated children waiting. Loop: wait for a request from
the host; take a waiting child of the server the host chose; make sure every earlier execution
is reaped (its memory and processes leave the slot's cgroup before the next one starts);
supervise the child (wall clock, output caps); answer; kill the execution and have it reaped in
the background while the spares are topped up. Nothing of that sits between an answer and the
next request. The zygote never runs user code and never forks a child itself: its heap holds
past requests and results, so every child comes from a fork server, forked before the first
request.

Host protocol (frames, see protocol.py) on fds 0 (in) and 1 (out):
  host -> init    {policy, preload, uid, gid, workdir, profile, spares, uids, lean_uids?, mode?, warm?}
  (mode "sessions": the loop of guest/session_loop.py instead of serve() below; warm false: a
  one-shot jail, see warm_up)
  zygote -> ready {python, modules, import_ms, pids_overhead}
  host -> request {code, filename, files, stdin, limits, profile, flavor, stream}   (+ input blobs)
  zygote -> output {status: "output", stream}    (+ the chunk)   only with "stream": live output, 0..n
  zygote -> display {main, truncated, items}     (+ its values)  only with "live_outputs": each display(), 0..n
  zygote -> reply {status, ...}                                            (+ stdout, stderr, result body)
"""

from __future__ import annotations

import ctypes
import gc
import os
import select
import signal
import sys
import time
from collections.abc import Callable

from . import hugepages, preload, protocol, runner, seccomp, sysinfo
from .forkserver import Child, ForkServer
from .supervise import Live, Results, Stream, Watch, build_reply, cpu_time_ns, exit_code_of, result_frame

SMALL_BODY = 1 << 16  # a request body up to this size is read with its header
QUIET = 0.010        # a run's first seconds in which its output wakes nobody (supervise.Watch.quiet)


def supervise(child: Child, server: ForkServer, request: bytes, header: dict,
              relay: Callable[[str, bytes], None] | None = None, control: int | None = None) -> tuple[dict, list[bytes]]:
    """Run one request in the pre-forked child and build the reply.

    Fast path: the runner's result frame is the last thing it does before _exit, so once a
    complete frame is in, the reply goes out without waiting for the kernel to tear down the
    child's copy of the zygote's address space (milliseconds); the caller kills and reaps after.
    Slow path (no result: crash, kill, timeout, os._exit): the wait status and rusage decide.
    A "cancel" frame from the host on `control` kills the execution (its caller went away).
    """
    limits = header["limits"]
    setup = child.wait_ready()
    if setup != b"R":
        return {protocol.OP: protocol.SETUP_FAILED, "detail": setup[1:].decode(errors="replace") or "child died during setup"}, []
    # The child's own setup, not the user's. It has forked nothing yet (isolation and the
    # runner's preparation make no process), so its clock alone is its CPU time.
    cpu0 = cpu_time_ns(child.pid, children=False)
    live = Live(relay) if relay is not None and header.get("stream") else None
    show = None
    if live is not None and header.get("live_outputs") is True:
        show = lambda head, body: live.display((head, body))  # noqa: E731
    w = Watch(child, request,
              out=Stream(limits["max_stdout_bytes"], live and (lambda data: live.add("stdout", data))),
              err=Stream(limits["max_stderr_bytes"], live and (lambda data: live.add("stderr", data))),
              res=Results(limits["max_result_bytes"], show, limits.get("max_outputs", 0),
                          limits.get("max_output_bytes", 0)),
              deadline=time.monotonic() + limits["timeout"], control=control, live=live,
              quiet=0.0 if live is not None else QUIET).run()
    if w.finished:
        w.drain_rest()
        frame = result_frame(w.res)
        exit_code = exit_code_of(frame[0])
        cpu_ns = cpu_time_ns(child.pid, stat_fd=child.stat_fd) - cpu0
        main_cpu_ms = 0.0
    else:
        child.kill()
        reaped = server.reaped(child)
        status = reaped["status"]
        exit_code = os.waitstatus_to_exitcode(status) if status is not None else -signal.SIGKILL
        main_cpu_ms = round(reaped["main_cpu"] * 1000, 3)  # what RLIMIT_CPU counted: setup included
        # Every process of the execution, the child's setup excluded.
        cpu_ns = int(reaped["total_cpu"] * 1e9) - cpu0
        frame = result_frame(w.res) if w.exited and not w.timed_out else (None, b"", b"", None)
    return build_reply(w.out, w.err, frame, timed_out=w.timed_out, exit_code=exit_code,
                       wall=w.wall, cpu_ns=cpu_ns, main_cpu_ms=main_cpu_ms, cancelled=w.cancelled)


def main() -> None:
    # Keep the protocol on private fds; stray prints from libraries go to stderr (the host's log).
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)

    init, _ = protocol.read_frame(proto_in, max_body=0)
    t0 = time.monotonic()
    # First, before the imports (its copy of this process stays small): sysinfo's stand-in, for
    # this process and every one it makes (sysinfo.py).
    sysinfo.start(init.get("proc_masks", []))
    servers, versions = warm_up(init, close_in_child=[proto_in, proto_out])
    sysinfo.watch()  # a thread: only now, the fork servers are forked
    profile = init["profile"]
    # A session jail's spares are session interpreters (guest/session_loop.py).
    spare_profile = dict(profile, session=True) if init.get("mode") == "sessions" else profile
    for server in servers.values():
        server.refill(spare_profile)
        while server.forking:
            server.handle(block=True)
        for child in server.ready:
            child.wait_ready()  # the host measures the warm slot's memory after this answer
    protocol.write_all(proto_out, protocol.encode({
        "python": sys.version.split()[0],
        "modules": versions,
        "import_ms": round((time.monotonic() - t0) * 1000, 1),
        # Processes the slot holds besides an execution's: this zygote, the sysinfo notifier, the
        # servers, the spares but the one the execution itself is (it may create max_processes more).
        "pids_overhead": 1 + sum(1 + s.spares for s in servers.values()),
    }))
    if init.get("mode") == "sessions":
        from . import session_loop  # imported here: a stateless jail never needs it

        session_loop.serve(proto_in, proto_out, servers.get("full") or servers["lean"], profile)
    else:
        serve(proto_in, proto_out, servers, profile)
    sysinfo.stop()
    kill_all_but_me()
    reap_all()


def warm_up(init: dict, close_in_child: list[int]) -> tuple[dict[str, ForkServer], dict]:
    """Import in two stages, forking a fork server after each (see preload.py). Returns the
    servers by flavor ("lean", and "full" unless the preload list is empty) and the versions
    of the preloaded modules."""
    spares = init.get("spares", {})
    # Disjoint uid ranges: no child of one server may share a uid with a child of the other.
    first, count = init["uid"], init.get("uids", 1)
    lean_count = init.get("lean_uids") or (count // 2 if init["preload"] else count)
    lean_uids = range(first, first + min(lean_count, count))
    full_uids = range(lean_uids.stop, first + count)
    # "warm": false (a one-shot: a jail for one run) warms nothing the run may not need: no
    # standard-library set, no preload list, no rehearsal in the child; the run imports what it
    # imports, as a bare interpreter would. Every isolation step is the same.
    warm = init.get("warm", True) is not False
    runner.REHEARSE = warm
    preload.prepare_matplotlib()
    preload.install_hook()
    bpf = seccomp.compile_policy(init["policy"])
    servers: dict[str, ForkServer] = {}
    versions: dict = {}
    if warm:
        preload.lean()
    gc.collect()
    gc.freeze()  # otherwise each child's first collection dirties every shared page
    servers["lean"] = ForkServer.start("lean", bpf, init, close_in_child, spares.get("lean", 2), lean_uids)
    if init["preload"] and warm:
        versions = preload.full(init["preload"])
        gc.collect()
        gc.freeze()
        hugepages.collapse()  # a full child's fork and exit copy and free far fewer page-table entries
        servers["full"] = ForkServer.start("full", bpf, init, close_in_child, spares.get("full", 1), full_uids)
    # From here on this process handles user data; the fork servers are the clean copies.
    return servers, versions


def serve(proto_in: int, proto_out: int, servers: dict[str, ForkServer], profile: dict) -> None:
    """Answer requests until the host closes our input. Between requests: top up the spares
    and take in the fork servers' answers (forks made, executions reaped) as they come."""
    libc = ctypes.CDLL(None)
    poller = select.poll()
    poller.register(proto_in, select.POLLIN)
    by_fd = {s.fileno(): s for s in servers.values()}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)

    def relay(stream: str, data) -> None:
        """Live output: one frame per chunk read, ahead of the reply (the host keeps reading); a
        display ("display", (the runner's header, its values)) as one frame of its own."""
        if stream == "display":
            head, body = data
            protocol.write_all(proto_out, protocol.encode(
                {protocol.OP: protocol.DISPLAY, **{k: head.get(k) for k in ("main", "truncated", "items")}}, [body]))
            return
        protocol.write_all(proto_out, protocol.encode({protocol.OP: protocol.OUTPUT, "stream": stream}, [data]))

    while True:
        for server in servers.values():
            # After the reply: the spare the last run used is forked now, while the caller
            # reads its result. Never on the request path: beside a run, the fork and the new
            # child's set-up take the CPU from it (and a paced caller would pay for both).
            server.refill(profile)
        events = poller.poll()
        for fd, _ in events:
            if fd in by_fd:
                while by_fd[fd].handle(block=False):
                    pass
        if not any(fd == proto_in for fd, _ in events):
            continue
        try:
            prefix = protocol.read_exact(proto_in, protocol.PREFIX.size)
        except protocol.ProtocolError:
            return  # host closed our stdin: shut down
        head_len, body_len = protocol.parse_prefix(prefix, max_body=1 << 40)
        if body_len <= SMALL_BODY:  # one read for the header and a small body
            rest = protocol.read_exact(proto_in, head_len + body_len)
            head, body = rest[:head_len], rest[head_len:]
            del rest
        else:  # no extra copy of large inputs in the zygote (the slot's memory limit counts it)
            head = protocol.read_exact(proto_in, head_len)
            body = protocol.read_exact(proto_in, body_len)
        header = protocol.parse_header(head)
        if header.get(protocol.OP) == protocol.CANCEL:
            continue  # for a run that had already answered
        # The host chose the flavor from the code's imports; without a full server, lean it is.
        server = servers.get(header.get("flavor")) or servers.get("full") or servers["lean"]
        # Mount sizes and rlimits are fixed before a child sees a request; a call with other
        # ones gets a child forked for them.
        child = server.take(header["profile"])
        for s in servers.values():
            s.settle()
        reply, blobs = supervise(child, server, prefix + head + body, header, relay, proto_in)
        sysinfo.check()  # a run that may have met a dead notifier never answers
        protocol.write_all(proto_out, protocol.encode(reply, blobs))
        del prefix, head, body, header, reply, blobs
        # After the reply, off the caller's clock: end the execution, reap it in the background.
        server.retire(child)
        libc.malloc_trim(0)  # return this run's buffers, which the slot's memory limit counts


def kill_all_but_me() -> None:
    """pid 1 sending SIGKILL to -1 hits every other process in the jail's pid namespace."""
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass


def reap_all() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


if __name__ == "__main__":
    main()
