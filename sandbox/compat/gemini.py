"""Gemini's code-execution format: the REST JSON parts of one execution.

`to_gemini_parts(result, code)` returns, in order, an `executableCode` part
`{language: "PYTHON", code}`, a `codeExecutionResult` part `{outcome, output}` and one `inlineData`
part `{mimeType: "image/png", data: base64}` per figure, as Gemini's own code-execution tool does.

Outcome mapping (Gemini has three outcomes; `output` is what a model reads):

| ours                                                               | Gemini                      | `output`                                         |
|--------------------------------------------------------------------|-----------------------------|--------------------------------------------------|
| ok                                                                 | OUTCOME_OK                  | stdout, then stderr if any (warnings)            |
| error                                                              | OUTCOME_FAILED              | stdout, stderr, then the traceback               |
| timeout, cpu_limit                                                 | OUTCOME_DEADLINE_EXCEEDED   | output so far, then which limit stopped the run  |
| memory_limit, policy_violation, crashed, sandbox_error             | OUTCOME_FAILED              | output so far, then one line saying what happened|
"""

from __future__ import annotations

import base64
from typing import Any

from ..results import Outcome, Result
from .text import run_report

OUTCOME_OK = "OUTCOME_OK"
OUTCOME_FAILED = "OUTCOME_FAILED"
OUTCOME_DEADLINE_EXCEEDED = "OUTCOME_DEADLINE_EXCEEDED"

OUTCOMES: dict[Outcome, str] = {
    Outcome.OK: OUTCOME_OK,
    Outcome.ERROR: OUTCOME_FAILED,
    Outcome.TIMEOUT: OUTCOME_DEADLINE_EXCEEDED,
    Outcome.CPU_LIMIT: OUTCOME_DEADLINE_EXCEEDED,
    Outcome.MEMORY_LIMIT: OUTCOME_FAILED,
    Outcome.POLICY_VIOLATION: OUTCOME_FAILED,
    Outcome.CRASHED: OUTCOME_FAILED,
    Outcome.SANDBOX_ERROR: OUTCOME_FAILED,
}


def executable_code_part(code: str, id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"language": "PYTHON", "code": code}
    if id is not None:
        body["id"] = id
    return {"executableCode": body}


def result_parts(result: Result, id: str | None = None) -> list[dict[str, Any]]:
    """The `codeExecutionResult` part, one `inlineData` part per figure, then per rich output a
    `text` part (its markdown table or its text) and an `inlineData` part for its image."""
    body: dict[str, Any] = {"outcome": OUTCOMES[result.outcome], "output": run_report(result)}
    if id is not None:
        body["id"] = id
    parts: list[dict[str, Any]] = [{"codeExecutionResult": body}]
    for image in result.images:
        parts.append({"inlineData": {"mimeType": image.mime_type, "data": base64.b64encode(image.data).decode()}})
    for output in result.outputs:
        # A table as its markdown, anything else as its text; its image inline.
        parts.append({"text": output.markdown or output.text})
        for mime in ("image/png", "image/jpeg"):
            if mime in output.data:
                parts.append({"inlineData": {"mimeType": mime, "data": base64.b64encode(output.data[mime]).decode()}})
    return parts


def to_gemini_parts(result: Result, code: str, id: str | None = None) -> list[dict[str, Any]]:
    """The REST JSON parts of one execution, in Gemini's order (see the module docstring)."""
    return [executable_code_part(code, id)] + result_parts(result, id)


def from_gemini_part(part: dict[str, Any]) -> str:
    """The code of an `executableCode` part (REST camelCase or SDK snake_case keys)."""
    body = part.get("executableCode") or part.get("executable_code")
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        raise ValueError("not an executableCode part with a code string")
    language = body.get("language", "PYTHON")
    if language not in ("PYTHON", "LANGUAGE_UNSPECIFIED"):
        raise ValueError(f"only PYTHON code runs here, not {language!r}")
    return body["code"]
