"""The execution's identity and environment: no host secret, an unprivileged uid in a user
namespace that does not map host root, no capabilities in any set, no_new_privs, a seccomp
filter, not dumpable, its own hostname, and no way to touch the zygote.
"""

from __future__ import annotations

import errno
import os
import socket

import pytest

from sandbox import Outcome

from ._helpers import assert_alive, describe, expect, one, run
from .conftest import SECRET_ENV, SECRET_VALUE

ALLOWED_ENV = {"PATH", "HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "MPLBACKEND", "SANDBOX_MPL_SEED",
               "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "PYTHONDONTWRITEBYTECODE", "MPLCONFIGDIR"}


def test_no_host_secret_in_the_environment(sb1):
    # Expected: ok; SANDBOX_TEST_SECRET, set in the host process before sb1 started its jail,
    # appears nowhere in the execution: not in os.environ, not in the C environ, and every
    # variable present comes from the engine's allow-list (or is set by a preloaded library).
    assert os.environ[SECRET_ENV] == SECRET_VALUE  # the host really has it
    r = run(sb1, """
        import os
        env = _ct.POINTER(_ct.c_char_p).in_dll(_libc, "environ")
        raw, i = [], 0
        while env[i]:
            raw.append(env[i].decode(errors="replace"))
            i += 1
        evidence(keys=sorted(os.environ), raw=raw, proc1=errno_of(open, "/proc/1/environ"),
                 ld=os.environ.get("LD_LIBRARY_PATH"))
    """)
    expect(r, Outcome.OK)
    assert SECRET_VALUE not in r.stdout and SECRET_ENV not in r.stdout, describe(r)
    ev = one(r)
    assert ev["proc1"] == errno.ENOENT, ev
    # Libraries the zygote preloads may set their own (KMP_* from OpenMP, LD_LIBRARY_PATH into
    # the image from cv2); nothing else.
    extra = {k for k in ev["keys"] if k not in ALLOWED_ENV and not k.startswith("KMP_")} - {"LD_LIBRARY_PATH"}
    assert extra == set(), extra
    if ev["ld"] is not None:
        assert all(p.startswith("/var/lib/sandbox/images/") for p in ev["ld"].split(":") if p), ev["ld"]
    host_only = {k for k in os.environ if k not in ALLOWED_ENV} - {"PATH"}
    assert not host_only & set(ev["keys"]), host_only & set(ev["keys"])


def test_identity_is_an_unprivileged_uid_of_its_own(sb):
    # Expected: ok; real, effective and saved uid and gid are one uid of the mapped range
    # 1000..1063 (each live child has its own), no supplementary groups, and none of them can
    # be changed back to 0 (EPERM from the filter).
    r = run(sb, """
        import os
        evidence(uid=os.getresuid(), gid=os.getresgid(), groups=os.getgroups(),
                 setuid=errno_of(os.setuid, 0), setresuid=errno_of(os.setresuid, 0, 0, 0),
                 setgid=errno_of(os.setgid, 0), setgroups=errno_of(os.setgroups, [0]),
                 seteuid=errno_of(os.seteuid, 0), setfsuid=raw_syscall(122, 0))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    uid = ev["uid"][0]
    assert 1000 <= uid < 1064 and ev["uid"] == [uid] * 3 and ev["gid"] == [uid] * 3 and ev["groups"] == [], ev
    for k in ("setuid", "setresuid", "setgid", "setgroups", "seteuid"):
        assert ev[k] == errno.EPERM, ev
    assert ev["setfsuid"] == [-1, errno.EPERM], ev


@pytest.mark.parametrize("flavor", ["lean", "full"])
def test_capabilities_no_new_privs_seccomp_and_dumpable(sb, flavor):
    # Expected: ok; every capability set is empty (inheritable, permitted, effective, bounding,
    # ambient), NoNewPrivs is 1, one seccomp filter is loaded (mode 2: the bytes the zygote
    # compiled once, loaded by each child), and the process is not dumpable (so no other process
    # of uid 1000 can ptrace or read its memory). In children of both fork servers: the bounding
    # set is emptied once per fork server, the rest in every child.
    r = run(sb, ("""
        import numpy
    """ if flavor == "full" else "") + """
        status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
        keys = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters")
        _libc.prctl.restype = _ct.c_int
        evidence(status={k: status[k].strip() for k in keys}, dumpable=_libc.prctl(3, 0, 0, 0, 0),
                 nnp=_libc.prctl(39, 0, 0, 0, 0), seccomp=_libc.prctl(21, 0, 0, 0, 0))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    st = ev["status"]
    for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[k], 16) == 0, (k, st)
    # Two filters: the jail-wide one that hands sysinfo to its notifier (guest/sysinfo.py), the policy.
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2" and int(st["Seccomp_filters"]) == 2, st
    assert ev["dumpable"] == 0 and ev["nnp"] == 1 and ev["seccomp"] == 2, ev


def test_user_namespace_does_not_map_host_root(sb):
    # Expected: ok; the uid/gid maps hold exactly two single-id ranges to unprivileged host ids,
    # so host root (and every other host uid) is unmapped: root-owned host files, such as the
    # setuid-root /usr/bin/su, appear owned by the overflow uid and their setuid bit is useless.
    r = run(sb, """
        import os
        maps = {n: [l.split() for l in open(f"/proc/self/{n}").read().splitlines()] for n in ("uid_map", "gid_map")}
        st = os.stat("/usr/bin/python3")
        evidence(maps=maps, owner=st.st_uid, setgroups=open("/proc/self/setgroups").read().strip())
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    for name in ("uid_map", "gid_map"):
        rows = sorted((int(a), int(b), int(c)) for a, b, c in ev["maps"][name])
        assert rows == [(0, 100000, 1), (1000, 101000, 64)], (name, rows)
    assert ev["owner"] == 65534, ev  # host root is unmapped: shows as the overflow uid


def test_hostname_is_the_jails_own(sb):
    # Expected: ok; the UTS namespace gives the jail its own hostname, not the host's.
    r = run(sb, """
        import os, socket
        evidence(node=os.uname().nodename, host=socket.gethostname())
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["node"] == ev["host"] == "sandbox", ev
    assert socket.gethostname() != "sandbox"  # so the check above tells the two apart


def test_zygote_cannot_be_signalled_or_reprioritised(sb):
    # Expected: ok; signals to pid 1 (the zygote, another uid) and to the parent (the fork
    # server, another uid) are refused, kill(-1, SIGKILL) reaches nothing outside the execution,
    # priority/affinity/rlimits of pid 1 cannot be changed; the sandbox answers the next run.
    r = run(sb, """
        import os, resource, signal
        evidence(kill=errno_of(os.kill, 1, signal.SIGKILL), term=errno_of(os.kill, 1, signal.SIGTERM),
                 stop=errno_of(os.kill, 1, signal.SIGSTOP), all=errno_of(os.kill, -1, signal.SIGKILL),
                 prio=errno_of(os.setpriority, os.PRIO_PROCESS, 1, 19),
                 affinity=errno_of(os.sched_setaffinity, 1, {0}),
                 rlimit=errno_of(resource.prlimit, 1, resource.RLIMIT_NPROC, (0, 0)),
                 group=errno_of(os.killpg, 1, signal.SIGKILL), ppid=os.getppid(),
                 parent=errno_of(os.kill, os.getppid(), signal.SIGKILL), me=os.getpid(),
                 # evaluated last: both still exist (EPERM to a probe, not ESRCH)
                 zygote_after=errno_of(os.kill, 1, 0), parent_after=errno_of(os.kill, os.getppid(), 0))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    for k in ("kill", "term", "stop", "prio", "affinity", "rlimit"):
        assert ev[k] == errno.EPERM, ev
    # kill(-1) (and killpg(1), the same call) reports success when it found other processes,
    # even though every one of them refused: what matters is that nothing was killed.
    assert ev["all"] in (None, errno.ESRCH) and ev["group"] in (None, errno.EPERM, errno.ESRCH), ev
    assert ev["ppid"] not in (0, ev["me"]) and ev["parent"] == errno.EPERM, ev
    assert ev["zygote_after"] == errno.EPERM and ev["parent_after"] == errno.EPERM, ev
    assert_alive(sb)
    assert_alive(sb)


def test_waiting_children_cannot_be_signalled_or_seen(sb1):
    # Expected: ok; the isolated children that wait beside a running execution for the next
    # requests (the fork servers' spares) each run as a uid of their own, so the execution can
    # signal none of them: probing every pid finds no process it may signal, kill(-1) with
    # SIGSTOP and SIGKILL reaches nothing, and the next runs on the same (one-slot) jail, which
    # take those spares, are served normally. With a shared uid, kill(-1) killed the spares.
    r = run(sb1, """
        import os, signal
        me = os.getpid()
        reachable = [pid for pid in range(2, 4096) if pid != me and errno_of(os.kill, pid, 0) is None]
        evidence(reachable=reachable, stop=errno_of(os.kill, -1, signal.SIGSTOP),
                 kill=errno_of(os.kill, -1, signal.SIGKILL),
                 visible=[p for p in os.listdir("/proc") if p.isdigit() and int(p) != me])
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    # (kill(-1) reports success whenever processes exist, even if each one refused.)
    assert ev["reachable"] == [] and ev["visible"] == [], ev
    for code in ("print(1)", "import numpy\nprint(1)", "print(1)", "import numpy\nprint(1)"):
        r = sb1.run(code)
        assert r.outcome is Outcome.OK and r.stdout == "1\n", describe(r)
