"""`GET /`: the playground page, and its assets under /static. Served by the app, so it works with no
internet; a strict Content-Security-Policy lets it load nothing from anywhere else."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")

router = APIRouter(tags=["playground"])
assets = StaticFiles(directory=STATIC)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                                                         "Cache-Control": "no-cache"})
