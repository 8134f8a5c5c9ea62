"""/v1/sessions against a real server: every route and error status, state carrying over, files up and
down, ownership (another key's session is a 404, like an unknown one), TTL, sessions a call ended,
streaming in a session, the per-key cap, and the open-session counts in /v1/health and /metrics."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from sandbox import SessionLimitError
from sandbox.remote import RemoteSandbox

from .conftest import KEY, OTHER_KEY, Server

NDJSON = {"Accept": "application/x-ndjson"}
POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture()
def other(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {OTHER_KEY}"}, timeout=120) as c:
        yield c


@pytest.fixture()
def session(client):
    r = client.post("/v1/sessions", json={"ttl": 120})
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    yield sid
    client.delete(f"/v1/sessions/{sid}")


def run(client, sid, code, **kw):
    r = client.post(f"/v1/sessions/{sid}/execute", json={"code": code, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_create_then_state_carries_over(client):
    t0 = time.time()
    r = client.post("/v1/sessions", json={"ttl": 90})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert set(doc) == {"session_id", "expires_at", "ttl"}
    sid = doc["session_id"]
    assert len(sid) >= 16 and doc["ttl"] == 90
    assert t0 + 85 < doc["expires_at"] < time.time() + 95        # epoch seconds
    try:
        assert run(client, sid, "x = 41\nimport json")["outcome"] == "ok"
        second = run(client, sid, "print(x + 1, json.dumps([1]))")
        assert second["outcome"] == "ok" and second["stdout"] == "42 [1]\n", second
        got = client.get(f"/v1/sessions/{sid}")
        assert got.status_code == 200 and got.json()["session_id"] == sid
        assert got.json()["expires_at"] >= doc["expires_at"]       # the calls moved it
        listed = client.get("/v1/sessions").json()["sessions"]
        assert sid in [s["session_id"] for s in listed]
        # a stateless run does not see the session's state
        assert client.post("/v1/execute", json={"code": "print(x)"}).json()["outcome"] == "error"
    finally:
        assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    gone = client.post(f"/v1/sessions/{sid}/execute", json={"code": "print(x)"})
    assert gone.status_code == 410 and gone.json()["error"]["type"] == "session_closed", gone.text
    assert client.get(f"/v1/sessions/{sid}").status_code == 410
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204   # closing twice is fine
    assert sid not in [s["session_id"] for s in client.get("/v1/sessions").json()["sessions"]]


def test_create_without_a_body_takes_the_policys_ttl(client):
    r = client.post("/v1/sessions")
    assert r.status_code == 201, r.text
    assert r.json()["ttl"] == 600
    assert client.delete(f"/v1/sessions/{r.json()['session_id']}").status_code == 204


def test_files_up_down_and_delete(client, session):
    sid = session
    payload = bytes(range(256)) * 10
    put = client.put(f"/v1/sessions/{sid}/files/data/in.bin", content=payload,
                     headers={"Content-Type": "application/octet-stream"})
    assert put.status_code == 200, put.text
    assert put.json() == {"path": "data/in.bin", "size": len(payload), "mime_type": "application/octet-stream"}
    out = run(client, sid, "b = open('data/in.bin', 'rb').read()\nprint(len(b), b[255])\n"
                           "open('out.csv', 'w').write('a,b\\n1,2\\n')")
    assert out["stdout"] == "2560 255\n", out
    assert [f["path"] for f in out["files"]] == ["out.csv"]    # the call's written files, as /v1/execute
    files = {f["path"]: f for f in client.get(f"/v1/sessions/{sid}/files").json()["files"]}
    assert files["data/in.bin"]["size"] == len(payload)
    assert files["out.csv"]["size"] == 8 and files["out.csv"]["mime_type"] == "text/csv"
    got = client.get(f"/v1/sessions/{sid}/files/out.csv")
    assert got.status_code == 200 and got.content == b"a,b\n1,2\n"
    assert got.headers["content-type"] == "application/octet-stream"   # never rendered on this origin
    assert got.headers["content-disposition"].startswith("attachment")
    assert client.get(f"/v1/sessions/{sid}/files/data/in.bin").content == payload
    assert client.delete(f"/v1/sessions/{sid}/files/out.csv").status_code == 204
    missing = client.get(f"/v1/sessions/{sid}/files/out.csv")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "no_such_file"
    assert client.delete(f"/v1/sessions/{sid}/files/out.csv").status_code == 404
    assert run(client, sid, "import os; print(os.path.exists('out.csv'))")["stdout"] == "False\n"
    # input files given with an execute stay for the calls after it
    run(client, sid, "pass", files={"given.txt": base64.b64encode(b"kept").decode()})
    assert run(client, sid, "print(open('given.txt').read())")["stdout"] == "kept\n"


def test_file_errors(client, session):
    sid = session
    for bad in ("../escape.txt", "a/../../b"):
        r = client.put(f"/v1/sessions/{sid}/files/{bad}", content=b"x")
        assert r.status_code in (404, 422), (bad, r.status_code, r.text)  # 404 if the URL normalised it away
        assert "Traceback" not in r.text
    r = client.put(f"/v1/sessions/{sid}/files/%2E%2E/escape.txt", content=b"x")
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_input", r.text
    big = client.put(f"/v1/sessions/{sid}/files/big.bin", content=b"x" * (3 << 19))   # the test server caps at 1 MiB
    assert big.status_code == 413 and big.json()["error"]["type"] == "too_large"

    def chunks():  # no Content-Length: the cap applies while reading
        for _ in range(24):
            yield b"y" * 65536
    r = client.put(f"/v1/sessions/{sid}/files/big.bin", content=chunks())
    assert r.status_code == 413
    assert client.get(f"/v1/sessions/{sid}/files/nope.txt").json()["error"]["type"] == "no_such_file"


def test_another_keys_session_is_a_404_like_an_unknown_one(client, other, session):
    sid = session
    run(client, sid, "secret = 'mine'")
    client.put(f"/v1/sessions/{sid}/files/s.txt", content=b"mine")
    unknown = other.get("/v1/sessions/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert unknown.status_code == 404
    attempts = [other.get(f"/v1/sessions/{sid}"),
                other.post(f"/v1/sessions/{sid}/execute", json={"code": "print(secret)"}),
                other.post(f"/v1/sessions/{sid}/execute", json={"code": "print(secret)"}, headers=NDJSON),
                other.get(f"/v1/sessions/{sid}/files"),
                other.get(f"/v1/sessions/{sid}/files/s.txt"),
                other.put(f"/v1/sessions/{sid}/files/s.txt", content=b"theirs"),
                other.delete(f"/v1/sessions/{sid}/files/s.txt"),
                other.delete(f"/v1/sessions/{sid}")]
    for r in attempts:
        assert r.status_code == 404, (r.request.method, r.request.url, r.status_code, r.text)
        assert r.json() == unknown.json()
    assert sid not in [s["session_id"] for s in other.get("/v1/sessions").json()["sessions"]]
    # untouched by all of that
    assert run(client, sid, "print(secret, open('s.txt').read())")["stdout"] == "mine mine\n"


def test_unknown_and_malformed_ids(client):
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/files"), ("GET", "/files/a.txt")):
        r = client.request(method, f"/v1/sessions/no-such-session{path}")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found", (method, path, r.text)
    r = client.post("/v1/sessions/no-such-session/execute", json={"code": "print(1)"})
    assert r.status_code == 404
    assert client.get("/v1/sessions/" + "a" * 129).status_code == 422
    assert client.get("/v1/sessions/bad.id!").status_code == 422


def test_create_errors(client, anon):
    for body in ({"ttl": -1}, {"ttl": 0}, {"ttl": "soon"}, {"ttl": 10 * 86400}, {"limits": {"bogus": 1}},
                 {"limits": {"memory_bytes": 64 << 30}}, {"unknown": 1}):
        r = client.post("/v1/sessions", json=body)
        assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_input", (body, r.text)
    assert client.post("/v1/sessions", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
    assert anon.post("/v1/sessions", json={}).status_code == 401
    assert anon.get("/v1/sessions").status_code == 401


def test_execute_errors_in_a_session(client, session):
    sid = session
    r = client.post(f"/v1/sessions/{sid}/execute", json={"code": "print(1)", "files": {"../x": ""}})
    assert r.status_code == 422
    r = client.post(f"/v1/sessions/{sid}/execute", json={"code": "print(1)", "timeout": 3600})
    assert r.status_code == 422
    assert run(client, sid, "print('still fine')")["stdout"] == "still fine\n"


def test_streaming_in_a_session(client, session):
    sid = session
    run(client, sid, "import sys, time\nname = 'session'")
    code = "print('one', flush=True)\nprint('two', file=sys.stderr, flush=True)\ntime.sleep(3)\nprint(name)"
    events = []
    with client.stream("POST", f"/v1/sessions/{sid}/execute", json={"code": code}, headers=NDJSON) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        for line in r.iter_lines():
            events.append((time.monotonic(), json.loads(line)))
    assert [e["type"] for _, e in events][-1] == "result"
    first_at = next(t for t, e in events if e["type"] == "stdout")
    assert events[-1][0] - first_at > 1.0                      # 'one' came while the program slept
    assert "".join(e.get("text", "") for _, e in events if e["type"] == "stdout") == "one\nsession\n"
    assert events[-1][1]["stdout"] == "one\nsession\n" and events[-1][1]["outcome"] == "ok"
    # an ended session is a 410 when streaming too
    client.delete(f"/v1/sessions/{sid}")
    r = client.post(f"/v1/sessions/{sid}/execute", json={"code": "print(1)"}, headers=NDJSON)
    assert r.status_code == 410 and r.json()["error"]["type"] == "session_closed"


def test_ttl_expiry(client):
    sid = client.post("/v1/sessions", json={"ttl": 1}).json()["session_id"]
    assert run(client, sid, "x = 1")["outcome"] == "ok"
    time.sleep(3)
    r = client.post(f"/v1/sessions/{sid}/execute", json={"code": "print(x)"})
    assert r.status_code == 410 and r.json()["error"]["type"] == "session_closed", r.text
    assert client.get(f"/v1/sessions/{sid}").status_code == 410
    assert sid not in [s["session_id"] for s in client.get("/v1/sessions").json()["sessions"]]


def test_a_call_that_hits_the_memory_limit_ends_the_session_with_its_reason(client):
    sid = client.post("/v1/sessions", json={"limits": {"memory_bytes": 128 << 20}}).json()["session_id"]
    assert run(client, sid, "keep = bytearray(16 << 20)")["outcome"] == "ok"
    oom = run(client, sid, "more = bytearray(400 << 20)")
    assert oom["outcome"] == "memory_limit", oom["outcome"]
    r = client.post(f"/v1/sessions/{sid}/execute", json={"code": "print(len(keep))"})
    assert r.status_code == 410, r.text
    err = r.json()["error"]
    assert err["type"] == "session_closed" and "memory" in err["message"], err


def test_health_and_metrics_count_open_sessions(client, anon):
    before = anon.get("/v1/health").json()["sessions"]
    ids = [client.post("/v1/sessions", json={"ttl": 60}).json()["session_id"] for _ in range(2)]
    try:
        assert anon.get("/v1/health").json()["sessions"] == before + 2
        gauge = [ln for ln in anon.get("/metrics").text.splitlines() if ln.startswith("sandbox_sessions_open ")]
        assert float(gauge[0].split()[1]) == before + 2
    finally:
        for sid in ids:
            client.delete(f"/v1/sessions/{sid}")
    assert anon.get("/v1/health").json()["sessions"] == before
    runs = anon.get("/metrics").text
    assert 'sandbox_runs_total{outcome="ok"}' in runs


def test_session_caps_are_429_with_retry_after(tmp_path):
    """Two caps: --max-sessions-per-key (the server's, per key) and max_sessions (the engine's, from the
    policy; 3 here, through a policy directory of the test's own)."""
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(POLICIES / "seccomp.toml", policies)
    default = (POLICIES / "default.toml").read_text()
    assert "max_sessions = " in default
    (policies / "default.toml").write_text(re.sub(r"(?m)^max_sessions = \d+", "max_sessions = 3", default))
    s = Server(tmp_path, "--slots", "1", "--max-sessions-per-key", "2", "--no-mcp",
               env={"SANDBOX_POLICY_DIR": str(policies)})
    try:
        mine = httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        theirs = httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {OTHER_KEY}"}, timeout=60)
        ids = [mine.post("/v1/sessions", json={"ttl": 30}).json()["session_id"] for _ in range(2)]
        refused = mine.post("/v1/sessions", json={"ttl": 30})
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "session_limit", refused.text
        assert "this key" in refused.json()["error"]["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 30
        with RemoteSandbox(s.url, api_key=KEY) as remote, pytest.raises(SessionLimitError):
            remote.session()                                                # the client's exception for it
        assert theirs.post("/v1/sessions", json={"ttl": 20}).status_code == 201   # another key is not affected...
        full = theirs.post("/v1/sessions", json={})                               # ...until the engine is full
        assert full.status_code == 429 and full.json()["error"]["type"] == "session_limit", full.text
        assert "max_sessions" in full.json()["error"]["message"]
        assert 1 <= int(full.headers["retry-after"]) <= 30
        mine.delete(f"/v1/sessions/{ids[0]}")
        assert mine.post("/v1/sessions", json={}).status_code == 201       # a freed place is usable at once
    finally:
        s.stop()


def test_closing_a_session_during_a_call_kills_the_call(client, server):
    sid = client.post("/v1/sessions", json={"ttl": 60}).json()["session_id"]
    run(client, sid, "x = 1")
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        t0 = time.monotonic()
        call = ex.submit(client.post, f"/v1/sessions/{sid}/execute", json={"code": "import time\ntime.sleep(30)"})
        time.sleep(1.5)
        assert client.delete(f"/v1/sessions/{sid}").status_code == 204
        r = call.result()
        assert time.monotonic() - t0 < 10
    assert r.status_code == 410 and r.json()["error"]["type"] == "session_closed", r.text
    assert "killed" in r.json()["error"]["message"]
    assert client.get(f"/v1/sessions/{sid}").status_code == 410
