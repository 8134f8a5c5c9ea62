"""The pool: concurrency, the bounded queue, dead-jail replacement, recycling and clean shutdown."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from sandbox import Outcome, QueueFullError, Sandbox, SandboxClosedError

from _helpers import cgroup_dirs, run_ok, wait_until


def _procs(pids) -> list[psutil.Process]:
    """psutil handles (they remember the start time, so a reused pid is not mistaken for ours)."""
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return out


def _tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(procs) -> list[psutil.Process]:
    """Those still present (a zombie counts: close() must reap what it started)."""
    return [p for p in procs if p.is_running()]


def test_stats_shape(sb):
    s = sb.stats()
    assert s.size == 2 and s.live == 2 and s.idle + s.busy == 2
    assert {"size", "live", "idle", "busy", "waiting", "replacements", "runs"} <= set(s.to_dict())


def test_concurrent_runs_from_many_threads(sb):
    def job(i: int):
        code = ("import numpy as np, time\n"
                f"time.sleep(0.05)\n"
                f"v = {i}\n"
                "print(v, int(np.arange(v + 1).sum()))\n"
                "open(f'out_{v}.txt', 'w').write(str(v * v))\n")
        return i, sb.run(code, files={"in.txt": str(i)})

    with ThreadPoolExecutor(max_workers=8) as ex:
        results = list(ex.map(job, range(24)))
    for i, r in results:
        assert r.outcome is Outcome.OK, (i, r.outcome, r.stderr)
        assert r.stdout == f"{i} {i * (i + 1) // 2}\n"
        assert {f.path: f.data for f in r.files} == {f"out_{i}.txt": str(i * i).encode()}


def test_queue_bound_raises_queue_full():
    with Sandbox(slots=1, max_queue=1) as box:
        results = {}

        def call(name: str, code: str) -> None:
            results[name] = box.run(code, timeout=30)

        a = threading.Thread(target=call, args=("a", "import time\ntime.sleep(4)\nprint('a')"))
        a.start()
        assert wait_until(lambda: box.stats().idle == 0 and "a" not in results, 30)
        b = threading.Thread(target=call, args=("b", "print('b')"))
        b.start()
        assert wait_until(lambda: box.stats().waiting == 1, 30)
        with pytest.raises(QueueFullError):
            box.run("print('c')")
        a.join()
        b.join()
        assert results["a"].outcome is Outcome.OK and results["a"].stdout == "a\n"
        assert results["b"].outcome is Outcome.OK and results["b"].stdout == "b\n"
        # Once the queue drains, calls are accepted again.
        assert run_ok(box, "print('c')").stdout == "c\n"


@pytest.fixture(scope="module")
def solo():
    with Sandbox(slots=1) as box:
        yield box


def test_killed_idle_jail_is_replaced(solo):
    run_ok(solo, "print('warm')")
    before = solo.stats().replacements
    slot = solo._pool._live[0]
    old_pid, old_jail = slot.proc.pid, slot.jail_pid
    old_procs = _tree(old_pid)
    assert old_jail in [p.pid for p in old_procs]
    assert all(d.is_dir() for d in cgroup_dirs(old_jail))

    os.killpg(slot.proc.pid, signal.SIGKILL)

    assert wait_until(lambda: solo.stats().replacements > before and solo.stats().idle == 1, 120)
    assert solo._pool._live[0].proc.pid != old_pid
    for i in range(3):
        assert run_ok(solo, f"print({i} * 2)").stdout == f"{i * 2}\n"
    # Nothing of the dead jail remains: processes, then cgroups (the engine owns their cleanup;
    # they must not linger until the sandbox is closed).
    assert wait_until(lambda: not _alive(old_procs), 30), _alive(old_procs)
    assert wait_until(lambda: not any(d.exists() for d in cgroup_dirs(old_jail)), 10), \
        f"cgroups of the dead jail remain: {[str(d) for d in cgroup_dirs(old_jail) if d.exists()]}"


def test_jail_killed_during_a_run_gives_sandbox_error_then_recovers(solo):
    run_ok(solo, "print('warm')")
    before = solo.stats().replacements
    slot = solo._pool._live[0]
    result = {}

    def call() -> None:
        result["r"] = solo.run("import time\nprint('started', flush=True)\ntime.sleep(120)", timeout=40)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    assert wait_until(lambda: solo.stats().idle == 0, 30)
    time.sleep(0.3)  # let the request reach the jail (either way the run must fail cleanly)
    os.killpg(slot.proc.pid, signal.SIGKILL)
    # The death is detected at once: the run must not sit out its own 40 s wall clock.
    t.join(30)
    assert not t.is_alive(), "the run was not ended when its jail died (it waits for its own deadline)"
    r = result["r"]
    assert r.outcome is Outcome.SANDBOX_ERROR
    assert r.error is not None and r.error.type == "SandboxError"
    assert r.to_dict()["outcome"] == "sandbox_error"
    # The next run is served by a fresh jail.
    assert run_ok(solo, "print('recovered')").stdout == "recovered\n"
    assert solo.stats().replacements > before
    assert solo._pool._live[0] is not slot


def test_jail_killed_during_a_run_does_not_disturb_other_slots():
    with Sandbox(slots=2) as box:
        results = {}

        def call(name: str, code: str) -> None:
            results[name] = box.run(code, timeout=40)

        t1 = threading.Thread(target=call, args=("victim", "import time\ntime.sleep(120)"), daemon=True)
        t1.start()
        assert wait_until(lambda: box.stats().idle == 1, 30)
        busy = [s for s in box._pool._live.values() if s not in box._pool._idle]
        assert len(busy) == 1
        t2 = threading.Thread(target=call, args=("bystander", "import time\ntime.sleep(1.5)\nprint('fine')"),
                              daemon=True)
        t2.start()
        assert wait_until(lambda: box.stats().idle == 0, 30)
        os.killpg(busy[0].proc.pid, signal.SIGKILL)
        t1.join(30)
        t2.join(30)
        assert not t1.is_alive(), "the run was not ended when its jail died (it waits for its own deadline)"
        assert results["victim"].outcome is Outcome.SANDBOX_ERROR
        assert results["bystander"].outcome is Outcome.OK and results["bystander"].stdout == "fine\n"


def test_recycle_after_replaces_jails_and_runs_stay_ok():
    with Sandbox(slots=1, recycle_after=2) as box:
        pids, procs = [], []
        for i in range(5):
            assert wait_until(lambda: box.stats().idle == 1, 120)
            slot = box._pool._live[0]
            if slot.proc.pid not in pids:
                procs += _tree(slot.proc.pid)
            pids.append(slot.proc.pid)
            assert run_ok(box, f"print({i})").stdout == f"{i}\n"
        assert box.stats().replacements >= 2
        # Runs 1-2, 3-4 and 5 were served by three different jails.
        assert pids[0] == pids[1] and pids[2] == pids[3] and len({pids[0], pids[2], pids[4]}) == 3
        retired = [p for p in procs if p.pid in (pids[0], pids[2])]
        assert wait_until(lambda: not _alive(retired), 30), _alive(retired)
    # Leaving the `with` block closed everything.
    assert wait_until(lambda: not _alive(procs), 10), _alive(procs)
    with pytest.raises(SandboxClosedError):
        box.run("print(1)")


def test_close_leaves_no_process_and_no_cgroup():
    box = Sandbox(slots=2)
    try:
        # A background process left by a run must not survive close() either.
        run_ok(box, "import subprocess\nsubprocess.Popen(['sleep', '60'])\nprint(1)")
        slots = list(box._pool._live.values())
        assert len(slots) == 2
        nsjails = _procs([s.proc.pid for s in slots])
        everything = [p for s in slots for p in _tree(s.proc.pid)]
        assert {s.jail_pid for s in slots} <= {p.pid for p in everything}
        dirs = [d for s in slots for d in cgroup_dirs(s.jail_pid)]
        assert dirs and all(d.is_dir() for d in dirs)
        # One jail dies before the close; its replacement and its remains must go too.
        before = box.stats().replacements
        os.killpg(slots[0].proc.pid, signal.SIGKILL)
        assert wait_until(lambda: box.stats().replacements > before and box.stats().idle == 2, 120)
        new = [s for s in box._pool._live.values() if s not in slots]
        assert len(new) == 1
        everything += _tree(new[0].proc.pid)
        nsjails += _procs([new[0].proc.pid])
        dirs += cgroup_dirs(new[0].jail_pid)
    finally:
        box.close()
    assert not _alive(nsjails)  # reaped by close() itself
    assert wait_until(lambda: not _alive(everything), 10), _alive(everything)
    assert not [d for d in dirs if d.exists()]
    with pytest.raises(SandboxClosedError):
        box.run("print(1)")
    box.close()  # closing twice is harmless


def test_a_planned_recycle_is_not_logged_as_a_death(caplog):
    with caplog.at_level(logging.INFO, logger="sandbox.host.pool"):
        with Sandbox(slots=1, recycle_after=1) as box:
            for i in range(3):
                assert wait_until(lambda: box.stats().idle == 1, 120)
                assert run_ok(box, f"print({i})").stdout == f"{i}\n"
            assert wait_until(lambda: box.stats().idle == 1, 120)
    messages = [r.getMessage() for r in caplog.records if r.name == "sandbox.host.pool"]
    assert any("recycling" in m for m in messages), messages
    assert not any("died" in m for m in messages), messages


def test_the_full_fork_servers_memory_is_in_huge_pages(sb):
    # guest/hugepages.py: the zygote collapses its heap into 2 MiB pages before forking the full
    # fork server, so a full child's fork copies one page-table entry per 2 MiB, not 512. Where
    # the kernel has no transparent huge pages at all, nothing is collapsed and runs go on.
    r = run_ok(sb, "import pandas\nprint(1)")
    assert r.stdout == "1\n"
    zygote = next(iter(sb._pool._live.values())).jail.zygote_pid
    servers = psutil.Process(zygote).children()
    full = max(servers, key=lambda p: p.memory_info().rss)  # the one that imported the preload list
    rollup = open(f"/proc/{full.pid}/smaps_rollup").read()
    huge_kib = int(rollup.split("AnonHugePages:")[1].split()[0])
    thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    if "[never]" in thp:
        assert huge_kib == 0
    else:
        assert huge_kib >= 16 << 10, f"the full fork server holds {huge_kib} KiB in huge pages"
