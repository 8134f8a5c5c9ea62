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
fifth of a core of the jail's CPU. Callers are answered in turn by uid (each session and each
live run has its own), so the rate is shared out, not spent by one tenant for another (issue 17).

Standard library only, and as few modules as it can (each costs every jail memory).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
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
    """Answer calls in turn by caller uid (a session's, or a stateless run's), at most RATE a second
    in all: a caller with many threads waiting delays another's call by one turn, not by all of its
    own (in the kernel's queue, first come first served, 40 of one session's threads made another
    session's call wait for 40 answers)."""
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    waiting: dict[int, list[tuple[int, int, int]]] = {}   # uid -> its (id, pid, pointer), in order
    turns: dict[int, None] = {}                           # uids with calls waiting, next first
    tokens, last = float(BURST), time.monotonic()
    while True:
        now = time.monotonic()
        tokens, last = min(float(BURST), tokens + (now - last) * RATE), now
        if not turns:
            timeout = None        # nothing to answer: sleep until a call comes
        elif tokens < 1:
            timeout = (1 - tokens) / RATE * 1000   # over the rate: the callers wait, asleep
        else:
            timeout = 0
        if poller.poll(timeout):
            _take(listener, waiting, turns)
            continue              # take every call that came before answering the next
        if not turns or tokens < 1:
            continue
        uid = next(iter(turns))
        del turns[uid]
        nid, pid, addr = waiting[uid].pop(0)
        if waiting[uid]:
            turns[uid] = None     # to the end of the line
        else:
            del waiting[uid]
        tokens -= 1
        err = _write_to_caller(listener, nid, pid, addr, figures)
        if err is None:
            continue  # the caller is gone: nothing to answer
        try:
            fcntl.ioctl(listener, NOTIF_SEND, RESP.pack(nid, 0, -err, 0))
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise


def _take(listener: int, waiting: dict, turns: dict) -> None:
    """Receive one pending call and queue it under its caller's uid."""
    notif = bytearray(NOTIF.size)  # zeroed: the kernel refuses a buffer that is not
    try:
        fcntl.ioctl(listener, NOTIF_RECV, notif, True)
    except InterruptedError:
        return
    except OSError as exc:
        if exc.errno == errno.ENOENT:  # the caller was killed before we took it
            return
        raise
    nid, pid, _, _, _, _, addr, *_ = NOTIF.unpack(notif)
    try:
        uid = os.stat(f"/proc/{pid}").st_uid  # the caller waits in its syscall: the pid is still its own
    except OSError:
        uid = -1  # gone already: its answer will find it invalid
    waiting.setdefault(uid, []).append((nid, pid, addr))
    turns.setdefault(uid, None)


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
