"""Limits: output caps, per-call overrides, validation, figure/file caps, rlimits and tmpfs sizes."""

from __future__ import annotations

import errno

import pytest

from sandbox import InvalidInputError, Limits, Outcome

from _helpers import run_ok

# -- output caps -------------------------------------------------------------------------------


def test_stdout_flood_is_truncated_and_the_program_keeps_running(sb):
    code = ("import sys\n"
            "for _ in range(200):\n"
            "    sys.stdout.write('x' * 1000)\n"
            "open('after.txt', 'w').write('reached the end')\n")
    r = run_ok(sb, code, limits={"max_stdout_bytes": 1000})
    assert r.stdout_truncated is True
    assert r.stderr_truncated is False
    assert 0 < len(r.stdout.encode()) <= 1000
    assert set(r.stdout) == {"x"}
    # Output past the cap is drained, not allowed to block the program.
    assert {f.path: f.data for f in r.files} == {"after.txt": b"reached the end"}


def test_stdout_flood_at_the_default_cap(sb):
    cap = sb.limits.max_stdout_bytes
    code = "import os\nchunk = b'y' * 65536\nfor _ in range(%d):\n    os.write(1, chunk)\n" % (3 * cap // 65536 + 1)
    r = run_ok(sb, code)
    assert r.stdout_truncated is True
    assert 0 < len(r.stdout.encode()) <= cap
    assert set(r.stdout) == {"y"}


def test_stderr_flood_is_truncated(sb):
    r = run_ok(sb, "import sys\nsys.stderr.write('e' * 50000)\nprint('done')", limits={"max_stderr_bytes": 500})
    assert r.stderr_truncated is True and r.stdout_truncated is False
    assert 0 < r.stderr.count("e") <= 500 + r.stderr.count("[sandbox]") * 200  # engine notes may follow
    assert r.stderr.startswith("e" * 100)
    assert r.stdout == "done\n"


def test_output_under_the_cap_is_not_flagged(sb):
    r = run_ok(sb, "print('z' * 99)", limits={"max_stdout_bytes": 100})
    assert r.stdout == "z" * 99 + "\n"
    assert r.stdout_truncated is False


def test_stdout_flood_then_timeout_keeps_the_head(sb):
    r = sb.run("import sys\nwhile True:\n    sys.stdout.write('w' * 4096)", timeout=1,
               limits={"max_stdout_bytes": 10000, "cpu_seconds": 60})
    assert r.outcome is Outcome.TIMEOUT
    assert r.stdout_truncated is True
    assert 0 < len(r.stdout) <= 10000 and set(r.stdout) == {"w"}


# -- per-call overrides ------------------------------------------------------------------------


def test_timeout_argument_overrides_for_one_call_only(sb):
    code = "import time\ntime.sleep(2)\nprint('slept')"
    assert sb.run(code, timeout=1).outcome is Outcome.TIMEOUT
    assert sb.limits.timeout_seconds >= 10  # the sandbox's defaults were not changed
    assert run_ok(sb, code).stdout == "slept\n"


def test_limits_mapping_overrides_for_one_call_only(sb):
    code = "print('q' * 5000)"
    assert sb.run(code, limits={"max_stdout_bytes": 100}).stdout_truncated is True
    r = run_ok(sb, code)
    assert r.stdout_truncated is False and len(r.stdout) == 5001


def test_limits_object_override(sb):
    lim = Limits.from_policy().replace(max_stdout_bytes=64, timeout_seconds=5)
    r = run_ok(sb, "print('a' * 1000)", limits=lim)
    assert r.stdout_truncated is True and len(r.stdout) <= 64


def test_timeout_argument_wins_over_limits_mapping(sb):
    r = sb.run("import time\ntime.sleep(3)", timeout=1, limits={"timeout_seconds": 20})
    assert r.outcome is Outcome.TIMEOUT


def test_policy_defaults_are_loaded():
    lim = Limits.from_policy()
    assert lim.timeout_seconds == 30
    assert lim.memory_bytes == 1 << 30
    assert lim.max_stdout_bytes == 1 << 20


@pytest.mark.parametrize("kwargs", [
    {"limits": {"memory_bytes": -1}},
    {"limits": {"memory_bytes": 0}},
    {"limits": {"timeout_seconds": 0}},
    {"limits": {"timeout_seconds": -5}},
    {"limits": {"timeout_seconds": 10 ** 9}},
    {"limits": {"cpu_seconds": 1.5}},
    {"limits": {"cpu_seconds": "10"}},
    {"limits": {"max_images": True}},
    {"limits": {"max_images": -1}},
    {"limits": {"max_stdout_bytes": None}},
    {"limits": {"no_such_limit": 1}},
    {"limits": "fast"},
    {"limits": [("timeout_seconds", 1)]},
    {"timeout": 0},
    {"timeout": -1},
    {"timeout": "1"},
    {"timeout": float("inf")},
    {"timeout": float("nan")},
])
def test_invalid_limits_raise_before_anything_runs(sb, kwargs):
    runs = sum(s.runs for s in sb._pool._live.values())
    with pytest.raises(InvalidInputError):
        sb.run("open('ran.txt', 'w').write('x')\nprint('ran')", **kwargs)
    assert sum(s.runs for s in sb._pool._live.values()) == runs


def test_invalid_limits_object_cannot_be_built():
    with pytest.raises(InvalidInputError):
        Limits(memory_bytes=-1)
    with pytest.raises(InvalidInputError):
        Limits.from_policy().replace(nonsense=3)
    with pytest.raises(ValueError):  # InvalidInputError is also a ValueError
        Limits(timeout_seconds=0)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(InvalidInputError):
            Limits(timeout_seconds=bad)


def test_zero_caps_are_allowed_for_images_and_files(sb):
    code = ("import matplotlib.pyplot as plt\nplt.figure()\nplt.plot([1])\n"
            "open('f.txt', 'w').write('x')\nprint('done')")
    r = run_ok(sb, code, limits={"max_images": 0, "max_files": 0})
    assert r.images == [] and r.files == []
    assert r.stdout == "done\n"


# -- artefact caps -----------------------------------------------------------------------------


def test_max_images_drops_extra_figures_with_a_note(sb):
    code = ("import matplotlib.pyplot as plt\n"
            "for i in range(5):\n"
            "    plt.figure(figsize=(1 + i, 1), dpi=50)\n"
            "    plt.plot([0, i])\n")
    r = run_ok(sb, code, limits={"max_images": 2})
    assert [(i.name, i.width) for i in r.images] == [("figure_1.png", 50), ("figure_2.png", 100)]
    assert "[sandbox]" in r.stderr and "3 figure(s) dropped" in r.stderr


def test_max_images_counts_shown_figures_too(sb):
    code = ("import matplotlib.pyplot as plt\n"
            "for i in range(3):\n"
            "    plt.figure(figsize=(1, 1), dpi=50)\n"
            "    plt.show()\n"
            "plt.figure(figsize=(1, 1), dpi=50)\n")
    r = run_ok(sb, code, limits={"max_images": 2})
    assert [i.name for i in r.images] == ["figure_1.png", "figure_2.png"]
    assert "2 figure(s) dropped" in r.stderr


def test_oversize_image_is_dropped(sb):
    code = ("import matplotlib.pyplot as plt, numpy as np\n"
            "plt.figure(figsize=(4, 4), dpi=100)\n"
            "plt.imshow(np.random.rand(400, 400))\n"
            "plt.figure(figsize=(1, 1), dpi=20)\n")
    r = run_ok(sb, code, limits={"max_image_bytes": 20000})
    assert [(i.width, i.height) for i in r.images] == [(20, 20)]
    assert "figure(s) dropped" in r.stderr


def test_max_files_drops_extra_files_with_a_note(sb):
    code = "for i in range(5):\n    open(f'f{i}.txt', 'w').write(str(i))\n"
    r = run_ok(sb, code, limits={"max_files": 2})
    assert len(r.files) == 2
    for f in r.files:
        assert f.data == f.path[1:2].encode()
    assert "3 output file(s) dropped" in r.stderr


def test_max_file_bytes_caps_returned_files(sb):
    code = "open('big.bin', 'wb').write(b'b' * 5000)\nopen('small.txt', 'w').write('s')\n"
    r = run_ok(sb, code, limits={"max_file_bytes": 1000})
    assert {f.path: f.data for f in r.files} == {"small.txt": b"s"}
    assert "output file(s) dropped" in r.stderr


# -- rlimits and tmpfs sizes -------------------------------------------------------------------


def test_file_size_limit_raises_oserror_in_the_program(sb):
    code = ("try:\n"
            "    with open('big.bin', 'wb') as f:\n"
            "        f.write(b'x' * (3 << 20))\n"
            "except OSError as e:\n"
            "    print('OSError', e.errno)\n"
            "print('still running')\n")
    r = run_ok(sb, code, limits={"file_size_bytes": 1 << 20})
    assert r.stdout == f"OSError {errno.EFBIG}\nstill running\n"


def test_default_file_size_limit_allows_multi_megabyte_files(sb):
    # nsjail's own default (1 MiB) would break savefig and pandas; the policy raises it.
    r = run_ok(sb, "open('m.bin', 'wb').write(b'm' * (5 << 20))\nprint('ok')")
    assert r.files[0].size == 5 << 20


def test_workdir_tmpfs_is_size_capped(sb):
    code = ("try:\n"
            "    with open('fill.bin', 'wb') as f:\n"
            "        for _ in range(32):\n"
            "            f.write(b'z' * (1 << 20))\n"
            "            f.flush()\n"
            "except OSError as e:\n"
            "    print('OSError', e.errno)\n"
            "import os\n"
            "st = os.statvfs('.')\n"
            "print(st.f_blocks * st.f_frsize <= (4 << 20))\n")
    r = run_ok(sb, code, limits={"workdir_bytes": 4 << 20, "max_file_bytes": 1})
    assert r.stdout == f"OSError {errno.ENOSPC}\nTrue\n"


def test_tmp_tmpfs_is_size_capped(sb):
    code = ("try:\n"
            "    with open('/tmp/fill.bin', 'wb') as f:\n"
            "        for _ in range(32):\n"
            "            f.write(b'z' * (1 << 20))\n"
            "            f.flush()\n"
            "except OSError as e:\n"
            "    print('OSError', e.errno)\n")
    r = run_ok(sb, code, limits={"tmp_bytes": 4 << 20})
    assert r.stdout == f"OSError {errno.ENOSPC}\n"


def test_open_files_limit(sb):
    code = ("import resource\n"
            "print(resource.getrlimit(resource.RLIMIT_NOFILE))\n"
            "fs = []\n"
            "try:\n"
            "    for i in range(100):\n"
            "        fs.append(open('/dev/null'))\n"
            "except OSError as e:\n"
            "    print('OSError', e.errno, len(fs) < 32)\n")
    r = run_ok(sb, code, limits={"open_files": 32})
    assert r.stdout == f"(32, 32)\nOSError {errno.EMFILE} True\n"


def test_max_processes_limit(sb):
    code = ("import subprocess\n"
            "procs = []\n"
            "try:\n"
            "    for i in range(20):\n"
            "        procs.append(subprocess.Popen(['sleep', '30']))\n"
            "except OSError as e:\n"
            "    print('OSError', len(procs) <= 4)\n"
            "for p in procs:\n"
            "    p.kill()\n")
    r = run_ok(sb, code, limits={"max_processes": 4}, timeout=20)
    assert r.stdout == "OSError True\n"


def test_rlimits_cannot_be_raised_by_the_program(sb):
    code = ("import resource\n"
            "try:\n"
            "    resource.setrlimit(resource.RLIMIT_CPU, (100, 100))\n"
            "    print('raised')\n"
            "except (ValueError, OSError):\n"
            "    print('refused', resource.getrlimit(resource.RLIMIT_CPU))\n")
    r = run_ok(sb, code, limits={"cpu_seconds": 7})
    assert r.stdout == "refused (7, 7)\n"
