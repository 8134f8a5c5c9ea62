"""`GET /v1/image`: the manifest of the image runs execute in (Python version, packages, preloads)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from .deps import SandboxDep, require_key

router = APIRouter(prefix="/v1", tags=["image"], dependencies=[Depends(require_key)])


SHOWN = ("name", "lock", "python_version", "preload", "packages", "built_at")  # never host paths (interpreter, prefix)


@router.get("/image", summary="The image's manifest: Python version, packages, preloaded modules")
async def image(sb: SandboxDep) -> dict[str, Any]:
    manifest = sb.image_info()
    return {k: manifest[k] for k in SHOWN if k in manifest}
