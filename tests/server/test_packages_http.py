"""Packages on demand over HTTP: `packages` in POST /v1/execute and in the session create body,
POST /v1/sessions/{id}/packages, and RemoteSandbox's arguments, against a real `sandbox serve`
whose policy serves a wheelhouse the test writes (tests/_packages.py)."""

from __future__ import annotations

import httpx
import pytest

from sandbox import InvalidInputError
from sandbox.remote import RemoteSandbox

from _packages import DEPENDENT, HELLO, NOT_ALLOWED, PackageWorld

from .conftest import KEY, Server


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with PackageWorld(tmp_path_factory.mktemp("packages-http"), allow=[HELLO, DEPENDENT]) as w:
        yield w


@pytest.fixture(scope="module")
def pserver(world, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("pserver"), "--slots", "1", env=world.env())
    yield s
    s.stop()


def test_execute_with_packages(pserver, world):
    with httpx.Client(base_url=pserver.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
        r = c.post("/v1/execute", json={"code": "import sbtest_dependent\nprint(sbtest_dependent.VALUE)",
                                        "packages": [DEPENDENT]})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["stdout"] == "hello dep\n" and doc["usage"]["packages_ms"] > 0, doc
        r = c.post("/v1/execute", json={"code": "print(1)", "packages": [NOT_ALLOWED]})
        assert r.status_code == 422 and "sbtest-forbidden" in r.json()["error"]["message"], r.text
        r = c.post("/v1/execute", json={"code": "print(1)", "packages": "humanize"})
        assert r.status_code == 422, r.text
    assert world.entries()[1] == []


def test_remote_sandbox_and_sessions(pserver):
    with RemoteSandbox(pserver.url, api_key=KEY) as sb:
        r = sb.run("import sbtest_hello; print(sbtest_hello.greet('r'))", packages=[f"{HELLO}==1.0"])
        assert r.stdout == "hello r\n", (r.stderr, r.error)
        with pytest.raises(InvalidInputError, match="sbtest-forbidden"):
            sb.run("print(1)", packages=[NOT_ALLOWED])
        with sb.session(packages=[HELLO]) as s:
            assert s.run("import sbtest_hello; print(sbtest_hello.greet('s'))").stdout == "hello s, v2\n"
            assert s.install([DEPENDENT]) == {HELLO: "1.0", DEPENDENT: "1.0"}
            assert s.run("import sbtest_dependent; print('ok')").stdout == "ok\n"
            with pytest.raises(InvalidInputError, match="sbtest-forbidden"):
                s.install([NOT_ALLOWED])
        with pytest.raises(InvalidInputError, match="sbtest-forbidden"):
            sb.session(packages=[NOT_ALLOWED])


def test_mcp_tools_take_packages(pserver):
    import asyncio

    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def main() -> None:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        async with Client(streamable_http_client(pserver.url + "/mcp", http_client=http)) as client:
            ok = await client.call_tool("run_python", {"code": "import sbtest_hello; print(sbtest_hello.greet('m'))",
                                                       "packages": [f"{HELLO}==1.0"]})
            assert ok.is_error is False and ok.structured_content["stdout"] == "hello m\n", ok.content
            refused = await client.call_tool("run_python", {"code": "print(1)", "packages": [NOT_ALLOWED]})
            assert refused.is_error is True and "sbtest-forbidden" in refused.content[0].text, refused.content
            created = await client.call_tool("create_session", {"packages": [HELLO]})
            sid = created.structured_content["session_id"]
            r = await client.call_tool("run_python", {"code": "import sbtest_dependent; print('dep')",
                                                      "session_id": sid, "packages": [DEPENDENT]})
            assert r.structured_content["stdout"] == "dep\n", r.content
            await client.call_tool("close_session", {"session_id": sid})

    asyncio.run(asyncio.wait_for(main(), 300))
