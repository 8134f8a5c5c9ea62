"""Resource exhaustion: every limit ends the execution (or fails its syscalls) without hurting
the host, the jail or the next execution.

Limits under test: cgroup pids and memory of the slot, RLIMIT_CPU/FSIZE/NOFILE with hard = soft,
size-capped tmpfs for /work, /tmp and /dev/shm, the zygote's wall clock (SIGKILL), and the
stream caps on stdout/stderr/artefacts that keep draining past the cap.
"""

from __future__ import annotations

import errno

from sandbox import Outcome

from ._helpers import assert_alive, describe, expect, one, run

MiB = 1 << 20


def _only_me_left(sb) -> None:
    """Run a program that looks for any other process of the execution's uid in the jail."""
    r = run(sb, """
        import os
        me = os.getpid()
        others = [p for p in range(2, 32769) if p != me and errno_of(os.kill, p, 0) is None]
        evidence(others=others, proc=[p for p in os.listdir("/proc") if p.isdigit()], me=me)
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["others"] == [] and ev["proc"] == [str(ev["me"])], ev


def test_fork_bomb_is_contained_and_cleaned_up(sb1):
    # Expected: timeout (every process forks forever; the pids cgroup makes further forks fail
    # with EAGAIN). The next run in the same jail works and finds no process left behind.
    r = run(sb1, """
        import os, time
        print("BOMB", flush=True)
        failures = 0
        while True:
            try:
                os.fork()
            except OSError as e:
                failures += 1
                if failures == 1 and e.errno == 11:
                    print("EAGAIN", os.getpid(), flush=True)
                time.sleep(0.001)
    """, timeout=2, limits={"max_processes": 32})
    expect(r, Outcome.TIMEOUT)
    assert "EAGAIN" in r.stdout, describe(r)  # the pids limit, not the clock, stopped the growth
    _only_me_left(sb1)


def test_daemon_process_fork_limit_eagain(sb):
    # Expected: ok; with max_processes=8, the execution cannot hold more than 8 processes beyond
    # itself: the next fork fails with EAGAIN (pids cgroup) and the program counts how many it got.
    r = run(sb, """
        import os, time
        kids = []
        err = None
        for _ in range(50):
            try:
                pid = os.fork()
            except OSError as e:
                err = e.errno
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            kids.append(pid)
        for k in kids:
            os.kill(k, 9)
        evidence(n=len(kids), err=err)
    """, limits={"max_processes": 8})
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["err"] == errno.EAGAIN and ev["n"] <= 8, ev


def test_thread_bomb_hits_the_pids_limit(sb):
    # Expected: ok; threads count against the pids cgroup too: thread creation fails well before
    # 500 threads (RuntimeError: can't start new thread), and the program reports the count.
    r = run(sb, """
        import threading, time
        ev = threading.Event()
        threads, err = [], None
        for i in range(500):
            t = threading.Thread(target=ev.wait, daemon=True)
            try:
                t.start()
            except RuntimeError as e:
                err = str(e)
                break
            threads.append(t)
        evidence(n=len(threads), err=err)
        ev.set()
    """, limits={"max_processes": 16})
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["err"] is not None and ev["n"] <= 16, ev
    assert_alive(sb)


def test_memory_bomb_ends_in_memory_limit(sb):
    # Expected: memory_limit (the cgroup OOM killer, reported from the cgroup counter); the next
    # run works.
    r = run(sb, """
        chunks = []
        print("ALLOC", flush=True)
        while True:
            chunks.append(bytearray(16 << 20))
    """, limits={"memory_bytes": 256 * MiB}, timeout=20)
    expect(r, Outcome.MEMORY_LIMIT)
    assert r.stdout == "ALLOC\n", describe(r)
    assert_alive(sb)


def _fill(sb, directory: str, limits: dict) -> dict:
    r = run(sb, f"""
        import os
        written, err, i = 0, None, 0
        block = b"x" * (256 << 10)
        try:
            while written < (64 << 20):
                with open(os.path.join({directory!r}, f"fill{{i}}"), "wb") as f:
                    for _ in range(4):
                        f.write(block)
                        f.flush()
                        written += len(block)
                i += 1
        except OSError as e:
            err = e.errno
        st = os.statvfs({directory!r})
        for n in os.listdir({directory!r}):
            if n.startswith("fill"):
                os.unlink(os.path.join({directory!r}, n))
        evidence(written=written, err=err, size=st.f_blocks * st.f_frsize)
    """, limits=limits)
    expect(r, Outcome.OK)
    return one(r)


def test_disk_fill_of_workdir_stops_at_its_tmpfs_cap(sb):
    # Expected: ok; writing to /work fails with ENOSPC at the per-call cap (8 MiB), which is the
    # tmpfs size the child mounted, not the host disk.
    ev = _fill(sb, "/work", {"workdir_bytes": 8 * MiB, "file_size_bytes": 64 * MiB})
    assert ev["err"] == errno.ENOSPC and ev["size"] == 8 * MiB, ev
    assert 6 * MiB <= ev["written"] <= 8 * MiB, ev


def test_disk_fill_of_tmp_stops_at_its_tmpfs_cap(sb):
    # Expected: ok; same for /tmp with a 4 MiB cap.
    ev = _fill(sb, "/tmp", {"tmp_bytes": 4 * MiB, "file_size_bytes": 64 * MiB})
    assert ev["err"] == errno.ENOSPC and ev["size"] == 4 * MiB, ev
    assert 2 * MiB <= ev["written"] <= 4 * MiB, ev


def test_disk_fill_of_dev_shm_stops_at_its_tmpfs_cap(sb):
    # Expected: ok; same for /dev/shm (isolate 2.6 shared it between boxes) with a 2 MiB cap.
    ev = _fill(sb, "/dev/shm", {"shm_bytes": 2 * MiB, "file_size_bytes": 64 * MiB})
    assert ev["err"] == errno.ENOSPC and ev["size"] == 2 * MiB, ev
    assert 1 * MiB <= ev["written"] <= 2 * MiB, ev


def test_huge_file_is_stopped_by_rlimit_fsize(sb):
    # Expected: ok; a single file may not grow past file_size_bytes (1 MiB): EFBIG, not a signal
    # death and not a host disk full; sparse tricks (seek far and write) fail the same way.
    r = run(sb, """
        import os
        fd = os.open("big", os.O_WRONLY | os.O_CREAT)
        os.write(fd, b"x" * (1 << 20))
        err = errno_of(os.write, fd, b"y" * 4096)
        os.close(fd)
        fd = os.open("sparse", os.O_WRONLY | os.O_CREAT)
        os.lseek(fd, 1 << 40, 0)
        sparse = errno_of(os.write, fd, b"z")
        trunc = errno_of(os.ftruncate, fd, 1 << 30)
        evidence(err=err, size=os.path.getsize("big"), sparse=sparse, trunc=trunc, sparse_size=os.path.getsize("sparse"))
        os.unlink("big"); os.unlink("sparse")
    """, limits={"file_size_bytes": MiB})
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["err"] == errno.EFBIG and ev["size"] == MiB, ev
    assert ev["sparse"] == errno.EFBIG and ev["trunc"] == errno.EFBIG and ev["sparse_size"] == 0, ev


def test_fd_exhaustion_stops_at_rlimit_nofile(sb):
    # Expected: ok; opening files fails with EMFILE at open_files (64), and the hard limit cannot
    # be raised back.
    r = run(sb, """
        import os, resource
        fds, err = [], None
        while len(fds) < 10000:
            try:
                fds.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as e:
                err = e.errno
                break
        raise_err = errno_of(resource.setrlimit, resource.RLIMIT_NOFILE, (100000, 100000))
        evidence(n=len(fds), err=err, raise_err=raise_err, limit=resource.getrlimit(resource.RLIMIT_NOFILE))
    """, limits={"open_files": 64})
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["err"] == errno.EMFILE and ev["n"] <= 64, ev
    assert ev["raise_err"] == "ValueError" and ev["limit"] == [64, 64], ev


def test_rlimits_cannot_be_raised(sb):
    # Expected: ok; hard = soft for CPU, FSIZE and NOFILE, so none can be raised, not even by
    # prlimit on itself; and the zygote's limits cannot be touched (EPERM).
    r = run(sb, """
        import os, resource
        res = {}
        for name in ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE"):
            lim = getattr(resource, name)
            soft, hard = resource.getrlimit(lim)
            res[name] = (soft == hard, errno_of(resource.setrlimit, lim, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)),
                         errno_of(resource.prlimit, 0, lim, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)))
        res["zygote"] = errno_of(resource.prlimit, 1, resource.RLIMIT_NOFILE, (1, 1))
        evidence(res=res, core=resource.getrlimit(resource.RLIMIT_CORE))
    """, limits={"cpu_seconds": 7})
    expect(r, Outcome.OK)
    ev = one(r)
    for name in ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE"):
        assert ev["res"][name][0] is True, ev
        assert ev["res"][name][1] == "ValueError" and ev["res"][name][2] in ("ValueError", errno.EPERM), ev
    assert ev["res"]["zygote"] == errno.EPERM and ev["core"] == [0, 0], ev


def test_cpu_spin_ends_in_cpu_limit(sb):
    # Expected: cpu_limit (RLIMIT_CPU = 1 s ends it with SIGKILL); the generous wall clock is not
    # what stops it.
    r = run(sb, """
        print("SPIN", flush=True)
        while True:
            pass
    """, limits={"cpu_seconds": 1}, timeout=30)
    expect(r, Outcome.CPU_LIMIT)
    assert r.stdout == "SPIN\n", describe(r)


def test_sleep_past_deadline_ends_in_timeout(sb):
    # Expected: timeout (the wall clock ends in SIGKILL; CPU limits never fire on sleep); output
    # printed before the deadline is kept.
    r = run(sb, """
        import time
        print("before the deadline", flush=True)
        time.sleep(3600)
        print("AFTER")
    """, timeout=1)
    expect(r, Outcome.TIMEOUT)
    assert r.stdout == "before the deadline\n", describe(r)
    assert r.usage.wall_ms < 30_000


def test_child_ignoring_sigterm_and_closing_pipes_still_meets_the_deadline(sb):
    # Expected: timeout; a program that closes its stdout/stderr/result pipes (so the zygote sees
    # EOF) and blocks every catchable signal is still ended by the wall clock.
    r = run(sb, """
        import os, signal, time
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM, signal.SIGXCPU):
            signal.signal(s, signal.SIG_IGN)
        for fd in (1, 2, 3):
            os.close(fd)
        while True:
            time.sleep(0.05)
    """, timeout=1)
    expect(r, Outcome.TIMEOUT)
    assert_alive(sb)


def test_infinite_output_is_truncated_and_bounded(sb):
    # Expected: timeout; an endless stream of output is capped at max_stdout_bytes (the zygote
    # keeps draining, so the writer never blocks the engine) and flagged stdout_truncated.
    r = run(sb, """
        import os
        block = b"A" * 65536
        while True:
            os.write(1, block)
    """, timeout=2, limits={"max_stdout_bytes": 100_000})
    expect(r, Outcome.TIMEOUT)
    assert r.stdout_truncated is True and len(r.stdout.encode()) == 100_000, (len(r.stdout), describe(r))
    assert set(r.stdout) == {"A"}


def test_large_finite_output_is_truncated_with_ok_outcome(sb):
    # Expected: ok; 20 MB on stdout and stderr finishes normally, both kept at their caps.
    r = run(sb, """
        import os
        for _ in range(320):
            os.write(1, b"o" * 65536)
            os.write(2, b"e" * 65536)
        print("END")
    """, limits={"max_stdout_bytes": 50_000, "max_stderr_bytes": 30_000})
    expect(r, Outcome.OK)
    assert r.stdout_truncated and r.stderr_truncated, describe(r)
    assert len(r.stdout) == 50_000 and set(r.stdout) == {"o"}
    assert r.stderr.startswith("e" * 30_000) and "e" * 30_001 not in r.stderr


def test_file_artefact_flood_is_capped(sb):
    # Expected: ok; 300 files written to /work (one of 5 MiB) come back at most max_files, within
    # max_file_bytes, with a note about the rest.
    r = run(sb, """
        for i in range(300):
            with open(f"f{i:03}.txt", "w") as f:
                f.write("x" * 1000)
        with open("huge.bin", "wb") as f:
            f.write(b"\\0" * (5 << 20))
        print("DONE")
    """, limits={"max_files": 10, "max_file_bytes": 1 << 20})
    expect(r, Outcome.OK)
    assert len(r.files) <= 10 and sum(f.size for f in r.files) <= 1 << 20, len(r.files)
    assert "dropped" in r.stderr, describe(r)


def test_inotify_instances_cannot_exhaust_the_host_roots_quota(sb):
    # Expected: ok, and root on the host can still create inotify instances while the program
    # holds as many as it can. Kernel ucounts charge every user namespace's usage to its creator
    # as well: the jails' namespaces are created by root (nsjail runs as root), so inotify
    # instances opened in any jail count against *host root's* fs.inotify.max_user_instances
    # (128). The program exhausts it for 1.5 s while the host keeps trying inotify_init1.
    # (Keeps the window short: every root process on this machine is affected while it lasts.)
    import ctypes
    import os
    import threading
    import time

    libc = ctypes.CDLL(None, use_errno=True)
    failures: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            fd = libc.inotify_init1(0o2000000)  # IN_CLOEXEC
            if fd < 0:
                failures.append(ctypes.get_errno())
            else:
                os.close(fd)
            time.sleep(0.02)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    try:
        r = run(sb, """
            import time
            fds, err = [], None
            while len(fds) < 1000:
                fd = _libc.inotify_init1(0)
                if fd < 0:
                    err = _ct.get_errno()
                    break
                fds.append(fd)
            evidence(held=len(fds), err=err)
            time.sleep(1.5)
        """)
    finally:
        stop.set()
        t.join()
    expect(r, Outcome.OK)
    ev = one(r)
    assert failures == [], (f"host root could not create inotify instances while the jail held {ev['held']} "
                            f"(errnos seen on the host: {sorted(set(failures))})")


HOST_SIGQUEUE_PROBE = r"""
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
class SigVal(ctypes.Union):
    _fields_ = [("i", ctypes.c_int), ("p", ctypes.c_void_p)]
sig = signal.SIGRTMIN + 2
signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
print("ready", flush=True)
end = time.monotonic() + 20
while time.monotonic() < end:
    if libc.sigqueue(os.getpid(), sig, SigVal(1)) != 0:
        print("FAILED", ctypes.get_errno(), flush=True)
        sys.exit(1)
    time.sleep(0.02)
"""


def test_queued_signals_cannot_exhaust_the_host_roots_quota(sb):
    # Expected: ok, and a root process on the host can still queue a signal (sigqueue) while the
    # program runs. kill() of a real-time signal to oneself, with the signal blocked, queues one
    # entry per call and, for kill(), ignores RLIMIT_SIGPENDING; the entries are counted in the
    # ucounts of every ancestor user namespace's creator, i.e. host root. Once root's count is
    # above its RLIMIT_SIGPENDING, every root process's sigqueue(), POSIX timer signal and
    # async-I/O signal fails with EAGAIN for as long as the program holds them (1.5 s here).
    import subprocess
    import sys

    probe = subprocess.Popen([sys.executable, "-c", HOST_SIGQUEUE_PROBE], stdout=subprocess.PIPE, text=True)
    try:
        assert probe.stdout.readline().strip() == "ready"
        r = run(sb, """
            import os, signal, time
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGRTMIN})
            n, err = 0, None
            try:
                while n < 150_000:
                    os.kill(os.getpid(), signal.SIGRTMIN)
                    n += 1
            except OSError as e:
                err = e.errno
            evidence(queued=n, err=err)
            time.sleep(1.5)
        """)
    finally:
        if probe.poll() is None:
            probe.terminate()
        out = probe.communicate()[0]
    expect(r, Outcome.OK)
    ev = one(r)
    assert "FAILED" not in out, (f"host root's sigqueue() failed while the jail held {ev['queued']} queued "
                                 f"signals: {out.strip()}")
