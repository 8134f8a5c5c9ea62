"""Per-execution isolation of a freshly forked child, in the order ARCHITECTURE.md gives.

Runs inside the jail, in the child, *before* any byte of the request is read. Every step
raises on failure; the caller reports the failure to the zygote and exits, so no user code
ever runs in a half-isolated child (fail closed).
"""

from __future__ import annotations

import ctypes
import os
import random
import resource
import signal
import sys

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 1 << 18
MNT_DETACH = 2
MNT_TARGET = "/tmp/mnt"  # the jail's /mnt leads here (host/jail.MNT_TARGET)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
PR_CAPBSET_READ, PR_CAPBSET_DROP, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 23, 24, 22, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
SECCOMP_MODE_FILTER = 2
OOM_SCORE_WAITING, OOM_SCORE_RUNNING = 500, 1000
OOM_FD = 4  # /proc/self/oom_score_adj, open until the request is read (see limit_resources)
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class IsolationError(Exception):
    """A setup step failed; the child must not run anything."""


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise IsolationError(f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    _check(_libc.prctl(option, arg2, arg3, 0, 0), f"prctl({option})")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def private_filesystems(profile: dict, workdir: str, uid: int, gid: int) -> None:
    """Steps 1-2: own mount and IPC (and, for a session, network) namespaces; fresh size-capped
    tmpfs for every writable place.

    Nothing one execution writes (files, /dev/shm segments, SysV objects) survives it,
    because all of it lives in namespaces that die with the execution's last process.
    """
    # A session runs beside other sessions in the same jail: its own network namespace too,
    # or an abstract unix socket (a name in the network namespace, no file) would be a channel
    # from one session to another. A stateless execution never has a neighbour that runs code.
    net = CLONE_NEWNET if profile.get("session") else 0
    # Its own cgroup namespace: /proc/self/cgroup shows "/" (a session: its own cgroup's name),
    # never the jail's host-side name, which carries nsjail's host pid.
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWCGROUP | net), "unshare(mount, ipc, cgroup)")
    # Without this, mounts below would propagate back into the zygote's namespace.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    _mount("tmpfs", workdir, "tmpfs", flags, f"size={profile['workdir_bytes']},mode=0755,uid={uid},gid={gid}")
    _mount("tmpfs", "/tmp", "tmpfs", flags, f"size={profile['tmp_bytes']},mode=1777")
    os.mkdir(MNT_TARGET)  # the jail's /mnt is a link to it (host/jail.py)
    os.chmod(MNT_TARGET, 0o1777)
    os.symlink(workdir, MNT_TARGET + "/data")  # /mnt/data, where LibreChat's models write: the working directory
    _mount("tmpfs", "/dev/shm", "tmpfs", flags, f"size={profile['shm_bytes']},mode=1777")
    # A private /proc that hides processes of other uids (the zygote runs as another uid).
    _mount("proc", "/proc", "proc", flags, "hidepid=invisible")


def mask_proc(masks: list) -> None:
    """Step 1c: a fixed stand-in (host/jail.proc_masks) over each /proc file that counts what the
    whole host does (locks, load, CPU and memory totals, the last pid handed out): none of them
    may carry another tenant's activity to this one."""
    for src, dst in masks:
        _mount(src, dst, None, MS_BIND)


def private_devices(devices: dict, uid: int) -> None:
    """Step 1b, a session's child only: its uid's own device nodes over the jail's (/dev/null,
    /dev/urandom, ...), so a file lock on one is never seen by another session of the same jail;
    then the other uids' sets go out of this mount namespace."""
    base = f"{devices['dir']}/{uid}"
    for name in devices["names"]:
        _mount(f"{base}/{name}", f"/dev/{name}", None, MS_BIND)
    _check(_libc.umount2(devices["dir"].encode(), MNT_DETACH), f"umount {devices['dir']}")


def close_fds(keep_below: int) -> None:
    """Step 3: close every fd but the execution's own (0..keep_below-1)."""
    os.closerange(keep_below, 1 << 20)


def limit_resources(profile: dict) -> None:
    """Step 4: the OOM killer takes the running execution first, never the zygote; rlimits
    with hard = soft so nothing can raise them.

    A waiting child gets 500, and 1000 once it has read its request (runner.serve, through the
    fd kept here): an execution that hits the memory limit is killed before the children
    waiting beside it (which must serve the next requests), and those before the zygote and the
    fork servers (0; lowering their score would need CAP_SYS_RESOURCE, which hosts may not
    grant). Spares are chosen before the execution only if its limit is tiny (under ~64 MiB)
    and it is small itself. The fd is kept because, once not dumpable, the child's /proc files
    belong to the jail's root."""
    # One open: the kernel takes every write to this file whole, whatever the offset, so the
    # runner's later write of 1000 goes through the same fd.
    fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
    os.write(fd, str(OOM_SCORE_WAITING).encode())
    if fd != OOM_FD:
        os.dup2(fd, OOM_FD, inheritable=False)
        os.close(fd)
    # A session lives across calls: its CPU time is counted per call by the zygote instead
    # (guest/session_loop.py), as RLIMIT_CPU would add up every call the session makes.
    cpu = resource.RLIM_INFINITY if profile.get("session") else profile["cpu_seconds"]
    for res, value in (
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, profile["file_size_bytes"]),
        (resource.RLIMIT_NOFILE, profile["open_files"]),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(res, (value, value))


def empty_bounding_set() -> None:
    """Drop every capability from the bounding set, one call each (the kernel takes no mask). The
    fork server does it once at its start: its children inherit the empty set (it limits what an
    execve may gain, and the server never execs), so a child pays one check instead of 41 calls."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        _prctl(PR_CAPBSET_DROP, cap)


def drop_privileges(uid: int, gid: int, parent: int) -> None:
    """Step 5: no capabilities in any set, no way to regain them, not dumpable."""
    # The bounding set can only be emptied while we still hold CAP_SETPCAP, i.e. before setuid.
    # Normally the fork server emptied it already (fail closed: if not, empty it here).
    if _libc.prctl(PR_CAPBSET_READ, 0, 0, 0, 0) != 0:
        empty_bounding_set()
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # clears effective and permitted, but not inheritable
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_DUMPABLE, 0)
    # A uid change clears the parent-death signal, so it is set only now; then close the
    # race where the parent (the fork server) died before the prctl took effect.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        raise IsolationError("the fork server died during setup")


def load_seccomp(bpf: bytes) -> None:
    """Step 6: load the allow-list filter the zygote compiled once (pyseccomp) from policies/."""
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0), "seccomp")


def reseed() -> None:
    """Step 7: every fork would otherwise replay the zygote's RNG streams."""
    random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        # 128 bits from the kernel; seed() with no argument costs twice as much for the same.
        np.random.seed(np.frombuffer(os.urandom(16), dtype=np.uint32))
    # Libraries that keep a private generator made at import time (in the zygote).
    sympy_random = sys.modules.get("sympy.core.random")
    if sympy_random is not None:
        sympy_random.rng.seed()


def lower_priority() -> None:
    """Step 0, first of all: nice 19. The zygote shares the slot's CPU quota with the execution;
    at nice 19 a fork bomb's hundred processes still cannot starve the zygote's wall clock.
    Without CAP_SYS_NICE (and RLIMIT_NICE 0) the code cannot lower it again. Done before the
    rest of the set-up, so a spare being made while another child runs a request (or tears
    down) takes the CPU from it on equal terms, not at nice 0."""
    os.setpriority(os.PRIO_PROCESS, 0, 19)


def own_process_group(profile: dict) -> None:
    """Step 0: the execution's own process group. The filter refuses setsid and setpgid, so
    every process the code makes stays in it, and one kill(-pgid) ends them all. A session's,
    beside other sessions in one jail, is also its own POSIX session: SIGCONT may be sent to any
    process of the sender's session whatever its uid, so in a shared one, one session's
    kill(-1, SIGCONT) would resume another between its calls."""
    if profile.get("session"):
        os.setsid()
    else:
        os.setpgid(0, 0)


def isolate(profile: dict, bpf: bytes, *, workdir: str, uid: int, gid: int, parent: int,
            masks: list = (), devices: dict | None = None) -> None:
    lower_priority()
    own_process_group(profile)
    private_filesystems(profile, workdir, uid, gid)
    mask_proc(masks)
    if devices:
        private_devices(devices, uid)
    close_fds(keep_below=4)
    limit_resources(profile)
    drop_privileges(uid, gid, parent)
    load_seccomp(bpf)
    reseed()
    os.chdir(workdir)
