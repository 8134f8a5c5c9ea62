"""CPU per stateless run across the whole spare cycle, robust to a busy machine.

    PYTHONPATH=<tree> python benchmarks/spare_cycle.py [N] [CODE]

Starts a one-slot Sandbox, warms it, then runs CODE (default `print(1)`) N times back to back
(default 500). The slot's v1 cgroups have no cpuacct controller, so the jail's processes (zygote,
fork servers, spares) are moved into a cpuacct cgroup of this script's own for the measurement
(every child forked after that lands there too) and moved back at the end; root only.

Prints, per run: the jail's CPU (cpuacct.usage: every process of the slot, the children's exit
and teardown included), the wall time and latency, and for each process its own CPU, the CPU of
the children it reaped (a fork server's: the executions, from fork to reaped) and the minor
faults of both (/proc/PID/stat). On a shared machine compare trees interleaved, several rounds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from sandbox import Sandbox

HZ = os.sysconf("SC_CLK_TCK")
CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def _stat(pid: int) -> dict:
    text = Path(f"/proc/{pid}/stat").read_text()
    f = text[text.rindex(")") + 2:].split()
    return {"minflt": int(f[7]), "cminflt": int(f[8]), "cpu": int(f[11]) + int(f[12]),
            "ccpu": int(f[13]) + int(f[14])}


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _move(pid: int | str, cgroup: Path) -> None:
    try:
        (cgroup / "cgroup.procs").write_text(str(pid))
    except OSError:  # gone meanwhile
        pass


def measure(sb: Sandbox, n: int, code: str) -> dict:
    for _ in range(50):
        sb.run(code)
    slot = sb._pool.acquire()
    sb._pool.release(slot)
    zygote = slot.jail_pid
    acct = CPUACCT / f"spare_cycle_{os.getpid()}"
    acct.mkdir()
    try:
        servers = _children(zygote)
        for pid in [zygote, *servers, *(c for s in servers for c in _children(s))]:
            _move(pid, acct)
        procs = {zygote: "zygote", os.getpid(): "host (this process)"}
        procs.update({s: f"fork server {s} ({len(_children(s))} spares)" for s in servers})
        before = {p: _stat(p) for p in procs}
        usage0 = int((acct / "cpuacct.usage").read_text())
        lat = []
        t0 = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            r = sb.run(code)
            lat.append(time.perf_counter() - t)
            if r.exit_code != 0:
                raise SystemExit(f"the run failed: {r}")
        wall = time.perf_counter() - t0
        time.sleep(0.3)  # the last execution reaped
        usage1 = int((acct / "cpuacct.usage").read_text())
        after = {p: _stat(p) for p in procs}
    finally:
        for pid in (acct / "cgroup.procs").read_text().split():
            _move(pid, CPUACCT)
        time.sleep(0.1)
        acct.rmdir()
    lat.sort()
    out = {"jail_cpu_ms_per_run": round((usage1 - usage0) / 1e6 / n, 3),
           "wall_ms_per_run": round(wall * 1e3 / n, 3),
           "p50_ms": round(lat[n // 2] * 1e3, 3), "p99_ms": round(lat[int(n * 0.99)] * 1e3, 3)}
    for pid, name in procs.items():
        b, a = before[pid], after[pid]
        out[name] = {"cpu_ms": round((a["cpu"] - b["cpu"]) * 1000 / HZ / n, 3),
                     "reaped_children_cpu_ms": round((a["ccpu"] - b["ccpu"]) * 1000 / HZ / n, 3),
                     "minflt": round((a["minflt"] - b["minflt"]) / n, 1),
                     "reaped_children_minflt": round((a["cminflt"] - b["cminflt"]) / n, 1)}
    return out


if __name__ == "__main__":
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    program = sys.argv[2] if len(sys.argv) > 2 else "print(1)"
    with Sandbox(slots=1) as box:
        print(json.dumps(measure(box, runs, program), indent=1))
