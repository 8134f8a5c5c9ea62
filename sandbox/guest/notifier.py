"""The sysinfo notifier's loop (see sysinfo.py): a fresh interpreter (`python -I -S`), exec'd by a
copy of the zygote that has already dropped what the notifier must not hold, so it costs the pages
of a bare interpreter, not a copy of the zygote's.

Inherited: the seccomp listener (LISTENER), its own filter as BPF (FILTER, loaded first thing), and
its end of the zygote's socket (READY, told "R" once serving); argv[1] is the stand-in struct
sysinfo in hex. For each call it opens the caller's /proc/PID/mem, checks the notification is still
valid (then the pid was the caller's when the file was opened: a pid reused since is never written
to), writes the stand-in at the caller's pointer and answers 0; a pointer it cannot write is EFAULT.
/proc/PID/mem writes even through the caller's own read-only private mappings, which the caller
could make writable anyway; nothing but the caller's memory is ever written.

It answers at most RATE calls a second (BURST at once): each costs it 70-130 us of CPU that no
caller's quota counts, and in the session jail one notifier serves every session. Beyond that rate
a caller waits in the syscall, asleep, so a program calling sysinfo in a loop spends at most a
fifth of a core of the jail's CPU (issue 17: a limit one tenant can spend for another).

Standard library only, and as few modules as it can (each costs every jail memory).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import sys
import time

LISTENER, FILTER, READY = 3, 4, 5
NAME = b"sbx-sysinfo"  # its comm, what `ps` and the tests see
PR_SET_NAME, PR_SET_DUMPABLE, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 15, 4, 22, 2
RATE, BURST = 2000, 200   # calls answered a second, and at once (see the docstring)

# struct seccomp_notif {u64 id; u32 pid; u32 flags; struct seccomp_data {int nr; u32 arch;
# u64 instruction_pointer; u64 args[6]}} and struct seccomp_notif_resp {u64 id; s64 val;
# s32 error; u32 flags}.
NOTIF = struct.Struct("=QIIiIQ6Q")
RESP = struct.Struct("=QqiI")


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("!") << 8) | nr


NOTIF_RECV = _ioc(3, 0, NOTIF.size)     # _IOWR
NOTIF_SEND = _ioc(3, 1, RESP.size)      # _IOWR
NOTIF_ID_VALID = _ioc(1, 2, 8)          # _IOW


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def main() -> None:
    figures = bytes.fromhex(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    try:
        libc.prctl(PR_SET_NAME, ctypes.cast(ctypes.c_char_p(NAME), ctypes.c_void_p).value, 0, 0, 0)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:  # exec made it dumpable again
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")
        bpf = os.pread(FILTER, 1 << 16, 0)
        os.close(FILTER)
        buf = ctypes.create_string_buffer(bpf, len(bpf))
        prog = _SockFprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
        if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "seccomp")
    except BaseException as exc:  # noqa: BLE001 - tell the zygote why, and end
        os.write(READY, f"{type(exc).__name__}: {exc}".encode()[:250])
        raise
    os.write(READY, b"R")
    os.close(READY)
    serve(LISTENER, figures)


def serve(listener: int, figures: bytes) -> None:
    notif = bytearray(NOTIF.size)
    zero = bytes(NOTIF.size)
    tokens, last = float(BURST), time.monotonic()
    while True:
        now = time.monotonic()
        tokens, last = min(float(BURST), tokens + (now - last) * RATE), now
        if tokens < 1:  # over the rate: the callers wait, asleep
            time.sleep((1 - tokens) / RATE)
            continue
        tokens -= 1
        notif[:] = zero  # the kernel refuses a buffer that is not zeroed
        try:
            fcntl.ioctl(listener, NOTIF_RECV, notif, True)
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # the caller was killed before we took it
                continue
            raise
        nid, pid, _, _, _, _, addr, *_ = NOTIF.unpack(notif)
        err = _write_to_caller(listener, nid, pid, addr, figures)
        if err is None:
            continue  # the caller is gone: nothing to answer
        try:
            fcntl.ioctl(listener, NOTIF_SEND, RESP.pack(nid, 0, -err, 0))
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
            # After the open: the file is the caller's if its notification is still pending.
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


if __name__ == "__main__":
    main()
