"""Cgroup limits and counters behave the same on v1 and v2 (this file runs on the v1 development
machines in `make test` and inside the cgroup v2 VM in `make test-cgroup2`): a run's own peak
memory, the CPU bandwidth of a slot, and nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import Outcome, Sandbox
from sandbox.limits import JailSettings

from _helpers import CGROUP_ROOT, cgroup_dirs, run_ok, wait_until

V2 = (CGROUP_ROOT / "cgroup.controllers").exists()
FILL = "import numpy as np\na = np.ones({n} << 17)\nprint(a.sum())\n"  # n MiB of float64, all touched


@pytest.fixture(scope="module")
def box():
    with Sandbox(slots=1) as s:
        yield s


def _slot_cgroup(box) -> Path:
    (slot,) = box._pool._live.values()
    return cgroup_dirs(slot.jail_pid)[-1]  # v1: the cpu controller's directory


def test_peak_memory_is_the_runs_own_not_the_slots_all_time_peak(box):
    big = run_ok(box, FILL.format(n=300))
    assert big.usage.peak_memory_bytes >= 280 << 20
    small = run_ok(box, "print(1)")
    assert small.usage.peak_memory_bytes < 64 << 20, small.usage
    # A middle-sized run after the big one is measured, not hidden by the earlier record.
    middle = run_ok(box, FILL.format(n=120))
    assert 110 << 20 <= middle.usage.peak_memory_bytes < 280 << 20, middle.usage


def test_memory_limit_comes_from_the_oom_kill_counter_and_the_slot_survives(box):
    r = box.run(FILL.format(n=400), limits={"memory_bytes": 200 << 20})
    assert r.outcome is Outcome.MEMORY_LIMIT, (r.outcome, r.exit_code, r.stderr[-500:])
    after = run_ok(box, FILL.format(n=100))
    assert after.outcome is Outcome.OK


def test_cpu_bandwidth_is_the_policy_cpus_and_holds_for_a_multi_process_spin(box):
    cpus = JailSettings.from_policy().cpus
    cg = _slot_cgroup(box)
    if V2:
        quota, period = (cg / "cpu.max").read_text().split()
    else:
        quota, period = (cg / "cpu.cfs_quota_us").read_text(), (cg / "cpu.cfs_period_us").read_text()
    assert int(quota) / int(period) == pytest.approx(cpus)
    # Three processes spin for 2 s of wall clock: together they get at most `cpus` CPUs.
    code = ("import os, time\n"
            "def spin():\n"
            "    end = time.monotonic() + 2\n"
            "    while time.monotonic() < end: pass\n"
            "kids = []\n"
            "for _ in range(2):\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        spin(); os._exit(0)\n"
            "    kids.append(pid)\n"
            "spin()\n"
            "for pid in kids: os.waitpid(pid, 0)\n"
            "print('done')\n")
    r = run_ok(box, code)
    assert r.usage.cpu_ms <= r.usage.wall_ms * cpus * 1.15 + 200, r.usage


def test_closing_removes_the_slot_cgroups():
    s = Sandbox(slots=1)
    try:
        run_ok(s, "print(1)")
        (slot,) = s._pool._live.values()
        dirs = cgroup_dirs(slot.jail_pid)
        assert all(d.is_dir() for d in dirs)
    finally:
        s.close()
    assert wait_until(lambda: not any(d.exists() for d in dirs), 10), [str(d) for d in dirs if d.exists()]


def test_closing_removes_cgroups_made_below_a_slots_own():
    # Sessions put their children in cgroups below the slot's (and on v2 the jail's own processes
    # move to a leaf first): closing the slot removes those too, deepest first.
    s = Sandbox(slots=1)
    try:
        run_ok(s, "print(1)")
        (slot,) = s._pool._live.values()
        dirs = cgroup_dirs(slot.jail_pid)
        below = [d / "session-test" / "inner" for d in dirs]
        for d in below:
            d.mkdir(parents=True)
    finally:
        s.close()
    assert wait_until(lambda: not any(d.exists() for d in dirs), 10), [str(d) for d in dirs if d.exists()]


def test_stale_slot_cgroups_are_removed_with_what_is_below_them():
    from sandbox.host import cgroups

    cgroups.ensure_parents()
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can have this pid
    dirs = cgroup_dirs(dead)
    for d in dirs:
        (d / "session-test" / "inner").mkdir(parents=True)
    try:
        assert cgroups.remove_stale() >= len(dirs)
        assert not any(d.exists() for d in dirs)
    finally:
        for d in dirs:
            cgroups.remove_tree(d)


def test_a_cgroup_whose_processes_leave_late_is_still_removed():
    # A killed jail's processes can take longer to leave than the slot waits (seconds under
    # emulation, as in the cgroup v2 VM): the cgroup is removed once they are gone, not at close.
    import subprocess

    from sandbox.host import cgroups

    cgroups.ensure_parents()
    late = subprocess.Popen(["sleep", "1.5"])
    dirs = cgroup_dirs(late.pid)
    try:
        for d in dirs:
            d.mkdir()
            (d / "cgroup.procs").write_text(str(late.pid))
        cg = cgroups.SlotCgroup(late.pid)
        cg.close()
        cg.remove(wait=0.1)
        assert all(d.exists() for d in dirs)  # still in use: handed to the background
        late.wait()
        assert wait_until(lambda: not any(d.exists() for d in dirs), 10), [str(d) for d in dirs if d.exists()]
    finally:
        late.kill()
        late.wait()
        for d in dirs:
            cgroups.remove_tree(d)


def test_closing_a_cgroup_twice_leaves_other_fds_alone():
    """A session of a dead jail is closed after the jail closed its cgroup: the second close must
    not close fd numbers handed out since (it broke other jails' pipes: EBADF, dead slots)."""
    import os

    from sandbox import Sandbox

    with Sandbox(slots=1, preload=False) as sb:
        s = sb.session()
        cgroup = s._cgroup
        cgroup.close()
        r, w = os.pipe()  # likely given the numbers just freed
        try:
            cgroup.close()
            os.fstat(r)
            os.fstat(w)
        finally:
            os.close(r)
            os.close(w)


# -- where the engine's parent cgroup is (issue 21: a systemd unit with Delegate=yes) -------------


@pytest.fixture()
def cgroup2_mount(tmp_path):
    """A cgroup v2 hierarchy mounted here (on a v1 host it has no memory/pids/cpu controllers:
    enough for paths, xattrs and moving processes)."""
    import subprocess

    where = tmp_path / "cgroup2"
    where.mkdir()
    subprocess.run(["mount", "-t", "cgroup2", "none", str(where)], check=True)
    made: list[Path] = []
    yield where, made
    from sandbox.host import cgroups

    for d in reversed(made):
        cgroups.remove_tree(d)
    subprocess.run(["umount", str(where)], check=True)


def test_the_parent_is_below_a_delegated_own_cgroup_or_where_the_setting_says(cgroup2_mount, tmp_path):
    import os

    from sandbox.host import cgroups

    root, made = cgroup2_mount
    unit = root / f"test-{tmp_path.name}.slice" / "sandbox.service"
    unit.mkdir(parents=True)
    made += [unit.parent, unit]
    proc = tmp_path / "cgroup"
    proc.write_text(f"0::/{unit.relative_to(root)}\n")

    def parent(setting: str, proc_file: Path = proc) -> Path:
        return cgroups.parent_dir(None, root, setting, str(proc_file))

    assert parent("auto") == root / "sandbox"            # not delegated (no systemd mark): the root's
    assert parent("self") == unit / "sandbox"            # the operator says it is ours
    os.setxattr(unit, "trusted.delegate", b"1")          # what systemd sets for Delegate=yes
    assert parent("auto") == parent("") == unit / "sandbox"
    moved = tmp_path / "moved"                           # after ensure_parents moved the host to its leaf
    moved.write_text(f"0::/{unit.relative_to(root)}/{cgroups.LEAF}\n")
    assert parent("auto", moved) == unit / "sandbox"
    at_root = tmp_path / "root"
    at_root.write_text("0::/\n")
    assert parent("auto", at_root) == parent("self", at_root) == root / "sandbox"
    assert parent("machine.slice/engine") == root / "machine.slice" / "engine"
    for bad in ("../escape", "/abs/path", "a//b", "a/./b"):
        with pytest.raises(OSError, match="SANDBOX_CGROUP_PARENT"):
            parent(bad)
    # v1: each controller's own line of /proc/self/cgroup
    v1 = tmp_path / "v1"
    v1.write_text("4:memory:/system.slice/sandbox.service\n8:pids:/system.slice/sandbox.service\n2:cpu,cpuacct:/\n")
    assert cgroups.parent_dir("memory", Path("/x"), "self", str(v1)) == Path("/x/memory/system.slice/sandbox.service/sandbox")
    assert cgroups.parent_dir("cpu", Path("/x"), "self", str(v1)) == Path("/x/cpu/sandbox")


def test_the_hosts_processes_move_to_a_leaf_of_their_delegated_cgroup(cgroup2_mount, tmp_path):
    import subprocess

    from sandbox.host import cgroups

    root, made = cgroup2_mount
    unit = root / f"unit-{tmp_path.name}"
    unit.mkdir()
    made += [unit, unit / cgroups.LEAF]
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    try:
        for p in procs:
            (unit / "cgroup.procs").write_text(str(p.pid))
        cgroups.move_out(unit)
        assert (unit / "cgroup.procs").read_text().split() == []
        assert sorted(map(int, (unit / cgroups.LEAF / "cgroup.procs").read_text().split())) == sorted(p.pid for p in procs)
        for p in procs:   # as /proc says it, and as own_cgroup reads it back (the leaf left out)
            line = f"0::/{unit.name}/{cgroups.LEAF}"
            assert line in Path(f"/proc/{p.pid}/cgroup").read_text().splitlines()
            assert cgroups.own_cgroup(None, f"/proc/{p.pid}/cgroup") == f"/{unit.name}"
    finally:
        for p in procs:
            p.kill()
            p.wait()


UNIT_HOST = """
import json, os, sys
from pathlib import Path
unit, dirs = sys.argv[1], [Path(d) for d in sys.argv[2:]]
for d in dirs:                             # as systemd places a unit's process with Delegate=yes
    (d / "cgroup.procs").write_text(str(os.getpid()))
from sandbox import Sandbox
with Sandbox(slots=1, preload=False) as sb:
    out = sb.run("print(6 * 7)").stdout
    below = sorted(str(p) for d in dirs for p in (d / "sandbox").glob("NSJAIL.*"))
    jail_cgroup = Path(f"/proc/{next(iter(sb._pool._live.values())).jail_pid}/cgroup").read_text()
print(json.dumps({"stdout": out, "below": below, "jail_cgroup": jail_cgroup}))
"""


def test_an_engine_in_a_delegated_unit_cgroup_makes_its_jails_below_it(tmp_path):
    # v1: a unit's cgroup in each controller's hierarchy; v2 (the VM of `make test-cgroup2`): one
    # directory, where the engine first moves itself to the unit's supervisor leaf.
    import json
    import os
    import subprocess
    import sys

    from sandbox.host import cgroups

    unit = f"sandbox-test-{os.getpid()}.service"
    dirs = [CGROUP_ROOT / unit] if V2 else [CGROUP_ROOT / c / unit for c in ("memory", "pids", "cpu")]
    for d in dirs:
        d.mkdir()
        os.setxattr(d, "trusted.delegate", b"1")
    try:
        env = {k: v for k, v in os.environ.items() if k != cgroups.ENV}
        p = subprocess.run([sys.executable, "-c", UNIT_HOST, unit, *map(str, dirs)], capture_output=True, text=True,
                           timeout=300, env=env)
        assert p.returncode == 0, p.stderr
        got = json.loads(p.stdout.splitlines()[-1])
        assert got["stdout"] == "42\n"
        assert len(got["below"]) == len(dirs) and all(f"/{unit}/sandbox/NSJAIL." in b for b in got["below"]), got
        mark = f"0::/{unit}/sandbox/NSJAIL." if V2 else f"memory:/{unit}/sandbox/NSJAIL."
        assert mark in got["jail_cgroup"], got["jail_cgroup"]
        assert not [p for d in dirs for p in (d / "sandbox").glob("NSJAIL.*")]  # closed: nothing left
    finally:
        for d in dirs:
            cgroups.remove_tree(d)
