"""What a batch runs: items (one program and its tests) and the options every item shares.

An input line is one JSON object: ``{id, code, tests?, entry_point?, timeout?, files?, meta?}``.
``tests`` is either assert code run after ``code`` in the same program (HumanEval-style), or a
list of stdio cases ``[{stdin, expected_stdout}]``, each one run of ``code``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInputError

ItemId = str | int
KNOWN_KEYS = {"id", "code", "tests", "entry_point", "timeout", "files", "meta"}


@dataclass(frozen=True)
class Case:
    """One stdio test: the program reads `stdin` and must print `expected_stdout`."""

    stdin: str
    expected_stdout: str


@dataclass(frozen=True)
class Item:
    """One program to check. `tests` is assert code (str), stdio cases, or None (run it once)."""

    id: ItemId
    code: str
    tests: str | tuple[Case, ...] | None = None
    entry_point: str | None = None
    timeout: float | None = None
    files: Mapping[str, bytes | str] | None = field(default=None, repr=False)
    meta: Any = None
    index: int = 0  # position in the input, for ordered output

    @classmethod
    def from_dict(cls, obj: object, index: int = 0) -> Item:
        """Validate one input object; InvalidInputError says what is wrong with it."""
        if not isinstance(obj, dict):
            raise InvalidInputError(f"expected a JSON object, got {type(obj).__name__}")
        unknown = set(obj) - KNOWN_KEYS
        if unknown:
            raise InvalidInputError(f"unknown key(s) {', '.join(sorted(unknown))}; "
                                    f"known: {', '.join(sorted(KNOWN_KEYS))}")
        if "id" not in obj:
            raise InvalidInputError("missing 'id'")
        item_id = obj["id"]
        if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or item_id == "":
            raise InvalidInputError(f"'id' must be a non-empty string or an integer, not {item_id!r}")
        code = obj.get("code")
        if not isinstance(code, str):
            raise InvalidInputError("'code' must be a string" if "code" in obj else "missing 'code'")
        tests = _tests(obj.get("tests"))
        entry_point = obj.get("entry_point")
        if entry_point is not None:
            if not isinstance(entry_point, str) or not entry_point.isidentifier():
                raise InvalidInputError(f"'entry_point' must be a Python identifier, not {entry_point!r}")
            if not isinstance(tests, str):
                raise InvalidInputError("'entry_point' needs assert tests (a string of test code)")
        timeout = obj.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not math.isfinite(timeout) or timeout <= 0):
            raise InvalidInputError(f"'timeout' must be a positive number of seconds, not {timeout!r}")
        return cls(id=item_id, code=code, tests=tests, entry_point=entry_point,
                   timeout=None if timeout is None else float(timeout), files=_files(obj.get("files")),
                   meta=obj.get("meta"), index=index)


def _tests(tests: object) -> str | tuple[Case, ...] | None:
    if tests is None or isinstance(tests, str):
        return tests
    if not isinstance(tests, list) or not tests:
        raise InvalidInputError("'tests' must be assert code (a string) or a non-empty list of "
                                "{stdin, expected_stdout} cases")
    cases = []
    for i, case in enumerate(tests):
        if not isinstance(case, dict) or not isinstance(case.get("expected_stdout"), str) \
                or not isinstance(case.get("stdin", ""), str) or set(case) - {"stdin", "expected_stdout"}:
            raise InvalidInputError(f"tests[{i}] must be {{\"stdin\": str, \"expected_stdout\": str}}")
        cases.append(Case(stdin=case.get("stdin", ""), expected_stdout=case["expected_stdout"]))
    return tuple(cases)


def _files(files: object) -> dict[str, bytes | str] | None:
    """`{name: text}` or `{name: {"base64": "..."}}` for binary files."""
    if files is None:
        return None
    if not isinstance(files, dict):
        raise InvalidInputError("'files' must be an object of name -> text or {\"base64\": ...}")
    out: dict[str, bytes | str] = {}
    for name, data in files.items():
        if isinstance(data, str):
            out[name] = data
        elif isinstance(data, dict) and set(data) == {"base64"} and isinstance(data["base64"], str):
            try:
                out[name] = base64.b64decode(data["base64"], validate=True)
            except binascii.Error:
                raise InvalidInputError(f"files[{name!r}] is not valid base64") from None
        else:
            raise InvalidInputError(f"files[{name!r}] must be text or {{\"base64\": ...}}")
    return out


@dataclass(frozen=True)
class Options:
    """What every item of a batch shares. An item's own `timeout` wins over `timeout`."""

    timeout: float | None = None       # seconds per run (default: the policy's)
    memory_mb: int | None = None       # memory limit per run (default: the policy's)
    retries: int = 2                   # extra attempts after an engine fault (sandbox_error)
    fail_fast: bool = True             # stdio: stop an item at its first case that does not pass
    float_tol: float | None = None     # stdio: compare numbers with this absolute/relative tolerance
    max_output_chars: int = 2000       # stdout/stderr kept per case in the record

    def __post_init__(self) -> None:
        if self.timeout is not None and not (self.timeout > 0):
            raise InvalidInputError("timeout must be positive")
        if self.memory_mb is not None and self.memory_mb < 1:
            raise InvalidInputError("memory_mb must be at least 1")
        if self.retries < 0:
            raise InvalidInputError("retries must be >= 0")
        if self.float_tol is not None and not (self.float_tol >= 0):
            raise InvalidInputError("float_tol must be >= 0")
        if self.max_output_chars < 0:
            raise InvalidInputError("max_output_chars must be >= 0")


def parse_line(line: str, index: int) -> Item:
    """One input line (JSON) -> Item; InvalidInputError with a short reason otherwise."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    return Item.from_dict(obj, index)
