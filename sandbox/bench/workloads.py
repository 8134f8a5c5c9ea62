"""Workloads 1 (print(1) latency), 2 (chart task), 4 (saturation) and 7 (pool start).

HumanEval (3), memory (5) and the setup breakdown (6) have modules of their own.
Every function takes the Context and returns a JSON-able dict; raw samples included.
"""

from __future__ import annotations

import random
import threading
import time

from .harness import Context, interleave, rotate, runner_block, start_pool_timed
from .stats import median, ratio, summarize

# -- 1. print(1) latency on an idle pool -------------------------------------------------------------

LATENCY_RUNNERS = ["sandbox", "warm-exec", "jupyter-warm", "subprocess", "nsjail-cold"]


def latency(ctx: Context) -> dict:
    samples = interleave(ctx, LATENCY_RUNNERS, n=ctx.plan.latency_n, warmup=ctx.plan.latency_warmup,
                         code="print(1)", label="print(1) latency",
                         check=lambda s: None if s["stdout"] == "1\n" else f"stdout {s['stdout'][:40]!r}")
    blocks = {k: runner_block(ctx, k, v) for k, v in samples.items()}
    sb = blocks["sandbox"]["summary_ms"]
    overhead = {}
    for base in ("warm-exec", "jupyter-warm"):
        b = blocks[base]["summary_ms"]
        if sb.get("n") and b.get("n"):
            overhead[base] = {q: round(sb[q] - b[q], 4) for q in ("p50", "p95", "p99", "max")}
    # What the engine adds around the child's own run: host wall minus the zygote's measurement
    # of the child (request write to child exit). Excludes the child's own runner work.
    host = [s["ms"] - s["child_wall_ms"] for s in samples["sandbox"] if s["ok"] and "child_wall_ms" in s]
    return {
        "description": "print(1), one call at a time; the pool is idle (child pre-forked) before every sandbox call",
        "code": "print(1)",
        "runners": blocks,
        "overhead_ms": overhead,
        "engine_outside_child_ms": summarize(host),
        "child_wall_ms": summarize(s["child_wall_ms"] for s in samples["sandbox"] if s["ok"]),
    }


# -- 2. the data task: CSV -> pandas groupby -> matplotlib PNG ------------------------------------------

CHART_RUNNERS = ["sandbox", "jupyter-warm", "warm-exec", "fresh-import", "nsjail-cold-site"]

CHART_CODE = '''\
import pandas as pd
import matplotlib.pyplot as plt

df = pd.read_csv("sales.csv")
by_region = df.groupby("region")["amount"].agg(["sum", "mean", "count"]).sort_values("sum", ascending=False)
ax = by_region["sum"].plot.bar(title="Revenue by region", color="tab:blue")
ax.set_ylabel("revenue")
plt.tight_layout()
plt.show()
print(by_region.round(2).to_string())
'''
CHART_ROWS = 10000


def chart_csv(rows: int = CHART_ROWS, seed: int = 42) -> str:
    """A deterministic sales table: date, region, product, units, amount."""
    rng = random.Random(seed)
    regions = ["north", "south", "east", "west", "central", "coast", "mountain", "islands"]
    products = ["alpha", "beta", "gamma", "delta", "epsilon"]
    lines = ["date,region,product,units,amount"]
    for _ in range(rows):
        month = rng.randint(1, 12)
        day = rng.randint(1, 28)
        units = rng.randint(1, 20)
        lines.append(f"2024-{month:02d}-{day:02d},{rng.choice(regions)},{rng.choice(products)},{units},"
                     f"{units * rng.uniform(3.0, 40.0):.2f}")
    return "\n".join(lines) + "\n"


def chart(ctx: Context) -> dict:
    files = {"sales.csv": chart_csv()}
    samples = interleave(ctx, CHART_RUNNERS, n=ctx.plan.chart_n, warmup=ctx.plan.chart_warmup, code=CHART_CODE,
                         files=files, figures=True, label="chart task",
                         check=lambda s: None if s["png"] and "north" in s["stdout"] else "no PNG or no table")
    blocks = {}
    for k, v in samples.items():
        name = ctx.runner(k).name
        blocks[name] = runner_block(ctx, k, v)
    # Fidelity: the same program must give the same table and the same PNG bytes everywhere
    # (same interpreter build, same library versions, same Agg renderer and fonts).
    ref = next((s for s in blocks["sandbox"]["samples"] if s["ok"]), None)
    fidelity = {}
    for name, b in blocks.items():
        ok = [s for s in b["samples"] if s["ok"]]
        if ref is None or not ok:
            fidelity[name] = None
            continue
        fidelity[name] = {
            "stdout_identical": all(s["stdout"].strip() == ref["stdout"].strip() for s in ok),
            "png_identical": all(s["png"] and s["png"]["sha256"] == ref["png"]["sha256"] for s in ok),
            "png": ok[0]["png"],
        }
        png = ok[0].get("_png")
        if png:
            path = ctx.out / f"chart_{name}.png"
            path.write_bytes(png)
    sb50 = blocks["sandbox"]["summary_ms"].get("p50")
    speedup = {name: ratio(b["summary_ms"].get("p50"), sb50) for name, b in blocks.items() if name != "sandbox"}
    return {
        "description": f"read a {CHART_ROWS:,}-row CSV with pandas, group by region, bar chart with matplotlib, return the PNG",
        "code": CHART_CODE,
        "csv_bytes": len(files["sales.csv"]),
        "runners": blocks,
        "fidelity": fidelity,
        "speedup_vs_runner_p50": speedup,
    }


# -- 4. saturation: trivial programs from many client threads ----------------------------------------

SATURATION_RUNNERS = ["sandbox", "subprocess", "nsjail-cold"]
SATURATION_CODE = "x = sum(range(100))\nprint(1)"  # the trivial program, plus the check


def _phase(runner, clients: int, runs: int, code: str, bar) -> tuple[list[dict], float]:
    out: list[dict] = []
    lock = threading.Lock()
    remaining = [runs]

    def worker() -> None:
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            s = runner.run(code, None, timeout=60)
            if s["ok"] and s["stdout"] != "1\n":
                s["ok"], s["error"] = False, f"wrong output {s['stdout'][:40]!r}"
            with lock:
                out.append(s)
            bar.advance()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, time.perf_counter() - t0


def saturation(ctx: Context) -> dict:
    plan = ctx.plan
    clients = plan.saturation_clients
    samples: dict[str, list[dict]] = {k: [] for k in SATURATION_RUNNERS}
    walls: dict[str, list[float]] = {k: [] for k in SATURATION_RUNNERS}
    phases = []
    total = sum(plan.saturation_runs[k] for k in SATURATION_RUNNERS)
    with ctx.progress(f"saturation x{clients}", total) as bar:
        for rnd in range(plan.saturation_rounds):
            for k in rotate(SATURATION_RUNNERS, rnd):
                runs = plan.saturation_runs[k] // plan.saturation_rounds
                got, wall = _phase(ctx.runner(k), clients, runs, SATURATION_CODE, bar)
                samples[k] += got
                walls[k].append(wall)
                phases.append({"runner": k, "round": rnd, "runs": len(got), "wall_s": round(wall, 4),
                               "runs_per_s": round(len(got) / wall, 2)})
    blocks = {}
    for k in SATURATION_RUNNERS:
        b = runner_block(ctx, k, samples[k])
        b["runs_per_s"] = round(sum(s["ok"] for s in samples[k]) / sum(walls[k]), 2) if sum(walls[k]) else None
        blocks[k] = b
    return {
        "description": f"x = sum(range(100)); print(1) from {clients} client threads at once, as fast as they can; "
                       f"the sandbox pool has {ctx.sb.capacity} slots",
        "clients": clients,
        "slots": ctx.sb.capacity,
        "runners": blocks,
        "phases": phases,
    }


# -- 7. pool start: Sandbox() to the first result -----------------------------------------------------


def startup(ctx: Context) -> dict:
    sizes = sorted({1, ctx.sb.capacity})
    samples = [ctx.pool_start] if ctx.pool_start else []
    with ctx.progress("pool start", ctx.plan.startup_reps * len(sizes)) as bar:
        for rep in range(ctx.plan.startup_reps):
            for n in (sizes if rep % 2 == 0 else sizes[::-1]):
                sb, sample = start_pool_timed(n, main_pool=False)
                t3 = time.perf_counter()
                sb.close()
                sample["close_s"] = round(time.perf_counter() - t3, 4)
                samples.append(sample)
                bar.advance()
    by_size = {}
    for n in sorted({s["slots"] for s in samples}):
        ss = [s for s in samples if s["slots"] == n and s["first_outcome"] == "ok"]
        by_size[str(n)] = {
            "n": len(ss),
            "first_result_s_median": median([s["first_result_s"] for s in ss]),
            "construct_s_median": median([s["construct_s"] for s in ss]),
            "first_run_ms_median": median([s["first_run_ms"] for s in ss]),
            "zygote_import_ms_median": median([x for s in ss for x in s["zygote_import_ms"] if x is not None]),
            "max_first_result_s": max((s["first_result_s"] for s in ss), default=None),
        }
    return {
        "description": "time from Sandbox(slots=N) to the first print(1) result (slots start in parallel)",
        "samples": samples,
        "by_slots": by_size,
    }
