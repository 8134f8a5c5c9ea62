"""The fork server: a clean copy of the warm zygote that forks every execution's child.

The zygote (pid 1) reads requests and results, so its heap holds the bytes of past runs even
after they are freed. A child forked from it could read them back out of its own memory.
The fork server is forked once, right after warm-up, and never sees a request or a result:
each child is a copy of a process that never held user data.

Commands arrive from the zygote over a SOCK_SEQPACKET socket, one JSON message each:
  {"op": "fork", "profile": {...}} -> {"pid": N} with the child's pipe ends attached
                                      (req_w, out_r, err_r, res_r), or {"error": "..."}
  {"op": "reap", "pid": N}         -> {"status": S, "main_cpu": s, "total_cpu": s}
The fork server is a child subreaper, so everything an execution leaves behind is its child,
and it reaps by process group: every process of an execution stays in the child's group.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import socket

from . import isolation, runner

PR_SET_CHILD_SUBREAPER = 36
MAX_COMMAND = 1 << 16


def fork_child(profile: dict, bpf: bytes, cfg: dict) -> tuple[int, list[int]]:
    """Fork one child that isolates itself and then serves one request.

    Returns its pid and the parent's ends of its pipes: request (write), stdout, stderr and
    result (read). The child reports b"R" on the result pipe once isolated, or b"E" and the
    reason before it exits (fail closed: nothing of the request runs).
    """
    req_r, req_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        for fd in (req_r, req_w, out_r, out_w, err_r, err_w, res_r, res_w):
            os.close(fd)
        raise
    if pid == 0:  # the child: never returns
        parent = os.getppid()
        try:
            for src, dst in ((req_r, 0), (out_w, 1), (err_w, 2), (res_w, 3)):
                os.dup2(src, dst)
            isolation.isolate(profile, bpf, workdir=cfg["workdir"], uid=cfg["uid"], gid=cfg["gid"], parent=parent)
            runner.prepare()
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
    return pid, [req_w, out_r, err_r, res_r]


def reap(pid: int) -> dict:
    """Reap every process of the execution whose child is `pid` (its group), once killed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    status, main_cpu = None, 0.0
    while True:
        try:
            got, st, usage = os.wait4(-pid, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if got == pid:
            status, main_cpu = st, usage.ru_utime + usage.ru_stime
    if status is None:
        # Killed before it could make its own group: it is still in ours.
        try:
            _, status, usage = os.wait4(pid, 0)
            main_cpu = usage.ru_utime + usage.ru_stime
        except ChildProcessError:
            pass
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"status": status, "main_cpu": main_cpu, "total_cpu": total}


def serve(sock: socket.socket, bpf: bytes, cfg: dict) -> None:
    """The fork server's loop; returns when the zygote closes the socket."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    while True:
        try:
            raw = sock.recv(MAX_COMMAND)
        except InterruptedError:
            continue
        if not raw:
            return
        cmd = json.loads(raw)
        if cmd["op"] == "fork":
            try:
                pid, fds = fork_child(cmd["profile"], bpf, cfg)
            except OSError as exc:  # e.g. EAGAIN: the pids limit is still full of the dying
                sock.send(json.dumps({"error": str(exc)}).encode())
                continue
            socket.send_fds(sock, [json.dumps({"pid": pid}).encode()], fds)
            for fd in fds:
                os.close(fd)
        elif cmd["op"] == "reap":
            sock.send(json.dumps(reap(cmd["pid"])).encode())


def start(bpf: bytes, cfg: dict, close_in_child: list[int]) -> tuple[int, socket.socket]:
    """Fork the fork server from the warm zygote; returns its pid and the zygote's socket."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            for fd in close_in_child:  # the host protocol is the zygote's alone
                os.close(fd)
            serve(theirs, bpf, cfg)
        finally:
            os._exit(0)
    theirs.close()
    return pid, ours
