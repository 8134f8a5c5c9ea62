"""SandboxFusion's `POST /run_code` (see sandbox.compat.sandboxfusion). Its client sends no auth
header: without `Authorization: Bearer`, use `/k/{api_key}/run_code` (endpoint `http://HOST/k/KEY`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ...compat import sandboxfusion as sf
from ...compat.request import PeerRequestError
from ...errors import InvalidInputError
from ..deps import SandboxDep, require_key, require_path_key
from ..gate import OWNER

TAGS = ["peer: SandboxFusion"]
router = APIRouter(tags=TAGS, dependencies=[Depends(require_key)])
path_router = APIRouter(prefix="/k/{api_key}", tags=TAGS, dependencies=[Depends(require_path_key)])


class SandboxFusionRunCode(BaseModel):
    """SandboxFusion's request (documented here; sandbox.compat.sandboxfusion reads it)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{"code": "print(1)", "language": "python"}]})

    code: str = Field(description="the code to run")
    language: str = Field(description="only \"python\" runs here; other languages get a SandboxError saying so")
    stdin: str | None = Field(default=None, description="text given as standard input")
    run_timeout: float = Field(default=10, description="wall clock limit in seconds (capped at the server's policy)")
    compile_timeout: float = Field(default=10, description="ignored: nothing is compiled")
    memory_limit_MB: int = Field(default=-1, description="memory limit in MiB (capped at the server's policy); -1 for its default")
    files: dict[str, str | None] = Field(default_factory=dict, description="path -> base64 content")
    fetch_files: list[str] = Field(default_factory=list, description="paths whose content to return")


async def run_code(body: SandboxFusionRunCode, sb: SandboxDep, request: Request) -> JSONResponse:
    """Run Python the SandboxFusion way; every run is a 200 with its `status`."""
    ceiling = getattr(request.app.state, "ceiling", None)  # the policy's limits: a caller may only tighten them
    try:
        req, fetch = sf.from_sandboxfusion(body.model_dump(), getattr(ceiling, "timeout_seconds", None),
                                           getattr(ceiling, "memory_bytes", None))
        owner = request.scope.get("state", {}).get(OWNER, "local")  # the Gate checked the key
        result = await request.app.state.sessions.engine_call(owner, lambda: sb.run(
            req.code, req.files, stdin=req.stdin, timeout=req.timeout, limits=req.limits or None))
    except (PeerRequestError, InvalidInputError) as exc:
        return JSONResponse(sf.refusal(str(exc)))
    return JSONResponse(sf.to_sandboxfusion(result, fetch, req.files))


for r in (router, path_router):
    r.add_api_route("/run_code", run_code, methods=["POST"], summary="SandboxFusion: run code (Python only)")
