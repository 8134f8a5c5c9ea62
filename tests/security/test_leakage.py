"""Leakage between consecutive executions of the same jail.

All tests use `sb1`, a one-slot sandbox, so run 2 is guaranteed to follow run 1 in the same jail
(same zygote, same network namespace, same cgroup). Rules under test: fresh tmpfs mounts per
execution, a private IPC namespace per execution, a fresh fork of the zygote per execution
(environment, module state), every process of the execution killed when it ends, fds closed,
RNGs reseeded in every child.
"""

from __future__ import annotations

import errno
import uuid

from sandbox import Outcome

from ._helpers import describe, expect, one, run


def test_files_in_work_tmp_and_dev_shm_do_not_survive(sb1):
    # Expected: ok twice; run 2 finds none of run 1's files, in any writable place.
    token = uuid.uuid4().hex
    r1 = run(sb1, f"""
        import os
        for d in ("/work", "/tmp", "/dev/shm"):
            os.makedirs(d + "/sub", exist_ok=True)
            for p in (d + "/leak.txt", d + "/sub/leak.txt", d + "/.hidden"):
                with open(p, "w") as f:
                    f.write({token!r})
        evidence(work=sorted(os.listdir("/work")))
    """)
    expect(r1, Outcome.OK)
    assert one(r1)["work"] == [".hidden", "leak.txt", "main.py", "sub"]   # with the program's own file
    r2 = run(sb1, """
        import os
        evidence(listing={d: sorted(os.listdir(d)) for d in ("/work", "/tmp", "/dev/shm")})
    """)
    expect(r2, Outcome.OK)
    assert token not in r2.stdout
    listing = one(r2)["listing"]
    assert listing["/work"] == ["main.py"] and listing["/dev/shm"] == [], listing  # run 2's own file only
    assert not {"leak.txt", "sub", ".hidden"} & set(listing["/tmp"]), listing


def test_sysv_ipc_objects_do_not_survive(sb1):
    # Expected: ok twice; a SysV shared memory segment, semaphore set and message queue created
    # with a fixed key by run 1 (SysV objects outlive their creator) do not exist in run 2.
    key = 0x5B5EC
    r1 = run(sb1, f"""
        libc = _libc
        libc.shmat.restype = _ct.c_void_p
        shmid = libc.shmget({key}, 4096, 0o1666)   # IPC_CREAT | 0666
        addr = libc.shmat(shmid, None, 0)
        _ct.memmove(addr, b"run-1-secret", 12)
        semid = libc.semget({key}, 1, 0o1666)
        msqid = libc.msgget({key}, 0o1666)
        class Msg(_ct.Structure):
            _fields_ = [("mtype", _ct.c_long), ("mtext", _ct.c_char * 32)]
        sent = libc.msgsnd(msqid, _ct.byref(Msg(1, b"run-1-secret")), 32, 0)
        evidence(shmid=shmid, semid=semid, msqid=msqid, sent=sent)
    """)
    expect(r1, Outcome.OK)
    ev1 = one(r1)
    assert ev1["shmid"] >= 0 and ev1["semid"] >= 0 and ev1["msqid"] >= 0 and ev1["sent"] == 0, ev1
    r2 = run(sb1, f"""
        libc = _libc
        def get(fn, *a):
            _ct.set_errno(0)
            return fn(*a), _ct.get_errno()
        evidence(shm=get(libc.shmget, {key}, 0, 0), sem=get(libc.semget, {key}, 0, 0), msg=get(libc.msgget, {key}, 0),
                 proc={{n: open("/proc/sysvipc/" + n).read().splitlines()[1:] for n in ("shm", "sem", "msg")}})
    """)
    expect(r2, Outcome.OK)
    ev2 = one(r2)
    assert ev2["shm"] == [-1, errno.ENOENT] and ev2["sem"] == [-1, errno.ENOENT] and ev2["msg"] == [-1, errno.ENOENT], ev2
    assert ev2["proc"] == {"shm": [], "sem": [], "msg": []}, ev2


def test_posix_shared_memory_does_not_survive(sb1):
    # Expected: ok twice; a POSIX shared memory object (shm_open on /dev/shm) from run 1 cannot be
    # opened by run 2.
    name = f"sbx_{uuid.uuid4().hex[:12]}"
    r1 = run(sb1, f"""
        from multiprocessing import shared_memory, resource_tracker
        shm = shared_memory.SharedMemory(name={name!r}, create=True, size=4096)
        resource_tracker.unregister(shm._name, "shared_memory")  # do not clean up: try to leak it
        shm.buf[:12] = b"run-1-secret"
        evidence(name=shm.name)
    """)
    expect(r1, Outcome.OK)
    r2 = run(sb1, f"""
        from multiprocessing import shared_memory
        try:
            shm = shared_memory.SharedMemory(name={name!r})
            evidence(found=bytes(shm.buf[:12]).decode())
        except FileNotFoundError:
            evidence(found=None)
    """)
    expect(r2, Outcome.OK)
    assert one(r2)["found"] is None, describe(r2)


def test_environment_variables_do_not_survive(sb1):
    # Expected: ok twice; variables set by run 1 (os.environ and putenv) are absent in run 2.
    r1 = run(sb1, """
        import os
        os.environ["SBX_LEAK"] = "run-1"
        os.putenv("SBX_LEAK_PUTENV", "run-1")
        os.environ["PATH"] = "/work/evil:" + os.environ["PATH"]
        os.environ["LD_PRELOAD"] = "/work/evil.so"
        evidence(ok=True)
    """)
    expect(r1, Outcome.OK)
    r2 = run(sb1, """
        import os
        env = _ct.POINTER(_ct.c_char_p).in_dll(_libc, "environ")
        raw, i = [], 0
        while env[i]:
            raw.append(env[i].decode())
            i += 1
        evidence(env=dict(os.environ), raw="\\n".join(raw))
    """)
    expect(r2, Outcome.OK)
    ev = one(r2)
    for k in ("SBX_LEAK", "SBX_LEAK_PUTENV", "LD_PRELOAD"):
        assert k not in ev["env"] and k not in ev["raw"], ev
    assert "/work/evil" not in ev["env"]["PATH"], ev


def test_module_and_interpreter_state_do_not_survive(sb1):
    # Expected: ok twice; run 1 monkeypatches preloaded modules, builtins, sys, numpy/pandas/
    # matplotlib global settings, umask, cwd and signal handlers; run 2 sees pristine state.
    r1 = run(sb1, """
        import builtins, json, os, random, signal, sys
        import numpy, pandas, matplotlib.pyplot as plt
        json.LEAK = "run-1"; numpy.LEAK = "run-1"; builtins.LEAK = "run-1"
        json.loads = lambda *a, **k: "POISONED"
        numpy.sum = lambda *a, **k: 42
        random.random = lambda: 4.0
        builtins.print = lambda *a, **k: None
        sys.modules["sbx_leak"] = type(sys)("sbx_leak")
        sys.path.insert(0, "/work/evil")
        sys.setrecursionlimit(77)
        numpy.seterr(all="raise")
        pandas.set_option("display.max_rows", 3)
        plt.rcParams["figure.figsize"] = (1.0, 1.0)
        os.umask(0o000)
        os.chdir("/tmp")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        evidence(ok=True)
    """)
    expect(r1, Outcome.OK)
    r2 = run(sb1, """
        import builtins, json, os, random, signal, sys
        import numpy, pandas, matplotlib.pyplot as plt
        old = os.umask(0o22)
        evidence(json=hasattr(json, "LEAK"), numpy=hasattr(numpy, "LEAK"), builtins=hasattr(builtins, "LEAK"),
                 loads=json.loads("[1]"), sum=int(numpy.sum([1, 2])), rnd=random.random() < 1.0,
                 mod="sbx_leak" in sys.modules, path="/work/evil" in sys.path, rec=sys.getrecursionlimit(),
                 seterr=numpy.geterr()["divide"], rows=pandas.get_option("display.max_rows"),
                 figsize=list(plt.rcParams["figure.figsize"]), umask=old, cwd=os.getcwd(),
                 sigterm=signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, figs=plt.get_fignums())
    """)
    expect(r2, Outcome.OK)
    ev = one(r2)
    assert ev == {"json": False, "numpy": False, "builtins": False, "loads": [1], "sum": 3, "rnd": True,
                  "mod": False, "path": False, "rec": 1000, "seterr": "warn", "rows": 60,
                  "figsize": [6.4, 4.8], "umask": 0o22, "cwd": "/work", "sigterm": True, "figs": []}, ev


def test_background_process_does_not_survive(sb1):
    # Expected: ok twice; run 1 double-forks a setsid daemon that ignores SIGTERM/SIGHUP and
    # sleeps; it is killed when run 1 ends, so run 2 finds no process but itself (it probes every
    # pid with kill(pid, 0), since hidepid hides even same-uid non-dumpable processes).
    r1 = run(sb1, """
        import os, signal, time
        r, w = os.pipe()
        if os.fork() == 0:
            try:
                os.setsid()  # refused: nothing leaves the execution's process group
            except PermissionError:
                pass
            if os.fork() == 0:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                os.write(w, str(os.getpid()).encode())
                os.close(w)
                while True:
                    time.sleep(1)
            os._exit(0)
        os.close(w)
        pid = int(os.read(r, 32))
        evidence(daemon=pid, alive=errno_of(os.kill, pid, 0) is None)
    """)
    expect(r1, Outcome.OK)
    ev1 = one(r1)
    assert ev1["alive"] is True, ev1
    r2 = run(sb1, f"""
        import os
        me = os.getpid()
        others = [p for p in range(2, 32769) if p != me and errno_of(os.kill, p, 0) is None]
        evidence(daemon=errno_of(os.kill, {ev1["daemon"]}, 0), others=others)
    """)
    expect(r2, Outcome.OK)
    ev2 = one(r2)
    assert ev2["daemon"] == errno.ESRCH and ev2["others"] == [], ev2


def test_late_output_of_a_leftover_child_never_reaches_a_later_run(sb1):
    # Expected: ok twice; a child of run 1 that writes after run 1's main process exited is killed
    # first: its text appears in neither run 1's nor run 2's output.
    r1 = run(sb1, """
        import os, time
        if os.fork() == 0:
            time.sleep(0.5)
            os.write(1, b"LATE-FROM-RUN-1\\n")
            os.write(2, b"LATE-FROM-RUN-1\\n")
            os._exit(0)
        print("run 1 done")
    """)
    expect(r1, Outcome.OK)
    r2 = run(sb1, """
        import time
        time.sleep(1.0)
        print("run 2 done")
    """)
    expect(r2, Outcome.OK)
    for r in (r1, r2):
        assert "LATE-FROM-RUN-1" not in r.stdout and "LATE-FROM-RUN-1" not in r.stderr, describe(r)


def test_open_fds_do_not_survive_and_none_are_inherited(sb1):
    # Expected: ok twice; run 1 leaves files, sockets and pipes open; run 2 holds only its own
    # stdout, stderr and result pipes (no zygote protocol fd, no fd from run 1, stdin closed).
    r1 = run(sb1, """
        import os, socket
        keep = [open("/work/a", "w"), socket.socket(socket.AF_UNIX), os.pipe(), os.open("/usr/bin/python3", os.O_RDONLY)]
        evidence(n=len(os.listdir("/proc/self/fd")))
    """)
    expect(r1, Outcome.OK)
    r2 = run(sb1, """
        import os
        fds = {}
        d = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
        for n in os.listdir(d):
            if int(n) != d:
                try:
                    fds[int(n)] = os.readlink(f"/proc/self/fd/{n}")
                except OSError:
                    pass
        evidence(fds=fds)
    """)
    expect(r2, Outcome.OK)
    fds = {int(k): v for k, v in one(r2)["fds"].items()}
    # stdin is /dev/null (the request pipe is gone); stdout, stderr and the result channel are
    # the execution's own pipes; nothing else, and nothing from run 1.
    assert set(fds) == {0, 1, 2, 3}, fds
    assert fds[0] == "/dev/null" and all(fds[n].startswith("pipe:") for n in (1, 2, 3)), fds


def test_random_streams_differ_between_runs(sb1):
    # Expected: ok six times; random, numpy's legacy global RNG, numpy's default_rng, uuid4 and
    # the tempfile name sequence all differ between consecutive forks of the same zygote.
    code = """
        import random, tempfile, uuid
        import numpy
        evidence(r=random.random(), n=float(numpy.random.rand()), g=float(numpy.random.default_rng().random()),
                 u=str(uuid.uuid4()), t=next(tempfile._get_candidate_names()), bits=random.getrandbits(64))
    """
    seen = []
    for _ in range(6):
        r = run(sb1, code)
        expect(r, Outcome.OK)
        seen.append(one(r))
    for key in ("r", "n", "g", "u", "t", "bits"):
        values = [s[key] for s in seen]
        assert len(set(values)) == len(values), (key, values)


def test_random_streams_differ_across_both_slots(sb):
    # Expected: ok; on the two-slot sandbox too (whichever slot each run lands on), numpy's legacy
    # global RNG never repeats across 8 runs.
    values = []
    for _ in range(8):
        r = sb.run("import numpy, random; print(numpy.random.randint(0, 2**62), random.getrandbits(62))")
        expect(r, Outcome.OK)
        values.append(r.stdout)
    assert len(set(values)) == len(values), values


def _secret_run(sb1) -> dict[str, str]:
    """Run 1 of a leak test: a 'previous tenant' whose code, input file, stdout, stderr and
    output file each carry a distinct random token. Returns the tokens."""
    tokens = {k: f"{k}-{uuid.uuid4().hex}" for k in ("CODE", "INPUT", "STDOUT", "STDERR", "OUTFILE")}
    r1 = sb1.run(
        f"# {tokens['CODE']}\n"
        "import sys\n"
        "data = open('input.csv').read()\n"
        f"print({tokens['STDOUT']!r})\n"
        f"print({tokens['STDERR']!r}, file=sys.stderr)\n"
        f"open('report.txt', 'w').write({tokens['OUTFILE']!r})\n",
        files={"input.csv": f"{tokens['INPUT']},1,2\n"})
    expect(r1, Outcome.OK)
    assert tokens["STDOUT"] in r1.stdout and [f.path for f in r1.files] == ["report.txt"], describe(r1)
    return tokens


def test_previous_execution_data_not_reachable_through_inherited_frames(sb1):
    # Expected: ok, and run 2 finds none of run 1's tokens. Every child is forked from the zygote
    # in the middle of its serving loop, so the child's own call stack (sys._getframe().f_back...)
    # includes the zygote's frames: whatever those frames still reference when the next child is
    # forked (the previous request, its reply, its stdout/stderr/file blobs) is readable by the
    # next tenant's code.
    tokens = _secret_run(sb1)
    # The needles are sent reversed, so run 2's own source (also in those frames) cannot match.
    needles = {k: v[::-1] for k, v in tokens.items()}
    r2 = run(sb1, f"""
        import sys
        needles = {{k: v[::-1] for k, v in {needles!r}.items()}}
        found = {{}}
        f = sys._getframe()
        while f is not None:
            if f.f_code.co_filename == "main.py":   # this program's own frames hold the needles
                f = f.f_back
                continue
            for name, value in list(f.f_locals.items()):
                if value is globals():   # this program's own namespace (display.run_cell's frame holds it)
                    continue
                try:
                    text = repr(value)
                except Exception:
                    continue
                for k, n in needles.items():
                    if n in text:
                        found.setdefault(k, []).append(f"{{f.f_code.co_name}}.{{name}}")
            f = f.f_back
        evidence(found=found)
    """)
    expect(r2, Outcome.OK)
    found = one(r2)["found"]
    assert found == {}, f"run 2 read run 1's data through the zygote's frames: {found}"


def test_previous_execution_data_not_in_inherited_memory(sb1):
    # Expected: ok, and none of run 1's tokens in run 2's address space. The child is a fork of
    # the zygote, which read run 1's request and assembled run 1's reply: unless the zygote never
    # holds that data (or scrubs it), freed-but-not-cleared heap pages carry run 1's code, input
    # files and outputs into every later child, where ctypes can read them.
    tokens = _secret_run(sb1)
    needles = {k: v[::-1] for k, v in tokens.items()}
    r2 = run(sb1, f"""
        # Never build a whole token here: search for its first 16 bytes, then compare the rest.
        halves = {{k: (v[-16:][::-1].encode(), v[:-16][::-1].encode()) for k, v in {needles!r}.items()}}
        hits = {{k: 0 for k in halves}}
        for line in open("/proc/self/maps"):
            parts = line.split()
            if not parts[1].startswith("rw"):
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            pos = start
            while pos < end:
                n = min(end - pos, 4 << 20)
                chunk = _ct.string_at(pos, n + min(128, end - pos - n))
                for k, (h1, h2) in halves.items():
                    i = chunk.find(h1)
                    while i != -1:
                        if chunk[i + 16:i + 16 + len(h2)] == h2:
                            hits[k] += 1
                        i = chunk.find(h1, i + 1)
                pos += n
        evidence(hits={{k: v for k, v in hits.items() if v}})
    """)
    expect(r2, Outcome.OK)
    hits = one(r2)["hits"]
    assert hits == {}, f"run 2 found run 1's data in its inherited memory (token: count): {hits}"


def test_previous_output_does_not_shrink_the_next_runs_memory(sb1):
    # Expected: ok for the control before and after. Run 1 returns 60 MiB of stdout (its caller
    # raised max_stdout_bytes, a legitimate per-call limit); run 2, from another caller, gets the
    # memory it asked for (allocating 200 MiB under memory_bytes=256 MiB works before run 1).
    # If the zygote still holds run 1's output while run 2 runs, that memory is charged to the
    # slot's cgroup and run 2 ends in memory_limit through no fault of its own.
    control = "x = bytearray(200 << 20); print('got', len(x) >> 20)"
    lim = {"memory_bytes": 256 << 20}
    before = sb1.run(control, limits=lim)
    expect(before, Outcome.OK)
    big = sb1.run("import os\nfor _ in range(60):\n    os.write(1, b'x' * (1 << 20))\n",
                  limits={"max_stdout_bytes": 64 << 20})
    expect(big, Outcome.OK)
    assert len(big.stdout) == 60 << 20
    after = sb1.run(control, limits=lim)
    assert after.outcome is Outcome.OK, ("the previous run's output shrank this run's memory budget\n" + describe(after))


def test_library_rngs_are_reseeded_between_runs(sb1):
    # Expected: ok four times, all values distinct. Step 7 reseeds `random` and numpy's legacy
    # RNG; sympy keeps its own module-level random.Random (sympy.core.random.rng, behind
    # randprime, randMatrix, ...), created when the zygote imported sympy: unless reseeded, every
    # execution replays the same "random" stream, predictable from any other execution.
    values = []
    for _ in range(4):
        r = run(sb1, """
            import sympy
            from sympy.core import random as srandom
            evidence(prime=int(sympy.randprime(2**60, 2**61)), rng=srandom.rng.random())
        """)
        expect(r, Outcome.OK)
        values.append(one(r))
    primes = [v["prime"] for v in values]
    rngs = [v["rng"] for v in values]
    assert len(set(primes)) == 4 and len(set(rngs)) == 4, f"sympy's RNG repeats across executions: {values}"


def test_inotify_cannot_watch_host_activity_on_shared_files(sb):
    # Expected: ok, with no event seen. The read-only binds share inodes with the host (and with
    # every other slot); flock, F_SETLK and F_NOTIFY are refused for exactly that reason (covert
    # channel through shared read-only inodes). inotify on the same inodes reports every open or
    # read by any process on the host: a side channel on host activity and a covert channel
    # between executions. Here the host opens a file in /usr while the program watches it.
    import threading
    import time
    from pathlib import Path

    target = Path(f"/usr/local/share/sbx-sectest-ino-{uuid.uuid4().hex}.txt")
    target.write_text("x")
    target.chmod(0o644)
    stop = threading.Event()

    def host_activity() -> None:
        while not stop.is_set():
            target.read_text()
            time.sleep(0.01)

    t = threading.Thread(target=host_activity, daemon=True)
    t.start()
    try:
        r = run(sb, f"""
            import os, select, time
            _libc.inotify_init1.restype = _ct.c_int
            fd = _libc.inotify_init1(0o4000)
            wd = _libc.inotify_add_watch(fd, {str(target).encode()!r}, 0x01 | 0x20) if fd >= 0 else -1   # IN_ACCESS|IN_OPEN
            err = _ct.get_errno()
            events = 0
            if wd >= 0:
                p = select.poll(); p.register(fd, select.POLLIN)
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline and not events:
                    if p.poll(100):
                        events = len(os.read(fd, 4096))
            evidence(fd=fd, wd=wd, err=err, event_bytes=events)
        """)
    finally:
        stop.set()
        t.join()
        target.unlink(missing_ok=True)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["event_bytes"] == 0, f"the jail observed host file accesses through inotify: {ev}"


def test_inotify_covert_channel_between_concurrent_executions(sb):
    # Expected: ok twice, with no event seen by the receiver. Two executions running at once in
    # the two slots (different jails, different tenants) share the image's inodes: the sender
    # opens a file of the image repeatedly, the receiver watches it with inotify.
    import threading

    shared = "/var/lib/sandbox/images/default/manifest.json"
    results = {}

    def go(name: str, code: str) -> None:
        results[name] = run(sb, code, timeout=15)

    receiver = f"""
        import os, select, time
        _libc.inotify_init1.restype = _ct.c_int
        fd = _libc.inotify_init1(0o4000)
        wd = _libc.inotify_add_watch(fd, {shared.encode()!r}, 0x01 | 0x20) if fd >= 0 else -1
        events = 0
        start = time.time()
        if wd >= 0:
            p = select.poll(); p.register(fd, select.POLLIN)
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline and not events:
                if p.poll(100):
                    events = len(os.read(fd, 4096))
        else:
            time.sleep(4)  # keep the window open so the overlap check below stays meaningful
        evidence(wd=wd, event_bytes=events, start=start, end=time.time())
    """
    sender = f"""
        import time
        start = time.time()
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            open({shared!r}).close()
            time.sleep(0.01)
        evidence(start=start, end=time.time())
    """
    tr = threading.Thread(target=go, args=("receiver", receiver))
    ts = threading.Thread(target=go, args=("sender", sender))
    tr.start()
    ts.start()
    tr.join()
    ts.join()
    expect(results["receiver"], Outcome.OK)
    expect(results["sender"], Outcome.OK)
    ev, sent = one(results["receiver"]), one(results["sender"])
    # Both ran in the same window (otherwise the experiment proves nothing either way).
    assert max(ev["start"], sent["start"]) + 1 < min(ev["end"], sent["end"]), (ev, sent)
    assert ev["event_bytes"] == 0, f"one execution signalled another through inotify on a shared inode: {ev}"
