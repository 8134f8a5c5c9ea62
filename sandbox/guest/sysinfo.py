"""sysinfo(2) answered with fixed stand-ins: no process of a jail sees the host's load, free memory,
process count or uptime through it (glibc's sysconf(_SC_AVPHYS_PAGES), getloadavg()'s fallback,
psutil).

A filter rule cannot do it: refused, sysinfo makes glibc's __get_phys_pages read an uninitialised
struct. So the call is emulated with seccomp's user notification. At its start (after the init frame,
before any import of the warm-up), the zygote:

1. forks the notifier, a small copy of itself that touches few pages;
2. installs a filter of one rule (sysinfo -> SECCOMP_RET_USER_NOTIF, everything else allowed) with
   a listener, which every process it makes later inherits (fork servers, children, what user code
   forks and execs); a child's own policy allows sysinfo, and ALLOW yields to USER_NOTIF;
3. hands the listener to the notifier (SCM_RIGHTS) and closes its own copy.

The notifier keeps the jail's uid 0 with CAP_SYS_PTRACE and CAP_DAC_OVERRIDE (in the jail's user
namespace only: an exec'd program is dumpable and its /proc/PID/mem then belongs to its own uid),
drops every other capability, sets no_new_privs and loads a filter of its own. For each call it
opens the caller's /proc/PID/mem, checks the notification is still valid (the pid was the caller's
when the file was opened, so a pid reused meanwhile is never written to), writes the stand-in
struct at the caller's pointer and answers 0; a pointer it cannot write is EFAULT. (/proc/PID/mem
writes even through the caller's own read-only private mappings, which the caller could make
writable anyway; nothing but the caller's memory is ever written.)

Children run as other uids with no capabilities: they can neither signal nor ptrace it, nor see it
in their /proc (hidepid). If it dies anyway, the kernel answers sysinfo with ENOSYS (glibc would
read garbage), so the jail fails loudly: the zygote watches the notifier's pidfd and exits at once,
and checks it again before every reply, so a run that overlapped its death ends as an engine error
and the host starts a fresh jail.

The stand-ins are the jail's /proc stand-ins (host/jail.proc_masks), read from their files, so
sysinfo and /proc/meminfo, /proc/uptime, /proc/loadavg always agree.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import threading

import pyseccomp as sc

NAME = b"sbx-sysinfo"    # the notifier's comm (what `ps` and the tests see)
EXIT_NOTIFIER_DIED = 75  # the zygote's exit status when it finds the notifier gone

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
PR_SET_NAME, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 15, 4, 38
PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
CAP_DAC_OVERRIDE, CAP_SYS_PTRACE = 1, 19
CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 1 << 18
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# struct seccomp_notif {u64 id; u32 pid; u32 flags; struct seccomp_data {int nr; u32 arch;
# u64 instruction_pointer; u64 args[6]}} and struct seccomp_notif_resp {u64 id; s64 val;
# s32 error; u32 flags}.
_NOTIF = struct.Struct("=QIIiIQ6Q")
_RESP = struct.Struct("=QqiI")


def _iowr(nr: int, size: int, direction: int = 3) -> int:
    return (direction << 30) | (size << 16) | (ord("!") << 8) | nr


NOTIF_RECV = _iowr(0, _NOTIF.size)
NOTIF_SEND = _iowr(1, _RESP.size)
NOTIF_ID_VALID = _iowr(2, 8, direction=1)  # _IOW


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
        select.select([self.pidfd], [], [])
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
            _serve(theirs, figures)
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


# -- the notifier -------------------------------------------------------------------------------

class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _serve(sock: socket.socket, figures: bytes) -> None:
    """The notifier: take the listener, drop what it does not need, answer every sysinfo call."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(NAME), 0, 0, 0)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    keep = sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 20)
    try:
        _, fds, _, _ = socket.recv_fds(sock, 16, 1)
        if len(fds) != 1:
            raise RuntimeError("no listener received")
        listener = fds[0]
        _own_proc(libc)
        _drop_privileges(libc)
        _confine(listener)
    except BaseException as exc:  # noqa: BLE001 - report why, and end (the zygote then fails)
        sock.send(f"{type(exc).__name__}: {exc}".encode()[:250])
        raise
    sock.send(b"R")
    sock.close()
    _answer_forever(listener, figures)


def _own_proc(libc) -> None:
    """A /proc of its own, writable (nsjail mounts the jail's read-only, and /proc/PID/mem is
    written through it), in a mount namespace of its own."""
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount / private")
    if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
        raise OSError(ctypes.get_errno(), "mount /proc")


def _drop_privileges(libc) -> None:
    """Keep only CAP_SYS_PTRACE and CAP_DAC_OVERRIDE (to write callers' memory), in no set an exec
    could widen; not dumpable; no_new_privs."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    mask = (1 << CAP_SYS_PTRACE) | (1 << CAP_DAC_OVERRIDE)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(_CapData(mask, mask, 0), _CapData(0, 0, 0))
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    for option in (PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE):
        if libc.prctl(option, 1 if option == PR_SET_NO_NEW_PRIVS else 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl({option})")


# What the notifier's loop (and Python reporting an error on its way out) needs; anything else
# kills it, and with it the jail.
_NOTIFIER_SYSCALLS = (
    "read", "write", "openat", "close", "pwrite64", "fstat", "newfstatat", "lseek", "brk", "mmap", "munmap",
    "mremap", "mprotect", "madvise", "futex", "rt_sigreturn", "rt_sigprocmask", "rt_sigaction", "getpid",
    "gettid", "clock_gettime", "getrandom", "sendto", "exit", "exit_group",
)


def _confine(listener: int) -> None:
    f = sc.SyscallFilter(sc.KILL_PROCESS)
    for name in _NOTIFIER_SYSCALLS:
        f.add_rule(sc.ALLOW, name)
    for request in (NOTIF_RECV, NOTIF_SEND, NOTIF_ID_VALID):
        f.add_rule(sc.ALLOW, "ioctl", sc.Arg(0, sc.EQ, listener), sc.Arg(1, sc.EQ, request))
    f.load()


def _answer_forever(listener: int, figures: bytes) -> None:
    notif = bytearray(_NOTIF.size)
    while True:
        notif[:] = bytes(len(notif))  # the kernel refuses a buffer that is not zeroed
        try:
            fcntl.ioctl(listener, NOTIF_RECV, notif, True)
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # the caller was killed before we took it
                continue
            raise
        nid, pid, _, _, _, _, addr, *_ = _NOTIF.unpack(notif)
        err = _write_to_caller(listener, nid, pid, addr, figures)
        if err is None:
            continue  # the caller is gone: nothing to answer
        try:
            fcntl.ioctl(listener, NOTIF_SEND, _RESP.pack(nid, 0, -err, 0))
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise


def _write_to_caller(listener: int, nid: int, pid: int, addr: int, figures: bytes) -> int | None:
    """0 once the stand-in is in the caller's memory, an errno if it cannot be, None if the
    notification is no longer valid (the caller died: its pid may be someone else's now)."""
    try:
        mem = os.open(f"/proc/{pid}/mem", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        mem = -1
    try:
        try:
            # After the open: the file is the caller's if the notification is still pending.
            fcntl.ioctl(listener, NOTIF_ID_VALID, struct.pack("=Q", nid))
        except OSError:
            return None
        if mem < 0:
            return errno.EPERM
        try:
            written = os.pwrite(mem, figures, addr)
        except (OSError, OverflowError, ValueError):
            return errno.EFAULT
        return 0 if written == len(figures) else errno.EFAULT
    finally:
        if mem >= 0:
            os.close(mem)
