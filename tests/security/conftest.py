"""Fixtures of the adversarial suite.

`sb` (tests/conftest.py) is the shared two-slot sandbox. `sb1` is a dedicated one-slot sandbox,
so that consecutive runs are guaranteed to land in the same jail (leakage tests), started while
a host secret sits in this process's environment (environment tests).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from sandbox import Sandbox

SECRET_ENV = "SANDBOX_TEST_SECRET"
SECRET_VALUE = f"env-secret-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def sb1():
    old = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = SECRET_VALUE
    try:
        with Sandbox(slots=1) as s:
            yield s
    finally:
        if old is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = old


class HostSecret:
    """World-readable secret files on the host, in places the jail must not see."""

    def __init__(self) -> None:
        self.token = f"host-secret-{uuid.uuid4().hex}"
        self.dirs: list[Path] = []
        self.files: list[Path] = []
        for parent in ("/tmp", "/var/tmp", "/root"):
            d = Path(tempfile.mkdtemp(prefix="sbx-sectest-", dir=parent))
            os.chmod(d, 0o755)
            f = d / "secret.txt"
            f.write_text(self.token + "\n")
            os.chmod(f, 0o644)
            self.dirs.append(d)
            self.files.append(f)

    def cleanup(self) -> None:
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def host_secret():
    s = HostSecret()
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def pair(sb):
    """Two sessions side by side in the shared sandbox's session jail (tenant A and tenant B)."""
    a, b = sb.session(), sb.session()
    yield a, b
    a.close()
    b.close()
