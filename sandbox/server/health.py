"""`GET /v1/health`: liveness and readiness, with pool and session counts (no key needed, for probes)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel



class Health(BaseModel):
    status: str                 # "ok" when a slot is live, "starting" while none is, "unavailable" when closed
    ready: bool
    pool: dict[str, int]        # PoolStats: size, live, idle, busy, starting, waiting, replacements, runs
    sessions: int


router = APIRouter(prefix="/v1", tags=["health"])


@router.get("/health", response_model=Health, summary="Liveness and readiness, with pool and session counts",
            responses={503: {"description": "no slot is live"}})
async def health(request: Request, response: Response) -> Health:
    sb = getattr(request.app.state, "sandbox", None)
    if sb is None:
        response.status_code = 503
        return Health(status="unavailable", ready=False, pool={}, sessions=0)
    stats = sb.stats()
    ready = stats.live > 0
    if not ready:
        response.status_code = 503
    return Health(status="ok" if ready else "starting", ready=ready, pool=stats.to_dict(),
                  sessions=request.app.state.metrics.open_sessions())
