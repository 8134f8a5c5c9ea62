"""The Gemini backend's requests and its reading of answers, checked with google-genai's own
types (no model is reachable here, and Google's API is the only server it talks to)."""

from __future__ import annotations

import warnings

from google.genai import types

from sandbox import Outcome
from sandbox.agent import GeminiBackend, Prompt, Reply, Step
from sandbox.agent.loop import feedback


def backend() -> GeminiBackend:
    return GeminiBackend("gemini-2.5-flash", api_key="not-used-no-request-is-sent")


def test_config_declares_run_python_and_disables_automatic_calls():
    cfg = backend().config("system text")
    decl = cfg.tools[0].function_declarations[0]
    assert decl.name == "run_python" and decl.parameters_json_schema["required"] == ["code"]
    assert "30 s" in decl.description and cfg.automatic_function_calling.disable
    assert cfg.system_instruction == "system text"


def test_a_function_call_becomes_a_run_and_text_a_final_answer():
    b = backend()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call = types.GenerateContentResponse.model_validate({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "Computing."}, {"functionCall": {"id": "c1", "name": "run_python", "args": {"code": "print(1)"}}}]}}]})
        final = types.GenerateContentResponse.model_validate(
            {"candidates": [{"content": {"role": "model", "parts": [{"text": "It is 1."}]}}]})
        wrong = types.GenerateContentResponse.model_validate({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "shell", "args": {"cmd": "ls"}}}]}}]})
    r = b.parse(call)
    assert (r.text, r.code, r.call_id, r.error) == ("Computing.", "print(1)", "c1", None)
    assert b.parse(final) == Reply(text="It is 1.", raw=final.candidates[0].content)
    assert "no tool named 'shell'" in b.parse(wrong).error
    two = types.GenerateContentResponse.model_validate({"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "run_python", "args": {"code": "1"}}, "thoughtSignature": "c2ln"},
        {"functionCall": {"name": "run_python", "args": {"code": "2"}}}]}}]})
    r = b.parse(two)
    assert r.code == "1" and [p.function_call.args["code"] for p in r.raw.parts] == ["1"]
    assert r.raw.parts[0].thought_signature == b"sig"  # kept: Gemini wants it back with the call


def test_results_and_figures_go_back_in_the_function_response(outcomes):
    b = backend()
    code, result = outcomes[Outcome.OK]
    raw = types.Content(role="model", parts=[types.Part(function_call=types.FunctionCall(
        id="c1", name="run_python", args={"code": code}))])
    step = Step(Reply("", code, "c1", None, raw), result, feedback(result, True), True)
    contents = b.contents(Prompt("plot it", (("in.png", "image/png", result.images[0].data),)), [step])
    assert contents[0].parts[1].inline_data.mime_type == "image/png"  # input images go with the question
    assert [c.role for c in contents] == ["user", "model", "user"]
    response = contents[2].parts[0].function_response
    assert response.id == "c1" and response.name == "run_python"
    assert response.response["output"].startswith("outcome: ok\nplotting")
    assert [p.inline_data.data for p in response.parts] == [i.data for i in result.images]
    # The whole request body serialises as the SDK would send it.
    for c in contents:
        types.Content.model_validate(c.model_dump(mode="json", exclude_none=True))
