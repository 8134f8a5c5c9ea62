"""sandbox: run untrusted Python in warm, isolated nsjail jails, with charts, files and hard limits.

    from sandbox import Sandbox
    with Sandbox() as sb:
        r = sb.run("print(1)")
"""

from .client import AsyncSandbox, Sandbox
from .errors import (ImageError, InvalidInputError, QueueFullError, SandboxClosedError, SandboxError,
                     SandboxUnavailableError)
from .limits import Limits
from .pool import PoolStats
from .results import ExecError, File, Image, Outcome, Output, Result, Usage

__all__ = [
    "AsyncSandbox", "Sandbox", "Limits", "PoolStats", "Result", "Outcome", "Output", "ExecError", "Image", "File", "Usage",
    "SandboxError", "InvalidInputError", "QueueFullError", "SandboxUnavailableError", "SandboxClosedError",
    "ImageError",
]
__version__ = "0.1.0"
