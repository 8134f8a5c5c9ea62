"""`sandbox serve` itself: the loopback rule without keys, start-up messages."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx

from .conftest import Server


def test_refuses_a_public_address_without_a_key():
    p = subprocess.run([sys.executable, "-m", "sandbox", "serve", "--host", "0.0.0.0", "--port", "0"],
                       capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 2
    assert "without an API key" in p.stderr and "127.0.0.1" in p.stderr
    assert "Traceback" not in p.stderr


def test_rejects_a_short_key(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("short\n")
    p = subprocess.run([sys.executable, "-m", "sandbox", "serve", "--port", "0", "--api-key-file", str(keys)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "at least 16" in p.stderr and "short" not in p.stderr.replace("at least", "")


def test_loopback_without_keys_serves_local_callers(tmp_path):
    s = Server(tmp_path, "--slots", "1", keys=())
    try:
        assert "no API key (loopback only)" in s.output()
        r = httpx.post(s.url + "/v1/execute", json={"code": "print('open')"}, timeout=60)
        assert r.status_code == 200 and r.json()["stdout"] == "open\n"
        # A page whose DNS name was rebound to 127.0.0.1 still sends its own Host: refused.
        rebound = httpx.post(s.url + "/v1/execute", json={"code": "print(1)"}, headers={"Host": "evil.example:80"})
        assert rebound.status_code == 403 and rebound.json()["error"]["type"] == "forbidden"
        mcp = httpx.post(s.url + "/mcp", json={}, headers={"Host": "evil.example"})
        assert mcp.status_code == 403
        for probe in ("/metrics", "/v1/health", "/v1/image"):  # no key needed, but the Host check still holds
            assert httpx.get(s.url + probe, headers={"Host": "evil.example"}).status_code == 403, probe
            assert httpx.get(s.url + probe, timeout=60).status_code == 200, probe
    finally:
        assert s.stop() in (0, -signal.SIGTERM)


def test_keys_from_the_environment(tmp_path):
    s = Server(tmp_path, "--slots", "1", "--no-mcp", keys=(), env={"SANDBOX_API_KEYS": "env-key-aaaaaaaaaaaaaaaa, env-key-bbbbbbbbbbbbbbbb"})
    try:
        assert "2 API key(s)" in s.output()
        assert httpx.post(s.url + "/v1/execute", json={"code": "1"}, timeout=60).status_code == 401
        r = httpx.post(s.url + "/v1/execute", json={"code": "print(2)"}, timeout=60,
                       headers={"Authorization": "Bearer env-key-bbbbbbbbbbbbbbbb"})
        assert r.json()["stdout"] == "2\n"
        assert "env-key" not in s.output()
    finally:
        s.stop()


def test_an_engine_that_cannot_start_is_a_clear_message():
    p = subprocess.run([sys.executable, "-m", "sandbox", "serve", "--port", "0", "--image", "no-such-image"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 3
    assert "image 'no-such-image' is not built" in p.stderr and "Traceback" not in p.stderr
