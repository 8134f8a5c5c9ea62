"""cgroup v1 and v2: the parents nsjail creates slot cgroups under, and the per-run counters.

nsjail creates one cgroup per jail (`<parent>/NSJAIL.<pid>`) and applies the start-up limits;
the host then owns it: it sets the per-call memory and pids limits and reads the counters the
outcome is derived from (OOM kills, peak memory). Never trust the child's exit code for that.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PARENT = "sandbox"       # the engine's parent cgroup: its name, below the base parent_dir() chooses
ENV = "SANDBOX_CGROUP_PARENT"
LEAF = "supervisor"      # v2, in a delegated cgroup: where the host's own processes move (ensure_parents)
CONTROLLERS = ("memory", "pids", "cpu")
V1_CONTROLLERS = CONTROLLERS
V1_FREEZER = "freezer"   # v1 only (v2 has cgroup.freeze in every cgroup): pauses a session
log = logging.getLogger(__name__)


def version(root: Path = ROOT) -> int | None:
    """2 on a unified hierarchy, 1 when the v1 memory/pids/cpu controllers are mounted, else None."""
    if (root / "cgroup.controllers").exists():
        return 2
    if all((root / c).is_dir() for c in V1_CONTROLLERS):
        return 1
    return None


def own_cgroup(controller: str | None = None, proc: str = "/proc/self/cgroup") -> str | None:
    """This process's cgroup as /proc/self/cgroup says it: the v2 one ("0::PATH"), or with
    `controller` that v1 controller's; None if it is not listed. A trailing /LEAF (where
    ensure_parents moved the host, or systemd's DelegateSubgroup= put it) or /.control (where
    systemd runs a delegated unit's ExecStartPre=) is left out: the unit's own cgroup either way."""
    try:
        lines = Path(proc).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hid, names, path = (line.split(":", 2) + ["", ""])[:3]
        if (controller is None and hid == "0" and names == "") or (controller and controller in names.split(",")):
            for sub in (LEAF, ".control"):
                if path.endswith("/" + sub):
                    return path[:-len(sub) - 1]
            return path
    return None


def delegated(cgroup: Path) -> bool:
    """systemd marks the cgroup of a unit with Delegate=yes with the xattr trusted.delegate=1
    (user.delegate=1 for a user manager's units)."""
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(cgroup, name) == b"1":
                return True
        except OSError:
            pass
    return False


def parent_dir(controller: str | None = None, root: Path = ROOT, setting: str | None = None,
               proc: str = "/proc/self/cgroup") -> Path:
    """The engine's parent cgroup (on v2; with `controller`, in that v1 hierarchy), as
    SANDBOX_CGROUP_PARENT (`setting`) says:

    - "auto" (the default): below this process's own cgroup when that cgroup is delegated to it
      (systemd's Delegate=yes: `<own>/sandbox`, e.g. /sys/fs/cgroup/system.slice/sandbox.service/sandbox),
      else `<root>/sandbox`;
    - "self": below this process's own cgroup, delegation marked or not (a container with a
      cgroup of its own, a systemd without the delegate xattr);
    - a relative path, e.g. "machine.slice/sandbox": that cgroup below the root.
    """
    setting = (os.environ.get(ENV, "") if setting is None else setting).strip() or "auto"
    base = root / controller if controller else root
    if setting in ("auto", "self"):
        own = own_cgroup(controller, proc)
        if own and own != "/":
            here = base / own.lstrip("/")
            if setting == "self" or delegated(here):
                return here / PARENT
        return base / PARENT
    parts = setting.strip("/").split("/")
    if setting.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise OSError(f"{ENV}={setting!r}: give auto, self, or a cgroup path relative to {root} (no '..')")
    return base.joinpath(*parts)


def in_own_cgroup(parent: Path, root: Path = ROOT, controller: str | None = None) -> bool:
    """Whether `parent` (from parent_dir) sits right below this process's own cgroup: a delegated
    subtree, which the serving process sets up itself (ensure_parents)."""
    own = own_cgroup(controller)
    base = root / controller if controller else root
    return bool(own) and own != "/" and parent.parent == base / own.lstrip("/")


def controllers(cgroup: Path, which: str = "cgroup.controllers") -> set[str]:
    """The v2 controllers a cgroup has available (or, with cgroup.subtree_control, passes down)."""
    return set((cgroup / which).read_text().split())


def ensure_parents(root: Path = ROOT) -> None:
    """Create the parent cgroups slots live under (idempotent; needs root or a delegated tree).

    On v2 the controllers must be enabled in the root's and the parent's cgroup.subtree_control,
    or the slot cgroups nsjail creates have no memory.max, pids.max or cpu.max at all.
    """
    v = version(root)
    if v == 1:
        for c in V1_CONTROLLERS:
            parent_dir(c, root).mkdir(parents=True, exist_ok=True)
    elif v == 2:
        parent = parent_dir(None, root)
        mine = in_own_cgroup(parent, root)
        # Each cgroup above the parent passes the controllers down: only our own (delegated) one
        # when the parent is below it (the ones above are systemd's), else every one from the root.
        above = [parent.parent] if mine else [parent.parents[i] for i in range(len(parent.relative_to(root).parts) - 1, -1, -1)]
        for cg in above:
            cg.mkdir(exist_ok=True)
            missing = [c for c in CONTROLLERS if c not in controllers(cg)]
            if missing:
                raise OSError(f"cgroup v2 controllers not available in {cg}: {', '.join(missing)}")
            off = [c for c in CONTROLLERS if c not in controllers(cg, "cgroup.subtree_control")]
            if off:
                if mine:
                    # No internal processes on v2: a cgroup that passes controllers down holds none
                    # itself. The host (and whatever else its unit runs) moves to a leaf beside the engine's.
                    move_out(cg)
                (cg / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in off))
        parent.mkdir(exist_ok=True)
        if not set(CONTROLLERS) <= controllers(parent, "cgroup.subtree_control"):
            (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
    else:
        raise OSError("no usable cgroup hierarchy (need v2, or v1 memory, pids and cpu)")


def move_out(cgroup: Path) -> None:
    """Move every process of a v2 cgroup into its child LEAF (made if need be)."""
    leaf = cgroup / LEAF
    leaf.mkdir(exist_ok=True)
    for _ in range(10):  # a process forked meanwhile shows up in the next read
        pids = (cgroup / "cgroup.procs").read_text().split()
        if not pids:
            return
        for pid in pids:
            try:
                (leaf / "cgroup.procs").write_text(pid)
            except ProcessLookupError:
                pass


def nsjail_config(memory_bytes: int, pids: int) -> str:
    """The cgroup part of a slot's nsjail config (protobuf text format): memory and pids. Not the
    CPU: nsjail would set it with a one-second period, and the kernel applies a new period only
    once the running one ends (the host's short period came up to a second late, and a jail's
    first heavy run was held that long); the host sets it itself, first (limit_cpu)."""
    common = f"cgroup_mem_max: {memory_bytes}\ncgroup_pids_max: {pids}\n"
    if version() == 2:
        return common + f'use_cgroupv2: true\ncgroupv2_mount: "{parent_dir()}"\ncgroup_mem_swap_max: 0\n'
    lines = [common, f"cgroup_mem_memsw_max: {memory_bytes}\n" if _v1_has_memsw() else ""]
    for c, key in (("memory", "mem"), ("pids", "pids")):
        lines.append(f'cgroup_{key}_mount: "{ROOT / c}"\ncgroup_{key}_parent: "{parent_dir(c).relative_to(ROOT / c)}"\n')
    return "".join(lines)


def limit_cpu(jail_pid: int, cpus: float, period_ms: int, deadline: float) -> None:
    """A new jail's CPU bandwidth (see SlotCgroup.set_cpu), set as soon as nsjail has made its
    first process and before the host sends it anything: on v1 the jail's cpu cgroup is made
    here (`NSJAIL.<pid>`, as nsjail names the others) and the process moved in while it is the
    jail's only one (the zygote forks nothing before its init frame); on v2, once nsjail has made
    the jail's cgroup, its cpu.max. TimeoutError if the cgroup does not appear by `deadline`."""
    name = f"NSJAIL.{jail_pid}"
    if version() == 2:
        where = parent_dir() / name
        while not where.is_dir():
            if time.monotonic() > deadline:
                raise TimeoutError(f"nsjail did not make the jail's cgroup {where}")
            time.sleep(0.0005)
        _write_bandwidth(where, True, cpus, period_ms)
        return
    where = parent_dir("cpu") / name
    where.mkdir(exist_ok=True)
    _write_bandwidth(where, False, cpus, period_ms)
    (where / "cgroup.procs").write_text(str(jail_pid))


def _write_bandwidth(cgroup: Path, v2: bool, cpus: float, period_ms: int) -> None:
    period = period_ms * 1000
    quota = max(1000, int(cpus * period))
    if v2:
        (cgroup / "cpu.max").write_text(f"{quota} {period}")
    else:
        # The quota may exceed the period (more than one core), so lower the period first.
        (cgroup / "cpu.cfs_period_us").write_text(str(period))
        (cgroup / "cpu.cfs_quota_us").write_text(str(quota))


def _v1_has_memsw() -> bool:
    return (parent_dir("memory") / "memory.memsw.limit_in_bytes").exists()


@dataclass
class Snapshot:
    usage: int
    oom_kills: int


class SlotCgroup:
    """The cgroup(s) of one jail, found from the pid nsjail gave its child.

    The counter files stay open and are read with pread: the run path pays a few
    microseconds per counter instead of an open/close each.
    """

    def __init__(self, jail_pid: int) -> None:
        name = f"NSJAIL.{jail_pid}"
        self.v2 = version() == 2
        if self.v2:
            self.mem = self.pids = self.cpu = parent_dir() / name
            self.dirs = [self.mem]
        else:
            self.mem = parent_dir("memory") / name
            self.pids = parent_dir("pids") / name
            self.cpu = parent_dir("cpu") / name
            self.dirs = [parent_dir(c) / name for c in V1_CONTROLLERS]
        if not self.mem.is_dir():
            raise OSError(f"jail cgroup {self.mem} does not exist")
        self.freezer: Path | None = self.mem if self.v2 else None
        self._v1_freezer: Path | None = None  # v1: the jail's freezer cgroup, made by child() when needed
        self._open_counters()

    @classmethod
    def _at(cls, mem: Path, pids: Path, cpu: Path, freezer: Path | None) -> SlotCgroup:
        """The counters of an existing cgroup (a session's, made by child())."""
        self = cls.__new__(cls)
        self.v2 = version() == 2
        self.mem, self.pids, self.cpu = mem, pids, cpu
        self.freezer = freezer
        self.dirs = list(dict.fromkeys([mem, pids, cpu] + ([freezer] if freezer else [])))
        self._open_counters()
        return self

    def _open_counters(self) -> None:
        self._leaf: Path | None = None
        names = ("memory.current", "memory.peak", "memory.events") if self.v2 else \
            ("memory.usage_in_bytes", "memory.max_usage_in_bytes", "memory.oom_control")
        self._usage = os.open(self.mem / names[0], os.O_RDONLY | os.O_CLOEXEC)
        self._events = os.open(self.mem / names[2], os.O_RDONLY | os.O_CLOEXEC)
        self._memory_limit: int | None = None
        self._pids_limit: int | None = None
        # v2 has memory.peak since Linux 5.19 and resets it (per open file) only since 6.12:
        # Debian 12's 6.1 keeps the all-time peak, Ubuntu 22.04's 5.15 has none. There the
        # run's peak is exact when the run set a new all-time peak, else sampled (_PeakSampler).
        self._peak: int | None = None
        for mode in (os.O_RDWR, os.O_RDONLY):
            try:
                self._peak = os.open(self.mem / names[1], mode | os.O_CLOEXEC)
                break
            except FileNotFoundError:
                break
            except PermissionError:
                continue
        try:
            self._reset_peak()
            self._peak_resettable = True
        except (OSError, TypeError):
            self._peak_resettable = False
        self._sampler = None if self._peak_resettable else _PeakSampler(self._usage)
        self._peak_before = 0

    def close(self) -> None:
        """Close the counter files. Once only: a second close would hit fd numbers that other
        objects (a jail's pipes) have been given since."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        if self._sampler is not None:
            self._sampler.close()
        for fd in (self._usage, self._peak, self._events):
            if fd is None:
                continue
            try:
                os.close(fd)
            except OSError:
                pass

    def kill_all(self) -> None:
        """The jail is being ended (its nsjail and zygote were sent SIGKILL): SIGKILL every process
        still in its cgroups, then lift their CPU quota, so they leave at once. Dying processes
        are throttled like live ones, and the kernel's bandwidth timer may leave them frozen far
        beyond a period: a killed jail whose zygote held pandas took 200-900 ms to leave its
        cgroup, 30-80 ms unthrottled. The quota goes only once no process of the jail can run
        another user instruction (each has SIGKILL pending, and such a process cannot fork);
        if that cannot be made sure, it stays."""
        if not self._signal_all():
            return
        for d in self._tree(self.cpu):
            try:
                if self.v2:
                    (d / "cpu.max").write_text("max")
                else:
                    (d / "cpu.cfs_quota_us").write_text("-1")
            except OSError:
                pass

    @staticmethod
    def _tree(cgroup: Path) -> list[Path]:
        """A cgroup and the ones below it, each before its children."""
        return [Path(d) for d, _, _ in os.walk(cgroup)]

    def _signal_all(self, rounds: int = 50) -> bool:
        """SIGKILL every process of the jail's cgroups (sessions' below them too); True once a pass
        finds none it has not signalled. v2's cgroup.kill does it in one write; on v1 each process
        is signalled through a pidfd, once /proc says the process it names is in the jail's cgroups
        (never by a number that a process outside the jail may have taken since the list was read)."""
        if self.v2:
            try:
                (self.mem / "cgroup.kill").write_text("1")
                return True
            except OSError:
                pass
        signalled: set[int] = set()
        for _ in range(rounds):
            found = set()
            for d in self._tree(self.mem):
                try:
                    found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
                except (OSError, ValueError):
                    pass
            new = found - signalled
            if not new:
                return True
            for pid in new:
                try:
                    fd = os.pidfd_open(pid)
                except ProcessLookupError:
                    signalled.add(pid)  # gone
                    continue
                except OSError:
                    continue
                try:
                    if self._holds(pid):  # else listed again next pass, or gone: never assumed dead
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                        signalled.add(pid)
                except ProcessLookupError:
                    signalled.add(pid)
                except OSError:
                    pass
                finally:
                    os.close(fd)
        return False

    def _holds(self, pid: int) -> bool:
        """Whether the process numbered `pid` is in the jail's cgroup or one below it now."""
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                lines = f.read().splitlines()
        except OSError:
            return False
        rel = "/" + str(self.mem.relative_to(ROOT if self.v2 else ROOT / "memory"))
        for line in lines:
            _, names, path = (line.split(":", 2) + ["", ""])[:3]
            if (names == "") if self.v2 else ("memory" in names.split(",")):
                return path == rel or path.startswith(rel + "/")
        return False

    def remove(self, wait: float = 2.0) -> None:
        """rmdir this jail's cgroups (sessions' below them first), retrying while killed tasks
        are still leaving them.

        Killed processes can take longer than `wait` to leave (tearing down a large zygote on a
        slow or loaded host: seconds under emulation): what is still there then is removed by a
        background thread that keeps trying for REMOVE_PATIENCE seconds, so a dead slot's cgroup
        does not linger until the sandbox closes."""
        deadline = time.monotonic() + wait
        left = []
        pause = 0.001
        for d in self.dirs:
            while not remove_tree(d):
                if time.monotonic() > deadline:
                    left.append(d)
                    break
                time.sleep(pause)
                pause = min(pause * 2, 0.01)
        if left:
            thread = threading.Thread(target=_remove_later, args=(left,), name="sandbox-cgroup-remove", daemon=True)
            _removing.add(thread)
            thread.start()

    # -- cgroups below a jail's: one per session ----------------------------------------------

    def delegate(self) -> None:
        """Make room for cgroups below this one. On v2 a cgroup that passes controllers down may
        hold no process itself, so the jail's processes move to a leaf ("jail") first; the
        loop catches a process forked meanwhile, which starts in the parent."""
        if not self.v2:
            return
        leaf = self.mem / "jail"
        leaf.mkdir(exist_ok=True)
        for _ in range(1000):
            pids = (self.mem / "cgroup.procs").read_text().split()
            if not pids:
                break
            for pid in pids:
                try:
                    (leaf / "cgroup.procs").write_text(pid)
                except ProcessLookupError:
                    pass
        (self.mem / "cgroup.subtree_control").write_text("+memory +pids +cpu")
        self._leaf = leaf

    def procs(self) -> list[int]:
        """Host pids of the processes in the jail's own cgroup (not in a session's below it)."""
        where = self._leaf or self.mem
        return [int(p) for p in (where / "cgroup.procs").read_text().split()]

    def child(self, name: str) -> SlotCgroup:
        """A new cgroup below this one (memory, pids, cpu, and a freezer), with its own counters.
        On v1 the freezer hierarchy has no jail cgroup of nsjail's: this jail's is made here, and
        removed with the jail's."""
        freezer = None
        if self.v2:
            freezer = self.mem / name
        elif (ROOT / V1_FREEZER).is_dir():
            if self._v1_freezer is None:
                # Named at random, not after nsjail's host pid: a session sees this path in
                # /proc/self/cgroup (its cgroup namespace is rooted above it on v1).
                import secrets  # here: its imports (hmac, hashlib, random) cost a one-shot run ~5 ms

                self._v1_freezer = parent_dir(V1_FREEZER) / f"jail-{secrets.token_hex(8)}"
                self._v1_freezer.mkdir(parents=True)
                self.dirs.append(self._v1_freezer)
            freezer = self._v1_freezer / name
        mem, pids, cpu = self.mem / name, self.pids / name, self.cpu / name
        for d in dict.fromkeys([mem, pids, cpu] + ([freezer] if freezer else [])):
            d.mkdir()
        return SlotCgroup._at(mem, pids, cpu, freezer)

    def freeze(self) -> None:
        """Stop every process of this cgroup (a session between its calls): the cgroup freezer,
        which nothing inside can undo, unlike SIGSTOP (any process of the sender's POSIX session
        may send SIGCONT). A no-op where the host has no freezer."""
        if self.freezer is not None:
            self._write_freezer(True)

    def thaw(self) -> None:
        if self.freezer is not None:
            self._write_freezer(False)

    def _write_freezer(self, frozen: bool) -> None:
        if self.v2:
            (self.freezer / "cgroup.freeze").write_text("1" if frozen else "0")
        else:
            (self.freezer / "freezer.state").write_text("FROZEN" if frozen else "THAWED")

    def frozen(self) -> bool:
        """Whether the freezer holds this cgroup's processes now."""
        if self.freezer is None:
            return False
        if self.v2:
            return "frozen 1" in (self.freezer / "cgroup.events").read_text()
        return (self.freezer / "freezer.state").read_text().strip() == "FROZEN"

    def add(self, pid: int) -> None:
        """Move a process (by host pid) into this cgroup; what it forks later starts here too."""
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))

    def _reset_peak(self) -> None:
        os.pwrite(self._peak, b"0", 0)  # type: ignore[arg-type]

    @staticmethod
    def _int(fd: int) -> int:
        return int(os.pread(fd, 64, 0))

    def _oom_kills(self) -> int:
        for line in os.pread(self._events, 4096, 0).splitlines():
            k, _, v = line.partition(b" ")
            if k == b"oom_kill":
                return int(v)
        return 0

    def usage(self) -> int:
        return self._int(self._usage)

    def set_limits(self, memory_bytes: int, pids: int) -> None:
        if memory_bytes != self._memory_limit:
            if self._memory_limit is not None and memory_bytes < self._memory_limit:
                self._wait_below(memory_bytes)
            if self.v2:
                (self.mem / "memory.max").write_text(str(memory_bytes))
            else:
                memsw = self.mem / "memory.memsw.limit_in_bytes"
                # memory <= memory+swap must hold at every step: order the writes accordingly.
                current = int((self.mem / "memory.limit_in_bytes").read_text())
                raising = memory_bytes > current
                if memsw.exists() and raising:
                    memsw.write_text(str(memory_bytes))
                (self.mem / "memory.limit_in_bytes").write_text(str(memory_bytes))
                if memsw.exists() and not raising:
                    memsw.write_text(str(memory_bytes))
            self._memory_limit = memory_bytes
        if pids != self._pids_limit:
            (self.pids / "pids.max").write_text(str(pids))
            self._pids_limit = pids

    def _wait_below(self, limit: int, patience: float = 5.0) -> None:
        """Before lowering the memory limit, wait until the cgroup holds less than the new one.
        A limit written below what is charged makes the kernel OOM-kill in the cgroup at once:
        the last execution may still be tearing down (its reap is asynchronous, and slow on a
        loaded or emulated host), and the victim would be the child about to run the next
        request, whose run would then look crashed."""
        deadline = time.monotonic() + patience
        while self.usage() > limit and time.monotonic() < deadline:
            time.sleep(0.002)

    def set_cpu(self, cpus: float, period_ms: int) -> None:
        """CPU bandwidth: `cpus` cores' worth in every period of `period_ms`.

        nsjail sets a one-second period. A slot whose processes run on two cores at once (an
        execution tearing down while the next child is forked) can use its second within half
        of it and is then frozen for the rest: the stalls of hundreds of milliseconds seen back
        to back. A short period bounds such a wait by the period.
        """
        _write_bandwidth(self.cpu, self.v2, cpus, period_ms)

    def begin(self) -> Snapshot:
        """Counters at the start of a run; resets the peak so the run's own peak can be read."""
        if self._peak_resettable:
            self._reset_peak()
        else:
            if self._peak is not None:
                self._peak_before = self._int(self._peak)
            self._sampler.start()  # type: ignore[union-attr]
        return Snapshot(self.usage(), self._oom_kills())

    def end(self, start: Snapshot) -> tuple[int, int]:
        """(peak bytes the run added over its start, OOM kills during the run)."""
        if self._peak_resettable:
            peak = self._int(self._peak)  # type: ignore[arg-type]
        else:
            peak = self._sampler.stop()  # type: ignore[union-attr]
            if self._peak is not None:
                all_time = self._int(self._peak)
                if all_time > self._peak_before:  # this run set the record: its peak is exact
                    peak = all_time
        return max(0, peak - start.usage), self._oom_kills() - start.oom_kills


class _PeakSampler:
    """A run's peak memory where the kernel cannot reset memory.peak: memory.current sampled
    every millisecond by one thread per slot, asleep between runs. It can miss a spike shorter
    than the interval; an OOM kill is still read from memory.events, never from this."""

    INTERVAL = 0.001

    def __init__(self, usage_fd: int) -> None:
        self._fd = usage_fd
        self._peak = 0
        self._active = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            self._peak = int(os.pread(self._fd, 64, 0))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sandbox-peak-sampler", daemon=True)
                self._thread.start()
            self._active.set()

    def stop(self) -> int:
        """Stop sampling; the highest memory.current seen since start()."""
        self._active.clear()
        with self._lock:
            try:
                self._peak = max(self._peak, int(os.pread(self._fd, 64, 0)))
            except (OSError, ValueError):
                pass
            return self._peak

    def close(self) -> None:
        self._closed = True
        self._active.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _loop(self) -> None:
        while True:
            self._active.wait()
            if self._closed:
                return
            try:
                value = int(os.pread(self._fd, 64, 0))
            except (OSError, ValueError):
                return  # the cgroup is gone: the slot is closing
            with self._lock:
                if self._active.is_set() and value > self._peak:
                    self._peak = value
            time.sleep(self.INTERVAL)


def remove_stale() -> int:
    """Remove empty slot cgroups left by jails that died with their host process. Returns how many."""
    removed = 0
    dirs = [parent_dir()] if version() == 2 else [parent_dir(c) for c in (*V1_CONTROLLERS, V1_FREEZER)]
    for d in dirs:
        if not d.is_dir():
            continue
        for child in d.glob("NSJAIL.*"):
            try:
                pid = int(child.name.split(".", 1)[1])
            except ValueError:
                continue
            if not os.path.exists(f"/proc/{pid}") and remove_tree(child):
                removed += 1
        # v1 freezer cgroups of session jails are named at random: one with no session cgroup
        # below it is stale or about to get its first (then made again); rmdir refuses the rest.
        for child in d.glob("jail-*"):
            try:
                child.rmdir()
                removed += 1
            except OSError:
                pass
    return removed


REMOVE_PATIENCE = 120.0
_removing: set[threading.Thread] = set()


def settle(timeout: float) -> None:
    """Wait (at most `timeout` seconds) for the background removals to finish: a closing Sandbox
    leaves no cgroup behind, even where killed processes take seconds to leave (emulated hosts)."""
    deadline = time.monotonic() + timeout
    for thread in list(_removing):
        thread.join(max(0.0, deadline - time.monotonic()))


def _remove_later(dirs: list[Path]) -> None:
    try:
        _retry_removal(dirs)
    finally:
        _removing.discard(threading.current_thread())


def _retry_removal(dirs: list[Path]) -> None:
    deadline = time.monotonic() + REMOVE_PATIENCE
    while dirs and time.monotonic() < deadline:
        time.sleep(0.1)
        dirs = [d for d in dirs if not remove_tree(d)]
    if dirs:
        log.warning("cgroups still busy after %.0f s, left for the next start: %s", REMOVE_PATIENCE,
                    ", ".join(map(str, dirs)))


def remove_tree(cgroup: Path) -> bool:
    """rmdir a cgroup and every cgroup the host made below it (a session's, or the leaf a v2 jail's
    processes move to), deepest first: a cgroup with children cannot be removed. True when it is gone;
    False while processes are still leaving (the caller retries)."""
    found = [Path(d) for d, _, _ in os.walk(cgroup)]  # every cgroup after its parent
    for d in reversed(found):
        try:
            d.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            return False
    return True
