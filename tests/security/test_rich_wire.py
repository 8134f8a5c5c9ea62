"""Rich outputs are the jail's words: the host decodes them as hostile bytes (issue 22).

A program shares its process with the runner, so it can write any result frame it likes. Each test
forges one, through the real engine or straight into wire.decode_reply: the caps are checked before
any per-entry work, each value is re-checked (a known MIME type, within its cap, of its kind), and
the work is linear in the reply's size.
"""

from __future__ import annotations

import json
import time

from sandbox import Limits, Outcome
from sandbox.host import wire

from ._helpers import describe

FORGE = r"""
import json, os, struct
outputs, blobs = {outputs}, {blobs}
outputs = outputs * {times}
head = json.dumps({{"error": None, "exit_code": 0, "images": [], "images_dropped": 0, "files": [],
                   "files_dropped": 0, "outputs": outputs, "outputs_dropped": 0}}).encode()
body = b"".join(blobs)
os.write(3, b"SBX1" + struct.pack(">IQ", len(head), len(body)) + head + body)
os._exit(0)
"""


def forge(sb, outputs: list, blobs: list[bytes], times: int = 1, **kw):
    return sb.run(FORGE.format(outputs=repr(outputs), blobs=repr(blobs), times=times), **kw)


def test_a_forged_reply_with_more_outputs_than_the_cap_is_refused_at_once(sb):
    # 60,000 entries (about what the 4 MiB header holds): refused before it is parsed (its
    # structure is more than 64 outputs can have), so before any per-entry work.
    many = [{"main": False, "truncated": False, "items": [["text/plain", 0]]}]
    t0 = time.thread_time()
    r = forge(sb, many, [], times=60_000, limits={"max_outputs": 64})
    host_cpu = time.thread_time() - t0
    assert r.outcome is Outcome.ERROR and r.error.type == "ResultChannelError", describe(r)
    assert r.outputs == [], describe(r)
    assert host_cpu < 1.0, f"the host spent {host_cpu:.2f} s of CPU on one forged reply"


def test_each_forged_value_is_checked(sb):
    ok_png = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")
    outputs = [
        {"main": True, "truncated": False, "items": [["text/plain", 2], ["text/html", 3]]},    # kept
        {"main": False, "truncated": False, "items": [["text/html", 3]]},                      # no text/plain
        {"main": False, "truncated": False, "items": [["text/plain", 1], ["x-evil/type", 1]]},  # unknown type
        {"main": False, "truncated": False, "items": [["text/plain", 1], ["image/png", 4]]},     # not a PNG
        {"main": False, "truncated": False, "items": [["text/plain", 1], ["application/json", 3]]},  # NaN
        {"main": False, "truncated": False, "items": [["text/plain", 1], ["text/plain", 1]]},   # repeated
        {"main": False, "truncated": False, "items": [["text/plain", 1], ["image/png", len(ok_png)]]},  # kept
        {"main": False, "truncated": False, "items": [["text/plain", 200]]},                    # over its cap
    ]
    blobs = [b"hi", b"<b>", b"<i>", b"a", b"b", b"c", b"nope", b"d", b"NaN", b"e", b"f", b"g", ok_png, b"y" * 200]
    r = forge(sb, outputs, blobs, limits={"max_output_text_bytes": 100})
    assert [(o.text, o.main) for o in r.outputs] == [("hi", True), ("g", False)], describe(r)
    assert r.outputs[0].html == "<b>" and r.outputs[1].png == ok_png
    assert r.stderr.count("a rich output was discarded") == 4  # the same note once


def test_sizes_that_do_not_add_up_discard_the_outputs(sb):
    r = forge(sb, [{"main": True, "truncated": False, "items": [["text/plain", 10]]}], [b"short"])
    assert r.outputs == [] and "malformed" in r.stderr, describe(r)


def _reply(result: dict, body: bytes) -> tuple[dict, bytes]:
    raw = json.dumps(result).encode()
    header = {"op": "done", "exit_code": 0, "stdout_dropped": 0, "stderr_dropped": 0, "timed_out": False,
              "wall_ms": 1.0, "cpu_ms": 1.0, "main_cpu_ms": 0.0, "result": True, "result_error": None,
              "blob_sizes": [0, 0, len(raw), len(body)]}
    return header, raw + body


def test_decoding_the_largest_output_reply_is_linear():
    # As many outputs and items as the caps allow, each value a deeply nested JSON within its cap:
    # decoded as cheaply as parsing it, and every deep value refused (RecursionError is caught).
    lim = Limits(max_outputs=4096, max_output_json_bytes=1 << 20, max_output_bytes=1 << 30)
    deep = b"[" * 200_000 + b"]" * 200_000
    items = [["text/plain", 1], ["application/json", len(deep)]]
    outputs = [{"main": False, "truncated": False, "items": items}] * 16
    outputs += [{"main": False, "truncated": False, "items": [["text/plain", 1]]}] * 4000
    body = (b"t" + deep) * 16 + b"u" * 4000
    header, payload = _reply({"error": None, "exit_code": 0, "images": [], "files": [], "outputs": outputs},
                             body)
    t0 = time.process_time()
    json.loads(payload[:header["blob_sizes"][2]])
    for _ in range(16):
        try:
            json.loads(deep)
        except RecursionError:
            pass
    parse = time.process_time() - t0
    t0 = time.process_time()
    r = wire.decode_reply(header, payload, 0, 0, lim)
    spent = time.process_time() - t0
    assert len(r.outputs) == 4000 and all(o.text == "u" for o in r.outputs)
    assert spent < 20 * parse + 0.5, f"decoding took {spent:.2f} s; parsing its JSON {parse:.3f} s"


def test_a_figure_chart_that_is_not_json_is_dropped_but_the_figure_stays():
    png = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000002000000030806000000")
    header, payload = _reply({"error": None, "exit_code": 0, "files": [], "outputs": [],
                              "images": [{"name": "figure_1.png", "size": len(png), "chart": 3}]}, png + b"{{{")
    r = wire.decode_reply(header, payload, 0, 0, Limits())
    assert len(r.images) == 1 and r.images[0].chart is None and "chart data was discarded (not JSON)" in r.stderr


def test_charts_and_outputs_over_max_output_bytes_are_refused_together():
    png = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000002000000030806000000")
    outputs = [{"main": True, "truncated": False, "items": [["text/plain", 60]]}]
    header, payload = _reply({"error": None, "exit_code": 0, "files": [], "outputs": outputs,
                              "images": [{"name": "figure_1.png", "size": len(png), "chart": 60}]},
                             png + b"t" * 60 + b"[" + b"0," * 28 + b"10]")
    r = wire.decode_reply(header, payload, 0, 0, Limits(max_output_bytes=100))
    assert r.images == [] and r.outputs == [] and "malformed" in r.stderr
    r = wire.decode_reply(header, payload, 0, 0, Limits(max_output_bytes=120))
    assert len(r.images) == 1 and r.images[0].chart is None and len(r.outputs) == 1   # a list is no chart


def test_json_values_beyond_the_runs_budget_are_refused_before_they_are_parsed():
    # Three JSON outputs of small lists, each at its byte cap, and a figure's chart data of the
    # same: each value costs the host far more to parse than its byte (about 0.3 us per `[0]`,
    # holding the interpreter's lock). Before: all parsed, 3-4 times the cost of parsing one.
    # Now the values are counted from the bytes first and the run's budget
    # (max_output_json_values) refuses them unparsed.
    lim = Limits()
    unit = b"[0],"
    blob = b"[" + unit * ((lim.max_output_json_bytes - 2) // len(unit) - 1) + b"[0]]"
    png = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000002000000030806000000")
    items = [["text/plain", 1], ["application/json", len(blob)]]
    outputs = [{"main": False, "truncated": False, "items": items}] * 3
    header, payload = _reply({"error": None, "exit_code": 0, "files": [], "outputs": outputs,
                              "images": [{"name": "figure_1.png", "size": len(png), "chart": len(blob)}]},
                             png + (b"t" + blob) * 3 + blob)
    t0 = time.process_time()
    json.loads(blob)
    parse_one = time.process_time() - t0
    t0 = time.process_time()
    r = wire.decode_reply(header, payload, 0, 0, lim)
    spent = time.process_time() - t0
    assert r.outputs == [] and r.images[0].chart is None, describe(r)
    assert "over max_output_json_values" in r.stderr, describe(r)
    assert spent < parse_one / 2, f"decoding took {spent:.3f} s; parsing one of its values {parse_one:.3f} s"


def test_a_json_value_within_the_budget_comes_back_and_one_beyond_is_left_out(sb):
    # The runner counts as the host does: what it sends is never refused. The first value (1,000
    # numbers, keys and strings with separators in them) fits a budget of 1,500; the second does
    # not, so it is left out and its output flagged truncated, its text/plain kept.
    code = (
        "big = {'x': list(range(500)), 'label, with: [separators] {': ['a,b:c'] * 498}\n"
        "display({'application/json': big, 'text/plain': 'one'}, raw=True)\n"
        "display({'application/json': big, 'text/plain': 'two'}, raw=True)\n"
    )
    r = sb.run(code, limits={"max_output_json_values": 1500})
    assert r.outcome is Outcome.OK, describe(r)
    first, second = r.outputs
    assert first.data["application/json"]["label, with: [separators] {"] == ["a,b:c"] * 498 and not first.truncated
    assert "application/json" not in second.data and second.truncated and second.text == "two"
