"""PNG charts from a results.json. Needs only matplotlib and the standard library, so it also runs
as a script under any interpreter that has matplotlib (the image's, when the harness's lacks it):

    python sandbox/bench/charts.py OUT/results.json OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLORS = {
    "sandbox": "#d62728",
    "warm-exec": "#7f7f7f",
    "jupyter-warm": "#ff7f0e",
    "subprocess": "#1f77b4",
    "fresh-import": "#9467bd",
    "nsjail-cold": "#2ca02c",
}


def _color(name: str) -> str:
    return COLORS.get(name, "#17becf")


def _cdf(ax, blocks: dict, title: str) -> None:
    for name, b in blocks.items():
        xs = sorted(s["ms"] for s in b["samples"] if s["ok"])
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        p50 = xs[len(xs) // 2]
        label = f"{name}{'' if b['isolated'] else ' (no isolation)'}: p50 {p50:.3g} ms"
        ax.step(xs, ys, where="post", color=_color(name), lw=2.6 if name == "sandbox" else 1.6, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("latency per program, ms (log scale)")
    ax.set_ylabel("fraction of programs")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def latency_chart(results: dict, out: Path, plt) -> Path | None:
    w = results.get("workloads", {})
    panels = [(k, t) for k, t in (("latency", "print(1), idle pool"), ("chart", "CSV → pandas → matplotlib PNG"))
              if k in w]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.8), squeeze=False)
    for ax, (k, t) in zip(axes[0], panels):
        _cdf(ax, w[k]["runners"], f"Latency CDF: {t}")
    fig.suptitle("Lower and further left is faster; the sandbox is the thick red line", fontsize=10)
    fig.tight_layout()
    path = out / "latency_cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput_chart(results: dict, out: Path, plt) -> Path | None:
    w = results.get("workloads", {})
    panels = [k for k in ("humaneval", "saturation") if k in w]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.8), squeeze=False)
    for ax, k in zip(axes[0], panels):
        if k == "humaneval":
            h = w[k]
            levels = h["levels"]
            for name in h["runners"]:
                ys = [h["table"][name][str(c)]["programs_per_s_median"] for c in levels]
                iso = h["runners"][name]["isolated"]
                ax.plot(levels, ys, marker="o", color=_color(name), lw=2.6 if name == "sandbox" else 1.6,
                        label=f"{name}{'' if iso else ' (no isolation)'}")
                for c, y in zip(levels, ys):
                    ax.annotate(f"{y:.0f}", (c, y), textcoords="offset points", xytext=(0, 6), ha="center",
                                fontsize=7, color=_color(name))
            ax.set_xscale("log", base=2)
            ax.set_xticks(levels)
            ax.set_xticklabels([str(c) for c in levels])
            ax.set_xlabel("client concurrency (threads)")
            ax.set_ylabel("programs per second (higher is better)")
            ax.set_title(f"HumanEval, 164 programs per pass ({h['pool_slots']}-slot pool)")
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        else:
            s = w[k]
            names = list(s["runners"])
            vals = [s["runners"][n]["runs_per_s"] or 0 for n in names]
            bars = ax.bar(names, vals, color=[_color(n) for n in names])
            for b, n in zip(bars, names):
                p99 = s["runners"][n]["summary_ms"].get("p99")
                ax.annotate(f"{b.get_height():.0f}/s\np99 {p99:.0f} ms" if p99 else "", (b.get_x() + b.get_width() / 2,
                            b.get_height()), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
            ax.set_ylabel("runs per second (higher is better)")
            ax.set_title(f"Saturation: print(1) from {s['clients']} threads")
            ax.set_ylim(0, max(vals + [1]) * 1.25)
            ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def breakdown_chart(results: dict, out: Path, plt) -> Path | None:
    w = results.get("workloads", {})
    panels = [k for k in ("setup", "memory") if k in w]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 4.8), squeeze=False)
    for ax, k in zip(axes[0], panels):
        if k == "setup":
            steps = w[k]["steps"]
            keys = [x for x in steps if x not in ("fork_parent", "cycle")]
            labels = [steps[x].get("short", x) for x in keys]
            vals = [steps[x]["us"].get("p50") or 0 for x in keys]
            ax.barh(labels[::-1], vals[::-1], color="#d62728")
            for i, v in enumerate(vals[::-1]):
                ax.annotate(f"{v:,.0f} µs", (v, i), textcoords="offset points", xytext=(3, -3), fontsize=7)
            ax.set_xlabel("p50 microseconds (per child, paid between requests)")
            ax.set_title("Child setup, step by step (replicated in a cold jail)")
            ax.tick_params(axis="y", labelsize=8)
            ax.set_xlim(0, max(vals + [1]) * 1.3)
        else:
            m = w[k]
            MiB = 1 << 20
            cats, pss, uss = [], [], []
            s0 = m["slots"][0] if m["slots"] else None
            if s0:
                for label, proc in (("zygote", s0["zygote"]), ("pre-forked child", (s0["children"] or [None])[0]),
                                    ("nsjail", s0["nsjail"])):
                    if proc:
                        cats.append(label)
                        pss.append(proc["pss"] / MiB)
                        uss.append(proc["uss"] / MiB)
            if m.get("extra_slot"):
                cats.append("one more slot\n(PSS: marginal,\nUSS: its own)")
                pss.append(m["extra_slot"]["marginal_pss"] / MiB)
                uss.append(m["extra_slot"]["slot_uss"] / MiB)
            ref = m["reference_interpreter"]["mem"]
            if ref:
                cats.append("unshared warm\ninterpreter")
                pss.append(ref["pss"] / MiB)
                uss.append(ref["uss"] / MiB)
            xs = range(len(cats))
            ax.bar([x - 0.2 for x in xs], pss, 0.4, label="PSS", color="#1f77b4")
            ax.bar([x + 0.2 for x in xs], uss, 0.4, label="USS", color="#d62728")
            for x, a, b in zip(xs, pss, uss):
                ax.annotate(f"{a:.0f}", (x - 0.2, a), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7)
                ax.annotate(f"{b:.0f}", (x + 0.2, b), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7)
            ax.set_xticks(list(xs))
            ax.set_xticklabels(cats, fontsize=8)
            ax.set_ylabel("MiB")
            ax.set_title("Memory per warm slot (slot 0) and per extra slot")
            ax.legend()
            ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "breakdown.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [latency_chart(results, out, plt), throughput_chart(results, out, plt), breakdown_chart(results, out, plt)]
    return [p for p in paths if p]


if __name__ == "__main__":
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    for p in render(json.loads(src.read_text()), dst):
        print(p)
