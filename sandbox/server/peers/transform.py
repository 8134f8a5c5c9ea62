"""What the peer routes do to code before it runs (E2B keeps the last expression's value, LibreChat maps
`/mnt/data`): only after the code's size check, and never on the event loop.

    check_code_size(request, code)                 # 413 over the policy's max_code_bytes
    req = await off_loop(request, e2b.from_e2b, payload)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request

from ..errors import ApiError

T = TypeVar("T")
TRANSFORMS_AT_ONCE = 2     # transforms running at once, server-wide: each may take a core and memory


def code_too_large(request: Request, code: str) -> str | None:
    """Why `code` is over the server's code cap, or None. Counts characters first (cheap), then bytes."""
    cap = request.app.state.ceiling.max_code_bytes
    if len(code) > cap or len(code.encode("utf-8", "surrogatepass")) > cap:
        return f"code is larger than max_code_bytes={cap}"
    return None


def check_code_size(request: Request, code: str) -> None:
    reason = code_too_large(request, code)
    if reason is not None:
        raise ApiError(413, "too_large", reason)


async def off_loop(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) on a worker thread, at most TRANSFORMS_AT_ONCE at once for the whole app."""
    state = request.app.state
    gate = getattr(state, "transforms", None)
    if gate is None:
        gate = state.transforms = asyncio.Semaphore(TRANSFORMS_AT_ONCE)
    async with gate:
        return await asyncio.to_thread(fn, *args)
