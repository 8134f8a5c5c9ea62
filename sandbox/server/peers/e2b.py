"""E2B's code interpreter: `POST /e2b/execute` (NDJSON stream) and `/e2b/contexts`, see
sandbox.compat.e2b. The E2B SDK sends no auth header to this API: point its `sandbox_url` at
`http://HOST/k/KEY/e2b` (the key in the path); `/e2b/...` itself takes the bearer header.

Every context is an engine session owned by the key (the engine's ttl and caps, and the key's
quotas of sandbox.server.sessions): variables, imports and files carry over from cell to cell. A
key's default context (no `context_id`, or "python") is one such session, made on its first cell;
`POST /contexts` makes more (past the key's `--peer-spaces-per-key`, its least recently used one
goes), `restart` replaces a context's session (same id, fresh interpreter), `DELETE` closes it. A context whose session ended (idle past its ttl, or a cell that hit a limit)
gets a fresh one on its next cell, as a kernel restarts after a crash.
"""

# No `from __future__ import annotations` here: the per-router `Owner` alias is local to _routes()
# and FastAPI must resolve it when it reads the handlers' signatures.
import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ...compat import e2b
from ...compat.request import PeerRequestError
from ...errors import InvalidInputError, RunCancelledError, SandboxError, SessionClosedError
from ...results import Output, Result
from ..deps import SandboxDep, require_key, require_path_key
from ..errors import ApiError
from ..runs import coalesce
from .transform import check_code_size, off_loop

TAGS = ["peer: E2B code interpreter"]
DEFAULT = "default"
KEEPALIVE_SECONDS = 2.0    # a {"type": "keepalive"} line while a cell is silent, as E2B's server sends


class E2BExecute(BaseModel):
    """E2B's execution request (documented here; sandbox.compat.e2b reads it)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{"code": "x = 2\nx * 21"}]})

    code: str = Field(description="the cell; the value of its last expression comes back as the main result")
    context_id: str | None = Field(default=None, description="a context from POST /contexts; the key's default one without")
    language: str | None = Field(default=None, description="Python only")
    env_vars: dict[str, str] | None = Field(default=None, description="environment variables for this execution "
                                            "(not the sandbox's own: PATH, HOME, LANG, PYTHON*, LD_*...)")


class E2BContext(BaseModel):
    model_config = ConfigDict(extra="allow")

    language: str | None = Field(default=None, description="Python only")
    cwd: str | None = Field(default=None, description="reported back; runs start in the sandbox's working directory")


@dataclass
class _Context:
    language: str = "python"
    cwd: str = "/work"        # where runs start (reported back as given, if given)
    session: str | None = None      # the engine session's id, made on the first cell
    runs: int = 0
    used: float = field(default_factory=time.monotonic)


class Contexts:
    """Per key: its contexts (id -> _Context), the default one included once used. The engine keeps
    the state; this knows which session backs which context."""

    def __init__(self) -> None:
        self._by_owner: dict[str, dict[str, _Context]] = {}

    def of(self, owner: str) -> dict[str, _Context]:
        return self._by_owner.setdefault(owner, {})

    async def session(self, request: Request, sb, owner: str, context_id: str | None) -> tuple[_Context, Any]:
        """The context's open session (made, or made again if it ended); ApiError 404 for an unknown id."""
        sessions = request.app.state.sessions
        mine = self.of(owner)
        cid = DEFAULT if context_id in (None, "", DEFAULT, "python", "python3") else context_id
        ctx = mine.get(cid)
        if ctx is None:
            if cid != DEFAULT:
                raise ApiError(404, "not_found", f"no context {context_id!r}")
            ctx = mine[DEFAULT] = _Context()
        ctx.used = time.monotonic()
        session = None
        if ctx.session is not None:
            try:
                session = sessions.get(owner, ctx.session)
            except ApiError:
                ctx.session = None  # it ended: a fresh interpreter, as a kernel that restarts
        if session is None:
            session = await sessions.create(sb, owner)
            ctx.session = session.id
            try:  # E2B's kernel startup (compat.e2b.KERNEL_SETUP); a failure leaves a plain interpreter
                await sessions.run(session, e2b.KERNEL_SETUP, None, owner=owner)
            except (SandboxError, ApiError):
                pass
        if cid == DEFAULT:  # made on the caller's behalf: it may give way at the key's session cap

            def forget() -> None:
                ctx.session = None

            sessions.implicit(session.id, forget)
        return ctx, session

    async def close(self, request: Request, owner: str, ctx: _Context) -> None:
        if ctx.session is not None:
            sid, ctx.session = ctx.session, None
            try:
                await request.app.state.sessions.close(owner, sid)
            except ApiError:
                pass  # ended long ago and forgotten: nothing left to close


def get_contexts(request: Request) -> Contexts:
    contexts = getattr(request.app.state, "e2b_contexts", None)
    if contexts is None:
        contexts = request.app.state.e2b_contexts = Contexts()
    return contexts


ContextsDep = Annotated[Contexts, Depends(get_contexts)]


async def by_line(events: AsyncIterator[Output | Result]) -> AsyncIterator[Output | Result]:
    """`events` with each stream's text as one event per line, a last partial line held until its
    newline or the end: one print() is one E2B event, as its kernel sends them."""
    held = {"stdout": "", "stderr": ""}
    async for event in events:
        if isinstance(event, Output):
            lines = (held[event.stream] + event.text).split("\n")
            held[event.stream] = lines.pop()
            for line in lines:
                yield Output(event.stream, line + "\n")
            continue
        for stream, rest in held.items():
            if rest:
                yield Output(stream, rest)
        held = {"stdout": "", "stderr": ""}
        yield event


async def ticking(events: AsyncIterator[Output | Result], every: float) -> AsyncIterator[Output | Result | None]:
    """`events`, with None whenever `every` seconds pass without one. Closing this closes `events`."""
    pending = asyncio.ensure_future(anext(events))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield None
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            yield event
            pending = asyncio.ensure_future(anext(events))
    finally:
        if not pending.done():
            pending.cancel()
            try:
                await pending
            except BaseException:  # noqa: BLE001 - the cancellation, or what the run raised meanwhile
                pass
        await events.aclose()


def _routes(router: APIRouter, owner_dep) -> None:
    Owner = Annotated[str, Depends(owner_dep)]

    @router.post("/execute", summary="E2B: run a cell in a context; newline-delimited JSON events",
                 responses={200: {"content": {"application/x-ndjson": {}}}})
    async def execute(body: E2BExecute, sb: SandboxDep, owner: Owner, contexts: ContextsDep,
                      request: Request) -> Response:
        check_code_size(request, body.code)  # before the cell is parsed, which happens off the event loop
        try:
            req, context_id = await off_loop(request, e2b.from_e2b, body.model_dump())
        except PeerRequestError as exc:
            raise ApiError(400, "invalid_input", str(exc)) from None
        sessions = request.app.state.sessions
        for attempt in range(2):
            ctx, session = await contexts.session(request, sb, owner, context_id)
            events = ticking(by_line(coalesce(sessions.stream(session, req.code, None, owner=owner,
                                                              env=req.env or None))), KEEPALIVE_SECONDS)
            try:
                first = await anext(events)  # a refused run (bad input, full queue) fails here, before the 200
                break
            except InvalidInputError as exc:
                await events.aclose()
                raise ApiError(400, "invalid_input", str(exc)) from None
            except (SessionClosedError, RunCancelledError):
                # The context's session ended while this cell waited for its turn (the cell before it
                # was killed): the cell runs in a fresh one, as after a kernel restart.
                await events.aclose()
                ctx.session = None
                if attempt:
                    raise ApiError(503, "unavailable", "the context's interpreter ended twice; retry") from None
            except BaseException:
                await events.aclose()
                raise

        async def lines() -> AsyncIterator[bytes]:
            try:
                event = first
                while not isinstance(event, Result):
                    if event is None:   # E2B's own keep-alive: a client that left is noticed on this write
                        yield e2b.ndjson([{"type": "keepalive"}])
                    else:
                        yield e2b.ndjson([e2b.output_event(event.stream, event.text)])
                    event = await anext(events)
                ctx.runs += 1
                yield e2b.ndjson(e2b.to_e2b_events(event, ctx.runs, logs=False))
            finally:
                await events.aclose()  # a client that left has its run killed

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @router.post("/contexts", summary="E2B: create a context (an engine session: state carries over)")
    async def create_context(request: Request, owner: Owner, contexts: ContextsDep,
                             body: E2BContext | None = None) -> JSONResponse:
        language = (body.language if body is not None else None) or "python"
        if language not in ("python", "python3"):
            raise ApiError(400, "invalid_input", f"language {language!r} is not supported: Python only")
        mine = contexts.of(owner)
        share = request.app.state.settings.peer_spaces_per_key
        made = [c for c in mine if c != DEFAULT]
        while made and len(made) >= max(1, share - 1):  # the default one counts too: the least recently used goes
            oldest = min(made, key=lambda c: mine[c].used)
            made.remove(oldest)
            await contexts.close(request, owner, mine.pop(oldest))
        cid = secrets.token_hex(16)
        mine[cid] = _Context(cwd=(body.cwd if body is not None and body.cwd else None) or "/work")
        return JSONResponse(e2b.context_document(cid, "python", mine[cid].cwd))

    @router.get("/contexts", summary="E2B: list contexts (the default one first)")
    async def list_contexts(owner: Owner, contexts: ContextsDep) -> JSONResponse:
        mine = contexts.of(owner)
        default = mine.get(DEFAULT) or _Context()
        return JSONResponse([e2b.context_document(DEFAULT, "python", default.cwd)] +
                            [e2b.context_document(cid, c.language, c.cwd) for cid, c in mine.items() if cid != DEFAULT])

    @router.delete("/contexts/{context_id}", status_code=204, summary="E2B: remove a context (closes its session)")
    async def remove_context(context_id: Annotated[str, Path()], request: Request, owner: Owner,
                             contexts: ContextsDep) -> Response:
        ctx = contexts.of(owner).pop(context_id, None)
        if ctx is None:
            raise ApiError(404, "not_found", f"no context {context_id!r}")
        await contexts.close(request, owner, ctx)
        return Response(status_code=204)

    @router.post("/contexts/{context_id}/restart", status_code=204,
                 summary="E2B: restart a context (a fresh interpreter: variables and files are gone)")
    async def restart_context(context_id: Annotated[str, Path()], request: Request, owner: Owner,
                              contexts: ContextsDep) -> Response:
        ctx = contexts.of(owner).get(DEFAULT if context_id in ("python", "python3") else context_id)
        if ctx is None:
            if context_id in (DEFAULT, "python", "python3"):
                return Response(status_code=204)  # not used yet: already fresh
            raise ApiError(404, "not_found", f"no context {context_id!r}")
        await contexts.close(request, owner, ctx)
        ctx.runs = 0
        return Response(status_code=204)


router = APIRouter(prefix="/e2b", tags=TAGS)
path_router = APIRouter(prefix="/k/{api_key}/e2b", tags=TAGS)
_routes(router, require_key)
_routes(path_router, require_path_key)
