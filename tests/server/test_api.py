"""The stateless HTTP API against a real server: every endpoint, every error status, auth."""

from __future__ import annotations

import base64
import json

import httpx

from .conftest import KEY, OTHER_KEY


def test_execute_returns_the_result_document(client):
    r = client.post("/v1/execute", json={"code": "import sys\nprint(open('in.txt').read().upper())\n"
                                                 "print('err', file=sys.stderr)\nprint(input())",
                                         "files": {"in.txt": base64.b64encode(b"hello").decode()},
                                         "stdin": "typed\n"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert set(doc) == {"outcome", "stdout", "stderr", "stdout_truncated", "stderr_truncated", "error",
                        "exit_code", "images", "files", "usage", "outputs", "outputs_dropped"}
    assert doc["outcome"] == "ok"
    assert doc["stdout"] == "HELLO\ntyped\n"
    assert doc["stderr"] == "err\n"


def test_figures_and_written_files_come_back_base64(client):
    code = ("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\n"
            "open('out.csv', 'w').write('a,b\\n1,2\\n')")
    doc = client.post("/v1/execute", json={"code": code}).json()
    assert doc["outcome"] == "ok", doc
    assert base64.b64decode(doc["images"][0]["data_base64"]).startswith(b"\x89PNG")
    assert [f["path"] for f in doc["files"]] == ["out.csv"]
    assert base64.b64decode(doc["files"][0]["data_base64"]) == b"a,b\n1,2\n"


def test_every_outcome_is_a_200(client):
    err = client.post("/v1/execute", json={"code": "1/0"})
    assert err.status_code == 200 and err.json()["outcome"] == "error"
    assert err.json()["error"]["type"] == "ZeroDivisionError"
    slow = client.post("/v1/execute", json={"code": "import time\nprint('before', flush=True)\ntime.sleep(30)",
                                            "timeout": 1})
    assert slow.status_code == 200 and slow.json()["outcome"] == "timeout"
    assert slow.json()["stdout"] == "before\n"


def test_limits_apply_per_call(client):
    r = client.post("/v1/execute", json={"code": "x = bytearray(400 << 20); print(len(x))",
                                         "limits": {"memory_bytes": 128 << 20}})
    assert r.status_code == 200 and r.json()["outcome"] == "memory_limit", r.json()["outcome"]


def test_bad_json_is_400(client):
    r = client.post("/v1/execute", content=b'{"code": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "bad_request"


def test_not_json_content_type_is_415(client):
    r = client.post("/v1/execute", content=b"code=print(1)", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["type"] == "unsupported_media_type"


def test_invalid_requests_are_422_with_an_error_document(client):
    cases = [
        {"files": {}},                                                    # no code
        {"code": "print(1)", "files": {"../escape": "aGk="}},             # bad name (engine check)
        {"code": "print(1)", "files": {"/etc/passwd": "aGk="}},
        {"code": "print(1)", "files": {"a.txt": "not base64!"}},          # bad base64
        {"code": "print(1)", "timeout": -1},
        {"code": "print(1)", "limits": {"no_such_limit": 1}},
        {"code": "print(1)", "unknown_field": 1},
        {"code": "print(1)", "filename": "../main.py"},
        {"code": "print(1)", "timeout": 3600},                           # over the server's policy
        {"code": "print(1)", "limits": {"memory_bytes": 64 << 30}},
        {"code": "print(1)", "limits": {"profile": 1, "replace": 2}},      # Limits' methods are no limits (was a 500)
    ]
    for body in cases:
        r = client.post("/v1/execute", json=body)
        assert r.status_code == 422, (body, r.status_code, r.text)
        err = r.json()["error"]
        assert err["type"] == "invalid_input" and err["message"], body
        assert "Traceback" not in r.text


def test_lone_surrogate_is_422_not_500(client):
    r = client.post("/v1/execute", content=b'{"code": "print(1) \\ud800"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text


def test_body_over_the_cap_is_413_before_it_is_read(client):
    big = base64.b64encode(b"x" * (2 << 20)).decode()  # the test server caps bodies at 1 MiB
    r = client.post("/v1/execute", json={"code": "print(1)", "files": {"big.bin": big}})
    assert r.status_code == 413 and r.json()["error"]["type"] == "too_large"

    def chunks():  # no Content-Length: the cap applies while reading
        yield b'{"code": "print(1)", "stdin": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'
    r = client.post("/v1/execute", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "too_large"


def test_unknown_route_and_method(client):
    r = client.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = client.get("/v1/execute")
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"


def test_health_image_and_openapi(anon, client):
    h = anon.get("/v1/health")
    assert h.status_code == 200
    doc = h.json()
    assert doc["ready"] is True and doc["pool"]["size"] == 1 and doc["sessions"] == 0
    img = client.get("/v1/image").json()
    assert "numpy" in {p.lower() for p in img["packages"]}
    spec = anon.get("/openapi.json").json()
    assert {"/v1/execute", "/v1/health", "/v1/image", "/metrics"} <= set(spec["paths"])


def test_metrics_count_runs_by_outcome(client, anon):
    client.post("/v1/execute", json={"code": "raise SystemExit(3)"})
    text = anon.get("/metrics").text
    assert 'sandbox_runs_total{outcome="error"}' in text
    assert "sandbox_run_seconds_bucket" in text
    for gauge in ("sandbox_queue_depth", "sandbox_slots_live", "sandbox_sessions_open"):
        assert gauge in text
    live = [ln for ln in text.splitlines() if ln.startswith("sandbox_slots_live ")]
    assert float(live[0].split()[1]) == 1.0


def test_auth(server, anon):
    body = {"code": "print(1)"}
    missing = anon.post("/v1/execute", json=body)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = anon.post("/v1/execute", json=body, headers={"Authorization": "Bearer " + KEY[:-1] + "x"})
    assert wrong.status_code == 401
    basic = anon.post("/v1/execute", json=body, headers={"Authorization": "Basic " + KEY})
    assert basic.status_code == 401
    assert anon.get("/v1/image").status_code == 401
    for key in (KEY, OTHER_KEY):
        ok = anon.post("/v1/execute", json=body, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200 and ok.json()["stdout"] == "1\n"
    log = server.output()
    assert KEY not in log and OTHER_KEY not in log and KEY[:-1] not in log
    assert "POST /v1/execute" in log  # the access log is on; it just never shows a key


def test_errors_never_leak_a_stack_trace(client):
    r = client.post("/v1/execute", content=json.dumps({"code": 5}), headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "Traceback" not in r.text


def test_client_against_the_server_needs_nothing_but_http(server):
    r = httpx.post(server.url + "/v1/execute", json={"code": "print(6*7)"},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.json()["stdout"] == "42\n"


def test_execute_takes_env_and_fetch(client):
    r = client.post("/v1/execute", json={"code": "import os\nprint(os.environ['X'])\nopen('/tmp/o.txt', 'w').write('t')",
                                         "env": {"X": "1"}, "fetch": ["/tmp/o.txt"]})
    assert r.status_code == 200 and r.json()["stdout"] == "1\n"
    assert [(f["path"], base64.b64decode(f["data_base64"])) for f in r.json()["files"]] == [("/tmp/o.txt", b"t")]
    for bad, word in (({"env": {"HOME": "/x"}}, "belongs to the sandbox"), ({"env": {"X": 1}}, "string"),
                      ({"fetch": ["../x"]}, "under /tmp/"), ({"fetch": "/tmp/o.txt"}, "list")):
        r = client.post("/v1/execute", json={"code": "1", **bad})
        assert r.status_code == 422 and word in json.dumps(r.json()), (bad, r.text)
