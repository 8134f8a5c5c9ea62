"""One tenant cannot hurt another, or the host (issue 17, the engine side).

Tenants here are concurrent executions in different jails and sessions side by side in one session
jail. Each test is an attack that worked on the engine before this round (main at a669a49), run
through the real engine; each names the rule that stops it (docs/threat-model.md lists them all).
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from sandbox import Limits, Outcome
from sandbox.errors import SessionClosedError
from sandbox.guest import protocol
from sandbox.host import devices, wire
from sandbox.host.image import load_any

from ._helpers import describe, ok, one, program, run


# -- 1. the host's work on what a jail sends is linear and capped ------------------------------

FORGED_ENTRIES = r"""
import json, os, struct
n = {n}
files = [{{"path": f"d{{i}}/" + "x/" * 40 + "f", "size": 0}} for i in range(n)]
head = json.dumps({{"error": None, "exit_code": 0, "images": [], "images_dropped": 0,
                   "files": files, "files_dropped": 0}}).encode()
os.write(3, b"SBX1" + struct.pack(">IQ", len(head), 0) + head)
os._exit(0)
"""


def test_a_forged_reply_with_many_entries_costs_the_host_nothing(sb):
    # Before: wire.decode_reply compared each entry with every earlier one before the max_files cap:
    # 8,000 entries took 5.2 s of the host's CPU (the 4 MiB header holds ~145,000). Now the cap
    # comes first: a header with more values than the limits allow is refused whole, unparsed.
    t0 = time.thread_time()
    r = sb.run(FORGED_ENTRIES.format(n=8000), timeout=30)
    host_cpu = time.thread_time() - t0
    assert r.outcome is Outcome.ERROR and r.error.type == "ResultChannelError", describe(r)
    assert r.files == [] and "separators and brackets" in r.error.message, describe(r)
    assert host_cpu < 0.5, f"the host spent {host_cpu:.2f} s of CPU on one forged reply"


# The costliest header a run can write within protocol.MAX_HEADER: 4 MiB of small or deep lists
# (each a value to build and, for the collector, to track). Parsed whole, [[0]] units took the
# host 0.8 s of CPU per run and 400-deep lists 0.5 s, with the interpreter's lock held throughout.
WORST_HEADER = r"""
import os, struct
unit = {unit!r}
pre, post = b'{{"error":null,"exit_code":0,"images":[],"files":[],"x":[', b']}}'
n = ({cap} - len(pre) - len(post)) // (len(unit) + 1)
head = pre + b",".join([unit] * n) + post
os.write(3, b"SBX1" + struct.pack(">IQ", len(head), 0) + head)
os._exit(0)
"""
WORST_UNITS = (b"[[0]]", b"[" * 400 + b"]" * 400)


def _host_cpu(run, code: str) -> tuple[float, object]:
    """The host process's CPU for one run (the least of three), and the last result."""
    best, r = float("inf"), None
    for _ in range(3):
        t0 = time.process_time()
        r = run(code, timeout=30)
        best = min(best, time.process_time() - t0)
    return best, r


def test_the_worst_header_the_cap_allows_costs_the_host_no_more_than_a_genuine_one(sb):
    # The yardstick, measured here: a genuine run whose result header is near the cap too (an
    # error whose message and traceback are long, each character up to 12 bytes of JSON).
    genuine, r = _host_cpu(sb.run, "raise ValueError('\\U0001F600,' * 200_000)")
    assert r.outcome is Outcome.ERROR and r.error.type == "ValueError", describe(r)
    for unit in WORST_UNITS:
        forged, r = _host_cpu(sb.run, WORST_HEADER.format(unit=unit, cap=protocol.MAX_HEADER))
        assert forged < 3 * genuine, (f"a forged {protocol.MAX_HEADER >> 20} MiB header of {unit[:8]!r}... cost the "
                                      f"host {forged * 1000:.0f} ms of CPU; a genuine run near the cap {genuine * 1000:.0f} ms")
        assert r.outcome is Outcome.ERROR and r.error.type == "ResultChannelError", describe(r)


def test_a_session_call_and_a_file_listing_refuse_a_forged_header_unparsed(pair):
    # The session path decodes the same result headers, and a session's own interpreter answers
    # its file operations: code in the session can forge both.
    a, b = pair
    r = a.run(WORST_HEADER.format(unit=WORST_UNITS[0], cap=protocol.MAX_HEADER), timeout=30)
    assert r.outcome is Outcome.ERROR and r.error.type == "ResultChannelError", describe(r)
    assert "separators and brackets" in r.error.message, describe(r)
    # A listing of more entries than the host takes (sessions.MAX_FILE_LISTING), as the runner's
    # own file operation answers once the session's code has replaced it.
    ok(b.run("import sys\nsys.modules['guest.runner']._file_op = "
             "lambda kind, header, body: ({'files': [{'path': 'a', 'size': 0}] * 150_000}, [])"))
    with pytest.raises(SessionClosedError, match="answered a file operation wrongly"):
        b.files()


def test_a_result_header_over_its_structure_cap_is_refused_before_it_is_parsed(monkeypatch):
    lim = Limits(max_files=4, max_images=2, max_outputs=2)
    # The largest header a genuine runner writes under these limits, every string full of the
    # bytes the cap counts (written as escapes, as protocol.encode writes them): taken.
    text = ",:[{}]é😀\udcff" * 50
    largest = {"error": {"type": "ValueError", "message": text, "line": 1, "traceback": text}, "exit_code": 1,
               "images": [{"name": text, "size": 0, "chart": 0}] * 2, "images_dropped": 0,
               "files": [{"path": f"d{i},:[{{/f", "size": 0} for i in range(4)], "files_dropped": 0,
               "outputs": [{"main": False, "truncated": False,
                            "items": [[m, 0] for m in protocol.OUTPUT_MIME_CAPS]}] * 2, "outputs_dropped": 0}
    header, payload = _reply(protocol.dumps(largest).encode())
    r = wire.decode_reply(header, payload, 0, 0, lim)
    assert r.error.type == "ValueError" and len(r.files) == 4, describe(r)
    # One value more than that cap allows, in a header of a few KiB: refused, and never parsed.
    loads = []
    real = json.loads
    monkeypatch.setattr(json, "loads", lambda *a, **k: loads.append(1) or real(*a, **k))
    over = {"error": None, "exit_code": 0, "images": [], "files": [], "x": [0] * (wire.result_structure(lim) + 1)}
    header, payload = _reply(json.dumps(over).encode())
    r = wire.decode_reply(header, payload, 0, 0, lim)
    assert r.outcome is Outcome.ERROR and r.error.type == "ResultChannelError", describe(r)
    assert loads == [], "the header was parsed before it was refused"


GENUINE_AT_THE_CAPS = r"""
import matplotlib.pyplot as plt
for i in range(2):
    plt.plot([1, 2], [3, i], label="a,b:[c]{d}"); plt.title("t,:[{" * 50); plt.show()
class Rich:
    def _repr_html_(self): return "<b>,:[{</b>"
    def _repr_markdown_(self): return "**,:[{**"
    def _repr_latex_(self): return "$[x, y]$"
    def _repr_json_(self): return {"a,:": [1, {"b": [2, 3]}]}
    def _repr_svg_(self): return '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"></svg>'
    def __repr__(self): return "Rich(,:[{)"
display(Rich(), Rich())
for i in range(3):
    with open(f"{i},:[{{é😀 ]}}.txt", "w") as f:
        f.write("x")
raise ValueError("é😀,:[{" * 30000)
"""


def test_a_genuine_result_at_every_cap_is_taken_whole(sb):
    # The structure cap is derived from max_images, max_files and max_outputs: a genuine result
    # with all of them full (every string full of the bytes the cap counts) comes back whole.
    r = sb.run(GENUINE_AT_THE_CAPS, limits={"max_images": 2, "max_files": 3, "max_outputs": 2}, timeout=60)
    assert r.outcome is Outcome.ERROR and r.error.type == "ValueError", describe(r)
    assert len(r.images) == 2 and all(f.chart for f in r.images), describe(r)
    assert len(r.files) == 3 and len(r.outputs) == 2 and r.outputs[0].json == {"a,:": [1, {"b": [2, 3]}]}, describe(r)
    assert set(r.outputs[1].data) == {"text/plain", "text/html", "text/markdown", "text/latex", "application/json",
                                      "image/svg+xml"}, describe(r)


def _reply(raw: bytes) -> tuple[dict, bytes]:
    header = {"op": "done", "exit_code": 0, "stdout_dropped": 0, "stderr_dropped": 0, "timed_out": False,
              "wall_ms": 1.0, "cpu_ms": 1.0, "main_cpu_ms": 0.0, "result": True, "result_error": None,
              "blob_sizes": [0, 0, len(raw), 0]}
    return header, raw


def test_a_forged_display_frame_is_dropped_in_the_jail_and_breaks_nothing(sb):
    # The zygote relays a display frame only in the runner's shape (known MIME types, at most one
    # item a type, sizes adding up), so the host's small cap on the zygote's frames
    # (jail_process.MAX_FRAME_HEADER/VALUES) never meets a program's forgery: it would replace the jail.
    code = """import json, os, struct
def frame(header, body=b""):
    head = json.dumps(header).encode()
    return struct.pack(">4sIQ", b"SBX1", len(head), len(body)) + head + body
os.write(3, frame({"op": "display", "main": False, "truncated": False, "items": [[",:" * 30000, 0]]}))
os.write(3, frame({"op": "display", "main": False, "truncated": False, "items": [["text/plain", 0]] * 3000}))
os.write(3, frame({"op": "display", "main": [[0]] * 10000, "truncated": False, "items": [["text/plain", 1]]}, b"z"))
display('mine')
"""
    seen: list = []
    r = sb.run(code, on_output=seen.append)
    assert r.outcome is Outcome.OK, describe(r)
    assert [o.data for o in seen] == [o.data for o in r.outputs] == [{"text/plain": "'mine'"}], (seen, describe(r))


def _decode_seconds(n: int) -> float:
    """CPU seconds to decode a forged reply of n deep paths, every one of which clashes with another
    (a directory of all of them, repeated), as the jail may send it within the header cap."""
    lim = Limits(max_files=100_000)
    entries = [{"path": "/".join(["p"] * 60) + f"/{i}", "size": 0} for i in range(n)]
    entries += [{"path": "/".join(["p"] * 60), "size": 0}] * (n // 4)
    raw = json.dumps({"error": None, "exit_code": 0, "images": [], "images_dropped": 0,
                      "files": entries, "files_dropped": 0}).encode()
    assert len(raw) < 4 << 20
    header = {"op": "done", "exit_code": 0, "stdout_dropped": 0, "stderr_dropped": 0, "timed_out": False,
              "wall_ms": 1.0, "cpu_ms": 1.0, "main_cpu_ms": 0.0, "result": True, "result_error": None,
              "blob_sizes": [0, 0, len(raw), 0]}
    t0 = time.process_time()
    r = wire.decode_reply(header, raw, 0, 0, lim)
    spent = time.process_time() - t0
    assert r.files == [], "every one of those paths clashes with another"
    return spent


def test_decoding_the_largest_reply_the_header_cap_allows_is_linear():
    # The worst a jail can send within the 4 MiB header cap (20,000 deep paths and 5,000 copies of
    # their directory), decoded in this process at a quarter and at the whole size: linear work
    # grows 4x (some slack for the sort's log and for noise), quadratic work 16x.
    small, large = _decode_seconds(5_000), _decode_seconds(20_000)
    assert large < 7 * small + 0.05, f"4x the entries took {large / small:.1f}x the time ({small:.3f} s, {large:.3f} s)"


# -- 2. sessions are tenants: signals, pausing, CPU --------------------------------------------

TICKER = """
import threading, time
ticks = [0]
def _tick():
    while True:
        ticks[0] += 1
        time.sleep(0.01)
threading.Thread(target=_tick, daemon=True).start()
"""


def test_a_session_cannot_resume_another_between_its_calls(pair):
    # Before: every process of the session jail shared nsjail's POSIX session, and SIGCONT crosses
    # uids within a session: B's kill(-1, SIGCONT) woke A, whose thread ticked 156 times in 1.6 s
    # while "idle". Now each session is its own POSIX session in its own pid namespace, and is
    # frozen by its cgroup between calls (which nothing inside can undo).
    a, b = pair
    ok(a.run(TICKER))
    before = int(ok(a.run("print(ticks[0])")).stdout)
    r = b.run(program("""
        import os, signal, time
        sent = []
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            sent.append(errno_of(os.kill, -1, signal.SIGCONT))
            time.sleep(0.01)
        evidence(sent=len(sent))
    """), timeout=20)
    ok(r)
    after = int(ok(a.run("print(ticks[0])")).stdout)
    # Each of A's two calls lets its thread run for the call's own few milliseconds.
    assert after - before <= 10, f"A ran {after - before} ticks while it was idle"


def test_an_idle_session_is_frozen_by_its_cgroup(pair, sb):
    a, b = pair
    ok(a.run("x = 1"))
    ok(b.run("y = 2"))
    cgroups = [a._cgroup, b._cgroup]
    deadline = time.monotonic() + 5  # v1 reports FREEZING until every task has stopped
    while not all(cg.frozen() for cg in cgroups) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(cg.frozen() for cg in cgroups), "an idle session's cgroup is not frozen"


def test_each_session_has_its_own_cpu_quota(pair, sb):
    # A session's call may not take the cores the stateless slots need: its cgroup has the
    # quota of one slot ([jail] cpus), whatever the session jail's own.
    a, b = pair
    ok(a.run("x = 1"))
    for cg in (a._cgroup, b._cgroup):
        if cg.v2:
            quota, period = (cg.cpu / "cpu.max").read_text().split()
        else:
            quota, period = (cg.cpu / "cpu.cfs_quota_us").read_text(), (cg.cpu / "cpu.cfs_period_us").read_text()
        assert quota.strip() != "max" and int(quota) > 0
        assert int(quota) / int(period) <= 1.0 + 1e-9, (quota, period)


# -- 3. sessions see nothing of each other: locks, forks, pids, devices ------------------------

def test_sessions_see_no_locks_pids_or_forks_of_each_other(pair):
    # Before: B read A's lock in /proc/locks (pid, device:inode), A's fork count in ns_last_pid,
    # A's pids by kill(pid, 0) (EPERM for a live one, ESRCH else) and the gaps in its own pids.
    a, b = pair
    ok(a.run(program("""
        import fcntl, os, struct, subprocess
        held = open("/tmp/held", "w")
        fcntl.lockf(held, fcntl.LOCK_EX)
        kids = [subprocess.Popen(["sleep", "300"]) for _ in range(3)]
        evidence(pids=[os.getpid()] + [k.pid for k in kids])
    """)))
    r = ok(b.run(program("""
        import os, signal, subprocess
        locks = open("/proc/locks").read()
        last_pid = open("/proc/sys/kernel/ns_last_pid").read()
        alive = [p for p in range(1, 3000) if p != os.getpid() and errno_of(os.kill, p, 0) != 3]  # 3: ESRCH
        first = subprocess.Popen(["true"]); first.wait()
        evidence(locks=locks, last_pid=last_pid, alive=alive, child=first.pid, me=os.getpid())
    """)))
    ev = one(r)
    assert ev["locks"] == "", ev
    assert ev["last_pid"] == "", ev
    assert ev["alive"] == [1], f"B can tell which pids exist: {ev['alive']}"  # 1: its namespace's holder
    # Meanwhile A forks; B's next child follows its first without a gap.
    ok(a.run("import subprocess\nfor _ in range(20):\n    subprocess.run(['true'])"))
    r = ok(b.run(program("""
        import subprocess
        p = subprocess.Popen(["true"]); p.wait()
        evidence(child=p.pid)
    """)))
    assert one(r)["child"] == ev["child"] + 1, "B's pids show A's forks"


@pytest.mark.parametrize("node", sorted(devices.NODES))
def test_a_lock_on_a_device_is_not_seen_by_another_session(pair, node):
    # Before: sessions shared the jail's device nodes: A's write lock on /dev/null made B's lock
    # attempt fail (EAGAIN), a channel between them. Now each session binds its uid's own nodes.
    a, b = pair
    ok(a.run(program(f"""
        import fcntl, os, struct
        held = os.open("/dev/{node}", os.O_RDWR)
        fcntl.fcntl(held, fcntl.F_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 1, 0) + bytes(4))
        evidence(held=True)
    """)))
    r = ok(b.run(program(f"""
        import fcntl, os, struct
        fd = os.open("/dev/{node}", os.O_RDWR)
        evidence(lock=errno_of(fcntl.fcntl, fd, fcntl.F_SETLK,
                               struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 1, 0) + bytes(4)),
                 per_uid_dir=os.listdir("{devices.PER_UID_MOUNT}") if os.access("{devices.PER_UID_MOUNT}", os.R_OK) else [])
    """)))
    ev = one(r)
    assert ev["lock"] is None, f"B saw A's lock on /dev/{node}: {ev}"
    assert ev["per_uid_dir"] == [], "the other sessions' device nodes are reachable"


# -- 4. no channel between concurrent executions in different jails ----------------------------

@pytest.mark.parametrize("node", sorted(devices.NODES))
def test_concurrent_runs_share_no_lockable_device(sb, node):
    # Before: /dev/random and /dev/urandom were the host's, bound into every jail: a lock taken
    # by one run was seen by a concurrent run in another jail.
    holder = program(f"""
        import fcntl, os, struct, time
        fd = os.open("/dev/{node}", os.O_RDWR)
        fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 1, 0) + bytes(4))
        print("HELD", flush=True)
        time.sleep(4)
    """)
    held = threading.Event()
    results = {}

    def hold():
        results["holder"] = sb.run(holder, timeout=20, on_stdout=lambda t: held.set() if "HELD" in t else None)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(20), "the holder never took its lock"
        r = sb.run(program(f"""
            import fcntl, os, struct
            fd = os.open("/dev/{node}", os.O_RDWR)
            evidence(lock=errno_of(fcntl.fcntl, fd, fcntl.F_SETLK,
                                   struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 1, 0) + bytes(4)))
        """), timeout=20)
    finally:
        t.join()
    assert one(ok(r))["lock"] is None, f"a concurrent run saw the other's lock on /dev/{node}"


def _image_file() -> Path:
    """A file of the image that no process maps: its pages are only in the page cache."""
    image = load_any("default")
    found = sorted(Path(image.path).rglob("*.py"), key=lambda p: p.stat().st_size)
    return next(p for p in found if 64 << 10 < p.stat().st_size < 1 << 20)


def _cached(path: Path) -> bool:
    """Whether the first page of `path` is in the page cache (asked from the host, unfiltered)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.mark.parametrize("evict", ["fadvise", "madvise_pageout"])
def test_a_run_cannot_evict_the_shared_page_cache(sb, evict):
    # Flush+reload: evict a page of a shared file (an image library), then ask whether another
    # tenant brought it back. The eviction half, from inside the jail, must do nothing.
    path = _image_file()
    path.read_bytes()
    assert _cached(path)
    code = {
        "fadvise": "fd = os.open(P, os.O_RDONLY)\nos.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)",
        "madvise_pageout": "import mmap\nf = open(P, 'rb')\nm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\nm[0]\nm.madvise(21)",
    }[evict]
    r = sb.run(f"import os\nP = {str(path)!r}\n{code}\nprint('done')", timeout=20)
    assert r.outcome is Outcome.OK and r.stdout == "done\n", describe(r)
    assert _cached(path), f"{evict} from inside the jail evicted a page of the image from the host's cache"


def test_a_run_cannot_ask_whether_a_page_is_cached(sb):
    # The probe half: preadv2(RWF_NOWAIT) answers EAGAIN for a page not in the cache, without
    # reading it. Refused as a filesystem without the flag refuses it; plain preadv2 still works.
    r = run(sb, f"""
        import os
        fd = os.open({str(_image_file())!r}, os.O_RDONLY)
        buf = bytearray(4096)
        evidence(nowait=errno_of(os.preadv, fd, [buf], 0, os.RWF_NOWAIT), plain=os.preadv(fd, [buf], 0, 0))
    """)
    ev = one(ok(r))
    assert ev["nowait"] == errno.EOPNOTSUPP and ev["plain"] == 4096, ev


# -- 13. nothing of the host or the server in what a session reads -----------------------------

def test_a_session_sees_no_host_pid_or_server_wide_counters(pair, sb):
    # Before: /proc/self/cgroup named the jail's cgroup after nsjail's host pid (NSJAIL.<pid>) and
    # the session's after a server-wide counter (session-<n>); /proc/loadavg, /proc/stat, /proc/
    # uptime and /proc/meminfo moved with every other tenant's work.
    a, _ = pair
    code = program("""
        files = {p: open(p).read() for p in ("/proc/self/cgroup", "/proc/loadavg", "/proc/stat", "/proc/uptime",
                                            "/proc/meminfo", "/proc/vmstat", "/proc/locks")}
        evidence(**files)
    """)
    first = one(ok(a.run(code)))
    # Meanwhile other tenants work: a stateless run burns CPU and memory and forks.
    ok(sb.run("import subprocess, time\nx = bytearray(64 << 20)\nt = time.monotonic()\n"
              "while time.monotonic() - t < 1.2:\n    pass\nfor _ in range(20):\n    subprocess.run(['true'])"))
    second = one(ok(a.run(code)))
    cgroup = first["/proc/self/cgroup"]
    assert "NSJAIL" not in cgroup, cgroup
    assert not re.search(r"session-\d{1,6}\b", cgroup), cgroup
    for name in ("/proc/loadavg", "/proc/stat", "/proc/uptime", "/proc/meminfo", "/proc/vmstat"):
        assert first[name] == second[name], f"{name} moved with another tenant's work"


def test_a_stateless_run_sees_no_host_pid(sb):
    r = run(sb, """
        evidence(cgroup=open("/proc/self/cgroup").read())
    """)
    cgroup = one(ok(r))["cgroup"]
    assert "NSJAIL" not in cgroup and all(line.endswith(":/") for line in cgroup.splitlines()), cgroup


# -- 8. the session jail's totals cover the sessions it admits ----------------------------------

def test_the_session_jail_admits_only_sessions_its_totals_cover(sb):
    # Before: the jail's totals (8 GiB, 4096 processes) were below the sum of its sessions' limits,
    # so one tenant's sessions could fill them and the jail's OOM killer would take another's
    # session, within that session's own limit. Now a session the totals cannot cover is refused.
    from sandbox import SessionLimitError

    total = sb._sessions.settings.total_memory_bytes
    big = sb.session(limits={"memory_bytes": total - (512 << 20)})
    try:
        with pytest.raises(SessionLimitError, match="no room"):
            sb.session(limits={"memory_bytes": 1 << 30})
        small = sb.session(limits={"memory_bytes": 256 << 20})  # what is left still fits
        ok(small.run("print(1)"))
        small.close()
    finally:
        big.close()
    ok(sb.session().run("print(2)"))
