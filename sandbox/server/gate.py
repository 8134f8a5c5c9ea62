"""The ASGI middleware in front of the whole app: the key first, then the route's body cap, before any
route, parser or the MCP SDK reads one byte of the body.

    request head ──► which route class? (public / keyed; its body cap)
                 ──► on the Unix socket (its peer's uid already checked, unix.py): no key, no Host check
                 ──► no keys configured: loopback client and a loopback Host, for every route, or 403
                 ──► keyed route: a valid key (bearer, X-API-Key, or /k/KEY/ in the path), or 401
                 ──► Content-Length over the route's cap: 413; a body without one: 413 once it passes it
                 ──► the app, with the caller's owner id in scope["state"][OWNER]

Refusals are answered from here with `Connection: close`, so an unread body is dropped with the
connection, never buffered. The key is never echoed, logged or kept: only its owner id is.

Refusals are paced: a key's 429s (from any route) and a client address's 401s go out at most
REFUSALS_PER_SECOND a second, each later one held until its turn. A polite client (one that honours
Retry-After) never waits for this; one that answers a 429 by asking again at once, on many
connections, gets its refusals at that rate, so the server's work for it stays small beside other
keys' calls (issue 17: the noisy neighbour's flood of refused calls).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body
from .settings import Settings, is_loopback
from .unix import UNIX_PEER

OWNER = "sandbox_owner"     # the caller's owner id in the request's scope["state"]
KIB = 1 << 10
SMALL_BODY = 64 * KIB       # routes that take a few fields (session create, contexts, GET, DELETE)

# Routes anyone may call (with keys configured); everything else needs a key. Exact paths, and one prefix.
PUBLIC = frozenset({"/", "/v1/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
                    "/favicon.ico", "/librechat/health"})
PUBLIC_PREFIX = "/static/"
REFUSALS_PER_SECOND = 50    # per key (429) and per client address (401)


class BodyTooLarge(HTTPException):
    """Raised from `receive` mid-body; routes re-raise it and errors.py answers 413."""

    def __init__(self, limit: int = 0) -> None:
        super().__init__(413, "request body too large")
        self.limit = limit


def body_caps(settings: Settings, max_code_bytes: int) -> Callable[[str, str], int]:
    """cap(method, path) -> the most body bytes that route may be sent. Code travels JSON-escaped, so
    a code-only route gets twice the code cap (every non-ASCII character as \\uXXXX) and some room."""
    full = settings.max_body_bytes
    code = min(full, 2 * max_code_bytes + SMALL_BODY)

    def cap(method: str, path: str) -> int:
        if method in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return SMALL_BODY
        rest = _strip_key(path)
        if rest in ("/v1/execute", "/run_code", "/run_jupyter", "/mcp", "/librechat/upload") or \
                (rest.startswith("/v1/sessions/") and (rest.endswith("/execute") or "/files/" in rest)):
            return full
        if rest in ("/e2b/execute", "/librechat/exec"):
            return code
        return SMALL_BODY

    return cap


def _strip_key(path: str) -> str:
    """`/k/KEY/rest` -> `/rest`; other paths as they are."""
    if path.startswith("/k/"):
        _, _, rest = path[3:].partition("/")
        return "/" + rest
    return path


def path_key(path: str) -> str | None:
    if path.startswith("/k/"):
        key, sep, _ = path[3:].partition("/")
        return key if sep and key else None
    return None


def header_key(scope: Scope) -> str | None:
    """The key of `Authorization: Bearer KEY`, else of `X-API-Key: KEY` (what LibreChat sends)."""
    x_api_key = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            x_api_key = value.decode("latin-1").strip()
    return x_api_key


def is_public(path: str) -> bool:
    return path in PUBLIC or path.startswith(PUBLIC_PREFIX)


def local_only(scope: Scope) -> bool:
    """Without keys: is this a loopback client that names a loopback host (no DNS rebinding)?"""
    client = scope.get("client")
    host = next((v.decode("latin-1") for n, v in scope.get("headers", ()) if n == b"host"), "")
    hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return (not client or is_loopback(client[0])) and is_loopback(hostname)


class Pacer:
    """Turns at most `rate` a second per name: `await pacer.turn(name)` returns at once if the name's
    last turn was long enough ago, else when its next turn comes."""

    def __init__(self, rate: float) -> None:
        self.spacing = 1.0 / rate
        self._next: dict[str, float] = {}   # name -> when its next turn may be

    async def turn(self, name: str) -> None:
        now = time.monotonic()
        at = max(now, self._next.get(name, 0.0))
        self._next[name] = at + self.spacing
        if len(self._next) > 4096:   # many addresses: forget the ones whose turn is free again
            self._next = {k: t for k, t in self._next.items() if t > now}
        if at > now:
            await asyncio.sleep(at - now)


class Gate:
    def __init__(self, app: ASGIApp, settings: Settings, check_key: Callable[[str | None], str | None],
                 cap: Callable[[str, str], int]) -> None:
        self.app, self.settings, self.check_key, self.cap = app, settings, check_key, cap
        self.refusals = Pacer(REFUSALS_PER_SECOND)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if scope.get(UNIX_PEER) is not None:  # on our Unix socket: mode 0600 and the peer's uid checked (unix.py)
            owner: str | None = "local"
        elif not self.settings.auth_required:
            if not local_only(scope):
                await reply(send, 403, "forbidden", "this server has no API key configured and answers only loopback "
                            "clients addressing it as localhost, 127.0.0.1 or [::1]")
                return
            owner = "local"
        elif is_public(path):
            owner = None
        else:
            given = path_key(path) if path.startswith("/k/") else header_key(scope)
            owner = self.check_key(given)
            if owner is None:
                client = scope.get("client")
                await self.refusals.turn("address " + (client[0] if client else "?"))
                await reply(send, 401, "unauthorized", "a valid API key is required (Authorization: Bearer KEY)"
                            if given is None else "the API key is not valid", {"WWW-Authenticate": "Bearer"})
                return
        limit = self.cap(method, path)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit():
                    await reply(send, 400, "bad_request", "invalid Content-Length")
                    return
                if int(value) > limit:
                    await reply(send, 413, "too_large", f"the request body is over the {limit} bytes this route accepts")
                    return
        if owner is not None:
            scope["state"] = {**scope.get("state", {}), OWNER: owner}
            send = self._paced(owner, send)
        scope["sandbox_body_cap"] = limit
        seen = 0

        async def capped_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, capped_receive, send)


    def _paced(self, owner: str, send: Send) -> Send:
        """`send`, with this key's 429 answers paced (see the module's docstring)."""
        async def paced_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 429:
                await self.refusals.turn("key " + owner)
            await send(message)
        return paced_send


async def reply(send: Send, status: int, type: str, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(type, message)).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})
