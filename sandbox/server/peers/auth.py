"""Auth for peer clients that cannot send `Authorization: Bearer`: LibreChat sends `X-API-Key`.
Everything else uses the server's own dependencies (bearer header, or the key in the URL path)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .. import deps

_bearer = HTTPBearer(auto_error=False, description="an API key from --api-key-file or SANDBOX_API_KEYS")


def require_header_key(request: Request,
                       credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                       x_api_key: Annotated[str | None, Header(description="an API key (LibreChat's header)")] = None,
                       ) -> str:
    """The owner id for a key in `X-API-Key` or `Authorization: Bearer`, or 401."""
    given = x_api_key if x_api_key is not None else (None if credentials is None else credentials.credentials)
    return deps._gated(request) or deps.authorize(request, given)


HeaderOwnerDep = Annotated[str, Depends(require_header_key)]
