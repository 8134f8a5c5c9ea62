"""The zygote: pid 1 of a jail. Imports the library set once, then serves executions forever.

Loop: pre-fork an isolated child, wait for a request from the host, hand it to the child,
supervise it (wall clock, output caps), answer, kill everything else in the jail, pre-fork
again, reap. The zygote never runs user code and never parses user output beyond caps.

Host protocol (frames, see protocol.py) on fds 0 (in) and 1 (out):
  host -> init    {policy, preload, uid, gid, workdir, profile}
  zygote -> ready {python, modules, import_ms}
  host -> request {code, filename, files, limits, profile}   (+ input blobs)
  zygote -> reply {status, ...}                              (+ stdout, stderr, result body)
"""

from __future__ import annotations

import gc
import importlib
import os
import resource
import select
import shutil
import signal
import sys
import time

from . import isolation, protocol, runner, seccomp

CHUNK = 1 << 16


class Child:
    """One pre-forked, isolated child and the zygote's ends of its pipes."""

    def __init__(self, profile: dict, bpf: bytes, cfg: dict) -> None:
        self.profile = profile
        req_r, self.req_w = os.pipe()
        self.out_r, out_w = os.pipe()
        self.err_r, err_w = os.pipe()
        self.res_r, res_w = os.pipe()
        self.early_status: int | None = None  # set if the reaper collected it during setup
        try:
            self.pid = os.fork()
        except OSError:
            for fd in (req_r, self.req_w, self.out_r, out_w, self.err_r, err_w, self.res_r, res_w):
                os.close(fd)
            raise
        if self.pid == 0:  # child: never returns
            try:
                for src, dst in ((req_r, 0), (out_w, 1), (err_w, 2), (res_w, 3)):
                    os.dup2(src, dst)
                isolation.isolate(profile, bpf, workdir=cfg["workdir"], uid=cfg["uid"], gid=cfg["gid"])
                os.write(runner.RESULT_FD, b"R")
            except BaseException as exc:  # noqa: BLE001 - fail closed, whatever went wrong
                try:
                    os.write(3, b"E" + f"{type(exc).__name__}: {exc}".encode()[:4000])
                finally:
                    os._exit(70)
            try:
                runner.serve()
            finally:
                os._exit(70)
        for fd in (req_r, out_w, err_w, res_w):
            os.close(fd)
        self.pidfd = os.pidfd_open(self.pid)

    def close(self) -> None:
        for fd in (self.req_w, self.out_r, self.err_r, self.res_r, self.pidfd):
            try:
                os.close(fd)
            except OSError:
                pass


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


def next_child(profile: dict, bpf: bytes, cfg: dict, old: Child | None) -> Child:
    """End every process of the last execution and pre-fork the next child.

    The fork comes before the reaping: the killed processes tear down their copies of the
    address space (milliseconds) on other CPUs while this one copies the page tables.
    """
    kill_all_but_me()
    if old is not None:
        old.close()
    try:
        child = Child(profile, bpf, cfg)
    except BlockingIOError:  # the pids limit is still full of the dying processes
        reap_all()
        child = Child(profile, bpf, cfg)
    # Every process but the zygote and the new child is dying: reap until none is left.
    while any(p.isdigit() and int(p) not in (1, child.pid) for p in os.listdir("/proc")):
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == child.pid:
            child.early_status = status
    return child


class Stream:
    """Drains one pipe, keeping at most `cap` bytes and counting the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []
        self.kept = 0
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        room = self.cap - self.kept
        if room > 0:
            self.parts.append(data[:room])
            self.kept += min(room, len(data))
        self.dropped += max(0, len(data) - max(room, 0))

    def value(self) -> bytes:
        return b"".join(self.parts)


def _cpu_ns(pid: int) -> int:
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


def _result_frame(res: Stream) -> tuple[dict | None, bytes, str | None]:
    """(header, body, error) of the child's result frame, if it is complete and well-formed."""
    raw = res.value()
    if res.dropped:
        return None, b"", f"result exceeded {res.cap} bytes"
    if len(raw) < protocol.PREFIX.size:
        return None, b"", "result frame cut short" if raw else None
    try:
        head_len, body_len = protocol.parse_prefix(raw[:protocol.PREFIX.size], res.cap)
        end = protocol.PREFIX.size + head_len
        if len(raw) < end + body_len:
            return None, b"", "result frame cut short"
        if len(raw) > end + body_len:
            return None, b"", "trailing bytes after the result frame"
        return protocol.parse_header(raw[protocol.PREFIX.size:end]), raw[end:], None
    except protocol.ProtocolError as exc:
        return None, b"", str(exc)


def _frame_complete(res: Stream) -> bool:
    if res.kept < protocol.PREFIX.size or res.dropped:
        return False
    raw = res.value()
    try:
        head_len, body_len = protocol.parse_prefix(raw[:protocol.PREFIX.size], res.cap)
    except protocol.ProtocolError:
        return False
    return res.kept >= protocol.PREFIX.size + head_len + body_len


def supervise(child: Child, request: bytes, header: dict) -> tuple[dict, list[bytes]]:
    """Run one request in the pre-forked child and build the reply.

    Fast path: the runner's result frame is the last thing it does before _exit, so once a
    complete frame is in, the reply goes out without waiting for the kernel to tear down the
    child's copy of the zygote's address space (milliseconds); the caller kills and reaps after.
    Slow path (no result: crash, kill, timeout, os._exit): the wait status and rusage decide.
    """
    limits = header["limits"]
    first = os.read(child.res_r, 1)
    if first != b"R":
        rest = os.read(child.res_r, 4000) if first else b""
        return {"status": "setup_failed", "detail": rest.decode(errors="replace") or "child died during setup"}, []
    for fd in (child.out_r, child.err_r, child.res_r):
        os.set_blocking(fd, False)

    cpu0 = _cpu_ns(child.pid)  # the child's own setup, not the user's
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    t_end = None
    deadline = t0 + limits["timeout"]
    try:
        protocol.write_all(child.req_w, request)
    except BrokenPipeError:
        pass
    os.close(child.req_w)
    child.req_w = -1

    out, err = Stream(limits["max_stdout_bytes"]), Stream(limits["max_stderr_bytes"])
    res = Stream(limits["max_result_bytes"])
    streams = {child.out_r: out, child.err_r: err, child.res_r: res}
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    poller.register(child.pidfd, select.POLLIN)
    open_fds = set(streams)
    timed_out = exited = finished = False
    # Wait for both: all pipes at EOF *and* the main process gone (a child that closes its
    # pipes and spins must still meet the wall clock); or for a complete result frame.
    while open_fds or not exited:
        if exited or timed_out:
            timeout_ms = None  # everything is dead or dying: drain to EOF
        else:
            timeout_ms = max(0, int((deadline - time.monotonic()) * 1000) + 1)
        events = poller.poll(timeout_ms)
        if not events:
            timed_out = True
            t_end = t_end or time.monotonic()
            kill_all_but_me()
            continue
        for fd, _ in events:
            if fd == child.pidfd:
                poller.unregister(fd)
                exited = True
                t_end = t_end or time.monotonic()
                # The execution is over when its main process ends: nothing it left behind runs on.
                kill_all_but_me()
                continue
            _drain(fd, streams[fd], poller, open_fds)
        if not exited and not timed_out:
            if time.monotonic() >= deadline:
                timed_out = True
                t_end = t_end or time.monotonic()
                kill_all_but_me()
            elif _frame_complete(res):
                finished = True
                break
    wall = (t_end or time.monotonic()) - t0

    if finished:
        # Whatever the runner wrote before its result is already in the pipes.
        for fd in (child.out_r, child.err_r):
            if fd in open_fds:
                _drain(fd, streams[fd], poller, open_fds)
        result, body, problem = _result_frame(res)
        code = result.get("exit_code") if isinstance(result, dict) else None
        exit_code = code if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 255 else 1
        cpu_ns = _cpu_ns(child.pid) - cpu0
    else:
        main_cpu = 0.0
        if child.early_status is not None:
            status = child.early_status
        else:
            _, status, own = os.wait4(child.pid, 0)
            main_cpu = own.ru_utime + own.ru_stime  # what RLIMIT_CPU counted: setup included
        reap_all()
        exit_code = os.waitstatus_to_exitcode(status)
        # Everything reaped since the hand-off: the child and every process it left behind.
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_ns = int((usage1.ru_utime - usage0.ru_utime + usage1.ru_stime - usage0.ru_stime) * 1e9) - cpu0
        result, body, problem = _result_frame(res) if exited and not timed_out else (None, b"", None)
    main_cpu_ms = 0.0 if finished else round(main_cpu * 1000, 3)

    reply = {
        "status": "done",
        "timed_out": timed_out,
        "exit_code": exit_code,
        "wall_ms": round(wall * 1000, 3),
        "cpu_ms": round(max(cpu_ns, 0) / 1e6, 3),
        "main_cpu_ms": main_cpu_ms,
        "stdout_dropped": out.dropped,
        "stderr_dropped": err.dropped,
        "result": result,
        "result_error": problem,
    }
    blobs = [out.value(), err.value()] + ([body] if result is not None else [])
    reply["blob_sizes"] = [len(b) for b in blobs]
    return reply, blobs


def _drain(fd: int, stream: Stream, poller: select.poll, open_fds: set[int]) -> None:
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


def _prepare_matplotlib(env: dict) -> None:
    """matplotlib insists on a writable config dir; give it one on the jail's own /tmp,
    seeded with the font cache the image build made, so no zygote rebuilds it."""
    src = env.get("SANDBOX_MPL_SEED")
    dst = "/tmp/matplotlib"
    if src and os.path.isdir(src):
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        os.makedirs(dst, exist_ok=True)
    os.environ["MPLCONFIGDIR"] = dst


def _preload(modules: list[str]) -> dict:
    versions = {}
    for name in modules:
        mod = importlib.import_module(name)
        top = sys.modules[name.split(".")[0]]
        versions[name] = getattr(mod, "__version__", None) or getattr(top, "__version__", None)
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.show = runner.show
        _warm_matplotlib(plt)
    return versions


def _warm_matplotlib(plt) -> None:
    """Draw and save one throwaway chart, so the renderer, fonts and PNG writer every child
    needs are loaded once here instead of in every child's first figure."""
    import io

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="line")
    ax.bar([0, 1], [1, 2])
    ax.set_title("warm-up")
    ax.legend()
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)


def main() -> None:
    # Keep the protocol on private fds; stray prints from libraries go to stderr (the host's log).
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    for fd in (proto_in, proto_out):
        os.set_inheritable(fd, False)

    init, _ = protocol.read_frame(proto_in, max_body=0)
    t0 = time.monotonic()
    _prepare_matplotlib(os.environ)
    bpf = seccomp.compile_policy(init["policy"])
    versions = _preload(init["preload"])
    gc.collect()
    gc.freeze()  # otherwise each child's first collection dirties every shared page
    protocol.write_all(proto_out, protocol.encode({
        "python": sys.version.split()[0],
        "modules": versions,
        "import_ms": round((time.monotonic() - t0) * 1000, 1),
    }))

    child = next_child(init["profile"], bpf, init, None)
    while True:
        try:
            prefix = protocol.read_exact(proto_in, protocol.PREFIX.size)
        except protocol.ProtocolError:
            break  # host closed our stdin: shut down
        head_len, body_len = protocol.parse_prefix(prefix, max_body=1 << 40)
        head = protocol.read_exact(proto_in, head_len)
        body = protocol.read_exact(proto_in, body_len) if body_len else b""
        header = protocol.parse_header(head)
        if header["profile"] != child.profile:
            # Mount sizes and rlimits are fixed before a child sees a request; a call with
            # other ones gets a child forked for them.
            child = next_child(header["profile"], bpf, init, child)
        reply, blobs = supervise(child, prefix + head + body, header)
        del body
        protocol.write_all(proto_out, protocol.encode(reply, blobs))
        # After the reply, off the caller's clock: end the execution's processes, then
        # pay for the next child's fork and isolation before the next request arrives.
        child = next_child(init["profile"], bpf, init, child)
    kill_all_but_me()
    reap_all()


if __name__ == "__main__":
    main()
