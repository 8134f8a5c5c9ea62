"""An idle session costs what its own state needs, not a copy of the fork server's pages: every
write a session child makes to an object it shares with the zygote (a reference taken, a class
changed) copies a page. Walking sys.modules once per child (display.install) made an idle
session's USS 13.6 MiB instead of ~3.5 (issue 22)."""

from __future__ import annotations

import statistics
import time

import psutil

MiB = 1 << 20
LIMITS = {"memory_bytes": 64 << 20, "max_processes": 8}
MOST_MIB = 6.0  # measured: 3.4 before rich outputs, 13.6 with the regression, 3.8 now


def _uss(session) -> int:
    total = 0
    for pid in (session._cgroup.mem / "cgroup.procs").read_text().split():
        try:
            total += psutil.Process(int(pid)).memory_full_info().uss
        except psutil.Error:
            pass
    return total


def test_an_idle_session_owns_a_few_mib_not_a_copy_of_the_zygote(sb):
    sessions = [sb.session(limits=LIMITS) for _ in range(3)]
    try:
        for i, s in enumerate(sessions):
            r = s.run(f"import numpy as np\nx = {i}\ndata = list(range(1000))\ndisplay(x)\nx")
            assert r.ok and len(r.outputs) == 2, r
        time.sleep(0.5)
        uss = statistics.median(_uss(s) for s in sessions) / MiB
        assert 0 < uss < MOST_MIB, f"an idle session's USS is {uss:.2f} MiB"
    finally:
        for s in sessions:
            s.close()
