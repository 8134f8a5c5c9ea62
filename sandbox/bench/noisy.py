"""Workload `noisy`: what one tenant's abuse costs another (issue 17).

A real `sandbox serve` with two keys on a loopback port. Key B calls `print(1)` on `/v1/execute`,
one call at a time; first alone, then while key A (or a client with no key) does each abuse of the
tenants issue in the background. For each abuse: B's p50 and p99 as ratios to B alone in the same
run, B's failed calls, and the server's peak RSS over its RSS before the abuses.

A's clients run in a process of their own at the lowest CPU priority (nice 19), standing in for an
attacker on another machine: the closed network here allows only loopback, and A's client threads
in B's process would make B wait for its own interpreter's lock, not for the server. The server's
work for A (its requests, A's runs in the jails) runs at normal priority, as it would.
Targets: p50 <= 1.5x, p99 <= 3x, no call of B lost or failed, peak RSS growth <= 100 MiB.

Run alone: `python -m sandbox.bench.noisy [--quick]`; in the harness: `sandbox bench --workload noisy`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from .stats import summarize

TARGETS = {"p50_ratio": 1.5, "p99_ratio": 3.0, "rss_growth_mib": 100}


@contextmanager
def served(slots: int) -> Iterator[tuple[str, str, str, int]]:
    """`sandbox serve` with two fresh keys (A, B) and the default quotas: (url, key A, key B, pid)."""
    from .http import server

    with server(slots, 2) as (url, (key_a, key_b), proc):
        yield url, key_a, key_b, proc.pid


def _post(url: str, path: str, body: bytes, key: str | None, timeout: float = 120,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = HTTPConnection(host, int(port), timeout=timeout)
    try:
        h = {"Content-Type": "application/json", **(headers or {})}
        if key:
            h["Authorization"] = f"Bearer {key}"
        conn.request("POST", path, body, h)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _run(url: str, key: str, code: str, **extra: Any) -> tuple[int, bytes]:
    return _post(url, "/v1/execute", json.dumps({"code": code, **extra}).encode(), key)


# -- the abuses: each runs in the background until `stop` is set -------------------------------

def _many(threads: int, stop: threading.Event, call: Callable[[], object]) -> list[threading.Thread]:
    def loop() -> None:
        while not stop.is_set():
            try:
                call()
            except OSError:
                time.sleep(0.01)
    return [threading.Thread(target=loop, daemon=True) for _ in range(threads)]


def abuses(url: str, key_a: str, quick: bool) -> dict[str, Callable[[threading.Event], list[threading.Thread]]]:
    flood = 16 if quick else 64

    def run_flood(stop: threading.Event) -> list[threading.Thread]:
        # Short runs, as many as A can send: B's call waits for at most one of them per slot.
        return _many(flood, stop, lambda: _run(url, key_a, "x = sum(range(100))"))

    def forged_replies(stop: threading.Event) -> list[threading.Thread]:
        # Row 1: each run writes its own result frame with 8,000 file entries.
        code = ("import json, os, struct\nfiles = [{'path': f'd{i}/f', 'size': 0} for i in range(8000)]\n"
                "h = json.dumps({'error': None, 'exit_code': 0, 'images': [], 'images_dropped': 0, "
                "'files': files, 'files_dropped': 0}).encode()\n"
                "os.write(3, b'SBX1' + struct.pack('>IQ', len(h), 0) + h)\nos._exit(0)\n")
        return _many(flood, stop, lambda: _run(url, key_a, code))

    def session_flood(stop: threading.Event) -> list[threading.Thread]:
        status, body = _post(url, "/v1/sessions", b"{}", key_a)
        sid = json.loads(body)["session_id"]
        path = f"/v1/sessions/{sid}/execute"
        return _many(flood, stop, lambda: _post(url, path, json.dumps({"code": "import time; time.sleep(0.1)"}).encode(),
                                                key_a))

    def unauthenticated_bodies(stop: threading.Event) -> list[threading.Thread]:
        big = b"{" + b" " * (60 << 20) + b"}"

        def send() -> None:
            host, port = url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=30) as s:
                s.sendall(f"POST /v1/execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(big)}\r\n\r\n".encode())
                try:
                    s.sendall(big)
                except OSError:
                    pass  # refused before the body: the server closed the connection
                s.recv(4096)
        return _many(4, stop, send)

    def byte_stream(stop: threading.Event) -> list[threading.Thread]:
        code = ("import sys, time\nt = time.monotonic()\nwhile time.monotonic() - t < 3:\n"
                "    sys.stdout.write('x'); sys.stdout.flush()\n")
        return _many(2, stop, lambda: _post(url, "/v1/execute", json.dumps({"code": code}).encode(), key_a,
                                            headers={"Accept": "application/x-ndjson"}))

    def nested_code(stop: threading.Event) -> list[threading.Thread]:
        code = "x = " + "(" * 50_000 + "1" + ")" * 50_000
        return _many(4, stop, lambda: _run(url, key_a, code))

    def sessions_until_refused(stop: threading.Event) -> list[threading.Thread]:
        return _many(4, stop, lambda: _post(url, "/v1/sessions", b"{}", key_a))

    return {"short-run flood": run_flood, "forged replies": forged_replies, "session flood": session_flood,
            "no-key 60 MiB bodies": unauthenticated_bodies, "byte-at-a-time output": byte_stream,
            "deeply nested code": nested_code, "sessions until refused": sessions_until_refused}


class _Rss:
    """The server's peak RSS, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def close(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _b_calls(url: str, key_b: str, n: int) -> tuple[list[float], int]:
    samples, failed = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            status, body = _run(url, key_b, "print(1)")
            good = status == 200 and json.loads(body).get("stdout") == "1\n"
        except OSError:
            good = False
        ms = (time.perf_counter() - t0) * 1000
        if good:
            samples.append(ms)
        else:
            failed += 1
    return samples, failed


def measure(slots: int, *, quick: bool, log: Callable[[str], object] = print) -> dict:
    n = 20 if quick else 200
    settle = 1.0 if quick else 3.0
    out: dict[str, Any] = {"slots": slots, "samples_per_phase": n, "targets": TARGETS, "abuses": {}}
    with served(slots) as (url, key_a, key_b, pid):
        import psutil

        _b_calls(url, key_b, 5)  # warm
        rss0 = psutil.Process(pid).memory_info().rss
        alone, failed = _b_calls(url, key_b, n)
        base = summarize(alone)
        out["alone_ms"] = base
        out["alone_failed"] = failed
        for name in abuses(url, key_a, quick):
            log(f"noisy: B's print(1) while A does: {name}")
            rss = _Rss(pid)
            with _attacker(name, url, key_a, quick):
                time.sleep(settle)
                samples, failed = _b_calls(url, key_b, n)
            peak = rss.close()
            s = summarize(samples)
            out["abuses"][name] = {
                "ms": s, "failed": failed,
                "p50_ratio": round(s["p50"] / base["p50"], 2) if samples else None,
                "p99_ratio": round(s["p99"] / base["p99"], 2) if samples else None,
                "rss_growth_mib": round((peak - rss0) / (1 << 20), 1),
            }
            time.sleep(settle)  # what A left queued drains before the next abuse
    return out


@contextmanager
def _attacker(name: str, url: str, key_a: str, quick: bool) -> Iterator[None]:
    """Key A's abuse `name` in a process of its own at nice 19 (see the module's docstring), from
    when it says it started until the block ends (then it stops and joins its threads)."""
    cmd = [sys.executable, "-m", "sandbox.bench.noisy", "--attack", name, "--url", url, "--key", key_a]
    proc = subprocess.Popen(cmd + (["--quick"] if quick else []), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            preexec_fn=lambda: os.nice(19))
    try:
        assert proc.stdout is not None and proc.stdin is not None
        if proc.stdout.readline() != b"started\n":
            raise RuntimeError(f"the attacker process for {name!r} did not start (exit {proc.wait()})")
        yield
    finally:
        if proc.stdin is not None:
            proc.stdin.close()   # its cue to stop
        try:
            proc.wait(timeout=150)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _attack(name: str, url: str, key_a: str, quick: bool) -> int:
    """The attacker process: run abuse `name` until stdin closes."""
    stop = threading.Event()
    threads = abuses(url, key_a, quick)[name](stop)
    for t in threads:
        t.start()
    sys.stdout.write("started\n")
    sys.stdout.flush()
    sys.stdin.read()
    stop.set()
    for t in threads:
        t.join(timeout=120)
    return 0


def noisy(ctx: Any) -> dict:
    """The bench harness's entry (`sandbox bench --workload noisy`)."""
    return measure(ctx.sb.capacity, quick=ctx.quick, log=lambda m: sys.stderr.write(m + "\n"))


def markdown(res: dict) -> str:
    b = res["alone_ms"]
    lines = [f"**Noisy neighbour** (key B's `print(1)` on a {res['slots']}-slot server while key A abuses it; "
             f"B alone: p50 {b['p50']:.1f} ms, p99 {b['p99']:.1f} ms)", "",
             "| A does | B p50 ms | B p99 ms | p50 ratio | p99 ratio | B failed | server RSS growth MiB | targets met |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, a in res["abuses"].items():
        met = (a["failed"] == 0 and a["p50_ratio"] is not None and a["p50_ratio"] <= TARGETS["p50_ratio"]
               and a["p99_ratio"] <= TARGETS["p99_ratio"] and a["rss_growth_mib"] <= TARGETS["rss_growth_mib"])
        lines.append(f"| {name} | {a['ms'].get('p50', 0):.1f} | {a['ms'].get('p99', 0):.1f} | {a['p50_ratio']} | "
                     f"{a['p99_ratio']} | {a['failed']} | {a['rss_growth_mib']} | {'yes' if met else 'no'} |")
    lines += ["", "Targets: p50 <= 1.5x, p99 <= 3x, no call of B failed, server RSS growth <= 100 MiB."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m sandbox.bench.noisy", description=__doc__.split("\n\n")[0])
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, help="write the raw results here (JSON)")
    p.add_argument("--attack", help=argparse.SUPPRESS)   # internal: be key A's process for this abuse
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.attack:
        return _attack(args.attack, args.url, args.key, args.quick)
    res = measure(args.slots, quick=args.quick, log=lambda m: sys.stderr.write(m + "\n"))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))
    sys.stdout.write(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
