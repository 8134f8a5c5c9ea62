"""The zygote: pid 1 of a jail. Imports the library set once, then serves executions forever.

Loop: pre-fork an isolated child, wait for a request from the host, hand it to the child,
supervise it (wall clock, output caps), kill everything else in the jail, reap, answer,
pre-fork again. The zygote never runs user code and never parses user output beyond caps.

Host protocol (frames, see protocol.py) on fds 0 (in) and 1 (out):
  host -> init    {policy, preload, uid, gid, workdir, env}
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
        self.pid = os.fork()
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


def supervise(child: Child, request: bytes, header: dict) -> tuple[dict, list[bytes]]:
    limits = header["limits"]
    first = os.read(child.res_r, 1)
    if first != b"R":
        rest = os.read(child.res_r, 4000) if first else b""
        return {"status": "setup_failed", "detail": rest.decode(errors="replace") or "child died during setup"}, []

    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    deadline = t0 + limits["timeout"]
    try:
        protocol.write_all(child.req_w, request)
    except BrokenPipeError:
        pass
    os.close(child.req_w)
    child.req_w = -1

    streams = {child.out_r: Stream(limits["max_stdout_bytes"]), child.err_r: Stream(limits["max_stderr_bytes"]),
               child.res_r: Stream(limits["max_result_bytes"])}
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    poller.register(child.pidfd, select.POLLIN)
    open_fds = set(streams)
    timed_out = exited = False
    # Wait for both: all pipes at EOF *and* the main process gone (a child that closes its
    # pipes and spins must still meet the wall clock).
    while open_fds or not exited:
        if exited or timed_out:
            timeout_ms = None  # everything is dead or dying: drain to EOF
        else:
            timeout_ms = max(0, int((deadline - time.monotonic()) * 1000) + 1)
        events = poller.poll(timeout_ms)
        if not events:
            timed_out = True
            kill_all_but_me()
            continue
        for fd, _ in events:
            if fd == child.pidfd:
                poller.unregister(fd)
                exited = True
                # The execution is over when its main process ends: nothing it left behind runs on.
                kill_all_but_me()
                continue
            data = os.read(fd, CHUNK)
            if data:
                streams[fd].feed(data)
            else:
                poller.unregister(fd)
                open_fds.discard(fd)
        if not exited and not timed_out and time.monotonic() >= deadline:
            timed_out = True
            kill_all_but_me()
    wall = time.monotonic() - t0
    _, status, _ = os.wait4(child.pid, 0)
    reap_all()
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)

    out, err, res = streams[child.out_r], streams[child.err_r], streams[child.res_r]
    reply = {
        "status": "done",
        "timed_out": timed_out,
        "exit_code": os.waitstatus_to_exitcode(status),
        "wall_ms": round(wall * 1000, 3),
        "cpu_ms": round(cpu * 1000, 3),
        "stdout_dropped": out.dropped,
        "stderr_dropped": err.dropped,
        "result": None,
        "result_error": None,
    }
    blobs = [out.value(), err.value()]
    raw = res.value()
    if res.dropped:
        reply["result_error"] = f"result exceeded {res.cap} bytes"
    elif raw:
        try:
            if len(raw) < protocol.PREFIX.size:
                raise protocol.ProtocolError("result frame cut short")
            head_len, body_len = protocol.parse_prefix(raw[:protocol.PREFIX.size], res.cap)
            end = protocol.PREFIX.size + head_len
            if len(raw) != end + body_len:
                raise protocol.ProtocolError("result frame length mismatch")
            result = protocol.parse_header(raw[protocol.PREFIX.size:end])
            reply["result"] = result
            blobs.append(raw[end:])
        except protocol.ProtocolError as exc:
            reply["result_error"] = str(exc)
    reply["blob_sizes"] = [len(b) for b in blobs]
    return reply, blobs


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
    return versions


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

    child = Child(init["profile"], bpf, init)
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
            kill_all_but_me()
            reap_all()
            child.close()
            child = Child(header["profile"], bpf, init)
        reply, blobs = supervise(child, prefix + head + body, header)
        del body
        child.close()
        protocol.write_all(proto_out, protocol.encode(reply, blobs))
        child = Child(init["profile"], bpf, init)
    kill_all_but_me()
    reap_all()


if __name__ == "__main__":
    main()
