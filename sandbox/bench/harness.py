"""The harness's shared state: the plan (sample counts), the engine under test, the baselines,
and the interleaving every workload uses so that machine drift cancels in the ratios."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import runners as R
from .progress import Progress
from .stats import summarize


@dataclass
class Plan:
    """How many samples each workload takes. `quick` is the CI smoke size."""

    latency_n: int = 1000
    latency_warmup: int = 20
    idle_gap_ms: float = 20.0          # the pool is idle (child pre-forked) before every sandbox sample
    chart_n: int = 30
    chart_warmup: int = 2
    humaneval_levels: tuple[int, ...] = (1, 2, 4, 16)
    humaneval_rounds: int = 3
    saturation_clients: int = 16
    saturation_runs: dict[str, int] = field(default_factory=lambda: {
        "sandbox": 2000, "subprocess": 800, "nsjail-cold": 400})
    saturation_rounds: int = 2
    setup_n: int = 400
    startup_reps: int = 3
    memory_extra_slot: bool = True
    b2b_n: int = 5000                  # back-to-back sandbox calls (the stall target is per 5,000)
    b2b_baseline_n: int = 300
    oneshot_n: int = 20

    @classmethod
    def quick(cls) -> Plan:
        return cls(latency_n=20, latency_warmup=3, chart_n=2, chart_warmup=1, humaneval_levels=(2,),
                   humaneval_rounds=1, saturation_runs={"sandbox": 96, "subprocess": 48, "nsjail-cold": 32},
                   saturation_rounds=1, setup_n=10, startup_reps=1, b2b_n=100, b2b_baseline_n=10, oneshot_n=1)


class Context:
    """Owns the engine's pool and every baseline runner; each is started on first use."""

    def __init__(self, plan: Plan, *, quick: bool, slots: int | None, out: Path, show_progress: bool = True) -> None:
        from sandbox.host import image as images

        self.plan = plan
        self.quick = quick
        self.slots = slots
        self.out = out
        self.show_progress = show_progress
        self.image = images.load_any("default")
        self.env = R.bench_env(self.image)
        self.sb = None
        self.pool_start: dict[str, Any] = {}
        self._runners: dict[str, R.Runner] = {}
        self.notes: list[str] = []

    # -- the engine ---------------------------------------------------------------------------

    def start_pool(self) -> None:
        """Start the pool under test, timing Sandbox() and the first result (workload 7 reuses it)."""
        self.sb, self.pool_start = start_pool_timed(self.slots, main_pool=True)

    # -- baselines ------------------------------------------------------------------------------

    def runner(self, key: str) -> R.Runner:
        if key not in self._runners:
            img = self.image
            factories: dict[str, Callable[[], R.Runner]] = {
                "sandbox": lambda: R.SandboxRunner(self.sb),
                "subprocess": lambda: R.SubprocessRunner(img.python, self.env, site=False),
                "fresh-import": lambda: R.SubprocessRunner(img.python, self.env, site=True, mpl_seed=img.mpl_seed),
                "nsjail-cold": lambda: R.ColdJailRunner(img, site=False),
                "nsjail-cold-site": lambda: R.ColdJailRunner(img, site=True, name="nsjail-cold"),
                "jupyter-warm": lambda: R.JupyterRunner(img, self.env),
                "warm-exec": lambda: R.WarmExecRunner(img.python, self.env, mpl_seed=img.mpl_seed),
            }
            r = factories[key]()
            r.start()
            self._runners[key] = r
        return self._runners[key]

    def runner_info(self) -> dict[str, dict]:
        info = {}
        for key, r in self._runners.items():
            d = {"name": r.name, "isolated": r.isolated, "description": r.description}
            if isinstance(r, R.JupyterRunner):
                d["kernel"] = r.info
            info[key] = d
        return info

    def progress(self, label: str, total: int) -> Progress:
        return Progress(label, total, enabled=self.show_progress)

    def close(self) -> None:
        for r in self._runners.values():
            try:
                r.close()
            except Exception:  # noqa: BLE001 - closing must not hide the results
                pass
        self._runners.clear()
        if self.sb is not None:
            self.sb.close()
            self.sb = None


def rotate(keys: list[str], i: int) -> list[str]:
    """Round-robin order for sample i: every runner goes first equally often."""
    k = i % len(keys)
    return keys[k:] + keys[:k]


def interleave(ctx: Context, keys: list[str], *, n: int, warmup: int, code: str, label: str,
               files: dict | None = None, check: Callable[[dict], str | None] | None = None,
               figures: bool = False, timeout: float = 60.0) -> dict[str, list[dict]]:
    """Take n samples per runner, sample by sample in rotating order (after `warmup` discarded
    rounds). Before each sandbox sample the pool has been idle for at least plan.idle_gap_ms,
    so the measurement is the idle-pool latency the engine promises (child already forked)."""
    samples: dict[str, list[dict]] = {k: [] for k in keys}
    runners = {k: ctx.runner(k) for k in keys}
    last_sandbox = 0.0
    gap = ctx.plan.idle_gap_ms / 1000
    with ctx.progress(label, (n + warmup) * len(keys)) as bar:
        for i in range(warmup + n):
            for k in rotate(keys, i):
                if k == "sandbox":
                    wait = gap - (time.perf_counter() - last_sandbox)
                    if wait > 0:
                        time.sleep(wait)
                s = runners[k].run(code, files, timeout=timeout, figures=figures)
                if k == "sandbox":
                    last_sandbox = time.perf_counter()
                if s["ok"] and check is not None:
                    problem = check(s)
                    if problem:
                        s["ok"], s["error"] = False, f"wrong output: {problem}"
                s["warmup"] = i < warmup
                if i >= warmup:
                    samples[k].append(s)
                bar.advance()
    return samples


def runner_block(ctx: Context, key: str, samples: list[dict]) -> dict:
    """A runner's samples plus their summary, as stored in the results file."""
    r = ctx.runner(key)
    ok = [s for s in samples if s["ok"]]
    errors = sorted({s["error"] for s in samples if not s["ok"] and s.get("error")})[:5]
    return {
        "runner": r.name,
        "isolated": r.isolated,
        "description": r.description,
        "ok": len(ok),
        "failed": len(samples) - len(ok),
        "errors": errors,
        "summary_ms": summarize(s["ms"] for s in ok),
        "samples": samples,
    }


def start_pool_timed(slots: int | None, main_pool: bool):
    """Start a Sandbox and run print(1); return it with the timings of both (workload 7)."""
    from sandbox import Sandbox

    t0 = time.perf_counter()
    sb = Sandbox(slots=slots)
    try:
        t1 = time.perf_counter()
        r = sb.run("print(1)")
        t2 = time.perf_counter()
    except BaseException:
        sb.close()
        raise
    live = list(sb._pool._live.values())
    return sb, {
        "slots": sb.capacity,
        "construct_s": round(t1 - t0, 4),
        "first_result_s": round(t2 - t0, 4),
        "first_run_ms": round((t2 - t1) * 1000, 3),
        "first_outcome": r.outcome.value,
        "zygote_import_ms": [s.ready.get("import_ms") for s in live],
        "slot_start_s": [round(s.start_seconds, 4) for s in live],
        "main_pool": main_pool,
    }
