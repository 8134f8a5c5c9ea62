"""SandboxFusion's `POST /run_code` (see sandbox.compat.sandboxfusion). Its client sends no auth
header: without `Authorization: Bearer`, use `/k/{api_key}/run_code` (endpoint `http://HOST/k/KEY`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi.responses import JSONResponse

from ...compat import sandboxfusion as sf
from ...compat.request import PeerRequestError
from ...errors import InvalidInputError
from ..deps import SandboxDep, require_key, require_path_key

TAGS = ["peer: SandboxFusion"]
router = APIRouter(tags=TAGS, dependencies=[Depends(require_key)])
path_router = APIRouter(prefix="/k/{api_key}", tags=TAGS, dependencies=[Depends(require_path_key)])


async def run_code(payload: Annotated[dict[str, Any], Body(examples=[{"code": "print(1)", "language": "python"}])],
                   sb: SandboxDep) -> JSONResponse:
    """Run Python the SandboxFusion way; every run is a 200 with its `status`."""
    try:
        req, fetch = sf.from_sandboxfusion(payload)
        result = await sb.run(req.code, req.files, stdin=req.stdin, timeout=req.timeout, limits=req.limits or None)
    except (PeerRequestError, InvalidInputError) as exc:
        return JSONResponse(sf.refusal(str(exc)))
    return JSONResponse(sf.to_sandboxfusion(result, fetch, req.files))


for r in (router, path_router):
    r.add_api_route("/run_code", run_code, methods=["POST"], summary="SandboxFusion: run code (Python only)")
