"""LibreChat's code interpreter API (`/exec`, `/upload`, `/download/{session_id}/{file_id}`,
`/files/{session_id}`), so a self-hosted LibreChat gets code execution from us.

`/exec` request: `{lang, code, args?, files?: [{id, name, session_id | storage_session_id, ...}]}`;
response `{session_id, stdout, stderr, files: [{id, name, path}]}` where `files` are what the run
wrote (and its figures, as PNG files), stored under the new session id for `/download`.
Only `lang: "py"` runs; `args` (command-line arguments) are refused: the engine has no argv.
`stderr` carries the program's stderr, then the traceback or the reason the run was stopped.

LibreChat tells its model that files live in `/mnt/data`; here they are in the run's working
directory, so `/mnt/data` in the code's string literals is mapped to it (`/mnt/data/x.csv` ->
`x.csv`), leaving everything else, line numbers included, as it was.
"""

from __future__ import annotations

import datetime
import io
import re
import tokenize
from dataclasses import dataclass
from typing import Any

from ..results import Result
from .request import PeerRequestError
from .text import stderr_with_summary

LANGUAGES = ("py", "python")
DATA_DIR = "/mnt/data"
_DATA_PATH = re.compile(r"/mnt/data(/+|(?=[^\w.-])|$)")


def map_data_dir(code: str) -> str:
    """`code` with LibreChat's `/mnt/data` in string literals pointing at the working directory.
    Code that does not tokenize is returned unchanged (the run reports its syntax error). Linear in
    the code's size (the pieces are joined once); CPU-bound, so a server calls it off its event loop,
    after the code's size check."""
    if DATA_DIR not in code:
        return code
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(code).readline)
                  if t.type == tokenize.STRING and DATA_DIR in t.string]
    except (tokenize.TokenError, SyntaxError, IndentationError, RecursionError, MemoryError):
        return code
    # tokenize's lines are split as io.StringIO splits them (on \n only, unlike str.splitlines).
    starts = [0]
    for line in io.StringIO(code):
        starts.append(starts[-1] + len(line))
    pieces, at = [], 0
    for tok in tokens:
        a = starts[tok.start[0] - 1] + tok.start[1]
        b = starts[tok.end[0] - 1] + tok.end[1]
        pieces += [code[at:a], _DATA_PATH.sub(lambda m: "" if m.group(1) else ".", tok.string)]
        at = b
    pieces.append(code[at:])
    return "".join(pieces)


@dataclass(frozen=True)
class FileRef:
    """An input file of `/exec`: bytes stored earlier under (session_id, file_id), named `name`."""

    session_id: str
    file_id: str
    name: str


@dataclass(frozen=True)
class ExecRequest:
    code: str
    files: list[FileRef]


def from_librechat_exec(payload: Any) -> ExecRequest:
    if not isinstance(payload, dict):
        raise PeerRequestError("the body must be a JSON object")
    lang, code = payload.get("lang"), payload.get("code")
    if not isinstance(code, str):
        raise PeerRequestError("code must be a string")
    if lang not in LANGUAGES:
        raise PeerRequestError(f"lang {lang!r} is not supported: this sandbox runs Python only (lang: \"py\")")
    if payload.get("args"):
        raise PeerRequestError("args are not supported: the program gets no command-line arguments")
    refs = []
    for i, f in enumerate(payload.get("files") or []):
        if not isinstance(f, dict):
            raise PeerRequestError(f"files[{i}] must be an object")
        session = f.get("storage_session_id") or f.get("session_id")
        if not all(isinstance(v, str) and v for v in (session, f.get("id"), f.get("name"))):
            raise PeerRequestError(f"files[{i}] needs string id, name and session_id (or storage_session_id)")
        refs.append(FileRef(session, f["id"], f["name"]))
    return ExecRequest(code=map_data_dir(code), files=refs)


def output_files(result: Result) -> list[tuple[str, bytes]]:
    """(name, bytes) of everything a run produced: written files, then figures not saved as files,
    then the rich outputs (output_<n>.html, .md, .png, ...; Result.output_files)."""
    out = [(f.path, f.data) for f in result.files]
    names = {name for name, _ in out}
    out += [(i.name, i.data) for i in result.images if i.name not in names]
    names = {name for name, _ in out}
    out += [(name, data) for name, data in result.output_files(text=False, charts=False) if name not in names]
    return out


def to_librechat_exec(result: Result, session_id: str, stored: list[tuple[str, str]]) -> dict[str, Any]:
    """The `/exec` response. `stored` is [(file_id, name)] of the outputs kept under `session_id`."""
    return {
        "session_id": session_id,
        "stdout": result.stdout,
        "stderr": stderr_with_summary(result),
        "files": [{"id": fid, "name": name, "path": name} for fid, name in stored],
    }


def upload_response(session_id: str, stored: list[tuple[str, str]]) -> dict[str, Any]:
    """`/upload`'s answer: `{message: "success", session_id, files: [{fileId, filename}]}`."""
    return {"message": "success", "session_id": session_id, "storage_session_id": session_id,
            "files": [{"fileId": fid, "filename": name} for fid, name in stored]}


def file_listing(session_id: str, files: list[tuple[str, str, float, str]], detail: str = "summary") -> list[dict[str, Any]]:
    """`/files/{session_id}`: one entry per (file_id, name, modified_epoch, content_type)."""
    out = []
    for fid, name, mtime, ctype in files:
        entry: dict[str, Any] = {
            "name": f"{session_id}/{fid}", "id": fid, "fileId": fid, "session_id": session_id,
            "storage_session_id": session_id,
            "lastModified": datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).isoformat(),
        }
        if detail != "summary":
            entry["metadata"] = {"content-type": ctype, "original-filename": name}
        out.append(entry)
    return out
