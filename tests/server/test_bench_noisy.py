"""Smoke test of the `noisy` benchmark workload (quick counts): every abuse ran beside key B's calls,
and every figure is there. Speed is never pass/fail here; the figures come from
`sandbox bench --workload noisy` on a quiet machine."""

from __future__ import annotations

from sandbox.bench.noisy import markdown, measure


def test_quick_noisy_workload_produces_every_figure():
    res = measure(1, quick=True, log=lambda m: None)
    assert res["alone_failed"] == 0 and res["alone_ms"]["n"] == 20
    assert set(res["abuses"]) == {"short-run flood", "forged replies", "session flood", "no-key 60 MiB bodies",
                                  "byte-at-a-time output", "deeply nested code", "sessions until refused"}
    for name, a in res["abuses"].items():
        assert a["ms"]["n"] + a["failed"] == 20, (name, a)
        assert a["p50_ratio"] is not None and a["rss_growth_mib"] is not None, (name, a)
    assert "Noisy neighbour" in markdown(res)
