"""E2B's code interpreter API, driven with the `e2b-code-interpreter` package (its own HTTP calls
and its own parsing of the NDJSON stream) against the real server."""

from __future__ import annotations

import base64

import pytest
from e2b import NotFoundException, SandboxException
from e2b_code_interpreter import Sandbox as E2BSandbox
from e2b_code_interpreter.models import Execution, parse_output
from live_server import KEY, OTHER_KEY

from sandbox import Outcome
from sandbox.compat import e2b


def connect(server, key: str = KEY) -> E2BSandbox:
    # debug=True: no E2B cloud API call to create a sandbox; sandbox_url: where its code
    # interpreter lives, here with our key in the path (the SDK sends no auth header there).
    return E2BSandbox.create(debug=True, sandbox_url=f"{server.url}/k/{key}/e2b")


def test_run_code_value_of_the_last_expression_and_logs(server):
    sbx = connect(server)
    seen = []
    ex = sbx.run_code("print('hello')\nx = 2\nx * 21", on_stdout=lambda m: seen.append(m.line))
    assert ex.error is None
    assert ex.text == "42"                       # the main result, as a notebook shows Out[n]
    assert "".join(ex.logs.stdout) == "hello\n" and seen == ex.logs.stdout
    again = sbx.run_code("x")                    # the key's default context keeps its variables
    assert again.text == "2" and again.execution_count == ex.execution_count + 1


def test_figures_come_back_as_png_results(server):
    sbx = connect(server)
    ex = sbx.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2, 4])\nplt.show()")
    assert ex.error is None and len(ex.results) == 1
    png = base64.b64decode(ex.results[0].png)
    assert png.startswith(b"\x89PNG") and not ex.results[0].is_main_result


def test_errors_have_name_value_and_traceback(server):
    sbx = connect(server)
    errors = []
    ex = sbx.run_code("def f():\n    return 1 / 0\nf()", on_error=errors.append)
    assert ex.error.name == "ZeroDivisionError" and ex.error.value == "division by zero"
    assert "line 2" in ex.error.traceback and errors == [ex.error]
    assert ex.text is None


def test_contexts_keep_files_between_runs(server):
    sbx = connect(server)
    ctx = sbx.create_code_context()
    assert ctx.language == "python" and ctx.cwd == "/work"
    sbx.run_code("open('notes.txt', 'w').write('kept')", context=ctx)
    ex = sbx.run_code("open('notes.txt').read()", context=ctx)
    assert ex.error is None and ex.text == "kept" and ex.execution_count == 2
    assert ctx.id in [c.id for c in sbx.list_code_contexts()]
    other = connect(server, OTHER_KEY)
    assert ctx.id not in [c.id for c in other.list_code_contexts()]  # a context belongs to its key
    with pytest.raises(NotFoundException):
        other.run_code("1", context=ctx)
    sbx.restart_code_context(ctx)
    ex = sbx.run_code("import os\nos.path.exists('notes.txt')", context=ctx)
    assert ex.text == "False"
    sbx.remove_code_context(ctx)
    assert ctx.id not in [c.id for c in sbx.list_code_contexts()]
    with pytest.raises(NotFoundException):
        sbx.run_code("1", context=ctx)


def test_a_context_is_an_engine_session_variables_carry_over_until_restart(server):
    sbx = connect(server)
    ctx = sbx.create_code_context(cwd="/root")
    assert [c.cwd for c in sbx.list_code_contexts() if c.id == ctx.id] == ["/root"]
    sbx.run_code("import math\nx = math.pi", context=ctx)
    assert sbx.run_code("round(x, 2)", context=ctx).text == "3.14"
    assert sbx.run_code("x", context=sbx.create_code_context()).error.name == "NameError"  # contexts are apart
    sbx.restart_code_context(ctx)
    ex = sbx.run_code("x", context=ctx)
    assert ex.error.name == "NameError" and ex.error.value == "name 'x' is not defined"
    # The default context is listed before any cell ran in it, and restarts like the others.
    assert "default" in [c.id for c in sbx.list_code_contexts()]
    sbx.run_code("y = 5")
    sbx.restart_code_context("default")
    assert sbx.run_code("y").error.name == "NameError"


def test_contexts_are_the_keys_engine_sessions(server):
    # Each used context holds one of the key's engine sessions (its ttl, caps and quotas).
    sbx = connect(server, OTHER_KEY)
    ctx = sbx.create_code_context()
    sbx.run_code("1", context=ctx)
    sessions = server.app.state.sessions
    owner, backing = next((o, c[ctx.id].session) for o, c in server.app.state.e2b_contexts._by_owner.items()
                          if ctx.id in c)
    assert backing in {s.id for s in sessions.owned_by(owner)}
    sbx.remove_code_context(ctx)
    assert backing not in {s.id for s in sessions.owned_by(owner)}


def test_indented_cells_run_as_e2bs_kernel_runs_them(server):
    ex = connect(server).run_code("""
        def twice(v):
            return 2 * v
        twice(21)
    """)
    assert ex.error is None and ex.text == "42"


def test_one_print_is_one_stdout_event(server):
    sbx = connect(server)
    seen = []
    ex = sbx.run_code("for i in range(30):\n    print(i)\nprint('no newline', end='')",
                      on_stdout=lambda m: seen.append(m.line))
    assert seen == [f"{i}\n" for i in range(30)] + ["no newline"] and ex.logs.stdout == seen


def test_env_vars_hold_for_one_execution_and_the_sandboxs_own_are_refused(server):
    sbx = connect(server)
    ex = sbx.run_code("import os; os.getenv('FOO')", envs={"FOO": "bar"})
    assert ex.text.strip("'") == "bar"  # the value of a str, with or without its quotes
    assert sbx.run_code("import os; os.getenv('FOO', 'default')").text.strip("'") == "default"
    for name in ("PATH", "LD_PRELOAD", "PYTHONPATH", "OMP_NUM_THREADS", "MPLBACKEND", "1BAD"):
        with pytest.raises(SandboxException, match="400"):
            sbx.run_code("1", envs={name: "x"})


def test_other_languages_and_bad_keys_are_refused(server):
    sbx = connect(server)
    with pytest.raises(SandboxException, match="not supported"):
        sbx.run_code("console.log(1)", language="js")
    with pytest.raises(SandboxException, match="401"):
        connect(server, "wrong-key-0123456789").run_code("1")


@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_outcome_parses_with_the_sdks_stream_parser(outcomes, outcome):
    code, result = outcomes[outcome]
    ex = Execution()
    for line in e2b.ndjson(e2b.to_e2b_events(result)).decode().splitlines():
        parse_output(ex, line)
    assert (ex.error is None) == (outcome is Outcome.OK)
    if outcome is Outcome.OK:
        assert len(ex.results) == len(result.images) == 2
    elif outcome is not Outcome.ERROR:
        assert ex.error.name == e2b._ERROR_NAMES[outcome]
    assert "".join(ex.logs.stdout) == result.stdout


@pytest.mark.parametrize("code, expected", [
    ("x = 1; x + 1", "x = 1; __e2b_main_result__ = (x + 1)"),
    ("y = (1 +\n  2)\n(y *\n 2)  # note", "y = (1 +\n  2)\n__e2b_main_result__ = ((y *\n 2))  # note"),
    ("é = 'ü'; é", "é = 'ü'; __e2b_main_result__ = (é)"),
])
def test_last_expression_rewrite_keeps_line_numbers(code, expected):
    out = e2b.keep_last_expression(code)
    assert out.startswith(expected + "\n")
    assert out.count("\n") - code.count("\n") == 4  # only lines appended after the cell


@pytest.mark.parametrize("code", ["import os", "for i in range(3):\n    i", "def f(:", ""])
def test_cells_without_a_final_expression_are_unchanged(code):
    assert e2b.keep_last_expression(code) == code


def test_the_async_sdk_parses_the_same_stream(server):
    import asyncio

    from e2b_code_interpreter import AsyncSandbox as AsyncE2BSandbox

    async def go():
        sbx = await AsyncE2BSandbox.create(debug=True, sandbox_url=f"{server.url}/k/{KEY}/e2b")
        lines = []
        ex = await sbx.run_code("print('a')\nimport sys; print('b', file=sys.stderr)\n[1, 2]",
                                on_stderr=lambda m: lines.append(m.line))
        return ex, lines

    ex, lines = asyncio.run(go())
    assert ex.text == "[1, 2]" and "".join(ex.logs.stdout) == "a\n" and "".join(ex.logs.stderr) == "b\n"
    assert lines == ex.logs.stderr


def test_output_streams_while_the_cell_runs(server):
    import time

    sbx = connect(server)
    seen = []
    code = ("import sys, time\nprint('first', flush=True)\ntime.sleep(6)\n"
            "print('second', flush=True)\nprint('oops', file=sys.stderr, flush=True)")
    ex = sbx.run_code(code, on_stdout=lambda m: seen.append((m.line, time.monotonic())),
                      on_stderr=lambda m: seen.append((m.line, time.monotonic())))
    assert "".join(text for text, _ in seen) == "first\nsecond\noops\n"  # chunks as the program wrote them
    def when(word: str) -> float:
        return next(t for text, t in seen if word in text)

    # 'first' reached the client while the cell was still sleeping, not when the run ended.
    assert when("second") - when("first") > 3
    assert "".join(ex.logs.stdout) == "first\nsecond\n" and "".join(ex.logs.stderr) == "oops\n"


# ---- what a notebook cell does on E2B's kernel, through its SDK ----------------------------------

PNG_CELL = ("import numpy\nfrom PIL import Image\n"
            "pixels = (numpy.arange(16 * 16 * 3) % 255).reshape(16, 16, 3).astype('uint8')\n"
            "image = Image.fromarray(pixels).convert('RGBA')\n")


def test_ipython_display_objects_are_rich_results(server):
    sbx = connect(server)
    ex = sbx.run_code("from IPython.display import display, HTML, Markdown, Latex, JSON, Image\n"
                      "import io, PIL.Image\nbuf = io.BytesIO(); PIL.Image.new('RGB', (3, 2)).save(buf, 'PNG')\n"
                      "display(HTML('<b>bold</b>'), Markdown('# title'))\n"
                      "display(Latex(r'$x^2$'), JSON({'a': [1, 2]}))\n"
                      "Image(data=buf.getvalue())")
    assert ex.error is None, ex.error
    html, md, latex, js, main = ex.results
    assert html.html == "<b>bold</b>" and md.markdown == "# title" and latex.latex == "$x^2$"
    assert js.json == {"a": [1, 2]}
    assert main.is_main_result and base64.b64decode(main.png).startswith(b"\x89PNG")


def test_a_raw_bundle_shows_only_its_own_formats(server):
    ex = connect(server).run_code("from IPython.display import display\n"
                                  "display({'text/latex': r'\\text{custom}'}, raw=True)")
    assert ex.error is None and [list(r.formats()) for r in ex.results] == [["latex"]]


def test_ipython_display_module_also_works_in_a_stateless_run(sb):
    r = sb.run("import IPython\nfrom IPython.display import Markdown\n"
               "assert IPython.get_ipython() is None\nMarkdown('**hi**')")
    assert r.outcome is Outcome.OK and r.main.data["text/markdown"] == "**hi**"
    assert r.main.data["text/plain"] == "<IPython.core.display.Markdown object>"


def test_a_pil_image_saved_to_a_path_is_a_result_as_on_e2bs_kernel(server):
    sbx = connect(server)
    ex = sbx.run_code(PNG_CELL + "image.save('out.png')\nprint('saved')")
    assert ex.error is None and "".join(ex.logs.stdout) == "saved\n"
    assert len(ex.results) == 1 and base64.b64decode(ex.results[0].png).startswith(b"\x89PNG")
    ex = sbx.run_code("import io\nimage.save(io.BytesIO(), 'PNG')")  # to a buffer: no result
    assert ex.error is None and ex.results == []
    ex = sbx.run_code(PNG_CELL + "image.show()")
    assert len(ex.results) == 1 and ex.results[0].png


def test_a_string_result_reads_without_its_quotes(server):
    sbx = connect(server)
    ex = sbx.run_code("import os; os.getenv('GREETING')", envs={"GREETING": "bar"})
    assert ex.text == "bar"
    assert sbx.run_code("import os; os.getenv('GREETING', 'default')").text == "default"
    assert sbx.run_code("[1, 'a']").text == "[1, 'a']"   # only a whole string loses its quotes
