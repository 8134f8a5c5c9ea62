"""MCP with the SDK's own client: `sandbox mcp` over stdio, and `/mcp` over streamable HTTP with the
server's bearer auth; the session tools on both, and over HTTP a session belongs to the key that made it."""

from __future__ import annotations

import asyncio
import base64
import sys

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from .conftest import KEY, OTHER_KEY

PLOT = "import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])\nplt.show()\nprint(open('data.txt').read().strip())"


async def _exercise(client: Client) -> None:
    tools = (await client.list_tools()).tools
    run = next(t for t in tools if t.name == "run_python")
    for fact in ("numpy", "pandas", "matplotlib", "no network", "30 s", "working directory"):
        assert fact in run.description, fact
    assert set(run.input_schema["properties"]) >= {"code", "files", "timeout"}

    ok = await client.call_tool("run_python", {"code": PLOT, "files": {"data.txt": "from a file\n"}})
    assert ok.is_error is False, ok.structured_content
    text = ok.content[0].text
    assert "outcome: ok" in text and "from a file" in text
    images = [b for b in ok.content if b.type == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    assert base64.b64decode(images[0].data).startswith(b"\x89PNG")
    assert ok.structured_content["outcome"] == "ok"
    assert ok.structured_content["stdout"] == "from a file\n"

    bad = await client.call_tool("run_python", {"code": "def f():\n    return 1 / 0\nf()"})
    assert bad.is_error is True
    assert bad.structured_content["outcome"] == "error"
    assert "ZeroDivisionError: division by zero" in bad.content[0].text and "line" in bad.content[0].text

    slow = await client.call_tool("run_python", {"code": "import time; time.sleep(10)", "timeout": 1})
    assert slow.is_error is True and slow.structured_content["outcome"] == "timeout"

    refused = await client.call_tool("run_python", {"code": "print(1)", "files": {"../x": "no"}})
    assert refused.is_error is True and "refused" in refused.content[0].text


async def _exercise_sessions(client: Client) -> str:
    """create_session, run_python with state, upload_file, list_files, read_file (text and image),
    close_session. Returns the id of a session left open (for the ownership test)."""
    names = {t.name for t in (await client.list_tools()).tools}
    assert {"create_session", "close_session", "list_files", "read_file", "upload_file"} <= names

    created = await client.call_tool("create_session", {"ttl": 120})
    assert created.is_error is False, created.content
    sid = created.structured_content["session_id"]
    assert sid in created.content[0].text and created.structured_content["ttl"] == 120

    first = await client.call_tool("run_python", {"code": "x = 41", "session_id": sid})
    assert first.is_error is False, first.structured_content
    second = await client.call_tool("run_python", {"code": "print(x + 1)", "session_id": sid})
    assert second.structured_content["stdout"] == "42\n"
    fresh = await client.call_tool("run_python", {"code": "print(x + 1)"})     # no session: no state
    assert fresh.is_error is True and "NameError" in fresh.content[0].text

    up = await client.call_tool("upload_file", {"session_id": sid, "path": "notes/a.txt", "content": "hello"})
    assert up.is_error is False and up.structured_content["size"] == 5
    binary = base64.b64encode(bytes(range(256))).decode()
    up = await client.call_tool("upload_file", {"session_id": sid, "path": "b.bin", "content": binary,
                                                "encoding": "base64"})
    assert up.is_error is False and up.structured_content["size"] == 256
    wrote = await client.call_tool("run_python", {"session_id": sid, "code": (
        "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.savefig('fig.png')\n"
        "print(open('notes/a.txt').read(), len(open('b.bin', 'rb').read()))")})
    assert wrote.structured_content["stdout"] == "hello 256\n", wrote.structured_content

    listed = await client.call_tool("list_files", {"session_id": sid})
    paths = {f["path"] for f in listed.structured_content["files"]}
    assert {"notes/a.txt", "b.bin", "fig.png"} <= paths and "notes/a.txt" in listed.content[0].text
    text = await client.call_tool("read_file", {"session_id": sid, "path": "notes/a.txt"})
    assert text.is_error is False and text.content[0].text == "hello"
    image = await client.call_tool("read_file", {"session_id": sid, "path": "fig.png"})
    assert image.content[0].type == "image" and base64.b64decode(image.content[0].data).startswith(b"\x89PNG")
    missing = await client.call_tool("read_file", {"session_id": sid, "path": "nope.txt"})
    assert missing.is_error is True

    closed = await client.call_tool("close_session", {"session_id": sid})
    assert closed.is_error is False
    after = await client.call_tool("run_python", {"code": "print(x)", "session_id": sid})
    assert after.is_error is True and "ended" in after.content[0].text
    unknown = await client.call_tool("list_files", {"session_id": "no-such-session"})
    assert unknown.is_error is True and "no such session" in unknown.content[0].text

    doomed = (await client.call_tool("create_session", {})).structured_content["session_id"]
    crash = await client.call_tool("run_python", {"code": "import os\nos.abort()", "session_id": doomed})
    assert crash.is_error is True and crash.structured_content["outcome"] == "crashed"
    assert "the session has ended" in crash.content[0].text, crash.content[0].text
    after = await client.call_tool("run_python", {"code": "print(1)", "session_id": doomed})
    assert after.is_error is True and "ended" in after.content[0].text

    kept = await client.call_tool("create_session", {})
    sid = kept.structured_content["session_id"]
    await client.call_tool("run_python", {"code": "secret = 'mine'", "session_id": sid})
    return sid


def test_stdio():
    params = StdioServerParameters(command=sys.executable, args=["-m", "sandbox", "mcp", "--slots", "1"])

    async def main() -> None:
        async with Client(params) as client:
            await _exercise(client)
            await _exercise_sessions(client)

    asyncio.run(asyncio.wait_for(main(), 300))


def test_streamable_http_with_the_servers_key(server):
    async def main() -> None:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        async with Client(streamable_http_client(server.url + "/mcp", http_client=http)) as client:
            await _exercise(client)
            sid = await _exercise_sessions(client)
            # the session is the key's: the HTTP API sees it under the same key, another key sees nothing
            seen = httpx.get(f"{server.url}/v1/sessions/{sid}", headers={"Authorization": f"Bearer {KEY}"})
            assert seen.status_code == 200
            other = httpx2.AsyncClient(headers={"Authorization": f"Bearer {OTHER_KEY}"}, timeout=120)
            async with Client(streamable_http_client(server.url + "/mcp", http_client=other)) as theirs:
                for tool, args in (("run_python", {"code": "print(secret)", "session_id": sid}),
                                   ("list_files", {"session_id": sid}), ("read_file", {"session_id": sid, "path": "x"}),
                                   ("upload_file", {"session_id": sid, "path": "x", "content": "y"}),
                                   ("close_session", {"session_id": sid})):
                    r = await theirs.call_tool(tool, args)
                    assert r.is_error is True and "no such session" in r.content[0].text, (tool, r.content)
            still = await client.call_tool("run_python", {"code": "print(secret)", "session_id": sid})
            assert still.structured_content["stdout"] == "mine\n"
            await client.call_tool("close_session", {"session_id": sid})

    asyncio.run(asyncio.wait_for(main(), 300))


def test_http_without_a_key_is_401(server):
    r = httpx.post(server.url + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                   headers={"Accept": "application/json, text/event-stream"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"

    async def main() -> None:
        http = httpx2.AsyncClient(headers={"Authorization": "Bearer not-the-key-at-all-000"}, timeout=30)
        async with Client(streamable_http_client(server.url + "/mcp", http_client=http)) as client:
            await client.list_tools()

    with pytest.raises(ExceptionGroup) as info:  # the SDK client cannot get past the 401
        asyncio.run(asyncio.wait_for(main(), 60))
    assert info.group_contains(MCPError, match="error response")
