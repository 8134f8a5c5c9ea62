"""`POST /v1/execute`: one stateless run. Every outcome of the run is a 200 with the result document;
only a request that could not run is an error (see errors.py).

With `Accept: application/x-ndjson` the answer is one JSON object per line: `{"type": "stdout", "text"}`
and `{"type": "stderr", "text"}` as the program writes, then `{"type": "result", ...the result...}`.
"""

from __future__ import annotations

import base64
import dataclasses
import binascii
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import SandboxError
from ..limits import Limits
from ..results import Output, Result
from .deps import SandboxDep, require_key
from .errors import ApiError


class ExecuteRequest(BaseModel):
    """What to run. Files are base64; the result is exactly `Result.to_dict()`."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Python source to run")
    files: dict[str, str] = Field(default_factory=dict,
                                  description="input files placed in the working directory: relative name -> base64 bytes")
    stdin: str | None = Field(default=None, description="text given to the program as standard input")
    timeout: float | None = Field(default=None, gt=0, le=86400, description="wall clock limit in seconds")
    limits: dict[str, int | float] | None = Field(
        default=None, description="per-run limits over the server's defaults, e.g. {\"memory_bytes\": 268435456}")
    filename: str = Field(default="main.py", description="the name the code runs under (in tracebacks)")

    @field_validator("code", "stdin", "filename")
    @classmethod
    def _encodable(cls, v: str | None) -> str | None:
        if v is not None:
            _check_text(v)
        return v

    @field_validator("files")
    @classmethod
    def _names_encodable(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            _check_text(name)
        return v


def _check_text(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None


def decode_files(files: dict[str, str]) -> dict[str, bytes]:
    """Base64 values to bytes; a bad one is a 422 that names the file."""
    out = {}
    for name, data in files.items():
        try:
            out[name] = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "invalid_input", f"input file {name!r} is not valid base64") from None
    return out


def check_ceiling(ceiling: Limits, timeout: float | None, limits: dict[str, int | float] | None) -> None:
    """A caller over the network may tighten limits, never loosen them past the server's policy
    (policies/default.toml): 422 otherwise. Unknown names are left for the engine to refuse."""
    asked = dict(limits or {})
    if timeout is not None:
        asked["timeout_seconds"] = timeout
    known = {f.name for f in dataclasses.fields(ceiling)}  # not getattr: Limits has methods too
    for name, value in asked.items():
        top = getattr(ceiling, name) if name in known else None
        if top is not None and isinstance(value, (int, float)) and value > top:
            raise ApiError(422, "invalid_input", f"limit {name} may be at most {top:g} on this server, not {value:g}")


NDJSON = "application/x-ndjson"


def wants_stream(request: Request) -> bool:
    return NDJSON in request.headers.get("accept", "")


def event_line(event: Output | Result) -> bytes:
    doc = {"type": "result", **event.to_dict()} if isinstance(event, Result) else \
        {"type": event.stream, "text": event.text}
    return json.dumps(doc).encode() + b"\n"


async def ndjson(events: AsyncIterator[Output | Result]) -> StreamingResponse:
    """Stream the events as JSON lines. The first event is awaited before answering, so an engine
    error before the run starts (queue full, bad input) is still an HTTP error status."""
    first = await anext(events)

    async def body() -> AsyncIterator[bytes]:
        event = first
        try:
            while True:
                yield event_line(event)
                if isinstance(event, Result):
                    return
                event = await anext(events)
        except SandboxError as exc:  # after the 200 was sent: say so in the stream
            yield json.dumps({"type": "error", "error": {"type": type(exc).__name__, "message": str(exc)}}).encode()
        finally:
            await events.aclose()

    return StreamingResponse(body(), media_type=NDJSON, headers={"X-Accel-Buffering": "no"})


router = APIRouter(prefix="/v1", tags=["runs"], dependencies=[Depends(require_key)])

RESULT_EXAMPLE = {"outcome": "ok", "stdout": "2\n", "stderr": "", "stdout_truncated": False, "stderr_truncated": False,
                  "error": None, "exit_code": 0, "images": [], "files": [],
                  "usage": {"wall_ms": 1.2, "cpu_ms": 0.9, "peak_memory_bytes": 0}}


@router.post("/execute", response_class=Response, summary="Run code once; the result document (every outcome is a 200)",
             responses={200: {"content": {"application/json": {"example": RESULT_EXAMPLE},
                                          NDJSON: {"example": '{"type": "stdout", "text": "2\\n"}'}}},
                        401: {"description": "no or wrong API key"}, 413: {"description": "body over the cap"},
                        422: {"description": "invalid request"}, 429: {"description": "queue full; see Retry-After"},
                        503: {"description": "engine unavailable"}})
async def execute(body: ExecuteRequest, sb: SandboxDep, request: Request) -> Response:
    check_ceiling(request.app.state.ceiling, body.timeout, body.limits)
    files = decode_files(body.files)
    if wants_stream(request):
        return await ndjson(sb.stream(body.code, files, stdin=body.stdin, timeout=body.timeout, limits=body.limits,
                                      filename=body.filename))
    result = await sb.run(body.code, files, stdin=body.stdin, timeout=body.timeout, limits=body.limits,
                          filename=body.filename)
    return Response(result.to_json(), media_type="application/json")
