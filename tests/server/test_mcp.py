"""MCP with the SDK's own client: `sandbox mcp` over stdio, and `/mcp` over streamable HTTP with the
server's bearer auth."""

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

from .conftest import KEY

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


def test_stdio():
    params = StdioServerParameters(command=sys.executable, args=["-m", "sandbox", "mcp", "--slots", "1"])

    async def main() -> None:
        async with Client(params) as client:
            await _exercise(client)

    asyncio.run(asyncio.wait_for(main(), 300))


def test_streamable_http_with_the_servers_key(server):
    async def main() -> None:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        async with Client(streamable_http_client(server.url + "/mcp", http_client=http)) as client:
            await _exercise(client)

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
