"""The model loop, driven through the real `openai` client against a scripted chat-completions
server, with every run in the real sandbox."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from google.genai import types

from sandbox.agent import Agent, OpenAIChatBackend

from scripted_model import ScriptedModel, answer, call

PRIMES = "n, p, s = 0, 2, 0\nwhile n < 50:\n    if all(p % d for d in range(2, p)):\n        s += p; n += 1\n    p += 1\nprint(s)\n"


def validated(transcript) -> types.GenerateContentResponse:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return types.GenerateContentResponse.model_validate(transcript.to_gemini_response())


def kinds(transcript) -> list[str]:
    return [next(iter(p)) for p in transcript.parts]


def test_runs_code_feeds_output_back_and_stops_at_the_answer(sb):
    script = [call(PRIMES, text="Let me compute it."), answer("The sum is 5117.")]
    with ScriptedModel(script) as model:
        t = Agent(sb, OpenAIChatBackend(model.url)).ask("What is the sum of the first 50 primes?")
    assert t.answer == "The sum is 5117." and not t.gave_up
    assert kinds(t) == ["text", "executableCode", "codeExecutionResult", "text"]
    assert "5117" in model.tool_messages(1)[0] and "outcome: ok" in model.tool_messages(1)[0]
    first = model.requests[0]
    assert first["model"] == "scripted"  # the first model the server lists
    assert first["tools"][0]["function"]["name"] == "run_python"
    assert "30 s" in first["tools"][0]["function"]["description"]
    assert first["messages"][1] == {"role": "user", "content": "What is the sum of the first 50 primes?"}
    resp = validated(t)
    assert resp.executable_code == PRIMES
    assert resp.code_execution_result.strip() == "5117"
    assert resp.candidates[0].content.parts[-1].text == "The sum is 5117."


def test_error_is_fed_back_and_the_model_regenerates(sb):
    script = [call("print(undefined_name)"),
              call("print(41 + 1)", text="Fixing the name."),
              answer("42")]
    with ScriptedModel(script) as model:
        t = Agent(sb, OpenAIChatBackend(model.url)).ask("compute")
    fed_back = model.tool_messages(1)[0]
    assert "outcome: error" in fed_back and "NameError" in fed_back and "undefined_name" in fed_back
    assert "Traceback" in fed_back
    assert t.answer == "42" and not t.gave_up
    outcomes = [p["codeExecutionResult"]["outcome"] for p in t.parts if "codeExecutionResult" in p]
    assert outcomes == ["OUTCOME_FAILED", "OUTCOME_OK"]
    validated(t)


@pytest.mark.parametrize("budget", [5, 2])
def test_regeneration_budget_then_it_gives_up(sb, budget):
    failing = [call(f"raise ValueError('attempt {i}')") for i in range(budget + 1)]
    with ScriptedModel(failing + [answer("never reached")]) as model:
        t = Agent(sb, OpenAIChatBackend(model.url), max_regenerations=budget).ask("try")
    assert t.gave_up
    assert len(t.runs) == budget + 1          # the first try and `budget` regenerations
    assert len(model.requests) == budget + 1  # the model was not asked again after the last failure
    assert model.script == [answer("never reached")]
    assert t.answer.startswith("I gave up") and f"attempt {budget}" in t.answer
    assert t.parts[-1] == {"text": t.answer}
    validated(t)


def test_a_success_resets_the_regeneration_count(sb):
    script = [call("1/0"), call("print('fine')"), call("1/0"), call("print('fine again')"), answer("done")]
    with ScriptedModel(script) as model:
        t = Agent(sb, OpenAIChatBackend(model.url), max_regenerations=1).ask("go")
    assert not t.gave_up and t.answer == "done" and len(t.runs) == 4


def test_unusable_tool_calls_are_refused_and_counted(sb):
    script = [call("", arguments="{not json"), call("", name="shell", arguments='{"cmd": "ls"}'),
              call("#" * (5 << 20)), call("print('ok')"), answer("fine")]
    with ScriptedModel(script) as model:
        t = Agent(sb, OpenAIChatBackend(model.url)).ask("go")
    assert "not valid JSON" in model.tool_messages(1)[0]
    assert "no tool named 'shell'" in model.tool_messages(2)[1]
    assert "the sandbox refused it: code is larger than max_code_bytes" in model.tool_messages(3)[2]
    assert t.answer == "fine" and [r is None for _, r in t.runs] == [True, True, True, False]
    validated(t)


def test_each_run_is_limited_to_30_seconds_by_default(sb):
    script = [call("import time\nprint('start', flush=True)\ntime.sleep(60)\nprint('never')"), answer("too slow")]
    with ScriptedModel(script) as model:
        t = Agent(sb, OpenAIChatBackend(model.url)).ask("go")
    _, result = t.runs[0]
    assert result.outcome.value == "timeout"
    assert 29_000 <= result.usage.wall_ms < 59_000  # the 30 s default stopped it, not the sleep ending
    assert "outcome: timeout" in model.tool_messages(1)[0] and "start" in model.tool_messages(1)[0]
    res = next(p["codeExecutionResult"] for p in t.parts if "codeExecutionResult" in p)
    assert res["outcome"] == "OUTCOME_DEADLINE_EXCEEDED"


def test_input_files_are_in_the_working_directory_and_outputs_carry_over(sb):
    csv = b"city,total\nParis,3\nLyon,4\n"
    script = [call("import pandas as pd\ndf = pd.read_csv('sales.csv')\nprint(df.total.sum())\n"
                   "df.to_csv('copy.csv', index=False)"),
              call("print(open('copy.csv').read().count('\\n'))"),
              answer("7")]
    with ScriptedModel(script) as model:
        t = Agent(sb, OpenAIChatBackend(model.url)).ask("total?", files={"sales.csv": csv})
    system = model.requests[0]["messages"][0]["content"]
    assert "- sales.csv (26 bytes), first lines:\n    city,total\n    Paris,3" in system  # told the files
    assert t.runs[0][1].stdout == "7\n"
    assert "files written: copy.csv" in model.tool_messages(1)[0]
    assert t.runs[1][1].stdout == "3\n"  # a later run sees what an earlier one wrote


PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('trend')\nplt.show()\nprint('drawn')"


def test_figures_go_back_to_a_model_that_accepts_images(sb):
    with ScriptedModel([call(PLOT), answer("It rises then falls.")]) as model:
        t = Agent(sb, OpenAIChatBackend(model.url, accepts_images=True)).ask("plot")
    msgs = model.requests[1]["messages"]
    user_images = [c for m in msgs if m["role"] == "user" and isinstance(m["content"], list)
                   for c in m["content"] if c["type"] == "image_url"]
    assert len(user_images) == 1
    png = base64.b64decode(user_images[0]["image_url"]["url"].split(",", 1)[1])
    assert png.startswith(b"\x89PNG") and png == t.images[0]
    assert kinds(t) == ["executableCode", "codeExecutionResult", "inlineData", "text"]
    resp = validated(t)
    assert resp.candidates[0].content.parts[2].inline_data.data == png


def test_figures_are_only_named_to_a_text_only_model(sb):
    with ScriptedModel([call(PLOT), answer("ok")]) as model:
        t = Agent(sb, OpenAIChatBackend(model.url)).ask("plot")
    assert all(isinstance(m["content"], str) or m["content"] is None for m in model.requests[1]["messages"])
    assert "figure_1.png" in model.tool_messages(1)[0] and "not shown" in model.tool_messages(1)[0]
    assert len(t.images) == 1  # still in the transcript


def test_sandbox_ask_cli(sb, tmp_path: Path):
    data = tmp_path / "data.csv"
    data.write_text("x\n1\n2\n3\n")
    script = [call("import pandas as pd\nimport matplotlib.pyplot as plt\nd = pd.read_csv('data.csv')\n"
                   "print(d.x.sum())\nd.x.plot()\nplt.show()"), answer("The sum is 6.")]
    with ScriptedModel(script) as model:
        out = subprocess.run([sys.executable, "-m", "sandbox.cli", "ask", "sum of x?", "--model", model.url,
                              "--file", str(data), "--out", str(tmp_path / "charts")],
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "```python" in out.stdout and "output:\n6" in out.stdout and "The sum is 6." in out.stdout
    assert (tmp_path / "charts" / "chart_1.png").read_bytes().startswith(b"\x89PNG")
    assert "running code (1)" in out.stderr

    with ScriptedModel([call("print(6*7)"), answer("42")]) as model:
        out = subprocess.run([sys.executable, "-m", "sandbox.cli", "ask", "6*7?", "--model", model.url, "--json"],
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    resp = types.GenerateContentResponse.model_validate(json.loads(out.stdout))
    assert resp.text == "42" and resp.code_execution_result.strip() == "42"


def test_sandbox_ask_cli_errors_are_clear(tmp_path: Path):
    out = subprocess.run([sys.executable, "-m", "sandbox.cli", "ask", "q", "--model", "ftp://x"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "must be an http(s) URL" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "sandbox.cli", "ask", "q", "--model", "http://127.0.0.1:9/v1",
                          "--model-name", "m"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 3 and "the model failed" in out.stderr and "Traceback" not in out.stderr


def test_sandbox_ask_runs_on_a_server_with_url(server):
    import os

    from live_server import KEY
    with ScriptedModel([call("import sympy\nprint(sympy.prime(10))"), answer("29")]) as model:
        out = subprocess.run([sys.executable, "-m", "sandbox.cli", "ask", "10th prime?", "--model", model.url,
                              "--url", server.url], capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, SANDBOX_API_KEY=KEY))
    assert out.returncode == 0, out.stderr
    assert "output:\n29" in out.stdout and "starting a jail" not in out.stderr


def test_input_images_are_shown_to_a_model_that_accepts_images(sb):
    from _helpers import make_png

    png = make_png(8, 6)
    files = {"photo.png": png, "notes.txt": b"hello\n"}
    for accepts in (True, False):
        with ScriptedModel([call("from PIL import Image\nprint(Image.open('photo.png').size)"), answer("8x6")]) as model:
            t = Agent(sb, OpenAIChatBackend(model.url, accepts_images=accepts)).ask("how big?", files=files)
        assert t.runs[0][1].stdout == "(8, 6)\n"
        question = model.requests[0]["messages"][1]["content"]
        if accepts:
            assert question[0] == {"type": "text", "text": "how big?"}
            assert [c["image_url"]["url"] for c in question[1:]] == [
                "data:image/png;base64," + base64.b64encode(png).decode()]
        else:
            assert question == "how big?"
