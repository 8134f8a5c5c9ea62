"""Attacks across sessions: sessions live side by side in one jail (children of the same warm fork
server), so everything that separates two stateless runs in time must separate two sessions in
space. Each test has session A plant or hold something and session B (or a later session C) go
after it; each asserts the outcome and that the attack's effect did not happen."""

from __future__ import annotations

import json
import os
import time

import psutil
import pytest

from sandbox import Outcome, SessionClosedError

from ._helpers import ok, program


def evidence(r) -> dict:
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("EVIDENCE ")]
    assert lines, (r.outcome, r.stdout[-2000:], r.stderr[-2000:], r.error)
    return json.loads(lines[-1][len("EVIDENCE "):])


def test_files_of_one_session_are_invisible_to_another(pair):
    a, b = pair
    # Expected: ok; A's files exist only in A's own tmpfs mounts; every other place is read-only.
    r = ok(a.run(program("""
        import os
        planted, refused = [], {}
        for d in ("/work", "/tmp", "/dev/shm", "/", "/opt", "/opt/sandbox", "/etc", "/var/tmp", "/run", "/usr/local", "/proc/self/cwd/.."):
            try:
                with open(os.path.join(d, "from-a.txt"), "w") as f:
                    f.write("a")
                planted.append(os.path.realpath(os.path.join(d, "from-a.txt")))
            except OSError as e:
                refused[d] = e.errno
        evidence(planted=planted, refused=refused)
    """)))
    planted = evidence(r)["planted"]
    assert sorted(planted) == ["/dev/shm/from-a.txt", "/tmp/from-a.txt", "/work/from-a.txt"], planted
    # Expected: ok; B sees none of them.
    r = ok(b.run(program(f"""
        import os
        evidence(seen=[p for p in {planted!r} if os.path.exists(p)])
    """)))
    assert evidence(r)["seen"] == []


def test_processes_of_one_session_can_be_neither_seen_nor_signalled(pair):
    a, b = pair
    # Expected: ok; A leaves a child process running (stopped between calls) and says its pids.
    r = ok(a.run(program("""
        import subprocess, os
        p = subprocess.Popen(["sleep", "300"])
        evidence(pids=[os.getpid(), p.pid])
    """)))
    pids = evidence(r)["pids"]
    # Expected: ok; from B: not in /proc, kill() refused, kill(-1) and its own group kill reach nothing of A.
    # (Each session has its own pid namespace, so A's numbers may be B's own: those are skipped.)
    r = ok(b.run(program(f"""
        import os, signal
        pids = [p for p in {pids!r} if p != os.getpid()]
        visible = [p for p in pids if os.path.exists(f"/proc/{{p}}")]
        errors = {{p: errno_of(os.kill, p, signal.SIGKILL) for p in pids}}
        mem = {{p: errno_of(open, f"/proc/{{p}}/mem", "rb") for p in pids}}
        others = sorted(int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) != os.getpid())
        evidence(visible=visible, errors=errors, mem=mem, others=others, kill_all=errno_of(os.kill, -1, signal.SIGKILL))
    """)))
    ev = evidence(r)
    assert ev["visible"] == [] and ev["others"] == [], ev
    assert all(e is not None for e in ev["errors"].values()), ev  # ESRCH or EPERM: never delivered
    assert all(e is not None for e in ev["mem"].values()), ev
    # Expected: ok; A and its child are alive after all of that.
    r = ok(a.run(program("""
        evidence(alive=p.poll() is None)
    """)))
    assert evidence(r)["alive"] is True


def test_ipc_and_abstract_sockets_do_not_cross_sessions(pair):
    a, b = pair
    # Expected: ok; A creates a SysV segment with a fixed key and listens on an abstract unix socket.
    ok(a.run(program("""
        import ctypes, socket
        _libc.shmget.restype = ctypes.c_int
        shm = _libc.shmget(0x5EED, 4096, 0o1666)  # IPC_CREAT | 0666
        srv = socket.socket(socket.AF_UNIX)
        srv.bind("\\0sandbox-session-probe")
        srv.listen()
        evidence(shm=shm)
    """)))
    # Expected: ok; B finds neither (without a network namespace per session, connect() succeeded).
    r = ok(b.run(program("""
        import ctypes, socket
        _libc.shmget.restype = ctypes.c_int
        shm = _libc.shmget(0x5EED, 4096, 0o666)
        c = socket.socket(socket.AF_UNIX)
        evidence(shm=shm, connect=errno_of(c.connect, "\\0sandbox-session-probe"))
    """)))
    ev = evidence(r)
    assert ev["shm"] == -1 and ev["connect"] is not None, ev


def test_a_closed_session_leaves_nothing_for_the_next(sb):
    a = sb.session()
    marker = f"sandbox-left-{os.getpid()}-{time.monotonic_ns()}"
    # Expected: ok; A plants files, a SysV segment, a socket and a process that would outlive it.
    ok(a.run(program(f"""
        import ctypes, socket, subprocess
        for d in ("/work", "/tmp", "/dev/shm"):
            open(d + "/{marker}", "w").write("x")
        _libc.shmget.restype = ctypes.c_int
        evidence(shm=_libc.shmget(0x5EEE, 4096, 0o1666))
        srv = socket.socket(socket.AF_UNIX)
        srv.bind("\\0{marker}")
        srv.listen()
        subprocess.Popen(["python3", "-c", "import time; time.sleep(300)", "{marker}"], start_new_session=False)
    """)))
    a.close()
    # Nothing of A runs on (looked for from the host, which sees every process).
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    deadline = time.monotonic() + 5
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert left == []
    # Expected: ok; the next sessions (one may get A's uid back) find nothing of A.
    for _ in range(3):
        c = sb.session()
        r = ok(c.run(program(f"""
            import ctypes, os, socket
            _libc.shmget.restype = ctypes.c_int
            s = socket.socket(socket.AF_UNIX)
            evidence(files=[d for d in ("/work", "/tmp", "/dev/shm") if os.path.exists(d + "/{marker}")],
                     shm=_libc.shmget(0x5EEE, 4096, 0o666), connect=errno_of(s.connect, "\\0{marker}"))
        """)))
        ev = evidence(r)
        assert ev["files"] == [] and ev["shm"] == -1 and ev["connect"] is not None, ev
        c.close()


def test_session_ids_cannot_be_guessed(sb):
    # Small limits: at the default ones the session jail admits 16 (its totals cover every session).
    sessions = [sb.session(limits={"memory_bytes": 128 << 20, "max_processes": 8}) for _ in range(20)]
    try:
        ids = [s.id for s in sessions]
        assert len(set(ids)) == 20 and all(len(i) >= 32 for i in ids)
        for i in ids[:5]:
            near = i[:-1] + ("A" if i[-1] != "A" else "B")
            with pytest.raises(SessionClosedError):
                sb.get_session(near)
        for guess in ("1", "0", "session-1", "session-0", "", "../1"):
            with pytest.raises(SessionClosedError):
                sb.get_session(guess)
    finally:
        for s in sessions:
            s.close()


def test_a_session_cannot_take_down_the_zygote_or_its_neighbours(pair):
    a, b = pair
    ok(a.run("x = 'still here'"))
    # Expected: ok or crashed; B signals every pid it can name and the jail's pid 1.
    b.run(program("""
        import os, signal
        results = {}
        for pid in [1] + list(range(2, 400)):
            if pid != os.getpid():
                results[pid] = errno_of(os.kill, pid, signal.SIGKILL)
        evidence(delivered=[p for p, e in results.items() if e is None])
    """))
    assert ok(a.run("print(x)")).stdout == "still here\n"


def test_a_session_can_hold_no_more_memory_than_its_limit(sb):
    s = sb.session(limits={"memory_bytes": 200 << 20})
    # Expected: memory_limit; the session's cgroup stops it, the jail and other sessions go on.
    r = s.run("chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))")
    assert r.outcome is Outcome.MEMORY_LIMIT, (r.outcome, r.stderr[-500:])
    assert r.usage.peak_memory_bytes <= (200 << 20) + (8 << 20)
    with sb.session() as other:
        assert ok(other.run("print(1)")).stdout == "1\n"
