"""Workload `http`: what the HTTP service costs over the in-process engine (issue #8).

1. Overhead: `print(1)` on an idle pool, in-process `Sandbox.run()` against the same call through
   `RemoteSandbox.run()` (keep-alive) and a bare keep-alive `http.client` POST, sample by sample
   in rotating order. Target: HTTP p50 at most 1 ms over in-process.
2. Throughput: `print(1)` from 32 concurrent clients, the pool's own saturation (32 threads calling
   `Sandbox.run()`) against `/v1/execute` (32 threads calling `RemoteSandbox.run()`, one keep-alive
   connection each), phase by phase in alternating order, each phase bounded in runs and seconds.
   Target: HTTP at least 90 % of the pool's runs/s.

The server is the real `sandbox serve` in a subprocess on 127.0.0.1 with as many slots as the pool
under test; both pools idle while the other is measured. Run alone: `python -m sandbox.bench.http`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from http.client import HTTPConnection
from pathlib import Path
from typing import Any, Iterator

from .stats import summarize

CLIENTS = 32
CODE = "print(1)"


@contextmanager
def server(slots: int, keys: int = 1, *args: str) -> Iterator[tuple[str, list[str], subprocess.Popen]]:
    """`sandbox serve` on an ephemeral loopback port with `keys` fresh keys (and `args`); stopped on exit."""
    fresh = ["bench-" + secrets.token_hex(16) for _ in range(keys)]
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-serve-") as tmp:
        log_path = Path(tmp) / "server.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "sandbox", "serve", "--port", "0", "--slots", str(slots),
                                     "--no-mcp", *args], stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "SANDBOX_API_KEYS": ",".join(fresh)})
            try:
                deadline = time.monotonic() + 300
                while not (m := re.search(r"serving on (http://\S+) ", log_path.read_text())):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("sandbox serve did not start:\n" + log_path.read_text()[-3000:])
                    time.sleep(0.1)
                yield m.group(1), fresh, proc
            finally:
                proc.terminate()
                proc.wait(60)


@contextmanager
def served(slots: int) -> Iterator[tuple[str, str, subprocess.Popen]]:
    """The server this workload measures: one key, a queue deep enough for its 32 clients. The key
    may hold as many places in the engine as its clients (the default is one per slot, for
    fairness between keys; here one key is alone)."""
    with server(slots, 1, "--max-queue", str(4 * CLIENTS), "--max-runs-per-key", str(4 * CLIENTS)) as (url, keys, proc):
        yield url, keys[0], proc


class RawClient:
    """The least a client can do: one keep-alive connection, POST, read, parse."""

    def __init__(self, url: str, key: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = HTTPConnection(host, int(port))
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def run(self, code: str) -> dict[str, Any]:
        self.conn.request("POST", "/v1/execute", json.dumps({"code": code}), self.headers)
        r = self.conn.getresponse()
        return json.loads(r.read())


def overhead(sb: Any, url: str, key: str, n: int, warmup: int, server_pid: int, gap: float = 0.02,
             progress=None) -> dict:
    """Wall time per call, and CPU per call of this process plus the server's own process (the jails
    excluded): the CPU figure does not depend on what else the machine is doing."""
    import psutil

    from sandbox.remote import RemoteSandbox

    server = psutil.Process(server_pid)

    def cpu() -> float:
        t = server.cpu_times()
        return time.process_time() + t.user + t.system

    remote = RemoteSandbox(url, api_key=key)
    raw = RawClient(url, key)
    calls = {
        "in-process Sandbox.run()": lambda: sb.run(CODE).stdout,
        "RemoteSandbox.run()": lambda: remote.run(CODE).stdout,
        "http.client POST": lambda: raw.run(CODE)["stdout"],
    }
    keys = list(calls)
    samples: dict[str, list[float]] = {k: [] for k in keys}
    cpu_ms: dict[str, list[float]] = {k: [] for k in keys}
    failures: dict[str, int] = {k: 0 for k in keys}
    for i in range(warmup + n):
        for k in keys[i % 3:] + keys[:i % 3]:
            time.sleep(gap)  # both pools idle, the next child pre-forked
            c0 = cpu()
            t0 = time.perf_counter()
            out = calls[k]()
            ms = (time.perf_counter() - t0) * 1000
            c1 = cpu()
            if out != "1\n":
                failures[k] += 1
            elif i >= warmup:
                samples[k].append(ms)
                cpu_ms[k].append((c1 - c0) * 1000)
        if progress:
            progress()
    remote.close()
    summary = {k: summarize(v) for k, v in samples.items()}
    base = summary[keys[0]]
    return {
        "description": f"print(1), one call at a time, idle pools, {n} samples per runner in rotating order",
        "summary_ms": summary,
        "cpu_ms": {k: summarize(v) for k, v in cpu_ms.items()},
        "failures": failures,
        "over_in_process_ms": {k: {q: round(summary[k][q] - base[q], 4) for q in ("p50", "p95", "p99")}
                               for k in keys[1:]},
        "target": "HTTP p50 at most 1 ms over in-process",
    }


def _phase(run, runs: int, seconds: float) -> tuple[list[float], float, int]:
    """CLIENTS threads call `run` until `runs` calls were made or `seconds` passed."""
    lat: list[float] = []
    bad = 0
    left = [runs]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker() -> None:
        nonlocal bad
        while True:
            with lock:
                if left[0] == 0 or time.perf_counter() > stop:
                    return
                left[0] -= 1
            t0 = time.perf_counter()
            ok = run(CODE).stdout == "1\n"
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                lat.append(ms)
                bad += not ok

    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, time.perf_counter() - t0, bad


def throughput(sb: Any, url: str, key: str, runs: int, rounds: int, seconds: float, progress=None) -> dict:
    from sandbox.remote import RemoteSandbox

    remote = RemoteSandbox(url, api_key=key)
    phases = []
    data = {"pool": ([], 0.0, 0), "http": ([], 0.0, 0)}
    for rnd in range(rounds):
        for k in (["pool", "http"] if rnd % 2 == 0 else ["http", "pool"]):
            lat, wall, bad = _phase(sb.run if k == "pool" else remote.run, runs, seconds)
            prev = data[k]
            data[k] = (prev[0] + lat, prev[1] + wall, prev[2] + bad)
            phases.append({"runner": k, "round": rnd, "runs": len(lat), "wall_s": round(wall, 3),
                           "runs_per_s": round(len(lat) / wall, 1)})
            if progress:
                progress()
    out: dict[str, Any] = {"description": f"print(1) from {CLIENTS} concurrent clients; {rounds} round(s) of at most "
                                          f"{runs} runs or {seconds:g} s per runner, alternating order", "phases": phases}
    for k, (lat, wall, bad) in data.items():
        out[k] = {"runs": len(lat), "failed": bad, "runs_per_s": round(len(lat) / wall, 1) if wall else None,
                  "latency_ms": summarize(lat)}
    remote.close()
    out["http_share_of_pool"] = round(out["http"]["runs_per_s"] / out["pool"]["runs_per_s"], 3)
    out["target"] = "HTTP at least 0.90 of the pool's runs/s"
    return out


def measure(sb: Any, *, quick: bool, log=print) -> dict:
    slots = sb.capacity
    n, warmup = (20, 3) if quick else (400, 20)
    runs, rounds, seconds = (96, 1, 10.0) if quick else (1500, 4, 15.0)
    t0 = time.perf_counter()
    with served(slots) as (url, key, proc):
        log(f"http: overhead, {n} samples x 3 runners")
        over = overhead(sb, url, key, n, warmup, proc.pid)
        log(f"http: throughput, {CLIENTS} clients, {rounds} rounds of at most {runs} runs or {seconds:g} s per runner")
        thr = throughput(sb, url, key, runs, rounds, seconds)
    return {"slots": slots, "clients": CLIENTS, "overhead": over, "throughput": thr,
            "elapsed_s": round(time.perf_counter() - t0, 1)}


def http(ctx: Any) -> dict:
    """The bench harness's entry (`sandbox bench --workload http`)."""
    return measure(ctx.sb, quick=ctx.quick, log=lambda m: sys.stderr.write(m + "\n"))


def markdown(res: dict) -> str:
    o, t = res["overhead"], res["throughput"]
    lines = [f"**HTTP overhead** (`print(1)`, idle pools of {res['slots']} slots; ms)", "",
             "| runner | n | p50 | p95 | p99 | p50 over in-process | CPU p50 (client + server process) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for k, s in o["summary_ms"].items():
        extra = o["over_in_process_ms"].get(k, {}).get("p50")
        lines.append(f"| {k} | {s['n']} | {s['p50']:.3f} | {s['p95']:.3f} | {s['p99']:.3f} | "
                     f"{'–' if extra is None else f'{extra:+.3f}'} | {o['cpu_ms'][k].get('p50', 0):.3f} |")
    lines += ["", f"**Throughput** (`print(1)`, {res['clients']} concurrent clients)", "",
              "| runner | runs | runs/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for k, label in (("pool", "pool: Sandbox.run() from 32 threads"),
                     ("http", "POST /v1/execute: RemoteSandbox.run() from 32 threads")):
        lines.append(f"| {label} | {t[k]['runs']} | {t[k]['runs_per_s']} | {t[k]['latency_ms']['p50']:.1f} | "
                     f"{t[k]['latency_ms']['p99']:.1f} |")
    lines += ["", f"HTTP throughput = {t['http_share_of_pool']:.1%} of the pool's (target 90 %)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    from sandbox import Sandbox

    p = argparse.ArgumentParser(prog="python -m sandbox.bench.http", description=__doc__.split("\n\n")[0])
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, help="write the raw results here (JSON)")
    args = p.parse_args(argv)
    with Sandbox(slots=args.slots) as sb:
        res = measure(sb, quick=args.quick, log=lambda m: sys.stderr.write(m + "\n"))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))
    sys.stdout.write(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
