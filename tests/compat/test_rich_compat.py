"""Rich outputs in the peers' shapes, each read by the peer's own client: E2B's `results` (parsed by
`e2b-code-interpreter` from our route's stream), Gemini's parts (google-genai's types), OpenAI's
item (openai's types), LibreChat's files (its own npm client, and the download's headers)."""

from __future__ import annotations

import base64

from e2b_code_interpreter import Sandbox as E2BSandbox
from e2b_code_interpreter.charts import BarChart, ChartType, LineChart, PieChart
from google.genai import types
from live_server import KEY
from openai.types.responses import ResponseCodeInterpreterToolCall

from sandbox.compat import gemini
from sandbox.compat import openai as openai_compat

from test_librechat import exec_tool, http

CELL = ("import pandas as pd\nfrom PIL import Image\n"
        "display(Image.new('RGB', (6, 4), 'blue'))\n"
        "pd.DataFrame({'city': ['Oslo', 'Lima'], 'total': [3, 5]})\n")


def connect(server) -> E2BSandbox:
    return E2BSandbox.create(debug=True, sandbox_url=f"{server.url}/k/{KEY}/e2b")


def test_e2b_results_carry_every_format_and_the_main_result(server):
    ex = connect(server).run_code(CELL)
    assert ex.error is None and len(ex.results) == 2
    image, frame = ex.results
    assert base64.b64decode(image.png).startswith(b"\x89PNG") and not image.is_main_result
    assert frame.is_main_result and set(frame.formats()) == {"text", "html", "markdown", "data"}
    assert frame.data == {"city": ["Oslo", "Lima"], "total": [3, 5]} and "<table" in frame.html
    assert frame.markdown.startswith("|  | city | total |") and ex.text == frame.text


def test_e2b_an_indented_cell_runs_as_ipython_runs_it(server):
    ex = connect(server).run_code("\n    x = 2\n    x * 21\n")
    assert ex.error is None and ex.text == "42"


def test_e2b_charts_are_read_by_the_sdk(server):
    code = ("import matplotlib.pyplot as plt\n"
            "plt.bar(['a', 'b'], [3, 4], label='n'); plt.title('Bars'); plt.xlabel('k'); plt.show()\n"
            "plt.plot([1, 2], [5, 6], label='up'); plt.title('Line'); plt.show()\n"
            "plt.pie([1, 2], labels=['p', 'q']); plt.show()\n")
    ex = connect(server).run_code(code)
    bar, line, pie = (r.chart for r in ex.results)
    assert isinstance(bar, BarChart) and bar.type == ChartType.BAR and bar.title == "Bars" and bar.x_label == "k"
    assert [(b.label, b.value, b.group) for b in bar.elements] == [("a", 3.0, "n"), ("b", 4.0, "n")]
    assert isinstance(line, LineChart) and [p for p in line.elements[0].points] == [(1.0, 5.0), (2.0, 6.0)]
    assert isinstance(pie, PieChart) and [p.label for p in pie.elements] == ["p", "q"]
    assert all(r.png and not r.extra for r in ex.results)


def test_e2b_plotly_and_altair_specs_travel_as_extra(server):
    code = ("import plotly.graph_objects as go, altair as alt, pandas as pd\n"
            "display(go.Figure(go.Bar(x=['a'], y=[1])))\n"
            "alt.Chart(pd.DataFrame({'a': [1], 'b': [2]})).mark_point().encode(x='a', y='b')\n")
    ex = connect(server).run_code(code, timeout=120)
    fig, chart = ex.results
    assert fig.extra["application/vnd.plotly.v1+json"]["data"][0]["type"] == "bar" and "plotly-graph-div" in fig.html
    assert fig.chart is not None and fig.chart.type == ChartType.BAR
    assert chart.is_main_result and chart.png and chart.extra["application/vnd.vegalite.v6+json"]["mark"]["type"] == "point"


def test_gemini_parts_have_the_table_as_markdown_and_images_inline(sb):
    r = sb.run(CELL)
    parts = [types.Part.model_validate(p) for p in gemini.to_gemini_parts(r, CELL)]
    assert parts[0].executable_code.code == CELL and parts[1].code_execution_result.outcome == types.Outcome.OUTCOME_OK
    assert parts[2].text == "<PIL image RGB 6x4>" and parts[3].inline_data.data.startswith(b"\x89PNG")
    assert parts[4].text.startswith("|  | city | total |\n|---|---|---|\n| 0 | Oslo | 3 |")


def test_openai_item_has_the_outputs(sb):
    r = sb.run(CELL)
    item = ResponseCodeInterpreterToolCall.model_validate(openai_compat.to_openai_item(r, CELL), strict=True)
    kinds = [o.type for o in item.outputs]
    assert kinds == ["logs", "image", "logs"], kinds
    assert item.outputs[1].url.startswith("data:image/png;base64,") and "| Oslo | 3 |" in item.outputs[2].logs


def test_librechat_gets_outputs_as_files_never_served_as_pages(server):
    got = exec_tool(server, {"lang": "py", "code": CELL})
    art = got["artifact"]
    names = sorted(f["name"] for f in art["files"])
    assert names == ["output_1.png", "output_2.html", "output_2.md", "output_2.table.json"], names
    with http(server) as c:
        ids = {f["name"]: f["id"] for f in art["files"]}
        page = c.get(f"/download/{art['session_id']}/{ids['output_2.html']}")
        assert page.status_code == 200 and b"<table" in page.content
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in page.headers["content-security-policy"]
        assert page.headers["content-disposition"].startswith("attachment")


def test_the_agent_loop_shows_the_model_what_a_notebook_shows(sb):
    from sandbox.agent.loop import feedback

    text = feedback(sb.run(CELL), images_sent=True)
    assert "displayed:\n<PIL image RGB 6x4>\n" in text
    assert "value of the last expression:\n|  | city | total |\n|---|---|---|\n| 0 | Oslo | 3 |" in text
