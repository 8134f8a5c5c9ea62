"""`GET /`: the playground page, and its assets under /static. Served by the app, so it works with no
internet; a strict Content-Security-Policy lets it load nothing from anywhere else.

A program's rich outputs (HTML tables, plotly figures) are untrusted: the page shows each in an
iframe of `GET /static/frame.html`, a page whose own policy makes it a sandbox with an opaque origin (it cannot
read the page, its key or its storage, and may connect nowhere). The page hands it the output by
postMessage; it renders HTML without running the program's scripts, and a plotly figure from its
JSON with the plotly.js the image itself ships (`GET /static/vendor/plotly.min.js`), never a CDN.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

from ..client import image_package_file

STATIC = Path(__file__).resolve().parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; frame-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
# The output frame: a sandbox (opaque origin, scripts only its own and the vendored viewer's),
# shown only inside the playground itself.
FRAME_CSP = ("sandbox allow-scripts; default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
             "img-src data: blob:; font-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'; "
             "frame-ancestors 'self'")
PLOTLY_JS = "plotly/package_data/plotly.min.js"
HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

router = APIRouter(tags=["playground"])
assets = StaticFiles(directory=STATIC)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP, **HEADERS})


@router.get("/static/frame.html", include_in_schema=False)  # before the /static mount: with its policy
async def frame() -> FileResponse:
    return FileResponse(STATIC / "frame.html", headers={"Content-Security-Policy": FRAME_CSP, **HEADERS})


@router.get("/static/vendor/plotly.min.js", include_in_schema=False)
async def plotly_js() -> FileResponse:
    path = image_package_file(PLOTLY_JS)
    if path is None:
        raise HTTPException(404, "the image has no plotly")
    return FileResponse(path, media_type="text/javascript",
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=3600"})
