"""Fuzz the API from its own OpenAPI document with schemathesis: no 5xx and no hang, whatever the body.
Every operation in the document is fuzzed (peer routes included once they are there), a bounded number
of cases each."""

from __future__ import annotations

import collections
import os
import itertools

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from .conftest import KEY

CASES_PER_OPERATION = int(os.environ.get("SANDBOX_FUZZ_CASES", "60"))


def test_no_server_errors_and_no_hang(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    tried: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    for found, mode in itertools.product(list(schema.get_all_operations()), GenerationMode):
        operation = found.ok()

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=CASES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def fuzz(case):
            response = case.call_and_validate(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"},
                                              timeout=60, checks=[not_a_server_error])
            tried[f"{operation.label} ({mode.value})"] += 1
            statuses[response.status_code] += 1

        try:
            fuzz()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing can be invalid about a GET without parameters
    print(f"\nschemathesis: {sum(tried.values())} cases; {dict(tried)}; statuses {dict(statuses)}")
    assert {"POST /v1/execute (positive)", "POST /v1/execute (negative)", "GET /v1/health (positive)",
            "GET /v1/image (positive)", "GET /metrics (positive)"} <= set(tried)
    assert 200 in statuses and 422 in statuses
