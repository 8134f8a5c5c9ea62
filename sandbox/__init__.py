"""sandbox: run untrusted Python in warm, isolated nsjail jails, with charts, files and hard limits.

    from sandbox import Sandbox
    with Sandbox() as sb:
        r = sb.run("print(1)")

The names below are imported on first use (PEP 562), so a command that needs none of the engine
(`sandbox run` sending its request to a warm engine on a Unix socket) does not pay ~120 ms of imports.
"""

from __future__ import annotations

import importlib
TYPE_CHECKING = False

if TYPE_CHECKING:   # (not `from typing import ...`: typing alone costs `sandbox run` ~2 ms)
    from typing import Any

    from .client import AsyncSandbox, Sandbox
    from .errors import (ImageError, InvalidInputError, NoSuchFileError, QueueFullError, RunCancelledError,
                         SandboxClosedError, SandboxError, SandboxUnavailableError, SessionClosedError,
                         SessionLimitError)
    from .host.pool import PoolStats
    from .limits import Limits
    from .results import DisplayOutput, ExecError, Figure, File, Image, Outcome, Output, Result, Rich, Usage
    from .sessions import AsyncSession, FileInfo, Session

_WHERE = {
    "AsyncSandbox": "client", "Sandbox": "client", "Limits": "limits", "PoolStats": "host.pool",
    **{name: "results" for name in ("Result", "Outcome", "Output", "DisplayOutput", "Rich", "ExecError", "Figure",
                                    "Image", "File", "Usage")},
    **{name: "errors" for name in ("SandboxError", "InvalidInputError", "QueueFullError", "SandboxUnavailableError",
                                   "SandboxClosedError", "ImageError", "SessionClosedError", "SessionLimitError",
                                   "RunCancelledError", "NoSuchFileError")},
    **{name: "sessions" for name in ("Session", "AsyncSession", "FileInfo")},
}

__all__ = [
    "AsyncSandbox", "Sandbox", "Limits", "PoolStats", "Result", "Outcome", "Output", "DisplayOutput", "Rich", "ExecError", "Figure", "Image", "File", "Usage",
    "SandboxError", "InvalidInputError", "QueueFullError", "SandboxUnavailableError", "SandboxClosedError",
    "ImageError", "Session", "AsyncSession", "FileInfo", "SessionClosedError", "SessionLimitError",
    "RunCancelledError", "NoSuchFileError",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
