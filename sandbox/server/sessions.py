"""`/v1/sessions`: stateful sessions over HTTP, each owned by the API key that made it.

    POST   /v1/sessions                      {ttl?, limits?} -> 201 {session_id, expires_at, ttl}
    GET    /v1/sessions                      -> {sessions: [...]}, this key's open sessions
    GET    /v1/sessions/{id}                 -> {session_id, expires_at, ttl}
    DELETE /v1/sessions/{id}                 -> 204
    POST   /v1/sessions/{id}/execute         the body and answers of /v1/execute (NDJSON too); state carries over
    GET    /v1/sessions/{id}/files           -> {files: [{path, size, mime_type}]}
    PUT    /v1/sessions/{id}/files/{path}    raw bytes -> {path, size}
    GET    /v1/sessions/{id}/files/{path}    -> raw bytes (application/octet-stream, as an attachment)
    DELETE /v1/sessions/{id}/files/{path}    -> 204

`expires_at` is Unix epoch seconds (a number, UTC): when the session closes if left idle; every call
moves it. The engine keeps the sessions; `Sessions` here only knows who owns which, and why one ended.
A session of another key answers exactly as an unknown one (404), so ids cannot be probed; the
caller's own session that has ended answers 410 with the reason while the server remembers it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import mimetypes
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Depends, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from .. import AsyncSession, RunCancelledError, SessionClosedError, SessionLimitError
from ..client import AsyncSandbox
from ..results import Output, Result
from .deps import OwnerDep, SandboxDep, require_key
from .errors import ApiError
from .metrics import Metrics
from .quotas import Places
from .runs import (NDJSON, RESULT_EXAMPLE, Abandoned, ExecuteRequest, abandoned_response, check_ceiling,
                   decode_files, ndjson, until_answered, wants_stream)

log = logging.getLogger("sandbox.server")
ENDED_KEPT = 4096          # ended sessions remembered (for a 410 with the reason) before they are a plain 404
NOT_FOUND = "no such session (unknown, or not this key's)"
LOCAL = "local"            # the owner of calls made without a key (stdio MCP, a loopback server without keys)
T = TypeVar("T")
E = TypeVar("E")


@dataclass
class _Owned:
    owner: str
    session: AsyncSession


class Sessions:
    """Which key owns which open session, and why the recently ended ones ended. One per app (and one
    per `sandbox mcp`); the routes and the MCP tools share it. `metrics`, when given, counts the runs."""

    def __init__(self, max_per_owner: int = 0, metrics: Metrics | None = None, *, runs_per_owner: int = 0,
                 waiting_per_owner: int = 0, waiting_per_session: int = 4, retry_after: int = 1,
                 share_window: float = 0) -> None:
        self.max_per_owner = max_per_owner      # 0: only the engine's own cap
        self.metrics = metrics
        self._open: dict[str, _Owned] = {}
        self._opening: dict[str, int] = {}     # sessions being made, per owner: counted against the cap at once
        self._ended: OrderedDict[str, tuple[str, str]] = OrderedDict()   # id -> (owner, reason)
        # Sessions a peer route made on its caller's behalf (a LibreChat session's interpreter, an E2B
        # key's default context), least recently used first: at the key's cap an idle one gives way.
        self._implicit: OrderedDict[str, Callable[[], None]] = OrderedDict()   # id -> forget
        self._closing: set[asyncio.Future[None]] = set()
        self.in_flight = 0      # session calls running now (the shutdown waits for them, then kills them)
        # Every stateless call a key makes into the pool holds one of its `runs` places; a session's
        # calls queue for their session's one turn instead (on the loop, not a thread).
        self.runs: Places | None = Places(runs_per_owner, waiting_per_owner, "calls of this key in the engine",
                                          retry_after, share_window) if runs_per_owner else None
        self.turns = Places(1, waiting_per_session, "calls of this session", retry_after)

    async def create(self, sb: AsyncSandbox, owner: str, ttl: float | None = None,
                     limits: Mapping[str, Any] | None = None, packages: list[str] | None = None) -> AsyncSession:
        self.prune()
        if self.max_per_owner:  # counted and taken in one step: no await between the check and the count
            mine = [o.session for o in self._open.values() if o.owner == owner]
            if len(mine) + self._opening.get(owner, 0) >= self.max_per_owner and self._make_room(owner) is not None:
                mine = [o.session for o in self._open.values() if o.owner == owner]
            if len(mine) + self._opening.get(owner, 0) >= self.max_per_owner:
                raise ApiError(429, "session_limit", f"this key has {len(mine) + self._opening.get(owner, 0)} "
                               "sessions open, the most this server allows one key: close one "
                               "(DELETE /v1/sessions/{id}) or wait until one expires",
                               {"Retry-After": _retry_after(mine)})
        self._opening[owner] = self._opening.get(owner, 0) + 1
        try:
            try:
                session = await sb.session(ttl, limits=limits, packages=packages)
            except SessionLimitError:
                # The engine's own room (its session count, memory and process budget) is full: an idle
                # session made on this key's behalf gives way, if it has one, and the engine is asked again.
                closing = self._make_room(owner)
                if closing is None:
                    raise
                await asyncio.wait({closing})
                session = await sb.session(ttl, limits=limits, packages=packages)
        except SessionLimitError as exc:
            raise ApiError(429, "session_limit", str(exc),
                           {"Retry-After": _retry_after([o.session for o in self._open.values()])}) from None
        finally:
            left = self._opening[owner] - 1
            if left:
                self._opening[owner] = left
            else:
                del self._opening[owner]
        self._open[session.id] = _Owned(owner, session)
        return session

    def implicit(self, session_id: str, forget: Callable[[], None]) -> None:
        """Mark the session as made on its caller's behalf (and as just used): at its key's cap, the
        least recently used idle one is closed to make room, and `forget()` tells its peer route."""
        self._implicit[session_id] = forget
        self._implicit.move_to_end(session_id)

    def _make_room(self, owner: str) -> asyncio.Future[None] | None:
        """Close `owner`'s least recently used idle implicit session, if it has one (at once for the
        count; the engine's close finishes in the background: the returned task)."""
        for sid in self._implicit:
            owned = self._open.get(sid)
            if owned is not None and owned.owner == owner and not self.turns.held(sid):
                break
        else:
            return None
        forget = self._implicit.pop(sid)
        forget()
        self._forget(sid, "closed to make room for another session of its key (it was idle, made on its behalf)")
        task = asyncio.ensure_future(owned.session.close())
        self._closing.add(task)
        task.add_done_callback(_closed)
        task.add_done_callback(self._closing.discard)
        return task

    async def engine_call(self, owner: str, call: Callable[[], Awaitable[T]]) -> T:
        """A stateless call of `owner` into the engine, holding one of the key's places."""
        return await (self.runs.run(owner, call) if self.runs is not None else call())

    def engine_stream(self, owner: str, events: AsyncIterator[E]) -> AsyncIterator[E]:
        return self.runs.stream(owner, events) if self.runs is not None else events

    def get(self, owner: str, session_id: str) -> AsyncSession:
        """The caller's open session; ApiError 404 if there is none by that id for this key, 410 if it ended."""
        owned = self._open.get(session_id)
        if owned is None or owned.owner != owner:
            ended = self._ended.get(session_id)
            if ended is not None and ended[0] == owner:
                raise _gone(ended[1])
            raise ApiError(404, "not_found", NOT_FOUND)
        if owned.session.closed or _expired(owned.session):
            self._forget(session_id, _reason(owned.session))
            raise _gone(self._ended[session_id][1])
        return owned.session

    @contextmanager
    def call(self, owner: str, session_id: str) -> Iterator[AsyncSession]:
        """The caller's session for one call: a SessionClosedError from the engine becomes a 410 (the
        session ended meanwhile), and a session the call ended is remembered as ended."""
        session = self.get(owner, session_id)
        try:
            yield session
        except SessionClosedError as exc:
            self._forget(session_id, str(exc) or _reason(session))
            raise _gone(self._ended[session_id][1]) from None
        except RunCancelledError:  # closed (DELETE, ttl, shutdown) while this call ran: the call was killed
            self._forget(session_id, _reason(session))
            raise _gone(f"{self._ended[session_id][1]}, while this call ran (it was killed)") from None
        finally:
            if session.closed:
                self._forget(session_id, _reason(session))

    async def close(self, owner: str, session_id: str) -> None:
        """Close the caller's session; closing one that has ended already is not an error."""
        try:
            session = self.get(owner, session_id)
        except ApiError as exc:
            if exc.status_code == 410:
                return
            raise
        await session.close()
        self._forget(session_id, "closed by its owner")

    def abandoned(self, session_id: str) -> None:
        """A call of the session was killed because its client left: the engine ends a session whose call
        is cancelled, so it is ended here at once, and closed (which waits for the killed call), so that
        a next call is a 410 and never races the engine's own ending of it."""
        owned = self._open.get(session_id)
        if owned is None:
            return
        self._forget(session_id, "a call was cancelled because its client disconnected, and the session ended")
        task = asyncio.ensure_future(owned.session.close())
        self._closing.add(task)
        task.add_done_callback(_closed)
        task.add_done_callback(self._closing.discard)

    @asynccontextmanager
    async def turn(self, owner: str, session: AsyncSession) -> AsyncIterator[None]:
        """The session's one turn, waited for on the event loop: beyond the waiters allowed, ApiError 429
        at once, never a parked thread. A session's call takes none of the key's `runs` places: those
        are the pool's slots' share (one per slot by default), which a session call does not use, and a
        key's session calls are bounded anyway (one at a time per session, its sessions capped)."""
        async with self.turns.hold(session.id):
            yield

    async def run(self, session: AsyncSession, code: str, files: Mapping[str, bytes | str] | None = None,
                  owner: str = LOCAL, started: Callable[[], None] | None = None, **kwargs: Any) -> Result:
        """The call, once it has its turn (`started` is called then)."""
        async with self.turn(owner, session):
            if started is not None:
                started()
            call = session.run(code, files, **kwargs)
            self.in_flight += 1
            try:
                return await (self.metrics.run(call) if self.metrics is not None else call)
            finally:
                self.in_flight -= 1

    async def stream(self, session: AsyncSession, code: str, files: Mapping[str, bytes | str] | None = None,
                     owner: str = LOCAL, started: Callable[[], None] | None = None,
                     **kwargs: Any) -> AsyncIterator[Output | Result]:
        async with self.turn(owner, session):
            if started is not None:
                started()
            events = session.stream(code, files, **kwargs)
            if self.metrics is not None:
                events = self.metrics.stream(events)
            self.in_flight += 1
            try:
                async with aclosing(events):  # type: ignore[type-var]
                    async for event in events:
                        yield event
            finally:
                self.in_flight -= 1

    def owned_by(self, owner: str) -> list[AsyncSession]:
        self.prune()
        return [o.session for o in self._open.values() if o.owner == owner]

    def count(self) -> int:
        self.prune()
        return len(self._open)

    def prune(self) -> None:
        """Forget sessions the engine has ended (closed, or idle past their ttl)."""
        for sid, owned in list(self._open.items()):
            if owned.session.closed or _expired(owned.session):
                self._forget(sid, _reason(owned.session))

    def clear(self) -> None:
        self._open.clear()
        self._ended.clear()

    def _forget(self, session_id: str, reason: str) -> None:
        self._implicit.pop(session_id, None)
        owned = self._open.pop(session_id, None)
        if owned is not None:
            self._ended[session_id] = (owned.owner, reason)
            while len(self._ended) > ENDED_KEPT:
                self._ended.popitem(last=False)


def _closed(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("closing an abandoned session failed: %s", task.exception())


def _expired(session: AsyncSession) -> bool:
    return not session.closed and session.expires_at < time.time() - 1  # a second's grace for the engine's clock


def _reason(session: AsyncSession) -> str:
    if session.close_reason:
        return session.close_reason
    return "idle for longer than its ttl" if _expired(session) else "closed"


def _gone(reason: str) -> ApiError:
    return ApiError(410, "session_closed", f"the session has ended: {reason}")


def _retry_after(sessions: list[AsyncSession]) -> str:
    """Seconds until the first of `sessions` expires if left idle (1 to 3600)."""
    now = time.time()
    soonest = min((s.expires_at - now for s in sessions if not s.closed), default=1.0)
    return str(min(3600, max(1, math.ceil(soonest))))


def get_sessions(request: Request) -> Sessions:
    return request.app.state.sessions


SessionsDep = Annotated[Sessions, Depends(get_sessions)]
SessionId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$",
                                description="the session_id from POST /v1/sessions")]
FilePath = Annotated[str, Path(min_length=1, max_length=4096,
                               description="a relative path in the session's working directory, e.g. data/a.csv")]


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl: float | None = Field(default=None, gt=0, le=7 * 86400,
                              description="idle seconds before the session closes (default: the server's policy, 600)")
    limits: dict[str, int | float] | None = Field(
        default=None, description="the session's limits over the server's defaults (memory_bytes, max_processes...), "
                                  "fixed for its life; each call may still set its own timeout and output caps")
    packages: list[str] | None = Field(
        default=None, max_length=64,
        description="packages from the server's allow-list for the whole session, e.g. [\"humanize\"] "
                    "(POST /v1/sessions/{id}/packages adds more later)")


class InstallPackages(BaseModel):
    model_config = ConfigDict(extra="forbid")

    packages: list[str] = Field(min_length=1, max_length=64, description="packages to add, e.g. [\"polars>=1\"]")


class InstalledPackages(BaseModel):
    packages: dict[str, str] = Field(description="what the session has beyond the image: name -> version")


class SessionInfo(BaseModel):
    session_id: str = Field(description="random and unguessable; only the key that made it can use it")
    expires_at: float = Field(description="when the session closes if left idle, as Unix epoch seconds (UTC); "
                                          "every call moves it")
    ttl: float = Field(description="idle seconds before the session closes")


class SessionList(BaseModel):
    sessions: list[SessionInfo]


class FileEntry(BaseModel):
    path: str
    size: int
    mime_type: str


class FileList(BaseModel):
    files: list[FileEntry]


def _info(session: AsyncSession) -> SessionInfo:
    return SessionInfo(session_id=session.id, expires_at=session.expires_at, ttl=session.ttl)


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no or wrong API key"},
    404: {"description": "no such session for this key (another key's session is a 404 too)"},
    410: {"description": "the session has ended; the message says why"},
}

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], dependencies=[Depends(require_key)])


@router.post("", status_code=201, response_model=SessionInfo, summary="Open a stateful session",
             responses={401: ERRORS[401], 422: {"description": "invalid ttl or limits"},
                        429: {"description": "too many sessions open (server-wide or for this key); see Retry-After"},
                        503: {"description": "engine unavailable"}})
async def create(sb: SandboxDep, owner: OwnerDep, sessions: SessionsDep, request: Request,
                 body: Annotated[CreateSession | None, Body()] = None) -> SessionInfo:
    body = body or CreateSession()
    check_ceiling(request.app.state.ceiling, None, body.limits)
    session = await sessions.create(sb, owner, body.ttl, body.limits, body.packages)
    return _info(session)


@router.post("/{session_id}/packages", response_model=InstalledPackages,
             summary="Add packages to the session for the rest of its life (from the server's allow-list)",
             responses={**ERRORS, 422: {"description": "a package is not allowed, has no wheel or conflicts"}})
async def install(session_id: SessionId, body: InstallPackages, owner: OwnerDep,
                  sessions: SessionsDep) -> InstalledPackages:
    with sessions.call(owner, session_id) as session:
        async with sessions.turn(owner, session):
            installed = await session.install(body.packages)
    return InstalledPackages(packages=installed)


@router.get("", response_model=SessionList, summary="This key's open sessions", responses={401: ERRORS[401]})
async def list_sessions(owner: OwnerDep, sessions: SessionsDep) -> SessionList:
    return SessionList(sessions=[_info(s) for s in sessions.owned_by(owner)])


@router.get("/{session_id}", response_model=SessionInfo, summary="A session's expiry", responses=ERRORS)
async def info(session_id: SessionId, owner: OwnerDep, sessions: SessionsDep) -> SessionInfo:
    return _info(sessions.get(owner, session_id))


@router.delete("/{session_id}", status_code=204, response_class=Response,
               summary="Close a session (its processes and files are gone)", responses={401: ERRORS[401], 404: ERRORS[404]})
async def close(session_id: SessionId, owner: OwnerDep, sessions: SessionsDep) -> Response:
    await sessions.close(owner, session_id)
    return Response(status_code=204)


@router.post("/{session_id}/execute", response_class=Response,
             summary="Run code in the session: the body and answers of /v1/execute; state carries over",
             responses={200: {"content": {"application/json": {"example": RESULT_EXAMPLE},
                                          NDJSON: {"example": '{"type": "stdout", "text": "2\\n"}'}}},
                        **ERRORS, 413: {"description": "body over the cap"}, 422: {"description": "invalid request"},
                        429: {"description": "queue full; see Retry-After"}, 503: {"description": "engine unavailable"}})
async def execute(session_id: SessionId, body: ExecuteRequest, owner: OwnerDep, sessions: SessionsDep,
                  request: Request) -> Response:
    check_ceiling(request.app.state.ceiling, body.timeout, body.limits)
    if body.packages:
        raise ApiError(422, "invalid_input", "a session's packages are set when it opens or added with "
                       f"POST /v1/sessions/{session_id}/packages, not per call")
    files = decode_files(body.files)
    metrics = request.app.state.metrics
    ran = []

    def abandon() -> None:
        if ran:  # a call that was still waiting for its turn is dropped; one that ran ends its session
            metrics.abandoned.inc()
            sessions.abandoned(session_id)

    args: dict[str, Any] = {"stdin": body.stdin, "timeout": body.timeout, "limits": body.limits,
                            "filename": body.filename, "owner": owner, "started": lambda: ran.append(True),
                            "env": body.env, "fetch": body.fetch}
    with sessions.call(owner, session_id) as session:
        if wants_stream(request):
            return await ndjson(request, sessions.stream(session, body.code, files, **args), abandon)
        try:
            result = await until_answered(request, sessions.run(session, body.code, files, **args), abandon)
        except Abandoned:
            return abandoned_response()
    return Response(result.to_json(), media_type="application/json")


@router.get("/{session_id}/files", response_model=FileList, summary="The files in the session's working directory",
            responses=ERRORS)
async def list_files(session_id: SessionId, owner: OwnerDep, sessions: SessionsDep) -> FileList:
    with sessions.call(owner, session_id) as session:
        async with sessions.turn(owner, session):
            found = await session.files()
    return FileList(files=[FileEntry(**f.to_dict()) for f in found])


@router.put("/{session_id}/files/{path:path}", response_model=FileEntry,
            summary="Write a file into the session's working directory (the raw bytes are the body)",
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
            responses={**ERRORS, 413: {"description": "file over the cap"},
                       422: {"description": "a bad path, or the working directory is full"}})
async def put_file(session_id: SessionId, path: FilePath, owner: OwnerDep, sessions: SessionsDep,
                   request: Request) -> FileEntry:
    sessions.get(owner, session_id)  # 404/410 before reading a body for nothing
    cap = min(request.scope.get("sandbox_body_cap") or request.app.state.settings.max_body_bytes,
              request.app.state.ceiling.max_input_bytes)
    data = await _read_capped(request, cap)
    with sessions.call(owner, session_id) as session:
        async with sessions.turn(owner, session):
            await session.write_file(path, data)
    return FileEntry(path=path, size=len(data), mime_type=mimetypes.guess_type(path)[0] or "application/octet-stream")


@router.get("/{session_id}/files/{path:path}", response_class=Response, summary="Read a file (raw bytes)",
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                       **ERRORS, 422: {"description": "a bad path"}})
async def get_file(session_id: SessionId, path: FilePath, owner: OwnerDep, sessions: SessionsDep) -> Response:
    with sessions.call(owner, session_id) as session:
        async with sessions.turn(owner, session):
            data = await session.read_file(path)
    name = path.rsplit("/", 1)[-1]
    # Never rendered by a browser on this origin: the program wrote it, it may be HTML with a script.
    return Response(data, media_type="application/octet-stream", headers={
        "Content-Disposition": _attachment(name), "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox"})


@router.delete("/{session_id}/files/{path:path}", status_code=204, response_class=Response, summary="Delete a file",
               responses={**ERRORS, 422: {"description": "a bad path"}})
async def delete_file(session_id: SessionId, path: FilePath, owner: OwnerDep, sessions: SessionsDep) -> Response:
    with sessions.call(owner, session_id) as session:
        async with sessions.turn(owner, session):
            await session.delete_file(path)
    return Response(status_code=204)


async def _read_capped(request: Request, cap: int) -> bytes:
    length = request.headers.get("content-length")
    too_large = ApiError(413, "too_large", f"a file may be at most {cap} bytes on this server")
    if length is not None and length.isdigit() and int(length) > cap:
        raise too_large
    chunks, seen = [], 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > cap:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _attachment(name: str) -> str:
    from urllib.parse import quote

    ascii_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in name) or "file"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"
