"""E2B's code interpreter: `POST /execute` answered as its newline-delimited JSON stream.

Request `{code, context_id?, language?, env_vars?}`: the cell is dedented (as E2B's kernel does),
`env_vars` hold for this execution (names the engine allows: not PATH, HOME, PYTHON*...). The
stream, one JSON object a line, in order:
`{"type": "stdout", "text", "timestamp"}`, `{"type": "stderr", ...}`, one
`{"type": "result", "text", "html", "markdown", "png", "data", "chart", ...}` per rich output
(display()) and per figure (its PNG and chart data), the value of the last expression as a
`result` with `"is_main_result": true` (as a notebook cell shows it),
`{"type": "error", "name", "value", "traceback"}` when the run failed, then
`{"type": "number_of_executions", "execution_count"}` and `{"type": "end_of_execution"}`.

stdout and stderr events are sent as the program writes (the engine's live output, chunk by chunk),
then the results and the end. A run stopped by a limit is an `error` event named after the limit (`TimeoutError`,
`CPUTimeLimitExceeded`, `MemoryLimitExceeded`, `PolicyViolation`, `Crashed`, `SandboxError`).
"""

from __future__ import annotations

import ast
import datetime
import json
import textwrap
from typing import Any

from ..results import CHART_MIME, TABLE_MIME, DisplayOutput, Outcome, Result
from .request import PeerRequestError, RunRequest, b64
from .text import outcome_summary

MAIN_RESULT_FILE = ".e2b-main-result.txt"   # where the rewritten cell leaves repr() of its last expression
MAIN_RESULT_VAR = "__e2b_main_result__"
MAX_MAIN_RESULT_CHARS = 100_000
# The cell is parsed (twice) only up to this size: `ast` takes up to ~1,000x its source in memory on
# pathological code, so a longer cell runs as it is, without its last expression's value.
TRANSFORM_MAX_BYTES = 64 << 10

_ERROR_NAMES = {Outcome.TIMEOUT: "TimeoutError", Outcome.CPU_LIMIT: "CPUTimeLimitExceeded",
                Outcome.MEMORY_LIMIT: "MemoryLimitExceeded", Outcome.POLICY_VIOLATION: "PolicyViolation",
                Outcome.CRASHED: "Crashed", Outcome.SANDBOX_ERROR: "SandboxError"}


def from_e2b(payload: Any) -> tuple[RunRequest, str | None]:
    """The run an `/execute` body asks for (the cell rewritten to keep its last expression's value),
    and its context id."""
    if not isinstance(payload, dict) or not isinstance(payload.get("code"), str):
        raise PeerRequestError("the body must be a JSON object with a string field \"code\"")
    language = payload.get("language")
    if language not in (None, "python", "python3"):
        raise PeerRequestError(f"language {language!r} is not supported: this sandbox runs Python only")
    env = payload.get("env_vars") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise PeerRequestError("env_vars must be an object of name -> string")
    context_id = payload.get("context_id")
    if context_id is not None and not isinstance(context_id, str):
        raise PeerRequestError("context_id must be a string")
    # The engine itself returns the last expression's value (Result.main). A cell indented as a
    # whole runs dedented, as IPython (E2B's kernel) runs it.
    code = payload["code"]
    first = next((line for line in code.splitlines() if line.strip()), "")
    return RunRequest(code=textwrap.dedent(code) if first[:1] in (" ", "\t") else code, env=env), context_id


def keep_last_expression(code: str) -> str:
    """The cell with its final expression statement assigned and its repr() written to
    MAIN_RESULT_FILE, as a notebook shows `Out[n]`. Line numbers are unchanged (the assignment is
    made in place and the writer appended after the last line); code that does not parse (too deep
    included), is over TRANSFORM_MAX_BYTES, or does not end in an expression, is returned as it is.
    CPU-bound: a server calls it off its event loop, after the code's size check."""
    if len(code) > TRANSFORM_MAX_BYTES or len(code.encode("utf-8", "surrogatepass")) > TRANSFORM_MAX_BYTES:
        return code
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return code
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code
    node = tree.body[-1]  # the statement: its span includes any parentheses around the expression
    lines = [ln.encode() for ln in code.split("\n")]  # ast's column offsets count UTF-8 bytes
    start, end = node.lineno - 1, node.end_lineno - 1
    opener = f"{MAIN_RESULT_VAR} = (".encode()
    if start == end:
        ln = lines[start]
        lines[start] = ln[:node.col_offset] + opener + ln[node.col_offset:node.end_col_offset] + b")" + \
            ln[node.end_col_offset:]
    else:
        lines[start] = lines[start][:node.col_offset] + opener + lines[start][node.col_offset:]
        lines[end] = lines[end][:node.end_col_offset] + b")" + lines[end][node.end_col_offset:]
    writer = (f"if {MAIN_RESULT_VAR} is not None:\n"
              f"    with open({MAIN_RESULT_FILE!r}, 'w') as __e2b_f__:\n"
              f"        __e2b_f__.write(repr({MAIN_RESULT_VAR})[:{MAX_MAIN_RESULT_CHARS}])")
    rewritten = b"\n".join(lines).decode() + "\n" + writer + "\n"
    try:
        ast.parse(rewritten)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return code
    return rewritten


# Run once in each context's fresh interpreter, as E2B's kernel runs its startup scripts: a PIL image
# saved to a path is shown as a result too (E2B's template does the same). Leaves no names behind.
KERNEL_SETUP = """\
def __e2b_kernel_setup__():
    import os
    try:
        from PIL import Image
    except ImportError:
        return
    save = Image.Image.save
    if getattr(save, "_shows_saved_image", False):
        return
    def shown_save(self, fp, format=None, **params):
        if isinstance(fp, (str, os.PathLike)):
            display(self)
        return save(self, fp, format, **params)
    shown_save._shows_saved_image = True
    Image.Image.save = shown_save
__e2b_kernel_setup__()
del __e2b_kernel_setup__
"""


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def output_event(stream: str, text: str, timestamp: str | None = None) -> dict[str, Any]:
    """A live `stdout` or `stderr` event."""
    return _event(stream, text=text, timestamp=timestamp or _now())


def to_e2b_events(result: Result, execution_count: int = 1, timestamp: str | None = None,
                  logs: bool = True) -> list[dict[str, Any]]:
    """The events of one execution, in stream order; `logs=False` leaves out stdout and stderr
    (already sent live)."""
    ts = timestamp or _now()
    events: list[dict[str, Any]] = []
    if logs and result.stdout:
        events.append(output_event("stdout", result.stdout, ts))
    if logs and result.stderr:
        events.append(output_event("stderr", result.stderr, ts))
    events += [e2b_result(o) for o in result.outputs if not o.main]
    for image in result.images:
        events.append(_event("result", png=b64(image.data), text=f"<Figure size {image.width}x{image.height}>",
                             chart=image.chart, is_main_result=False))
    main = result.main
    if main is not None and result.outcome is Outcome.OK:
        events.append(e2b_result(main))
    if result.outcome is Outcome.ERROR:
        err = result.error
        if err is not None:
            events.append(_event("error", name=err.type, value=err.message, traceback=err.traceback))
        else:
            events.append(_event("error", name="SystemExit", value=str(result.exit_code),
                                 traceback=outcome_summary(result)))
    elif result.outcome is not Outcome.OK:
        events.append(_event("error", name=_ERROR_NAMES[result.outcome], value=outcome_summary(result), traceback=""))
    events.append(_event("number_of_executions", execution_count=execution_count))
    events.append(_event("end_of_execution"))
    return events


_E2B_FIELDS = (("text/plain", "text"), ("text/html", "html"), ("text/markdown", "markdown"), ("image/svg+xml", "svg"),
               ("text/latex", "latex"), ("application/json", "json"), (TABLE_MIME, "data"), (CHART_MIME, "chart"))


def e2b_result(output: DisplayOutput) -> dict[str, Any]:
    """A rich output as E2B's `result` event: its own fields for the formats E2B knows (`text`
    without the quotes of a string's repr, as E2B's server strips them; a
    DataFrame's columns as `data`, chart data as `chart`), the rest (a vega-lite spec, a plotly
    figure) under `extra` by MIME type."""
    fields: dict[str, Any] = {e2b_name: output.data[mime] for mime, e2b_name in _E2B_FIELDS if mime in output.data}
    text = fields.get("text")
    if not text:
        fields.pop("text", None)  # a raw bundle without text: E2B's result has no `text` either
    elif len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        fields["text"] = text[1:-1]  # a string's repr as E2B's server gives it: 'bar' is bar
    for mime, name in (("image/png", "png"), ("image/jpeg", "jpeg")):
        if mime in output.data:
            fields[name] = b64(output.data[mime])
    known = {m for m, _ in _E2B_FIELDS} | {"image/png", "image/jpeg"}
    extra = {m: v for m, v in output.data.items() if m not in known}
    if extra:
        fields["extra"] = extra
    return _event("result", **fields, is_main_result=output.main)


def written_files(result: Result) -> dict[str, bytes]:
    """The files the run wrote, without the main-result carrier (for a context's workspace)."""
    return {f.path: f.data for f in result.files if f.path != MAIN_RESULT_FILE}


def ndjson(events: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def context_document(context_id: str, language: str = "python", cwd: str = "/work") -> dict[str, str]:
    """A context as `POST /contexts` and `GET /contexts` return it."""
    return {"id": context_id, "language": language, "cwd": cwd}
