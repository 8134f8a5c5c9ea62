"""Every outcome of the closed set, each reached for real, and the engine survives each one."""

from __future__ import annotations

import signal

import pytest

from sandbox import Outcome, Sandbox

from _helpers import run_ok


def test_ok(sb):
    r = sb.run("print(sum(range(10)))")
    assert r.outcome is Outcome.OK and r.ok
    assert r.stdout == "45\n" and r.exit_code == 0 and r.error is None


def test_error(sb):
    r = sb.run("print('a')\n1/0")
    assert r.outcome is Outcome.ERROR and not r.ok
    assert r.error.type == "ZeroDivisionError" and r.exit_code == 1
    assert r.stdout == "a\n"


def test_timeout_keeps_output_printed_before_it(sb):
    code = "import time\nprint('started', flush=True)\nimport sys\nsys.stderr.write('warming up\\n')\ntime.sleep(60)\nprint('never')"
    r = sb.run(code, timeout=1)
    assert r.outcome is Outcome.TIMEOUT
    assert r.stdout == "started\n"
    assert r.stderr.startswith("warming up\n")
    assert r.exit_code == -signal.SIGKILL
    assert r.usage.wall_ms >= 900  # the wall clock really ran out (a lower bound only)
    run_ok(sb, "print('still alive')")


def test_timeout_of_a_busy_loop_with_unflushed_print(sb):
    # print() without flush=True must not be lost in a buffer when the run is killed.
    r = sb.run("print('partial')\nwhile True:\n    pass", timeout=1, limits={"cpu_seconds": 60})
    assert r.outcome is Outcome.TIMEOUT
    assert r.stdout == "partial\n"


def test_timeout_kills_background_processes(sb):
    # A process the program left behind does not keep the run (or the slot) alive.
    code = ("import subprocess\n"
            "subprocess.Popen(['sleep', '60'])\n"
            "print('spawned')\n")
    r = run_ok(sb, code, timeout=5)
    assert r.stdout == "spawned\n"
    r = run_ok(sb, "import subprocess\nprint(subprocess.run(['ps', '-e', '-o', 'comm='], capture_output=True, text=True).stdout)")
    assert "sleep" not in r.stdout


@pytest.mark.parametrize("alloc", [
    "import numpy as np\nx = np.ones(1 << 27)\nprint(x.sum())",          # 1 GiB of float64
    "x = bytearray(1 << 30)\nprint(len(x))",
])
def test_memory_limit(sb, alloc):
    r = sb.run("print('before', flush=True)\n" + alloc, limits={"memory_bytes": 256 << 20})
    assert r.outcome is Outcome.MEMORY_LIMIT, (r.outcome, r.exit_code, r.stderr[-500:])
    assert r.stdout == "before\n"
    assert r.usage.peak_memory_bytes > 200 << 20  # it really filled its allowance
    run_ok(sb, "import numpy as np\nprint(np.ones(1 << 20).sum())")


def test_memory_within_the_limit_is_fine(sb):
    r = run_ok(sb, "import numpy as np\nx = np.ones(1 << 24)\nprint(int(x.sum()))", limits={"memory_bytes": 512 << 20})
    assert r.stdout == f"{1 << 24}\n"
    assert r.usage.peak_memory_bytes >= 100 << 20  # 128 MiB of float64 was touched


def test_cpu_limit(sb):
    # Repeated: a busy loop that uses up its CPU seconds must be reported as cpu_limit every
    # time, not only when the engine's bookkeeping happens to land inside a tolerance.
    for _ in range(3):
        r = sb.run("print('spinning', flush=True)\nwhile True:\n    pass", limits={"cpu_seconds": 1}, timeout=20)
        assert r.outcome is Outcome.CPU_LIMIT, (r.outcome, r.exit_code, r.usage)
        assert r.stdout == "spinning\n"
        assert r.exit_code in (-signal.SIGKILL, -signal.SIGXCPU)
    run_ok(sb, "print(1)")


def test_cpu_limit_does_not_fire_on_sleep(sb):
    # CPU seconds are not wall seconds: sleeping past cpu_seconds is fine.
    r = run_ok(sb, "import time\ntime.sleep(1.5)\nprint('rested')", limits={"cpu_seconds": 1}, timeout=20)
    assert r.stdout == "rested\n"


def test_policy_violation(sb):
    code = "import ctypes\nprint('about to ptrace', flush=True)\nctypes.CDLL(None).syscall(101, 0, 0, 0, 0)\nprint('never')"
    r = sb.run(code)
    assert r.outcome is Outcome.POLICY_VIOLATION
    assert r.exit_code == -signal.SIGSYS
    assert r.stdout == "about to ptrace\n"
    run_ok(sb, "print(1)")


def test_crashed_on_segfault(sb):
    r = sb.run("import ctypes\nprint('about to crash', flush=True)\nctypes.string_at(0)")
    assert r.outcome is Outcome.CRASHED
    assert r.exit_code == -signal.SIGSEGV
    assert r.stdout == "about to crash\n"
    run_ok(sb, "print(1)")


def test_crashed_on_abort(sb):
    r = sb.run("import os\nos.abort()")
    assert r.outcome is Outcome.CRASHED
    assert r.exit_code == -signal.SIGABRT


def test_self_sigkill_is_crashed_not_a_limit(sb):
    r = sb.run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert r.outcome is Outcome.CRASHED
    assert r.exit_code == -signal.SIGKILL


def test_exit_137_is_an_error_not_memory_limit(sb):
    r = sb.run("import os\nos._exit(137)")
    assert r.outcome is Outcome.ERROR
    assert r.exit_code == 137


def test_raising_memory_error_is_an_error_not_memory_limit(sb):
    r = sb.run("raise MemoryError('pretend')")
    assert r.outcome is Outcome.ERROR
    assert r.error.type == "MemoryError"


def test_catching_sigxcpu_like_exit_code_is_not_cpu_limit(sb):
    # Exit code 152 (= 128 + SIGXCPU) is just a number the program chose.
    r = sb.run("import sys\nsys.exit(152)")
    assert r.outcome is Outcome.ERROR and r.exit_code == 152


def test_sigsys_sent_by_the_program_is_not_a_policy_violation(sb):
    # Only the filter may end a run with SIGSYS; a program cannot fake the outcome.
    r = sb.run("import os, signal\nos.kill(os.getpid(), signal.SIGSYS)")
    assert r.outcome is Outcome.ERROR
    assert r.error.type == "PermissionError"


def test_outcomes_have_stable_string_values():
    assert {o.value for o in Outcome} == {"ok", "error", "timeout", "memory_limit", "cpu_limit",
                                          "policy_violation", "crashed", "sandbox_error"}
    assert str(Outcome.MEMORY_LIMIT) == "memory_limit"


def test_runs_after_a_memory_limit_are_served_normally():
    # The OOM killer must take the execution that hit the limit, not the isolated children
    # waiting beside it in the slot's cgroup for the next requests: those then ran "crashed"
    # (-9, in a tenth of a millisecond). A one-slot pool, so the next runs take those spares.
    plot = "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()\nprint('ok')"
    with Sandbox(slots=1) as box:
        for _ in range(2):
            r = box.run("x = bytearray(400 << 20)", limits={"memory_bytes": 128 << 20})
            assert r.outcome is Outcome.MEMORY_LIMIT, (r.outcome, r.exit_code)
            for code in (plot, "print('ok')", plot):
                r = box.run(code)
                assert r.outcome is Outcome.OK and r.stdout == "ok\n", (r.outcome, r.exit_code, r.stderr[-300:])
        r = box.run("print(open('/proc/self/oom_score_adj').read().strip())")
        assert r.stdout == "1000\n"  # the running execution is the OOM killer's first choice
