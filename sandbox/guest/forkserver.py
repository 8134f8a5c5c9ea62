"""Fork servers: clean copies of the warming zygote that fork every execution's child.

The zygote (pid 1) reads requests and results, so its heap holds the bytes of past runs even
after they are freed. A child forked from it could read them back out of its own memory. A
fork server is forked from the zygote during warm-up and never sees a request or a result:
each child is a copy of a process that never held user data.

There are two, forked at two points of the warm-up: "lean" after the standard library only
(a child of a small interpreter is cheap to fork, isolate and tear down: programs that import
nothing else run there), and "full" after the image's whole preload list.

Both halves live here, as in CPython's multiprocessing.forkserver: `serve()` runs in the fork
server, `ForkServer` is the zygote's end. Commands travel over a SOCK_SEQPACKET socket, one JSON
message each, and every answer names its op:

  {"op": FORK, "profile": {...}} -> {"op": FORK, "pid": N} with the child's pipe ends attached
                                    (req_w, out_r, err_r, res_r), or {"op": FORK, "error": "..."}
  {"op": REAP, "pid": N}         -> once every process of that (killed) execution is gone:
                                    {"op": REAP, "pid": N, "status": S, "main_cpu": s, "total_cpu": s}
  anything else                  -> {"op": ERROR, "error": "..."}

Reaps are answered asynchronously: the server never blocks on a dying execution, so a fork
asked for meanwhile is not held up by a teardown, and the zygote never waits for either
unless it needs the answer. The server is a child subreaper, so everything an execution
leaves behind is its child, and it reaps by process group: every process of an execution
stays in the child's group (setsid and setpgid are refused).

A session's child lives beside other sessions' in one jail, so it gets a pid namespace of its
own: it can neither name another session's processes (kill(pid, 0) tells nothing), nor count
their forks (pid gaps, ns_last_pid). Its namespace's init is a holder process started first,
which only reaps what the session orphans; the session's interpreter is pid 2 there (pid 1
ignores the signals it sends itself, which would change what `os.kill(os.getpid(), ...)` does)
and stays this server's child. Killing the holder ends every process of the namespace.
"""

from __future__ import annotations

import array
import collections
import ctypes
import fcntl
import json
import os
import select
import signal
import socket
import time
from dataclasses import dataclass, field

from . import isolation, runner

FORK, REAP, ERROR = "fork", "reap", "error"
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWPID = 0x20000000
MAX_COMMAND = 1 << 16
OUTPUT_PIPE = 1 << 20  # a stateless child's stdout and stderr pipes (pipe-max-size's default)
FD_SIZE = array.array("i").itemsize


class ForkServerDied(RuntimeError):
    """The fork server's socket closed: nothing more can be forked, and what it held (a session's
    pid-namespace holder) is no longer its to end."""


# -- the fork server's side -------------------------------------------------------------------

class _PidNamespaces:
    """New pid namespaces for sessions' children, made by this server: after unshare(NEWPID)
    the server's next children go into a new namespace (the first is its init), and setns to
    the server's own namespace puts the ones after back where they were."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def enter_new(self) -> int:
        """A new namespace for the next children, with its holder started as pid 1: returns the
        holder's pid."""
        if self.libc.unshare(CLONE_NEWPID) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWPID)")
        try:
            return _spawn_holder()
        except OSError:
            self.leave()
            raise

    def leave(self) -> None:
        if self.libc.setns(self.own, CLONE_NEWPID) != 0:
            # Fail closed: later children would be forked into a session's namespace.
            os._exit(71)


# What a holder runs: bash sets SIGCHLD to ignored, which stays so across exec (the kernel then
# reaps what the session orphans; dash would put it back to default), and execs `sleep`, a small
# process that only waits. No pdeathsig: in the jail an exec clears it (seen: a holder set up
# with `setpriv --pdeathsig` outlived its killed fork server). A holder ends with its session
# (the server kills it) or with the jail: once this server has died, the session loop stops at
# its next open and the zygote, the jail's pid 1, kills every process of the jail.
HOLDER = ("/bin/bash", "-c", 'trap "" CHLD; exec /usr/bin/sleep infinity')


def _spawn_holder() -> int:
    """Start a holder with posix_spawn, which vforks: the fork of this server's ~300 MB (page
    tables copied, ~8 ms on a VM) was half of a session's creation. It gets none of this
    server's fds and no blocked signals."""
    actions = [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds()]
    return os.posix_spawn(HOLDER[0], list(HOLDER), {}, file_actions=actions, setsigmask=())


def _inheritable_fds() -> list[int]:
    """This server's fds that an exec would pass on (its stdio, at least): a holder closes them."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.get_inheritable(int(name)):
                fds.append(int(name))
        except OSError:  # the listing's own fd, closed by now
            pass
    return fds


def fork_child(profile: dict, bpf: bytes, cfg: dict, uid: int,
               namespaces: _PidNamespaces | None = None) -> tuple[int, list[int], int | None]:
    """Fork one child that isolates itself (as `uid`) and then serves one request.

    Returns its pid, the parent's ends of its pipes (request (write), stdout, stderr and
    result (read)) and, for a session's child (with `namespaces`), the pid of its namespace's
    holder. The child reports b"R" on the result pipe once isolated, or b"E" and the reason
    before it exits (fail closed: nothing of the request runs).
    """
    runner.prepare_shared()  # once per server: every child inherits it (a no-op from the second fork)
    req_r, req_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    holder = None
    try:
        if namespaces is not None:
            holder = namespaces.enter_new()
        try:
            pid = os.fork()
        except OSError:
            if namespaces is not None:
                namespaces.leave()
            raise
        if pid != 0 and namespaces is not None:
            namespaces.leave()  # in this server only: the session's own children stay in its namespace
    except OSError:
        if holder is not None:
            _end_holder(holder)
        for fd in (req_r, req_w, out_r, out_w, err_r, err_w, res_r, res_w):
            os.close(fd)
        raise
    if pid == 0:  # the child: never returns
        parent = os.getppid()
        try:
            # The server's SIGCHLD wake-up writes to an fd number the user's code could reuse.
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for src, dst in ((req_r, 0), (out_w, 1), (err_w, 2), (res_w, 3)):
                os.dup2(src, dst)
            isolation.isolate(profile, bpf, workdir=cfg["workdir"], uid=uid, gid=uid, parent=parent,
                              masks=cfg.get("proc_masks", ()),
                              devices=cfg.get("per_uid_devices") if profile.get("session") else None)
            runner.prepare(session=bool(profile.get("session")))
            os.write(runner.RESULT_FD, b"R")
        except BaseException as exc:  # noqa: BLE001 - fail closed, whatever went wrong
            try:
                os.write(3, b"E" + f"{type(exc).__name__}: {exc}".encode()[:4000])
            finally:
                os._exit(70)
        try:
            runner.serve_session() if profile.get("session") else runner.serve()
        finally:
            os._exit(70)
    for fd in (req_r, out_w, err_w, res_w):
        os.close(fd)
    return pid, [req_w, out_r, err_r, res_r], holder


def _end_holder(holder: int) -> None:
    """Kill a session namespace's holder (and with it the namespace) and reap it."""
    try:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


@dataclass
class _Reaping:
    """An execution being reaped: its process group is `pid` (the child made it its own)."""

    pid: int
    holder: int | None = None  # a session's: its pid namespace's init (see _PidNamespaces)
    status: int | None = None
    main_cpu: float = 0.0    # the main process's CPU as RLIMIT_CPU counts it (see _prof_seconds)
    total_cpu: float = 0.0   # every process of the group, as wait4 reports each
    prof: float | None = None

    def collect(self) -> bool:
        """Reap what has exited (never blocks); True once the whole group is gone (and, for a
        session, its whole pid namespace: what it orphaned is its holder's, killed with it)."""
        if not self._collect_group():
            return False
        if self.holder is not None:
            try:
                os.kill(self.holder, signal.SIGKILL)
                got, _, _ = os.wait4(self.holder, os.WNOHANG)
            except (ProcessLookupError, ChildProcessError):
                got = self.holder
            if got == 0:
                return False
            self.holder = None
        return True

    def _collect_group(self) -> bool:
        if self.prof is None:
            try:
                exited = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                exited = None
            if exited is not None:
                self.prof = _prof_seconds(self.pid)
        while True:
            try:
                got, status, usage = os.wait4(-self.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if got == 0:
                return False
            self._count(got, status, usage)
        if self.status is None:
            # Killed before it could make its own group: it is still in ours.
            try:
                got, status, usage = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:
                return True
            if got == 0:
                return False
            self._count(got, status, usage)
        return True

    def _count(self, got: int, status: int, usage: os.struct_rusage) -> None:
        cpu = usage.ru_utime + usage.ru_stime
        self.total_cpu += cpu
        if got == self.pid:
            self.status = status
            self.main_cpu = self.prof if self.prof is not None else cpu

    def answer(self) -> dict:
        return {"op": REAP, "pid": self.pid, "status": self.status, "main_cpu": self.main_cpu,
                "total_cpu": self.total_cpu}


def _prof_seconds(pid: int) -> float | None:
    """The CPU time RLIMIT_CPU compares with its limit: the tick-sampled user + system time
    (the kernel's PROF clock). wait4's rusage is rescaled to the scheduler's exact runtime,
    which on a busy machine can be a fifth lower, so a process killed for its CPU limit would
    look as if it had used less. Readable while the exited process is not yet reaped."""
    try:
        return time.clock_gettime((~pid) << 3)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_PROF)
    except OSError:
        return None


class _Uids:
    """Every live child runs as a uid no other live process of the jail has: an execution can
    then neither signal the spares waiting beside it (nor a session's processes) nor see them
    in /proc (hidepid). A uid is free again only once its whole process group is reaped."""

    def __init__(self, uids: range) -> None:
        self.free = collections.deque(uids)
        self.owner: dict[int, int] = {}  # child pid -> uid
        self.holders: dict[int, int] = {}  # a session's child pid -> its pid namespace's holder

    def take(self) -> int:
        if not self.free:
            raise OSError("no free uid: every mapped uid belongs to a live child")
        return self.free.popleft()

    def give(self, pid: int, uid: int) -> None:
        self.owner[pid] = uid

    def release(self, pid: int) -> None:
        if pid in self.owner:
            self.free.append(self.owner.pop(pid))


def serve(sock: socket.socket, bpf: bytes, cfg: dict, uids: range) -> None:
    """The fork server's loop; returns when the zygote closes the socket."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    isolation.empty_bounding_set()  # once for every child (isolation.drop_privileges)
    # SIGCHLD wakes the poll below through a pipe, so reaping never blocks the command loop.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    reaping: dict[int, _Reaping] = {}
    owners = _Uids(uids)
    namespaces = _PidNamespaces()
    while True:
        poller.poll()
        try:
            while os.read(wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                raw = sock.recv(MAX_COMMAND)
            except BlockingIOError:
                break
            if not raw:
                return
            _command(sock, raw, bpf, cfg, reaping, owners, namespaces)
        for pid, job in list(reaping.items()):
            if job.collect():
                del reaping[pid]
                owners.release(pid)
                _send(sock, job.answer())


def _command(sock: socket.socket, raw: bytes, bpf: bytes, cfg: dict, reaping: dict[int, _Reaping],
             owners: _Uids, namespaces: _PidNamespaces) -> None:
    try:
        cmd = json.loads(raw)
        op = cmd["op"]
    except (ValueError, KeyError, TypeError):
        _send(sock, {"op": ERROR, "error": "malformed command"})
        return
    if op == FORK:
        try:
            uid = owners.take()
            try:
                session = bool(cmd["profile"].get("session"))
                pid, fds, holder = fork_child(cmd["profile"], bpf, cfg, uid, namespaces if session else None)
            except OSError:
                owners.free.appendleft(uid)
                raise
        except OSError as exc:  # e.g. EAGAIN: the pids limit is still full of the dying
            _send(sock, {"op": FORK, "error": str(exc)})
            return
        owners.give(pid, uid)
        if holder is not None:
            owners.holders[pid] = holder
        try:
            _send(sock, {"op": FORK, "pid": pid}, fds)
        finally:
            for fd in fds:
                os.close(fd)
    elif op == REAP:
        pid = cmd["pid"]
        reaping.setdefault(pid, _Reaping(pid, holder=owners.holders.pop(pid, None)))
    else:
        _send(sock, {"op": ERROR, "error": f"unknown op {op!r}"})


def _send(sock: socket.socket, msg: dict, fds: list[int] = ()) -> None:
    # Answers are small and the zygote reads them promptly; block rather than drop one.
    sock.setblocking(True)
    try:
        socket.send_fds(sock, [json.dumps(msg).encode()], fds) if fds else sock.send(json.dumps(msg).encode())
    finally:
        sock.setblocking(False)


# -- the zygote's side ------------------------------------------------------------------------

class Child:
    """The zygote's handle on one pre-forked child: its pid and the zygote's ends of its pipes."""

    def __init__(self, pid: int, profile: dict, fds: list[int]) -> None:
        self.pid = pid
        self.profile = profile
        self.req_w, self.out_r, self.err_r, self.res_r = fds
        if not profile.get("session"):
            # Room for a short run's output while the zygote does not listen (supervise.Watch's
            # `quiet`). Set here, off the request path; a session's pipes (hundreds of idle
            # sessions) keep the default size, which the user's pipe-page allowance can afford.
            for fd in (self.out_r, self.err_r):
                try:
                    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, OUTPUT_PIPE)
                except OSError:  # the user's pipe pages are used up: 64 KiB still work
                    pass
        try:
            self.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # already gone (setup failed); the result pipe says why
            self.pidfd = os.open("/dev/null", os.O_RDONLY)
        try:  # for the run's CPU time (supervise.cpu_time_ns), opened here, off the request path
            self.stat_fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.stat_fd = -1
        self.setup: bytes | None = None   # b"R" once isolated, or b"E..." / b"" if setup failed
        self.retired = False              # killed and handed to the fork server to reap

    def wait_ready(self) -> bytes:
        """Block until the child has isolated itself (b"R") or failed (anything else)."""
        if self.setup is None:
            first = os.read(self.res_r, 1)
            self.setup = first if first == b"R" else first + (os.read(self.res_r, 4000) if first else b"")
        return self.setup

    def kill(self) -> None:
        """End the execution: its process group (which nothing can leave: setsid and setpgid
        are refused) and the child itself, in case it died before making its own group. Never
        once it is retired: the fork server may have reaped it, and its pid (and its group's
        number) may belong to another execution or session now."""
        if self.retired:
            return
        for target in (-self.pid, self.pid):
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for fd in (self.req_w, self.out_r, self.err_r, self.res_r, self.pidfd, self.stat_fd):
            if fd < 0:
                continue
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass
class ForkServer:
    """The zygote's end of one fork server: it keeps `spares` isolated children waiting, so a
    request never waits for a fork, and has killed executions reaped in the background."""

    name: str
    pid: int
    sock: socket.socket
    spares: int
    ready: collections.deque = field(default_factory=collections.deque)      # unused children
    forking: collections.deque = field(default_factory=collections.deque)    # profiles asked for
    dying: dict = field(default_factory=dict)     # pid -> reap answer, None until it comes
    blocked: bool = False                         # a fork failed: retry once something is reaped

    @classmethod
    def start(cls, name: str, bpf: bytes, cfg: dict, close_in_child: list[int], spares: int,
              uids: range) -> ForkServer:
        """Fork a fork server from the (warming) zygote; its children run as `uids`."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                for fd in close_in_child:  # the host protocol is the zygote's alone
                    os.close(fd)
                serve(theirs, bpf, cfg, uids)
            finally:
                os._exit(0)
        theirs.close()
        return cls(name, pid, ours, spares)

    def fileno(self) -> int:
        return self.sock.fileno()

    def _ask(self, cmd: dict) -> None:
        self.sock.send(json.dumps(cmd).encode())

    def refill(self, profile: dict) -> None:
        """Ask for forks until `spares` children are ready or on their way."""
        while not self.blocked and len(self.ready) + len(self.forking) < self.spares:
            self._ask({"op": FORK, "profile": profile})
            self.forking.append(profile)

    def handle(self, block: bool) -> bool:
        """Take in one answer; False if none was waiting (non-blocking)."""
        try:
            # Not socket.recv_fds: it drops its flags argument (CPython 3.11), so it would block.
            msg, ancillary, _, _ = self.sock.recvmsg(MAX_COMMAND, socket.CMSG_LEN(4 * FD_SIZE),
                                                     0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        if not msg:
            raise ForkServerDied(f"the {self.name} fork server died")
        fds = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % FD_SIZE])
        answer = json.loads(msg)
        if answer.get("op") == FORK:
            profile = self.forking.popleft()
            if "error" in answer:
                self.blocked = True
            else:
                self.ready.append(Child(answer["pid"], profile, list(fds)))
        elif answer.get("op") == REAP:
            self.dying[answer["pid"]] = answer
            self.blocked = False
        else:
            raise RuntimeError(f"the {self.name} fork server answered {answer!r}")
        return True

    def take(self, profile: dict) -> Child:
        """An isolated child for `profile`: a spare if one matches, else one forked now."""
        while True:
            for child in self.ready:
                if child.profile == profile:
                    self.ready.remove(child)
                    return child
            if profile not in self.forking:
                if self.blocked:  # the pids limit is full of the dying: wait for a reap
                    if not self._waiting_reaps():
                        raise RuntimeError(f"cannot fork a child in the {self.name} fork server")
                    self.handle(block=True)
                    continue
                self._ask({"op": FORK, "profile": profile})
                self.forking.append(profile)
            self.handle(block=True)

    def _waiting_reaps(self) -> bool:
        return any(v is None for v in self.dying.values())

    def retire(self, child: Child) -> None:
        """End an execution and have it reaped in the background."""
        child.kill()
        child.retired = True
        child.close()
        if child.pid not in self.dying:
            self._ask({"op": REAP, "pid": child.pid})
            self.dying[child.pid] = None

    def reaped(self, child: Child) -> dict:
        """Kill the execution and wait until every process of it is gone; its exit status and CPU."""
        child.kill()
        child.retired = True
        if child.pid not in self.dying:
            self._ask({"op": REAP, "pid": child.pid})
            self.dying[child.pid] = None
        while self.dying[child.pid] is None:
            self.handle(block=True)
        return self.dying[child.pid]

    def forget_reaped(self) -> None:
        """Drop the answers of finished reaps nobody waits for (a session zygote never settles)."""
        self.dying = {pid: answer for pid, answer in self.dying.items() if answer is None}

    def settle(self) -> None:
        """Wait until every retired execution is reaped: its memory and pids then no longer
        count against the slot's cgroup limits, which the next execution gets whole."""
        while self._waiting_reaps():
            self.handle(block=True)
        self.dying.clear()
