"""SandboxFusion's `POST /run_code`, so RL frameworks that compute code rewards with it (verl's
`sandbox_fusion` reward, SkyRL) can point their URL at us.

Request `{code, language, stdin, run_timeout, compile_timeout, memory_limit_MB, files, fetch_files}`;
response `{status, message, compile_result: null, run_result: {status, execution_time, return_code,
stdout, stderr}, files}`. Only `language: "python"` runs; any other language is refused with a
message saying so. `compile_timeout` has nothing to compile and is ignored; `run_timeout` and `memory_limit_MB` are
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

from typing import Any

from ..results import Outcome, Result
from .request import PeerRequestError, RunRequest, b64, b64decode
from .text import stderr_with_summary

LANGUAGES = ("python",)

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
                               "(language: \"python\")")
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
    files = {name: b64decode(data, f"files[{name!r}]") for name, data in files_in.items() if data is not None}
    fetch = payload.get("fetch_files") or []
    if not isinstance(fetch, list) or not all(isinstance(p, str) for p in fetch):
        raise PeerRequestError("fetch_files must be a list of paths")
    timeout = float(timeout) if max_timeout is None else min(float(timeout), max_timeout)
    return RunRequest(code=code, files=files, stdin=stdin, timeout=timeout, limits=limits), fetch


def to_sandboxfusion(result: Result, fetch_files: list[str] = (), inputs: dict[str, bytes] | None = None) -> dict[str, Any]:
    """The `/run_code` response for one run. `fetch_files` are looked up among the files the run
    wrote, then among its unchanged inputs; paths that exist in neither are left out (as
    SandboxFusion does)."""
    written = {f.path: f.data for f in result.files}
    written.update({i.name: i.data for i in result.images if i.name not in written})
    found: dict[str, str] = {}
    for path in fetch_files:
        rel = path.removeprefix("./")
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
