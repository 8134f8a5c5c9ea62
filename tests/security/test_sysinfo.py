"""sysinfo(2) shows no host-wide figure (issue 17, row 13's last sibling).

Before: a run or a session calling sysinfo (ctypes, glibc's sysconf(_SC_AVPHYS_PAGES), its
getloadavg()) saw the host's load averages, free memory, uptime and process count (every thread on
the host: other tenants' fork activity). Now each jail's notifier (guest/sysinfo.py) answers every
call with the jail's /proc stand-ins. These tests compare with the host's own sysinfo, taken here.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from pathlib import Path

from sandbox import Outcome, Sandbox
from sandbox.host import jail

from ._helpers import describe, evidence, ok, one, program, run

NOTIFIER = "sbx-sysinfo"


class _Sysinfo(ctypes.Structure):
    _fields_ = [("uptime", ctypes.c_long), ("loads", ctypes.c_ulong * 3), ("totalram", ctypes.c_ulong),
                ("freeram", ctypes.c_ulong), ("sharedram", ctypes.c_ulong), ("bufferram", ctypes.c_ulong),
                ("totalswap", ctypes.c_ulong), ("freeswap", ctypes.c_ulong), ("procs", ctypes.c_ushort),
                ("pad", ctypes.c_ushort), ("totalhigh", ctypes.c_ulong), ("freehigh", ctypes.c_ulong),
                ("mem_unit", ctypes.c_uint)]


def _host_sysinfo() -> dict:
    s = _Sysinfo()
    assert ctypes.CDLL(None).sysinfo(ctypes.byref(s)) == 0
    return {"uptime": s.uptime, "loads": list(s.loads), "freeram": s.freeram * s.mem_unit, "procs": s.procs}


def _stand_in() -> dict:
    """What the jail's /proc stand-ins say (host/jail.proc_masks): sysinfo must agree."""
    meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024
               for line in jail.proc_masks()["/proc/meminfo"].splitlines()}
    page = os.sysconf("SC_PAGE_SIZE")
    return {"uptime": 1000, "loads": [0, 0, 0], "totalram": meminfo["MemTotal"], "freeram": meminfo["MemFree"],
            "totalswap": 0, "freeswap": 0, "procs": 1, "mem_unit": 1,
            "phys_pages": meminfo["MemTotal"] // page, "avphys_pages": meminfo["MemFree"] // page,
            "loadavg": [0.0, 0.0, 0.0]}


# The program: sysinfo through ctypes (main thread, another thread, an exec'd interpreter),
# glibc's sysconf and getloadavg, and a pointer it cannot write.
READ_SYSINFO = """
import ctypes, os, subprocess, sys, threading
class S(ctypes.Structure):
    _fields_ = [("uptime", ctypes.c_long), ("loads", ctypes.c_ulong * 3), ("totalram", ctypes.c_ulong),
                ("freeram", ctypes.c_ulong), ("sharedram", ctypes.c_ulong), ("bufferram", ctypes.c_ulong),
                ("totalswap", ctypes.c_ulong), ("freeswap", ctypes.c_ulong), ("procs", ctypes.c_ushort),
                ("pad", ctypes.c_ushort), ("totalhigh", ctypes.c_ulong), ("freehigh", ctypes.c_ulong),
                ("mem_unit", ctypes.c_uint)]
libc = ctypes.CDLL(None, use_errno=True)
def read():
    s = S()
    assert libc.sysinfo(ctypes.byref(s)) == 0, ctypes.get_errno()
    return {"uptime": s.uptime, "loads": list(s.loads), "totalram": s.totalram, "freeram": s.freeram,
            "totalswap": s.totalswap, "freeswap": s.freeswap, "procs": s.procs, "mem_unit": s.mem_unit}
main = read()
seen = []
t = threading.Thread(target=lambda: seen.append(read())); t.start(); t.join()
exec_d = subprocess.run([sys.executable, "-c", "import os; print(os.sysconf('SC_AVPHYS_PAGES'))"],
                        capture_output=True, text=True)
ctypes.set_errno(0)
bad = (libc.sysinfo(ctypes.c_void_p(16)), ctypes.get_errno())
evidence(main=main, thread=seen[0], exec_avphys=exec_d.stdout.strip() + exec_d.stderr,
         phys_pages=os.sysconf("SC_PHYS_PAGES"), avphys_pages=os.sysconf("SC_AVPHYS_PAGES"),
         loadavg=list(os.getloadavg()), bad=bad)
"""


def _check(ev: dict) -> None:
    want = _stand_in()
    host = _host_sysinfo()
    # The comparison means something: the host's own figures are not the stand-ins.
    assert host["procs"] > 1 and host["uptime"] != want["uptime"], host
    fields = {k: want[k] for k in ("uptime", "loads", "totalram", "freeram", "totalswap", "freeswap", "procs", "mem_unit")}
    assert ev["main"] == fields, f"sysinfo showed {ev['main']}; the host has {host}"
    assert ev["thread"] == fields, ev["thread"]
    assert ev["phys_pages"] == want["phys_pages"] and ev["avphys_pages"] == want["avphys_pages"], ev
    assert ev["exec_avphys"] == str(want["avphys_pages"]), ev["exec_avphys"]
    assert ev["loadavg"] == want["loadavg"], ev["loadavg"]
    assert ev["bad"] == [-1, 14], ev["bad"]  # EFAULT, as the kernel answers a bad pointer


def _load() -> threading.Event:
    """Load on the host meanwhile (two busy threads' worth of processes), so its figures move."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    for _ in range(2):
        threading.Thread(target=spin, daemon=True).start()
    return stop


def test_a_run_sees_the_stand_ins_not_the_hosts_figures(sb):
    stop = _load()
    try:
        _check(one(ok(run(sb, READ_SYSINFO))))
    finally:
        stop.set()


def test_a_session_sees_the_stand_ins_not_the_hosts_figures(pair):
    a, _ = pair
    _check(one(ok(a.run(program(READ_SYSINFO), timeout=20))))
    _check(one(ok(a.run(program(READ_SYSINFO), timeout=20))))  # and on its next call


CONCURRENT = """
import ctypes, threading
class S(ctypes.Structure):
    _fields_ = [("uptime", ctypes.c_long), ("loads", ctypes.c_ulong * 3), ("totalram", ctypes.c_ulong),
                ("freeram", ctypes.c_ulong), ("rest", ctypes.c_ulong * 4), ("procs", ctypes.c_ushort)]
libc = ctypes.CDLL(None)
seen, n = set(), [0]
def loop():
    for _ in range(300):
        s = S()
        buf = ctypes.create_string_buffer(128)
        assert libc.sysinfo(buf) == 0
        s = S.from_buffer_copy(buf.raw[:ctypes.sizeof(S)])
        seen.add((s.uptime, tuple(s.loads), s.totalram, s.freeram, s.procs))
        n[0] += 1
threads = [threading.Thread(target=loop) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
evidence(seen=sorted(seen), calls=n[0])
"""


def test_sysinfo_is_consistent_under_concurrent_runs_and_sessions(sb, pair):
    want = _stand_in()
    expected = [[want["uptime"], want["loads"], want["totalram"], want["freeram"], want["procs"]]]
    results: list = []
    callers = [lambda: run(sb, CONCURRENT, timeout=60) for _ in range(3)]
    callers += [lambda s=s: s.run(program(CONCURRENT), timeout=60) for s in pair]
    threads = [threading.Thread(target=lambda c=c: results.append(c())) for c in callers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(callers)
    for r in results:
        ev = one(ok(r))
        assert ev["calls"] == 1200 and ev["seen"] == expected, ev


FLOOD = """
import ctypes, threading, time
libc = ctypes.CDLL(None)
n = [0]
def loop():
    buf = ctypes.create_string_buffer(128)
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        libc.sysinfo(buf)
        n[0] += 1
threads = [threading.Thread(target=loop) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
evidence(calls=n[0])
"""


def test_a_sysinfo_loop_gets_its_answers_at_a_bounded_rate(sb, pair):
    """The notifier's CPU is counted in no caller's quota, and the session jail's is shared by every
    session: it answers at most 2,000 calls a second (200 at once), so four threads calling sysinfo
    for 2 s get about 4,200 answers. Unpaced, they got tens of thousands (about 45,000 a second),
    a core of the jail's CPU."""
    for caller in (lambda: run(sb, FLOOD, timeout=30), lambda: pair[0].run(program(FLOOD), timeout=30)):
        calls = one(ok(caller()))["calls"]
        assert 100 < calls <= 2 * 2000 + 200 + 800, calls


CROWD = """
import ctypes, statistics, threading, time
libc = ctypes.CDLL(None)
took = []
def loop():
    buf = ctypes.create_string_buffer(128)
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        t0 = time.perf_counter()
        libc.sysinfo(buf)
        took.append(time.perf_counter() - t0)
threads = [threading.Thread(target=loop) for _ in range(40)]
for t in threads: t.start()
for t in threads: t.join()
evidence(median=statistics.median(took), calls=len(took))
"""

ONE_AT_A_TIME = """
import ctypes, statistics, time
libc = ctypes.CDLL(None)
buf = ctypes.create_string_buffer(128)
took = []
for _ in range(40):
    t0 = time.perf_counter()
    libc.sysinfo(buf)
    took.append(time.perf_counter() - t0)
    time.sleep(0.01)
evidence(median=statistics.median(took))
"""


def test_one_sessions_sysinfo_crowd_does_not_spend_anothers_share_of_the_rate(pair):
    """The session jail's notifier is shared: while session A keeps 40 threads in sysinfo, session
    B's calls are answered in turn (one of A's before each), not after all of A's waiting ones.
    First come first served, B's calls waited as long as A's (medians of about 20 ms each)."""
    a, b = pair
    crowd: list = []
    t = threading.Thread(target=lambda: crowd.append(a.run(program(CROWD), timeout=30)))
    t.start()
    try:
        time.sleep(1.0)  # A's threads are all calling by now
        mine = one(ok(b.run(program(ONE_AT_A_TIME), timeout=30)))
    finally:
        t.join()
    theirs = one(ok(crowd[0]))
    assert theirs["calls"] > 1000, theirs  # A was at the rate cap meanwhile
    assert mine["median"] * 4 < theirs["median"], (mine, theirs)


# -- the notifier: out of every child's reach ---------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _notifier_of(zygote: int) -> int:
    found = [p for p in _children(zygote) if Path(f"/proc/{p}/comm").read_text().strip() == NOTIFIER]
    assert len(found) == 1, f"zygote {zygote}: notifiers {found}"
    return found[0]


def _status(pid: int) -> dict:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


ATTACK_NOTIFIER = """
import os, signal
me = os.getpid()
killed = [p for p in range(1, 5000) if p != me and errno_of(os.kill, p, signal.SIGKILL) is None]
stopped = [p for p in range(1, 5000) if p != me and errno_of(os.kill, p, signal.SIGSTOP) is None]
evidence(killed=killed, stopped=stopped, me=me)
"""


def _notifiers(sb, session) -> dict[str, int]:
    found = {f"slot{i}": _notifier_of(slot.jail.zygote_pid) for i, slot in sb._pool._live.items()}
    found["sessions"] = _notifier_of(session._jail.jail_pid)
    return found


def test_a_child_cannot_kill_stop_or_ptrace_the_notifier(sb, pair):
    a, _ = pair
    ok(a.run("x = 1"))
    before = _notifiers(sb, a)
    for pid in before.values():
        st = _status(pid)
        # Only what writing a caller's memory takes (CAP_DAC_OVERRIDE, CAP_SYS_PTRACE), no way to
        # regain more, its own filter; and not a uid any child runs as.
        kept = (1 << 19) | (1 << 1)
        assert int(st["CapEff"], 16) == int(st["CapPrm"], 16) == int(st["CapBnd"], 16) == kept, st
        assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0, st
        assert st["NoNewPrivs"].strip() == "1" and st["Seccomp"].strip() == "2", st
        settings = sb._pool._live[0].jail.settings
        assert st["Uid"].split()[:3] == [str(settings.outside_uid)] * 3, st  # the jail's root, no child's uid
    # Signals: every pid the child can name, from a stateless run and from a session.
    for r in [run(sb, ATTACK_NOTIFIER, timeout=30) for _ in range(len(sb._pool._live))] + [a.run(program(ATTACK_NOTIFIER), timeout=30)]:
        ev = one(ok(r))
        assert ev["killed"] == [] and ev["stopped"] == [], ev
    # ptrace and process_vm_writev of whatever pid 2 is (the jail's notifier in a slot): killed.
    for nr, args in ((101, (16, 2, 0, 0)), (311, (2, 0, 0, 0, 0, 0))):  # PTRACE_ATTACH; process_vm_writev
        r = run(sb, f"evidence(ret=raw_syscall({nr}, *{args!r}))")
        assert r.outcome is Outcome.POLICY_VIOLATION, describe(r)
    time.sleep(0.2)
    after = _notifiers(sb, a)
    assert after == before, (before, after)
    for pid in after.values():
        assert _status(pid)["State"].split()[0] in ("S", "R"), _status(pid)
    # And it still answers.
    _check(one(ok(run(sb, READ_SYSINFO))))
    _check(one(ok(a.run(program(READ_SYSINFO), timeout=20))))


# -- if the notifier dies, the jail fails loudly ------------------------------------------------

def test_a_dead_notifier_ends_the_jail_and_no_run_reads_garbage():
    # With the listener gone, the kernel answers sysinfo with ENOSYS and glibc's sysconf would read
    # an uninitialised struct: the zygote ends the jail instead; the run in flight is a sandbox
    # error (never a result computed from garbage) and the pool's fresh jail answers again.
    with Sandbox(slots=1) as sb:
        slot = sb._pool._live[0]
        notifier = _notifier_of(slot.jail.zygote_pid)
        results: list = []
        t = threading.Thread(target=lambda: results.append(sb.run(program(
            "import os, time\ntime.sleep(1.5)\nevidence(avphys=os.sysconf('SC_AVPHYS_PAGES'))"), timeout=20)))
        t.start()
        time.sleep(0.7)
        os.kill(notifier, signal.SIGKILL)
        t.join()
        r = results[0]
        assert r.outcome is Outcome.SANDBOX_ERROR and not evidence(r), describe(r)
        deadline = time.monotonic() + 5
        while not slot.jail.dead() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slot.jail.dead(), "the jail outlived its notifier"
        assert "sysinfo notifier died" in slot.jail.diagnostics(), slot.jail.diagnostics()
        _check(one(ok(run(sb, READ_SYSINFO, timeout=60))))


def test_the_notifier_is_small(sb):
    # One per jail: a bare interpreter (exec'd, not a copy of the zygote, whose pages the zygote's
    # warm-up would make private: 8 MiB so).
    for slot in sb._pool._live.values():
        pid = _notifier_of(slot.jail.zygote_pid)
        rollup = {line.split(":")[0]: int(line.split()[1]) for line in
                  Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]}
        uss_kib = rollup["Private_Clean"] + rollup["Private_Dirty"]
        assert uss_kib < 5 << 10 and rollup["Pss"] < 6 << 10, rollup  # measured: 3.3 MiB, 3.4 MiB
