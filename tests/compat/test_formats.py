"""Gemini parts and OpenAI items, validated by google-genai's and openai's own types."""

from __future__ import annotations

import base64
import warnings

import pytest
from google.genai import types
from openai.types.responses import ResponseCodeInterpreterToolCall, ResponseOutputItem
from pydantic import TypeAdapter

from sandbox import Outcome
from sandbox.compat import gemini
from sandbox.compat import openai as openai_compat

EXPECTED_GEMINI = {
    Outcome.OK: "OUTCOME_OK", Outcome.ERROR: "OUTCOME_FAILED",
    Outcome.TIMEOUT: "OUTCOME_DEADLINE_EXCEEDED", Outcome.CPU_LIMIT: "OUTCOME_DEADLINE_EXCEEDED",
    Outcome.MEMORY_LIMIT: "OUTCOME_FAILED", Outcome.POLICY_VIOLATION: "OUTCOME_FAILED",
    Outcome.CRASHED: "OUTCOME_FAILED", Outcome.SANDBOX_ERROR: "OUTCOME_FAILED",
}
# What the model must be able to read in `output` for each outcome.
EXPECTED_TEXT = {
    Outcome.OK: ["plotting"], Outcome.ERROR: ["before", "ZeroDivisionError", "Traceback"],
    Outcome.TIMEOUT: ["waiting", "wall-clock limit"], Outcome.CPU_LIMIT: ["spinning", "CPU-time limit"],
    Outcome.MEMORY_LIMIT: ["memory limit"], Outcome.POLICY_VIOLATION: ["system call the sandbox forbids"],
    Outcome.CRASHED: ["crashed", "11"], Outcome.SANDBOX_ERROR: ["sandbox itself failed", "retry"],
}


def validate_parts(parts: list[dict]) -> list[types.Part]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unknown enum value is only a warning in google-genai
        return [types.Part.model_validate(p) for p in parts]


def test_mapping_covers_every_outcome():
    assert set(gemini.OUTCOMES) == set(Outcome)
    assert set(openai_compat.STATUS) == set(Outcome)


@pytest.mark.parametrize("outcome", list(Outcome))
def test_gemini_parts_for_each_outcome(outcomes, outcome):
    code, result = outcomes[outcome]
    parts = validate_parts(gemini.to_gemini_parts(result, code, id="run-1"))
    assert parts[0].executable_code.code == code
    assert parts[0].executable_code.language == types.Language.PYTHON
    assert parts[0].executable_code.id == "run-1"
    res = parts[1].code_execution_result
    assert res.outcome == types.Outcome(EXPECTED_GEMINI[outcome])
    assert res.id == "run-1"
    for text in EXPECTED_TEXT[outcome]:
        assert text in res.output, (text, res.output)
    assert len(parts) == 2 + len(result.images)


def test_gemini_figures_are_inline_png_parts(outcomes):
    code, result = outcomes[Outcome.OK]
    assert len(result.images) == 2
    parts = validate_parts(gemini.to_gemini_parts(result, code))
    assert "id" not in gemini.to_gemini_parts(result, code)[0]["executableCode"]
    for part, image in zip(parts[2:], result.images):
        assert part.inline_data.mime_type == "image/png"
        assert part.inline_data.data == image.data  # the SDK decoded our base64 back to the PNG
        assert part.inline_data.data.startswith(b"\x89PNG")


def test_gemini_parts_fit_a_generate_content_response(outcomes):
    code, result = outcomes[Outcome.OK]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resp = types.GenerateContentResponse.model_validate(
            {"candidates": [{"content": {"role": "model", "parts": gemini.to_gemini_parts(result, code)}}]})
    assert resp.executable_code == code
    assert resp.code_execution_result.startswith("plotting")


def test_from_gemini_part_reads_code_and_refuses_other_languages():
    assert gemini.from_gemini_part({"executableCode": {"language": "PYTHON", "code": "print(1)"}}) == "print(1)"
    with pytest.raises(ValueError, match="only PYTHON"):
        gemini.from_gemini_part({"executableCode": {"language": "JS", "code": "1"}})
    with pytest.raises(ValueError):
        gemini.from_gemini_part({"text": "hi"})


@pytest.mark.parametrize("outcome", list(Outcome))
def test_openai_item_for_each_outcome(outcomes, outcome):
    code, result = outcomes[outcome]
    raw = openai_compat.to_openai_item(result, code)
    item = ResponseCodeInterpreterToolCall.model_validate(raw, strict=True)
    same = TypeAdapter(ResponseOutputItem).validate_python(raw)  # the union a Responses client parses
    assert isinstance(same, ResponseCodeInterpreterToolCall)
    assert item.code == code and item.type == "code_interpreter_call"
    assert item.status == openai_compat.STATUS[outcome]
    logs = [o for o in item.outputs if o.type == "logs"]
    images = [o for o in item.outputs if o.type == "image"]
    for text in EXPECTED_TEXT[outcome]:
        assert text in logs[0].logs
    assert len(images) == len(result.images)
    for out, image in zip(images, result.images):
        prefix = "data:image/png;base64,"
        assert out.url.startswith(prefix)
        assert base64.b64decode(out.url[len(prefix):]) == image.data


def test_openai_item_round_trips_code():
    item = {"type": "code_interpreter_call", "id": "ci_1", "code": "print(2)", "container_id": "c",
            "status": "completed", "outputs": None}
    assert openai_compat.from_openai_item(item) == "print(2)"
    with pytest.raises(ValueError):
        openai_compat.from_openai_item({"type": "message"})
