"""ctypes-level tricks: the program is native code as far as the kernel is concerned, so every
guarantee must hold below Python: crashes are contained (crashed, engine unharmed), libc wrappers
of blocked syscalls meet the same filter, and privilege-regaining calls are refused.
"""

from __future__ import annotations

import errno

import pytest

from sandbox import Outcome

from ._helpers import assert_alive, describe, expect, one, run


def test_write_to_arbitrary_memory_crashes(sb):
    # Expected: crashed (SIGSEGV); the engine survives and the next run is clean.
    r = run(sb, """
        print("BEFORE", flush=True)
        _ct.memset(0x10, 0x41, 64)
        print("SURVIVED")
    """)
    expect(r, Outcome.CRASHED)
    assert r.exit_code == -11 and r.stdout == "BEFORE\n", describe(r)
    assert_alive(sb)


def test_jump_to_garbage_crashes(sb):
    # Expected: crashed; calling a function pointer into a non-executable heap buffer is stopped
    # by the MMU (SIGSEGV), not executed.
    r = run(sb, """
        buf = _ct.create_string_buffer(b"\\x0f\\x05\\xc3" * 16)   # syscall; ret  (never runs)
        print("BEFORE", flush=True)
        _ct.CFUNCTYPE(_ct.c_long)(_ct.addressof(buf))()
        print("SURVIVED")
    """)
    expect(r, Outcome.CRASHED)
    assert r.exit_code == -11 and r.stdout == "BEFORE\n", describe(r)


def test_corrupting_the_interpreter_crashes_only_the_execution(sb):
    # Expected: crashed (or error), never sandbox_error; smashing the type pointer of a live
    # object corrupts this process only: the zygote and the next run are untouched.
    r = run(sb, """
        import gc
        victim = [1, 2, 3]
        _ct.memset(id(victim) + 8, 0x41, 8)   # ob_type := 0x4141414141414141
        print("BEFORE", flush=True)
        gc.collect()
        print(victim)
    """)
    expect(r, Outcome.CRASHED, Outcome.ERROR)
    assert r.exit_code != 0, describe(r)
    assert_alive(sb)


def test_libc_abort_is_crashed(sb):
    # Expected: crashed (SIGABRT), no core file (RLIMIT_CORE 0, and the work dir stays empty).
    r = run(sb, """
        print("BEFORE", flush=True)
        _libc.abort()
    """)
    expect(r, Outcome.CRASHED)
    assert r.exit_code == -6 and r.files == [], describe(r)


LIBC_BLOCKED = [
    ("mount", "_libc.mount(b'none', b'/work', b'tmpfs', 0, None)"),
    ("umount2", "_libc.umount2(b'/proc', 2)"),
    ("chroot", "_libc.chroot(b'/tmp')"),
    ("unshare", "_libc.unshare(0x10000000)"),
    ("setns", "_libc.setns(0, 0)"),
    ("ptrace", "_libc.ptrace(0, 0, None, None)"),
    ("pivot_root", "_libc.syscall(155, b'/tmp', b'/tmp')"),
    ("reboot", "_libc.reboot(0x4321fedc)"),
    ("init_module", "_libc.init_module(None, 0, b'')"),
    ("swapoff", "_libc.swapoff(b'/dev/vda')"),
]


@pytest.mark.parametrize("name,call", LIBC_BLOCKED, ids=[c[0] for c in LIBC_BLOCKED])
def test_libc_wrappers_of_blocked_syscalls_are_killed(sb, name, call):
    # Expected: policy_violation; glibc's wrappers issue the same syscalls the filter kills.
    r = run(sb, f"""
        print("BEFORE", flush=True)
        ret = {call}
        print("SURVIVED", ret, _ct.get_errno(), flush=True)
    """)
    expect(r, Outcome.POLICY_VIOLATION)
    assert r.stdout == "BEFORE\n" and r.exit_code == -31, describe(r)


def test_unknown_syscall_number_is_killed(sb):
    # Expected: policy_violation; a number no kernel knows (1000) is not allowed by default
    # (a default of ENOSYS would let a program probe for new syscalls).
    r = run(sb, """
        print("BEFORE", flush=True)
        print("SURVIVED", raw_syscall(1000), flush=True)
    """)
    expect(r, Outcome.POLICY_VIOLATION)
    assert r.stdout == "BEFORE\n", describe(r)


def test_sigsys_handler_cannot_catch_the_kill(sb):
    # Expected: policy_violation; the filter's action is KILL_PROCESS, not TRAP: a SIGSYS handler
    # (or blocking SIGSYS) does not let the program survive a blocked syscall.
    r = run(sb, """
        import signal
        signal.signal(signal.SIGSYS, lambda *a: print("CAUGHT", flush=True))
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGSYS})
        print("BEFORE", flush=True)
        raw_syscall(161, 0)   # chroot
        print("SURVIVED", flush=True)
    """)
    expect(r, Outcome.POLICY_VIOLATION)
    assert r.stdout == "BEFORE\n", describe(r)


def test_prctl_set_dumpable_is_refused(sb):
    # Expected: ok; PR_SET_DUMPABLE=1 (which would make the process ptrace-able and its /proc
    # files readable by uid 1000) fails with EPERM and the process stays non-dumpable.
    r = run(sb, """
        _libc.prctl.restype = _ct.c_int
        _ct.set_errno(0)
        ret = _libc.prctl(4, 1, 0, 0, 0)
        err = _ct.get_errno()
        evidence(ret=ret, err=err, dumpable=_libc.prctl(3, 0, 0, 0, 0), mem=errno_of(open, "/proc/self/mem", "r+b"))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["ret"] == -1 and ev["err"] == errno.EPERM and ev["dumpable"] == 0, ev
    assert ev["mem"] == errno.EACCES, ev  # no writing one's own code pages through /proc/self/mem


def test_libc_setuid_family_refused(sb):
    # Expected: ok; setuid/setreuid/setresuid/setgid/setgroups(0) via libc all return -1/EPERM and
    # the ids are unchanged.
    r = run(sb, """
        import os
        res = {}
        for name, args in (("setuid", (0,)), ("setreuid", (0, 0)), ("setresuid", (0, 0, 0)), ("setgid", (0,)),
                           ("setresgid", (0, 0, 0)), ("setfsgid", (0,))):
            _ct.set_errno(0)
            ret = getattr(_libc, name)(*args)
            res[name] = (ret, _ct.get_errno())
        gid0 = (_ct.c_uint * 1)(0)
        _ct.set_errno(0)
        res["setgroups"] = (_libc.setgroups(1, gid0), _ct.get_errno())
        evidence(res=res, uid=os.getresuid(), gid=os.getresgid(), groups=os.getgroups())
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    for name, (ret, err) in ev["res"].items():
        if name == "setfsgid":
            continue  # returns the previous fsgid, not -1; checked through the ids below
        assert ret == -1 and err == errno.EPERM, (name, ev)
    uid = ev["uid"][0]
    assert 1000 <= uid < 1064 and ev["uid"] == [uid] * 3 and ev["gid"] == [uid] * 3 and ev["groups"] == [], ev


def test_capset_refused_and_capabilities_stay_empty(sb):
    # Expected: ok; capset asking for every capability returns EPERM, capget still reads zeros.
    r = run(sb, """
        class Hdr(_ct.Structure):
            _fields_ = [("version", _ct.c_uint32), ("pid", _ct.c_int)]
        class Data(_ct.Structure):
            _fields_ = [("effective", _ct.c_uint32), ("permitted", _ct.c_uint32), ("inheritable", _ct.c_uint32)]
        full = (Data * 2)(Data(0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), Data(0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF))
        _ct.set_errno(0)
        ret = _libc.capset(_ct.byref(Hdr(0x20080522, 0)), full)
        err = _ct.get_errno()
        now = (Data * 2)()
        _libc.capget(_ct.byref(Hdr(0x20080522, 0)), now)
        evidence(ret=ret, err=err, caps=[(d.effective, d.permitted, d.inheritable) for d in now])
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["ret"] == -1 and ev["err"] == errno.EPERM, ev
    assert ev["caps"] == [[0, 0, 0], [0, 0, 0]], ev
