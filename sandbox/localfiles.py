"""Input files of a command-line call: `--file PATH[=NAME]` read from the local disk.

Shared by `sandbox run` (cli.py) and `sandbox ask` (agent/cli.py), so neither imports the other.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InvalidInputError


def read_inputs(specs: list[str]) -> dict[str, bytes]:
    """`PATH` or `PATH=NAME` specs -> {name in the sandbox: content}; InvalidInputError if unreadable."""
    files: dict[str, bytes] = {}
    for spec in specs:
        path, _, name = spec.partition("=")
        name = name or os.path.basename(path)
        try:
            files[name] = Path(path).read_bytes()
        except OSError as exc:
            raise InvalidInputError(f"cannot read input file {path}: {exc.strerror}") from None
    return files
