"""NDJSON streaming of /v1/execute: stdout and stderr lines as the program writes them, in order,
then the result; errors before the run are still HTTP statuses."""

from __future__ import annotations

import json
import time

NDJSON = {"Accept": "application/x-ndjson"}
CODE = """import sys, time
print('one', flush=True)
print('two', file=sys.stderr, flush=True)
time.sleep(5)
print('three')
"""


def test_lines_arrive_as_written_then_the_result(client):
    events = []
    with client.stream("POST", "/v1/execute", json={"code": CODE}, headers=NDJSON) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        for line in r.iter_lines():
            events.append((time.monotonic(), json.loads(line)))
    kinds = [e["type"] for _, e in events]
    assert kinds[-1] == "result" and kinds.count("result") == 1
    text = {k: "".join(e.get("text", "") for _, e in events if e["type"] == k) for k in ("stdout", "stderr")}
    assert text == {"stdout": "one\nthree\n", "stderr": "two\n"}
    first_one = next(t for t, e in events if e["type"] == "stdout")
    result_at, result = events[-1]
    assert result_at - first_one > 1.0  # 'one' came while the program still slept, not with the result
    assert result["outcome"] == "ok" and result["stdout"] == "one\nthree\n" and result["stderr"] == "two\n"
    # 'one' (all of it: print may write the line and its newline as two chunks) before 'two'.
    chunks = [(e["type"], e["text"]) for _, e in events if e["type"] in ("stdout", "stderr")]
    first_err = next(i for i, (kind, _) in enumerate(chunks) if kind == "stderr")
    assert "".join(t for kind, t in chunks[:first_err] if kind == "stdout") == "one\n"


def test_a_failed_run_streams_its_outcome(client):
    with client.stream("POST", "/v1/execute", json={"code": "print('x', flush=True)\n1/0"}, headers=NDJSON) as r:
        lines = [json.loads(x) for x in r.iter_lines()]
    assert r.status_code == 200 and lines[-1]["type"] == "result"
    assert lines[-1]["outcome"] == "error" and lines[-1]["error"]["type"] == "ZeroDivisionError"


def test_bad_input_is_still_an_http_error_when_streaming(client):
    r = client.post("/v1/execute", json={"code": "print(1)", "files": {"../x": ""}}, headers=NDJSON)
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_input"
