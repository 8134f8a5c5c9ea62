"""OpenAI's Responses API: one execution as a `code_interpreter_call` output item.

`outputs` holds one `{"type": "logs", "logs"}` entry (stdout, stderr and the failure summary, the
way OpenAI's own interpreter reports logs) when there is any text, then one
`{"type": "image", "url": "data:image/png;base64,..."}` per figure (we host no file URLs: a data URL
is self-contained).

`status`: `completed` when the code ran to its end (ok, and error: an exception is the code's own
result, its traceback is in the logs, as with OpenAI's interpreter); `incomplete` when a time limit
stopped it (timeout, cpu_limit); `failed` when it was killed or the sandbox failed (memory_limit,
policy_violation, crashed, sandbox_error).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from ..results import Outcome, Result
from .text import run_report


STATUS: dict[Outcome, str] = {
    Outcome.OK: "completed", Outcome.ERROR: "completed",
    Outcome.TIMEOUT: "incomplete", Outcome.CPU_LIMIT: "incomplete",
    Outcome.MEMORY_LIMIT: "failed", Outcome.POLICY_VIOLATION: "failed",
    Outcome.CRASHED: "failed", Outcome.SANDBOX_ERROR: "failed",
}


def _default_id(code: str) -> str:
    return "ci_" + hashlib.sha256(code.encode()).hexdigest()[:24]


def to_openai_item(result: Result, code: str, id: str | None = None,
                   container_id: str = "sandbox") -> dict[str, Any]:
    """The Responses `code_interpreter_call` item for one execution of `code`."""
    outputs: list[dict[str, Any]] = []
    logs = run_report(result)
    if logs:
        outputs.append({"type": "logs", "logs": logs})
    for image in result.images:
        outputs.append({"type": "image",
                        "url": f"data:{image.mime_type};base64,{base64.b64encode(image.data).decode()}"})
    for output in result.outputs:
        # The Responses API knows two kinds of output: a rich output's text (its markdown table or
        # its text) is a `logs` entry, its image an `image`.
        outputs.append({"type": "logs", "logs": output.markdown or output.text})
        for mime in ("image/png", "image/jpeg"):
            if mime in output.data:
                outputs.append({"type": "image",
                                "url": f"data:{mime};base64,{base64.b64encode(output.data[mime]).decode()}"})
    return {
        "type": "code_interpreter_call",
        "id": id or _default_id(code),
        "code": code,
        "container_id": container_id,
        "status": STATUS[result.outcome],
        "outputs": outputs,
    }


def from_openai_item(item: dict[str, Any]) -> str:
    """The code of a `code_interpreter_call` item."""
    if item.get("type") != "code_interpreter_call" or not isinstance(item.get("code"), str):
        raise ValueError("not a code_interpreter_call item with code")
    return item["code"]
