"""Rich outputs through the real engine: display(), the objects' _repr_*_ protocol, the last
expression's value (main=True), DataFrames as tables, images, charts as data (matplotlib, seaborn,
altair, plotly), the caps per MIME type, sessions, and Result.to_dict()/from_dict()."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

from sandbox import DisplayOutput, Limits, Outcome, Result

from _helpers import png_size, run_ok

CHART = "application/vnd.sandbox.chart+json"
TABLE = "application/vnd.sandbox.table+json"


def only(r: Result) -> DisplayOutput:
    assert len(r.outputs) == 1, r.outputs
    return r.outputs[0]


# -- the last expression ------------------------------------------------------------------------


def test_the_last_expression_is_the_main_output_and_stdout_is_unchanged(sb):
    r = run_ok(sb, "print('hi')\nx = 6\nx * 7")
    assert r.stdout == "hi\n"                       # as `python main.py` prints
    out = only(r)
    assert out.main and out.data == {"text/plain": "42"} and r.main is out


def test_no_main_output_for_none_a_statement_or_a_semicolon(sb):
    for code in ("None", "x = 1", "print(1)", "def f():\n    return 1", "1 + 1;", "for i in range(2):\n    i",
                 "1 + 1;  # silenced"):
        r = run_ok(sb, code)
        assert r.outputs == [] and r.main is None, code


def test_an_exception_gives_no_main_output_and_earlier_displays_stay(sb):
    r = sb.run("display('before')\n1 / 0")
    assert r.outcome is Outcome.ERROR and r.error.type == "ZeroDivisionError" and r.error.line == 2
    assert [o.text for o in r.outputs] == ["'before'"] and r.main is None
    assert "display.py" not in r.error.traceback and "runner.py" not in r.error.traceback


def test_a_multiline_last_expression_and_a_syntax_error(sb):
    r = run_ok(sb, "(1 +\n 2)")
    assert only(r).text == "3"
    r = sb.run("x = (")
    assert r.outcome is Outcome.ERROR and r.error.type == "SyntaxError" and r.outputs == []


# -- display() and the _repr_*_ protocol ----------------------------------------------------------


REPRS = '''
class Rich:
    def _repr_html_(self): return "<b>bold</b>"
    def _repr_markdown_(self): return "**bold**"
    def _repr_latex_(self): return "$x^2$"
    def _repr_json_(self): return {"a": [1, 2]}
    def _repr_svg_(self): return '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"></svg>'
    def __repr__(self): return "Rich()"
display(Rich())
'''


def test_display_carries_every_repr_method_with_text_plain(sb):
    out = only(run_ok(sb, REPRS))
    assert not out.main
    assert out.html == "<b>bold</b>" and out.markdown == "**bold**" and out.latex == "$x^2$"
    assert out.json == {"a": [1, 2]} and out.svg.startswith("<svg") and out.text == "Rich()"


def test_repr_mimebundle_and_raw_bundles(sb):
    png = base64.b64encode(run_ok(sb, "from PIL import Image\nImage.new('RGB', (3, 2))").outputs[0].png).decode()
    code = ("class B:\n    def _repr_mimebundle_(self, include=None, exclude=None):\n"
            "        return {'text/markdown': '# hi', 'application/x-unknown': 'dropped'}, {}\n"
            f"display(B())\ndisplay({{'image/png': '{png}', 'text/plain': 'a raw png', 'x-other': 'x'}}, raw=True)")
    r = run_ok(sb, code)
    assert r.outputs[0].markdown == "# hi" and set(r.outputs[0].data) == {"text/markdown", "text/plain"}
    assert r.outputs[1].text == "a raw png" and png_size(r.outputs[1].png) == (3, 2) and not r.outputs[1].truncated
    assert set(r.outputs[1].data) == {"image/png", "text/plain"}


def test_a_broken_repr_never_breaks_the_run(sb):
    code = ("class Bad:\n    def _repr_html_(self): raise RuntimeError('no')\n"
            "    def __repr__(self): raise RuntimeError('no either')\nBad()")
    out = only(run_ok(sb, code))
    assert out.main and out.text == "<Bad object>" and out.html is None


def test_several_objects_in_one_display_call_and_display_in_a_function(sb):
    r = run_ok(sb, "def f():\n    display(1, 'two')\nf()\n[3]")
    assert [(o.text, o.main) for o in r.outputs] == [("1", False), ("'two'", False), ("[3]", True)]


# -- libraries ------------------------------------------------------------------------------------


def test_a_dataframe_is_html_a_budgeted_markdown_table_and_data(sb):
    code = ("import pandas as pd\n"
            "df = pd.DataFrame({f'c{i}': range(400) for i in range(30)})\n"
            "display(pd.DataFrame({'a': [1, 2, 3], 'b': ['x|y', None, 'z']}))\ndf")
    r = run_ok(sb, code)
    small, big = r.outputs
    assert "<table" in small.html and small.table == {"a": [1, 2, 3], "b": ["x|y", None, "z"]}
    assert "| x\\|y |" in small.markdown and not small.main
    assert big.main and "<table" in big.html and big.table is None      # 12,000 cells: no data
    lines = big.markdown.splitlines()
    assert lines[0].startswith("|  | c0 | c1 |") and "…" in lines[0]
    assert "[400 rows x 30 columns; 380 rows and 18 columns not shown]" in big.markdown
    assert len(big.markdown) < 6000 and "c29" in big.text and "399" in big.text


def test_a_series_and_a_frame_with_nan(sb):
    r = run_ok(sb, "import pandas as pd, numpy as np\ns = pd.Series([1.5, np.nan], name='v')\n"
                   "display(pd.DataFrame({'v': [1.5, np.nan]}))\ns")
    frame, series = r.outputs
    assert frame.table == {"v": [1.5, None]}
    assert series.main and "1.5" in series.text and "| v |" in series.markdown


def test_pil_images_as_last_expression_by_show_and_by_display(sb):
    r = run_ok(sb, "from PIL import Image\nim = Image.new('RGB', (5, 4), 'red')\nim.show()\ndisplay(im)\nim")
    assert [o.main for o in r.outputs] == [False, False, True]
    assert all(png_size(o.png) == (5, 4) for o in r.outputs)
    assert r.outputs[0].text == "<PIL image RGB 5x4>"


def test_matplotlib_figures_carry_chart_data(sb):
    code = ("import matplotlib.pyplot as plt\n"
            "fig, ax = plt.subplots()\nax.plot([1, 2, 3], [4, 5, 6], label='up')\n"
            "ax.set_title('T'); ax.set_xlabel('x'); ax.set_ylabel('y'); ax.set_yscale('log')\nplt.show()\n"
            "plt.bar(['a', 'b'], [3, 4]); plt.title('B'); plt.show()\n"
            "plt.pie([1, 3], labels=['p', 'q']); plt.show()\n"
            "plt.scatter([1, 2], [2, 1]); display(plt.gcf())\n")
    r = run_ok(sb, code)
    line, bar, pie, scatter = (f.chart for f in r.images)
    assert line["type"] == "line" and line["title"] == "T" and line["x_label"] == "x" and line["y_scale"] == "log"
    assert line["elements"] == [{"label": "up", "points": [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]}]
    assert bar["type"] == "bar" and [(e["label"], e["value"]) for e in bar["elements"]] == [("a", 3.0), ("b", 4.0)]
    assert pie["type"] == "pie" and [e["label"] for e in pie["elements"]] == ["p", "q"]
    assert scatter["type"] == "scatter" and r.outputs == []   # display(fig) is a figure, not an output
    assert r.charts == [line, bar, pie, scatter]


def test_seaborn_charts_are_matplotlib_charts(sb):
    r = run_ok(sb, "import seaborn as sns, pandas as pd\n"
                   "sns.scatterplot(data=pd.DataFrame({'x': [1, 2, 3], 'y': [2, 4, 3]}), x='x', y='y')\n"
                   "import matplotlib.pyplot as plt\nplt.title('S')\nplt.show()")
    chart = r.images[0].chart
    assert chart["type"] == "scatter" and chart["title"] == "S" and chart["x_label"] == "x"
    assert chart["elements"][0]["points"] == [[1.0, 2.0], [2.0, 4.0], [3.0, 3.0]]


def test_altair_charts_are_a_spec_a_png_and_chart_data(sb):
    code = ("import altair as alt, pandas as pd\n"
            "c = alt.Chart(pd.DataFrame({'k': ['a', 'b'], 'v': [3, 5]})).mark_bar().encode(x='k', y='v')"
            ".properties(title='AT')\nc.show()\nc")
    r = run_ok(sb, code, timeout=60)
    shown, out = r.outputs
    assert not shown.main and shown.data == out.data            # chart.show() displays it
    assert out.main and out.vegalite["mark"]["type"] == "bar"
    assert png_size(out.png) is not None                       # rendered in the jail by vl-convert
    assert out.chart == {"type": "bar", "title": "AT", "x_label": "k", "y_label": "v", "x_scale": "linear",
                         "y_scale": "linear", "source": "vega-lite", "x_unit": None, "y_unit": None, "x_ticks": [],
                         "x_tick_labels": [], "y_ticks": [], "y_tick_labels": [],
                         "elements": [{"label": "a", "group": "v", "value": 3}, {"label": "b", "group": "v", "value": 5}]}


def test_plotly_figures_are_json_html_and_chart_data_and_show_displays(sb):
    code = ("import plotly.express as px, plotly.graph_objects as go\n"
            "px.line(x=[1, 2, 3], y=[2.5, 4, 8], title='P').show()\n"
            "go.Figure(go.Bar(x=['a', 'b'], y=[1, 2]))")
    r = run_ok(sb, code)
    shown, main = r.outputs
    assert not shown.main and main.main
    assert shown.plotly["layout"]["title"]["text"] == "P" and "plotly-graph-div" in shown.html
    assert "<script src" not in shown.html                    # no CDN: the viewer brings plotly.js
    assert shown.chart["type"] == "line" and shown.chart["elements"][0]["points"] == [[1, 2.5], [2, 4.0], [3, 8.0]]
    assert main.chart["type"] == "bar" and [e["value"] for e in main.chart["elements"]] == [1, 2]
    assert len(r.charts) == 2


def test_sympy_is_latex(sb):
    out = only(run_ok(sb, "import sympy\nsympy.Symbol('x') ** 2"))
    assert out.latex == "$\\displaystyle x^{2}$" and out.text == "x**2"


# -- caps -----------------------------------------------------------------------------------------


def test_text_over_its_cap_is_cut_and_flagged(sb):
    r = run_ok(sb, "'é' * 5000", limits={"max_output_text_bytes": 1001})
    out = only(r)
    assert out.truncated and len(out.text.encode()) <= 1001 and out.text.startswith("'éé")


def test_an_image_or_html_over_its_cap_is_left_out_and_flagged(sb):
    r = run_ok(sb, "from PIL import Image\nimport os\nImage.frombytes('RGB', (200, 200), os.urandom(120000))",
               limits={"max_output_image_bytes": 1000})
    out = only(r)
    assert out.truncated and out.png is None and out.text.startswith("<PIL image")
    r = run_ok(sb, "class H:\n    def _repr_html_(self): return 'x' * 5000\nH()", limits={"max_output_html_bytes": 100})
    assert only(r).truncated and only(r).html is None


def test_outputs_over_the_count_or_total_cap_are_dropped_and_counted(sb):
    r = run_ok(sb, "for i in range(10):\n    display(i)", limits={"max_outputs": 3})
    assert [o.text for o in r.outputs] == ["0", "1", "2"] and r.outputs_dropped == 7
    assert "7 rich output(s) dropped" in r.stderr
    r = run_ok(sb, "for i in range(5):\n    display('y' * 400)", limits={"max_output_bytes": 1000})
    assert len(r.outputs) == 2 and r.outputs_dropped == 3
    r = run_ok(sb, "display(1)\n2", limits={"max_outputs": 0})
    assert r.outputs == [] and r.outputs_dropped == 2


def test_the_caps_are_in_the_policy():
    lim = Limits.from_policy()
    assert (lim.max_outputs, lim.max_output_text_bytes, lim.max_output_html_bytes) == (64, 262144, 4194304)
    assert (lim.max_output_image_bytes, lim.max_output_json_bytes, lim.max_output_bytes) == (8388608, 8388608, 33554432)


# -- sessions, the result document, the CLI -------------------------------------------------------


def test_each_session_call_has_its_own_main_output(sb):
    with sb.session() as s:
        assert s.run("import pandas as pd\ndf = pd.DataFrame({'a': [1]})").outputs == []
        r = s.run("df")
        assert r.main is not None and r.main.table == {"a": [1]}
        r = s.run("display(int(df.a.sum()))\ndf.shape")
        assert [(o.text, o.main) for o in r.outputs] == [("1", False), ("(1, 1)", True)]


def test_to_dict_round_trips_and_is_json(sb):
    r = run_ok(sb, REPRS + "from PIL import Image\nImage.new('L', (2, 2))\n")
    doc = json.loads(r.to_json())
    assert [o["main"] for o in doc["outputs"]] == [False, True] and doc["outputs_dropped"] == 0
    assert base64.b64decode(doc["outputs"][1]["data"]["image/png"]).startswith(b"\x89PNG")
    back = Result.from_dict(doc)
    assert back.outputs == r.outputs and back.images == r.images


def test_cli_json_and_out(tmp_path):
    script = tmp_path / "cell.py"
    script.write_text("import pandas as pd\nimport matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()\n"
                      "pd.DataFrame({'a': [1, 2]})\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "sandbox", "run", str(script), "--json", "--out", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["outputs"][0]["main"] and doc["outputs"][0]["data"][TABLE] == {"a": [1, 2]}
    assert doc["images"][0]["chart"]["type"] == "line"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["figure_1.chart.json", "figure_1.png", "output_1.html", "output_1.md", "output_1.table.json",
                     "output_1.txt"]
    assert "<table" in (out / "output_1.html").read_text()


def test_figure_chart_data_shares_the_output_budget(sb):
    r = run_ok(sb, "import matplotlib.pyplot as plt\nplt.plot(range(50))\nplt.show()\n'x' * 50",
               limits={"max_output_bytes": 200})
    assert len(r.images) == 1 and r.images[0].chart is None      # its data would not fit: the PNG stays
    assert only(r).text == "'" + "x" * 50 + "'"


# -- live: each output as it is displayed --------------------------------------------------------


LIVE = "import time\ndisplay({'n': 1})\ntime.sleep(1)\ndisplay({'n': 2})\n'end'\n"


def test_on_output_gets_each_output_as_it_is_displayed(sb):
    import time

    seen: list[tuple[float, DisplayOutput]] = []
    r = run_ok(sb, LIVE, on_output=lambda o: seen.append((time.monotonic(), o)))
    end = time.monotonic()
    assert [o for _, o in seen] == r.outputs and [o.main for o in r.outputs] == [False, False, True]
    assert seen[0][1].data == {"text/plain": "{'n': 1}"} and end - seen[0][0] >= 0.8  # while it slept


def test_async_stream_yields_outputs_between_the_text_and_the_result():
    import asyncio

    from sandbox import AsyncSandbox, Output

    async def main() -> list:
        async with AsyncSandbox(slots=1) as asb:
            return [e async for e in asb.stream("print('a', flush=True)\n" + LIVE)]

    events = asyncio.run(main())
    result = events[-1]
    assert isinstance(result, Result) and result.outcome is Outcome.OK
    assert [e for e in events if isinstance(e, DisplayOutput)] == result.outputs and len(result.outputs) == 3
    assert "".join(e.text for e in events if isinstance(e, Output)) == "a\n"


def test_forged_display_frames_on_the_result_channel_break_nothing(sb):
    # The program writes display frames of its own to fd 3: a bad MIME type, garbage values, then
    # more than max_outputs. The host checks each as it checks a reply's outputs; the run's own
    # result still arrives and the engine serves the next run.
    code = """import json, os, struct
def frame(header, body=b""):
    head = json.dumps(header).encode()
    return struct.pack(">4sIQ", b"SBX1", len(head), len(body)) + head + body
os.write(3, frame({"op": "display", "main": False, "truncated": False, "items": [["text/evil", 1]]}, b"x"))
os.write(3, frame({"op": "display", "main": True, "truncated": False, "items": [["image/png", 3]]}, b"abc"))
for i in range(5):
    os.write(3, frame({"op": "display", "main": False, "truncated": False, "items": [["text/plain", 1]]}, b"y"))
display('mine')
"""
    seen: list[DisplayOutput] = []
    r = sb.run(code, on_output=seen.append, limits={"max_outputs": 3})
    assert r.outcome is Outcome.OK, (r.outcome, r.stderr)
    assert [o.data for o in r.outputs] == [{"text/plain": "'mine'"}]
    assert all(o.data == {"text/plain": "y"} for o in seen) and len(seen) <= 3  # forged ones, checked and capped
    assert run_ok(sb, "print(1)").stdout == "1\n"


def test_ipython_display_names_without_ipython_in_the_image(sb):
    code = ("import io, base64, PIL.Image\n"
            "from IPython.display import Image, SVG, Math, Pretty, display_png, clear_output, display\n"
            "buf = io.BytesIO(); PIL.Image.new('RGB', (2, 2)).save(buf, 'JPEG'); open('p.jpg', 'wb').write(buf.getvalue())\n"
            "display(Image(filename='p.jpg'), Image(url='https://example.com/a.png', width=5))\n"
            "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\"/>'), Math('x^2'), Pretty('as is'))\n"
            "png = io.BytesIO(); PIL.Image.new('RGB', (1, 1)).save(png, 'PNG')\n"
            "display_png(png.getvalue(), raw=True)\nclear_output()\n"
            "h = display(Pretty('handle'), display_id=True)\nh.update(Pretty('again'))\n"
            "import IPython, matplotlib.pyplot as plt\n"   # libraries that look at IPython still work
            "plt.switch_backend('agg'); plt.plot([1, 2]); plt.show()\nIPython.version_info[:2]")
    r = sb.run(code)
    assert r.outcome is Outcome.OK, (r.stderr, r.error)
    jpeg, url, svg, math, pretty, raw_png, handle, again, main = r.outputs
    assert jpeg.jpeg.startswith(b"\xff\xd8") and url.html == '<img src="https://example.com/a.png" width="5"/>'
    assert svg.svg.startswith("<svg") and math.latex == "$\\displaystyle x^2$" and pretty.text == "as is"
    assert raw_png.png.startswith(b"\x89PNG") and raw_png.text == ""
    assert (handle.text, again.text) == ("handle", "again") and main.text == "(9, 0)"
    assert len(r.images) == 1
