"""Unpacking a package set's wheels, inside a jail of its own (host/packages.py starts it): no
network, the wheels read-only, one writable directory. A wheel is hostile input to a zip parser,
so the parser runs here and not as the host's root.

`python -c "...; from guest.unpack import main; main()" BUDGET OUT NAME=WHEEL...` extracts each
wheel into OUT under strict rules: relative paths without `..`, regular files and directories only
(no symlink, device or fifo member), every byte counted against BUDGET (the declared sizes are
checked before anything is written). A wheel's `.data/purelib` and `.data/platlib` go to OUT; its
scripts, headers and data do not. The answer is one JSON line on stdout: {"size": N} or
{"error": "message naming the package"}. The host checks the tree again before it adopts it.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import zipfile
import zlib


class Refused(Exception):
    """A wheel this set will not hold; the message names the package."""


def member_path(info: zipfile.ZipInfo, name: str) -> str | None:
    """Where a wheel member goes inside the set (relative), None to skip it; refuses what is unsafe."""
    raw = info.filename
    mode = info.external_attr >> 16
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # a symlink, a device, a fifo
        raise Refused(f"package {name!r}: its wheel holds {raw!r}, which is not a regular file")
    parts = raw.rstrip("/").split("/")
    if (raw.startswith("/") or "\\" in raw or "\0" in raw or any(p in ("", ".", "..") for p in parts)
            or re.match(r"^[A-Za-z]:", raw)):
        raise Refused(f"package {name!r}: its wheel holds an unsafe path {raw[:120]!r}")
    if parts[0].endswith(".data"):
        if len(parts) >= 2 and parts[1] in ("purelib", "platlib"):
            return "/".join(parts[2:]) or None
        return None
    return "/".join(parts)


def unpack(wheel: str, out: str, budget: list[int], name: str) -> None:
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise Refused(f"package {name!r}: its wheel is not a valid zip file ({exc})") from None
    with zf:
        infos = zf.infolist()
        declared = sum(i.file_size for i in infos)
        if declared > budget[0]:
            raise Refused(f"package {name!r} makes the set larger than max_set_bytes (its files alone "
                          f"declare {declared} bytes)")
        for info in infos:
            rel = member_path(info, name)
            if rel is None:
                continue
            dest = os.path.join(out, *rel.split("/"))
            if info.is_dir():
                os.makedirs(dest, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if os.path.lexists(dest):
                raise Refused(f"package {name!r}: file {rel!r} is shipped by two wheels of the set")
            try:
                with zf.open(info) as src, open(dest, "xb") as dst:
                    while chunk := src.read(1 << 20):
                        budget[0] -= len(chunk)
                        if budget[0] < 0:
                            raise Refused(f"package {name!r} makes the set larger than max_set_bytes")
                        dst.write(chunk)
            except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
                raise Refused(f"package {name!r}: its wheel is damaged ({exc})") from None


def main() -> None:
    budget_arg, out, *pairs = sys.argv[1:]
    budget = [int(budget_arg)]
    os.umask(0o022)
    try:
        for pair in pairs:
            name, _, wheel = pair.partition("=")
            unpack(wheel, out, budget, name)
        answer = {"size": int(budget_arg) - budget[0]}
    except Refused as exc:
        answer = {"error": str(exc)}
    except OSError as exc:  # e.g. the file size limit: the set is too large
        answer = {"error": f"unpacking failed: {exc}"}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
