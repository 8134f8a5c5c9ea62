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
