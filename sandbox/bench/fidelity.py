"""Fidelity: the example galleries scikit-learn, seaborn and statsmodels ship in their source
distributions, run through the sandbox and through the image's own interpreter side by side.

    sandbox bench --workload fidelity [--quick]

Each example runs twice with the same timeout and the Agg backend, figures rendered the same
way (every figure shown or left open is saved as PNG and closed): once as `Sandbox.run(code,
filename=...)`, once as `<image venv>/bin/python` in a fresh temporary directory with the jail's
environment and a slot's CPU share (one core, nice 19). Each example is classified:

  passed in both | sandbox only | host only (each with its reason) | needs network (failed in
  both on a download: neither side has the internet here) | needs a package the image lacks
  (the same ImportError in both) | too slow (timed out in both) | failed in both (another
  reason, shown)

and every policy_violation on this benign code is listed with the refused syscall (target: none).
The sdists come from PyPI with pip (`pip download --no-binary PKG --no-deps`, which prepares
their metadata: scikit-learn's needs a C/C++ compiler) and are cached under the state dir.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sandbox import Outcome, Sandbox
from sandbox.host import image as images

GALLERIES = {  # package -> where its examples live inside the sdist
    "scikit-learn": "examples/",
    "seaborn": "examples/",
    "statsmodels": "examples/python/",
}
# A small fixed sample (no network, a few seconds each): the CI test and `--quick`.
SAMPLE = {"seaborn": ["residplot.py", "palette_choices.py", "many_pairwise_correlations.py", "kde_ridgeplot.py"]}
NETWORK = re.compile(r"URLError|HTTPError|ConnectionError|ConnectTimeout|gaierror|Name or service not known|"
                     r"Temporary failure in name resolution|Network is unreachable|Address family not supported|"
                     r"urlopen|Errno -3|Errno -2|Errno 97|Errno 101|RemoteDisconnected|SSLError", re.I)

MISSING = re.compile(r"No module named '[^']+'|requires [A-Za-z0-9_.-]+")

HOST_WRAPPER = r'''
import io, runpy, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
shown = [0]
def show(*args, **kwargs):
    for num in plt.get_fignums():
        plt.figure(num).savefig(io.BytesIO(), format="png")
        plt.close(num)
        shown[0] += 1
plt.show = show
sys.argv = [sys.argv[1]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    show()
    import resource
    cpu = sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    sys.stderr.write(f"\n__FIGURES__ {shown[0]} __CPU__ {cpu:.2f}\n")
'''


@dataclass
class Side:
    ok: bool
    outcome: str
    seconds: float
    figures: int
    reason: str = ""
    cpu_s: float | None = None   # CPU seconds the run used (a timed-out host run: unknown)


@dataclass
class Example:
    gallery: str
    name: str
    sandbox: Side
    host: Side
    verdict: str = ""
    note: str = ""


@dataclass
class GalleryReport:
    gallery: str
    version: str
    examples: int = 0
    passed_both: int = 0
    sandbox_only: list[str] = field(default_factory=list)
    host_only: list[str] = field(default_factory=list)
    needs_network: int = 0
    needs_package: list[str] = field(default_factory=list)
    too_slow: int = 0
    failed_both: list[str] = field(default_factory=list)
    figures_sandbox: int = 0
    figures_host: int = 0
    policy_kills: list[str] = field(default_factory=list)


def sdist(package: str, version: str, cache: Path, log=print) -> Path:
    """The package's sdist, downloaded once with pip into `cache` (or an unpacked copy of it
    placed there as `<package>-<version>/`)."""
    cache.mkdir(parents=True, exist_ok=True)
    if (cache / f"{package}-{version}" / "PKG-INFO").is_file():
        return cache / f"{package}-{version}"
    stem = package.replace("-", "_")
    for f in cache.glob("*.tar.gz"):
        if f.name.lower() in (f"{stem}-{version}.tar.gz", f"{package}-{version}.tar.gz"):
            return f
    log(f"fidelity: downloading the {package} {version} sdist (pip prepares its metadata; this can take minutes)")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", package,
                    "-d", str(cache), f"{package}=={version}"], check=True, capture_output=True, text=True)
    return sdist(package, version, cache, log)


def examples(archive: Path, where: str) -> list[tuple[str, str]]:
    """(relative name, source) of every example script in the sdist's gallery folder."""
    out = []
    if archive.is_dir():
        for f in sorted((archive / where).rglob("*.py")):
            name = str(f.relative_to(archive / where))
            if not os.path.basename(name).startswith("_") and name not in ("run_all.py", "conf.py"):
                out.append((name, f.read_text(errors="replace")))
        return out
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            rel = m.name.split("/", 1)[1] if "/" in m.name else m.name
            if m.isfile() and rel.startswith(where) and rel.endswith(".py"):
                name = rel[len(where):]
                if os.path.basename(name).startswith("_") or name in ("run_all.py", "conf.py"):
                    continue
                out.append((name, tar.extractfile(m).read().decode("utf-8", "replace")))
    return sorted(out)


def _host_env(image, home: str) -> dict[str, str]:
    from sandbox.host import jail

    env = dict(jail.environment(image))
    env.update(HOME=home, TMPDIR=home, MPLCONFIGDIR=os.path.join(home, ".mpl"))
    return env


def _like_a_slot() -> None:
    """The CPU a slot's execution gets: one core's worth, at nice 19 (isolation.py)."""
    os.nice(19)
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[os.getpid() % len(cpus)]})


def run_host(image, name: str, code: str, timeout: float) -> Side:
    with tempfile.TemporaryDirectory(prefix="fidelity-") as d:
        script = Path(d) / os.path.basename(name)
        script.write_text(code)
        t0 = time.monotonic()
        try:
            p = subprocess.run([str(image.python), "-c", HOST_WRAPPER, str(script)], cwd=d, env=_host_env(image, d),
                               capture_output=True, text=True, timeout=timeout, start_new_session=True,
                               preexec_fn=_like_a_slot)
        except subprocess.TimeoutExpired:
            return Side(False, "timeout", round(time.monotonic() - t0, 2), 0, f"timed out after {timeout:g} s")
        secs = round(time.monotonic() - t0, 2)
        m = re.search(r"__FIGURES__ (\d+) __CPU__ ([0-9.]+)", p.stderr)
        figures, cpu = (int(m.group(1)), float(m.group(2))) if m else (0, None)
        if p.returncode == 0:
            return Side(True, "ok", secs, figures, cpu_s=cpu)
        tail = [ln for ln in p.stderr.strip().splitlines() if ln.strip() and "__FIGURES__" not in ln]
        return Side(False, "error" if p.returncode > 0 else "crashed", secs, figures, (tail[-1] if tail else "")[:300],
                    cpu_s=cpu)


def run_sandbox(sb: Sandbox, name: str, code: str, timeout: float) -> Side:
    t0 = time.monotonic()
    r = sb.run(code, filename=os.path.basename(name), timeout=timeout)
    secs = round(time.monotonic() - t0, 2)
    ok = r.outcome is Outcome.OK
    reason = ""
    if not ok:
        if r.error is not None:
            reason = f"{r.error.type}: {r.error.message}".splitlines()[0][:300]
        else:
            tail = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
            reason = tail[-1][:300] if tail else r.outcome.value
        if r.outcome is Outcome.TIMEOUT:
            reason = f"timed out after {timeout:g} s"
    return Side(ok, r.outcome.value, secs, len(r.images), reason, cpu_s=round(r.usage.cpu_ms / 1000, 2))


def classify(ex: Example) -> None:
    s, h = ex.sandbox, ex.host
    if s.ok and h.ok:
        ex.verdict = "passed in both"
    elif s.ok:
        ex.verdict, ex.note = "sandbox only", f"host: {h.reason}"
    elif h.ok:
        ex.verdict, ex.note = "host only", f"sandbox ({s.outcome}): {s.reason}"
        if s.outcome == "timeout" and s.cpu_s is not None and h.cpu_s:
            ex.note += f" having had {s.cpu_s:g} s of CPU; the host run needed {h.cpu_s:g} s"
    elif NETWORK.search(s.reason) and NETWORK.search(h.reason):
        ex.verdict, ex.note = "needs network", h.reason
    elif MISSING.search(s.reason) and MISSING.search(h.reason):
        ex.verdict, ex.note = "needs a package", MISSING.search(h.reason).group(0)
    elif s.outcome == "timeout" and h.outcome == "timeout":
        ex.verdict = "too slow"
    else:
        ex.verdict, ex.note = "failed in both", f"sandbox: {s.reason} | host: {h.reason}"


def summarize(gallery: str, version: str, done: list[Example]) -> GalleryReport:
    g = GalleryReport(gallery, version, examples=len(done))
    for ex in done:
        g.figures_sandbox += ex.sandbox.figures
        g.figures_host += ex.host.figures
        if ex.sandbox.outcome == Outcome.POLICY_VIOLATION.value:
            g.policy_kills.append(f"{ex.name}: {ex.sandbox.reason}")
        if ex.verdict == "passed in both":
            g.passed_both += 1
        elif ex.verdict == "sandbox only":
            g.sandbox_only.append(f"{ex.name} ({ex.note})")
        elif ex.verdict == "host only":
            g.host_only.append(f"{ex.name} ({ex.note})")
        elif ex.verdict == "needs network":
            g.needs_network += 1
        elif ex.verdict == "needs a package":
            g.needs_package.append(f"{ex.name} ({ex.note})")
        elif ex.verdict == "too slow":
            g.too_slow += 1
        else:
            g.failed_both.append(f"{ex.name} ({ex.note})")
    return g


def run_gallery(sb: Sandbox, image, gallery: str, scripts: list[tuple[str, str]], timeout: float,
                workers: int = 1, log=print, progress: Path | None = None) -> list[Example]:
    """Run every script on both sides (the two sides of one example at the same time)."""
    done: list[Example] = []

    def one(item: tuple[str, str]) -> Example:
        name, code = item
        with cf.ThreadPoolExecutor(2) as pair:
            fs = pair.submit(run_sandbox, sb, name, code, timeout)
            fh = pair.submit(run_host, image, name, code, timeout)
            ex = Example(gallery, name, fs.result(), fh.result())
        classify(ex)
        return ex

    with cf.ThreadPoolExecutor(workers) as pool:
        for i, ex in enumerate(pool.map(one, scripts), 1):
            done.append(ex)
            if progress is not None:  # a long run's partial results survive an interruption
                with open(progress, "a") as f:
                    f.write(json.dumps(asdict(ex)) + "\n")
            log(f"fidelity: {gallery} {i}/{len(scripts)} {ex.name}: {ex.verdict} "
                f"(sandbox {ex.sandbox.outcome} {ex.sandbox.seconds}s, host {ex.host.outcome} {ex.host.seconds}s)")
    return done


def markdown(reports: list[GalleryReport], timeout: float) -> str:
    lines = [f"Timeout {timeout:g} s on both sides; Agg backend; figures = PNGs rendered from every figure shown "
             "or left open.", "",
             "| gallery | examples | passed in both | sandbox only | host only | needs network (both) | "
             "needs a package the image lacks (both) | too slow (both) | failed in both | figures sandbox / host | "
             "policy kills |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in reports:
        lines.append(f"| {g.gallery} {g.version} | {g.examples} | {g.passed_both} | {len(g.sandbox_only)} | "
                     f"{len(g.host_only)} | {g.needs_network} | {len(g.needs_package)} | {g.too_slow} | "
                     f"{len(g.failed_both)} | "
                     f"{g.figures_sandbox} / {g.figures_host} | {len(g.policy_kills)} |")
    for g in reports:
        for title, items in (("passed only in the sandbox", g.sandbox_only), ("passed only on the host", g.host_only),
                             ("needs a package the image lacks", g.needs_package),
                             ("failed in both", g.failed_both), ("policy kills", g.policy_kills)):
            if items:
                lines += ["", f"{g.gallery}, {title}:"] + [f"- {x}" for x in items]
    return "\n".join(lines) + "\n"


def run(sb: Sandbox, *, quick: bool, timeout: float | None = None, out: Path | None = None,
        galleries: list[str] | None = None, log=print, start: int = 0, stop: int | None = None) -> dict:
    """The whole workload: returns {"galleries": [...], "examples": [...], "markdown": str}."""
    image = images.load_any("default")
    versions = image.manifest["packages"]
    cache = images.state_dir() / "sdists"
    timeout = timeout or (60.0 if quick else 120.0)
    reports, everything = [], []
    for gallery in galleries or list(GALLERIES):
        version = versions[gallery]
        if quick and gallery not in SAMPLE:
            continue
        scripts = examples(sdist(gallery, version, cache, log), GALLERIES[gallery])
        if quick:
            scripts = [s for s in scripts if s[0] in SAMPLE[gallery]]
        scripts = scripts[start:stop]  # a slice of the sorted list, to split a long run
        if not scripts:
            log(f"fidelity: the {gallery} {version} sdist has no {GALLERIES[gallery]} gallery")
        progress = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            progress = out / f"fidelity-{gallery}{f'-{start}-{stop}' if start or stop else ''}.jsonl"
            progress.unlink(missing_ok=True)
        done = run_gallery(sb, image, gallery, scripts, timeout, log=log, progress=progress)
        everything += done
        reports.append(summarize(gallery, version, done))
    md = markdown(reports, timeout)
    result = {"timeout_s": timeout, "galleries": [asdict(g) for g in reports],
              "examples": [asdict(e) for e in everything], "markdown": md}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "fidelity.json").write_text(json.dumps(result, indent=1))
        (out / "fidelity.md").write_text(md)
    return result


def fidelity(ctx) -> dict:
    """`sandbox bench --workload fidelity`: the quick mode runs the fixed sample only."""
    result = run(ctx.sb, quick=ctx.quick, out=ctx.out, log=lambda m: sys.stderr.write(m + "\n"))
    sys.stderr.write(result["markdown"])
    return result


def report_from_progress(paths: list[Path], versions: dict[str, str], timeout: float) -> str:
    """The table from the progress files of one or more (partial or split) runs."""
    by_gallery: dict[str, dict[str, Example]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            d = json.loads(line)
            ex = Example(d["gallery"], d["name"], Side(**d["sandbox"]), Side(**d["host"]), d["verdict"], d["note"])
            by_gallery.setdefault(ex.gallery, {})[ex.name] = ex
    reports = [summarize(g, versions.get(g, "?"), sorted(exs.values(), key=lambda e: e.name))
               for g, exs in sorted(by_gallery.items())]
    return markdown(reports, timeout)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Run the gallery fidelity comparison directly.")
    ap.add_argument("--gallery", action="append", choices=list(GALLERIES))
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--start", type=int, default=0, help="first example (of each gallery's sorted list)")
    ap.add_argument("--stop", type=int, default=None, help="stop before this example")
    ap.add_argument("--report", nargs="+", type=Path, metavar="JSONL",
                    help="only print the table from these progress files (merges split runs)")
    args = ap.parse_args()
    if args.report:
        versions = images.load_any("default").manifest["packages"]
        print(report_from_progress(args.report, versions, args.timeout or 120.0))
        return
    with Sandbox(slots=args.slots) as sb:
        res = run(sb, quick=args.quick, timeout=args.timeout, out=Path(args.out), galleries=args.gallery,
                  log=lambda m: sys.stderr.write(m + "\n"), start=args.start, stop=args.stop)
    print(res["markdown"])


if __name__ == "__main__":
    main()
