"""Run inside the cgroup v2 VM only (vm/guest-check.sh): `sandbox doctor` on a v2 cgroup that has
the controllers available but processes of its own, so the kernel refuses to pass them down
("no internal processes"), the usual state of /sys/fs/cgroup inside a container."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from sandbox.host import cgroups, doctor


def test_processes_in_the_cgroup_block_delegation_and_the_fix_is_given():
    assert cgroups.version() == 2
    assert set(cgroups.CONTROLLERS) <= cgroups.controllers(cgroups.ROOT, "cgroup.subtree_control")
    busy = cgroups.ROOT / f"doctor-test-{os.getpid()}"
    busy.mkdir()
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        (busy / "cgroup.procs").write_text(str(sleeper.pid))
        assert set(cgroups.CONTROLLERS) <= cgroups.controllers(busy)
        check = doctor._cgroups(busy)
        assert not check.ok
        assert "processes live in" in check.detail and f"mkdir {busy}/init" in check.detail, check.detail
        assert "\n" not in check.detail
        # With the process moved out, the same cgroup passes and gets the engine's parent.
        (cgroups.ROOT / "cgroup.procs").write_text(str(sleeper.pid))
        check = doctor._cgroups(busy)
        assert check.ok, check.detail
        assert set(cgroups.CONTROLLERS) <= cgroups.controllers(busy / cgroups.PARENT, "cgroup.subtree_control")
    finally:
        sleeper.kill()
        sleeper.wait()
        for d in (busy / cgroups.PARENT, busy):
            if d.exists():
                d.rmdir()


def test_only_the_unified_hierarchy_is_mounted():
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    assert [m[2] for m in mounts if m[1] == "/sys/fs/cgroup"] == ["cgroup2"]
    assert not [m for m in mounts if m[2] == "cgroup"], "a cgroup v1 hierarchy is mounted"
