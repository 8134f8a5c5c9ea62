"""SandboxFusion's `POST /run_code` and `POST /run_jupyter` (see sandbox.compat.sandboxfusion). Its client sends no auth
header: without `Authorization: Bearer`, use `/k/{api_key}/run_code` (endpoint `http://HOST/k/KEY`)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ...compat import sandboxfusion as sf
from ...compat.request import PeerRequestError
from ...errors import InvalidInputError, SessionClosedError
from ..deps import SandboxDep, require_key, require_path_key
from ..errors import ApiError
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
            req.code, req.files, stdin=req.stdin, timeout=req.timeout, limits=req.limits or None, fetch=req.fetch))
    except (PeerRequestError, InvalidInputError) as exc:
        return JSONResponse(sf.refusal(str(exc)))
    return JSONResponse(sf.to_sandboxfusion(result, fetch, req.files))


class SandboxFusionRunJupyter(BaseModel):
    """SandboxFusion's notebook request (documented here; sandbox.compat.sandboxfusion reads it)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{"cells": ["a = 1", "a + 1"]}]})

    cells: list[str] = Field(description="the cells, run in order in one interpreter (an engine session)")
    cell_timeout: float = Field(default=0, description="seconds per cell (0: only the total applies)")
    total_timeout: float = Field(default=45, description="seconds for all the cells (capped at the server's policy)")
    memory_limit_MB: int = Field(default=-1, description="memory limit in MiB (capped at the server's policy)")
    kernel: str = Field(default="python3", description="\"python3\" only")
    files: dict[str, str | None] = Field(default_factory=dict, description="path -> base64 content")
    fetch_files: list[str] = Field(default_factory=list, description="paths whose content to return")


async def run_jupyter(body: SandboxFusionRunJupyter, sb: SandboxDep, request: Request) -> JSONResponse:
    """The cells in one engine session of the key (its ttl, caps and quotas), closed at the end."""
    ceiling = getattr(request.app.state, "ceiling", None)
    if sum(len(c) for c in body.cells) > getattr(ceiling, "max_code_bytes", 1 << 20):
        return JSONResponse(sf.refusal("the cells are larger than max_code_bytes together"))
    try:
        req = sf.from_jupyter(body.model_dump(), getattr(ceiling, "timeout_seconds", None),
                              getattr(ceiling, "memory_bytes", None))
    except PeerRequestError as exc:
        return JSONResponse(sf.refusal(str(exc)))
    owner = request.scope.get("state", {}).get(OWNER, "local")
    sessions = request.app.state.sessions
    try:
        session = await sessions.create(sb, owner, limits=req.limits or None)
    except ApiError as exc:
        return JSONResponse(sf.refusal(exc.message))
    cells, results, written, message = [], [], {}, ""
    deadline = time.monotonic() + req.total_timeout
    try:
        for i, cell in enumerate(req.cells):
            left = deadline - time.monotonic()
            if left <= 0:
                message = f"total_timeout reached before cell {i}"
                break
            timeout = min(left, req.cell_timeout or left)
            try:
                result = await sessions.run(session, cell, req.files if i == 0 else None, owner=owner, timeout=timeout)
            except (InvalidInputError, SessionClosedError) as exc:
                message = f"cell {i}: {exc}"
                break
            results.append(result)
            cells.append(sf.jupyter_cell(result))
            written.update({f.path: f.data for f in result.files})
            if session.closed:  # a limit ended the interpreter: the cells after it cannot run
                message = f"cell {i} ended the interpreter ({result.outcome.value})"
                break
    finally:
        await sessions.close(owner, session.id)
    return JSONResponse(sf.to_jupyter(cells, results, written, req.fetch, req.files, message))


for r in (router, path_router):
    r.add_api_route("/run_code", run_code, methods=["POST"], summary="SandboxFusion: run code (Python, pytest)")
    r.add_api_route("/run_jupyter", run_jupyter, methods=["POST"],
                    summary="SandboxFusion: run notebook cells in one interpreter (an engine session)")
