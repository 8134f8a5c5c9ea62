"""Exceptions the public API raises. Outcomes of user code are never exceptions: see Result."""


class SandboxError(Exception):
    """Base class of every error this package raises."""


class InvalidInputError(SandboxError, ValueError):
    """The call itself is wrong (bad file name, oversize input, bad limit); nothing ran."""


class QueueFullError(SandboxError):
    """Every slot is busy and the wait queue is at its bound; retry later."""


class SandboxUnavailableError(SandboxError):
    """The host cannot run jails safely (see `sandbox doctor`), or every slot failed to start."""


class ImageError(SandboxError):
    """The image is missing, stale or could not be built."""


class SandboxClosedError(SandboxError):
    """run() on a sandbox that was closed."""


class RunCancelledError(SandboxError):
    """The caller cancelled the run (a `cancel` event, an asyncio cancellation); it was killed."""


class SessionClosedError(SandboxError):
    """The session has ended: closed, expired, or ended by what a call did. `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SessionLimitError(SandboxError):
    """The Sandbox already holds its maximum number of open sessions; close one or retry later."""


class NoSuchFileError(SandboxError, FileNotFoundError):
    """The session's working directory has no regular file at that path."""
