"""ASGI middleware that caps request bodies before they are read: a JSON 413 at once when
Content-Length is over the cap, and a 413 as soon as a body without one passes it."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body


class BodyTooLarge(HTTPException):
    """Raised from `receive` mid-body; routes re-raise it and errors.py answers 413."""

    def __init__(self) -> None:
        super().__init__(413, "request body too large")


class BodyCap:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit():
                    await _reply(send, 400, "bad_request", "invalid Content-Length")
                    return
                if int(value) > self.max_bytes:
                    await _reply(send, 413, "too_large",
                                 f"the request body is over the {self.max_bytes} bytes this server accepts")
                    return
        seen = 0

        async def capped_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        await self.app(scope, capped_receive, send)


async def _reply(send: Send, status: int, type: str, message: str) -> None:
    body = json.dumps(error_body(type, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
