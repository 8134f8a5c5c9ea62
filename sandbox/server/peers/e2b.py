"""E2B's code interpreter: `POST /e2b/execute` (NDJSON stream) and `/e2b/contexts`, see
sandbox.compat.e2b. The E2B SDK sends no auth header to this API: point its `sandbox_url` at
`http://HOST/k/KEY/e2b` (the key in the path); `/e2b/...` itself takes the bearer header.

A context keeps the files its runs write (each run gets them back as inputs); variables and
imports do not carry over between runs until the engine has stateful sessions.
"""

# No `from __future__ import annotations` here: the per-router `Owner` alias is local to _routes()
# and FastAPI must resolve it when it reads the handlers' signatures.
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ...compat import e2b
from ...compat.request import PeerRequestError
from ...errors import InvalidInputError
from ...results import Output
from ..deps import SandboxDep, require_key, require_path_key
from ..errors import ApiError
from ..runs import coalesce
from .store import PeerStore, get_store
from .transform import check_code_size, off_loop

KIND = "e2b"
TAGS = ["peer: E2B code interpreter"]
StoreDep = Annotated[PeerStore, Depends(get_store)]


class E2BExecute(BaseModel):
    """E2B's execution request (documented here; sandbox.compat.e2b reads it)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{"code": "x = 2\nx * 21"}]})

    code: str = Field(description="the cell; the value of its last expression comes back as the main result")
    context_id: str | None = Field(default=None, description="a context from POST /contexts (keeps files)")
    language: str | None = Field(default=None, description="Python only")
    env_vars: dict[str, str] | None = Field(default=None, description="refused when not empty: the environment is fixed")


class E2BContext(BaseModel):
    model_config = ConfigDict(extra="allow")

    language: str | None = Field(default=None, description="Python only")
    cwd: str | None = Field(default=None, description="ignored: runs start in the sandbox's working directory")


def _routes(router: APIRouter, owner_dep) -> None:
    Owner = Annotated[str, Depends(owner_dep)]

    @router.post("/execute", summary="E2B: run a cell; newline-delimited JSON events",
                 responses={200: {"content": {"application/x-ndjson": {}}}})
    async def execute(body: E2BExecute, sb: SandboxDep, owner: Owner, store: StoreDep, request: Request) -> Response:
        check_code_size(request, body.code)  # before the cell is parsed, which happens off the event loop
        try:
            req, context_id = await off_loop(request, e2b.from_e2b, body.model_dump())
        except PeerRequestError as exc:
            raise ApiError(400, "invalid_input", str(exc)) from None
        space = None
        if context_id not in (None, "", "default", "python"):
            space = store.get(owner, KIND, context_id)
            if space is None:
                raise ApiError(404, "not_found", f"no context {context_id!r}")
        sessions = request.app.state.sessions  # the key's places in the engine
        events = coalesce(sessions.engine_stream(owner, sb.stream(req.code, space.by_name() if space else None)))
        try:
            first = await anext(events)  # a refused run (bad input, full queue) fails here, before the 200
        except InvalidInputError as exc:
            await events.aclose()
            raise ApiError(400, "invalid_input", str(exc)) from None
        except BaseException:
            await events.aclose()
            raise

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for line in _lines():
                    yield line
            finally:
                await events.aclose()  # a client that left has its run killed

        async def _lines() -> AsyncIterator[bytes]:
            event = first
            while isinstance(event, Output):
                yield e2b.ndjson([e2b.output_event(event.stream, event.text)])
                event = await anext(events)
            count = 1
            if space is not None:
                space.runs += 1
                count = space.runs
                for name, data in e2b.written_files(event).items():
                    space.put(name, data)
                try:
                    store.fit(space)
                except ApiError as exc:  # the stream has begun: say it as an event, not a status
                    space.files.clear()
                    yield e2b.ndjson([{"type": "error", "name": "ContextFull", "value": exc.message,
                                       "traceback": ""}])
            yield e2b.ndjson(e2b.to_e2b_events(event, count, logs=False))

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @router.post("/contexts", summary="E2B: create a context (keeps files between runs)")
    async def create_context(owner: Owner, store: StoreDep, body: E2BContext | None = None) -> JSONResponse:
        language = (body.language if body is not None else None) or "python"
        if language not in ("python", "python3"):
            raise ApiError(400, "invalid_input", f"language {language!r} is not supported: Python only")
        cid, _ = store.create(owner, KIND)
        return JSONResponse(e2b.context_document(cid))

    @router.get("/contexts", summary="E2B: list contexts")
    async def list_contexts(owner: Owner, store: StoreDep) -> JSONResponse:
        return JSONResponse([e2b.context_document(cid) for cid, _ in store.list(owner, KIND)])

    @router.delete("/contexts/{context_id}", status_code=204, summary="E2B: remove a context")
    async def remove_context(context_id: Annotated[str, Path()], owner: Owner, store: StoreDep) -> Response:
        if not store.delete(owner, KIND, context_id):
            raise ApiError(404, "not_found", f"no context {context_id!r}")
        return Response(status_code=204)

    @router.post("/contexts/{context_id}/restart", status_code=204, summary="E2B: restart a context (drops its files)")
    async def restart_context(context_id: Annotated[str, Path()], owner: Owner, store: StoreDep) -> Response:
        space = store.get(owner, KIND, context_id)
        if space is None:
            raise ApiError(404, "not_found", f"no context {context_id!r}")
        space.files.clear()
        space.runs = 0
        return Response(status_code=204)


router = APIRouter(prefix="/e2b", tags=TAGS)
path_router = APIRouter(prefix="/k/{api_key}/e2b", tags=TAGS)
_routes(router, require_key)
_routes(path_router, require_path_key)
