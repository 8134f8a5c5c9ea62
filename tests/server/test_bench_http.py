"""Smoke test of the `http` benchmark workload (quick counts): every runner produced results, none
failed. Speed is never pass/fail here; the figures come from `sandbox bench --workload http`."""

from __future__ import annotations


from sandbox import Sandbox



def test_quick_http_workload_produces_every_figure():
    from sandbox.bench.http import markdown, measure

    with Sandbox(slots=1) as sb:
        res = measure(sb, quick=True, log=lambda m: None)
    over, thr = res["overhead"], res["throughput"]
    assert set(over["summary_ms"]) == {"in-process Sandbox.run()", "RemoteSandbox.run()", "http.client POST"}
    assert all(s["n"] == 20 for s in over["summary_ms"].values()), over["summary_ms"]
    assert all(v == 0 for v in over["failures"].values()), over["failures"]
    assert thr["pool"]["runs"] > 0 and thr["http"]["runs"] > 0
    assert thr["pool"]["failed"] == 0 and thr["http"]["failed"] == 0
    assert "HTTP throughput" in markdown(res)
