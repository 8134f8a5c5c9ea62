"""sandbox: run untrusted Python in warm, isolated nsjail jails, with charts, files and hard limits.

    from sandbox import Sandbox
    with Sandbox() as sb:
        r = sb.run("print(1)")
"""

from .client import AsyncSandbox, Sandbox
from .errors import (ImageError, InvalidInputError, NoSuchFileError, QueueFullError, RunCancelledError,
                     SandboxClosedError, SandboxError, SandboxUnavailableError, SessionClosedError,
                     SessionLimitError)
from .limits import Limits
from .host.pool import PoolStats
from .results import DisplayOutput, ExecError, Figure, File, Image, Outcome, Output, Result, Rich, Usage
from .sessions import AsyncSession, FileInfo, Session

__all__ = [
    "AsyncSandbox", "Sandbox", "Limits", "PoolStats", "Result", "Outcome", "Output", "DisplayOutput", "Rich", "ExecError", "Figure", "Image", "File", "Usage",
    "SandboxError", "InvalidInputError", "QueueFullError", "SandboxUnavailableError", "SandboxClosedError",
    "ImageError", "Session", "AsyncSession", "FileInfo", "SessionClosedError", "SessionLimitError",
    "RunCancelledError", "NoSuchFileError",
]
__version__ = "0.1.0"
