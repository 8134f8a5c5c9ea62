"""The MCP server over the engine, for `sandbox mcp` (stdio) and `/mcp` (streamable HTTP on the service,
behind its bearer auth). Tools: `run_python(code, files?, session_id?, timeout?)`, and for stateful work
`create_session`, `close_session`, `list_files`, `read_file`, `upload_file`.

`run_python` returns a text block (outcome, stdout, stderr, the error in a few lines), one image block
per figure, and the result document as structured content; `is_error` is set when the outcome is not
ok. A call the engine refuses (bad file name, queue full, an ended session) is a tool error a model can
read and fix, not a protocol error.

Sessions are the HTTP API's (`sessions.Sessions`): over HTTP each belongs to the key of the request
that made it (another key's session is "no such session"); over stdio the one local caller owns all.
"""

# No `from __future__ import annotations`: the tool's type hints are its schema, evaluated here.

import argparse
import asyncio
import base64
import binascii
import json
import mimetypes
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, EmbeddedResource, ImageContent, TextContent, TextResourceContents
from pydantic import Field
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..client import AsyncSandbox, image_manifest
from ..errors import QueueFullError, SandboxError
from ..limits import Limits
from ..results import DisplayOutput, Result
from .deps import LOCAL_OWNER
from .errors import ApiError
from .sessions import Sessions

TEXT_TAIL = 20_000        # characters of stdout/stderr in the text block (the structured content has all of it)
TRACEBACK_LINES = 6
READ_MAX = 4 << 20        # largest file read_file returns (a model's context is far smaller anyway)
IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
OWNER = "sandbox_owner"   # the key's owner id, in the request's scope state (set by Mounted)
T = TypeVar("T")


@dataclass(frozen=True)
class Engine:
    """What the tools read from the lifespan context."""

    sandbox: AsyncSandbox
    sessions: Sessions


def describe_environment(manifest: dict[str, Any], limits: Limits) -> str:
    """The tool description: what a model can count on inside the sandbox."""
    preload = sorted({m.split(".")[0] for m in manifest.get("preload", [])} | {"matplotlib"}, key=str.lower)
    return (
        f"Run Python {manifest.get('python_version', '3')} code in a fresh, isolated sandbox and get back its "
        "stdout, stderr, the error if any, every matplotlib figure as an image, and the files it wrote.\n"
        f"Installed and already imported: {', '.join(preload)}. Other installed packages: "
        f"{', '.join(sorted(set(manifest.get('packages', {})) - set(preload) - {'pip', 'setuptools', 'pyseccomp'}))}.\n"
        f"Limits: {limits.timeout_seconds:g} s wall clock by default (lower it with `timeout`), "
        f"{limits.memory_bytes >> 20} MiB of memory, no network access, nothing can be installed.\n"
        "Files given in `files` (name -> text content) are in the working directory: open them by their "
        "relative name. Files the code writes in the working directory come back. Show figures with "
        "plt.show() (or leave them open). Without `session_id` each call starts from a clean interpreter "
        "and keeps nothing. With a `session_id` from create_session, variables, imports, functions and the "
        "working directory's files carry over from call to call, like cells of one notebook."
    )


def result_content(result: Result) -> CallToolResult:
    """Text + image blocks + the result document, `is_error` unless the outcome is ok."""
    lines = [f"outcome: {result.outcome.value} (exit code {result.exit_code}, {result.usage.wall_ms:.0f} ms)"]
    for name, text, cut in (("stdout", result.stdout, result.stdout_truncated),
                            ("stderr", result.stderr, result.stderr_truncated)):
        if text:
            shown = text if len(text) <= TEXT_TAIL else "...\n" + text[-TEXT_TAIL:]
            lines.append(f"--- {name}{' (truncated)' if cut or len(text) > TEXT_TAIL else ''} ---\n{shown.rstrip()}")
    if result.error is not None:
        e = result.error
        tb = "\n".join(e.traceback.strip().splitlines()[-TRACEBACK_LINES:]) if e.traceback else ""
        where = f" (line {e.line})" if e.line is not None else ""
        lines.append(f"--- error ---\n{e.type}: {e.message}{where}" + (f"\n{tb}" if tb else ""))
    if result.files:
        lines.append("files written: " + ", ".join(f"{f.path} ({f.size} bytes)" for f in result.files))
    if result.images:
        lines.append(f"figures: {len(result.images)} (as images below)")
    for chart in result.charts:
        lines.append("--- chart data ---\n" + json.dumps(chart)[:CHART_CHARS])
    blocks: list[Any] = [TextContent(text="\n".join(lines))]
    blocks += [ImageContent(data=base64.b64encode(i.data).decode(), mime_type=i.mime_type) for i in result.images]
    for n, o in enumerate(result.outputs, 1):
        blocks += output_blocks(n, o)
    return CallToolResult(content=blocks, structured_content=result.to_dict(), is_error=not result.ok)


CHART_CHARS = 4000


def output_blocks(n: int, output: DisplayOutput) -> list[Any]:
    """A rich output as MCP content: its markdown (else its text) as a text block, its image as an
    image block, its HTML as an embedded resource (the program's HTML: a client shows it sandboxed)."""
    what = "result" if output.main else f"output {n}"
    note = " (truncated)" if output.truncated else ""
    blocks: list[Any] = [TextContent(text=f"--- {what}{note} ---\n{output.markdown or output.text}")]
    for mime in ("image/png", "image/jpeg"):
        if mime in output.data:
            blocks.append(ImageContent(data=base64.b64encode(output.data[mime]).decode(), mime_type=mime))
    if output.html is not None:
        blocks.append(EmbeddedResource(type="resource", resource=TextResourceContents(
            uri=f"sandbox://outputs/{n}.html", mime_type="text/html", text=output.html)))
    return blocks


def tool_error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(text=message)], is_error=True)


def caller(ctx: Context[Engine, Any]) -> str:
    """The owner id of the caller: over HTTP the key of this request (Mounted checked it and put its
    owner id in the scope); over stdio, the local user. An HTTP request without one is refused."""
    request = ctx.request_context.request
    if request is None:
        return LOCAL_OWNER
    owner = request.scope.get("state", {}).get(OWNER)
    if not owner:
        raise ApiError(401, "unauthorized", "no API key on this request")
    return owner


# ---- the tools ------------------------------------------------------------------------------------
# Each tool's type hints are its schema. A refusal (bad input, no such session, a quota, a full queue)
# is a tool error a model can read, never a protocol error.

SessionId = Annotated[str, Field(min_length=1, max_length=128, description="a session_id from create_session")]
SessionPath = Annotated[str, Field(min_length=1, max_length=4096, description="relative path in the working directory")]


def _engine(ctx: Context[Engine, Any]) -> Engine:
    return ctx.request_context.lifespan_context


def refusal(exc: ApiError | SandboxError, what: str = "") -> CallToolResult:
    """A tool error for a refused call: an ApiError's own message (no such session, a quota), or the
    engine's reason after `what`."""
    if isinstance(exc, ApiError):
        return tool_error(exc.message)
    return tool_error(f"{what}{exc}")


async def _in_session(ctx: Context[Engine, Any], session_id: str, op: Callable[[Any], Awaitable[T]]) -> T:
    """`op(session)` on the caller's session, in its turn (one call at a time per session)."""
    engine = _engine(ctx)
    with engine.sessions.call(caller(ctx), session_id) as session:
        async with engine.sessions.turn(caller(ctx), session):
            return await op(session)


async def _run_in_session(engine: Engine, owner: str, session_id: str, code: str, files: dict[str, str] | None,
                          timeout: float | None, packages: list[str] | None) -> tuple[Result, Any]:
    """Install `packages` in the session (in its turn), then run `code` there: the result, and the
    session (closed if this call ended it)."""
    with engine.sessions.call(owner, session_id) as session:
        if packages:
            async with engine.sessions.turn(owner, session):
                await session.install(packages)
        result = await engine.sessions.run(session, code, files, owner=owner, timeout=timeout)
    return result, session


def run_python_tool(max_timeout: float) -> Callable[..., Awaitable[CallToolResult]]:
    """The `run_python` tool; its `timeout` hint carries this server's limit, so it is made per server."""

    async def run_python(
        code: Annotated[str, Field(description="Python source to run, as a script (print what you want to see)")],
        ctx: Context[Engine, Any],
        files: Annotated[dict[str, str] | None, Field(
            description="input files: relative file name -> text content, placed in the working directory")] = None,
        session_id: Annotated[str | None, Field(
            max_length=128, description="run in this session (from create_session) to keep state; "
                                        "omit for a fresh interpreter")] = None,
        timeout: Annotated[float | None, Field(gt=0, le=max_timeout,
                                               description=f"wall clock limit in seconds (at most {max_timeout:g})")] = None,
        packages: Annotated[list[str] | None, Field(
            max_length=64, description="extra Python packages to install first, e.g. [\"humanize\"], from the "
                                       "sandbox's allow-list (in a session: kept for its later runs)")] = None,
    ) -> CallToolResult:
        engine = _engine(ctx)
        try:
            owner = caller(ctx)
            if session_id is None:
                result = await engine.sessions.engine_call(owner, lambda: engine.sandbox.run(
                    code, files, timeout=timeout, packages=packages))
            else:
                result, session = await _run_in_session(engine, owner, session_id, code, files, timeout, packages)
                if session.closed:  # this call ended it (timeout, memory, crash): say so, the next call fails
                    content = result_content(result)
                    content.content[0] = TextContent(text=content.content[0].text + (
                        f"\nthe session has ended ({session.close_reason}); its state is gone: "
                        "create a new session to go on"))
                    return content
        except QueueFullError as exc:
            return tool_error(f"the sandbox is busy ({exc}); try again in a moment")
        except (ApiError, SandboxError) as exc:
            return refusal(exc, "the run was refused: ")
        return result_content(result)

    return run_python


async def create_session(
    ctx: Context[Engine, Any],
    ttl: Annotated[float | None, Field(gt=0, le=7 * 86400, description=(
        "idle seconds before the session closes by itself (default 600)"))] = None,
    packages: Annotated[list[str] | None, Field(
        max_length=64, description="extra Python packages for the whole session, from the sandbox's allow-list")] = None,
) -> CallToolResult:
    engine = _engine(ctx)
    try:
        session = await engine.sessions.create(engine.sandbox, caller(ctx), ttl, packages=packages)
    except (ApiError, SandboxError) as exc:
        return refusal(exc, "no session: ")
    doc = {"session_id": session.id, "expires_at": session.expires_at, "ttl": session.ttl}
    return CallToolResult(content=[TextContent(text=(
        f"session_id: {session.id}\nPass it to run_python, list_files, read_file and upload_file. It closes "
        f"after {session.ttl:g} s without a call, or with close_session."))], structured_content=doc)


async def close_session(session_id: SessionId, ctx: Context[Engine, Any]) -> CallToolResult:
    try:
        await _engine(ctx).sessions.close(caller(ctx), session_id)
    except ApiError as exc:
        return refusal(exc)
    return CallToolResult(content=[TextContent(text=f"session {session_id} is closed")],
                          structured_content={"session_id": session_id, "closed": True})


async def list_files(session_id: SessionId, ctx: Context[Engine, Any]) -> CallToolResult:
    try:
        found = await _in_session(ctx, session_id, lambda session: session.files())
    except (ApiError, SandboxError) as exc:
        return refusal(exc)
    lines = [f"{f.path} ({f.size} bytes, {f.mime_type})" for f in found] or ["(no files)"]
    return CallToolResult(content=[TextContent(text="\n".join(lines))],
                          structured_content={"files": [f.to_dict() for f in found]})


async def read_file(session_id: SessionId, path: SessionPath, ctx: Context[Engine, Any]) -> CallToolResult:
    try:
        data = await _in_session(ctx, session_id, lambda session: session.read_file(path))
    except (ApiError, SandboxError) as exc:
        return refusal(exc)
    if len(data) > READ_MAX:
        return tool_error(f"{path} is {len(data)} bytes, more than the {READ_MAX} this tool returns: "
                          "print the part you need with run_python instead")
    return file_content(path, data)


def file_content(path: str, data: bytes) -> CallToolResult:
    """A session's file as MCP content: an image as an image block, UTF-8 text as text, anything else
    as base64 text; its path, size and type as structured content."""
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    doc = {"path": path, "size": len(data), "mime_type": mime}
    if mime in IMAGE_TYPES:
        return CallToolResult(content=[ImageContent(data=base64.b64encode(data).decode(), mime_type=mime)],
                              structured_content=doc)
    try:
        return CallToolResult(content=[TextContent(text=data.decode("utf-8"))], structured_content=doc)
    except UnicodeDecodeError:
        return CallToolResult(content=[TextContent(text=(
            f"{path}: {len(data)} bytes of binary data ({mime}), base64:\n{base64.b64encode(data).decode()}"))],
            structured_content=doc)


async def upload_file(
    session_id: SessionId,
    path: SessionPath,
    content: Annotated[str, Field(description="the file's content: text, or base64 when encoding is base64")],
    ctx: Context[Engine, Any],
    encoding: Annotated[Literal["text", "base64"], Field(
        description="how content is given: text (written as UTF-8), or base64 for binary files")] = "text",
) -> CallToolResult:
    try:
        data = base64.b64decode(content, validate=True) if encoding == "base64" else content.encode()
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return tool_error("content is not valid base64" if encoding == "base64" else "content is not valid text")
    try:
        await _in_session(ctx, session_id, lambda session: session.write_file(path, data))
    except (ApiError, SandboxError) as exc:
        return refusal(exc, "not written: ")
    return CallToolResult(content=[TextContent(text=f"wrote {path} ({len(data)} bytes)")],
                          structured_content={"path": path, "size": len(data)})


# The session tools, in the order a client lists them: (tool, title, description).
SESSION_TOOLS = (
    (create_session, "Create a session",
     "Open a stateful Python session: runs given its session_id share variables, imports and files, "
     "like cells of one notebook. Returns the session_id. Close it with close_session when done."),
    (close_session, "Close a session", "Close a session: its interpreter and files are gone."),
    (list_files, "List a session's files", "The files in a session's working directory: path, size, type."),
    (read_file, "Read a session's file",
     "Read one file of a session's working directory: text as text, an image as an image, other "
     "binary data as base64."),
    (upload_file, "Upload a file to a session",
     "Write a file into a session's working directory (text, or base64 with encoding=base64), for "
     "run_python to open by its relative path."),
)


def build(lifespan: Callable[[MCPServer[Engine]], AbstractAsyncContextManager[Engine]], manifest: dict[str, Any],
          limits: Limits) -> MCPServer[Engine]:
    """The MCP server with its tools; `lifespan` provides the sandbox and the session registry."""
    server: MCPServer[Engine] = MCPServer("sandbox", version=__version__, lifespan=lifespan, log_level="WARNING",
                                          instructions="Run Python in an isolated sandbox with the scientific stack. "
                                                       "Use a session to keep state between runs.")
    server.add_tool(run_python_tool(float(limits.timeout_seconds)), description=describe_environment(manifest, limits),
                    title="Run Python")
    for tool, title, description in SESSION_TOOLS:
        server.add_tool(tool, title=title, description=description)
    return server


class Mounted:
    """`/mcp` on the HTTP app: the SDK's streamable HTTP transport behind the app's own key check."""

    def __init__(self, app: Any, manifest: dict[str, Any], limits: Limits) -> None:
        @asynccontextmanager
        async def from_app(_: MCPServer[Engine]) -> AsyncIterator[Engine]:
            yield Engine(app.state.sandbox, app.state.sessions)

        self.server = build(from_app, manifest, limits)
        settings = app.state.settings
        self.per_key = settings.max_mcp_sessions_per_key
        self.retry_after = settings.retry_after_seconds
        self._opening: dict[str, int] = {}   # initialize requests in flight, per owner
        # The app checks keys and (without keys) the Host header itself, so the SDK's loopback-only
        # DNS-rebinding guard would only refuse legitimate hosts when the server listens publicly.
        self.server.streamable_http_app(transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=False), max_request_body_size=settings.max_body_bytes)

    def lifespan(self, app: Any) -> AbstractAsyncContextManager[None]:
        return self.server.session_manager.run()

    def sessions_of(self, owner: str) -> int:
        """MCP sessions open for `owner`, as the SDK records them (the owner each was bound to)."""
        owners = getattr(self.server.session_manager, "_session_owners", {})
        return sum(1 for who in owners.values() if who.get("client_id") == owner)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from .deps import authorize
        from .errors import error_response

        try:  # the app's Gate has checked the key already and left its owner id in the scope
            owner = scope.get("state", {}).get(OWNER) or authorize(Request(scope), _bearer(scope))
        except ApiError as exc:
            await error_response(exc.status_code, exc.type, exc.message, exc.headers)(scope, receive, send)
            return
        # The tools read the caller from here (the SDK hands them a Request on this same scope).
        scope["state"] = {**scope.get("state", {}), OWNER: owner}
        # The SDK binds each MCP session to this principal: another key's Mcp-Session-Id is "not found".
        scope["user"] = AuthenticatedUser(AccessToken(token="owner:" + owner, client_id=owner, scopes=[]))
        opening = scope.get("method") == "POST" and not any(n == b"mcp-session-id" for n, _ in scope.get("headers", ()))
        if not opening:
            await self.server.session_manager.handle_request(scope, receive, send)
            return
        # Counted and taken in one step (no await between): concurrent initializes cannot pass the cap together.
        held = self.sessions_of(owner) + self._opening.get(owner, 0)
        if held >= self.per_key:
            await error_response(429, "session_limit", f"this key has {held} MCP sessions open, the most this server "
                                 "allows one key: end one (DELETE /mcp with its Mcp-Session-Id) or let it expire",
                                 {"Retry-After": str(self.retry_after)})(scope, receive, send)
            return
        with _counted(self._opening, owner):
            await self.server.session_manager.handle_request(scope, receive, send)


@contextmanager
def _counted(counts: dict[str, int], key: str) -> Iterator[None]:
    """`counts[key]` one higher while the block runs; the key goes when its count is back to 0."""
    counts[key] = counts.get(key, 0) + 1
    try:
        yield
    finally:
        left = counts[key] - 1
        if left:
            counts[key] = left
        else:
            del counts[key]


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


# `sandbox mcp`: stdio, with a sandbox of its own.

def cmd_mcp(args: argparse.Namespace) -> int:
    try:
        manifest = image_manifest(args.image)
        limits = Limits.from_policy()
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 3

    @asynccontextmanager
    async def own_sandbox(_: MCPServer[Engine]) -> AsyncIterator[Engine]:
        async with AsyncSandbox(args.slots, image=args.image) as sb:
            yield Engine(sb, Sessions())

    server = build(own_sandbox, manifest, limits)
    try:
        asyncio.run(server.run_stdio_async())
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        pass
    return 0
