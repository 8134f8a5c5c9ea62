"""LibreChat's code interpreter API under `/librechat` (see sandbox.compat.librechat). Set
LibreChat's `LIBRECHAT_CODE_BASEURL=http://HOST/librechat` and `LIBRECHAT_CODE_API_KEY` to a key:
LibreChat sends it as `X-API-Key` (a bearer header works too).

Sessions are host-side file stores: `/upload` makes one, each `/exec` makes one for its outputs;
`/exec` gets its input files from the sessions its `files` refs name. Runs are stateless.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ...compat import librechat as lc
from ...compat.request import PeerRequestError
from ...errors import InvalidInputError
from ..deps import SandboxDep
from ..errors import ApiError
from .auth import HeaderOwnerDep
from .store import PeerStore, get_store
from .transform import code_too_large, off_loop

KIND = "librechat"
StoreDep = Annotated[PeerStore, Depends(get_store)]
router = APIRouter(prefix="/librechat", tags=["peer: LibreChat"])


def _refused(message: str) -> JSONResponse:
    # A 200 whose stderr says why: LibreChat shows a model only a generic text for a 4xx.
    return JSONResponse({"session_id": "", "stdout": "", "stderr": message + "\n", "files": []})


class LibreChatExec(BaseModel):
    """LibreChat's execution request (documented here; sandbox.compat.librechat reads it)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{"lang": "py", "code": "print(1)"}]})

    lang: str = Field(description="\"py\" only; other languages get a stderr saying so")
    code: str
    args: list[str] | None = Field(default=None, description="refused when not empty: no argv")
    files: list[dict[str, Any]] | None = Field(
        default=None, description="inputs: [{id, name, session_id or storage_session_id}] from /upload or an earlier /exec")


@router.post("/exec", summary="LibreChat: run code (Python only)")
async def execute(body: LibreChatExec, sb: SandboxDep, owner: HeaderOwnerDep, store: StoreDep,
                  request: Request) -> JSONResponse:
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
    try:
        result = await request.app.state.sessions.engine_call(owner, lambda: sb.run(req.code, inputs))
    except InvalidInputError as exc:
        return _refused(str(exc))
    sid, space = store.create(owner, KIND)
    stored = [(space.put(name, data), name) for name, data in lc.output_files(result)]
    store.fit(space)
    return JSONResponse(lc.to_librechat_exec(result, sid, stored))


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
    entries = [(fid, f.name, f.mtime, f.content_type) for fid, f in space.files.items()]
    return JSONResponse(lc.file_listing(session_id, entries, detail))
