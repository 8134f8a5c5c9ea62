"""`sandbox run` on a warm engine, with nothing heavy imported: the common forms of the command line
read without argparse, one HTTP/1.1 request over the engine's Unix socket with the standard library's
`socket`, and the result document written out as it came, without building a Result.

    main(argv) -> exit status, or None: this path does not take the call (cli.py's full path does)

It takes `sandbox run` with `-c CODE` or a script path, and any of `--json`, `--out DIR`,
`--file PATH[=NAME]`, `--image NAME`, `--engine auto` (no engine up: the full path starts one), when `$SANDBOX_URL` is not set and a live engine of this user
answers on the socket (engine_socket.py, whose checks apply unchanged). Anything else (another option,
an unreadable script, no engine, a socket not to trust) goes to the full path before a byte is sent,
and the full path gives the same messages it always has. Once the request is sent nothing falls back
(the code must not run twice): an error status, a malformed answer or a result with rich outputs is
handled by the full path's own functions (remote.answer, remote.result_from, render), imported then.

What is written is the full path's, byte for byte: the same stdout and stderr writes, the same
`--json` document (the server's `Result.to_json()`, normalized here as `Result.from_dict` does), the
same `--out` files through the same writer, and every file and figure name from the engine checked
as the engine checks inputs (paths.check_path) before anything is written.
"""

from __future__ import annotations

import json
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:   # (not `from typing import ...`: typing alone costs ~2 ms)
    from typing import Any

    from .results import Result

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_OTHER = 0, 1, 2, 3
OUTCOMES = ("ok", "error", "timeout", "memory_limit", "cpu_limit", "policy_violation", "crashed", "sandbox_error")
_VALUED = {"-c": "code", "--out": "out", "--image": "image"}


class Args:
    """What the pre-parse read; the same names as argparse's namespace for `run`."""

    def __init__(self) -> None:
        self.code: str | None = None
        self.script: str | None = None
        self.out: str | None = None
        self.image = "default"
        self.json = False
        self.file: list[str] = []


def preparse(argv: list[str]) -> Args | None:
    """The arguments after `run`, if they are of the forms this path takes; None for anything else
    (argparse then reads them, with its messages and its abbreviations)."""
    a, seen, i = Args(), set(), 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in _VALUED or name == "--file":
            if not eq:
                i += 1
                if i == len(argv) or argv[i].startswith("-"):
                    return None
                value = argv[i]
            if name == "--file":
                a.file.append(value)
            elif name in seen:
                return None
            else:
                seen.add(name)
                setattr(a, _VALUED[name], value)
        elif arg in ("--engine=auto", "--engine") and "--engine" not in seen:   # only auto: an engine up is used
            seen.add("--engine")
            if arg == "--engine":
                i += 1
                if i == len(argv) or argv[i] != "auto":
                    return None
        elif arg == "--json" and "--json" not in seen:
            seen.add(arg)
            a.json = True
        elif not arg.startswith("-") and a.script is None:
            a.script = arg
        else:
            return None
        i += 1
    if (a.script is None) == (a.code is None):
        return None
    return a


def _say(msg: str) -> None:
    print(f"sandbox: {msg}", file=sys.stderr, flush=True)


def _request_body(a: Args) -> bytes | None:
    """The /v1/execute body RemoteSandbox.run() would send; None if an input cannot be read."""
    if a.code is not None:
        code, filename = a.code, "main.py"
    else:
        try:
            with open(a.script) as f:   # as Path.read_text(): the locale's encoding, strict
                code = f.read()
        except (OSError, UnicodeDecodeError):
            return None
        filename = os.path.basename(a.script)
    files: dict[str, str] = {}
    if a.file:
        import base64
        for spec in a.file:   # as localfiles.read_inputs
            path, _, name = spec.partition("=")
            try:
                with open(path, "rb") as f:
                    files[name or os.path.basename(path)] = base64.b64encode(f.read()).decode()
            except OSError:
                return None
    return json.dumps({"code": code, "filename": filename, "stdin": None, "timeout": None, "limits": None,
                       "files": files}).encode()


def _connect(image: str):  # -> socket.socket | None
    from . import engine_socket

    try:
        path = engine_socket.socket_path(image)
        if path is None or not engine_socket.check(path):
            return None
        return engine_socket.connect(path, timeout=10.0), path
    except Exception:  # noqa: BLE001 - no engine, a stale one, or one not to trust: the full path says which
        return None


def exchange(sock, body: bytes | None, method: str = "POST", path: str = "/v1/execute",
             ) -> tuple[int, str, bytes, dict[bytes, bytes]]:
    """Send one request (JSON `body`), read the whole answer (Connection: close): status, reason, body,
    headers (lower-case names)."""
    sock.settimeout(None)   # no read timeout: the server's wall clock ends every run
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    sock.sendall(head.encode() + b"\r\n" + (body or b""))
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    data = b"".join(chunks)
    head, sep, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ConnectionError("Remote end closed connection without response" if not data
                              else "the answer is not HTTP/1.1")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        rest = _dechunk(rest)
    elif b"content-length" in headers:
        n = int(headers[b"content-length"])
        if len(rest) < n:
            raise ConnectionError("the answer ended before its Content-Length")
        rest = rest[:n]
    return int(parts[1]), (parts[2] if len(parts) > 2 else b"").decode("latin-1"), rest, headers


def _dechunk(data: bytes) -> bytes:
    out, i = [], 0
    while True:
        j = data.index(b"\r\n", i)
        size = int(data[i:j].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[j + 2:j + 2 + size])
        i = j + 2 + size + 2


def _normalized(d: dict) -> dict:
    """`Result.from_dict(d).to_dict()` for a document without rich outputs, without the dataclasses;
    KeyError/TypeError/ValueError/AttributeError where from_dict fails or this does not know the shape."""
    if d.get("outputs") or d["outcome"] not in OUTCOMES:
        raise ValueError("rich outputs or an unknown outcome: the full path handles them")
    e, u = d["error"], d["usage"]
    images, files = d["images"], d["files"]
    if images or files:
        from base64 import b64decode, b64encode

        def b64(s: str) -> str:
            return b64encode(b64decode(s)).decode()
    return {
        "outcome": d["outcome"], "stdout": d["stdout"], "stderr": d["stderr"],
        "stdout_truncated": bool(d["stdout_truncated"]), "stderr_truncated": bool(d["stderr_truncated"]),
        "error": None if e is None else {"type": e["type"], "message": e["message"], "line": e["line"],
                                         "traceback": e["traceback"]},
        "exit_code": d["exit_code"],
        "images": [{"name": i["name"], "mime_type": i["mime_type"], "width": i["width"], "height": i["height"],
                    "data_base64": b64(i["data_base64"]),
                    "chart": i.get("chart") if isinstance(i.get("chart"), dict) else None} for i in images],
        "files": [{"path": f["path"], "mime_type": f["mime_type"], "size": f["size"],
                   "data_base64": b64(f["data_base64"])} for f in files],
        "usage": {"wall_ms": u["wall_ms"], "cpu_ms": u["cpu_ms"], "peak_memory_bytes": u["peak_memory_bytes"],
                  "packages_ms": float(u.get("packages_ms") or 0.0)},
        "outputs": [],
        "outputs_dropped": int(d.get("outputs_dropped") or 0),
    }


def write_files(items: list[tuple[str, bytes]], out: str) -> list[str]:
    """Write (relative name, bytes) under `out` (both paths of `sandbox run --out`). Names were checked
    as the engine checks inputs; links in `out` are still never followed for the final component."""
    from pathlib import Path

    written: list[str] = []
    for rel, data in items:
        target = Path(out) / rel
        if str(target) in written:
            _say(f"not writing {rel}: a figure of the same name was written")
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError as exc:
            _say(f"could not write {target}: {exc.strerror}")
            continue
        written.append(str(target))
    return written


def render(result: Result, args: Any) -> int:
    """Print a Result (text or --json), write its files under --out; the exit status. The full path's
    (cli.cmd_run), and this one's for what _render does not take (rich outputs, odd documents)."""
    from .results import Outcome

    if args.json:
        print(result.to_json(indent=2 if sys.stdout.isatty() else None))
    else:
        sys.stdout.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.write(result.stderr)
        if result.error is not None:
            sys.stderr.write(result.error.traceback or f"{result.error.type}: {result.error.message}\n")
        if result.outcome not in (Outcome.OK, Outcome.ERROR):
            _say(f"outcome: {result.outcome.value}")
        if result.stdout_truncated or result.stderr_truncated:
            _say("output was truncated at the configured cap")
    if args.out is not None and (result.images or result.files or result.outputs):
        items = [(i.name, i.data) for i in result.images] + [(f.path, f.data) for f in result.files] \
            + result.output_files()
        written = write_files(items, args.out)
        if not args.json:
            _say(f"wrote {len(written)} file(s) to {args.out}/: {', '.join(os.path.basename(w) for w in written)}")
    return {Outcome.OK: EXIT_OK, Outcome.ERROR: EXIT_ERROR}.get(result.outcome, EXIT_OTHER)


def _render(doc: dict, a: Args) -> int:
    """render() for a normalized document, without the Result (the same writes in the same order)."""
    if a.json:
        print(json.dumps(doc, indent=2 if sys.stdout.isatty() else None))
    else:
        sys.stdout.write(doc["stdout"])
        sys.stdout.flush()
        sys.stderr.write(doc["stderr"])
        e = doc["error"]
        if e is not None:
            sys.stderr.write(e["traceback"] or f"{e['type']}: {e['message']}\n")
        if doc["outcome"] not in ("ok", "error"):
            _say(f"outcome: {doc['outcome']}")
        if doc["stdout_truncated"] or doc["stderr_truncated"]:
            _say("output was truncated at the configured cap")
    if a.out is not None and (doc["images"] or doc["files"]):
        from base64 import b64decode
        items = [(i["name"], b64decode(i["data_base64"])) for i in doc["images"]] \
            + [(f["path"], b64decode(f["data_base64"])) for f in doc["files"]] \
            + [(i["name"].removesuffix(".png") + ".chart.json", json.dumps(i["chart"]).encode())
               for i in doc["images"] if i["chart"]]
        written = write_files(items, a.out)
        if not a.json:
            _say(f"wrote {len(written)} file(s) to {a.out}/: {', '.join(os.path.basename(w) for w in written)}")
    return {"ok": EXIT_OK, "error": EXIT_ERROR}.get(doc["outcome"], EXIT_OTHER)


def main(argv: list[str]) -> int | None:
    """`sandbox run ARGV` on a warm engine, or None (nothing sent) for the full path to take it."""
    if os.environ.get("SANDBOX_URL"):
        return None
    a = preparse(argv)
    if a is None:
        return None
    body = _request_body(a)
    if body is None:
        return None
    found = _connect(a.image)
    if found is None:
        return None
    sock, path = found
    url = f"unix:{path}"
    try:
        with sock:
            status, reason, data, _ = exchange(sock, body)
    except (OSError, ValueError) as exc:
        _say(f"cannot reach {url}: {exc}")
        return EXIT_OTHER
    doc = None
    if status == 200:
        try:
            doc = json.loads(data)
            norm = _normalized(doc)
            names = [(f["path"], "a file name from the server") for f in norm["files"]] \
                + [(i["name"], "an image name from the server") for i in norm["images"]]
        except (KeyError, TypeError, ValueError, AttributeError):
            pass   # the full path's functions below say what is wrong, or handle what this one does not
        else:
            if names:
                from .errors import InvalidInputError
                from .paths import check_path
                try:
                    for name, what in names:
                        check_path(name, what)
                except InvalidInputError as exc:
                    _say(str(exc))
                    return EXIT_USAGE
            return _render(norm, a)
    from .errors import InvalidInputError, SandboxError
    from .remote import answer, result_from
    try:
        result = result_from(answer(url, "/v1/execute", status, reason, data) if doc is None else doc, url)
    except InvalidInputError as exc:
        _say(str(exc))
        return EXIT_USAGE
    except SandboxError as exc:
        _say(str(exc))
        return EXIT_OTHER
    return render(result, a)
