"""Shared fixtures. Every test runs the real engine: real nsjail jails, the real image, real cgroups."""

from __future__ import annotations

import pytest

from sandbox import Sandbox


@pytest.fixture(scope="session")
def sb():
    """One warm two-slot sandbox for the whole session (starting jails costs seconds)."""
    with Sandbox(slots=2) as s:
        yield s


def run_ok(sb, code, **kw):
    """Run code and assert it succeeded, showing stderr and the error when it did not."""
    r = sb.run(code, **kw)
    assert r.outcome.value == "ok", (r.outcome, r.stderr, r.error)
    return r


@pytest.fixture(scope="module")
def psb(world):
    """The packages tests' one-slot Sandbox, under the policy of the module's own `world` fixture (a
    tests/_packages.PackageWorld with the wheels and allow list that module needs)."""
    with world.sandbox(slots=1) as s:
        yield s
