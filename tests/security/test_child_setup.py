"""The child's own setup, seen from the program: each value is one rule of isolation.py."""

from __future__ import annotations

import errno

from sandbox import Outcome

from ._helpers import expect, one, run


def test_oom_killer_and_scheduler_prefer_the_execution(sb):
    # Expected: ok; the execution is the OOM killer's first choice (1000) and runs at nice 19, so
    # the zygote's wall clock wins under a fork bomb; neither can be undone without privileges.
    r = run(sb, """
        import os
        with open("/proc/self/oom_score_adj") as f:
            adj = int(f.read())
        evidence(adj=adj, nice=os.getpriority(os.PRIO_PROCESS, 0),
                 lower=errno_of(os.setpriority, os.PRIO_PROCESS, 0, 0))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["adj"] == 1000 and ev["nice"] == 19 and ev["lower"] == errno.EACCES, ev


def test_execution_is_its_own_process_group_with_only_its_pipes_open(sb):
    # Expected: ok; the program leads its own process group (the zygote ends it with one
    # kill(-pgid)); the only fds it inherits are stdin (/dev/null: the request pipe is gone),
    # its stdout/stderr pipes and the result channel.
    r = run(sb, """
        import os
        fds = sorted(int(x) for x in os.listdir("/proc/self/fd"))
        evidence(pid=os.getpid(), pgrp=os.getpgrp(), fds=fds, stdin=os.readlink("/proc/self/fd/0"))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["pgrp"] == ev["pid"], ev
    # stdin (at EOF), stdout, stderr, the result channel, and the fd the listing itself opened.
    assert ev["fds"] == [0, 1, 2, 3, 4] and ev["stdin"] == "/dev/null", ev


def test_pre_forked_child_dies_with_its_fork_server():
    # Expected: the isolated child waiting for a request is killed by the kernel the moment its
    # parent (the fork server) dies: PR_SET_PDEATHSIG, set after the uid change that would clear
    # it. Without it the child would be reparented to the zygote and wait on, unsupervised.
    import os
    import signal
    import time

    import psutil

    from sandbox import Sandbox

    with Sandbox(slots=1) as sb:
        assert sb.run("print(1)").outcome is Outcome.OK  # a fresh child is pre-forked after this
        slot = next(iter(sb._pool._live.values()))
        # The zygote's children: the fork server and the sysinfo notifier (guest/sysinfo.py).
        server = [c for c in psutil.Process(slot.jail_pid).children() if c.name() != "sbx-sysinfo"][0]

        def waiting_child():
            # The isolated child: already switched to the user's host uid, alive, not a zombie.
            for c in server.children():
                try:
                    if 101000 <= c.uids().real < 101064 and c.status() != psutil.STATUS_ZOMBIE:
                        return c
                except psutil.NoSuchProcess:
                    pass
            return None

        time.sleep(1)  # the last run's processes are reaped by now; only the next child waits
        child = waiting_child()
        assert child is not None, "no isolated child was waiting"
        time.sleep(0.5)
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE, "the waiting child died by itself"
        os.kill(server.pid, signal.SIGKILL)

        def dead() -> bool:
            # Killed, it is a zombie of the zygote (which reaps only at shutdown) or gone.
            try:
                return child.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        deadline = time.monotonic() + 5
        while not dead() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dead(), f"pre-forked child {child.pid} outlived its fork server"


def test_a_run_finds_nothing_of_the_spare_s_rehearsal(sb):
    # Expected: ok; before its request a spare runs a fixed program through the runner once
    # (runner._rehearse, so the pages a run writes are copied ahead of the caller's clock). The
    # run sees none of it: its work dir holds its own script only (the rehearsal's main.py is
    # gone), /tmp holds only the `mnt/data` link every run gets (/mnt's target), stdin is empty, linecache and __main__ know only this program, and its
    # stdout is its own output alone.
    r = sb.run(
        "import linecache, os, sys\n"
        "print(sorted(os.listdir('.')), os.listdir('/tmp'), os.listdir('/tmp/mnt'), sys.stdin.read() == '',\n"
        "      sorted(k for k in linecache.cache if not k.startswith('/')),\n"
        "      sys.argv, sys.modules['__main__'].__file__, 'x' in vars(sys.modules['__main__']))\n",
        filename="prog.py")
    expect(r, Outcome.OK)
    assert r.stdout == "['prog.py'] ['mnt'] ['data'] True ['prog.py'] ['prog.py'] prog.py False\n", r.stdout
    assert r.stderr == "", r.stderr


def test_waiting_children_rank_between_the_execution_and_the_zygote_for_the_oom_killer():
    # Expected: every isolated child waiting for a request (of both fork servers) has
    # oom_score_adj 500 and nice 19, and the run that takes one has 1000 (through the fd kept
    # open since isolation: once not dumpable the child cannot reopen its own /proc file). The
    # zygote and the fork servers stay at 0. Without the waiting score, the OOM killer took the
    # spares with an execution that hit its memory limit.
    import time

    import psutil

    from sandbox import Sandbox

    with Sandbox(slots=1) as sb:
        assert sb.run("import numpy\nprint(1)").stdout == "1\n"
        assert sb.run("print(open('/proc/self/oom_score_adj').read().strip())").stdout == "1000\n"
        slot = next(iter(sb._pool._live.values()))
        time.sleep(1)  # the last runs are reaped and their spares made by now
        zygote = psutil.Process(slot.jail_pid)
        servers = [c for c in zygote.children() if c.name() != "sbx-sysinfo"]  # not the sysinfo notifier
        waiting = [c for s in servers for c in s.children() if c.status() != psutil.STATUS_ZOMBIE]
        assert len(servers) == 2 and len(waiting) >= 2, (servers, waiting)

        def adj(p) -> int:
            with open(f"/proc/{p.pid}/oom_score_adj") as f:
                return int(f.read())

        assert [adj(c) for c in waiting] == [500] * len(waiting)
        assert [c.nice() for c in waiting] == [19] * len(waiting)
        assert adj(zygote) == 0 and [adj(s) for s in servers] == [0, 0]
