"""sysinfo(2) answered with fixed stand-ins: no process of a jail sees the host's load, free memory,
process count or uptime through it (glibc's sysconf(_SC_AVPHYS_PAGES), getloadavg(), psutil).

A filter rule cannot do it: refused, sysinfo makes glibc's __get_phys_pages read an uninitialised
struct. So the call is emulated with seccomp's user notification. At its start (after the init
frame, before the warm-up's imports), the zygote:

1. forks the notifier, which takes a /proc of its own (nsjail's is read-only, and callers' memory
   is written through /proc/PID/mem), keeps only CAP_SYS_PTRACE and CAP_DAC_OVERRIDE (in the
   jail's user namespace; an exec'd program is dumpable, and its /proc/PID/mem then belongs to its
   own uid), sets no_new_privs and execs a bare interpreter running notifier.py, which loads a
   filter of its own and answers (see there);
2. installs a filter of one rule (sysinfo -> SECCOMP_RET_USER_NOTIF, everything else allowed) with
   a listener, which every process it makes later inherits (fork servers, children, whatever user
   code forks and execs); a child's own policy allows sysinfo, and ALLOW yields to USER_NOTIF. The
   notifier, forked before, is not under it (glibc's qsort may call sysinfo: it would wait on itself);
3. hands the listener to the notifier (SCM_RIGHTS), closes its own copy, and waits for "ready".

Children run as other uids with no capabilities: they can neither signal nor ptrace it, nor see
it in their /proc (hidepid). If it dies anyway, the kernel answers sysinfo with ENOSYS (glibc
would read garbage), so the jail fails loudly: a thread of the zygote watches the notifier's pidfd
and ends the jail at once, and the zygote checks again before every reply, so a run that
overlapped its death ends as a sandbox error and the host starts a fresh jail.

The stand-ins are the jail's /proc stand-ins (host/jail.proc_masks), read from their files, so
sysinfo and /proc/meminfo, /proc/uptime, /proc/loadavg always agree.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import signal
import socket
import sys
import threading

from . import notifier
from .seccomp import sc  # pyseccomp, imported without its ldconfig runs

EXIT_NOTIFIER_DIED = 75  # the zygote's exit status when it finds the notifier gone
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 24, 47, 4
CAP_DAC_OVERRIDE, CAP_SYS_PTRACE = 1, 19
KEPT_CAPS = (CAP_DAC_OVERRIDE, CAP_SYS_PTRACE)
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 1 << 18


class Sysinfo(ctypes.Structure):
    """struct sysinfo of a 64-bit Linux (x86_64, aarch64): 112 bytes."""

    _fields_ = [("uptime", ctypes.c_long), ("loads", ctypes.c_ulong * 3), ("totalram", ctypes.c_ulong),
                ("freeram", ctypes.c_ulong), ("sharedram", ctypes.c_ulong), ("bufferram", ctypes.c_ulong),
                ("totalswap", ctypes.c_ulong), ("freeswap", ctypes.c_ulong), ("procs", ctypes.c_ushort),
                ("pad", ctypes.c_ushort), ("totalhigh", ctypes.c_ulong), ("freehigh", ctypes.c_ulong),
                ("mem_unit", ctypes.c_uint)]


def stand_in(masks: list) -> Sysinfo:
    """The struct every caller gets, from the jail's /proc stand-ins ([file, /proc path] pairs)."""
    files = {dst: src for src, dst in masks}

    def read(path: str) -> str:
        try:
            with open(files[path]) as f:
                return f.read()
        except (KeyError, OSError):
            return ""

    meminfo = {}
    for line in read("/proc/meminfo").splitlines():
        key, _, value = line.partition(":")
        try:
            meminfo[key.strip()] = int(value.split()[0]) * 1024
        except (ValueError, IndexError):
            continue
    s = Sysinfo()
    s.mem_unit = 1
    s.totalram = meminfo.get("MemTotal", 1 << 30)
    s.freeram = meminfo.get("MemFree", s.totalram // 2)
    s.bufferram = meminfo.get("Buffers", 0)
    s.sharedram = meminfo.get("Shmem", 0)
    s.totalswap = meminfo.get("SwapTotal", 0)
    s.freeswap = meminfo.get("SwapFree", 0)
    try:
        s.uptime = int(float(read("/proc/uptime").split()[0]))
    except (ValueError, IndexError):
        s.uptime = 1000
    loadavg = read("/proc/loadavg").split()
    try:
        for i in range(3):
            s.loads[i] = int(float(loadavg[i]) * 65536)  # SI_LOAD_SHIFT
        s.procs = int(loadavg[3].split("/")[1])
    except (ValueError, IndexError):
        s.procs = 1
    return s


# -- the zygote's side --------------------------------------------------------------------------

_notifier = 0           # its pid, once started
_guard: _Guard | None = None
_stopping = False


class _Guard:
    """The zygote's watch on the notifier: its pidfd."""

    def __init__(self, pid: int) -> None:
        self.pidfd = os.pidfd_open(pid)

    def alive(self) -> bool:
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)

    def die(self) -> None:
        """The notifier is gone: sysinfo would now answer ENOSYS, so the jail ends, loudly."""
        if _stopping:
            return
        try:
            os.write(2, b"[sandbox] the sysinfo notifier died; ending the jail\n")
        finally:
            os._exit(EXIT_NOTIFIER_DIED)

    def watch(self) -> None:
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        while not poller.poll():
            pass
        self.die()


def start(masks: list) -> None:
    """Fork the notifier, install the sysinfo filter with its listener and hand it over (see the
    module docstring). Raises if any step fails: the jail must not start without it."""
    global _notifier
    figures = bytes(stand_in(masks))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            _become_notifier(theirs, figures)
        finally:
            os._exit(70)
    theirs.close()
    try:
        listener = _install_filter()
        try:
            socket.send_fds(ours, [b"L"], [listener])
        finally:
            os.close(listener)
        answer = ours.recv(256)
        if answer != b"R":
            raise RuntimeError(f"the sysinfo notifier did not start: {answer.decode(errors='replace') or 'it died'}")
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        ours.close()
    _notifier = pid


def watch() -> None:
    """Once the zygote has forked its fork servers (they need not hold the pidfd, and it holds no
    thread when it forks): a thread that ends the jail the moment the notifier dies."""
    global _guard
    _guard = _Guard(_notifier)
    check()
    threading.Thread(target=_guard.watch, name="sysinfo-watch", daemon=True).start()


def check() -> None:
    """Before every reply: a run that may have met a dead notifier never answers."""
    if _guard is not None and not _guard.alive():
        _guard.die()


def stop() -> None:
    """The zygote is shutting down (it kills every process of the jail): not a failure."""
    global _stopping
    _stopping = True


def _install_filter() -> int:
    """sysinfo -> USER_NOTIF, everything else allowed, on this process and all it will make; returns
    the listener fd."""
    f = sc.SyscallFilter(sc.ALLOW)
    f.set_attr(sc.Attr.ACT_BADARCH, sc.ALLOW)  # a child's own policy kills foreign architectures
    f.set_attr(sc.Attr.CTL_NNP, 0)
    f.add_rule(sc.NOTIFY, "sysinfo")
    fd = os.memfd_create("seccomp-sysinfo")
    try:
        f.export_bpf(_Fd(fd))
        bpf = os.pread(fd, 1 << 16, 0)
    finally:
        os.close(fd)
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    nr = sc.resolve_syscall(sc.system_arch(), "seccomp")
    listener = libc.syscall(ctypes.c_long(nr), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                            ctypes.c_long(SECCOMP_FILTER_FLAG_NEW_LISTENER), ctypes.byref(prog))
    if listener < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp(NEW_LISTENER): {os.strerror(err)}")
    return listener


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# -- the notifier, before its exec ------------------------------------------------------------------

class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _become_notifier(sock: socket.socket, figures: bytes) -> None:
    """In the forked copy: take the listener, drop what the notifier must not hold, exec it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
    try:
        signal.set_wakeup_fd(-1)
        _, fds, _, _ = socket.recv_fds(sock, 16, 1)
        if len(fds) != 1:
            raise RuntimeError("no listener received")
        bpf = os.memfd_create("seccomp-notifier", 0)
        _confinement().export_bpf(_Fd(bpf))
        _own_proc(libc)
        _drop_privileges(libc)
        # Its CPU is the jail's, whoever calls: at nice 19, as the children are, a flood of calls
        # never outranks the zygote's clock or another tenant's running code.
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    except BaseException as exc:  # noqa: BLE001 - report why, and end (the zygote then fails)
        sock.send(f"{type(exc).__name__}: {exc}".encode()[:250])
        os._exit(70)
    # Its fds: 0-2 as the zygote's (/dev/null, the log), then LISTENER, FILTER, READY.
    wanted = ((fds[0], notifier.LISTENER), (bpf, notifier.FILTER), (sock.fileno(), notifier.READY))
    high = [(os.dup(src), dst) for src, dst in wanted]
    high = [(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1000), dst) for fd, dst in high]
    os.closerange(3, 1000)
    for fd, dst in high:
        os.dup2(fd, dst)  # inheritable: the exec keeps these three
    os.closerange(notifier.READY + 1, 1 << 20)
    try:
        os.execv(sys.executable, [sys.executable, "-I", "-S", notifier.__file__, figures.hex()])
    except BaseException as exc:  # noqa: BLE001
        os.write(notifier.READY, f"exec: {exc}".encode()[:250])
        os._exit(70)


def _own_proc(libc) -> None:
    """A /proc of its own, writable (nsjail mounts the jail's read-only), in a mount namespace of
    its own."""
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount / private")
    if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
        raise OSError(ctypes.get_errno(), "mount /proc")


def _drop_privileges(libc) -> None:
    """Keep CAP_SYS_PTRACE and CAP_DAC_OVERRIDE only: the bounding set holds nothing else, so the
    exec (as the jail's root) gives exactly these; no ambient or inheritable ones; no_new_privs."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        if cap not in KEPT_CAPS and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    mask = sum(1 << cap for cap in KEPT_CAPS)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(_CapData(mask, mask, 0), _CapData(0, 0, 0))
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")


# What the notifier's loop (and Python reporting an error on its way out) needs, once its filter is
# loaded; anything else kills it, and with it the jail.
_NOTIFIER_SYSCALLS = (
    "read", "write", "openat", "close", "pwrite64", "fstat", "newfstatat", "lseek", "brk", "mmap", "munmap",
    "mremap", "mprotect", "madvise", "futex", "rt_sigreturn", "rt_sigprocmask", "rt_sigaction", "getpid",
    "gettid", "clock_gettime", "clock_nanosleep", "nanosleep", "getrandom", "exit", "exit_group", "poll", "ppoll",
)


def _confinement() -> sc.SyscallFilter:
    f = sc.SyscallFilter(sc.KILL_PROCESS)
    for name in _NOTIFIER_SYSCALLS:
        f.add_rule(sc.ALLOW, name)
    for request in (notifier.NOTIF_RECV, notifier.NOTIF_SEND, notifier.NOTIF_ID_VALID):
        f.add_rule(sc.ALLOW, "ioctl", sc.Arg(0, sc.EQ, notifier.LISTENER), sc.Arg(1, sc.EQ, request))
    return f
