"""Typed results of an execution: what `Sandbox.run()` returns and `--json` prints."""

from __future__ import annotations

import base64
import enum
import json
from dataclasses import dataclass, field
from typing import Any


class Outcome(str, enum.Enum):
    """How an execution ended. A closed set, derived from the engine's own observations."""

    OK = "ok"
    ERROR = "error"                        # uncaught exception or non-zero exit
    TIMEOUT = "timeout"                    # wall clock ran out
    MEMORY_LIMIT = "memory_limit"          # the cgroup's OOM killer fired
    CPU_LIMIT = "cpu_limit"                # RLIMIT_CPU used up
    POLICY_VIOLATION = "policy_violation"  # killed by the seccomp filter
    CRASHED = "crashed"                    # killed by another signal (SIGSEGV, SIGABRT, ...)
    SANDBOX_ERROR = "sandbox_error"        # engine fault; the caller may retry

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ExecError:
    """An uncaught exception in the user's code. `line` is in the user's source."""

    type: str
    message: str
    line: int | None
    traceback: str


@dataclass(frozen=True)
class Figure:
    """A matplotlib figure rendered to PNG."""

    name: str
    mime_type: str
    width: int
    height: int
    data: bytes = field(repr=False)


Image = Figure  # the name before 0.2; kept so existing imports work


@dataclass(frozen=True)
class File:
    """A file the code created or changed in its working directory."""

    path: str
    mime_type: str
    size: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Usage:
    wall_ms: float
    cpu_ms: float
    peak_memory_bytes: int


@dataclass(frozen=True)
class Output:
    """A chunk of live output: text the program wrote to `stream` ("stdout" or "stderr")."""

    stream: str
    text: str


@dataclass(frozen=True)
class Result:
    """Everything one execution produced."""

    outcome: Outcome
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    error: ExecError | None
    exit_code: int | None
    images: list[Figure]
    files: list[File]
    usage: Usage

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    def to_dict(self) -> dict[str, Any]:
        """The JSON result document (the keys are a stable contract)."""
        return {
            "outcome": self.outcome.value,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
            "error": None if self.error is None else {
                "type": self.error.type, "message": self.error.message,
                "line": self.error.line, "traceback": self.error.traceback,
            },
            "exit_code": self.exit_code,
            "images": [{"name": i.name, "mime_type": i.mime_type, "width": i.width, "height": i.height,
                        "data_base64": base64.b64encode(i.data).decode()} for i in self.images],
            "files": [{"path": f.path, "mime_type": f.mime_type, "size": f.size,
                       "data_base64": base64.b64encode(f.data).decode()} for f in self.files],
            "usage": {"wall_ms": self.usage.wall_ms, "cpu_ms": self.usage.cpu_ms,
                      "peak_memory_bytes": self.usage.peak_memory_bytes},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        """The inverse of to_dict() (for a result that crossed the network); KeyError/ValueError if malformed."""
        e, u = d["error"], d["usage"]
        return cls(
            outcome=Outcome(d["outcome"]), stdout=d["stdout"], stderr=d["stderr"],
            stdout_truncated=bool(d["stdout_truncated"]), stderr_truncated=bool(d["stderr_truncated"]),
            error=None if e is None else ExecError(e["type"], e["message"], e["line"], e["traceback"]),
            exit_code=d["exit_code"],
            images=[Figure(i["name"], i["mime_type"], i["width"], i["height"], base64.b64decode(i["data_base64"]))
                    for i in d["images"]],
            files=[File(f["path"], f["mime_type"], f["size"], base64.b64decode(f["data_base64"])) for f in d["files"]],
            usage=Usage(u["wall_ms"], u["cpu_ms"], u["peak_memory_bytes"]),
        )

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)
