"""Run one item on a sandbox and score it: the record a batch writes for that item.

Statuses (item and case): ``passed``; ``failed`` (the tests ran and did not pass: an
AssertionError, wrong output, or the program ended before its tests finished); ``timeout``
(wall clock or CPU time); ``memory_limit``; ``error`` (any other exception, a non-zero exit, a
crash or a policy kill); ``infra_error`` (the engine failed even after retries: never a score).
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import time
from typing import Any

from ..errors import InvalidInputError, QueueFullError, SandboxUnavailableError
from ..results import ExecError, Outcome, Result, Usage
from ..types import Runner
from .items import Case, Item, Options

PASSED, FAILED, TIMEOUT, MEMORY_LIMIT, ERROR, INFRA_ERROR = (
    "passed", "failed", "timeout", "memory_limit", "error", "infra_error")
STATUSES = (PASSED, FAILED, TIMEOUT, MEMORY_LIMIT, ERROR, INFRA_ERROR)

_BY_OUTCOME = {Outcome.TIMEOUT: TIMEOUT, Outcome.CPU_LIMIT: TIMEOUT, Outcome.MEMORY_LIMIT: MEMORY_LIMIT,
               Outcome.CRASHED: ERROR, Outcome.POLICY_VIOLATION: ERROR, Outcome.ERROR: ERROR}
# Written by the test program after its last test, straight to fd 1: a program that exits early
# (sys.exit(0), os._exit(0)) never prints it, so it cannot pass by skipping its tests.
_MARKER = "__sandbox_batch_done_" + secrets.token_hex(8) + "__"
_TAIL = f"\n\n__import__('sys').stdout.flush()\n__import__('os').write(1, {_MARKER.encode()!r})\n"


def assert_program(item: Item) -> str:
    """code + tests (+ check(entry_point)) + the completion marker: one program."""
    check = f"check({item.entry_point})\n" if item.entry_point else ""
    return item.code + "\n" + str(item.tests) + "\n" + check + _TAIL


def normalise(text: str) -> str:
    """Trailing whitespace of every line and trailing blank lines do not count."""
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def same_output(got: str, expected: str, float_tol: float | None = None) -> bool:
    """Equal after normalise(); with float_tol, numeric tokens may differ by that much."""
    got, expected = normalise(got), normalise(expected)
    if got == expected:
        return True
    if float_tol is None:
        return False
    a_lines, b_lines = got.splitlines(), expected.splitlines()
    if len(a_lines) != len(b_lines):
        return False
    for a_line, b_line in zip(a_lines, b_lines):
        a_tok, b_tok = a_line.split(), b_line.split()
        if len(a_tok) != len(b_tok):
            return False
        for a, b in zip(a_tok, b_tok):
            if a == b:
                continue
            try:
                x, y = float(a), float(b)
            except ValueError:
                return False
            if not math.isclose(x, y, rel_tol=float_tol, abs_tol=float_tol):
                return False
    return True


def _clip(text: str, limit: int, keep_tail: bool = False) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return (text[-limit:] if keep_tail else text[:limit]) if limit else "", True


def _run(sb: Runner, code: str, item: Item, opts: Options, stdin: str | None) -> tuple[Result, int]:
    """sb.run with retries on engine faults (and on a full shared queue). Returns (result, attempts)."""
    limits = {"memory_bytes": opts.memory_mb << 20} if opts.memory_mb else None
    timeout = item.timeout if item.timeout is not None else opts.timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            r = sb.run(code, item.files, stdin=stdin, timeout=timeout, limits=limits)
        except (QueueFullError, SandboxUnavailableError) as exc:  # a full shared queue, no live slot
            r = _engine_refused(exc)
        if r.outcome is not Outcome.SANDBOX_ERROR:
            return r, attempt
        if attempt > opts.retries:
            return r, attempt
        time.sleep(min(2.0, 0.1 * 2 ** (attempt - 1)))


def _engine_refused(exc: Exception) -> Result:
    """The run never started (queue full, no live slot) on any attempt: an engine fault."""
    return Result(outcome=Outcome.SANDBOX_ERROR, stdout="", stderr="", stdout_truncated=False,
                  stderr_truncated=False, error=ExecError(type(exc).__name__, str(exc), None, ""),
                  exit_code=None, images=[], files=[], usage=Usage(0.0, 0.0, 0))


def _case_record(r: Result, status: str, opts: Options) -> dict[str, Any]:
    stdout, out_cut = _clip(r.stdout, opts.max_output_chars)
    stderr, err_cut = _clip(r.stderr, opts.max_output_chars, keep_tail=True)
    return {
        "status": status, "outcome": r.outcome.value, "exit_code": r.exit_code,
        "stdout": stdout, "stderr": stderr, "output_truncated": out_cut or err_cut or r.stdout_truncated,
        "error": None if r.error is None else {"type": r.error.type, "message": r.error.message[:500],
                                               "line": r.error.line},
        "wall_ms": round(r.usage.wall_ms, 3), "cpu_ms": round(r.usage.cpu_ms, 3),
        "peak_memory_bytes": r.usage.peak_memory_bytes,
    }


def _failure_message(r: Result, status: str, detail: str | None) -> str:
    if detail:
        return detail
    if status == INFRA_ERROR:
        return "engine fault after every retry: " + (r.error.message if r.error else "")
    if status == TIMEOUT:
        return f"{r.outcome.value} after {r.usage.wall_ms / 1000:.2f} s"
    if status == MEMORY_LIMIT:
        return "memory limit exceeded"
    if r.error is not None:
        where = f" (line {r.error.line})" if r.error.line else ""
        text = f"{r.error.type}: {r.error.message}" if r.error.message else r.error.type
        return text[:300] + where
    return f"{r.outcome.value}, exit code {r.exit_code}"


def _status(r: Result) -> str:
    if r.outcome is Outcome.SANDBOX_ERROR:
        return INFRA_ERROR
    if r.outcome is Outcome.ERROR and r.error is not None and r.error.type == "AssertionError":
        return FAILED
    return _BY_OUTCOME.get(r.outcome, ERROR)


def _assert_case(sb: Runner, item: Item, opts: Options) -> tuple[dict, str | None, int]:
    r, attempts = _run(sb, assert_program(item), item, opts, None)
    status, detail = _status(r), None
    if r.outcome is Outcome.OK:
        if _MARKER in r.stdout:
            status = PASSED
        elif r.stdout_truncated:
            status, detail = ERROR, "the output passed the engine's cap, so the tests' completion could not be seen"
        else:
            status, detail = FAILED, "the program exited before its tests finished"
    r = _strip_marker(r)
    case = _case_record(r, status, opts)
    return case, None if status == PASSED else _failure_message(r, status, detail), attempts


def _strip_marker(r: Result) -> Result:
    if _MARKER not in r.stdout:
        return r
    return dataclasses.replace(r, stdout=r.stdout.replace(_MARKER, ""))


def _stdio_case(sb: Runner, item: Item, case: Case, opts: Options) -> tuple[dict, str | None, int]:
    r, attempts = _run(sb, item.code, item, opts, case.stdin)
    status, detail = _status(r), None
    if r.outcome is Outcome.OK:
        if same_output(r.stdout, case.expected_stdout, opts.float_tol):
            status = PASSED
        else:
            status = FAILED
            detail = (f"wrong output: expected {normalise(case.expected_stdout)[:120]!r}, "
                      f"got {normalise(r.stdout)[:120]!r}")
    record = _case_record(r, status, opts)
    return record, None if status == PASSED else _failure_message(r, status, detail), attempts


def evaluate(sb: Runner, item: Item, opts: Options) -> dict[str, Any]:
    """Run `item` on `sb` (anything with Sandbox.run's signature) and return its record (a plain dict)."""
    cases: list[dict] = []
    first_failure: dict | None = None
    attempts = 1
    if isinstance(item.tests, tuple):
        total = len(item.tests)
        steps = [lambda c=c: _stdio_case(sb, item, c, opts) for c in item.tests]
    elif item.tests is None:
        total = 1
        steps = [lambda: _plain_case(sb, item, opts)]
    else:
        total = 1
        steps = [lambda: _assert_case(sb, item, opts)]
    for i, step in enumerate(steps):
        try:
            case, failure, n = step()
        except InvalidInputError as exc:  # a bad file name, an oversize input: nothing ran
            cases.append({"status": ERROR, "outcome": None, "error": {"type": "InvalidInputError",
                                                                       "message": str(exc), "line": None}})
            first_failure = first_failure or {"case": i, "status": ERROR, "message": f"invalid item: {exc}"}
            break
        attempts = max(attempts, n)
        cases.append(case)
        if failure is not None and first_failure is None:
            first_failure = {"case": i, "status": case["status"], "message": failure}
        if failure is not None and (opts.fail_fast or case["status"] == INFRA_ERROR):
            break
    passed = sum(c["status"] == PASSED for c in cases)
    if any(c["status"] == INFRA_ERROR for c in cases):
        status = INFRA_ERROR
    else:
        status = PASSED if passed == total else first_failure["status"]  # type: ignore[index]
    record: dict[str, Any] = {"id": item.id, "status": status, "passed": passed, "total": total,
                              "first_failure": first_failure, "cases": cases, "attempts": attempts}
    if item.meta is not None:
        record["meta"] = item.meta
    return record


def _plain_case(sb: Runner, item: Item, opts: Options) -> tuple[dict, str | None, int]:
    r, attempts = _run(sb, item.code, item, opts, None)
    status = PASSED if r.outcome is Outcome.OK else _status(r)
    return _case_record(r, status, opts), None if status == PASSED else _failure_message(r, status, None), attempts
