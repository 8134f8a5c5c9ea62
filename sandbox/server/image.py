"""`GET /v1/image`: the manifest of the image runs execute in (Python version, packages, preloads)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from .deps import SandboxDep, require_key

router = APIRouter(prefix="/v1", tags=["image"], dependencies=[Depends(require_key)])


@router.get("/image", summary="The image's manifest: Python version, packages, preloaded modules")
async def image(sb: SandboxDep) -> dict[str, Any]:
    return sb.image_info()
