"""Workload `packages` (opt-in; issue 19): what packages on demand cost.

- cached set: `print(1)` with `packages=["humanize"]` (its set already in the cache) against the same
  run without packages, interleaved back to back on the pool under test; the promise is a p50 at
  most 5 ms above the run without packages.
- first use: PackageStore.prepare() into an empty cache of its own (pip's resolver, download and
  unpacking, on the host) against what it replaces done by hand outside the sandbox, side by side:
  `pip download --only-binary=:all:` of the same package into an empty directory plus `zipfile`
  extraction; the promise is at most 1.2 times that. Both go through pip's HTTP cache, which the
  first round warms.

Needs the package index (or the policy's wheelhouse) to serve `humanize`, which the default policy
allows; otherwise the workload answers with a note and no numbers.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

from ..errors import SandboxError
from ..host.packages import PackageStore
from .harness import Context
from .stats import ratio, summarize

PACKAGE = "humanize"
CACHED_BUDGET_MS = 5.0
FIRST_USE_RATIO = 1.2


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def _by_hand(image_python: Path, source: list[str], target: Path) -> None:
    """The baseline: pip download of the same package, then unzip every wheel."""
    wheels = target / "wheels"
    subprocess.run([str(image_python), "-I", "-m", "pip", "--isolated", "--disable-pip-version-check", "download",
                    "--only-binary=:all:", "--quiet", "-d", str(wheels), *source, PACKAGE],
                   check=True, capture_output=True, timeout=300)
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(target / "site")


def packages(ctx: Context) -> dict:
    sb = ctx.sb
    n = 30 if ctx.quick else 500
    rounds = 3 if ctx.quick else 10
    out: dict = {"description": f"packages on demand: print(1) with a cached set ({PACKAGE}) vs without; "
                               "the first use vs pip download + unzip by hand"}
    try:
        sb.packages.prepare([PACKAGE])
    except SandboxError as exc:
        out["note"] = f"skipped: {PACKAGE} cannot be resolved here ({exc})"
        return out

    with_pkgs, without, overhead = [], [], []
    with ctx.progress("packages: cached set vs none", 2 * n) as bar:
        for i in range(n + 5):
            for kind in (("with", "without") if i % 2 == 0 else ("without", "with")):
                t0 = time.perf_counter()
                r = sb.run("print(1)", packages=[PACKAGE] if kind == "with" else None)
                ms = _ms(t0)
                if i >= 5:
                    (with_pkgs if kind == "with" else without).append(ms)
                    if kind == "with":
                        overhead.append(r.usage.packages_ms)
                    bar.advance()
    a, b = summarize(with_pkgs), summarize(without)
    out["cached"] = {"with_packages_ms": a, "without_ms": b, "packages_ms": summarize(overhead),
                     "p50_delta_ms": round(a["p50"] - b["p50"], 4), "budget_ms": CACHED_BUDGET_MS,
                     "within_budget": a["p50"] - b["p50"] <= CACHED_BUDGET_MS}

    settings = sb.packages.settings
    source = (["--no-index", "--find-links", settings.wheelhouse] if settings.wheelhouse
              else ["--index-url", settings.index_url])
    first, by_hand = [], []
    with ctx.progress("packages: first use vs pip download + unzip", 2 * rounds) as bar:
        for i in range(rounds + 1):
            for kind in (("engine", "hand") if i % 2 == 0 else ("hand", "engine")):
                tmp = Path(tempfile.mkdtemp(prefix="sandbox-bench-pkg-", dir="/var/tmp"))
                try:
                    t0 = time.perf_counter()
                    if kind == "engine":
                        store = PackageStore(sb.image, dataclasses.replace(settings, cache_dir=str(tmp)))
                        store.prepare([PACKAGE])
                    else:
                        _by_hand(sb.image.python, source, tmp)
                    ms = _ms(t0)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                if i >= 1:  # the first round warms pip's HTTP cache for both
                    (first if kind == "engine" else by_hand).append(ms)
                    bar.advance()
    f, h = summarize(first), summarize(by_hand)
    out["first_use"] = {"engine_ms": f, "pip_download_and_unzip_ms": h, "p50_ratio": ratio(f["p50"], h["p50"]),
                        "budget_ratio": FIRST_USE_RATIO,
                        "within_budget": (ratio(f["p50"], h["p50"]) or 99) <= FIRST_USE_RATIO}
    return out
