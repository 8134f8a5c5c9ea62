"""Workload 5: memory of warm slots, measured from outside with psutil (smaps_rollup).

Per slot: the nsjail supervisor, the zygote (the jail's pid 1, host pid `slot.jail_pid`) and the
zygote's descendants (the fork server, and the pre-forked, isolated child waiting for the next
request). RSS counts shared pages in full in every process; PSS divides each shared page among the
processes that map it (so PSS adds up across processes); USS is what only that process holds (what
killing it frees).

"What an extra warm slot costs" is measured directly: the total PSS of every jail process before
and after a one-slot pool is started next to the main pool. Shared library pages already resident
cost nothing extra; the copy-on-write pages a zygote dirtied while importing do. The slot's own
cgroup charge (memory.current: its private pages plus kernel memory charged to it) is reported too.

For scale: one unshared warm interpreter that imports the same library set (what a pool of warm
unsandboxed workers, or a Jupyter kernel per user, would pay per worker).
"""

from __future__ import annotations

import subprocess
import time

import psutil

from .harness import Context

MiB = 1 << 20


def proc_mem(pid: int) -> dict | None:
    try:
        p = psutil.Process(pid)
        m = p.memory_full_info()
        return {"pid": pid, "name": p.name(), "rss": m.rss, "pss": getattr(m, "pss", 0), "uss": m.uss,
                "swap": getattr(m, "swap", 0)}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def slot_memory(slot) -> dict:
    zyg = proc_mem(slot.jail_pid)
    # The zygote's direct child is the fork server; the pre-forked child is the fork server's.
    try:
        direct = {c.pid for c in psutil.Process(slot.jail_pid).children()}
        found = [(c.pid, proc_mem(c.pid)) for c in psutil.Process(slot.jail_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        direct, found = set(), []
    kids = [m for _, m in found if m]
    roles = ["fork server" if pid in direct else "pre-forked child" for pid, m in found if m]
    try:
        cg = slot.cgroup.usage()
    except OSError:
        cg = None
    return {"slot": slot.index, "nsjail": proc_mem(slot.proc.pid), "zygote": zyg, "children": kids,
            "child_roles": roles,
            "cgroup_bytes": cg, "import_ms": slot.ready.get("import_ms")}


def _pool_pids(sb) -> list[int]:
    pids = []
    for slot in list(sb._pool._live.values()):
        pids += [slot.proc.pid, slot.jail_pid]
        try:
            pids += [c.pid for c in psutil.Process(slot.jail_pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return pids


def _total(pids: list[int], key: str) -> int:
    return sum((m or {}).get(key, 0) for m in (proc_mem(p) for p in pids))


def _settle(sb) -> None:
    """An idle pool: every slot's child pre-forked and isolated (one run, then a pause)."""
    sb.run("pass")
    time.sleep(0.3)


REFERENCE = """
import gc, importlib, os, shutil, sys, tempfile
seed = os.environ.pop("BENCH_MPL_SEED", "")
if seed and os.path.isdir(seed):
    d = tempfile.mkdtemp()
    shutil.copytree(seed, d + "/mpl")
    os.environ["MPLCONFIGDIR"] = d + "/mpl"
for m in sys.argv[1:]:
    importlib.import_module(m)
gc.collect()
print("ready", flush=True)
sys.stdin.read()
"""


def reference_interpreter(ctx: Context) -> dict:
    env = dict(ctx.env, BENCH_MPL_SEED=str(ctx.image.mpl_seed))
    p = subprocess.Popen([str(ctx.image.python), "-I", "-c", REFERENCE, *ctx.image.preload], env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = p.stdout.readline()  # type: ignore[union-attr]
        m = proc_mem(p.pid) if line.startswith("ready") else None
    finally:
        p.stdin.close()  # type: ignore[union-attr]
        p.wait(30)
    return {"description": f"one unisolated `python -I` that imported the image's {len(ctx.image.preload)} "
                           "preload modules (no sharing with anything)", "mem": m}


def memory(ctx: Context) -> dict:
    from sandbox import Sandbox

    sb = ctx.sb
    with ctx.progress("memory", 4) as bar:
        _settle(sb)
        slots = [slot_memory(s) for s in sorted(sb._pool._live.values(), key=lambda s: s.index)]
        bar.advance()
        extra_result = None
        if ctx.plan.memory_extra_slot:
            before_pss = _total(_pool_pids(sb), "pss")
            avail_before = psutil.virtual_memory().available
            t0 = time.perf_counter()
            extra = Sandbox(slots=1)
            try:
                _settle(extra)
                start_s = time.perf_counter() - t0
                _settle(sb)
                # pids afresh: each settle run replaced the pre-forked children
                after_pss = _total(_pool_pids(sb) + _pool_pids(extra), "pss")
                avail_after = psutil.virtual_memory().available
                new_slot = slot_memory(next(iter(extra._pool._live.values())))
                uss = sum((m or {}).get("uss", 0) for m in
                          [new_slot["nsjail"], new_slot["zygote"], *new_slot["children"]])
                extra_result = {
                    "total_pss_before": before_pss,
                    "total_pss_after": after_pss,
                    "marginal_pss": after_pss - before_pss,
                    "slot_uss": uss,
                    "slot_cgroup_bytes": new_slot["cgroup_bytes"],
                    "mem_available_delta": avail_before - avail_after,
                    "start_s": round(start_s, 3),
                    "slot": new_slot,
                }
            finally:
                extra.close()
        bar.advance()
        ref = reference_interpreter(ctx)
        bar.advance()
        others = {}
        for key, r in list(ctx._runners.items()):
            for pid in r.pids():
                m = proc_mem(pid)
                if m:
                    others[r.name] = m
        bar.advance()

    def per_slot(key: str) -> float | None:
        vals = []
        for s in slots:
            procs = [s["nsjail"], s["zygote"], *s["children"]]
            vals.append(sum((m or {}).get(key, 0) for m in procs))
        return sum(vals) / len(vals) if vals else None

    return {
        "description": "PSS/USS/RSS of every warm slot's processes (psutil memory_full_info), "
                       "the measured cost of one more warm slot, and an unshared warm interpreter for scale",
        "slots": slots,
        "per_slot_mean": {k: per_slot(k) for k in ("rss", "pss", "uss")},
        "extra_slot": extra_result,
        "reference_interpreter": ref,
        "baseline_processes": others,
    }
