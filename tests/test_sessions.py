"""Stateful sessions (issue #7): state carries over, every way a session ends, lifetimes, files,
streaming, cancellation, and nothing left behind. Real jails, real cgroups."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from sandbox import (AsyncSandbox, FileInfo, InvalidInputError, NoSuchFileError, Outcome, Output, Result,
                     RunCancelledError, Sandbox, SessionClosedError, SessionLimitError)
from sandbox.limits import policy_dir

from _helpers import CGROUP_ROOT, png_size


def ok(r):
    assert r.outcome is Outcome.OK, (r.outcome, r.stderr[-2000:], r.error)
    return r


# -- state -----------------------------------------------------------------------------------

def test_variables_imports_functions_and_files_carry_over(sb):
    with sb.session() as s:
        ok(s.run("import pandas as pd\ndf = pd.read_csv('sales.csv')\ndef total():\n    return df.amount.sum()",
                 files={"sales.csv": "month,amount\njan,3\nfeb,4\n"}))
        r = ok(s.run("print(total())\ndf.to_csv('copy.csv', index=False)"))
        assert r.stdout == "7\n"
        assert [f.path for f in r.files] == ["copy.csv"]
        r = ok(s.run("print(open('copy.csv').read().splitlines()[1])"))
        assert r.stdout == "jan,3\n" and r.files == []  # nothing changed in this call


def test_each_call_returns_its_own_figures_and_changed_files(sb):
    with sb.session() as s:
        r = ok(s.run("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nopen('a.txt', 'w').write('a')"))
        assert len(r.images) == 1 and png_size(r.images[0].data)[0] > 100
        assert [f.path for f in r.files] == ["a.txt"]
        r = ok(s.run("open('b.txt', 'w').write('b')\nopen('a.txt', 'a').write('more')"))
        assert r.images == [] and sorted(f.path for f in r.files) == ["a.txt", "b.txt"]
        assert {f.path: f.data for f in r.files}["a.txt"] == b"amore"


def test_a_call_that_raises_or_exits_does_not_end_the_session(sb):
    with sb.session() as s:
        ok(s.run("x = 1"))
        r = s.run("x += 1\nraise ValueError('boom')")
        assert r.outcome is Outcome.ERROR and r.error.type == "ValueError" and r.error.line == 2
        r = s.run("import sys\nsys.exit(3)")
        assert r.outcome is Outcome.ERROR and r.exit_code == 3
        assert ok(s.run("print(x)")).stdout == "2\n"
        assert not s.closed


def test_stdin_and_input_files_per_call(sb):
    with sb.session() as s:
        assert ok(s.run("print(input().upper())", stdin="hello\n")).stdout == "HELLO\n"
        ok(s.run("pass", files={"data.txt": "one"}))
        ok(s.run("pass", files={"data.txt": "two"}))  # a later call may replace a file
        assert ok(s.run("print(open('data.txt').read())")).stdout == "two\n"


def test_two_sessions_do_not_share_state(sb):
    with sb.session() as a, sb.session() as b:
        ok(a.run("secret = 'a-only'\nopen('mine.txt', 'w').write('a')"))
        r = ok(b.run("import os\nprint('secret' in globals(), os.listdir('.'))"))
        assert r.stdout == "False ['main.py']\n"  # only its own program's file (there while it runs)
        assert a.id != b.id and len(a.id) >= 32


def test_calls_of_different_sessions_run_at_the_same_time(sb):
    with sb.session() as a, sb.session() as b:
        results = []
        threads = [threading.Thread(target=lambda s=s: results.append(s.run("import time\ntime.sleep(1.5)")))
                   for s in (a, b)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.outcome is Outcome.OK for r in results)
        assert time.monotonic() - t0 < 2.8  # one after the other would take 3 s


# -- files ---------------------------------------------------------------------------------

def test_files_read_write_delete(sb):
    with sb.session() as s:
        assert s.files() == []
        s.write_file("in/data.csv", "a,b\n1,2\n")
        ok(s.run("import os\nos.symlink('/etc/passwd', 'link')\nopen('out.bin', 'wb').write(bytes(range(256)))"))
        files = s.files()
        assert files == [FileInfo("in/data.csv", 8, "text/csv"), FileInfo("out.bin", 256, "application/octet-stream")]
        assert s.read_file("out.bin") == bytes(range(256))
        assert s.read_file("in/data.csv") == b"a,b\n1,2\n"
        with pytest.raises(NoSuchFileError):
            s.read_file("link")  # links are never followed
        with pytest.raises(NoSuchFileError):
            s.read_file("missing.txt")
        with pytest.raises(InvalidInputError):
            s.read_file("../etc/passwd")
        s.delete_file("out.bin")
        with pytest.raises(NoSuchFileError):
            s.delete_file("out.bin")
        assert [f.path for f in s.files()] == ["in/data.csv"]
        assert ok(s.run("import os\nprint(sorted(os.listdir('.')))")).stdout == "['in', 'link', 'main.py']\n"


# -- limits and the ways a session ends ----------------------------------------------------------

def ended_by(s, r, outcome, words):
    assert r.outcome is outcome, (r.outcome, r.stderr[-2000:], r.error)
    assert s.closed and words in s.close_reason, s.close_reason
    with pytest.raises(SessionClosedError) as info:
        s.run("print(1)")
    assert words in info.value.reason


def test_a_timeout_ends_the_session_and_keeps_the_output(sb):
    s = sb.session()
    ok(s.run("x = 1"))
    r = s.run("print('before', flush=True)\nwhile True:\n    pass", timeout=1)
    assert r.stdout == "before\n"
    ended_by(s, r, Outcome.TIMEOUT, "out of time")


def test_the_memory_limit_covers_the_whole_session_and_ends_it(sb):
    s = sb.session(limits={"memory_bytes": 300 << 20})
    ok(s.run("import numpy as np\na = np.ones(120 << 20, dtype=np.uint8)"))
    ok(s.run("b = np.ones(120 << 20, dtype=np.uint8)"))  # 240 MiB held in all
    r = s.run("c = np.ones(120 << 20, dtype=np.uint8)")   # 360 MiB: over the session's 300
    ended_by(s, r, Outcome.MEMORY_LIMIT, "memory limit")


def test_cpu_time_is_counted_per_call(sb):
    s = sb.session(limits={"cpu_seconds": 1})
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < {}:\n    pass"
    for _ in range(3):  # 0.6 s each: 1.8 s in all, under 1 s per call
        ok(s.run(spin.format(0.6)))
    r = s.run(spin.format(5))
    ended_by(s, r, Outcome.CPU_LIMIT, "CPU time")


def test_a_crash_ends_the_session(sb):
    s = sb.session()
    r = s.run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    ended_by(s, r, Outcome.CRASHED, "crashed")


def test_a_policy_violation_ends_the_session(sb):
    s = sb.session()
    r = s.run("import ctypes\nctypes.CDLL(None).syscall(101, 0, 0, 0, 0)")  # ptrace: killed by the filter
    ended_by(s, r, Outcome.POLICY_VIOLATION, "system call")


def test_a_session_jail_killed_from_the_host_ends_its_sessions_and_a_new_one_starts():
    with Sandbox(slots=1, preload=False) as sb:
        a, b = sb.session(), sb.session()
        ok(a.run("x = 1"))
        jail = sb._sessions._jail
        os.killpg(jail.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while jail.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        for s in (a, b):
            with pytest.raises(SessionClosedError) as info:
                s.run("print(x)")
            assert "jail" in info.value.reason
        c = sb.session()
        assert ok(c.run("print('fresh')")).stdout == "fresh\n"
        assert ok(sb.run("print(1)")).stdout == "1\n"  # the stateless pool never noticed


def test_closed_sessions_raise_with_their_reason(sb):
    s = sb.session()
    sid = s.id
    assert sb.get_session(sid) is s
    s.close()
    s.close()  # idempotent
    for call in (lambda: s.run("1"), s.files, lambda: s.read_file("a"), lambda: sb.get_session(sid)):
        with pytest.raises(SessionClosedError, match="closed"):
            call()
    with pytest.raises(SessionClosedError, match="no such session"):
        sb.get_session("not-a-session-id")


def test_per_call_limits_cannot_change_what_the_session_was_opened_with(sb):
    with sb.session() as s:
        with pytest.raises(InvalidInputError, match="fixed when the session opens"):
            s.run("1", limits={"memory_bytes": 8 << 30})
        r = s.run("print('x' * 100)", limits={"max_stdout_bytes": 10})
        assert r.stdout_truncated and r.stdout == "x" * 10
        assert not s.closed
    with pytest.raises(InvalidInputError):
        sb.session(ttl=-1)
    with pytest.raises(InvalidInputError):
        sb.session(limits={"no_such_limit": 1})


# -- lifetime: ttl, cap, close -------------------------------------------------------------

@pytest.fixture
def small_policy(tmp_path, monkeypatch):
    """A policy directory whose [sessions] table allows 3 sessions."""
    d = tmp_path / "policies"
    shutil.copytree(policy_dir(), d)
    text = (d / "default.toml").read_text().replace("max_sessions = 256", "max_sessions = 3")
    assert "max_sessions = 3" in text
    (d / "default.toml").write_text(text)
    monkeypatch.setenv("SANDBOX_POLICY_DIR", str(d))
    return d


def test_the_session_cap_and_the_idle_ttl(small_policy):
    with Sandbox(slots=1, preload=False) as sb:
        sessions = [sb.session(ttl=60) for _ in range(3)]
        with pytest.raises(SessionLimitError, match="max_sessions=3"):
            sb.session()
        sessions[0].close()
        short = sb.session(ttl=1)
        assert sb.stats().sessions == 3
        ok(short.run("x = 1"))
        time.sleep(0.5)
        ok(short.run("x += 1"))  # a call resets the idle clock
        time.sleep(2.5)
        with pytest.raises(SessionClosedError, match="idle for more than its ttl of 1 s"):
            short.run("print(x)")
        assert sb.stats().sessions == 2
        assert ok(sessions[1].run("print('still open')")).stdout == "still open\n"


def session_cgroups() -> list[Path]:
    """Every session cgroup on the host: below a jail's (memory, pids, cpu; on v1 the freezer's
    jail cgroup is named at random, not after nsjail's pid)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return list((CGROUP_ROOT / "sandbox").glob("NSJAIL.*/session-*"))
    roots = [CGROUP_ROOT / c / "sandbox" for c in ("memory", "pids", "cpu")]
    found = [p for r in roots if r.is_dir() for p in r.glob("NSJAIL.*/session-*")]
    return found + list((CGROUP_ROOT / "freezer" / "sandbox").glob("jail-*/session-*"))


def test_closing_leaves_nothing_behind():
    with Sandbox(slots=1, preload=False) as sb:
        s = sb.session()
        ok(s.run("import subprocess\np = subprocess.Popen(['sleep', '300'])\nopen('/tmp/x', 'w').write('x')"))
        jail = sb._sessions._jail
        cgroups = list(s._cgroup.dirs)
        assert cgroups and all(d in session_cgroups() for d in cgroups), "a session has a cgroup of its own"
        procs = [int(p) for d in cgroups for p in (d / "cgroup.procs").read_text().split()]
        assert len(procs) >= 2  # the interpreter and its sleep
        s.close()
        deadline = time.monotonic() + 10
        while any(d.exists() for d in cgroups) and time.monotonic() < deadline:
            time.sleep(0.05)  # removed in the background once the killed processes have left
        for d in cgroups:
            assert not d.exists(), d
        for pid in procs:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        sb.session()  # left open: closing the Sandbox ends it
    assert not any(f"NSJAIL.{jail.jail_pid}" in str(d) for d in session_cgroups())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{jail.jail_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the killed zygote, reaped by its new parent
    assert not Path(f"/proc/{jail.jail_pid}").exists()


def test_a_sessions_orphans_are_reaped_and_its_holder_holds_nothing_of_the_server():
    # The init of a session's pid namespace (its holder) is spawned, not forked from the fork
    # server: it must still have the kernel reap what the session orphans (SIGCHLD ignored,
    # else each orphan stays a zombie and a pid of the session's) and carry none of the fork
    # server's fds.
    with Sandbox(slots=1, preload=False) as sb, sb.session() as s:
        r = ok(s.run("import os, subprocess, time\n"
                     "for _ in range(5):\n    subprocess.Popen(['sh', '-c', 'sleep 0.1 & exit 0']).wait()\n"
                     "time.sleep(1)\n"
                     "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))"))
        assert r.stdout.split() == ["[2]"], f"orphans left in the session's namespace: {r.stdout}"
        me = int((s._cgroup.mem / "cgroup.procs").read_text().split()[0])  # the session's interpreter
        ns = os.readlink(f"/proc/{me}/ns/pid")
        server = Path(f"/proc/{me}/stat").read_text().rsplit(")", 1)[1].split()[1]
        siblings = [int(p) for p in Path(f"/proc/{server}/task/{server}/children").read_text().split()]
        holders = [p for p in siblings if p != me and os.readlink(f"/proc/{p}/ns/pid") == ns]
        assert len(holders) == 1, (me, siblings)
        status = Path(f"/proc/{holders[0]}/status").read_text()
        ignored = int(status.split("SigIgn:")[1].split()[0], 16)
        assert ignored & (1 << (signal.SIGCHLD - 1))
        assert os.listdir(f"/proc/{holders[0]}/fd") == []
        # If the fork server dies, the jail ends once it is next used, and the holder with it.
        os.kill(int(server), signal.SIGKILL)
        for _ in range(3):
            try:
                sb.session().run("x = 1")
            except (SessionClosedError, SessionLimitError):
                pass  # "the fork server died": the jail ends
            if not _alive(holders[0]):
                break
        deadline = time.monotonic() + 30  # the jail's teardown, on a slow (emulated) machine too
        while _alive(holders[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(holders[0]), "the holder outlived its fork server's jail"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- between calls -------------------------------------------------------------------------

def test_an_idle_session_is_stopped(sb):
    with sb.session() as s:
        ok(s.run("import threading\nn = [0]\ndef spin():\n    while True:\n        n[0] += 1\n"
                 "threading.Thread(target=spin, daemon=True).start()\nimport time\ntime.sleep(0.3)\n"
                 "rate = n[0] / 0.3\nbefore = n[0]"))
        procs = [int(p) for p in (s._cgroup.mem / "cgroup.procs").read_text().split()]

        def states() -> set[str]:
            return {Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] for p in procs}

        # SIGSTOP takes effect as each process is next scheduled: on a busy machine, a moment
        # after the reply; the cgroup freezer then holds them (v1 shows a frozen task as "D", and
        # its state reads FREEZING until every task is caught).
        deadline = time.monotonic() + 5
        while not (states() <= {"T", "D"} and s._cgroup.frozen()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert states() <= {"T", "D"}, states()  # stopped or frozen, every process of the session
        assert s._cgroup.frozen()
        time.sleep(1.5)
        r = ok(s.run("print(n[0] - before, rate)"))
        grown, rate = (float(v) for v in r.stdout.split())
        assert grown < rate * 0.5, (grown, rate)  # 1.5 s of spinning would be 5 x rate


# -- streaming, async, cancellation ----------------------------------------------------------

def test_streaming_in_a_session(sb):
    with sb.session() as s:
        seen = []
        r = ok(s.run("import time\nprint('first', flush=True)\ntime.sleep(1)\nprint('second')",
                     on_stdout=lambda t: seen.append((time.monotonic(), t))))
        end = time.monotonic()
        assert "".join(t for _, t in seen) == r.stdout == "first\nsecond\n"
        assert end - seen[0][0] >= 0.8
        out = []
        r = s.run("print('x' * 5000)", on_stdout=out.append, limits={"max_stdout_bytes": 3000})
        assert r.stdout_truncated and "".join(out) == r.stdout == "x" * 3000
        assert ok(s.run("print('next call')")).stdout == "next call\n"  # the cap ended nothing


def test_async_sessions_and_stream():
    async def main():
        async with AsyncSandbox(slots=1, preload=False) as asb:
            async with asb.session() as s:
                assert (await s.run("x = 2")).ok
                events = [e async for e in s.stream("print(x * 21)")]
                assert isinstance(events[-1], Result) and events[-1].stdout == "42\n"
                assert "".join(e.text for e in events if isinstance(e, Output)) == "42\n"  # in one chunk or more
                await s.write_file("f.txt", "hi")
                assert [f.path for f in await s.files()] == ["f.txt"]
                assert await s.read_file("f.txt") == b"hi"
            assert s.closed
            s2 = await asb.session(ttl=30)
            again = await asb.get_session(s2.id)
            assert (await again.run("print(3)")).stdout == "3\n"
            await s2.close()
    asyncio.run(main())


def test_cancel_kills_a_stateless_run_and_the_slot_serves_on():
    with Sandbox(slots=1, preload=False) as sb:
        cancel = threading.Event()
        threading.Timer(0.5, cancel.set).start()
        t0 = time.monotonic()
        with pytest.raises(RunCancelledError):
            sb.run("import time\ntime.sleep(20)", cancel=cancel)
        assert time.monotonic() - t0 < 3
        t0 = time.monotonic()
        assert ok(sb.run("print(1)")).stdout == "1\n"
        assert time.monotonic() - t0 < 2 and sb.stats().replacements == 0


def test_async_cancellation_kills_the_run():
    async def main():
        async with AsyncSandbox(slots=1, preload=False) as asb:
            t0 = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(asb.run("import time\ntime.sleep(20)"), 0.5)
            r = await asb.run("print(2)")  # one slot: served only once the first run is gone
            assert r.stdout == "2\n" and time.monotonic() - t0 < 4
            stream = asb.stream("import time\nprint('a', flush=True)\ntime.sleep(20)")
            assert (await anext(stream)).text.startswith("a")
            await stream.aclose()
            t0 = time.monotonic()
            assert (await asb.run("print(3)")).stdout == "3\n" and time.monotonic() - t0 < 3
            async with asb.session() as s:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(s.run("import time\ntime.sleep(20)"), 0.5)
                with pytest.raises(SessionClosedError, match="cancelled"):
                    await s.run("print(1)")  # waits for the cancelled call to end, then refuses
    asyncio.run(main())
