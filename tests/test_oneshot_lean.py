"""The one-shot path without an engine: `Sandbox(warm=False)` (what `sandbox run --no-engine` uses)
starts a jail that warms nothing ahead (no preload, no standard-library set, one child, no rehearsal).
Its results are the warm pool's, field for field, on programs that print, fail, write files and draw
figures; its isolation is the same (the children's filter, capabilities and uid, the CPU bandwidth
every process of the jail is under from its start), and closing a jail leaves nothing behind."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox import Outcome, Sandbox
from sandbox.limits import JailSettings

from _helpers import CGROUP_ROOT, wait_until

V2 = (CGROUP_ROOT / "cgroup.controllers").exists()

PROGRAMS = {
    "figure, file, stdout, stderr, then an error": (
        "import sys\n"
        "import matplotlib.pyplot as plt\n"
        "print('hello', 6 * 7)\n"
        "print('to stderr', file=sys.stderr)\n"
        "with open('out.txt', 'w') as f:\n"
        "    f.write('written by the run\\n')\n"
        "fig, ax = plt.subplots()\n"
        "ax.bar(['a', 'b', 'c'], [3, 1, 2])\n"
        "ax.set_title('three bars')\n"
        "plt.show()\n"
        "raise ValueError('the end of the run')\n"),
    "pandas and a chart saved to a file": (
        "import pandas as pd\n"
        "import matplotlib\n"
        "matplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt\n"
        "df = pd.DataFrame({'k': ['x', 'y', 'x'], 'v': [1, 2, 3]})\n"
        "s = df.groupby('k').v.sum()\n"
        "print(s.to_string())\n"
        "s.plot.bar()\n"
        "plt.savefig('chart.png')\n"
        "plt.show()\n"),
    "standard library only": "import json, math\nprint(json.dumps({'pi': round(math.pi, 5)}))\n",
    "exit status": "import sys\nprint('bye')\nsys.exit(3)\n",
}


def _comparable(r) -> dict:
    """Every field of a Result but the clocks and the memory (which differ from run to run)."""
    d = {f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name != "usage"}
    d["images"] = [(i.name, i.mime_type, i.width, i.height, i.data, i.chart) for i in r.images]
    d["files"] = [(f.path, f.mime_type, f.size, f.data) for f in r.files]
    return d


@pytest.fixture(scope="module")
def results() -> dict[str, tuple]:
    warm_results, lean_results = {}, {}
    with Sandbox(slots=1) as warm:
        for name, code in PROGRAMS.items():
            warm_results[name] = warm.run(code)
    for name, code in PROGRAMS.items():  # one lean jail per run, as the one-shot command makes
        with Sandbox(slots=1, warm=False) as lean:
            lean_results[name] = lean.run(code)
    return {name: (warm_results[name], lean_results[name]) for name in PROGRAMS}


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_a_lean_one_shot_gives_the_warm_pools_result(results, name):
    warm, lean = results[name]
    assert _comparable(lean) == _comparable(warm)


def test_the_programs_do_what_the_comparison_needs(results):
    warm, lean = results["figure, file, stdout, stderr, then an error"]
    assert lean.outcome is Outcome.ERROR and lean.error.type == "ValueError"
    assert lean.stdout == "hello 42\n" and "to stderr" in lean.stderr
    assert [f.path for f in lean.files] == ["out.txt"] and lean.files[0].data == b"written by the run\n"
    assert len(lean.images) == 1 and lean.images[0].data.startswith(b"\x89PNG")
    warm, lean = results["pandas and a chart saved to a file"]
    assert lean.outcome is Outcome.OK and "x    4" in lean.stdout
    assert [f.path for f in lean.files] == ["chart.png"] and len(lean.images) == 1
    assert results["exit status"][1].exit_code == 3


def test_a_lean_jail_warms_nothing_and_keeps_one_child():
    with Sandbox(slots=1, warm=False) as sb:
        (slot,) = sb._pool._live.values()
        assert slot.ready["modules"] == {}          # no preload list imported
        assert slot.ready["pids_overhead"] == 3     # the zygote, its lean fork server and one child
        probe = ("import sys\n"
                 "print(sorted(m for m in ('pandas', 'numpy', 'decimal', 'statistics') if m in sys.modules))\n")
        assert sb.run(probe).stdout == "[]\n"       # not even the standard-library set


def test_a_lean_jails_children_are_isolated_as_a_warm_pools():
    probe = ("import os\n"
             "s = {k: v for k, v in (l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines()"
             " if ':\\t' in l)}\n"
             "print(os.getuid(), s['CapEff'], s['CapPrm'], s['CapBnd'], s['CapAmb'], s['NoNewPrivs'], s['Seccomp'],"
             " s.get('Seccomp_filters'))\n")
    with Sandbox(slots=1, warm=False) as lean, Sandbox(slots=1, preload=False) as warm:
        got_lean, got_warm = lean.run(probe), warm.run(probe)
    assert got_lean.outcome is Outcome.OK, got_lean.stderr
    uid, eff, prm, bnd, amb, nnp, mode, filters = got_lean.stdout.split()
    assert int(uid) >= 1000 and {eff, prm, bnd, amb} == {"0000000000000000"} and nnp == "1" and mode == "2"
    # The uid differs from jail to jail at most by which one was free; everything else is the same.
    assert got_lean.stdout.split()[1:] == got_warm.stdout.split()[1:]


def _procs(cgroup: Path) -> set[int]:
    return {int(p) for p in (cgroup / "cgroup.procs").read_text().split()}


@pytest.mark.parametrize("warm", [False, True])
def test_every_process_of_a_jail_is_under_its_cpu_bandwidth_from_the_start(warm):
    """The host sets the CPU bandwidth itself before the zygote runs (cgroups.limit_cpu): nsjail's
    one-second period would hold a new jail's first heavy run up to a second."""
    cpus, period_ms = JailSettings.from_policy().cpus, JailSettings.from_policy().cpu_period_ms
    with Sandbox(slots=1, warm=warm, preload=False) as sb:
        (slot,) = sb._pool._live.values()
        cg = slot.cgroup
        if V2:
            quota, period = (cg.cpu / "cpu.max").read_text().split()
        else:
            quota, period = (cg.cpu / "cpu.cfs_quota_us").read_text(), (cg.cpu / "cpu.cfs_period_us").read_text()
            # The same processes in the cpu hierarchy as in the memory one: the zygote, the sysinfo
            # notifier, the fork server, the waiting child.
            assert _procs(cg.cpu) == _procs(cg.mem) and len(_procs(cg.mem)) >= 4
        assert int(period) == period_ms * 1000 and int(quota) / int(period) == pytest.approx(cpus)
        # A fresh jail's first run that needs 25 periods of CPU is not held back beyond them (with
        # nsjail's period still running, it was held about 700 ms once its first 10 ms were used).
        r = sb.run("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.25: pass\nprint(1)")
        assert r.outcome is Outcome.OK
        stat = dict(line.split() for line in (cg.cpu / "cpu.stat").read_text().splitlines())
        throttled_ms = int(stat["throttled_usec"]) / 1000 if V2 else int(stat["throttled_time"]) / 1e6
        # Relative to the run's own CPU where that is large (an emulated machine: 281 ms of it).
        assert throttled_ms < max(250, 1.5 * r.usage.cpu_ms), (stat, r.usage)


def test_killing_a_jail_ends_every_process_and_then_lifts_its_cpu_quota():
    """SlotCgroup.kill_all (what ending a jail does after killing nsjail): every process of the
    jail gets SIGKILL, then the quota is lifted; closing leaves no cgroup of the jail behind."""
    with Sandbox(slots=1, warm=False) as sb:
        (slot,) = sb._pool._live.values()
        cg = slot.cgroup
        pids = _procs(cg.mem)
        os.kill(slot.proc.pid, signal.SIGSTOP)  # nsjail stays: only kill_all ends the jail's processes
        try:
            cg.kill_all()
            assert wait_until(lambda: not _procs(cg.mem), timeout=10), _procs(cg.mem)
            quota = (cg.cpu / "cpu.max").read_text().split()[0] if V2 else (cg.cpu / "cpu.cfs_quota_us").read_text().strip()
            assert quota in ("max", "-1")
            for pid in pids:
                assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
        finally:
            os.kill(slot.proc.pid, signal.SIGCONT)
    assert not any(d.exists() for d in cg.dirs)


def test_sandbox_run_without_an_engine_is_lean(tmp_path):
    """The command itself: `sandbox run --no-engine` on a program that imports pandas."""
    script = tmp_path / "uses_pandas.py"
    script.write_text("import pandas as pd\nprint(pd.DataFrame({'a': [1, 2, 3]}).a.sum())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("SANDBOX_SOCKET", "SANDBOX_URL")}
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "sandbox", "run", "--no-engine", str(script)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert (done.returncode, done.stdout) == (0, "6\n"), done.stderr
    assert time.monotonic() - t0 < 60
