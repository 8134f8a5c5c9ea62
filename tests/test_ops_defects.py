"""Small defects found running the engine as an operator (issue 21), each against real jails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox import QueueFullError, Sandbox, SandboxClosedError
from sandbox.host import jail
from sandbox.host.image import state_dir


def _into_closed_pipe(*args: str) -> subprocess.CompletedProcess:
    """Run `sandbox ARGS` with stdout a pipe nobody reads any more (`| head` that has exited)."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "sandbox", *args], stdout=w, stderr=subprocess.PIPE, text=True,
                              timeout=300)
    finally:
        os.close(w)


def test_no_broken_pipe_traceback_when_stdout_closes_early():
    for args in (("doctor",), ("image", "info"), ("run", "--json", "-c", "print(1)")):
        p = _into_closed_pipe(*args)
        assert "Traceback" not in p.stderr and "BrokenPipeError" not in p.stderr, (args, p.stderr)


def test_no_network_is_said_in_the_error_text():
    code = "import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=1)\n"
    with Sandbox(slots=1, preload=False) as sb:
        r = sb.run(code)
        assert r.outcome.value == "error"
        assert "no network" in r.error.message and "no network" in r.error.traceback
        assert "Address family not supported" in r.error.message  # the errno text stays
        r = sb.run("import urllib.request\nurllib.request.urlopen('http://192.0.2.1/', timeout=1)\n")
        assert "no network" in r.error.traceback, r.error.traceback


def test_a_sequential_caller_never_sees_queue_full_while_a_slot_recycles_and_runs_never_go_back():
    with Sandbox(slots=1, preload=False, max_queue=0, recycle_after=2) as sb:
        for i in range(6):
            try:
                assert sb.run(f"print({i})").stdout == f"{i}\n"
            except QueueFullError as exc:
                raise AssertionError(f"run {i}: {exc}") from None
        stats = sb.stats()
        assert stats.replacements >= 2, stats
        assert stats.runs == 6, stats  # runs of the replaced slots are still counted


def _owner(d: Path) -> str | None:
    try:
        return (d / jail.OWNER_FILE).read_text().split()[0]
    except (OSError, IndexError):
        return None  # another version's jail, or one being made


def test_run_dirs_of_a_killed_host_are_swept_and_live_ones_kept(tmp_path):
    child = subprocess.Popen([sys.executable, "-c",
                              "import os, sys, time\nfrom sandbox import Sandbox\nsb = Sandbox(slots=1, preload=False)\n"
                              "print('ready', flush=True)\ntime.sleep(600)\n"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        runs = state_dir() / "run"
        theirs = [d for d in runs.glob("jail-*") if _owner(d) == str(child.pid)]
        assert len(theirs) == 1
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert theirs[0].is_dir()  # nothing of the killed host cleaned it
    deadline = time.monotonic() + 60  # its orphaned nsjail ends on its own (the zygote reads EOF)
    while str(theirs[0]) in jail._named_by_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    with Sandbox(slots=1, preload=False) as sb:  # a start sweeps the dead host's directories
        mine = [d for d in runs.glob("jail-*") if _owner(d) == str(os.getpid())]
        assert not theirs[0].exists()
        assert mine and all(d.is_dir() for d in mine)
        jail.remove_stale_run_dirs()  # again, while this host lives: its own stay
        assert all(d.is_dir() for d in mine)
        assert sb.run("print(2)").stdout == "2\n"
    # a directory without a mark is left alone while young
    young = Path(runs / "jail-unmarked-test")
    young.mkdir()
    try:
        jail.remove_stale_run_dirs()
        assert young.is_dir()
        old = time.time() - jail.STALE_UNMARKED_SECONDS - 10
        os.utime(young, (old, old))
        jail.remove_stale_run_dirs()
        assert not young.exists()
    finally:
        if young.exists():
            young.rmdir()


def test_runs_in_flight_at_close_end_with_the_output_they_had_flushed():
    import threading

    from sandbox import Outcome

    sb = Sandbox(slots=2, preload=False)
    started = threading.Barrier(3)
    results = {}

    def run(name: str, code: str) -> None:
        results[name] = sb.run(code, on_stdout=lambda text: started.wait(30) if "started" in text else None)

    threads = [threading.Thread(target=run, args=("out", "import time\nprint('started', flush=True)\ntime.sleep(600)")),
               threading.Thread(target=run, args=("err", "import sys, time\nprint('partial', file=sys.stderr, flush=True)\n"
                                                        "print('started', flush=True)\nwhile True: pass"))]
    for t in threads:
        t.start()
    started.wait(60)  # both have flushed their output
    t0 = time.monotonic()
    sb.close()
    for t in threads:
        t.join(30)
    assert time.monotonic() - t0 < 30
    for name, r in results.items():
        assert r.outcome is Outcome.SANDBOX_ERROR and r.error.type == "SandboxShutdown", (name, r)
        assert r.stdout == "started\n" and "shut down" in r.error.message
    assert results["err"].stderr == "partial\n"
    with pytest.raises(SandboxClosedError):  # and a new run is refused
        sb.run("print(1)")


def test_a_session_call_in_flight_at_close_ends_with_its_output():
    import threading

    from sandbox import Outcome

    sb = Sandbox(slots=1, preload=False)
    session = sb.session()
    flushed = threading.Event()
    got = {}

    def call() -> None:
        got["r"] = session.run("import time\nprint('started', flush=True)\ntime.sleep(600)",
                               on_stdout=lambda text: flushed.set())

    t = threading.Thread(target=call)
    t.start()
    assert flushed.wait(60)
    sb.close()
    t.join(30)
    r = got["r"]
    assert r.outcome is Outcome.SANDBOX_ERROR and r.error.type == "SandboxShutdown" and r.stdout == "started\n", r
    assert session.closed and session.close_reason == "the sandbox was closed"
