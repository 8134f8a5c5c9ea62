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
