"""The MCP server: a `run_python` tool over the engine, for `sandbox mcp` (stdio) and `/mcp` (streamable
HTTP on the service, behind its bearer auth).

The tool returns a text block (outcome, stdout, stderr, the error in a few lines), one image block per
figure, and the result document as structured content; `is_error` is set when the outcome is not ok.
A call the engine refuses (bad file name, queue full) is a tool error a model can read and fix, not a
protocol error.
"""

# No `from __future__ import annotations`: the tool's type hints are its schema, evaluated here.

import argparse
import asyncio
import base64
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, ImageContent, TextContent
from pydantic import Field
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..client import AsyncSandbox
from ..errors import QueueFullError, SandboxError
from ..limits import Limits
from ..results import Result

TEXT_TAIL = 20_000        # characters of stdout/stderr in the text block (the structured content has all of it)
TRACEBACK_LINES = 6


@dataclass(frozen=True)
class Engine:
    """What the tools read from the lifespan context."""

    sandbox: AsyncSandbox


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
        "plt.show() (or leave them open). Each call starts from a clean interpreter: no state is kept "
        "between calls, so redefine what you need."
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
    blocks: list[Any] = [TextContent(text="\n".join(lines))]
    blocks += [ImageContent(data=base64.b64encode(i.data).decode(), mime_type=i.mime_type) for i in result.images]
    return CallToolResult(content=blocks, structured_content=result.to_dict(), is_error=not result.ok)


def tool_error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(text=message)], is_error=True)


def build(lifespan: Callable[[MCPServer[Engine]], AbstractAsyncContextManager[Engine]], manifest: dict[str, Any],
          limits: Limits) -> MCPServer[Engine]:
    """The MCP server with its tools; `lifespan` provides the sandbox."""
    server: MCPServer[Engine] = MCPServer("sandbox", version=__version__, lifespan=lifespan, log_level="WARNING",
                                          instructions="Run Python in an isolated sandbox with the scientific stack.")
    max_timeout = float(limits.timeout_seconds)

    async def run_python(
        code: Annotated[str, Field(description="Python source to run, as a script (print what you want to see)")],
        ctx: Context[Engine, Any],
        files: Annotated[dict[str, str] | None, Field(
            description="input files: relative file name -> text content, placed in the working directory")] = None,
        timeout: Annotated[float | None, Field(gt=0, le=max_timeout,
                                               description=f"wall clock limit in seconds (at most {max_timeout:g})")] = None,
    ) -> CallToolResult:
        sandbox = ctx.request_context.lifespan_context.sandbox
        try:
            result = await sandbox.run(code, files, timeout=timeout)
        except QueueFullError as exc:
            return tool_error(f"the sandbox is busy ({exc}); try again in a moment")
        except SandboxError as exc:
            return tool_error(f"the run was refused: {exc}")
        return result_content(result)

    server.add_tool(run_python, description=describe_environment(manifest, limits), title="Run Python")
    return server


class Mounted:
    """`/mcp` on the HTTP app: the SDK's streamable HTTP transport behind the app's own key check."""

    def __init__(self, app: Any, manifest: dict[str, Any], limits: Limits) -> None:
        @asynccontextmanager
        async def from_app(_: MCPServer[Engine]) -> AsyncIterator[Engine]:
            yield Engine(app.state.sandbox)

        self.server = build(from_app, manifest, limits)
        # The app checks keys and (without keys) the Host header itself, so the SDK's loopback-only
        # DNS-rebinding guard would only refuse legitimate hosts when the server listens publicly.
        self.server.streamable_http_app(transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=False), max_request_body_size=app.state.settings.max_body_bytes)

    def lifespan(self, app: Any) -> AbstractAsyncContextManager[None]:
        return self.server.session_manager.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from .deps import authorize
        from .errors import ApiError, error_response

        try:
            authorize(Request(scope), _bearer(scope))
        except ApiError as exc:
            await error_response(exc.status_code, exc.type, exc.message, exc.headers)(scope, receive, send)
            return
        await self.server.session_manager.handle_request(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


# `sandbox mcp`: stdio, with a sandbox of its own.

def cmd_mcp(args: argparse.Namespace) -> int:
    from .. import image as images

    try:
        manifest = images.load_any(args.image).manifest
        limits = Limits.from_policy()
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 3

    @asynccontextmanager
    async def own_sandbox(_: MCPServer[Engine]) -> AsyncIterator[Engine]:
        async with AsyncSandbox(args.slots, image=args.image) as sb:
            yield Engine(sb)

    server = build(own_sandbox, manifest, limits)
    try:
        asyncio.run(server.run_stdio_async())
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        pass
    return 0
