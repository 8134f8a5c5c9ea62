"""Device nodes of a jail's own, so file locks cannot cross jails.

Every jail binds /dev/null, /dev/zero and /dev/full read-write. Bound from the host's /dev, all
jails share those inodes, and a program may take a write lock on them (it can open them for
writing): one execution's lock on /dev/null is seen by another's lock attempt in another jail,
a covert channel of about 1.4 kbit/s measured here (tests/security/README.md, "File locks").
Nodes made per jail (host root's mknod, in the jail's run directory) are the same devices with
inodes of their own, so locks on them stay inside the jail.

jail.spawn() makes them in the jail's run directory and binds them; the slot removes the
directory when the jail ends.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

# name -> (major, minor) of the Linux memory devices (Documentation/admin-guide/devices.txt)
NODES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7)}


def private_nodes(directory: Path) -> dict[str, Path]:
    """Make this jail's /dev/null, /dev/zero and /dev/full in `directory` (needs root on the
    host, and a filesystem not mounted nodev). Returns {jail path: host path}."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    made = {}
    for name, (major, minor) in NODES.items():
        node = directory / name
        if not node.exists():
            os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(node, 0o666)  # mknod's mode is cut by the umask
        st = node.stat()
        if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) != major or os.minor(st.st_rdev) != minor:
            raise RuntimeError(f"{node} is not the device {major}:{minor}")
        made[f"/dev/{name}"] = node
    return made


def nsjail_mounts(nodes: dict[str, Path]) -> str:
    """The nsjail mount entries that bind the nodes in place of the host's."""
    return "".join(f'mount {{ src: "{src}" dst: "{dst}" is_bind: true rw: true mandatory: true }}\n'
                   for dst, src in nodes.items())


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
