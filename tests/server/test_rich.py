"""Rich outputs on the service's surfaces, each with its own client: the HTTP result document and
the NDJSON stream (httpx), RemoteSandbox, MCP (the SDK's client over streamable HTTP), and the
playground in headless Chromium: a DataFrame's HTML table, a matplotlib chart and a plotly figure,
the program's HTML inside a sandboxed frame with an opaque origin, every asset from the server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from pathlib import Path

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from playwright.sync_api import expect, sync_playwright

from sandbox.remote import RemoteSandbox

from .conftest import KEY

CELL = ("import pandas as pd\nfrom PIL import Image\n"
        "display(Image.new('RGB', (6, 4), 'blue'))\n"
        "pd.DataFrame({'city': ['Oslo', 'Lima'], 'total': [3, 5]})\n")
TABLE = "application/vnd.sandbox.table+json"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(os.environ.get("SANDBOX_TEST_ARTIFACTS", "/tmp/sandbox-test-artifacts"))


def test_the_result_document_and_the_stream_carry_outputs(client):
    doc = client.post("/v1/execute", json={"code": CELL}).json()
    image, table = doc["outputs"]
    assert not image["main"] and base64.b64decode(image["data"]["image/png"]).startswith(b"\x89PNG")
    assert table["main"] and "<table" in table["data"]["text/html"] and table["data"][TABLE]["city"] == ["Oslo", "Lima"]

    with client.stream("POST", "/v1/execute", json={"code": CELL}, headers={"Accept": "application/x-ndjson"}) as r:
        events = [json.loads(line) for line in r.iter_lines() if line]
    kinds = [e["type"] for e in events]
    assert kinds == ["output", "output", "result"], kinds
    assert [e["main"] for e in events[:2]] == [False, True] and events[1]["data"]["text/markdown"].startswith("|")
    assert events[2]["outputs"] == [{k: v for k, v in e.items() if k != "type"} for e in events[:2]]


def test_a_streamed_output_is_sent_as_it_is_displayed(client):
    code = "import time\ndisplay({'step': 1})\ntime.sleep(1.5)\ndisplay({'step': 2})\n'done'\n"
    events = []
    with client.stream("POST", "/v1/execute", json={"code": code}, headers={"Accept": "application/x-ndjson"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():  # each line as it arrives
            if line:
                events.append((time.monotonic(), json.loads(line)))
    kinds = [e["type"] for _, e in events]
    assert kinds == ["output", "output", "output", "result"], kinds  # each once: none repeated with the result
    (t1, first), (t2, second), (_, last), (t_end, result) = events
    assert first["data"]["text/plain"] == "{'step': 1}" and second["data"]["text/plain"] == "{'step': 2}"
    assert last["main"] and last["data"]["text/plain"] == "'done'"
    assert t2 - t1 > 1.0 and t_end - t1 > 1.0  # the first came while the program slept, before the second display
    assert result["outcome"] == "ok"
    assert result["outputs"] == [{k: v for k, v in e.items() if k != "type"} for e in (first, second, last)]


def test_outputs_displayed_before_a_timeout_are_streamed_and_kept(client):
    code = "display('before')\nwhile True:\n    pass\n"
    with client.stream("POST", "/v1/execute", json={"code": code, "timeout": 1},
                       headers={"Accept": "application/x-ndjson"}) as r:
        events = [json.loads(line) for line in r.iter_lines() if line]
    assert [e["type"] for e in events] == ["output", "result"]
    assert events[0]["data"]["text/plain"] == "'before'"
    assert events[1]["outcome"] == "timeout" and events[1]["outputs"] == [{k: v for k, v in events[0].items() if k != "type"}]


def test_session_calls_carry_their_own_main_output(client):
    sid = client.post("/v1/sessions", json={}).json()["session_id"]
    try:
        client.post(f"/v1/sessions/{sid}/execute", json={"code": "x = 20"})
        doc = client.post(f"/v1/sessions/{sid}/execute", json={"code": "x + 22"}).json()
        assert doc["outputs"] == [{"main": True, "truncated": False, "data": {"text/plain": "42"}}]
    finally:
        client.delete(f"/v1/sessions/{sid}")


def test_remote_sandbox_on_output_gets_each_output_as_it_is_displayed(server):
    seen = []
    code = "import time\ndisplay('one')\ntime.sleep(1.5)\ndisplay('two')\n"
    with RemoteSandbox(server.url, api_key=KEY) as sb:
        t0 = time.monotonic()
        r = sb.run(code, on_output=lambda o: seen.append((time.monotonic() - t0, o)))
        end = time.monotonic() - t0
    assert [o for _, o in seen] == r.outputs and [o.data["text/plain"] for o in r.outputs] == ["'one'", "'two'"]
    assert end - seen[0][0] > 1.0  # the first came while the program slept


def test_remote_sandbox_returns_the_same_outputs(server):
    with RemoteSandbox(server.url, api_key=KEY) as sb:
        r = sb.run(CELL)
        assert [o.main for o in r.outputs] == [False, True]
        assert r.main.table == {"city": ["Oslo", "Lima"], "total": [3, 5]} and r.outputs[0].png.startswith(b"\x89PNG")
        streamed = sb.run(CELL, on_stdout=lambda t: None)
        assert streamed.outputs == r.outputs


def test_mcp_tool_result_has_text_images_and_html_as_an_embedded_resource(server):
    async def main() -> None:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        async with Client(streamable_http_client(server.url + "/mcp", http_client=http)) as client:
            got = await client.call_tool("run_python", {"code": CELL + "import matplotlib.pyplot as plt\n"
                                                                     "plt.bar(['a'], [1]); plt.title('B'); plt.show()\n"
                                                                     "pd.DataFrame({'city': ['Oslo'], 'total': [3]})"})
            assert got.is_error is False
            kinds = [b.type for b in got.content]
            assert kinds == ["text", "image", "text", "image", "text", "resource"], kinds
            assert '"type": "bar"' in got.content[0].text and '"title": "B"' in got.content[0].text  # chart data
            assert got.content[2].text.startswith("--- output 1 ---")
            assert got.content[4].text.startswith("--- result ---\n|  | city | total |")
            res = got.content[5].resource
            assert res.mime_type == "text/html" and "<table" in res.text and str(res.uri) == "sandbox://outputs/2.html"
            assert got.structured_content["outputs"][1]["main"] is True

    asyncio.run(asyncio.wait_for(main(), 300))


def test_the_output_frame_is_a_sandbox_and_plotly_js_comes_from_the_server(anon):
    page = anon.get("/")
    assert "frame-src 'self'" in page.headers["content-security-policy"]
    frame = anon.get("/static/frame.html")
    csp = frame.headers["content-security-policy"]
    assert csp.startswith("sandbox allow-scripts;") and "connect-src 'none'" in csp
    assert "allow-same-origin" not in csp and frame.headers["x-content-type-options"] == "nosniff"
    js = anon.get("/static/vendor/plotly.min.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert b"plotly" in js.content[:2000].lower() and len(js.content) > 1_000_000


PLAYGROUND_CELL = """import pandas as pd
import matplotlib.pyplot as plt
import plotly.graph_objects as go
df = pd.DataFrame({"month": ["Jan", "Feb", "Mar"], "total": [120, 95, 143]})
display(df)
plt.bar(df.month, df.total); plt.title("totals"); plt.show()
fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2], name="trend"))
fig.update_layout(title="plotly here", width=500, height=300)
fig.show()
class Evil:
    def _repr_html_(self):
        return ('<p id="evil">evil</p><img src=x onerror="parent.document.title=\\'pwned\\'">'
                '<script>parent.document.title = "pwned"</script>')
Evil()
"""


def test_playground_shows_table_chart_and_plotly_in_sandboxed_frames(server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            external = []
            page.on("request", lambda r: external.append(r.url)
                    if not r.url.startswith((server.url, "data:", "blob:", "about:")) else None)
            page.goto(server.url + "/")
            page.fill("#key", KEY)
            page.fill("#code", PLAYGROUND_CELL)
            page.click("#run")
            expect(page.locator("#outcome")).to_have_text("ok", timeout=90_000)
            frames = page.locator("#rich iframe")
            expect(frames).to_have_count(3)
            expect(page.locator("#figures img")).to_have_count(1)
            for f in page.frames[1:]:
                f.wait_for_selector("body[data-rendered]", state="attached", timeout=30_000)
            table = next(f for f in page.frames[1:] if f.query_selector("table"))
            assert table.locator("td").all_text_contents()[:2] == ["Jan", "120"]
            plot = next(f for f in page.frames[1:] if f.query_selector(".main-svg"))
            assert plot.evaluate("typeof window.Plotly") == "object"
            assert "plotly here" in plot.locator(".gtitle").text_content()
            evil = next(f for f in page.frames[1:] if f.query_selector("#evil"))
            # The program's frame has an opaque origin: it reads nothing of the page, runs none of its
            # own markup's scripts, and the page keeps its title.
            assert evil.evaluate("origin") == "null"
            assert evil.evaluate("(() => { try { return parent.document.title } catch (e) { return 'blocked' } })()") == "blocked"
            page.wait_for_timeout(500)
            assert page.title() == "sandbox playground"
            assert external == [], external
            page.screenshot(path=str(SHOTS / "playground-rich.png"), full_page=True)
        finally:
            browser.close()
