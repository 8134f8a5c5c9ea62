"""One mapping from errors to HTTP answers, `{"error": {"type", "message"}}`, for every route.

Outcomes of a run are never errors (a timeout is a 200 with the result); these are:
  400 bad_request      the body is not JSON
  401 unauthorized     no API key, or a wrong one
  404 not_found        no such route or resource; a session that is unknown or belongs to another key
  404 no_such_file     no such file in the session
  413 too_large        the body is over the route's cap (refused before it is read), or code over the code cap
  415 unsupported_media_type   the body is not sent as application/json
  410 session_closed   the caller's session has ended (the message says why: closed, expired, its
                       last call timed out or ran out of memory...); 404 once the server forgets it
  422 invalid_input    the request is well-formed JSON but wrong (engine's InvalidInputError too)
  429 queue_full       every slot busy and the queue full (with Retry-After)
  429 session_limit    too many sessions open, on the server or for this key (with Retry-After: when
                       the first of them expires if left idle); MCP sessions likewise
  429 too_many_calls   this key (or this session) has as many calls running and waiting as it may
                       (settings.py's quotas; with Retry-After)
  503 unavailable      the engine is closed, not started, or cannot run jails
  500 internal         anything else; the message never carries a stack trace
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import SandboxError, SessionClosedError, wire_of

log = logging.getLogger("sandbox.server")

_TYPES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          406: "not_acceptable", 410: "session_closed", 413: "too_large", 415: "unsupported_media_type", 422: "invalid_input",
          429: "queue_full", 503: "unavailable"}


class ApiError(StarletteHTTPException):
    """An HTTP error with a machine-readable type. Raise it from a route or a dependency."""

    def __init__(self, status: int, type: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, headers)
        self.type = type
        self.message = message


def error_body(type: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"type": type, "message": message}}


def error_response(status: int, type: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(type, message), status_code=status, headers=headers)


def engine_error(exc: SandboxError, retry_after: int = 1) -> ApiError:
    """The HTTP answer to an engine exception, from the engine's one table (sandbox.errors.WIRE);
    peer routes with their own error format read status and message from it."""
    type_, status = wire_of(exc)
    message = f"the session has ended: {exc}" if isinstance(exc, SessionClosedError) else str(exc)
    return ApiError(status, type_, message, {"Retry-After": str(retry_after)} if status == 429 else None)


def install(app: FastAPI) -> None:
    """Register the handlers: one per error family."""

    async def on_engine(request: Request, exc: SandboxError) -> JSONResponse:
        err = engine_error(exc, getattr(request.app.state, "retry_after", 1))
        return error_response(err.status_code, err.type, err.message, err.headers)

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, ApiError):
            return error_response(exc.status_code, exc.type, exc.message, exc.headers)
        if exc.status_code == 413:
            limit = request.scope.get("sandbox_body_cap") or request.app.state.settings.max_body_bytes
            return error_response(413, "too_large", f"the request body is over the {limit} bytes this route accepts")
        return error_response(exc.status_code, _TYPES.get(exc.status_code, "error"), str(exc.detail), exc.headers)

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "bad_request", "the body is not valid JSON")
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type and any(tuple(e.get("loc", ())) == ("body",) for e in errors):
            return error_response(415, "unsupported_media_type", "send the body as JSON with "
                                  "Content-Type: application/json")
        return error_response(422, "invalid_input", _describe(errors))

    async def on_other(request: Request, exc: Exception) -> JSONResponse:
        # The route's template, never the path itself: a /k/KEY/ path carries a key.
        route = getattr(request.scope.get("route"), "path", None) or "(no route)"
        log.error("internal error on %s %s: %s", request.method, route, type(exc).__name__, exc_info=exc)
        return error_response(500, "internal", "internal server error")

    app.add_exception_handler(SandboxError, on_engine)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_other)


def _describe(errors: object) -> str:
    """Pydantic's errors in one line each: `body.files.x: Input should be a valid string`."""
    lines = []
    for e in list(errors)[:10]:  # type: ignore[call-overload]
        loc = ".".join(str(p) for p in e.get("loc", ()))
        lines.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(lines) or "invalid request"
