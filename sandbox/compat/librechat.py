"""LibreChat's code interpreter API (`/exec`, `/upload`, `/download/{session_id}/{file_id}`,
`/files/{session_id}`), so a self-hosted LibreChat gets code execution from us.

`/exec` request: `{lang, code, args?, session_id?, user_id?, entity_id?, files?: [{id, name, session_id |
storage_session_id, ...}]}`; response `{session_id, stdout, stderr, files: [{id, name, path, modified_from?}]}`
where `files` are what the run wrote or changed (and its figures, as PNG files), stored under the
session for `/download`. A session is an engine session: variables carry over between its runs.
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
    session_id: str | None = None    # the session to run in (its variables and files)
    user_id: str | None = None       # with entity_id, how a session is found again without its id
    entity_id: str | None = None


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
    ids = {}
    for key in ("session_id", "user_id", "entity_id"):
        value = payload.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 256):
            raise PeerRequestError(f"{key} must be a string of at most 256 characters")
        ids[key] = value or None
    return ExecRequest(code=map_data_dir(code), files=refs, **ids)


def output_files(result: Result) -> list[tuple[str, bytes]]:
    """(name, bytes) of everything a run produced: written files, then figures not saved as files,
    then the rich outputs (output_<n>.html, .md, .png, ...; Result.output_files)."""
    out = [(f.path, f.data) for f in result.files]
    names = {name for name, _ in out}
    out += [(i.name, i.data) for i in result.images if i.name not in names]
    names = {name for name, _ in out}
    out += [(name, data) for name, data in result.output_files(text=False, charts=False) if name not in names]
    return out


def to_librechat_exec(result: Result, session_id: str, stored: list[tuple[str, str]],
                      inputs: list[FileRef] = ()) -> dict[str, Any]:
    """The `/exec` response. `stored` is [(file_id, name)] of the outputs kept under `session_id`;
    an output that replaces one of the `inputs` says which (`modified_from`)."""
    by_name = {ref.name: ref for ref in inputs}
    files = []
    for fid, name in stored:
        entry: dict[str, Any] = {"id": fid, "name": name, "path": name, "session_id": session_id,
                                 "storage_session_id": session_id}
        ref = by_name.get(name)
        if ref is not None:
            entry["modified_from"] = {"id": ref.file_id, "session_id": ref.session_id,
                                      "storage_session_id": ref.session_id}
        files.append(entry)
    return {"session_id": session_id, "stdout": result.stdout, "stderr": stderr_with_summary(result), "files": files}


def upload_response(session_id: str, stored: list[tuple[str, str]]) -> dict[str, Any]:
    """`/upload`'s answer: `{message: "success", session_id, files: [{fileId, filename}]}`."""
    return {"message": "success", "session_id": session_id, "storage_session_id": session_id,
            "files": [{"fileId": fid, "filename": name} for fid, name in stored]}


def file_listing(session_id: str, files: list[tuple[str, str, float, str, int]],
                 detail: str = "summary") -> list[dict[str, Any]]:
    """`/files/{session_id}`: one entry per (file_id, name, modified_epoch, content_type, size);
    `detail=full` adds `size`, `contentType` and the metadata LibreChat reads the name from."""
    out = []
    for fid, name, mtime, ctype, size in files:
        entry: dict[str, Any] = {
            "name": f"{session_id}/{fid}", "id": fid, "fileId": fid, "session_id": session_id,
            "storage_session_id": session_id,
            "lastModified": datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).isoformat(),
        }
        if detail != "summary":
            entry["size"] = size
            entry["contentType"] = ctype
            entry["metadata"] = {"content-type": ctype, "original-filename": name}
        out.append(entry)
    return out
