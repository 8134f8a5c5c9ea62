"""What a peer's request asks the engine for, once decoded: the arguments of `run()`."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any


class PeerRequestError(ValueError):
    """A peer's request we cannot run (bad shape, unsupported language or option); the message
    says why in words a caller can act on."""


@dataclass(frozen=True)
class RunRequest:
    """The arguments of one `run()`: `run(code, files, stdin=..., timeout=..., limits=..., env=...)`."""

    code: str
    files: dict[str, bytes] = field(default_factory=dict)
    stdin: str | None = None
    timeout: float | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)   # checked by the engine (names it allows)
    fetch: tuple[str, ...] = ()                          # files under /tmp/ to return with the outputs


def b64decode(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise PeerRequestError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise PeerRequestError(f"{what} is not valid base64") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
