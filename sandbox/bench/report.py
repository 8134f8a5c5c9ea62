"""Reporting: the raw JSON, the Markdown tables of medians and ratios, and the smoke checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .stats import ratio

MiB = 1 << 20


# -- formatting -----------------------------------------------------------------------------------------

def ms(x: float | None) -> str:
    if x is None:
        return "–"
    if abs(x) < 1:
        return f"{x:.3f}"
    if abs(x) < 10:
        return f"{x:.2f}"
    if abs(x) < 100:
        return f"{x:.1f}"
    return f"{x:,.0f}"


def times(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.2f}×" if x < 10 else f"{x:.0f}×"


def mib(x: float | None) -> str:
    return "–" if x is None else f"{x / MiB:,.1f}"


def table(head: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def yes(flag: bool | None) -> str:
    return "n/a" if flag is None else ("**yes**" if flag else "**no**")


# -- JSON ---------------------------------------------------------------------------------------------------

def strip_private(obj: Any) -> Any:
    """Drop keys starting with '_' (raw PNG bytes) so the results are JSON."""
    if isinstance(obj, dict):
        return {k: strip_private(v) for k, v in obj.items() if not (isinstance(k, str) and k.startswith("_"))}
    if isinstance(obj, (list, tuple)):
        return [strip_private(v) for v in obj]
    return obj


def write_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(strip_private(results), indent=1, default=str) + "\n")


# -- checks (the CI smoke assertions: results exist and are right; never speed) -------------------------

def checks(results: dict) -> list[str]:
    failures = []
    for name, err in results.get("errors", {}).items():
        failures.append(f"{name}: workload raised: {err.strip().splitlines()[-1] if err.strip() else err}")
    w = results.get("workloads", {})
    for name in ("latency", "chart", "saturation"):
        if name in w:
            for runner, b in w[name]["runners"].items():
                if b["ok"] == 0:
                    failures.append(f"{name}: runner {runner} produced no successful sample ({b['errors'][:2]})")
                elif b["failed"]:
                    failures.append(f"{name}: runner {runner} failed {b['failed']} of {b['ok'] + b['failed']} "
                                    f"samples ({b['errors'][:2]})")
    if "chart" in w:
        for runner, f in w["chart"]["fidelity"].items():
            if f is None:
                failures.append(f"chart: no result from {runner} to compare")
    if "humaneval" in w:
        h = w["humaneval"]
        for p in h["passes"]:
            if p["passed"] != p["total"] or p["total"] != 164:
                failures.append(f"humaneval: {p['runner']} at concurrency {p['concurrency']} passed "
                                f"{p['passed']}/{p['total']}: {[f['task_id'] for f in p['failures']][:5]}")
        for runner in h["runners"]:
            if not any(p["runner"] == runner for p in h["passes"]):
                failures.append(f"humaneval: runner {runner} produced no pass")
    if "memory" in w:
        m = w["memory"]
        if not m["slots"] or any(s["zygote"] is None for s in m["slots"]):
            failures.append("memory: could not read a zygote's memory")
        if m["reference_interpreter"]["mem"] is None:
            failures.append("memory: the reference interpreter did not start")
    if "setup" in w:
        s = w["setup"]
        if s["errors"] or not s["n"]:
            failures.append(f"setup: probe children failed: {s['errors'][:2]}")
    if "startup" in w:
        bad = [s for s in w["startup"]["samples"] if s["first_outcome"] != "ok"]
        if bad or not w["startup"]["samples"]:
            failures.append(f"startup: {len(bad)} pool starts did not give an ok first result")
    return failures


# -- targets ---------------------------------------------------------------------------------------------

def targets(results: dict) -> list[list[str]]:
    w = results.get("workloads", {})
    rows = []
    if "latency" in w:
        for base in ("warm-exec", "jupyter-warm"):
            o = w["latency"]["overhead_ms"].get(base)
            if o:
                rows.append([f"print(1) overhead over `{base}`, p50 < 1 ms", f"{ms(o['p50'])} ms", yes(o["p50"] < 1)])
                rows.append([f"print(1) overhead over `{base}`, p99 < 5 ms", f"{ms(o['p99'])} ms", yes(o["p99"] < 5)])
    if "backtoback" in w:
        b = w["backtoback"]
        sbr = b["runners"]["sandbox"]
        rows.append(["back-to-back print(1), p50 ≤ 0.25× a fresh `python -I -S`", times(b["ratio_p50"]),
                     yes(None if b["ratio_p50"] is None else b["ratio_p50"] <= 0.25)])
        rows.append(["back-to-back print(1), p99 ≤ 1× a fresh `python -I -S`", times(b["ratio_p99"]),
                     yes(None if b["ratio_p99"] is None else b["ratio_p99"] <= 1)])
        rows.append([f"back-to-back print(1): no call over 50 ms in {sbr['summary_ms'].get('n', 0):,}",
                     f"{sbr['over_50ms']} over 50 ms, max {ms(sbr['summary_ms'].get('max'))} ms",
                     yes(sbr["over_50ms"] == 0)])
    if "chart" in w:
        s = w["chart"]["speedup_vs_runner_p50"].get("fresh-import")
        rows.append(["chart task ≥ 15× faster than a fresh interpreter importing pandas + matplotlib (p50)",
                     times(s), yes(None if s is None else s >= 15)])
    if "humaneval" in w:
        t = w["humaneval"]["table"]
        for c in w["humaneval"]["levels"]:
            sb, sp = t["sandbox"][str(c)], t["subprocess"][str(c)]
            ok = sb["passed_min"] == sb["total"] == 164
            fast = (sb["programs_per_s_median"] or 0) >= 2 * (sp["programs_per_s_median"] or 0)
            rows.append([f"HumanEval at concurrency {c}: 164/164 and programs/s ≥ 2× fresh subprocesses",
                         f"{sb['passed_min']}/{sb['total']}, {sb['programs_per_s_median']:.1f} vs "
                         f"{sp['programs_per_s_median']:.1f} programs/s", yes(ok and fast)])
    if "saturation" in w:
        r = w["saturation"]["runners"]["sandbox"].get("runs_per_s")
        rows.append(["saturation, trivial program from 16 threads: ≥ 400 runs/s", f"{r} runs/s",
                     yes(None if r is None else r >= 400)])
    if "oneshot" in w:
        o = w["oneshot"]
        rows.append(["`sandbox run -c 'print(1)'` ≤ 10× `python3 -c 'print(1)'`", times(o["ratio_print"]),
                     yes(None if o["ratio_print"] is None else o["ratio_print"] <= 10)])
        rows.append(["`sandbox run` of a script importing pandas ≤ 1× the image's python running it",
                     times(o["ratio_pandas"]), yes(None if o["ratio_pandas"] is None else o["ratio_pandas"] <= 1)])
    if "sessions" in w:
        from .session_workload import targets as session_targets

        rows += session_targets(w["sessions"], ms, times, yes)
    return rows


def issue20_rows(results: dict) -> list[list[str]]:
    """The table of issue #20, each measure beside the baseline it is compared with (both from
    this run, interleaved): [measure, sandbox, baseline, ratio or difference, target, met]. Rows
    whose workload did not run are left out."""
    w = results.get("workloads", {})
    rows = []

    def p50(block: dict | None, q: str = "p50") -> float | None:
        return ((block or {}).get("summary_ms") or {}).get(q)

    def cmp(x: float | None, limit: float) -> str:
        return yes(None if x is None else x <= limit)

    if "latency" in w:
        r = w["latency"]["runners"]
        sb, sub, warm = p50(r.get("sandbox")), p50(r.get("subprocess")), p50(r.get("warm-exec"))
        q = ratio(sb, sub)
        rows.append(["`print(1)`, idle pool (paced), p50, vs a fresh `python -I -S`", f"{ms(sb)} ms",
                     f"{ms(sub)} ms", times(q), "≤ 0.10×", cmp(q, 0.10)])
        over = None if sb is None or warm is None else sb - warm
        rows.append(["`print(1)`, idle pool, p50, overhead over a warm `exec()`", f"{ms(sb)} ms", f"{ms(warm)} ms",
                     f"+{ms(over)} ms", "≤ 0.5 ms", cmp(over, 0.5)])
    if "backtoback" in w:
        b = w["backtoback"]
        sb, sub = b["runners"].get("sandbox"), b["runners"].get("subprocess")
        for q, limit in (("p50", 0.25), ("p99", 1.0)):
            rows.append([f"`print(1)` back to back, one caller, {q}, vs a fresh `python -I -S`", f"{ms(p50(sb, q))} ms",
                         f"{ms(p50(sub, q))} ms", times(b[f"ratio_{q}"]), f"≤ {limit:g}×", cmp(b[f"ratio_{q}"], limit)])
    if "sessions" in w:
        c = w["sessions"]["call_ms"]
        se, st = c["session"].get("p50"), c["stateless"].get("p50")
        rows.append(["a warm session's `print(1)`, back to back, p50 (vs a stateless run, interleaved)",
                     f"{ms(se)} ms", f"{ms(st)} ms", times(ratio(se, st)), "≤ 1 ms", cmp(se, 1.0)])
    if "saturation" in w:
        r = w["saturation"]["runners"]
        sb, sub = r["sandbox"].get("runs_per_s"), r["subprocess"].get("runs_per_s")
        q = ratio(sb, sub)
        rows.append([f"saturation, {w['saturation'].get('clients', 16)} threads, runs/s vs fresh subprocesses",
                     f"{sb} runs/s", f"{sub} runs/s", times(q), "≥ 3×", yes(None if q is None else q >= 3)])
    if "humaneval" in w:
        t = w["humaneval"]["table"]
        for c in w["humaneval"]["levels"]:
            sb, sub = t["sandbox"][str(c)]["programs_per_s_median"], t["subprocess"][str(c)]["programs_per_s_median"]
            q = ratio(sb, sub)
            rows.append([f"HumanEval 164 at c = {c}, programs/s vs fresh subprocesses", f"{sb:.1f}/s", f"{sub:.1f}/s",
                         times(q), "≥ 2.5×", yes(None if q is None else q >= 2.5)])
    if "oneshot" in w:
        o = w["oneshot"]
        r = {k: v["summary_ms"].get("p50") for k, v in o["runners"].items()}
        ours, python = r.get("sandbox run -c 'print(1)'"), r.get("python3 -c 'print(1)'")
        rows.append(["`sandbox run -c 'print(1)'`, whole command, vs `python3 -c`", f"{ms(ours)} ms",
                     f"{ms(python)} ms", times(o["ratio_print"]), "≤ 5×",
                     cmp(o["ratio_print"], 5)])
        rows.append(["`sandbox run` of a pandas script vs the image's python (no warm engine)",
                     f"{ms(r.get('sandbox run uses_pandas.py'))} ms", f"{ms(r.get('image python uses_pandas.py'))} ms",
                     times(o["ratio_pandas"]), "≤ 1×", cmp(o["ratio_pandas"], 1)])
        if "ratio_print_warm" in o:  # reports from before the warm-engine rows have none
            from .load import WARM_PANDAS, WARM_PRINT
            rows.append(["`sandbox run -c 'print(1)'`, whole command, warm engine on its Unix socket, vs `python3 -c`",
                         f"{ms(r.get(WARM_PRINT))} ms", f"{ms(python)} ms", times(o["ratio_print_warm"]), "≤ 5×",
                         cmp(o["ratio_print_warm"], 5)])
            rows.append(["`sandbox run` of a pandas script, warm engine, vs the image's python",
                         f"{ms(r.get(WARM_PANDAS))} ms", f"{ms(r.get('image python uses_pandas.py'))} ms",
                         times(o["ratio_pandas_warm"]), "≤ 0.5×", cmp(o["ratio_pandas_warm"], 0.5)])
    if "chart" in w:
        r = w["chart"]["runners"]
        sb, warm = p50(r.get("sandbox")), p50(r.get("warm-exec"))
        q = ratio(sb, warm)
        rows.append(["chart task, p50, vs the same code in a warm unisolated interpreter", f"{ms(sb)} ms",
                     f"{ms(warm)} ms", times(q), "≤ 1.1×", cmp(q, 1.1)])
    if "memory" in w:
        extra = w["memory"].get("extra_slot") or {}
        pss = extra.get("marginal_pss")
        mib = None if pss is None else pss / (1 << 20)
        rows.append(["one more warm slot, PSS", "–" if mib is None else f"{mib:.1f} MiB", "237 MiB (before #6)",
                     "–", "≤ 237 MiB", cmp(mib, 237)])
    return rows


# -- Markdown ---------------------------------------------------------------------------------------------
# One function per section; each returns its chunks of Markdown (joined by newlines in `markdown`).

def _runner_cells(name: str, block: dict) -> list[Any]:
    """The first cells of a runner's row: its name, whether it is isolated, its sample count."""
    return [f"`{name}`", "yes" if block["isolated"] else "no", block["summary_ms"].get("n", 0)]


def _quantiles(summary: dict, *qs: str) -> list[str]:
    return [ms(summary.get(q)) for q in qs]


def _header(results: dict) -> list[str]:
    """The title, the command and commit, and the machine the run was on."""
    meta = results["meta"]
    mode = "quick (smoke counts: not for publishing)" if results.get("quick") else "full"
    lines = [f"# sandbox benchmark: {meta['date_utc']}, {mode}\n"]
    git = meta.get("git") or {}
    lines.append(f"`{meta['command']}` at commit `{git.get('commit')}`{' (engine files modified)' if git.get('dirty') else ''}, "
                 f"{results.get('elapsed_s', 0):.0f} s in all. Every runner ran on the same machine in the same "
                 "process, interleaved sample by sample (round robin), so drift on the machine lands on all of "
                 "them alike and cancels in the ratios.\n")
    kernel_info = (results.get("runners", {}).get("jupyter-warm") or {}).get("kernel", {})
    rows = [
        ["host", meta["host"]],
        ["CPU", f"{meta['cpu_model']}, {meta['cpu_count']} logical CPUs"],
        ["memory", f"{meta['memory_bytes'] / (1 << 30):.1f} GiB"],
        ["kernel / OS", f"{meta['kernel']} / {meta['os']}"],
        ["cgroups", f"v{meta['cgroup_version']}"],
        ["load average (1/5/15 min) at start → end", f"{meta['loadavg_start']} → {meta.get('loadavg_end')}"],
        ["CPU used by other processes, per workload (cores, average)",
         ", ".join(f"{x['after']} {x['foreign_cores']:.2f}" for x in results.get("load", []) if "foreign_cores" in x)
         or "–"],
        ["image Python (sandbox and every unisolated baseline)", meta["image_python"]],
        ["image libraries", ", ".join(f"{k} {v}" for k, v in meta["image_libraries"].items())
         + f" ({meta['image_package_count']} packages)"],
        ["harness Python", meta["harness_python"]],
        ["harness libraries", ", ".join(f"{k} {v}" for k, v in meta["harness_libraries"].items() if v)],
    ]
    if kernel_info:
        rows.append(["Jupyter kernel", f"Python {kernel_info.get('python')} ({kernel_info.get('executable')}): "
                     "ipykernel cannot be added to the image without changing it, so the kernel runs the harness's "
                     "interpreter with the image's site-packages first on PYTHONPATH (numpy from "
                     f"`{kernel_info.get('numpy_from', '?')}`)"])
    lines.append(table(["machine", ""], rows))
    busy = meta.get("busy_note")
    if busy:
        lines.append(f"> **{busy}**\n")
    return lines


def _targets(results: dict) -> list[str]:
    """The targets of issues #3, #6 and #7, then issue #20's table (each measure beside its baseline)."""
    lines = []
    trows = targets(results)
    if trows:
        lines.append("## Targets\n")
        lines.append(table(["target (issues #3, #6 and #7)", "measured", "met"], trows))
    irows = issue20_rows(results)
    if irows:
        lines.append("## Issue #20: each measure beside its baseline (same run, interleaved)\n")
        lines.append(table(["measure", "sandbox", "baseline", "ratio", "target", "met"], irows))
    return lines


def _latency(lw: dict, results: dict) -> list[str]:
    sb50 = lw["runners"]["sandbox"]["summary_ms"].get("p50")
    lines = ["## 1. `print(1)` latency, idle pool\n",
             f"{lw['description']}. Milliseconds, measured by the caller around the whole call.\n"]
    rows = []
    for name, b in lw["runners"].items():
        s = b["summary_ms"]
        rows.append([*_runner_cells(name, b), *_quantiles(s, "p50", "p95", "p99", "max"),
                     times(s["p50"] / sb50) if s.get("p50") and sb50 else "–"])
    lines.append(table(["runner", "isolated", "n", "p50", "p95", "p99", "max", "p50 / sandbox p50"], rows))
    parts = [f"over `{k}`: p50 {ms(v['p50'])} ms, p95 {ms(v['p95'])} ms, p99 {ms(v['p99'])} ms"
             for k, v in lw["overhead_ms"].items()]
    lines.append("Sandbox overhead (sandbox percentile minus the warm unsandboxed runner's): " + "; ".join(parts) + ".\n")
    e, c = lw["engine_outside_child_ms"], lw["child_wall_ms"]
    if e.get("n"):
        lines.append(f"Of the sandbox's p50, the child's own run (request in to child exit, as the zygote "
                     f"timed it) took p50 {ms(c['p50'])} ms; the rest (client encode/decode, pipes, zygote "
                     f"hand-off and reaping) p50 {ms(e['p50'])} ms, p99 {ms(e['p99'])} ms.\n")
    return lines


def _chart(cw: dict, results: dict) -> list[str]:
    lines = ["## 2. Data task: CSV → pandas groupby → matplotlib PNG\n",
             f"{cw['description']} ({cw['csv_bytes'] / 1024:.0f} KiB CSV). Milliseconds per program.\n"]
    rows = []
    for name, b in cw["runners"].items():
        s, f = b["summary_ms"], cw["fidelity"].get(name) or {}
        sp = cw["speedup_vs_runner_p50"].get(name)
        rows.append([*_runner_cells(name, b), *_quantiles(s, "p50", "p95", "max"),
                     "1×" if name == "sandbox" else times(sp),
                     yes(f.get("png_identical")), yes(f.get("stdout_identical"))])
    lines.append(table(["runner", "isolated", "n", "p50", "p95", "max", "p50 / sandbox p50",
                        "PNG identical to sandbox's", "table identical"], rows))
    lines.append("`jupyter-warm` and `warm-exec` keep pandas and matplotlib imported between programs (the "
                 "first, discarded warm-up run pays the import); `fresh-import` and `nsjail-cold` import "
                 "them on every program. Each runner's PNG is saved as `chart_<runner>.png`.\n")
    return lines


def _humaneval(hw: dict, results: dict) -> list[str]:
    lines = ["## 3. HumanEval (164 canonical solutions + tests)\n",
             f"Each problem is one program (prompt + canonical solution + tests + `check(entry_point)`); "
             f"concurrency c = c client threads calling the runner at once. The sandbox pool has "
             f"{hw['pool_slots']} slots. Medians over {results['plan']['humaneval_rounds']} round(s).\n"]
    runners = list(hw["runners"])
    head = ["concurrency"]
    for r in runners:
        head += [f"`{r}` passed", f"`{r}` wall s", f"`{r}` programs/s"]
    head.append("sandbox / subprocess programs/s")
    rows = []
    for c in hw["levels"]:
        row: list[Any] = [c]
        for r in runners:
            t = hw["table"][r][str(c)]
            row += [f"{t['passed_min']}/{t['total']}", f"{t['wall_s_median']:.2f}", f"{t['programs_per_s_median']:.1f}"]
        sb, sp = hw["table"]["sandbox"][str(c)], hw["table"]["subprocess"][str(c)]
        row.append(times(sb["programs_per_s_median"] / sp["programs_per_s_median"]))
        rows.append(row)
    lines.append(table(head, rows))
    return lines


def _saturation(sw: dict, results: dict) -> list[str]:
    lines = [f"## 4. Saturation: `x = sum(range(100)); print(1)` from {sw['clients']} client threads\n",
             f"{sw['description']}. Latency is per call, queueing included.\n"]
    rows = []
    sbr = sw["runners"]["sandbox"].get("runs_per_s")
    for name, b in sw["runners"].items():
        rows.append([*_runner_cells(name, b), b.get("runs_per_s"),
                     times(sbr / b["runs_per_s"]) if sbr and b.get("runs_per_s") else "–",
                     *_quantiles(b["summary_ms"], "p50", "p99", "max")])
    lines.append(table(["runner", "isolated", "runs", "runs/s", "sandbox runs/s ÷ this", "p50 ms", "p99 ms",
                        "max ms"], rows))
    return lines


def _memory(mw: dict, results: dict) -> list[str]:
    lines = ["## 5. Memory\n",
             "MiB, from `/proc/<pid>/smaps_rollup` via psutil. PSS shares each shared page among the "
             "processes mapping it (it adds up); USS is memory only that process holds.\n"]
    rows = []
    for s in mw["slots"]:
        children = list(zip(s.get("child_roles") or ["pre-forked child"] * len(s["children"]), s["children"]))
        for label, m in [("nsjail", s["nsjail"]), ("zygote", s["zygote"])] + children:
            if m:
                rows.append([s["slot"], label, m["pid"], mib(m["rss"]), mib(m["pss"]), mib(m["uss"])])
        rows.append([s["slot"], "slot cgroup (memory charged)", "", mib(s["cgroup_bytes"]), "", ""])
    lines.append(table(["slot", "process", "host pid", "RSS", "PSS", "USS"], rows))
    ex = mw.get("extra_slot")
    if ex:
        lines.append(f"**One more warm slot costs {mib(ex['marginal_pss'])} MiB** (rise in the total PSS of all "
                     f"jail processes when a one-slot pool started beside the main pool); its processes' USS "
                     f"sum is {mib(ex['slot_uss'])} MiB and its cgroup was charged {mib(ex['slot_cgroup_bytes'])} "
                     f"MiB. MemAvailable fell by {mib(ex['mem_available_delta'])} MiB (whole machine, noisy).\n")
    ref = mw["reference_interpreter"]["mem"]
    if ref:
        lines.append(f"For scale, {mw['reference_interpreter']['description']}: RSS {mib(ref['rss'])}, "
                     f"PSS {mib(ref['pss'])}, USS {mib(ref['uss'])} MiB.\n")
    for name, m in mw.get("baseline_processes", {}).items():
        lines.append(f"- `{name}` process: RSS {mib(m['rss'])}, PSS {mib(m['pss'])}, USS {mib(m['uss'])} MiB "
                     "(with whatever the workloads before it imported)\n")
    lines.append("")
    return lines


def _setup(st: dict, results: dict) -> list[str]:
    lines = ["## 6. Child setup breakdown\n",
             f"Microseconds per step, {st['n']} forks. **Measured by replication, not instrumentation:** "
             "a cold jail with the slot's own config runs a probe as its pid 1 (uid 0 in its user "
             "namespace, like the zygote) that imports the same preload list with the zygote's own "
             "functions, then forks children that run `guest.isolation`'s steps one call at a time "
             "(every other child calls `isolation.isolate()` whole, as a cross-check). "
             f"Zygote-sized process: imports took {st['zygote_import_ms']:,.0f} ms; compiling the seccomp "
             f"policy (once per zygote) {st['seccomp_compile_ms']:.1f} ms.\n"]
    lean = st.get("lean") or {"steps": {}, "isolate_split_sum_us": {}, "isolate_whole_us": {}}

    def lean_p50(block: dict | None) -> str:
        return ms(block.get("p50")) if block else "–"

    rows = [[v["label"], *_quantiles(v["us"], "p50", "p95", "max"), lean_p50(lean["steps"].get(k, {}).get("us"))]
            for k, v in st["steps"].items()]
    rows.append(["sum of the isolation steps (unshare … chdir)", *_quantiles(st["isolate_split_sum_us"], "p50", "p95", "max"),
                 lean_p50(lean["isolate_split_sum_us"])])
    rows.append(["`isolation.isolate()` as one call (cross-check)", *_quantiles(st["isolate_whole_us"], "p50", "p95", "max"),
                 lean_p50(lean["isolate_whole_us"])])
    lines.append(table(["step", "p50 µs (full)", "p95 µs (full)", "max µs (full)", "p50 µs (lean)"], rows))
    lines.append("*full*: a child of the full fork server (the whole preload list imported); *lean*: a "
                 "child of the lean one (the standard library set of `guest/preload.py`), where programs "
                 "that import nothing else run.\n")
    return lines


def _backtoback(bw: dict, results: dict) -> list[str]:
    lines = ["## 8. `print(1)` back to back: one caller, no pause\n"]
    rows = [[*_runner_cells(name, b), *_quantiles(b["summary_ms"], "p50", "p99", "max"), b["over_50ms"]]
            for name, b in bw["runners"].items()]
    lines.append(table(["runner", "isolated", "n", "p50 ms", "p99 ms", "max ms", "calls over 50 ms"], rows))
    lines.append(f"Sandbox / fresh interpreter: p50 {times(bw['ratio_p50'])}, p99 {times(bw['ratio_p99'])}. "
                 f"The child's own run: p50 {ms(bw['child_wall_ms'].get('p50'))} ms.\n")
    return lines


def _oneshot(ow: dict, results: dict) -> list[str]:
    rows = [[f"`{name}`", b["summary_ms"].get("n", 0), *_quantiles(b["summary_ms"], "p50", "max")]
            for name, b in ow["runners"].items()]
    return ["## 9. One-shot commands, whole process\n", table(["command", "n", "p50 ms", "max ms"], rows)]


def _sessions(sw: dict, results: dict) -> list[str]:
    from .session_workload import markdown as session_markdown

    return session_markdown(sw, ms)


def _startup(sw: dict, results: dict) -> list[str]:
    rows = [[n, b["n"], f"{b['construct_s_median']:.2f}", f"{b['first_result_s_median']:.2f}",
             f"{b['max_first_result_s']:.2f}", ms(b["first_run_ms_median"]), f"{b['zygote_import_ms_median']:,.0f}"]
            for n, b in sw["by_slots"].items()]
    return ["## 7. Pool start: `Sandbox()` to the first result\n",
            table(["slots", "n", "Sandbox() s (median)", "first result s (median)", "first result s (max)",
                   "first run ms", "zygote imports ms (median)"], rows),
            "Slots start in parallel; each zygote imports the whole preload list before it is ready.\n"]


def _rich(rw: dict, results: dict) -> list[str]:
    """Each program's whole call and, where the engine ran it, its child's own wall time. (warm-exec
    has no child: results from before this note carry an empty child entry for it, shown as –.)"""
    prior = {"print(1)": results.get("workloads", {}).get("latency", {}).get("child_wall_ms", {}), "chart task": {}}
    rows = []
    for name, b in rw["runners"].items():
        child = rw["child_wall_ms"].get(name, {}) if b["runner"] == "sandbox" else {}
        rows.append([f"`{name}`", f"`{b['runner']}`", b["summary_ms"].get("n", 0), ms(b["summary_ms"].get("p50")),
                     *_quantiles(child, "p50", "p95"), ms(prior.get(name, {}).get("p50"))])
    return ["## Rich outputs: free when unused; `display(df)` within `to_html()` + 1 ms\n",
            table(["program", "runner", "n", "whole call p50 ms", "child p50 ms", "child p95 ms",
                   "same run's latency row p50 ms"], rows),
            f"`display(df)` minus `df.to_html()`: {ms(rw['display_minus_to_html_ms'])} ms "
            f"(budget {rw['budget_ms']} ms: {'met' if rw['display_within_budget'] else 'NOT met'}). "
            "Compare print(1) and the chart task with the `latency` and `chart` rows of a run "
            "before rich outputs. The child's own time is what the engine reports; `warm-exec` runs the "
            "program in its own warm interpreter, with no child to time, so its row has the whole call only "
            "(timed by the caller, as every row's is).\n"]


def _errors_and_checks(results: dict) -> list[str]:
    """The workloads that raised, and the smoke checks' verdict."""
    lines = []
    if results.get("errors"):
        lines.append("## Errors\n")
        for name, err in results["errors"].items():
            lines.append(f"- **{name}**: `{err.strip().splitlines()[-1]}`\n")
    fails = results.get("checks", {}).get("failures", [])
    lines.append("## Checks\n")
    lines.append("Every runner produced results and HumanEval passed 164/164 everywhere.\n" if not fails else
                 "\n".join(f"- {f}" for f in fails) + "\n")
    return lines


# The workloads' sections, in the report's order: (workload, its section).
SECTIONS = (
    ("latency", _latency),
    ("chart", _chart),
    ("humaneval", _humaneval),
    ("saturation", _saturation),
    ("memory", _memory),
    ("setup", _setup),
    ("backtoback", _backtoback),
    ("oneshot", _oneshot),
    ("sessions", _sessions),
    ("startup", _startup),
    ("rich", _rich),
)


def markdown(results: dict) -> str:
    """The whole report: the machine, the targets, a section per workload that ran, errors and checks."""
    w = results.get("workloads", {})
    lines = _header(results) + _targets(results)
    for name, section in SECTIONS:
        if name in w:
            lines += section(w[name], results)
    lines += _errors_and_checks(results)
    return "\n".join(lines)
