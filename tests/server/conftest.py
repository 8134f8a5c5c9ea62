"""Fixtures for the service tests: the real `sandbox serve` in a subprocess on an ephemeral loopback
port, its key file, and an httpx client. The server's own output goes to a log file the tests read."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

KEY = "test-key-7f3a9c1e5b2d4068"
OTHER_KEY = "other-key-1b2c3d4e5f607182"


class Server:
    """One `sandbox serve` process. `url` is known once it prints its serving line."""

    def __init__(self, tmp: Path, *args: str, keys: tuple[str, ...] = (KEY, OTHER_KEY), env: dict | None = None):
        self.log_path = tmp / "server.log"
        cmd = [sys.executable, "-m", "sandbox", "serve", "--port", "0", *args]
        if keys:
            key_file = tmp / "keys"
            key_file.write_text("# test keys\n" + "\n".join(keys) + "\n")
            cmd += ["--api-key-file", str(key_file)]
        self.log = open(self.log_path, "w")
        full_env = {k: v for k, v in os.environ.items() if k != "SANDBOX_API_KEYS"}
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        self.url = self._wait_url()

    def _wait_url(self, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"serving on (https?://\S+) ", self.log_path.read_text())
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log_path.read_text()}")
            time.sleep(0.1)
        raise RuntimeError(f"server did not start:\n{self.log_path.read_text()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One server with two keys and one slot, shared by the tests that only make requests."""
    s = Server(tmp_path_factory.mktemp("server"), "--slots", "1", "--max-body-mb", "1")
    yield s
    s.stop()


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
        yield c


@pytest.fixture()
def anon(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c
