"""The shapes the public API shares: the input files, the live-output callback, and `Runner`,
the one interface that `Sandbox`, `Session`, `RemoteSandbox` and `RemoteSession` all satisfy
(what batch, the agent loop and Ray are written against)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .limits import Limits
    from .results import Result

Files = Mapping[str, "bytes | str"]
TextCallback = Callable[[str], object]


@runtime_checkable
class Runner(Protocol):
    """Something that runs code and returns a Result: a local pool, a session, a remote service."""

    def run(self, code: str, files: Files | None = None, *, stdin: bytes | str | None = None,
            timeout: float | None = None, limits: Limits | Mapping[str, Any] | None = None,
            filename: str = "main.py", on_stdout: TextCallback | None = None,
            on_stderr: TextCallback | None = None,
            cancel: threading.Event | None = None) -> Result: ...
