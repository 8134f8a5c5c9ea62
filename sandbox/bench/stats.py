"""Order statistics over raw samples (no numpy: the harness runs wherever the engine runs)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    if len(xs) == 1:
        return float(xs[0])
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (k - lo))


def median(values: Sequence[float]) -> float | None:
    return percentile(values, 50)


def summarize(values: Iterable[float]) -> dict:
    """n, mean, p50, p95, p99, max, min of a list of milliseconds (or any unit)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "min": round(xs[0], 4),
        "mean": round(sum(xs) / len(xs), 4),
        "p50": round(percentile(xs, 50), 4),
        "p95": round(percentile(xs, 95), 4),
        "p99": round(percentile(xs, 99), 4),
        "max": round(xs[-1], 4),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b
