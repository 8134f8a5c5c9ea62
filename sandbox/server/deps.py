"""Dependencies every router shares: the app's one sandbox, and the API key check.

    @router.post("/x")
    async def x(sb: SandboxDep, owner: OwnerDep): ...          # bearer key in the Authorization header
    @peer_router.post("/k/{api_key}/x")
    async def y(sb: SandboxDep, owner: PathOwnerDep): ...      # key in the path, for clients without headers

An owner id is derived from the key (a hash prefix), so sessions and logs never hold a key. The key is
checked before the body is read by the app's Gate (gate.py), which leaves the owner id in the request's
scope; these dependencies read it from there (and check the key themselves in an app without the Gate).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..client import AsyncSandbox
from .errors import ApiError
from .gate import OWNER
from .settings import Settings, is_loopback

LOCAL_OWNER = "local"   # the owner of every call when no key is configured (loopback only)

_bearer = HTTPBearer(auto_error=False, description="an API key from --api-key-file or SANDBOX_API_KEYS")


def get_sandbox(request: Request) -> AsyncSandbox:
    """The app's one AsyncSandbox, built in the lifespan."""
    sb = getattr(request.app.state, "sandbox", None)
    if sb is None:
        raise ApiError(503, "unavailable", "the sandbox is not running")
    return sb


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def owner_of(key: str) -> str:
    """An opaque, stable id for a key: never the key itself."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def check_key(settings: Settings, given: str | None) -> str | None:
    """The owner id of `given` if it is one of the configured keys. Compares against every key in
    constant time (no early exit, so timing tells nothing about which key or how much matched)."""
    if given is None:
        return None
    given_b = given.encode("utf-8", "replace")
    match = None
    for key in settings.api_keys:
        if secrets.compare_digest(given_b, key.encode()):
            match = key
    return None if match is None else owner_of(match)


def authorize(request: Request, given: str | None) -> str:
    """The owner id for key `given`, or ApiError 401. Without configured keys the server answers only
    loopback callers that name a loopback host (a page on another site that rebinds its DNS name to
    127.0.0.1 still sends its own Host header, and gets 403)."""
    settings = get_settings(request)
    if not settings.auth_required:
        client = request.client.host if request.client else ""
        host = request.headers.get("host", "")
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if (client and not is_loopback(client)) or not is_loopback(hostname):
            raise ApiError(403, "forbidden", "this server has no API key configured and answers only loopback "
                           "clients addressing it as localhost, 127.0.0.1 or [::1]")
        return LOCAL_OWNER
    owner = check_key(settings, given)
    if owner is None:
        raise ApiError(401, "unauthorized", "a valid API key is required (Authorization: Bearer KEY)"
                       if given is None else "the API key is not valid", {"WWW-Authenticate": "Bearer"})
    return owner


def _gated(request: Request) -> str | None:
    """The owner id the Gate found for this request, if it ran."""
    return request.scope.get("state", {}).get(OWNER)


def require_key(request: Request,
                credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """Bearer-key auth (or X-API-Key): the caller's owner id, or 401."""
    return _gated(request) or authorize(request, None if credentials is None else credentials.credentials)


def require_path_key(request: Request, api_key: Annotated[str, Path(description="an API key")]) -> str:
    """Auth for routes under `/k/{api_key}/...`, for clients that cannot send an Authorization header."""
    return _gated(request) or authorize(request, api_key)


SandboxDep = Annotated[AsyncSandbox, Depends(get_sandbox)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
OwnerDep = Annotated[str, Depends(require_key)]
PathOwnerDep = Annotated[str, Depends(require_path_key)]
