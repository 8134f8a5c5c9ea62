"""The JSON result document: a stable contract of keys and types."""

from __future__ import annotations

import base64
import json

import pytest

from sandbox import Outcome, Result

from _helpers import PNG_SIGNATURE, png_size, run_ok

TOP_KEYS = {"outcome", "stdout", "stderr", "stdout_truncated", "stderr_truncated", "error", "exit_code",
            "images", "files", "usage", "outputs", "outputs_dropped"}

RICH = """
import matplotlib.pyplot as plt, sys
plt.figure(figsize=(2, 1), dpi=50)
plt.plot([1, 2])
open('report.csv', 'w').write('a,b\\n1,2\\n')
open('raw.bin', 'wb').write(bytes(range(256)))
print('out ✓')
print('err', file=sys.stderr)
"""


def _check_shape(d: dict) -> None:
    assert set(d) == TOP_KEYS
    assert isinstance(d["outcome"], str) and d["outcome"] in {o.value for o in Outcome}
    assert isinstance(d["stdout"], str) and isinstance(d["stderr"], str)
    assert isinstance(d["stdout_truncated"], bool) and isinstance(d["stderr_truncated"], bool)
    assert d["exit_code"] is None or isinstance(d["exit_code"], int)
    assert set(d["usage"]) == {"wall_ms", "cpu_ms", "peak_memory_bytes", "packages_ms"}
    assert all(isinstance(v, (int, float)) and v >= 0 for v in d["usage"].values())
    for img in d["images"]:
        assert set(img) == {"name", "mime_type", "width", "height", "data_base64", "chart"}
        assert img["chart"] is None or isinstance(img["chart"], dict)
    assert isinstance(d["outputs_dropped"], int)
    for o in d["outputs"]:
        assert set(o) == {"main", "truncated", "data"} and isinstance(o["data"]["text/plain"], str)
    for f in d["files"]:
        assert set(f) == {"path", "mime_type", "size", "data_base64"}
    if d["error"] is not None:
        assert set(d["error"]) == {"type", "message", "line", "traceback"}


def test_rich_result_document(sb):
    r = run_ok(sb, RICH)
    d = r.to_dict()
    _check_shape(d)
    assert d["outcome"] == "ok" and d["exit_code"] == 0 and d["error"] is None
    assert d["stdout"] == "out ✓\n" and d["stderr"] == "err\n"

    assert len(d["images"]) == 1
    img = d["images"][0]
    data = base64.b64decode(img["data_base64"], validate=True)
    assert data.startswith(PNG_SIGNATURE)
    assert (img["name"], img["mime_type"], img["width"], img["height"]) == ("figure_1.png", "image/png", 100, 50)
    assert png_size(data) == (100, 50)

    files = {f["path"]: f for f in d["files"]}
    assert set(files) == {"report.csv", "raw.bin"}
    assert base64.b64decode(files["report.csv"]["data_base64"]) == b"a,b\n1,2\n"
    assert files["report.csv"]["mime_type"] == "text/csv" and files["report.csv"]["size"] == 8
    assert base64.b64decode(files["raw.bin"]["data_base64"]) == bytes(range(256))
    assert files["raw.bin"]["size"] == 256

    # It is plain JSON: dumps and loads give the same document back.
    text = json.dumps(d)
    assert json.loads(text) == d
    assert json.loads(r.to_json()) == d


def test_error_document(sb):
    r = sb.run("def f():\n    raise KeyError('k')\nf()")
    d = r.to_dict()
    _check_shape(d)
    assert d["outcome"] == "error" and d["exit_code"] == 1
    assert d["error"]["type"] == "KeyError"
    assert d["error"]["message"] == "'k'"
    assert d["error"]["line"] == 2
    assert "Traceback" in d["error"]["traceback"]
    assert d["images"] == [] and d["files"] == []
    assert json.loads(json.dumps(d)) == d


def test_limit_outcomes_serialise(sb):
    for code, kw, outcome in [
        ("import time\nprint('t', flush=True)\ntime.sleep(10)", {"timeout": 1}, "timeout"),
        ("import ctypes\nctypes.string_at(0)", {}, "crashed"),
        ("print('z' * 100)", {"limits": {"max_stdout_bytes": 10}}, "ok"),
    ]:
        d = sb.run(code, **kw).to_dict()
        _check_shape(d)
        assert d["outcome"] == outcome
        assert json.loads(json.dumps(d)) == d
    assert d["stdout_truncated"] is True


def test_json_with_hostile_text_stays_valid(sb):
    # Control characters, quotes, NUL and invalid UTF-8 in output must still give valid JSON.
    r = run_ok(sb, "import os\nos.write(1, b'\\x00\\x01\"\\\\\\n\\xff\\xfe</script>')\nprint('\\u2028')")
    text = r.to_json()
    d = json.loads(text)
    assert d["stdout"].startswith('\x00\x01"\\\n')
    assert "</script>" in d["stdout"]


def test_result_is_a_frozen_dataclass(sb):
    r = run_ok(sb, "print(1)")
    assert isinstance(r, Result)
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        r.stdout = "forged"  # type: ignore[misc]
    assert r.stdout == "1\n"


def test_result_strings_are_always_valid_unicode(sb):
    # Lone surrogates from the program (in output, exception messages or tracebacks) must not
    # make the document unencodable for callers that write UTF-8.
    r = sb.run("import sys\nsys.stdout.write('\\ud800 out')\nraise ValueError('bad \\udcff message')")
    assert r.outcome is Outcome.ERROR
    assert r.error.type == "ValueError"
    text = json.dumps(r.to_dict(), ensure_ascii=False)
    text.encode("utf-8")
    r.error.message.encode("utf-8")
    r.error.traceback.encode("utf-8")
