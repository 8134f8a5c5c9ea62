"""Workload 10: sessions and live output (issue #7), each against a baseline run beside it.

- create: `sb.session()` from a warm engine, paced (a waiting interpreter is ready) and back to
  back (the fork server forks one per session); closed again after each sample.
- call: `print(1)` in a warm session vs a stateless `run("print(1)")`, interleaved back to back.
- idle memory: 200 sessions open at once, each after a call that defined a variable; the PSS of
  every process of every session (psutil, smaps_rollup) and each session cgroup's charge.
- stateless latency with those 200 sessions open vs with none, interleaved.
- time to first streamed byte: `print('x', flush=True)` then a sleep, with on_stdout, stateless
  and in a session, vs the whole run of `print(1)`.
"""

from __future__ import annotations

import threading
import time

import psutil

from .harness import Context
from .stats import ratio, summarize

MiB = 1 << 20
IDLE_LIMITS = {"memory_bytes": 64 << 20, "max_processes": 8}  # 200 of them: 12.5 GiB, 1,800 processes


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def _session_pids(session) -> list[int]:
    return [int(p) for p in (session._cgroup.mem / "cgroup.procs").read_text().split()]


def sessions(ctx: Context) -> dict:
    sb = ctx.sb
    quick = ctx.quick
    n_create = 20 if quick else 200
    n_calls = 50 if quick else 2000
    n_idle = 20 if quick else 200
    n_latency = 50 if quick else 1000
    n_stream = 10 if quick else 100
    out: dict = {"description": "sessions: create, call, idle memory, stateless latency beside idle sessions, "
                                "first streamed byte"}

    with ctx.progress("sessions: warm-up", 1) as bar:
        t0 = time.perf_counter()
        first = sb.session()
        out["first_session_s"] = round(time.perf_counter() - t0, 3)  # starts the session jail
        first.run("pass")
        first.close()
        bar.advance()

    # -- create -------------------------------------------------------------------------------
    paced, burst = [], []
    with ctx.progress("sessions: create (paced, then back to back)", 2 * n_create) as bar:
        for _ in range(n_create):
            time.sleep(0.05)  # the spare of the last one is forked and isolated meanwhile
            t0 = time.perf_counter()
            s = sb.session()
            paced.append(_ms(t0))
            s.close()
            bar.advance()
        made = []
        t_all = time.perf_counter()
        for _ in range(n_create):
            t0 = time.perf_counter()
            made.append(sb.session(limits=IDLE_LIMITS))  # all open at once: within the jail's totals
            burst.append(_ms(t0))
            bar.advance()
        burst_s = time.perf_counter() - t_all
        for s in made:
            s.close()
    out["create_paced_ms"] = summarize(paced)
    out["create_back_to_back_ms"] = summarize(burst)
    out["create_back_to_back_per_s"] = round(n_create / burst_s, 1)

    # -- call in a warm session vs a stateless run ---------------------------------------------
    calls: dict[str, list[float]] = {"session": [], "stateless": []}
    with sb.session() as s:
        for _ in range(20):
            s.run("print(1)")
            sb.run("print(1)")
        with ctx.progress("sessions: print(1) in a session vs stateless", 2 * n_calls) as bar:
            for i in range(n_calls):
                for kind in (("session", "stateless") if i % 2 else ("stateless", "session")):
                    t0 = time.perf_counter()
                    r = s.run("print(1)") if kind == "session" else sb.run("print(1)")
                    ms = _ms(t0)
                    if r.stdout == "1\n":
                        calls[kind].append(ms)
                    bar.advance()
    out["call_ms"] = {k: summarize(v) for k, v in calls.items()}
    out["call_ratio_p50"] = ratio(out["call_ms"]["session"].get("p50"), out["call_ms"]["stateless"].get("p50"))
    out["call_ratio_p99"] = ratio(out["call_ms"]["session"].get("p99"), out["call_ms"]["stateless"].get("p99"))

    # -- idle sessions: memory, and stateless latency beside them ------------------------------
    def stateless_latency(n: int) -> list[float]:
        got = []
        for _ in range(n):
            time.sleep(0.005)
            t0 = time.perf_counter()
            sb.run("print(1)")
            got.append(_ms(t0))
        return got

    before = stateless_latency(n_latency // 2)
    idle = []
    with ctx.progress(f"sessions: {n_idle} idle sessions", n_idle) as bar:
        for i in range(n_idle):
            # Small limits: the session jail admits sessions only while their limits' sum fits its
            # totals (16 GiB, 4096 processes by default: 16 sessions at the default limits).
            s = sb.session(limits=IDLE_LIMITS)
            s.run(f"import numpy as np\nx = {i}\ndata = list(range(1000))")
            idle.append(s)
            bar.advance()
    time.sleep(1.0)
    pss, uss, charged = [], [], []
    for s in idle:
        total_pss = total_uss = 0
        for pid in _session_pids(s):
            try:
                m = psutil.Process(pid).memory_full_info()
                total_pss += m.pss
                total_uss += m.uss
            except psutil.Error:
                pass
        pss.append(total_pss)
        uss.append(total_uss)
        charged.append(s._cgroup.usage())
    out["idle_sessions"] = n_idle
    out["idle_pss_mib"] = summarize(p / MiB for p in pss)
    out["idle_uss_mib"] = summarize(u / MiB for u in uss)
    out["idle_cgroup_mib"] = summarize(c / MiB for c in charged)
    out["idle_pss_total_mib"] = round(sum(pss) / MiB, 1)
    # Stateless latency: none open (before) and n_idle open (beside), in alternating chunks.
    beside, none = [], list(before)
    chunk = max(5, n_latency // 20)
    with ctx.progress("sessions: stateless print(1) beside idle sessions", n_latency) as bar:
        for _ in range(max(1, n_latency // 2 // chunk)):
            beside += stateless_latency(chunk)
            bar.advance(chunk)
    states = {s.id: _states(s) for s in idle[:20]}
    out["idle_states_sample"] = sorted({st for v in states.values() for st in v})
    for s in idle:
        s.close()
    time.sleep(0.5)
    none += stateless_latency(n_latency // 2)
    out["stateless_ms_no_sessions"] = summarize(none)
    out["stateless_ms_beside_sessions"] = summarize(beside)
    out["stateless_ratio_p50"] = ratio(out["stateless_ms_beside_sessions"].get("p50"), out["stateless_ms_no_sessions"].get("p50"))

    # -- time to first streamed byte ------------------------------------------------------------
    code = "import time\nprint('x', flush=True)\ntime.sleep(0.2)\n"
    first: dict[str, list[float]] = {"stateless": [], "session": []}
    whole = []
    with sb.session() as s, ctx.progress("sessions: first streamed byte", 3 * n_stream) as bar:
        for _ in range(n_stream):
            for kind, target in (("stateless", sb), ("session", s)):
                got = threading.Event()
                stamp: list[float] = []

                def on_stdout(text: str) -> None:
                    if not stamp:
                        stamp.append(time.perf_counter())
                        got.set()

                t0 = time.perf_counter()
                target.run(code, on_stdout=on_stdout)
                if stamp:
                    first[kind].append((stamp[0] - t0) * 1000)
                bar.advance()
            t0 = time.perf_counter()
            sb.run("print(1)")
            whole.append(_ms(t0))
            bar.advance()
    out["first_byte_ms"] = {k: summarize(v) for k, v in first.items()}
    out["print1_whole_ms"] = summarize(whole)
    return out


def _states(session) -> set[str]:
    got = set()
    for pid in _session_pids(session):
        try:
            got.add(psutil.Process(pid).status())
        except psutil.Error:
            pass
    return got


def targets(w: dict, ms, times, yes) -> list[list[str]]:
    """Rows of the report's targets table for issue #7."""
    rows = []
    c = w["create_paced_ms"]
    rows.append(["session created from a warm engine in ≤ 10 ms (p50, a waiting interpreter)",
                 f"{ms(c.get('p50'))} ms (p99 {ms(c.get('p99'))}; back to back {ms(w['create_back_to_back_ms'].get('p50'))} ms, "
                 f"{w['create_back_to_back_per_s']}/s)", yes(None if c.get("p50") is None else c["p50"] <= 10)])
    rows.append(["a call in a warm session costs ≤ 1× a stateless run (print(1), p50)",
                 f"{times(w['call_ratio_p50'])} ({ms(w['call_ms']['session'].get('p50'))} vs "
                 f"{ms(w['call_ms']['stateless'].get('p50'))} ms)",
                 yes(None if w["call_ratio_p50"] is None else w["call_ratio_p50"] <= 1)])
    p = w["idle_pss_mib"]
    rows.append([f"an idle session costs ≤ 20 MiB (PSS of its processes), {w['idle_sessions']} open at once",
                 f"{p.get('p50', 0):.1f} MiB median, {p.get('max', 0):.1f} max ({w['idle_pss_total_mib']} MiB for all)",
                 yes(None if p.get("max") is None else p["max"] <= 20)])
    rows.append([f"stateless runs keep their latency with {w['idle_sessions']} idle sessions open (p50 ≤ 1.1×)",
                 f"{times(w['stateless_ratio_p50'])} ({ms(w['stateless_ms_beside_sessions'].get('p50'))} vs "
                 f"{ms(w['stateless_ms_no_sessions'].get('p50'))} ms)",
                 yes(None if w["stateless_ratio_p50"] is None else w["stateless_ratio_p50"] <= 1.1)])
    return rows


def markdown(w: dict, ms) -> list[str]:
    lines = ["## 10. Sessions and live output\n"]
    lines.append(f"First session (starts the session jail): {w['first_session_s']:.2f} s.\n")
    rows = [
        ["create, paced (a waiting interpreter)", w["create_paced_ms"]],
        ["create, back to back (a fork each)", w["create_back_to_back_ms"]],
        ["`print(1)` in a warm session", w["call_ms"]["session"]],
        ["`print(1)` stateless (interleaved)", w["call_ms"]["stateless"]],
        [f"stateless `print(1)`, {w['idle_sessions']} idle sessions open", w["stateless_ms_beside_sessions"]],
        ["stateless `print(1)`, no session open", w["stateless_ms_no_sessions"]],
        ["first streamed byte, stateless", w["first_byte_ms"]["stateless"]],
        ["first streamed byte, in a session", w["first_byte_ms"]["session"]],
        ["whole stateless `print(1)` (for scale)", w["print1_whole_ms"]],
    ]
    lines.append("| what | n | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|")
    for name, s in rows:
        lines.append(f"| {name} | {s.get('n', 0)} | {ms(s.get('p50'))} | {ms(s.get('p99'))} | {ms(s.get('max'))} |")
    p, u, c = w["idle_pss_mib"], w["idle_uss_mib"], w["idle_cgroup_mib"]
    lines.append(f"\n{w['idle_sessions']} idle sessions (each after a call that imported numpy and defined a list): "
                 f"PSS per session median {p.get('p50', 0):.2f} MiB (max {p.get('max', 0):.2f}), USS "
                 f"{u.get('p50', 0):.2f} MiB, charged to its cgroup {c.get('p50', 0):.2f} MiB; process states "
                 f"between calls: {', '.join(w['idle_states_sample'])}. Back-to-back creation: "
                 f"{w['create_back_to_back_per_s']} sessions/s.\n")
    return lines

