"""Smoke test of the `http` benchmark workload (quick counts): every runner produced results, none
failed. Speed is never pass/fail here; the figures come from `sandbox bench --workload http`."""

from __future__ import annotations

import sys
from pathlib import Path

from sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks/ is a top-level folder of the repo, not an installed package


def test_quick_http_workload_produces_every_figure():
    from benchmarks.http import markdown, measure

    with Sandbox(slots=1) as sb:
        res = measure(sb, quick=True, log=lambda m: None)
    over, thr = res["overhead"], res["throughput"]
    assert set(over["summary_ms"]) == {"in-process Sandbox.run()", "RemoteSandbox.run()", "http.client POST"}
    assert all(s["n"] == 20 for s in over["summary_ms"].values()), over["summary_ms"]
    assert all(v == 0 for v in over["failures"].values()), over["failures"]
    assert thr["pool"]["runs"] > 0 and thr["http"]["runs"] > 0
    assert thr["pool"]["failed"] == 0 and thr["http"]["failed"] == 0
    assert "HTTP throughput" in markdown(res)
