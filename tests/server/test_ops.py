"""Running the service in production: keys reloaded on SIGHUP, JSON logs, TLS, the plain-HTTP refusal.

Each test starts a real `sandbox serve` (one slot) and talks to it over real sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time

import httpx

from .conftest import KEY, OTHER_KEY, Server

NEW_KEY = "new-key-0a1b2c3d4e5f6789ab"
WRONG_KEY = "wrong-key-ffffeeeeddddcccc"


def _serve_refusal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sandbox", "serve", "--port", "0", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "SANDBOX_API_KEYS": KEY})


def test_plain_http_beyond_loopback_is_refused_unless_said_explicitly():
    p = _serve_refusal("--host", "0.0.0.0")
    assert p.returncode == 2, p.stderr
    assert "plain HTTP" in p.stderr and "--ssl-certfile" in p.stderr and "--insecure-http" in p.stderr
    assert "Traceback" not in p.stderr and KEY not in p.stderr
    p = _serve_refusal("--host", "0.0.0.0", "--ssl-certfile", "/nonexistent.pem")
    assert p.returncode == 2 and "go together" in p.stderr
    p = _serve_refusal("--ssl-certfile", "/nonexistent.pem", "--ssl-keyfile", "/nonexistent.key")
    assert p.returncode == 2 and "cannot load" in p.stderr and "Traceback" not in p.stderr


def _json_lines(text: str) -> list[dict]:
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))  # every JSON-looking line parses
    return events


def test_sighup_reloads_keys_and_json_logs_one_event_per_request(tmp_path):
    s = Server(tmp_path, "--slots", "1", "--host", "0.0.0.0", "--insecure-http", "--log-format", "json")
    try:
        url = s.url.replace("0.0.0.0", "127.0.0.1")
        a = {"Authorization": f"Bearer {KEY}"}
        b = {"Authorization": f"Bearer {OTHER_KEY}"}
        sid = httpx.post(url + "/v1/sessions", json={}, headers=a, timeout=120).json()["session_id"]
        assert httpx.post(f"{url}/v1/sessions/{sid}/execute", json={"code": "x = 41"}, headers=a, timeout=120).json()["outcome"] == "ok"
        assert httpx.post(url + "/v1/execute", json={"code": "print(1)"}, headers=b, timeout=120).status_code == 200
        # rotate: OTHER_KEY out, NEW_KEY in, KEY unchanged
        (tmp_path / "keys").write_text(f"# rotated\n{KEY}\n{NEW_KEY}\n")
        os.kill(s.proc.pid, signal.SIGHUP)
        t0 = time.monotonic()
        while httpx.post(url + "/v1/execute", json={"code": "1"}, headers=b, timeout=60).status_code != 401:
            assert time.monotonic() - t0 < 1.0, "the removed key still works a second after SIGHUP"
            time.sleep(0.05)
        r = httpx.post(url + "/v1/execute", json={"code": "print(6 * 7)"}, headers={"Authorization": f"Bearer {NEW_KEY}"},
                       timeout=120)
        assert r.status_code == 200 and r.json()["stdout"] == "42\n"
        # the unchanged key's session survived, with its state
        r = httpx.post(f"{url}/v1/sessions/{sid}/execute", json={"code": "print(x + 1)"}, headers=a, timeout=120)
        assert r.status_code == 200 and r.json()["stdout"] == "42\n"
        # a bad key file changes nothing
        (tmp_path / "keys").write_text("# nothing\n")
        os.kill(s.proc.pid, signal.SIGHUP)
        time.sleep(0.5)
        assert httpx.post(url + "/v1/execute", json={"code": "1"}, headers=a, timeout=120).status_code == 200
        # a wrong key in the path and a timeout, for the log
        assert httpx.post(f"{url}/k/{WRONG_KEY}/run_code", json={"code": "1", "language": "python"}).status_code == 401
        r = httpx.post(url + "/v1/execute", json={"code": "while True: pass", "timeout": 1}, headers=a, timeout=120)
        assert r.json()["outcome"] == "timeout"
        httpx.delete(f"{url}/v1/sessions/{sid}", headers=a, timeout=60)
        time.sleep(0.5)
    finally:
        s.stop()
    out = s.log_path.read_text()
    for secret in (KEY, OTHER_KEY, NEW_KEY, WRONG_KEY):
        assert secret not in out, "a key reached the log"
    events = _json_lines(out)
    requests = [e for e in events if e["event"] == "request"]
    assert all({"ts", "level", "logger", "method", "route", "key_id", "status", "outcome", "wall_ms", "cpu_ms",
                "bytes_in", "bytes_out"} <= set(e) for e in requests)
    executes = [e for e in requests if e["route"] == "/v1/execute"]
    assert any(e["status"] == 401 and e["key_id"] is None for e in executes)
    ok = [e for e in executes if e["status"] == 200 and e["outcome"] == "ok"]
    assert ok and all(e["key_id"].startswith("key-") and e["bytes_in"] > 0 and e["bytes_out"] > 0 for e in ok)
    timeout = [e for e in executes if e["outcome"] == "timeout"]
    assert len(timeout) == 1 and timeout[0]["cpu_ms"] > 100 and timeout[0]["wall_ms"] >= 1000
    assert any(e["route"] == "/v1/sessions/{session_id}/execute" and e["outcome"] == "ok" for e in requests)
    assert any(e["route"] == "/k/***/run_code" and e["status"] == 401 for e in requests)
    named = {e["event"] for e in events}
    assert {"keys_reloaded", "keys_unchanged", "session_ended"} <= named, named
    ended = [e for e in events if e["event"] == "session_ended"]
    assert any("closed" in e["reason"] for e in ended)
    # every line of the server's output is JSON, but for the serving line the CLI prints itself
    other = [ln for ln in out.splitlines() if ln and not ln.startswith("{") and not ln.startswith("sandbox: ")]
    assert other == []


def test_tls_serves_https(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    s = Server(tmp_path, "--slots", "1", "--no-mcp", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    try:
        assert s.url.startswith("https://127.0.0.1:")
        serving = next(ln for ln in s.output().splitlines() if "serving on" in ln)
        assert "/mcp" not in serving  # --no-mcp: no MCP URL announced
        r = httpx.post(s.url + "/v1/execute", json={"code": "print('tls')"}, headers={"Authorization": f"Bearer {KEY}"},
                       verify=ssl.create_default_context(cafile=str(cert)), timeout=120)
        assert r.status_code == 200 and r.json()["stdout"] == "tls\n"
        plain = s.url.replace("https://", "http://")
        try:
            refused = httpx.get(plain + "/v1/health", timeout=10).status_code != 200
        except httpx.HTTPError:
            refused = True
        assert refused
    finally:
        s.stop()


def test_an_empty_or_comment_only_key_file_is_refused(tmp_path):
    for text in ("", "# only a comment\n\n   \n"):
        keys = tmp_path / "keys"
        keys.write_text(text)
        p = subprocess.run([sys.executable, "-m", "sandbox", "serve", "--port", "0", "--api-key-file", str(keys)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and "holds no API key" in p.stderr and "Traceback" not in p.stderr


def test_a_refused_limit_prints_bytes_as_a_whole_number(client):
    r = client.post("/v1/execute", json={"code": "1", "limits": {"memory_bytes": 1 << 40}})
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "e+" not in message and str(1 << 40) in message, message
    assert re.search(r"at most \d+ on this server", message), message


def test_run_url_without_a_key_names_sandbox_api_key(server):
    env = {k: v for k, v in os.environ.items() if k not in ("SANDBOX_API_KEY", "SANDBOX_URL")}
    p = subprocess.run([sys.executable, "-m", "sandbox", "run", "--url", server.url, "-c", "print(1)"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode != 0 and "SANDBOX_API_KEY" in p.stderr and "Traceback" not in p.stderr
