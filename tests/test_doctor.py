"""`sandbox doctor` on cgroup v2 delegation problems, each against a real cgroup2 mount.

The unified hierarchy can be mounted on any current kernel, v1 hosts included (this one mounts
it beside the v1 controllers), so a read-only mount and a cgroup whose parent passes down no
controllers are real here. (Processes blocking cgroup.subtree_control need the controllers
themselves: vm/guest_tests/ checks that inside the cgroup v2 VM.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sandbox.host import doctor


@pytest.fixture
def cgroup2(tmp_path):
    """Mount the unified hierarchy on a fresh directory; yields a mounter: mount(options) -> root."""
    mounted: list[Path] = []

    def mount(options: str = "rw") -> Path:
        where = tmp_path / f"cgroup2-{len(mounted)}"
        where.mkdir()
        subprocess.run(["mount", "-t", "cgroup2", "-o", options, "none", str(where)], check=True)
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", str(where)], check=True)


def test_read_only_cgroup_mount_is_explained_with_its_fix(cgroup2):
    root = cgroup2("ro")
    check = doctor._cgroups(root)
    assert not check.ok
    assert "read-only" in check.detail
    assert f"mount -o remount,rw {root}" in check.detail
    assert "\n" not in check.detail
    assert not (root / "sandbox").exists()  # nothing was attempted on the read-only tree


def test_controllers_not_delegated_are_named_with_their_fix(cgroup2, tmp_path):
    root = cgroup2("rw")
    # A fresh cgroup passes no controller down: its child has none of memory, pids, cpu.
    outer = root / f"sandbox-doctor-test-{tmp_path.name}"
    outer.mkdir()
    inner = outer / "inner"
    inner.mkdir()
    try:
        assert (inner / "cgroup.controllers").read_text().split() == []
        check = doctor._cgroups(inner)
        assert not check.ok
        assert "memory, pids, cpu are not delegated" in check.detail
        assert "cgroup.subtree_control" in check.detail and "Delegate=yes" in check.detail
        assert "\n" not in check.detail
        assert not (inner / "sandbox").exists()
    finally:
        inner.rmdir()
        outer.rmdir()


def test_this_host_passes_the_cgroup_check():
    check = doctor._cgroups()
    assert check.ok, check.detail
