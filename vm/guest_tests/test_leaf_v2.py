"""Run inside the cgroup v2 VM only (vm/guest-check.sh): the layout sessions need on v2.

Per-session cgroups live below a jail's cgroup. On v2 a cgroup that passes controllers down may
hold no processes itself ("no internal processes"), so the jail's processes move to a leaf first
and the jail's cgroup enables memory, pids and cpu for its children. This checks, with the engine's
own jails, that the slot's limits and counters still hold in that layout (the jail cgroup's
counters are hierarchical on v2: memory.current, memory.peak, memory.events' oom_kill, pids.max,
cpu.max), that a sub-cgroup's own memory.max kills there and is counted in the jail's
memory.events, and that closing leaves nothing behind."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

from sandbox import Outcome, Sandbox
from sandbox.host import cgroups

FILL = "import numpy as np\na = np.ones({n} << 17)\nprint(a.sum())\n"  # n MiB, all touched


def _run_ok(box, code, **kw):
    r = box.run(code, **kw)
    assert r.outcome is Outcome.OK, (r.outcome, r.exit_code, r.stderr[-1000:], r.error)
    return r


def _move_all(src: Path, dst: Path) -> None:
    """Move every process of src into dst (processes forked meanwhile land in src: loop)."""
    for _ in range(1000):
        procs = (src / "cgroup.procs").read_text().split()
        if not procs:
            return
        for pid in procs:
            try:
                (dst / "cgroup.procs").write_text(pid)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
    raise AssertionError(f"{src} keeps getting processes")


def _to_leaf(jail: Path) -> Path:
    leaf = jail / "jail"
    leaf.mkdir()
    for _ in range(100):
        _move_all(jail, leaf)
        try:
            (jail / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in cgroups.CONTROLLERS))
            return leaf
        except OSError as exc:  # EBUSY: a process appeared in the jail's cgroup again
            if exc.errno != errno.EBUSY:
                raise
    raise AssertionError("could not enable the controllers below the jail's cgroup")


@pytest.fixture(scope="module")
def leafed():
    box = Sandbox(slots=1)
    try:
        (slot,) = box._pool._live.values()
        jail = cgroups.ROOT / cgroups.PARENT / f"NSJAIL.{slot.jail_pid}"
        leaf = _to_leaf(jail)
        yield box, jail, leaf, slot.jail_pid
    finally:
        box.close()


def test_the_jails_processes_live_in_the_leaf(leafed):
    box, jail, leaf, _ = leafed
    _run_ok(box, "print(1)")
    assert (jail / "cgroup.procs").read_text().split() == []
    assert (leaf / "cgroup.procs").read_text().split()
    assert set(cgroups.CONTROLLERS) <= cgroups.controllers(jail, "cgroup.subtree_control")


def test_memory_limit_and_peak_hold_from_the_jails_cgroup(leafed):
    box, _, _, _ = leafed
    big = _run_ok(box, FILL.format(n=200))
    assert big.usage.peak_memory_bytes >= 180 << 20, big.usage
    r = box.run(FILL.format(n=400), limits={"memory_bytes": 200 << 20})
    assert r.outcome is Outcome.MEMORY_LIMIT, (r.outcome, r.exit_code, r.stderr[-500:])
    _run_ok(box, "print('after')")


def test_pids_limit_holds_from_the_jails_cgroup(leafed):
    box, _, _, _ = leafed
    code = ("import subprocess\nprocs = []\ntry:\n    for i in range(20):\n"
            "        procs.append(subprocess.Popen(['sleep', '30']))\n"
            "except OSError as e:\n    print('OSError', len(procs) <= 4)\n"
            "for p in procs:\n    p.kill()\n")
    r = _run_ok(box, code, limits={"max_processes": 4}, timeout=60)
    assert r.stdout == "OSError True\n"


def test_a_sub_cgroups_own_memory_limit_kills_there_and_counts_in_the_jails_events(leafed):
    box, jail, leaf, zygote = leafed
    session = jail / "session-test"
    session.mkdir()
    try:
        (session / "memory.max").write_text(str(64 << 20))
        if (session / "memory.swap.max").exists():
            (session / "memory.swap.max").write_text("0")
        before = (jail / "memory.events").read_text()
        # The next run's child is forked by a process in the leaf: move the whole jail except its
        # pid 1 (the zygote) into the session cgroup while a run allocates.
        marker = "import time\nprint('go', flush=True)\ntime.sleep(3)\n" + FILL.format(n=150)
        seen = {}

        def on_stdout(text: str) -> None:
            if "go" in text and not seen:
                for pid in (leaf / "cgroup.procs").read_text().split():
                    if pid != str(zygote):
                        try:
                            (session / "cgroup.procs").write_text(pid)
                        except OSError:
                            pass
                seen["moved"] = (session / "cgroup.procs").read_text().split()

        r = box.run(marker, on_stdout=on_stdout, limits={"memory_bytes": 1 << 30}, timeout=60)
        assert seen.get("moved"), "nothing moved into the session cgroup"
        assert r.outcome is Outcome.MEMORY_LIMIT, (r.outcome, r.exit_code, r.stderr[-500:], before)
        kills = dict(line.split() for line in (session / "memory.events").read_text().splitlines())
        assert int(kills["oom_kill"]) >= 1
    finally:
        _move_all(session, leaf)
        deadline = time.monotonic() + 10
        while session.exists() and time.monotonic() < deadline:
            try:
                session.rmdir()
            except OSError:
                time.sleep(0.05)
    _run_ok(box, "print('still serving')")


def test_closing_removes_the_jails_cgroup_with_its_leaf():
    box = Sandbox(slots=1)
    try:
        (slot,) = box._pool._live.values()
        jail = cgroups.ROOT / cgroups.PARENT / f"NSJAIL.{slot.jail_pid}"
        _to_leaf(jail)
        _run_ok(box, "print(1)")
    finally:
        box.close()
    deadline = time.monotonic() + 10
    while jail.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not jail.exists(), sorted(str(p) for p in jail.rglob("*") if p.is_dir())
