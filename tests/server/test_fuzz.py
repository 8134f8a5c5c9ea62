"""Fuzz the API from its own OpenAPI document with schemathesis: no 5xx and no hang, whatever the body.
Every operation in the document is fuzzed (peer routes included once they are there), a bounded number
of cases each. The session routes get a live session's id in their positive cases (a random id only
ever reaches the 404), and the sessions the fuzzer opens are closed as it goes."""

from __future__ import annotations

import collections
import itertools
import os

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from .conftest import KEY

CASES_PER_OPERATION = int(os.environ.get("SANDBOX_FUZZ_CASES", "60"))


class LiveSession:
    """The id of an open session of KEY, reopened when a case closed or ended it."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        self.id = ""

    def get(self) -> str:
        if not self.id or self.http.get(f"/v1/sessions/{self.id}").status_code != 200:
            r = self.http.post("/v1/sessions", json={"ttl": 600})
            assert r.status_code == 201, r.text
            self.id = r.json()["session_id"]
        return self.id

    def close_all(self) -> int:
        ids = [s["session_id"] for s in self.http.get("/v1/sessions").json()["sessions"]]
        for sid in ids:
            self.http.delete(f"/v1/sessions/{sid}")
        return len(ids)


def test_no_server_errors_and_no_hang(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    tried: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    live = LiveSession(server.url)
    for found, mode in itertools.product(list(schema.get_all_operations()), GenerationMode):
        operation = found.ok()

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=CASES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def fuzz(case):
            if mode is GenerationMode.POSITIVE and "session_id" in (case.path_parameters or {}):
                case.path_parameters["session_id"] = live.get()
            response = case.call_and_validate(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"},
                                              timeout=60, checks=[not_a_server_error])
            tried[f"{operation.label} ({mode.value})"] += 1
            statuses[response.status_code] += 1
            if case.method == "POST" and case.path == "/v1/sessions" and response.status_code == 201:
                live.http.delete(f"/v1/sessions/{response.json()['session_id']}")

        try:
            fuzz()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing can be invalid about a GET without parameters
    left = live.close_all()
    print(f"\nschemathesis: {sum(tried.values())} cases; {dict(tried)}; statuses {dict(statuses)}; "
          f"{left} session(s) left open, closed")
    assert {"POST /v1/execute (positive)", "POST /v1/execute (negative)", "GET /v1/health (positive)",
            "GET /v1/image (positive)", "GET /metrics (positive)"} <= set(tried)
    session_ops = {"POST /v1/sessions", "GET /v1/sessions", "GET /v1/sessions/{session_id}",
                   "DELETE /v1/sessions/{session_id}", "POST /v1/sessions/{session_id}/execute",
                   "GET /v1/sessions/{session_id}/files", "PUT /v1/sessions/{session_id}/files/{path}",
                   "GET /v1/sessions/{session_id}/files/{path}", "DELETE /v1/sessions/{session_id}/files/{path}"}
    assert {f"{op} (positive)" for op in session_ops} <= set(tried)
    assert 200 in statuses and 201 in statuses and 204 in statuses and 422 in statuses
