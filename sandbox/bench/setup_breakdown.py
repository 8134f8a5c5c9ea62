"""Workload 6: where a child's setup time goes (fork, namespaces, mounts, caps, filter, first bytecode).

The engine does not export per-step timings, so this is measured by replication, not by
instrumenting the engine: a fresh jail with the slot's own nsjail config runs, as its pid 1 and
with the capabilities the zygote has (uid 0 inside its user namespace), a probe that

  1. prepares matplotlib and imports the image's preload list with the zygote's own functions
     (guest.preload.prepare_matplotlib/full), then gc.freeze(), so the process that forks is
     as large as a real zygote (fork cost grows with the page tables);
  2. compiles the seccomp policy with guest.seccomp.compile_policy;
  3. forks N children. Even-numbered children replay guest.isolation's steps one call at a time
     (the same helper functions and arguments as isolation.isolate) with a timestamp after each;
     odd-numbered children call isolation.isolate() itself, as the zygote does, as a cross-check
     of the sum. Each child then compiles and executes a one-line program whose first statement
     reads the clock ("first bytecode"), and reports its timestamps over a pipe.

All timestamps are CLOCK_MONOTONIC (time.perf_counter_ns), comparable across fork. "fork" is the
time from the parent calling fork() to the child's first Python statement; "fork (parent)" is how
long the parent was blocked in fork() (page-table copy). "exit" runs from the child calling
_exit() to its pipe reading EOF (the kernel tears the address space down before it closes the
files); "reap" from there to waitpid() returning (namespaces are released in between).
"""

from __future__ import annotations

import json
import subprocess

from .harness import Context
from .stats import summarize

PROBE = r'''
import gc, json, os, sys, time
params = json.loads(sys.argv[1])
sys.path.insert(0, "/opt/sandbox")
from guest import isolation as L, seccomp, preload
ns = time.perf_counter_ns

preload.prepare_matplotlib()
t = ns(); preload.full(params["preload"]) if params["preload"] else preload.lean(); import_ms = (ns() - t) / 1e6
t = ns(); bpf = seccomp.compile_policy(params["policy"]); compile_ms = (ns() - t) / 1e6
gc.collect()
gc.freeze()
profile, workdir, uid, gid = params["profile"], params["workdir"], params["uid"], params["gid"]
FIRST = compile("import time\n_first = time.perf_counter_ns()\n", "<program>", "exec")


def split():
    marks = [("child_start", ns())]
    mark = lambda name: marks.append((name, ns()))
    parent = os.getppid()
    L.lower_priority(); L.own_process_group(profile); mark("setpgid")
    L._check(L._libc.unshare(L.CLONE_NEWNS | L.CLONE_NEWIPC | L.CLONE_NEWCGROUP), "unshare(mount, ipc, cgroup)"); mark("unshare")
    L._mount(None, "/", None, L.MS_REC | L.MS_PRIVATE); mark("mount_private")
    flags = L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC
    L._mount("tmpfs", workdir, "tmpfs", flags, f"size={profile['workdir_bytes']},mode=0755,uid={uid},gid={gid}")
    L._mount("tmpfs", "/tmp", "tmpfs", flags, f"size={profile['tmp_bytes']},mode=1777")
    L._mount("tmpfs", "/dev/shm", "tmpfs", flags, f"size={profile['shm_bytes']},mode=1777"); mark("mount_tmpfs")
    L._mount("proc", "/proc", "proc", flags, "hidepid=invisible"); mark("mount_proc")
    L.close_fds(keep_below=4); mark("close_fds")
    L.limit_resources(profile); mark("rlimits")
    L.drop_privileges(uid, gid, parent); mark("drop_privileges")
    L.load_seccomp(bpf); mark("seccomp")
    L.reseed(); os.chdir(workdir); mark("reseed_chdir")
    return marks


def whole():
    marks = [("child_start", ns())]
    L.isolate(profile, bpf, workdir=workdir, uid=uid, gid=gid, parent=os.getppid())
    marks.append(("isolate", ns()))
    return marks


samples = []
L.empty_bounding_set()  # as the fork server does once, before it forks children

for i in range(params["n"]):
    mode = "split" if i % 2 == 0 else "whole"
    r, w = os.pipe()
    t0 = ns()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.dup2(w, 3)
            marks = split() if mode == "split" else whole()
            g = {}
            exec(FIRST, g)
            marks.append(("first_bytecode", g["_first"]))
            report = json.dumps(marks).encode()
            os.write(3, report[:-1] + (', ["exit_start", %d]]' % ns()).encode())
        except BaseException as e:
            os.write(3, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
        finally:
            os._exit(0)
    t_ret = ns()
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    t_eof = ns()
    os.waitpid(pid, 0)
    t_reaped = ns()
    os.close(r)
    data = json.loads(b"".join(chunks) or b'{"error": "no report"}')
    exit_start = data.pop()[1] if isinstance(data, list) else t_eof
    samples.append({"mode": mode, "t0": t0, "fork_parent": t_ret - t0, "marks": data,
                    "exit": t_eof - exit_start, "reap": t_reaped - t_eof, "cycle": t_reaped - t0})
print(json.dumps({"import_ms": import_ms, "compile_ms": compile_ms, "samples": samples}))
'''

STEPS = [
    ("fork", "fork (to the child's first statement)", "fork"),
    ("unshare", "unshare(CLONE_NEWNS | CLONE_NEWIPC)", "unshare mnt+ipc"),
    ("mount_private", "make / private (MS_REC | MS_PRIVATE)", "mount: / private"),
    ("mount_tmpfs", "3 tmpfs mounts (workdir, /tmp, /dev/shm)", "mount: 3 tmpfs"),
    ("mount_proc", "private /proc (hidepid)", "mount: /proc"),
    ("close_fds", "close_range of inherited fds", "close fds"),
    ("rlimits", "oom_score_adj + rlimits", "oom adj + rlimits"),
    ("drop_privileges", "caps: bounding set, setresuid/gid, capset, no_new_privs, pdeathsig", "drop caps + uid"),
    ("seccomp", "load the seccomp filter", "seccomp filter"),
    ("reseed_chdir", "reseed RNGs + chdir", "reseed RNGs"),
    ("first_bytecode", "first bytecode of the program (exec of compiled code)", "first bytecode"),
]
EXTRA = [
    ("fork_parent", "fork (parent blocked in fork())", "fork (parent)"),
    ("exit", "exit: _exit() to its pipe closing (address-space teardown)", "exit"),
    ("reap", "reap: pipe closed to waitpid() done (namespace teardown)", "reap"),
    ("cycle", "whole cycle: fork to reaped", "cycle"),
]


def _durations(sample: dict) -> dict[str, float] | None:
    marks = sample["marks"]
    if isinstance(marks, dict):
        return None
    out = {"fork_parent": sample["fork_parent"] / 1e3, "exit": sample["exit"] / 1e3, "reap": sample["reap"] / 1e3,
           "cycle": sample["cycle"] / 1e3}
    prev = sample["t0"]
    for name, t in marks:
        key = "fork" if name == "child_start" else name
        out[key] = (t - prev) / 1e3  # microseconds since the previous mark
        prev = t
    return out


def setup(ctx: Context) -> dict:
    """The breakdown for a child of the full fork server (a zygote-sized process), with the
    same for a child of the lean one (standard library only) under "lean"."""
    with ctx.progress("setup breakdown", 2) as bar:
        full = _breakdown(ctx, ctx.image.preload)
        bar.advance()
        full["lean"] = _breakdown(ctx, [])
        bar.advance()
    return full


def _breakdown(ctx: Context, preload: list[str]) -> dict:
    from sandbox.host import jail
    from sandbox.limits import Limits, seccomp_policy

    r = ctx.runner("nsjail-cold-site")
    params = {"n": ctx.plan.setup_n, "preload": preload, "policy": seccomp_policy(),
              "profile": Limits.from_policy().profile(), "uid": jail.USER_UID, "gid": jail.USER_GID,
              "workdir": jail.WORKDIR}
    cmd = [r._nsjail, "--config", r._cfg, "--quiet", "--", str(ctx.image.python), "-I", "-c", PROBE,
           json.dumps(params)]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=900,
                       env={"PATH": "/usr/bin:/bin"})
    if p.returncode != 0:
        raise RuntimeError(f"setup probe failed (exit {p.returncode}): {p.stderr.decode(errors='replace')[-1500:]}")
    raw = json.loads(p.stdout.decode().strip().splitlines()[-1])
    errors = [s["marks"]["error"] for s in raw["samples"] if isinstance(s["marks"], dict)]
    split = [d for s in raw["samples"] if s["mode"] == "split" and (d := _durations(s))]
    whole = [d for s in raw["samples"] if s["mode"] == "whole" and (d := _durations(s))]
    steps = {}
    for key, label, short in STEPS:
        vals = [d[key] for d in split if key in d]
        steps[key] = {"label": label, "short": short, "us": summarize(vals)}
    for key, label, short in EXTRA:
        steps[key] = {"label": label, "short": short, "us": summarize(d[key] for d in split + whole)}
    split_sum = [sum(d[k] for k in ("unshare", "mount_private", "mount_tmpfs", "mount_proc", "close_fds",
                                   "rlimits", "drop_privileges", "seccomp", "reseed_chdir")) for d in split]
    return {
        "description": "per-step cost of a child's isolation, replayed in a cold jail with the slot's config "
                       "by a process as large as a zygote (see sandbox/bench/setup_breakdown.py)",
        "method": "replication with guest.isolation's own functions; not instrumentation of the engine",
        "n": len(split) + len(whole),
        "errors": errors[:5],
        "zygote_import_ms": raw["import_ms"],
        "seccomp_compile_ms": raw["compile_ms"],
        "steps": steps,
        "isolate_split_sum_us": summarize(split_sum),
        "isolate_whole_us": summarize(d["isolate"] for d in whole),
        "samples": raw["samples"],
    }
