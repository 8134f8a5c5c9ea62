"""Workload `rich`: what rich outputs (issue 22) cost, and that they cost nothing when unused.

- print(1) and the chart task (workloads.CHART_CODE), which produce no rich output: their numbers
  sit beside the `latency` and `chart` rows of a run without this feature (an earlier results.json),
  side by side in the report. (The chart task's figure now also carries its chart data.)
- A DataFrame shown with display() against the same program that only calls its to_html(), both
  in the warm sandbox, and to_html() in a warm interpreter (warm-exec): the promise is that
  display(df) costs at most to_html() + 1 ms (median of the child's own wall time). warm-exec has
  no child to time: its case is compared on the whole call, timed by the caller like every case.
"""

from __future__ import annotations

from .harness import Context, rotate, runner_block
from .stats import median, summarize
from .workloads import CHART_CODE, chart_csv

FRAME = "import pandas as pd\ndf = pd.read_csv('sales.csv')\n"
DISPLAY = FRAME + "display(df)\n"
TO_HTML = FRAME + "html = df.to_html()\n"
BUDGET_MS = 1.0


def rich(ctx: Context) -> dict:
    files = {"sales.csv": chart_csv(rows=2000)}
    cases = {
        "print(1)": ("sandbox", "print(1)", None, False),
        "chart task": ("sandbox", CHART_CODE, {"sales.csv": chart_csv()}, True),
        "display(df)": ("sandbox", DISPLAY, files, False),
        "df.to_html()": ("sandbox", TO_HTML, files, False),
        "df.to_html() warm-exec": ("warm-exec", TO_HTML, files, False),
    }
    n, warmup = ctx.plan.chart_n, ctx.plan.chart_warmup
    samples: dict[str, list[dict]] = {k: [] for k in cases}
    with ctx.progress("rich outputs", (n + warmup) * len(cases)) as bar:
        for i in range(warmup + n):
            for name in rotate(list(cases), i):
                key, code, f, figures = cases[name]
                s = ctx.runner(key).run(code, f, timeout=60, figures=figures)
                if i >= warmup:
                    samples[name].append(s)
                bar.advance()
    blocks = {name: runner_block(ctx, cases[name][0], v) for name, v in samples.items()}
    # The child's own wall time is what the engine reports; warm-exec runs the program in its own
    # warm interpreter (no child, nothing reported), so its case has only the whole call, in `runners`.
    child = {name: summarize(s["child_wall_ms"] for s in v if s["ok"] and "child_wall_ms" in s)
             for name, v in samples.items() if cases[name][0] == "sandbox"}
    shown = median([s["child_wall_ms"] for s in samples["display(df)"] if s["ok"] and "child_wall_ms" in s])
    plain = median([s["child_wall_ms"] for s in samples["df.to_html()"] if s["ok"] and "child_wall_ms" in s])
    extra = None if shown is None or plain is None else round(shown - plain, 3)
    return {
        "description": "print(1) and the chart task (no rich output) beside the latency and chart rows of a run "
                       "without rich outputs; display(df) of a 2,000-row frame vs df.to_html()",
        "runners": blocks,
        "child_wall_ms": child,
        "display_minus_to_html_ms": extra,
        "display_within_budget": None if extra is None else extra <= BUDGET_MS,
        "budget_ms": BUDGET_MS,
    }
