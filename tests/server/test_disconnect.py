"""A client that disconnects has its run killed: plain JSON and NDJSON, stateless and in a session, before
and after the first output. The proof is the one-slot server itself: the slot is idle again within a
couple of seconds (the program would sleep for 30), the next run is served at once, and
`sandbox_runs_abandoned_total` counts the kill."""

from __future__ import annotations

import json
import socket
import time
import urllib.parse

import httpx
import pytest

from .conftest import KEY

SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(30)\nprint('never')"
SILENT = "import time\ntime.sleep(30)"
KILLED_WITHIN = 5.0   # seconds from the disconnect to an idle slot (the program sleeps 30)


def _send(url: str, path: str, body: dict, accept: str = "application/json") -> socket.socket:
    """A raw HTTP request whose connection the test closes when it likes."""
    parts = urllib.parse.urlsplit(url)
    data = json.dumps(body).encode()
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {KEY}\r\n"
                  f"Content-Type: application/json\r\nAccept: {accept}\r\nContent-Length: {len(data)}\r\n\r\n"
                  ).encode() + data)
    return sock


def _read_until(sock: socket.socket, marker: bytes, timeout: float = 30) -> bytes:
    sock.settimeout(timeout)
    seen = b""
    while marker not in seen:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before {marker!r}: {seen!r}"
        seen += chunk
    return seen


def _pool(url: str) -> dict:
    return httpx.get(url + "/v1/health", timeout=10).json()["pool"]


def _wait(predicate, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout} s")


def _abandoned(url: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("sandbox_runs_abandoned_total "):
            return float(line.split()[1])
    raise AssertionError("no sandbox_runs_abandoned_total")


def _served_at_once(client) -> None:
    t0 = time.monotonic()
    r = client.post("/v1/execute", json={"code": "print('next')"})
    assert r.json()["stdout"] == "next\n"
    assert time.monotonic() - t0 < 3.0


@pytest.mark.parametrize("accept,code,marker", [
    ("application/json", SILENT, None),                   # plain JSON: nothing sent yet
    ("application/x-ndjson", SILENT, None),               # streamed, before the first event
    ("application/x-ndjson", SLEEPER, b'"started'),       # streamed, after output was sent
], ids=["json", "ndjson-before-output", "ndjson-after-output"])
def test_stateless_run_is_killed_when_its_client_leaves(server, client, accept, code, marker):
    _wait(lambda: _pool(server.url)["busy"] == 0, 60, "idle pool before the test")
    count = _abandoned(server.url)
    sock = _send(server.url, "/v1/execute", {"code": code}, accept)
    if marker is not None:
        _read_until(sock, marker)
    _wait(lambda: _pool(server.url)["busy"] == 1, 30, "the run started")
    time.sleep(0.5)
    sock.close()
    took = _wait(lambda: _pool(server.url)["busy"] == 0, KILLED_WITHIN, "slot idle again after the disconnect")
    print(f"\nslot idle {took:.2f} s after the client left ({accept})")
    _served_at_once(client)
    _wait(lambda: _abandoned(server.url) == count + 1, 5, "the kill counted")


def _sessions(url: str) -> int:
    return httpx.get(url + "/v1/health", timeout=10).json()["sessions"]


@pytest.mark.parametrize("accept", ["application/json", "application/x-ndjson"])
def test_session_call_is_killed_when_its_client_leaves(server, client, accept):
    before = _sessions(server.url)
    sid = client.post("/v1/sessions", json={"ttl": 120}).json()["session_id"]
    try:
        assert client.post(f"/v1/sessions/{sid}/execute", json={"code": "x = 1"}).json()["outcome"] == "ok"
        assert _sessions(server.url) == before + 1
        count = _abandoned(server.url)
        sock = _send(server.url, f"/v1/sessions/{sid}/execute", {"code": SLEEPER}, accept)
        if accept == "application/x-ndjson":
            _read_until(sock, b'"started')
        else:
            time.sleep(1.5)
        sock.close()
        # The engine ends a session whose call is cancelled; the session is gone from the engine only once
        # its call has returned, that is once the sleeping program was killed (it would sleep 30 s).
        took = _wait(lambda: _sessions(server.url) == before, KILLED_WITHIN, "the session's call killed")
        print(f"\nsession call killed and session ended {took:.2f} s after the client left ({accept})")
        r = client.post(f"/v1/sessions/{sid}/execute", json={"code": "print(x)"})
        assert r.status_code == 410 and "disconnected" in r.json()["error"]["message"], r.text
        _wait(lambda: _abandoned(server.url) == count + 1, 5, "the kill counted")
        _served_at_once(client)
    finally:
        client.delete(f"/v1/sessions/{sid}")
