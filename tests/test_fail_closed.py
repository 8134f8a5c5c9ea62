"""Setup failures fail closed: if a child cannot be fully isolated, nothing of the request runs."""

from __future__ import annotations

from sandbox import Outcome


def test_child_that_cannot_apply_its_limits_runs_nothing(sb):
    # The jail's hard RLIMIT_NOFILE is 4096, so a child asked for more cannot set its limit.
    # Isolation then fails before the request is read, and the program must not run.
    r = sb.run("print('ran')\nopen('marker', 'w').write('x')", limits={"open_files": 1 << 20})
    assert r.outcome is Outcome.SANDBOX_ERROR
    assert r.stdout == "" and r.files == []
    assert "setup failed" in r.error.message
    # The engine recovers: the next run, with normal limits, works.
    again = sb.run("print('ran')")
    assert again.outcome is Outcome.OK and again.stdout == "ran\n"
