"""SandboxFusion's `POST /run_code`, so RL frameworks that compute code rewards with it (verl's
`sandbox_fusion` reward, SkyRL) can point their URL at us.

Request `{code, language, stdin, run_timeout, compile_timeout, memory_limit_MB, files, fetch_files}`;
response `{status, message, compile_result: null, run_result: {status, execution_time, return_code,
stdout, stderr}, files}`. Only `language: "python"` runs; any other language is refused with a
message saying so. Paths in `files` and `fetch_files` may be relative (the working directory), under
`/mnt/data/` (the same directory; the code's `/mnt/data` literals are mapped to it), under any other
`/mnt/` directory (the jail's /mnt is the run's /tmp/mnt) or under `/tmp/` (the run's own /tmp). `compile_timeout` has nothing to compile and is ignored; `run_timeout` and `memory_limit_MB` are
capped at the server's policy (30 s and 1 GiB by default).

| ours                                              | status       | run_result.status  |
|---------------------------------------------------|--------------|--------------------|
| ok                                                | Success      | Finished           |
| error, memory_limit, policy_violation, crashed    | Failed       | Finished           |
| timeout, cpu_limit                                | Failed       | TimeLimitExceeded  |
| sandbox_error                                     | SandboxError | Error              |

`stderr` is what the program wrote plus the traceback (as a Python process prints it) or the reason
it was stopped; `return_code` is the exit status (`-N` for signal N, null when the run timed out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..results import Outcome, Result
from .librechat import DATA_DIR, map_data_dir
from .request import PeerRequestError, RunRequest, b64, b64decode
from .text import outcome_summary, stderr_with_summary

LANGUAGES = ("python", "pytest")
PYTEST_FILE = "test_solution.py"
# language "pytest": the code is a test module, run by pytest as SandboxFusion does (pytest is in the
# image's pinned requirements; an image without it says so).
PYTEST_DRIVER = ("import sys\n"
                 "try:\n    import pytest\n"
                 "except ImportError:\n    sys.exit('pytest is not installed in this sandbox image')\n"
                 f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', {PYTEST_FILE!r}]))\n")
TMP = "/tmp/"
MNT = "/mnt/"   # the jail's /mnt is the run's /tmp/mnt

_RUN_STATUS = {Outcome.TIMEOUT: "TimeLimitExceeded", Outcome.CPU_LIMIT: "TimeLimitExceeded",
               Outcome.SANDBOX_ERROR: "Error"}


def from_sandboxfusion(payload: Any, max_timeout: float | None = None,
                       max_memory_bytes: int | None = None) -> tuple[RunRequest, list[str]]:
    """The run a `/run_code` body asks for, and the paths it wants back (`fetch_files`).
    `run_timeout` and `memory_limit_MB` are capped at the given ceilings (the server's policy):
    a caller may tighten the limits, never loosen them."""
    if not isinstance(payload, dict):
        raise PeerRequestError("the body must be a JSON object")
    code, language = payload.get("code"), payload.get("language")
    if not isinstance(code, str):
        raise PeerRequestError("code must be a string")
    if language not in LANGUAGES:
        raise PeerRequestError(f"language {language!r} is not supported: this sandbox runs Python only "
                               "(language: \"python\" or \"pytest\")")
    stdin = payload.get("stdin")
    if stdin is not None and not isinstance(stdin, str):
        raise PeerRequestError("stdin must be a string")
    timeout = payload.get("run_timeout", 10)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise PeerRequestError("run_timeout must be a positive number of seconds")
    limits: dict[str, Any] = {}
    memory = payload.get("memory_limit_MB", -1)
    if not isinstance(memory, int) or isinstance(memory, bool):
        raise PeerRequestError("memory_limit_MB must be an integer (-1: the server's default)")
    if memory > 0:
        limits["memory_bytes"] = memory << 20 if max_memory_bytes is None else min(memory << 20, max_memory_bytes)
    files_in = payload.get("files") or {}
    if not isinstance(files_in, dict):
        raise PeerRequestError("files must be an object of path -> base64 content")
    files = {in_jail(name): b64decode(data, f"files[{name!r}]") for name, data in files_in.items() if data is not None}
    fetch = payload.get("fetch_files") or []
    if not isinstance(fetch, list) or not all(isinstance(p, str) for p in fetch):
        raise PeerRequestError("fetch_files must be a list of paths")
    from_tmp = tuple(dict.fromkeys(in_jail(p) for p in fetch if in_jail(p).startswith(TMP)))
    if DATA_DIR in code:
        code = map_data_dir(code)
    timeout = float(timeout) if max_timeout is None else min(float(timeout), max_timeout)
    if language == "pytest":
        files = {**files, PYTEST_FILE: code.encode()}
        code = PYTEST_DRIVER
    return RunRequest(code=code, files=files, stdin=stdin, timeout=timeout, limits=limits, fetch=from_tmp), fetch


def in_jail(path: str) -> str:
    """Where a SandboxFusion path is in the jail: `/mnt/data/x` is `x` in the working directory (the
    code's `/mnt/data` string literals are mapped the same way), any other `/mnt/x` the run's
    `/tmp/mnt/x` (the jail's /mnt leads there, so the code's own `/mnt/...` paths reach the same
    file), `/tmp/x` the run's own /tmp, a relative path the working directory's. A path with a `..`
    component, or any other absolute path (system directories), is refused."""
    if any(part == ".." for part in path.split("/")):
        raise PeerRequestError(f"path {path!r} has a '..' component")
    if path.startswith(DATA_DIR + "/"):
        return path[len(DATA_DIR) + 1:].lstrip("/") or path
    if path.startswith(MNT) and len(path) > len(MNT):
        return TMP + "mnt/" + path[len(MNT):]
    if path.startswith(TMP) or not path.startswith("/"):
        return path.removeprefix("./")
    raise PeerRequestError(f"path {path!r} is outside the sandbox's places for files: use a relative path "
                           f"(the working directory), {DATA_DIR}/... (the same), {MNT}... or {TMP}...")


def to_sandboxfusion(result: Result, fetch_files: list[str] = (), inputs: dict[str, bytes] | None = None) -> dict[str, Any]:
    """The `/run_code` response for one run. `fetch_files` are looked up among the files the run
    wrote, then among its unchanged inputs; paths that exist in neither are left out (as
    SandboxFusion does)."""
    written = {f.path: f.data for f in result.files}
    written.update({i.name: i.data for i in result.images if i.name not in written})
    found: dict[str, str] = {}
    for path in fetch_files:
        try:
            rel = in_jail(path)
        except PeerRequestError:
            continue
        data = written.get(rel, (inputs or {}).get(rel))
        if data is not None:
            found[path] = b64(data)
    timed_out = result.outcome in (Outcome.TIMEOUT, Outcome.CPU_LIMIT)
    if result.outcome is Outcome.SANDBOX_ERROR:
        status = "SandboxError"
    else:
        status = "Success" if result.outcome is Outcome.OK else "Failed"
    return {
        "status": status,
        "message": stderr_with_summary(result).strip() if status == "SandboxError" else "",
        "compile_result": None,
        "run_result": {
            "status": _RUN_STATUS.get(result.outcome, "Finished"),
            "execution_time": round(result.usage.wall_ms / 1000, 6),
            "return_code": None if timed_out and result.outcome is Outcome.TIMEOUT else result.exit_code,
            "stdout": result.stdout,
            "stderr": stderr_with_summary(result),
        },
        "executor_pod_name": None,
        "files": found,
    }


def refusal(message: str) -> dict[str, Any]:
    """The response to a request we cannot run: SandboxFusion's `SandboxError` with our reason."""
    return {"status": "SandboxError", "message": message, "compile_result": None, "run_result": None,
            "executor_pod_name": None, "files": {}}


@dataclass(frozen=True)
class JupyterRequest:
    """`/run_jupyter`: cells run one after another in one interpreter (an engine session)."""

    cells: list[str]
    cell_timeout: float | None
    total_timeout: float
    files: dict[str, bytes]
    fetch: list[str]
    limits: dict[str, Any]


def from_jupyter(payload: Any, max_timeout: float | None = None, max_memory_bytes: int | None = None) -> JupyterRequest:
    if not isinstance(payload, dict):
        raise PeerRequestError("the body must be a JSON object")
    cells = payload.get("cells")
    if not isinstance(cells, list) or not all(isinstance(c, str) for c in cells):
        raise PeerRequestError("cells must be a list of strings")
    if payload.get("kernel", "python3") != "python3":
        raise PeerRequestError("kernel must be \"python3\"")
    run, fetch = from_sandboxfusion({"code": "", "language": "python", "files": payload.get("files") or {},
                                     "fetch_files": payload.get("fetch_files") or [],
                                     "memory_limit_MB": payload.get("memory_limit_MB", -1),
                                     "run_timeout": payload.get("total_timeout", 45) or 45},
                                    max_timeout, max_memory_bytes)
    cell_timeout = payload.get("cell_timeout", 0)
    if not isinstance(cell_timeout, (int, float)) or isinstance(cell_timeout, bool) or cell_timeout < 0:
        raise PeerRequestError("cell_timeout must be a number of seconds (0: only the total)")
    return JupyterRequest(cells=list(cells), cell_timeout=float(cell_timeout) or None,
                          total_timeout=run.timeout, files=run.files, fetch=fetch, limits=run.limits)


def jupyter_cell(result: Result) -> dict[str, Any]:
    """One cell's `{stdout, stderr, display, error}`: display() outputs, figures and the last
    expression's value as MIME bundles (binary values base64, as Jupyter sends them), an error as
    `{ename, evalue, traceback}`."""
    display: list[dict[str, Any]] = [_bundle(o.data) for o in result.outputs if not o.main]
    display += [{"image/png": b64(i.data), "text/plain": f"<Figure size {i.width}x{i.height}>"} for i in result.images]
    main = result.main
    if main is not None and result.outcome is Outcome.OK:
        display.append(_bundle(main.data))
    error = []
    if result.outcome is not Outcome.OK:
        err = result.error
        error.append({"ename": err.type if err else result.outcome.value,
                      "evalue": err.message if err else outcome_summary(result),
                      "traceback": (err.traceback if err else "").splitlines()})
    return {"stdout": result.stdout, "stderr": result.stderr, "display": display, "error": error}


def _bundle(data: dict[str, Any]) -> dict[str, Any]:
    return {mime: b64(v) if isinstance(v, (bytes, bytearray)) else v for mime, v in data.items()}


def to_jupyter(cells: list[dict[str, Any]], results: list[Result], written: dict[str, bytes],
               fetch: list[str], inputs: dict[str, bytes], message: str = "") -> dict[str, Any]:
    """The `/run_jupyter` response: Success when every cell ran without an error."""
    found: dict[str, str] = {}
    for path in fetch:
        try:
            rel = in_jail(path)
        except PeerRequestError:
            continue
        data = written.get(rel, inputs.get(rel))
        if data is not None:
            found[path] = b64(data)
    ok = not message and all(r.outcome is Outcome.OK for r in results)
    wall = sum(r.usage.wall_ms for r in results) / 1000
    return {"status": "Success" if ok else "Failed", "message": message,
            "driver": {"status": "Finished", "execution_time": round(wall, 6), "return_code": 0 if ok else 1,
                       "stdout": "", "stderr": ""},
            "cells": cells, "executor_pod_name": None, "files": found}
