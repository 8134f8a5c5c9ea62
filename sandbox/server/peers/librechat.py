"""LibreChat's code interpreter API under `/librechat` (see sandbox.compat.librechat). Set
LibreChat's `LIBRECHAT_CODE_BASEURL=http://HOST/librechat` and `LIBRECHAT_CODE_API_KEY` to a key:
LibreChat sends it as `X-API-Key` (a bearer header works too).

A session is a file store (inputs and outputs, for `/files` and `/download`) and, once code ran in
it, an engine session owned by the key (the engine's ttl and caps, the key's session quota): variables
carry over between its runs. `/upload` makes one; `/exec` runs in the session its `session_id` names,
else in the one its file refs or its `user_id` and `entity_id` found before, else in a new one; its
outputs are stored under that session. While `/exec` runs, a space is sent every KEEPALIVE_SECONDS
(leading whitespace of the JSON answer), as LibreChat's own server does for long runs.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ... import __version__
from ...compat import librechat as lc
from ...compat.request import PeerRequestError
from ...errors import InvalidInputError, SandboxError
from ..deps import SandboxDep
from ..errors import ApiError
from .auth import HeaderOwnerDep
from .store import PeerStore, Space, get_store
from .transform import code_too_large, off_loop

KIND = "librechat"
StoreDep = Annotated[PeerStore, Depends(get_store)]
router = APIRouter(prefix="/librechat", tags=["peer: LibreChat"])


def _refusal_body(message: str) -> dict[str, Any]:
    return {"session_id": "", "stdout": "", "stderr": message + "\n", "files": []}


def _refused(message: str) -> JSONResponse:
    # A 200 whose stderr says why: LibreChat shows a model only a generic text for a 4xx.
    return JSONResponse(_refusal_body(message))


class LibreChatExec(BaseModel):
    """LibreChat's execution request (documented here; sandbox.compat.librechat reads it)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{"lang": "py", "code": "print(1)"}]})

    lang: str = Field(description="\"py\" only; other languages get a stderr saying so")
    code: str
    args: list[str] | None = Field(default=None, description="refused when not empty: no argv")
    files: list[dict[str, Any]] | None = Field(
        default=None, description="inputs: [{id, name, session_id or storage_session_id}] from /upload or an earlier /exec")


KEEPALIVE_SECONDS = 2.0     # a space while /exec runs, so proxies and clients see the request alive


def _find_space(store: PeerStore, owner: str, req: lc.ExecRequest) -> tuple[str, Space]:
    """The session a run belongs to: the one it names (`session_id`, if this key's), else an earlier
    run's session its file refs point at (the same user's), else the one its user_id and entity_id
    ran in before, else a new one."""
    if req.session_id is not None:
        space = store.get(owner, KIND, req.session_id)
        if space is not None:
            return req.session_id, space
    tag = (req.user_id, req.entity_id)
    for ref in req.files:
        space = store.get(owner, KIND, ref.session_id)
        if space is not None and space.session is not None and space.tag[:1] == (req.user_id,):
            return ref.session_id, space
    if req.entity_id is not None:
        for sid, space in store.list(owner, KIND):
            if space.session is not None and space.tag == tag:
                return sid, store.get(owner, KIND, sid)
    sid, space = store.create(owner, KIND)
    space.tag = tag
    return sid, space


async def _engine_session(request: Request, sb, owner: str, space: Space):
    """The space's open engine session, made (again, if the last one ended) when needed; it is an
    implicit session (Sessions.implicit): at the key's cap, the least recently used idle one goes."""
    sessions = request.app.state.sessions
    session = None
    if space.session is not None:
        try:
            session = sessions.get(owner, space.session)
        except ApiError:
            space.session = None   # ended (idle past its ttl, or a run hit a limit): a fresh interpreter
    if session is None:
        session = await sessions.create(sb, owner)
        space.session = session.id

    def forget() -> None:
        space.session = None

    sessions.implicit(session.id, forget)
    return session


@router.post("/exec", summary="LibreChat: run code (Python only) in a session; state carries over")
async def execute(body: LibreChatExec, sb: SandboxDep, owner: HeaderOwnerDep, store: StoreDep,
                  request: Request) -> Response:
    too_large = code_too_large(request, body.code)  # before the rewrite, which runs off the event loop
    if too_large is not None:
        return _refused(too_large)
    try:
        req = await off_loop(request, lc.from_librechat_exec, body.model_dump())
    except PeerRequestError as exc:
        return _refused(str(exc))
    inputs: dict[str, bytes] = {}
    for ref in req.files:
        space = store.get(owner, KIND, ref.session_id)
        stored = space.files.get(ref.file_id) if space is not None else None
        if stored is None:
            return _refused(f"input file {ref.name!r} ({ref.session_id}/{ref.file_id}) is not stored here "
                            "(expired or never uploaded): upload it again")
        inputs[ref.name] = stored.data
    sid, space = _find_space(store, owner, req)
    for name, data in inputs.items():  # the session lists its inputs as well as its outputs
        if space.by_name().get(name) != data:
            space.put(name, data)
    try:
        store.fit(space)
        session = await _engine_session(request, sb, owner, space)
    except ApiError as exc:
        return _refused(exc.message)
    sessions = request.app.state.sessions
    call = asyncio.ensure_future(sessions.run(session, req.code, inputs, owner=owner))

    async def answer() -> AsyncIterator[bytes]:
        try:
            while True:
                done, _ = await asyncio.wait({call}, timeout=KEEPALIVE_SECONDS)
                if done:
                    break
                yield b" "   # JSON allows leading whitespace: the body stays one JSON document
            try:
                result = call.result()
            except (InvalidInputError, ApiError, SandboxError) as exc:
                yield json.dumps(_refusal_body(getattr(exc, "message", None) or str(exc))).encode()
                return
            stored = [(space.put(name, data), name) for name, data in lc.output_files(result)]
            try:
                store.fit(space)
            except ApiError as exc:
                yield json.dumps(_refusal_body(exc.message)).encode()
                return
            yield json.dumps(lc.to_librechat_exec(result, sid, stored, req.files)).encode()
        finally:
            if not call.done():
                call.cancel()  # the client left: its run is killed (and the session with it)
                sessions.abandoned(session.id)

    return StreamingResponse(answer(), media_type="application/json")


@router.post("/upload", summary="LibreChat: upload files into a new session (multipart 'file')")
async def upload(request: Request, owner: HeaderOwnerDep, store: StoreDep) -> JSONResponse:
    try:
        form = await request.form()
    except Exception as exc:  # malformed multipart: the parser's own exception types vary
        raise ApiError(400, "bad_request", f"the body is not a valid multipart form ({type(exc).__name__})") from None
    uploads = [v for _, v in form.multi_items() if hasattr(v, "read") and hasattr(v, "filename")]
    if not uploads:
        raise ApiError(400, "bad_request", "no file in the form: send it as the multipart field 'file'")
    sid, space = store.create(owner, KIND)
    stored = []
    for up in uploads:
        name = os.path.basename(up.filename or "")
        if name in ("", ".", ".."):
            store.delete(owner, KIND, sid)
            raise ApiError(400, "bad_request", f"invalid file name {up.filename!r}")
        stored.append((space.put(name, await up.read()), name))
    store.fit(space)
    return JSONResponse(lc.upload_response(sid, stored))


@router.get("/download/{session_id}/{file_id}", summary="LibreChat: a stored file's bytes")
async def download(session_id: str, file_id: str, owner: HeaderOwnerDep, store: StoreDep) -> Response:
    space = store.get(owner, KIND, session_id)
    f = space.files.get(file_id) if space is not None else None
    if f is None:
        raise ApiError(404, "not_found", "no such file")
    safe = f.name.replace('"', "_").encode("ascii", "replace").decode()
    return Response(f.data, media_type=f.content_type,
                    headers={"Content-Disposition": f'attachment; filename="{safe}"',
                             # a program's file (an HTML output too): never rendered as this origin's page
                             "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox"})


@router.get("/files/{session_id}", summary="LibreChat: the files of a session")
async def files(session_id: str, owner: HeaderOwnerDep, store: StoreDep,
                detail: Annotated[str, Query()] = "summary") -> JSONResponse:
    space = store.get(owner, KIND, session_id)
    if space is None:
        return JSONResponse([])
    entries = [(fid, f.name, f.mtime, f.content_type, len(f.data)) for fid, f in space.files.items()]
    return JSONResponse(lc.file_listing(session_id, entries, detail))


def _health(request: Request) -> tuple[bool, dict[str, Any]]:
    sb = getattr(request.app.state, "sandbox", None)
    stats = sb.stats() if sb is not None else None
    ready = stats is not None and stats.live > 0
    return ready, {"status": "healthy" if ready else "unhealthy", "version": __version__}


@router.get("/health", summary="LibreChat: liveness (no key needed, for probes)")
async def health(request: Request) -> JSONResponse:
    ready, doc = _health(request)
    return JSONResponse(doc, status_code=200 if ready else 503)


@router.get("/health/detailed", summary="LibreChat: the engine's state")
async def health_detailed(request: Request, owner: HeaderOwnerDep) -> JSONResponse:
    ready, doc = _health(request)
    sb = getattr(request.app.state, "sandbox", None)
    pool = sb.stats().to_dict() if sb is not None else {}
    doc.update(services={"engine": {"status": doc["status"], "pool": pool}},
               summary={"healthy": int(ready), "unhealthy": int(not ready)})
    return JSONResponse(doc, status_code=200 if ready else 503)
