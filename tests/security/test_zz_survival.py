"""Runs last (file order): after every attack above, the engine still answers."""

from __future__ import annotations

import time

from sandbox import Outcome

from ._helpers import describe


def test_engine_survived_every_attack(sb):
    # Expected: ok; print(1) still works in every slot of the shared sandbox, fast.
    for _ in range(4):
        r = sb.run("print(1)", timeout=20)
        assert r.outcome is Outcome.OK and r.stdout == "1\n", describe(r)
    # Any jail an attack killed has been replaced (replacement runs in the background).
    deadline = time.monotonic() + 60
    while sb.stats().live < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    stats = sb.stats()
    assert stats.live == 2 and stats.starting == 0, stats


def test_dedicated_sandbox_survived(sb1):
    # Expected: ok; the one-slot sandbox used for the leakage, fork-bomb and environment tests
    # still answers too.
    r = sb1.run("print(1)", timeout=20)
    assert r.outcome is Outcome.OK and r.stdout == "1\n", describe(r)
