"""Compile the seccomp policy (policies/seccomp.toml, sent by the host as JSON) into BPF, and
arm the reporter that names a refused syscall.

The zygote compiles once with pyseccomp and exports the program; each child loads the bytes
with one prctl. A syscall the policy kills is trapped (SECCOMP_RET_TRAP): the kernel skips it
and raises SIGSYS, whose handler (armed here, in the zygote, so every child inherits it) writes
the syscall's name to stderr and then makes a second refused call with SIGSYS back at its
default action, so the kernel itself ends the whole process with SIGSYS (outcome
policy_violation). Nothing can change SIGSYS's disposition after that: rt_sigaction(SIGSYS, act)
is answered 0 without effect by the filter, and the program may not send SIGSYS. A program can
therefore hide the name (block SIGSYS, close stderr), never survive the refused call or forge
the outcome. A syscall from a foreign architecture (i386 via int 0x80, x32) is killed outright.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal

# What pyseccomp asks ctypes.util.find_library for when it is imported, and the name the dynamic
# loader knows each by on glibc Linux.
_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}


def _import_pyseccomp():
    """pyseccomp (0.1.2, pinned by the image build) finds libc and libseccomp with
    ctypes.util.find_library at import, which runs `ldconfig -p` once for each: two processes
    (about 5 ms each) at every jail's start. pyseccomp takes no path, so find_library answers
    with the sonames above while it imports, when the loader can open them (else as before)."""
    import ctypes.util

    original = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        soname = _SONAMES.get(name)
        if soname is not None:
            try:
                ctypes.CDLL(soname)
                return soname
            except OSError:
                pass
        return original(name)

    ctypes.util.find_library = find_library
    try:
        import pyseccomp
    finally:
        ctypes.util.find_library = original
    return pyseccomp


sc = _import_pyseccomp()

_OPS = {"eq": sc.EQ, "ne": sc.NE, "lt": sc.LT, "le": sc.LE, "gt": sc.GT, "ge": sc.GE, "masked_eq": sc.MASKED_EQ}

# What the reporter writes; the host looks for the last such line (sandbox/wire.py).
MARKER = "[sandbox] policy violation: refused system call "
# No kernel has this syscall, and no policy allows it: it always meets the default action.
_ALWAYS_REFUSED = 1023
_SA_SIGINFO, _SA_ONSTACK, _SA_RESETHAND = 0x4, 0x08000000, 0x80000000


def _action(name: str) -> int:
    if name == "allow":
        return sc.ALLOW
    if name == "kill":
        return sc.TRAP  # see the module docstring: the reporter turns the trap into the kill
    if name.startswith("E") and hasattr(errno, name):
        return sc.ERRNO(getattr(errno, name))
    if name == "ignore":
        return sc.ERRNO(0)  # the call "succeeds" and does nothing
    raise ValueError(f"unknown seccomp action {name!r}")


def _arg(cond: dict) -> sc.Arg:
    op = _OPS[cond["op"]]
    if op == sc.MASKED_EQ:
        return sc.Arg(cond["arg"], op, cond["mask"], cond["value"])
    return sc.Arg(cond["arg"], op, cond["value"])


def compile_policy(policy: dict) -> bytes:
    """Build the filter described by the policy and return its BPF program. Also arms the
    SIGSYS reporter in the calling process (the zygote), which every child inherits."""
    f = sc.SyscallFilter(_action(policy.get("default", "kill")))
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    f.set_attr(sc.Attr.CTL_NNP, 0)  # the child sets no_new_privs itself, earlier, with its caps drop
    for name in policy["allow"]:
        f.add_rule(sc.ALLOW, name)
    for name, err in policy.get("errno", {}).items():
        f.add_rule(_action(err), name)
    for rule in policy.get("rules", []):
        f.add_rule(_action(rule["action"]), rule["syscall"], *(_arg(c) for c in rule["when"]))
    fd = os.memfd_create("seccomp-bpf")
    try:
        f.export_bpf(_Fd(fd))
        bpf = os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)
    arm_reporter()
    return bpf


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


# -- the SIGSYS reporter ---------------------------------------------------------------------

class _SigAction(ctypes.Structure):
    # glibc's struct sigaction on Linux (x86_64 and aarch64 alike).
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]


_HANDLER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_names: dict[int, str] = {}
_handler = None
_libc = None


def syscall_name(nr: int) -> str:
    """The native architecture's name for a syscall number (or the number itself)."""
    if nr not in _names:
        try:
            name = sc.resolve_syscall(sc.system_arch(), nr)
            _names[nr] = name.decode() if isinstance(name, bytes) else str(nr)
        except Exception:  # noqa: BLE001 - an unknown number has no name
            _names[nr] = str(nr)
    return _names[nr]


def _on_sigsys(signum: int, info: int, context: int) -> None:
    # siginfo_t: si_signo, si_errno, si_code, padding, then _sigsys {void *call_addr; int syscall}.
    nr = ctypes.c_int.from_address(info + 24).value
    name = _names.get(nr) or str(nr)
    try:
        os.write(2, f"\n{MARKER}{name} (number {nr}); the sandbox ended the program\n".encode())
    except OSError:
        pass
    # SA_RESETHAND put SIGSYS back at its default action on delivery: this refused call ends
    # the process with SIGSYS, as the kernel's own kill would have.
    _libc.syscall(ctypes.c_long(_ALWAYS_REFUSED))
    os._exit(128 + signal.SIGSYS)  # unreachable unless the filter was never loaded


def arm_reporter() -> None:
    """Install the SIGSYS handler in this process (inherited across fork, reset by exec)."""
    global _handler, _libc
    if _handler is not None:
        return
    for nr in range(0, 512):  # names resolved now: the handler must not call into libseccomp
        syscall_name(nr)
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.syscall.restype = ctypes.c_long
    _handler = _HANDLER_TYPE(_on_sigsys)
    act = _SigAction()
    act.handler = ctypes.cast(_handler, ctypes.c_void_p).value
    act.flags = _SA_SIGINFO | _SA_ONSTACK | _SA_RESETHAND
    if _libc.sigaction(signal.SIGSYS, ctypes.byref(act), None) != 0:
        raise OSError(ctypes.get_errno(), "sigaction(SIGSYS)")
