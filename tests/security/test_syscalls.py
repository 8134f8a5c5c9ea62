"""Mount, namespace, ptrace and other kernel-surface syscalls against the seccomp allow-list
(policies/seccomp.toml).

Kill-listed syscalls end the whole process with SIGSYS (outcome policy_violation, and the line
after the call is never printed); errno-listed ones return the errno the policy names, which
is chosen so it differs from what the kernel itself would answer where possible (the test then
proves the filter, not the kernel, refused). Foreign ABIs (x32, i386 via int 0x80) are killed by
the bad-arch action; clone3 gets ENOSYS so glibc falls back to the argument-filtered clone.
"""

from __future__ import annotations

import errno
import textwrap

import pytest

from sandbox import Outcome

from ._helpers import describe, expect, one, run

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWPID = 0x00020000, 0x10000000, 0x40000000, 0x20000000
CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWCGROUP = 0x08000000, 0x04000000, 0x02000000
SIGCHLD = 17

# (name, x86_64 syscall number, args). If the filter let any of these through, the kernel
# would answer with an errno and the program would print SURVIVED.
KILLED = [
    ("mount", 165, (0, 0, 0, 0, 0)),
    ("umount2", 166, (0, 0)),
    ("pivot_root", 155, (0, 0)),
    ("chroot", 161, (0,)),
    ("unshare_newuser", 272, (CLONE_NEWUSER,)),
    ("unshare_newnet", 272, (CLONE_NEWNET,)),
    ("unshare_newns", 272, (CLONE_NEWNS,)),
    ("setns", 308, (0, 0)),
    ("clone_newuser", 56, (CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)),
    ("clone_newnet", 56, (CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0)),
    ("clone_newpid", 56, (CLONE_NEWPID | SIGCHLD, 0, 0, 0, 0)),
    ("clone_newns", 56, (CLONE_NEWNS | SIGCHLD, 0, 0, 0, 0)),
    ("clone_newcgroup_uts_ipc", 56, (CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | SIGCHLD, 0, 0, 0, 0)),
    ("ptrace_traceme", 101, (0, 0, 0, 0)),
    ("ptrace_attach_zygote", 101, (16, 1, 0, 0)),
    ("process_vm_readv_zygote", 310, (1, 0, 1, 0, 1, 0)),
    ("process_vm_writev_zygote", 311, (1, 0, 1, 0, 1, 0)),
    ("pidfd_open_zygote", 434, (1, 0)),
    ("pidfd_getfd", 438, (0, 0, 0)),
    ("pidfd_send_signal", 424, (0, 9, 0, 0)),
    ("keyctl", 250, (0, 0, 0, 0, 0)),
    ("add_key", 248, (0, 0, 0, 0, 0)),
    ("request_key", 249, (0, 0, 0, 0)),
    ("bpf", 321, (0, 0, 0)),
    ("userfaultfd", 323, (0,)),
    ("io_uring_setup", 425, (8, 0)),
    ("io_setup", 206, (8, 0)),
    ("perf_event_open", 298, (0, 0, -1, -1, 0)),
    ("init_module", 175, (0, 0, 0)),
    ("finit_module", 313, (0, 0, 0)),
    ("delete_module", 176, (0, 0)),
    ("open_by_handle_at", 304, (0, 0, 0)),
    ("name_to_handle_at", 303, (0, 0, 0, 0, 0)),
    ("kexec_load", 246, (0, 0, 0, 0)),
    ("kexec_file_load", 320, (0, 0, 0, 0, 0)),
    ("reboot", 169, (0xfee1dead, 672274793, 0x1234567, 0)),
    ("syslog", 103, (3, 0, 0)),
    ("fsopen", 430, (0, 0)),
    ("open_tree", 428, (-100, 0, 0)),
    ("move_mount", 429, (0, 0, 0, 0, 0)),
    ("mount_setattr", 442, (0, 0, 0, 0, 0)),
    ("kcmp", 312, (1, 1, 0, 0, 0)),
    ("fanotify_init", 300, (0, 0)),
    ("acct", 163, (0,)),
    ("swapon", 167, (0, 0)),
    ("quotactl", 179, (0, 0, 0, 0)),
    ("iopl", 172, (3,)),
    ("ioperm", 173, (0, 1024, 1)),
    ("modify_ldt", 154, (0, 0, 0)),
    ("settimeofday", 164, (0, 0)),
    ("clock_settime", 227, (0, 0)),
    ("sethostname", 170, (0, 0)),
    ("memfd_secret", 447, (0,)),
    ("prctl_set_mm", 157, (35, 1, 0, 0, 0)),
    ("prctl_capbset_drop", 157, (24, 0, 0, 0, 0)),
    ("prctl_set_ptracer_any", 157, (0x59616d61, (1 << 64) - 1 & 0x7FFFFFFFFFFFFFFF, 0, 0, 0)),
    ("prctl_set_seccomp_strict", 157, (22, 1, 0, 0, 0)),
    ("fcntl_getown_ex", 72, (1, 16, 0)),
]


@pytest.mark.parametrize("name,nr,args", KILLED, ids=[k[0] for k in KILLED])
def test_kill_listed_syscall_ends_in_policy_violation(sb, name, nr, args):
    # Expected: policy_violation (SIGSYS); "SURVIVED" is never printed.
    r = run(sb, f"""
        print("BEFORE", flush=True)
        ret, err = raw_syscall({nr}, *{args!r})
        print("SURVIVED", ret, err, flush=True)
    """)
    expect(r, Outcome.POLICY_VIOLATION)
    assert r.stdout == "BEFORE\n", describe(r)
    assert r.exit_code == -31, describe(r)


# (name, program, expected errno). The kernel itself would have allowed every one of these
# (or answered another errno), so the errno proves the filter answered.
REFUSED = [
    ("flock_on_shared_image_inode", """
        import fcntl, os
        fd = os.open("/usr/bin/python3", os.O_RDONLY)
        res = errno_of(fcntl.flock, fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
     """, errno.ENOLCK),
    # F_SETLK is allowed since issue #12 (SQLite); testing for another's lock is not
    # (tests/security/README.md, "File locks"; test_fidelity_rules.py).
    ("fcntl_getlk", """
        import fcntl, struct
        f = open("/work/x", "w")
        res = errno_of(fcntl.fcntl, f, fcntl.F_GETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0) + bytes(4))
     """, errno.ENOLCK),
    ("fcntl_ofd_setlk", """
        import fcntl, os, struct
        fd = os.open("/usr/bin/python3", os.O_RDONLY)
        res = errno_of(fcntl.fcntl, fd, 37, struct.pack("hhqqi", 0, 0, 0, 0, 0) + bytes(4))
     """, errno.ENOLCK),
    ("fcntl_setown", """
        import fcntl, os
        r, w = os.pipe()
        res = errno_of(fcntl.fcntl, r, fcntl.F_SETOWN, os.getpid())
     """, errno.EPERM),
    ("fcntl_setsig_sigsys", """
        import fcntl, os
        r, w = os.pipe()
        res = errno_of(fcntl.fcntl, r, 10, 31)
     """, errno.EPERM),
    ("fcntl_notify", """
        import fcntl, os
        fd = os.open("/work", os.O_RDONLY)
        res = errno_of(fcntl.fcntl, fd, fcntl.F_NOTIFY, fcntl.DN_CREATE)
     """, errno.EPERM),
    ("timer_create", """
        ret, res = raw_syscall(222, 0, 0, 0)
        assert ret == -1
     """, errno.EPERM),
    ("mq_open", """
        ret, res = raw_syscall(240, 0, 0, 0, 0)
        assert ret == -1
     """, errno.EPERM),
    ("rt_sigqueueinfo_sigsys", """
        import os
        info = (_ct.c_int * 32)(31, 0, -1)
        ret, res = raw_syscall(129, os.getpid(), 31, _ct.addressof(info))
        assert ret == -1
     """, errno.EPERM),
    ("personality_read_implies_exec", """
        ret, res = raw_syscall(135, 0x0400000)
        assert ret == -1
     """, errno.EPERM),
    ("sched_setscheduler_idle", """
        import os
        res = errno_of(os.sched_setscheduler, 0, os.SCHED_IDLE, os.sched_param(0))
     """, errno.EPERM),
    ("setxattr_user_namespace", """
        import os
        open("/work/f", "w").close()
        res = errno_of(os.setxattr, "/work/f", "user.x", b"1")
     """, errno.EPERM),
    ("splice", """
        import os
        r1, w1 = os.pipe(); r2, w2 = os.pipe()
        os.write(w1, b"abc")
        res = errno_of(os.splice, r1, w2, 3)
     """, errno.EPERM),
    ("vmsplice", """
        ret, res = raw_syscall(278, 1, 0, 0, 0)
        assert ret == -1
     """, errno.EPERM),
    ("mlock", """
        buf = _ct.create_string_buffer(4096)
        ret, res = raw_syscall(149, _ct.addressof(buf), 4096)
        assert ret == -1
     """, errno.EPERM),
    ("ioprio_set", """
        ret, res = raw_syscall(251, 1, 0, (3 << 13))
        assert ret == -1
     """, errno.EPERM),
    ("sync", """
        ret, res = raw_syscall(162)
        assert ret == -1
     """, errno.EPERM),
    ("landlock_create_ruleset", """
        ret, res = raw_syscall(444, 0, 0, 1)
        assert ret == -1
     """, errno.ENOSYS),
    # Nothing may leave the execution's process group: the zygote ends it with one kill(-pgid).
    ("setsid", """
        import os
        res = errno_of(os.setsid)
     """, errno.EPERM),
    ("setpgid", """
        import os
        res = errno_of(os.setpgid, 0, 0)
     """, errno.EPERM),
    # A program's own seccomp filter could fake a policy violation.
    ("seccomp", """
        ret, res = raw_syscall(317, 0, 0, 0)
        assert ret == -1
     """, errno.EPERM),
    # inotify on the shared read-only binds: a side channel to the host and between slots.
    ("inotify_init1", """
        ret, res = raw_syscall(294, 0)
        assert ret == -1
     """, errno.EPERM),
    # Real-time signals queue, and the queue counts against host root's quota.
    ("kill_realtime_signal", """
        import os, signal
        res = errno_of(os.kill, os.getpid(), signal.SIGRTMIN)
     """, errno.EPERM),
]


@pytest.mark.parametrize("name,body,err", REFUSED, ids=[x[0] for x in REFUSED])
def test_errno_listed_syscall_is_refused_politely(sb, name, body, err):
    # Expected: ok; the call fails with the policy's errno and the program carries on.
    r = run(sb, textwrap.dedent(body) + "\nevidence(res=res)\nprint('SURVIVED')\n")
    expect(r, Outcome.OK)
    assert one(r)["res"] == err, describe(r)
    assert "SURVIVED" in r.stdout


def test_clone3_gets_enosys_and_threads_and_fork_still_work(sb):
    # Expected: ok; clone3 (even asking for a new user namespace) returns ENOSYS instead of killing,
    # and glibc's fallback to clone() keeps threads, fork and subprocess working.
    r = run(sb, """
        import os, subprocess, sys, threading
        class CloneArgs(_ct.Structure):
            _fields_ = [(n, _ct.c_uint64) for n in ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal",
                        "stack", "stack_size", "tls", "set_tid", "set_tid_size", "cgroup")]
        args = CloneArgs(flags=0x10000000, exit_signal=17)
        ret, err = raw_syscall(435, _ct.addressof(args), _ct.sizeof(args))
        if ret == 0:
            os._exit(0)  # a child in a new user namespace: must never happen
        out = []
        t = threading.Thread(target=lambda: out.append(threading.get_native_id()))
        t.start(); t.join()
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        _, status = os.waitpid(pid, 0)
        sub = subprocess.run(["/bin/echo", "sub"], capture_output=True, text=True).stdout
        evidence(ret=ret, err=err, thread=len(out), child=os.waitstatus_to_exitcode(status), sub=sub)
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["ret"] == -1 and ev["err"] == errno.ENOSYS, ev
    assert ev["thread"] == 1 and ev["child"] == 7 and ev["sub"] == "sub\n", ev


def test_x32_abi_syscall_is_killed(sb):
    # Expected: policy_violation; the x32 ABI (syscall number | 0x40000000) is a foreign arch for
    # the filter, so even a harmless x32 getpid dies, and an x32 mount never reaches the kernel.
    r = run(sb, """
        print("BEFORE", flush=True)
        ret, err = raw_syscall(39 | 0x40000000)
        print("SURVIVED getpid", ret, err, flush=True)
        ret, err = raw_syscall(165 | 0x40000000, 0, 0, 0, 0, 0)
        print("SURVIVED mount", ret, err, flush=True)
    """)
    expect(r, Outcome.POLICY_VIOLATION)
    assert r.stdout == "BEFORE\n", describe(r)


def test_i386_int80_syscall_is_killed(sb):
    # Expected: policy_violation; `int 0x80` enters the kernel's i386 ABI, whose numbers differ
    # (20 = getpid there, 39 = mkdir): the bad-arch action kills it before it is interpreted.
    r = run(sb, """
        import mmap
        code = bytes([0xb8, 20, 0, 0, 0,   # mov eax, 20 (i386 getpid)
                      0xcd, 0x80,          # int 0x80
                      0xc3])               # ret
        m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        m.write(code)
        fn = _ct.CFUNCTYPE(_ct.c_long)(_ct.addressof(_ct.c_char.from_buffer(m)))
        print("BEFORE", flush=True)
        print("SURVIVED", fn(), flush=True)
    """)
    expect(r, Outcome.POLICY_VIOLATION)
    assert r.stdout == "BEFORE\n", describe(r)


def test_raw_syscall_instruction_bypassing_libc_is_still_filtered(sb):
    # Expected: policy_violation; hand-made machine code issuing `syscall` for mount (165) directly,
    # without libc, meets the same kernel-side filter.
    r = run(sb, """
        import mmap
        code = bytes([0xb8, 165, 0, 0, 0,  # mov eax, 165 (mount)
                      0x0f, 0x05,          # syscall
                      0xc3])               # ret
        m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        m.write(code)
        fn = _ct.CFUNCTYPE(_ct.c_long, _ct.c_long, _ct.c_long, _ct.c_long)(_ct.addressof(_ct.c_char.from_buffer(m)))
        print("BEFORE", flush=True)
        print("SURVIVED", fn(0, 0, 0), flush=True)
    """)
    expect(r, Outcome.POLICY_VIOLATION)
    assert r.stdout == "BEFORE\n", describe(r)


def test_filter_is_inherited_by_forked_children(sb):
    # Expected: ok for the parent; its forked child trying unshare(CLONE_NEWUSER) dies of SIGSYS.
    r = run(sb, """
        import os
        pid = os.fork()
        if pid == 0:
            raw_syscall(272, 0x10000000)
            print("CHILD SURVIVED", flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        evidence(child=os.waitstatus_to_exitcode(status))
    """)
    expect(r, Outcome.OK)
    assert one(r)["child"] == -31 and "CHILD SURVIVED" not in r.stdout, describe(r)


def test_filter_survives_execve(sb):
    # Expected: ok for the parent; a freshly exec'd interpreter (no Python state inherited) is
    # still under the filter: its chroot kills it with SIGSYS.
    r = run(sb, """
        import subprocess, sys
        child = "import ctypes; ctypes.CDLL(None).syscall(161, b'/'); print('EXEC SURVIVED')"
        p = subprocess.run([sys.executable, "-I", "-c", child], capture_output=True, text=True)
        evidence(rc=p.returncode, out=p.stdout)
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["rc"] == -31 and "EXEC SURVIVED" not in ev["out"], ev


def test_blocked_syscall_from_a_thread_kills_the_whole_process(sb):
    # Expected: policy_violation; a thread calling mount takes the whole process with it
    # (KILL_PROCESS, not KILL_THREAD: no half-dead process carries on).
    r = run(sb, """
        import threading, time
        t = threading.Thread(target=lambda: raw_syscall(165, 0, 0, 0, 0, 0))
        t.start(); t.join()
        time.sleep(0.2)
        print("MAIN SURVIVED", flush=True)
    """)
    expect(r, Outcome.POLICY_VIOLATION)
    assert "MAIN SURVIVED" not in r.stdout, describe(r)


def test_terminal_injection_ioctls_have_no_target(sb):
    # Expected: ok; ioctl is allowed wholesale because no fd the program can reach is a terminal:
    # TIOCSTI (push input into a terminal, the classic sandbox escape) fails with ENOTTY/EBADF on
    # every fd the execution holds, on /dev/null, and there is no /dev/tty to open.
    r = run(sb, """
        import fcntl, os, termios
        res = {}
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
        fds.append(os.open("/dev/null", os.O_RDWR))
        for fd in fds:
            res[fd] = errno_of(fcntl.ioctl, fd, termios.TIOCSTI, b"x")
        evidence(res=res, tty=errno_of(os.open, "/dev/tty", os.O_RDWR), isatty=[os.isatty(fd) for fd in (1, 2, 3)])
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert all(v in (errno.ENOTTY, errno.EBADF) for v in ev["res"].values()), ev
    assert ev["tty"] == errno.ENOENT and ev["isatty"] == [False, False, False], ev
