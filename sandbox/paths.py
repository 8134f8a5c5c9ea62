"""Path rules for names of files that cross a boundary (input files, a result's files and figures):
here, with nothing but the errors imported, so a light client (`sandbox run` talking to a warm engine
over its Unix socket) checks what a server sends without importing the engine."""

from __future__ import annotations

from .errors import InvalidInputError

MAX_PATH = 4096
MAX_COMPONENT = 255


TMP = "/tmp/"   # the run's own /tmp (a fresh tmpfs): input files and fetched files may live there too


def check_path(name: object, what: str = "input file name", tmp: bool = False) -> str:
    """A relative path inside the working directory: no '..', no absolute path, no NUL. With `tmp`,
    also a path under the run's own /tmp (`/tmp/` and then a relative path of the same rules)."""
    if tmp and isinstance(name, str) and name.startswith(TMP) and len(name) > len(TMP):
        check_path(name[len(TMP):], what)
        return name
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"{what} must be a non-empty string, not {name!r}")
    if "\0" in name:
        raise InvalidInputError(f"{what} {name!r} contains a NUL byte")
    if name.startswith("/"):
        raise InvalidInputError(f"{what} {name!r} is absolute; give a path relative to the working directory")
    if "\\" in name:
        raise InvalidInputError(f"{what} {name!r} contains a backslash")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidInputError(f"{what} {name!r} has an empty, '.' or '..' component")
    try:
        encoded = [p.encode() for p in parts]
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} {name!r} is not valid UTF-8") from None
    if sum(len(p) + 1 for p in encoded) > MAX_PATH or any(len(p) > MAX_COMPONENT for p in encoded):
        raise InvalidInputError(f"{what} {name[:80]!r}... is too long")
    if any(ord(c) < 32 for c in name):
        raise InvalidInputError(f"{what} {name!r} contains a control character")
    return name
