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


# How each engine error travels over the network: its wire type (the `error.type` of an HTTP
# answer, read back by RemoteSandbox) and its HTTP status. The one table the server, the MCP tools
# and the remote client read: a new engine error is a class above and a row here.
# Looked up along the exception's class hierarchy, so the most specific row wins.
WIRE: dict[type[SandboxError], tuple[str, int]] = {
    SessionClosedError: ("session_closed", 410),
    SessionLimitError: ("session_limit", 429),       # answered with Retry-After
    NoSuchFileError: ("no_such_file", 404),
    InvalidInputError: ("invalid_input", 422),
    QueueFullError: ("queue_full", 429),             # answered with Retry-After
    SandboxUnavailableError: ("unavailable", 503),
    SandboxClosedError: ("unavailable", 503),
    ImageError: ("unavailable", 503),
    RunCancelledError: ("cancelled", 499),
    SandboxError: ("sandbox_error", 500),
}


def wire_of(exc: SandboxError) -> tuple[str, int]:
    """(wire type, HTTP status) of an engine error."""
    for cls in type(exc).__mro__:
        if cls in WIRE:
            return WIRE[cls]
    return WIRE[SandboxError]


def from_wire(type_: object, message: str) -> SandboxError | None:
    """The engine error a server's `error.type` names (the first class with that type), or None."""
    for cls, (name, _status) in WIRE.items():
        if name == type_ and cls is not SandboxError:
            return cls(message)
    return None
