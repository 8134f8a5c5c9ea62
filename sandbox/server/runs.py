"""`POST /v1/execute`: one stateless run. Every outcome of the run is a 200 with the result document;
only a request that could not run is an error (see errors.py).

With `Accept: application/x-ndjson` the answer is one JSON object per line: `{"type": "stdout", "text"}`
and `{"type": "stderr", "text"}` as the program writes, one `{"type": "output", "main", "truncated",
"data"}` per rich output as it is displayed (display() and, last, the expression's value; a session
call's come when it ends), then `{"type": "result", ...the result...}`.
Output is coalesced (`coalesce`): what arrives within COALESCE_SECONDS, up to COALESCE_BYTES, is one
line per stream, in order, so a program writing a byte at a time costs a few lines a second, not one
line per byte.

A client that disconnects has its run killed: a plain call races the run against the connection's
`http.disconnect` (`until_answered`), a streamed one closes the engine's event stream when Starlette
stops sending (`ndjson`). Session routes (sessions.py) use the same two helpers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import anyio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.types import Receive, Scope, Send

from ..errors import SandboxError
from ..limits import Limits
from ..results import DisplayOutput, Output, Result
from .deps import OwnerDep, SandboxDep, require_key
from .errors import ApiError

log = logging.getLogger("sandbox.server")
T = TypeVar("T")


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
    packages: list[str] | None = Field(
        default=None, max_length=64,
        description="packages from the server's allow-list for this run, e.g. [\"humanize\", \"polars>=1\"]: "
                    "downloaded on the host on first use, cached after; the run itself has no network")
    env: dict[str, str] | None = Field(
        default=None, description="environment variables for this run (never the sandbox's own: PATH, HOME, LANG, "
                                  "LC_*, PYTHON*, LD_*...; at most 64, 64 KiB in all)")
    fetch: list[str] = Field(default_factory=list,
                             description="files under /tmp/ (the run's own; /mnt/... is /tmp/mnt/...) to return "
                                         "with the outputs, e.g. [\"/tmp/out.csv\"]")

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

    @field_validator("env")
    @classmethod
    def _env_encodable(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for name, value in (v or {}).items():
            _check_text(name)
            _check_text(value)
        return v

    @field_validator("fetch")
    @classmethod
    def _paths_encodable(cls, v: list[str]) -> list[str]:
        for path in v:
            _check_text(path)
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
            raise ApiError(422, "invalid_input", f"limit {name} may be at most {_num(top)} on this server, not {_num(value)}")


def _num(value: int | float) -> str:
    """1073741824, not 1.07374e+09 (a byte count must read as one); 2.5 as 2.5."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


NDJSON = "application/x-ndjson"
COALESCE_SECONDS = 0.025     # live output arriving within this of the first chunk goes out as one line
COALESCE_BYTES = 64 << 10    # ... unless it reaches this many characters first


def wants_stream(request: Request) -> bool:
    return NDJSON in request.headers.get("accept", "")


def event_line(event: Output | DisplayOutput | Result, shown: int = 0) -> bytes:
    """An event's JSON line: a rich output's is `{"type": "output", ...DisplayOutput.to_dict()}`; a
    result's lines are first one of those per rich output beyond the `shown` ones already sent live
    (a session call's come only here), then the result itself."""
    if isinstance(event, DisplayOutput):
        return json.dumps({"type": "output", **event.to_dict()}).encode() + b"\n"
    if isinstance(event, Result):
        lines = [json.dumps({"type": "output", **o.to_dict()}).encode() + b"\n" for o in event.outputs[shown:]]
        return b"".join(lines) + json.dumps({"type": "result", **event.to_dict()}).encode() + b"\n"
    return json.dumps({"type": event.stream, "text": event.text}).encode() + b"\n"


async def coalesce(events: AsyncIterator[Output | Result], window: float = COALESCE_SECONDS,
                   most: int = COALESCE_BYTES) -> AsyncIterator[Output | Result]:
    """`events` with consecutive Output chunks of one stream that arrive within `window` of the first
    joined into one (at most about `most` characters), order and text exact. A task reads `events` into
    a queue so the window can be timed without cancelling the engine's own iterator; closing this one
    stops that task and closes `events` (which kills a run that has not ended)."""
    queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in events:
                await queue.put(("event", event))
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
            await queue.put(("error", exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        await queue.put(("end", None))

    def unwrap(item: tuple[str, object]) -> Output | Result | None:
        kind, value = item
        if kind == "error":
            raise value  # type: ignore[misc]
        return value if kind == "event" else None  # type: ignore[return-value]

    task = asyncio.ensure_future(pump())
    loop = asyncio.get_running_loop()
    try:
        held: Output | Result | None = unwrap(await queue.get())
        while held is not None:
            if not isinstance(held, Output):
                yield held
                held = unwrap(await queue.get())
                continue
            parts, size, deadline, nxt = [held.text], len(held.text), loop.time() + window, None
            while size < most:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                nxt = unwrap(item)
                if isinstance(nxt, Output) and nxt.stream == held.stream:
                    parts.append(nxt.text)
                    size += len(nxt.text)
                    nxt = None
                    continue
                break
            yield Output(held.stream, "".join(parts)) if len(parts) > 1 else held
            held = nxt if nxt is not None else unwrap(await queue.get())
    finally:
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait((task,))
        await _close(events)


class Abandoned(Exception):
    """The client went away before its answer: the run was killed, nobody is left to answer."""


async def _until_disconnect(request: Request) -> None:
    # The body is read already, so the next message is the disconnect (uvicorn sends it only then).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_answered(request: Request, run: Awaitable[T], on_abandon: Callable[[], None] | None = None) -> T:
    """Await `run` unless the client disconnects first: then cancel it (the engine kills the run in its
    jail), wait for that, and raise Abandoned."""
    task = asyncio.ensure_future(run)
    watch = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))  # the kill is done when the engine's call returns
    if task.cancelled():
        if on_abandon is not None:
            on_abandon()
        route = getattr(request.scope.get("route"), "path", "?")  # the template: a /k/KEY/ path carries a key
        log.info("%s %s: the client disconnected; its run was killed", request.method, route)
        raise Abandoned
    return task.result()


def abandoned_response() -> Response:
    return Response(status_code=499)  # never sent: there is no client to send it to


async def _close(events: AsyncIterator[object]) -> None:
    """Close an async generator even inside a cancelled scope (a disconnect cancels the response)."""
    with anyio.CancelScope(shield=True):
        await events.aclose()  # type: ignore[attr-defined]


class _NDJSONResponse(StreamingResponse):
    """A stream whose body and the engine's events under it are always closed, so the run is killed
    whether the client left while the body waited for output, while it was being sent, or before the
    body started (`async for` alone would leave a generator suspended until garbage collection)."""

    def __init__(self, body: AsyncIterator[bytes], events: AsyncIterator[Output | Result]) -> None:
        super().__init__(body, media_type=NDJSON, headers={"X-Accel-Buffering": "no"})
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await _close(self.body_iterator)
            await _close(self.events)


async def ndjson(request: Request, events: AsyncIterator[Output | Result],
                 on_abandon: Callable[[], None] | None = None) -> Response:
    """Stream the events as JSON lines. The first event is awaited before answering, so an engine
    error before the run starts (queue full, bad input) is still an HTTP error status; a client that
    leaves meanwhile has its run killed, as it does later on (then `events` is closed). Output is
    coalesced (see `coalesce`)."""
    events = coalesce(events)
    try:
        first = await until_answered(request, anext(events), on_abandon)
    except Abandoned:
        await _close(events)
        return abandoned_response()
    except BaseException:
        await _close(events)
        raise

    async def body() -> AsyncIterator[bytes]:
        event: Output | DisplayOutput | Result = first
        finished = False
        shown = 0
        try:
            while True:
                yield event_line(event, shown)
                shown += isinstance(event, DisplayOutput)
                if isinstance(event, Result):
                    finished = True
                    return
                event = await anext(events)
        except SandboxError as exc:  # after the 200 was sent: say so in the stream
            finished = True
            yield json.dumps({"type": "error", "error": {"type": type(exc).__name__, "message": str(exc)}}).encode()
        finally:
            await _close(events)
            if not finished:
                if on_abandon is not None:
                    on_abandon()
                log.info("a streamed run ended before its result (the client left); the run was killed")

    return _NDJSONResponse(body(), events)


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
async def execute(body: ExecuteRequest, sb: SandboxDep, owner: OwnerDep, request: Request) -> Response:
    check_ceiling(request.app.state.ceiling, body.timeout, body.limits)
    files = decode_files(body.files)
    abandon = request.app.state.metrics.abandoned.inc
    sessions = request.app.state.sessions   # the key's places in the engine are kept there
    if wants_stream(request):
        return await ndjson(request, sessions.engine_stream(owner, sb.stream(
            body.code, files, stdin=body.stdin, timeout=body.timeout, limits=body.limits, filename=body.filename,
            env=body.env, fetch=body.fetch, packages=body.packages)), abandon)
    try:
        result = await until_answered(request, sessions.engine_call(owner, lambda: sb.run(
            body.code, files, stdin=body.stdin, timeout=body.timeout, limits=body.limits, filename=body.filename,
            env=body.env, fetch=body.fetch, packages=body.packages)), abandon)
    except Abandoned:
        return abandoned_response()
    return Response(result.to_json(), media_type="application/json")
