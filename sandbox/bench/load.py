"""Workloads 8 (back to back) and 9 (the one-shot command): the engine as users call it under load.

8. One caller, no pause: `run("print(1)")` again the moment the last call returned, as an
   evaluation harness or an RL reward loop does. The paced latency workload (1) leaves the pool
   idle before every call and hides what a busy pool pays (the teardown of the last run, the fork
   of the next child, any CPU throttling). Baseline: a fresh `python -I -S` per program, also back
   to back. Interleaved in chunks, so drift cancels in the ratios; reports max and the calls over
   50 ms, because a stall every few hundred calls hides below p99.
9. `sandbox run` as a whole command (host interpreter start, pool start, run, teardown) against
   `python3 -c` for `print(1)`, and against the image's interpreter for a script importing pandas;
   and the same two commands sent to a warm engine (`sandbox serve --unix-socket` on a socket of the
   workload's own, found through SANDBOX_SOCKET): the client's start, one request, its exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import Context, runner_block
from .stats import ratio, summarize

STALL_MS = 50.0


def back_to_back(ctx: Context) -> dict:
    n_sb, n_base = ctx.plan.b2b_n, ctx.plan.b2b_baseline_n
    chunks = max(1, min(n_sb, n_base, 50))
    keys = ["sandbox", "subprocess"]
    runners = {k: ctx.runner(k) for k in keys}
    samples: dict[str, list[dict]] = {k: [] for k in keys}
    for k in keys:  # warm both paths (first fork of each kind, page cache)
        for _ in range(5):
            runners[k].run("print(1)")
    with ctx.progress("back-to-back print(1)", n_sb + n_base) as bar:
        for c in range(chunks):
            for k, n in (("sandbox", n_sb), ("subprocess", n_base)):
                share = n // chunks + (1 if c < n % chunks else 0)
                for _ in range(share):
                    s = runners[k].run("print(1)")
                    if s["ok"] and s["stdout"] != "1\n":
                        s["ok"], s["error"] = False, f"wrong output {s['stdout'][:40]!r}"
                    samples[k].append(s)
                    bar.advance()
    blocks = {k: runner_block(ctx, k, v) for k, v in samples.items()}
    for b in blocks.values():
        b["over_50ms"] = sum(1 for s in b["samples"] if s["ok"] and s["ms"] > STALL_MS)
    sb, base = blocks["sandbox"]["summary_ms"], blocks["subprocess"]["summary_ms"]
    return {
        "description": "print(1) from one caller with no pause between calls (each runner back to back)",
        "runners": blocks,
        "ratio_p50": ratio(sb.get("p50"), base.get("p50")),
        "ratio_p99": ratio(sb.get("p99"), base.get("p99")),
        "child_wall_ms": summarize(s["child_wall_ms"] for s in samples["sandbox"] if s["ok"]),
    }


PANDAS_SCRIPT = "import pandas as pd\nprint(pd.DataFrame({'a': [1, 2, 3]}).a.sum())\n"


def _timed(cmd: list[str], expect: str, env: dict[str, str] | None = None) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    ms = (time.perf_counter() - t0) * 1000
    ok = proc.returncode == 0 and proc.stdout.strip() == expect
    return {"ok": ok, "ms": ms, "error": None if ok else f"exit {proc.returncode}: {proc.stderr[-300:]}"}


WARM_PRINT, WARM_PANDAS = "sandbox run -c 'print(1)', warm engine", "sandbox run uses_pandas.py, warm engine"


def _start_engine(sandbox_cmd: str, tmp: str) -> tuple[subprocess.Popen | None, str, str | None]:
    """`sandbox serve --unix-socket` on a socket in `tmp` (one slot): (process, socket, error)."""
    sock, log = os.path.join(tmp, "engine.sock"), os.path.join(tmp, "engine.log")
    with open(log, "w") as out:
        proc = subprocess.Popen([sandbox_cmd, "serve", "--unix-socket", sock, "--slots", "1", "--no-mcp",
                                 "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if "serving on" in Path(log).read_text():
            return proc, sock, None
        time.sleep(0.1)
    _stop_engine(proc)
    return None, sock, f"the engine did not start: {Path(log).read_text()[-300:]}"


def _stop_engine(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def one_shot(ctx: Context) -> dict:
    """`sandbox run` as a command, with no engine and with a warm one, interleaved with its
    unsandboxed equivalents."""
    sandbox_cmd = str(Path(sys.executable).with_name("sandbox"))
    python = str(ctx.image.python)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "uses_pandas.py"
        script.write_text(PANDAS_SCRIPT)
        engine, sock, engine_error = _start_engine(sandbox_cmd, tmp)
        warm_env = {**os.environ, "SANDBOX_SOCKET": sock}
        cases: dict[str, tuple[list[str], str, dict[str, str] | None]] = {
            "sandbox run -c 'print(1)'": ([sandbox_cmd, "run", "--no-engine", "-c", "print(1)"], "1", None),
            WARM_PRINT: ([sandbox_cmd, "run", "-c", "print(1)"], "1", warm_env),
            "python3 -c 'print(1)'": (["/usr/bin/python3", "-c", "print(1)"], "1", None),
            "sandbox run uses_pandas.py": ([sandbox_cmd, "run", "--no-engine", str(script)], "6", None),
            WARM_PANDAS: ([sandbox_cmd, "run", str(script)], "6", warm_env),
            "image python uses_pandas.py": ([python, str(script)], "6", None),
        }
        samples: dict[str, list[dict]] = {k: [] for k in cases}
        n = ctx.plan.oneshot_n
        try:
            with ctx.progress("one-shot commands", n * len(cases)) as bar:
                for i in range(n + 1):
                    for name, (cmd, expect, env) in cases.items():
                        if env is not None and engine_error:
                            s = {"ok": False, "ms": 0.0, "error": engine_error}
                        else:
                            s = _timed(cmd, expect, env)
                        if i:  # the first round warms the page cache (and the engine)
                            samples[name].append(s)
                        bar.advance()
        finally:
            _stop_engine(engine)
    blocks = {}
    for name, ss in samples.items():
        ok = [s for s in ss if s["ok"]]
        blocks[name] = {"ok": len(ok), "failed": len(ss) - len(ok),
                        "errors": sorted({s["error"] for s in ss if s["error"]})[:3],
                        "summary_ms": summarize(s["ms"] for s in ok), "samples": ss}
    p50 = {k: b["summary_ms"].get("p50") for k, b in blocks.items()}
    return {
        "description": "whole commands, including the host interpreter's start and the pool's start and close",
        "runners": blocks,
        "ratio_print": ratio(p50["sandbox run -c 'print(1)'"], p50["python3 -c 'print(1)'"]),
        "ratio_pandas": ratio(p50["sandbox run uses_pandas.py"], p50["image python uses_pandas.py"]),
        "ratio_print_warm": ratio(p50[WARM_PRINT], p50["python3 -c 'print(1)'"]),
        "ratio_pandas_warm": ratio(p50[WARM_PANDAS], p50["image python uses_pandas.py"]),
    }
