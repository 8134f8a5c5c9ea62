"""The host's side of an execution's messages: validate and encode a request; validate a
reply and derive its outcome.

Inputs are checked before anything runs (bad names, oversize data). Replies are treated as
hostile: every field is type-checked, every artefact re-validated, and the outcome comes from
the engine's own timers and cgroup counters, never from the exit code alone.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import mimetypes
import re
import signal
import struct
import sys
from collections.abc import Callable, Mapping

from ..errors import InvalidInputError
from ..guest import protocol
from ..limits import Limits
from ..results import DisplayOutput, ExecError, Figure, File, Outcome, Result, Usage
from .jail_process import SlotDied

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# `import a.b, c as d` and `from a.b import c`, anywhere on a line of their own (indented too).
_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+([\w.]+)[ \t]+import\b|import[ \t]+([\w. \t,]+))", re.M)
_STDLIB = frozenset(sys.stdlib_module_names) - {"tkinter", "turtle", "idlelib"}
_IMAGE_NAME = re.compile(r"figure_[0-9]{1,6}\.png")
from ..paths import MAX_COMPONENT, MAX_PATH, TMP, check_path  # noqa: F401 - re-exported


MAX_ENV_VARS = 64
MAX_ENV_BYTES = 64 << 10        # names and values together
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# The sandbox's own variables (host/jail.py's environment) and the ones that change how the
# interpreter, the loader or the libraries start: a call may not set them.
_ENV_RESERVED = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TMPDIR", "TMP", "TEMP", "PWD",
                           "TZ", "IFS", "ENV", "BASH_ENV", "GCONV_PATH", "HOSTALIASES", "RESOLV_HOST_CONF"})
_ENV_RESERVED_PREFIXES = ("PYTHON", "LD_", "LC_", "MPL", "SANDBOX_", "GLIBC_", "MALLOC_", "OPENBLAS_", "MKL_",
                          "OMP_", "GOMP_", "KMP_", "NUMEXPR_", "JOBLIB_", "LOKY_", "NSJAIL")


def check_env(env: object) -> dict[str, str]:
    """Environment variables for one call: at most MAX_ENV_VARS names of letters, digits and '_'
    (not starting with a digit), none of the sandbox's own (PATH, HOME, LANG, LC_*, PYTHON*, LD_*,
    MPL*, *_NUM_THREADS...), values text without NUL, MAX_ENV_BYTES in all."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise InvalidInputError("env must be a mapping of name -> str")
    if len(env) > MAX_ENV_VARS:
        raise InvalidInputError(f"{len(env)} environment variables exceed the {MAX_ENV_VARS} allowed")
    out, total = {}, 0
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise InvalidInputError(f"environment variable name {str(name)[:80]!r} is not allowed: use letters, "
                                    "digits and '_', not starting with a digit, at most 128 characters")
        upper = name.upper()
        if upper in _ENV_RESERVED or upper.startswith(_ENV_RESERVED_PREFIXES) or upper.endswith("_NUM_THREADS"):
            raise InvalidInputError(f"environment variable {name!r} belongs to the sandbox and cannot be set")
        if not isinstance(value, str):
            raise InvalidInputError(f"environment variable {name!r} must be a str, not {type(value).__name__}")
        if "\0" in value:
            raise InvalidInputError(f"environment variable {name!r} contains a NUL byte")
        try:
            total += len(name) + len(value.encode()) + 2
        except UnicodeEncodeError:
            raise InvalidInputError(f"environment variable {name!r} is not valid Unicode text") from None
        if total > MAX_ENV_BYTES:
            raise InvalidInputError(f"environment variables exceed {MAX_ENV_BYTES} bytes")
        out[name] = value
    return out


def imported_modules(code: str) -> set[str]:
    """The top-level modules a program's import lines name ("" for a relative import). Read
    from the lines only, never run or parsed: a guess that may only cost time."""
    found = set()
    for match in _IMPORT.finditer(code):
        names = [match.group(1)] if match.group(1) else match.group(2).split(",")
        found.update(name.split()[0].split(".")[0] if name.split() else "" for name in names)
    return found


def flavor(code: str) -> str:
    """Which fork server a program goes to: "lean" when every module it imports is in the
    standard library, else "full" (the warm scientific stack). A wrong guess costs time, never
    correctness (a lean child imports what it needs)."""
    return "lean" if imported_modules(code) <= _STDLIB else "full"


def encode_request(code: str, files: Mapping[str, bytes | str] | None, limits: Limits, filename: str,
                   stdin: bytes | str | None = None, stream: bool = False, extra: Mapping | None = None,
                   env: Mapping[str, str] | None = None, fetch: list[str] | tuple[str, ...] = ()) -> bytes:
    """The request frame: header, then each input file's bytes, then stdin's. `extra` adds to
    the header (a session call's session number); `env`, checked by check_env, is the call's own
    environment variables; `fetch`, paths under /tmp/ whose files come back with the outputs."""
    if not isinstance(code, str):
        raise InvalidInputError(f"code must be a str, not {type(code).__name__}")
    try:
        size = len(code.encode())
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 file could hold this program
        raise InvalidInputError("code is not valid Unicode text (it contains a lone surrogate)") from None
    if size > limits.max_code_bytes:
        raise InvalidInputError(f"code is larger than max_code_bytes={limits.max_code_bytes}")
    check_path(filename, "filename")
    env = check_env(env)
    if not isinstance(fetch, (list, tuple)) or len(fetch) > limits.max_files:
        raise InvalidInputError(f"fetch must be a list of at most max_files={limits.max_files} paths")
    for path in fetch:
        if not isinstance(path, str) or not path.startswith(TMP):
            raise InvalidInputError(f"fetch path {path!r} must be under {TMP} (the working directory's "
                                    "new and changed files come back without asking)")
        check_path(path, "fetch path", tmp=True)
    entries, blobs, total = [], [], 0
    files = files or {}
    if not isinstance(files, Mapping):
        raise InvalidInputError("files must be a mapping of name -> bytes or str")
    if len(files) > limits.max_input_files:
        raise InvalidInputError(f"{len(files)} input files exceed max_input_files={limits.max_input_files}")
    seen: set[str] = set()
    for name, data in files.items():
        check_path(name, tmp=True)
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInputError(f"input file {name!r} must be bytes or str, not {type(data).__name__}")
        data = bytes(data)
        # A file and a directory of the same name cannot both exist.
        prefixes = {"/".join(name.split("/")[:i]) for i in range(1, name.count("/") + 1)}
        if name in seen or prefixes & seen or any(s.startswith(name + "/") for s in seen):
            raise InvalidInputError(f"input file {name!r} clashes with another input's path")
        seen.add(name)
        total += len(data)
        if total > limits.max_input_bytes:
            raise InvalidInputError(f"input files exceed max_input_bytes={limits.max_input_bytes}")
        entries.append({"name": name, "size": len(data)})
        blobs.append(data)
    if isinstance(stdin, str):
        stdin = stdin.encode()
    if stdin is not None and not isinstance(stdin, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"stdin must be bytes or str, not {type(stdin).__name__}")
    stdin = bytes(stdin or b"")
    if total + len(stdin) > limits.max_input_bytes:
        raise InvalidInputError(f"input files and stdin exceed max_input_bytes={limits.max_input_bytes}")
    header = {protocol.OP: protocol.CALL, "code": code, "filename": filename, "files": entries, "stdin": len(stdin),
              "limits": limits.per_request(), "profile": limits.profile(), "flavor": flavor(code), "stream": stream,
              **({"env": env} if env else {}), **({"fetch": list(fetch)} if fetch else {}), **(extra or {})}
    return protocol.encode(header, blobs + [stdin])


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _error(raw: object) -> ExecError | None:
    if not isinstance(raw, dict):
        return None
    typ, msg, line, tb = raw.get("type"), raw.get("message"), raw.get("line"), raw.get("traceback")
    if not (isinstance(typ, str) and isinstance(msg, str) and isinstance(tb, str) and (line is None or _is_int(line))):
        return None
    clean = lambda t: t.encode("utf-8", "backslashreplace").decode("utf-8")  # noqa: E731 - lone surrogates
    return ExecError(type=clean(typ[:256]), message=clean(msg), line=line, traceback=clean(tb))


def take_output(header: dict, body: bytes, on_output: Callable[[str, bytes], None] | None,
                room: dict[str, int]) -> None:
    """One live-output frame of a call: checked against what was asked (a stream, with room left
    under its cap) and handed on. A frame nobody asked for, or beyond the caps, breaks the jail."""
    stream = header.get("stream")
    if on_output is None or stream not in room or len(body) > room[stream]:
        raise SlotDied("the jail sent output it was not asked for, or beyond the caps")
    room[stream] -= len(body)
    on_output(stream, body)


def take_display(header: dict, body: bytes, on_display: Callable[[DisplayOutput], None] | None,
                 room: dict[str, int], limits: Limits) -> None:
    """One live rich output of a call (a display() as it happened), checked as a reply's outputs
    are (`_outputs`) and handed on; one that is malformed is left out (the reply's copy is checked
    again). Beyond what was asked, or beyond max_outputs/max_output_bytes, breaks the jail: the
    zygote relays no more than that."""
    if on_display is None or room["outputs"] < 1 or len(body) > room["bytes"]:
        raise SlotDied("the jail sent a rich output it was not asked for, or beyond the caps")
    room["outputs"] -= 1
    room["bytes"] -= len(body)
    entry = {k: header.get(k) for k in ("main", "truncated", "items")}
    try:
        sizes, _ = _output_sizes([entry], [], limits)
        values = protocol.split_blobs(body, sizes)
    except (ValueError, protocol.ProtocolError):
        return
    for output in _outputs([entry], values, limits, [], room):
        on_display(output)


def _clashes(paths: list[str]) -> set[int]:
    """Indices of every path that repeats another or is a file and a directory of another at once
    (all of them: the runner, walking a real directory, never sends either, so only a forged frame
    has them). Sorted with "/" as the lowest character, a path's descendants follow it in one
    block, so one pass with a stack of its ancestors finds every clash: O(n log n) comparisons of
    at most MAX_PATH bytes, never one of every pair."""
    order = sorted(range(len(paths)), key=lambda i: paths[i].replace("/", "\0"))
    clashing: set[int] = set()
    stack: list[int] = []  # the current path's ancestors (or equals), outermost first
    for i in order:
        key = paths[i]
        while stack and not (key == paths[stack[-1]] or key.startswith(paths[stack[-1]] + "/")):
            stack.pop()
        if stack:
            clashing.add(i)
            # Every path on the stack is an ancestor of this one. Marked ones form the bottom of
            # the stack (each marking marks all below it), so stop at the first marked.
            for j in reversed(stack):
                if j in clashing:
                    break
                clashing.add(j)
        stack.append(i)
    return clashing


def _output_sizes(out_meta: object, img_meta: list, limits: Limits) -> tuple[list[int], list[int]]:
    """The blob sizes of the rich outputs' values and of the figures' chart data, from a reply's
    lists, with every count checked against its cap before any per-entry work (ValueError if
    anything is off: the runner never sends more than the caps, so more is a forged frame)."""
    if out_meta is None:
        out_meta = []
    if not isinstance(out_meta, list) or len(out_meta) > limits.max_outputs:
        raise ValueError("outputs")
    per_output = len(protocol.OUTPUT_MIME_CAPS)
    item_sizes = []
    for entry in out_meta:
        items = entry.get("items") if isinstance(entry, dict) else None
        if not isinstance(items, list) or len(items) > per_output:
            raise ValueError("output items")
        for item in items:
            if not (isinstance(item, list) and len(item) == 2 and _is_int(item[1]) and item[1] >= 0):
                raise ValueError("output item")
            item_sizes.append(item[1])
    chart_sizes = []
    for meta in img_meta:
        size = meta.get("chart", 0) if isinstance(meta, dict) else 0
        if not _is_int(size) or size < 0:
            raise ValueError("chart")
        chart_sizes.append(size)
    # Outputs and chart data share max_output_bytes: the runner never sends more.
    if sum(item_sizes) + sum(chart_sizes) > limits.max_output_bytes:
        raise ValueError("over max_output_bytes")
    return item_sizes, chart_sizes


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _json_value(data: bytes) -> object:
    """A JSON value a jail sent (at most its cap long); ValueError if it is not one. Linear: the
    parser recurses once per nesting level, and a deep one ends in RecursionError."""
    try:
        return json.loads(data, parse_constant=_no_constant)  # NaN and Infinity are not JSON
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("not JSON") from None


# -- the header of a program's result: bounded before it is parsed ------------------------------
#
# The runner's result header (guest/runner.py, _execute) is written by the program's own process,
# so code in a run can write any header up to protocol.MAX_HEADER (4 MiB) instead. Its bytes alone
# cost little to parse (4 MiB of strings: 2-9 ms), but its values do: 4 MiB of small lists took
# the host 0.8-0.9 s, holding the interpreter's lock (every other thread of a server waits). A
# genuine header holds at most a fixed number of values for given limits: its structure (see
# protocol.structure) is checked against that before any parse, so no header from a jail costs
# more than its bytes and that many values.

RESULT_SLACK = 64  # room for a field the runner may add (each costs 2: its ',' and ':')


@functools.lru_cache(maxsize=64)
def _result_structure(max_images: int, max_files: int, max_outputs: int) -> int:
    item = ["text/plain", 0]
    largest = {
        "error": {"type": "", "message": "", "line": 0, "traceback": ""}, "exit_code": 0,
        "images": [{"name": "", "size": 0, "chart": 0}] * max_images, "images_dropped": 0,
        "files": [{"path": "", "size": 0}] * max_files, "files_dropped": 0,
        "outputs": [{"main": False, "truncated": False, "items": [item] * len(protocol.OUTPUT_MIME_CAPS)}] * max_outputs,
        "outputs_dropped": 0,
    }
    return protocol.structure(protocol.dumps(largest).encode()) + RESULT_SLACK


def result_structure(limits: Limits) -> int:
    """The most separators and brackets (protocol.structure) the runner's result header can hold
    under `limits`: every figure, file and rich output (each with every MIME type) at its cap."""
    return _result_structure(limits.max_images, limits.max_files, limits.max_outputs)


def parse_result(raw: bytes, limits: Limits) -> dict:
    """The runner's result header, parsed once, after its size and its structure are checked
    against what a genuine one can hold under `limits` (ProtocolError if either is over)."""
    if len(raw) > protocol.MAX_HEADER:
        raise protocol.ProtocolError(f"result header of {len(raw)} bytes exceeds the cap")
    return protocol.parse_header(raw, max_values=result_structure(limits))


@functools.lru_cache(maxsize=8)
def _listing_structure(max_entries: int) -> int:
    largest = protocol.dumps({"files": [{"path": "", "size": 0}] * max_entries}).encode()
    error = protocol.dumps({"error": {"type": "", "message": "", "line": 0, "traceback": ""}}).encode()
    return max(protocol.structure(largest), protocol.structure(error)) + RESULT_SLACK


def parse_listing(raw: bytes, max_entries: int) -> dict:
    """A session's answer to a file operation (guest/runner.py, _file_op: at most `max_entries`
    files listed, or an error), checked and parsed once as parse_result does."""
    if len(raw) > protocol.MAX_HEADER:
        raise protocol.ProtocolError(f"file listing of {len(raw)} bytes exceeds the cap")
    return protocol.parse_header(raw, max_values=_listing_structure(max_entries))


def _json_within(blob: bytes, budget: dict[str, int]) -> object:
    """A JSON value from a jail, parsed only if its values fit what is left of the run's
    max_output_json_values (counted from its bytes first: parsing is what costs, up to half a
    microsecond a value, holding the interpreter's lock). ValueError if not, or if not JSON."""
    values = protocol.json_values(blob)
    if values > budget["json_values"]:
        raise ValueError("over max_output_json_values")
    budget["json_values"] -= values
    return _json_value(blob)


def _outputs(out_meta: list, values: list[bytes], limits: Limits, notes: list[str],
             budget: dict[str, int]) -> list[DisplayOutput]:
    """The rich outputs of a reply, each value re-checked: a known MIME type, within its cap, of
    its kind (UTF-8 text, a PNG or JPEG, JSON within `budget`'s "json_values"); "text/plain"
    present. A bad output is left out."""
    outputs, pos, total = [], 0, 0
    for entry in out_meta:
        items = entry["items"]
        blobs, pos = values[pos:pos + len(items)], pos + len(items)
        data: dict = {}
        truncated = entry.get("truncated") is True
        try:
            for (mime, _), blob in zip(items, blobs):
                cap_name = protocol.OUTPUT_MIME_CAPS.get(mime) if isinstance(mime, str) else None
                if cap_name is None or mime in data or len(blob) > getattr(limits, cap_name):
                    raise ValueError("MIME type unknown, repeated or over its cap")
                total += len(blob)
                if total > limits.max_output_bytes:
                    raise ValueError("over max_output_bytes")
                if mime == "image/png":
                    if _png_size(blob) is None:
                        raise ValueError("not a PNG")
                    data[mime] = blob
                elif mime == "image/jpeg":
                    if not blob.startswith(b"\xff\xd8"):
                        raise ValueError("not a JPEG")
                    data[mime] = blob
                elif mime in protocol.JSON_MIMES:
                    data[mime] = _json_within(blob, budget)
                else:
                    data[mime] = blob.decode("utf-8", errors="replace")
            if not isinstance(data.get("text/plain"), str):
                raise ValueError("no text/plain")
        except ValueError as exc:
            notes.append(f"a rich output was discarded ({exc})")
            continue
        outputs.append(DisplayOutput(data=data, main=entry.get("main") is True, truncated=truncated))
    return outputs


def sandbox_error(message: str, wall_ms: float = 0.0) -> Result:
    """The result of a run the engine could not complete (the caller may retry)."""
    return Result(outcome=Outcome.SANDBOX_ERROR, stdout="", stderr="", stdout_truncated=False,
                  stderr_truncated=False, error=ExecError("SandboxError", message, None, ""), exit_code=None,
                  images=[], files=[], usage=Usage(wall_ms=wall_ms, cpu_ms=0.0, peak_memory_bytes=0))


def ended_by_shutdown(result: Result) -> Result:
    """A run the engine killed because it was shutting down (Sandbox.close(), a server's shutdown):
    sandbox_error, so the caller may retry, with what the run had written until then."""
    return dataclasses.replace(result, outcome=Outcome.SANDBOX_ERROR, error=ExecError(
        "SandboxShutdown", "the sandbox shut down while this run was in flight; it was killed (its output "
        "until then is kept); retry it", None, ""))


def decode_reply(header: dict, body: bytes, peak: int, oom_kills: int, limits: Limits) -> Result:
    if header.get(protocol.OP) == protocol.SETUP_FAILED:
        return sandbox_error(f"child setup failed, nothing ran: {str(header.get('detail'))[:2000]}")
    ints = ("exit_code", "stdout_dropped", "stderr_dropped")
    if header.get(protocol.OP) != protocol.DONE or not all(_is_int(header.get(k)) for k in ints) \
            or not isinstance(header.get("timed_out"), bool) \
            or not all(isinstance(header.get(k), (int, float)) for k in ("wall_ms", "cpu_ms")):
        return sandbox_error("malformed reply from the jail")
    has_result = header.get("result") is True
    notes: list[str] = []
    images: list[Figure] = []
    outputs: list[DisplayOutput] = []
    outputs_dropped = 0
    files: list[File] = []
    error = None
    exit_code = header["exit_code"]
    # The body is stdout, stderr and, if the child sent a result, its raw header and body.
    lengths = header.get("blob_sizes")
    if not isinstance(lengths, list) or len(lengths) != (4 if has_result else 2):
        return sandbox_error("malformed reply from the jail (blob sizes)")
    try:
        blobs = protocol.split_blobs(body, lengths)
    except protocol.ProtocolError as exc:
        return sandbox_error(f"malformed reply from the jail: {exc}")
    result: dict | None = None
    if has_result:
        try:
            result = parse_result(blobs[2], limits)
        except protocol.ProtocolError as exc:
            # Written by the program's process: its own fault, never the engine's.
            error = ExecError("ResultChannelError", f"the program corrupted its result channel: {exc}", None, "")
    stdout, stderr = blobs[0], blobs[1]
    if len(stdout) > limits.max_stdout_bytes or len(stderr) > limits.max_stderr_bytes:
        return sandbox_error("the jail sent more output than the caps allow")

    if isinstance(result, dict):
        error = _error(result.get("error"))
        img_meta, file_meta = result.get("images"), result.get("files")
        # The caps before any per-entry work: the runner never sends more entries than them (it
        # counts the rest as dropped), so more is a forged frame, refused at a cost independent
        # of its size (a 4 MiB header holds ~145,000 entries).
        if not isinstance(img_meta, list) or not isinstance(file_meta, list) \
                or len(img_meta) > limits.max_images or len(file_meta) > limits.max_files:
            img_meta, file_meta = [], []
            notes.append("the program's result was malformed; figures and files were discarded")
        out_meta: list = []
        item_sizes: list[int] = []
        chart_sizes: list[int] = []
        try:
            item_sizes, chart_sizes = _output_sizes(result.get("outputs"), img_meta, limits)
            out_meta = result.get("outputs") or []
        except ValueError:
            img_meta, file_meta = [], []
            notes.append("the program's result was malformed; figures, files and outputs were discarded")
        try:
            sizes_all = [m.get("size") if isinstance(m, dict) else None for m in img_meta + file_meta]
            parts = protocol.split_blobs(blobs[3], sizes_all + item_sizes + chart_sizes)
        except protocol.ProtocolError:
            parts = []
            img_meta, file_meta, out_meta, chart_sizes = [], [], [], []
            notes.append("the program's result was malformed; figures and files were discarded")
        n_fixed = len(img_meta) + len(file_meta)
        budget = {"json_values": limits.max_output_json_values}  # the outputs' and the charts' together
        outputs = _outputs(out_meta, parts[n_fixed:n_fixed + len(item_sizes)], limits, notes, budget)
        charts = parts[n_fixed + len(item_sizes):]
        for meta, data, chart_blob in zip(img_meta, parts[:len(img_meta)], charts or [b""] * len(img_meta)):
            dims = _png_size(data)
            name = meta.get("name")
            if dims is None or not isinstance(name, str) or not _IMAGE_NAME.fullmatch(name) \
                    or len(images) >= limits.max_images or len(data) > limits.max_image_bytes:
                notes.append("a figure that was not a valid PNG within the caps was discarded")
                continue
            chart = None
            if chart_blob and len(chart_blob) <= limits.max_output_json_bytes:
                try:
                    chart = _json_within(chart_blob, budget)
                except ValueError as exc:
                    notes.append(f"a figure's chart data was discarded ({exc})")
            images.append(Figure(name=name, mime_type="image/png", width=dims[0], height=dims[1], data=data,
                                 chart=chart if isinstance(chart, dict) else None))
        entries = []
        for meta, data in zip(file_meta, parts[len(img_meta):]):
            try:
                entries.append((check_path(meta.get("path"), "output file path", tmp=True), data))
            except InvalidInputError:
                notes.append("an output file with an unsafe path was discarded")
        clashing = _clashes([path for path, _ in entries])
        total = 0
        for i, (path, data) in enumerate(entries):
            # A path may appear once, and never both as a file and as a directory of another.
            if i in clashing:
                notes.append(f"an output file whose path clashes with another ({path[:200]!r}) was discarded")
                continue
            total += len(data)
            if len(files) >= limits.max_files or total > limits.max_file_bytes:
                notes.append("an output file beyond the caps was discarded")
                continue
            mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
            files.append(File(path=path, mime_type=mime, size=len(data), data=data))
        for key, what, cap in (("images_dropped", "figure", "max_images/max_image_bytes"),
                               ("files_dropped", "output file", "max_files/max_file_bytes"),
                               ("outputs_dropped", "rich output", "max_outputs/max_output_bytes")):
            dropped = result.get(key)
            if _is_int(dropped) and dropped > 0:
                notes.append(f"{dropped} {what}(s) dropped: over {cap}")
        dropped = result.get("outputs_dropped")
        outputs_dropped = dropped if _is_int(dropped) and dropped > 0 else 0
    elif header.get("result_error") and exit_code == 0 and not header["timed_out"]:
        error = ExecError("ResultChannelError", f"the program corrupted its result channel: "
                          f"{str(header['result_error'])[:500]}", None, "")

    outcome = derive_outcome(header, error, oom_kills, limits)
    text_err = stderr.decode("utf-8", errors="replace")
    if outcome is Outcome.POLICY_VIOLATION:
        error = policy_error(text_err)
    if notes:
        text_err += "".join(f"\n[sandbox] {n}" for n in dict.fromkeys(notes))
    return Result(
        outcome=outcome,
        stdout=stdout.decode("utf-8", errors="replace"),
        stderr=text_err,
        stdout_truncated=header["stdout_dropped"] > 0,
        stderr_truncated=header["stderr_dropped"] > 0,
        error=error,
        exit_code=exit_code,
        images=images,
        files=files,
        usage=Usage(wall_ms=float(header["wall_ms"]), cpu_ms=float(header["cpu_ms"]), peak_memory_bytes=peak),
        outputs=outputs,
        outputs_dropped=outputs_dropped,
    )


# Written to stderr by the dying process's SIGSYS handler (guest/seccomp.py).
_REFUSED = re.compile(r"\[sandbox\] policy violation: refused system call ([a-z0-9_]{1,40}) \(number ([0-9]{1,4})\)")


def policy_error(stderr: str) -> ExecError:
    """The error of a policy_violation, naming the refused syscall as the process reported it.

    The outcome itself comes from the wait status (only the filter can deliver SIGSYS); the
    name comes from the process's own last words, so a program can hide or misstate it (block
    SIGSYS, close stderr, print a look-alike line), never change the outcome. The last report
    wins: a line printed earlier by the program cannot cover the real one.
    """
    found = _REFUSED.findall(stderr)
    if found:
        name, nr = found[-1]
        message = (f"the program called the system call {name} (number {nr}), which the sandbox "
                   "does not allow; the process was ended")
    else:
        message = ("the program made a system call the sandbox does not allow; the process was ended "
                   "(the call's name was not reported: SIGSYS was blocked, stderr was closed, or it "
                   "was a foreign-architecture call)")
    return ExecError(type="PolicyViolation", message=message, line=None, traceback="")


def derive_outcome(header: dict, error: ExecError | None, oom_kills: int, limits: Limits) -> Outcome:
    """Timers and counters first; signals second; the exit code last."""
    code = header["exit_code"]
    sig = -code if code < 0 else None
    if header["timed_out"]:
        return Outcome.TIMEOUT
    if oom_kills > 0:
        return Outcome.MEMORY_LIMIT
    # RLIMIT_CPU ends in SIGKILL once the process has used its CPU seconds; the main process's
    # own CPU time (from wait4, counted as the kernel counts it) tells that apart from a kill
    # the program sent itself.
    main_cpu = header.get("main_cpu_ms")
    if sig in (signal.SIGKILL, signal.SIGXCPU) and isinstance(main_cpu, (int, float)) \
            and main_cpu >= limits.cpu_seconds * 1000 - 5:
        return Outcome.CPU_LIMIT
    if sig == signal.SIGSYS:
        # The filter refuses to let a program send SIGSYS, so only the filter can have sent it.
        return Outcome.POLICY_VIOLATION
    if sig is not None:
        return Outcome.CRASHED
    if code != 0 or error is not None:
        return Outcome.ERROR
    return Outcome.OK
