"""`RemoteSandbox`: the `Sandbox.run()` and `Sandbox.session()` API over HTTP, against `sandbox serve`.
Moving a program from in-process to remote is one line:

    sb = Sandbox()                                      # in-process
    sb = RemoteSandbox("http://host:8080", api_key=k)   # the same run() and Result, one HTTP round trip
    with sb.session(ttl=600) as s:                      # a RemoteSession: Session's run(), files(),
        s.run("x = 41"); s.run("print(x + 1)")          #   read_file(), write_file(), delete_file(), close()

The service's errors come back as the engine's exceptions: 413 and 422 InvalidInputError, 429
QueueFullError (or SessionLimitError), 503 SandboxUnavailableError, an ended or unknown session
SessionClosedError, a missing file NoSuchFileError; 401 and anything else is a RemoteError.

Nothing a server sends is trusted more than a jail's output: every file and image name in a result,
and every name a session's file listing gives, is checked as the engine checks inputs (relative, no
'..', no NUL, no backslash, no control character); a bad one is an InvalidInputError, so no caller
(`sandbox run --url ... --out DIR` among them) ever gets a name that leads outside its directory.
The one exception is a path the call itself named in `fetch` (under /tmp/, as run() returns it).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import os
import queue
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import (InvalidInputError, QueueFullError, SandboxError, SandboxUnavailableError, SessionClosedError,
                     from_wire)
from .paths import check_path
from .results import DisplayOutput, Result
from .types import Files, TextCallback

if TYPE_CHECKING:  # imported when used: `sandbox run` on a warm engine loads neither (~20 ms)
    from .limits import Limits
    from .sessions import FileInfo



class RemoteError(SandboxError):
    """The service refused the call for a reason the engine has no exception for (401, 5xx, bad reply)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Connections:
    """Keep-alive HTTP/1.1 connections, one per concurrent caller, reused (the standard library's client:
    a quarter of the CPU per call of the heavier clients, which matters when the run itself is 1 ms)."""

    def __init__(self, url: str, connect_timeout: float, unix_socket: str | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInputError(f"not an http(s) URL: {url!r}")
        self.cls: Callable[..., http.client.HTTPConnection] = \
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        if unix_socket is not None:
            self.cls = lambda host, port, timeout: _UnixConnection(unix_socket, timeout)
        self.host, self.port, self.prefix = parts.hostname, parts.port, parts.path.rstrip("/")
        self.connect_timeout = connect_timeout
        self.idle: queue.SimpleQueue[http.client.HTTPConnection] = queue.SimpleQueue()

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str],
                on_line: Callable[[bytes], None] | None = None) -> tuple[int, str, bytes]:
        """One request on a pooled connection. With `on_line`, a 200 answer is read line by line
        (NDJSON) and handed over as it arrives; the body returned is then empty."""
        for attempt in (0, 1):
            try:
                if attempt:
                    raise queue.Empty  # the retry always gets a new connection
                conn, reused = self.idle.get_nowait(), True
            except queue.Empty:
                conn, reused = self.cls(self.host, self.port, timeout=self.connect_timeout), False
            try:
                if not reused:
                    conn.connect()
                    conn.sock.settimeout(None)  # no read timeout: the server's wall clock ends every run
                    if conn.sock.family != socket.AF_UNIX:
                        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.request(method, self.prefix + path, body, headers)
                r = conn.getresponse()
                if on_line is not None and r.status == 200:
                    for line in iter(r.readline, b""):
                        on_line(line)
                    data = b""
                else:
                    data = r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused:  # the server closed idle keep-alive connections: drop them, retry on a new one
                    self.close()
                    continue
                raise ConnectionError(str(exc) or type(exc).__name__) from None
            except BaseException:
                conn.close()
                raise
            if r.will_close:
                conn.close()
            else:
                self.idle.put(conn)
            return r.status, r.reason, data
        raise AssertionError("unreachable")

    def close(self) -> None:
        while True:
            try:
                self.idle.get_nowait().close()
            except queue.Empty:
                return


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a `sandbox serve --unix-socket`: connected only if the server runs as this user or
    root (engine_socket.connect checks its SO_PEERCRED)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_socket = path

    def connect(self) -> None:
        from .engine_socket import EngineSocketError, connect

        try:
            self.sock = connect(self.unix_socket, self.timeout)
        except EngineSocketError as exc:
            raise PermissionError(str(exc)) from None


class RemoteSandbox:
    """A client of a `sandbox serve` server. Thread-safe; keeps its connections alive between calls.
    With `unix_socket=PATH`, it talks to a `sandbox serve --unix-socket PATH` (no key: the socket's
    mode and the server's peer check are the access control; `url` is then only the Host header)."""

    def __init__(self, url: str | None = None, *, api_key: str | None = None, connect_timeout: float = 10.0,
                 unix_socket: str | None = None) -> None:
        if unix_socket is not None:
            url = url or "http://localhost"
            api_key = api_key or ""
        url = url or os.environ.get("SANDBOX_URL")
        if not url:
            raise InvalidInputError("give the server's URL (or set SANDBOX_URL)")
        api_key = api_key if api_key is not None else os.environ.get("SANDBOX_API_KEY")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._http = _Connections(url, connect_timeout, unix_socket)
        self.url = url if unix_socket is None else f"unix:{unix_socket}"

    def run(self, code: str, files: Files | None = None, *, stdin: bytes | str | None = None,
            timeout: float | None = None, limits: Limits | Mapping[str, Any] | None = None,
            filename: str = "main.py", on_stdout: TextCallback | None = None,
            on_stderr: TextCallback | None = None, env: Mapping[str, str] | None = None,
            fetch: Iterable[str] = (), packages: list[str] | None = None,
            on_output: Callable[[DisplayOutput], None] | None = None) -> Result:
        """Sandbox.run() on the server: same arguments (`env`, `fetch` too), same Result. With
        `on_stdout`/`on_stderr`/`on_output` the answer is streamed (NDJSON) and each callback gets the
        text, or each rich output, as the program writes or displays it (on the calling thread; a
        callback that raises is logged and called no more). `packages` come from the server's
        allow-list and cache."""
        return self._execute("/v1/execute", code, files, stdin=stdin, timeout=timeout, limits=limits,
                             filename=filename, on_stdout=on_stdout, on_stderr=on_stderr, env=env, fetch=fetch,
                             packages=packages, on_output=on_output)

    def session(self, ttl: float | None = None, *, limits: Limits | Mapping[str, Any] | None = None,
                packages: list[str] | None = None) -> RemoteSession:
        """A stateful session on the server (Sandbox.session() remotely); a context manager that closes it."""
        body: dict[str, Any] = {"ttl": ttl, "limits": _limit_changes(limits)}
        if packages:
            body["packages"] = list(packages)
        doc = self._request("POST", "/v1/sessions", body)
        return RemoteSession(self, doc)

    def get_session(self, session_id: str) -> RemoteSession:
        """A session this key opened before (from another process too); SessionClosedError if it has
        ended, is unknown, or is another key's."""
        return RemoteSession(self, self._request("GET", "/v1/sessions/" + urllib.parse.quote(session_id, safe="")))

    def _execute(self, path: str, code: str, files: Files | None, *, stdin: bytes | str | None,
                 timeout: float | None, limits: Limits | Mapping[str, Any] | None, filename: str,
                 on_stdout: TextCallback | None, on_stderr: TextCallback | None,
                 env: Mapping[str, str] | None = None, fetch: Iterable[str] = (),
                 packages: list[str] | None = None,
                 on_output: Callable[[DisplayOutput], None] | None = None) -> Result:
        if isinstance(stdin, (bytes, bytearray)):
            try:
                stdin = bytes(stdin).decode()
            except UnicodeDecodeError:
                raise InvalidInputError("stdin must be UTF-8 text for a remote run") from None
        body: dict[str, Any] = {
            "code": code, "filename": filename, "stdin": stdin, "timeout": timeout,
            "limits": _limit_changes(limits),
            "files": {name: base64.b64encode(data.encode() if isinstance(data, str) else bytes(data)).decode()
                      for name, data in (files or {}).items()},
        }
        if env is not None and not isinstance(env, Mapping):
            raise InvalidInputError("env must be a mapping of name -> str")
        if isinstance(fetch, (str, bytes)):
            raise InvalidInputError("fetch must be a list of paths, not one string")
        if env:  # sent only when given: a server from before these fields answers the calls without them
            body["env"] = dict(env)
        fetch = list(fetch)
        if fetch:
            body["fetch"] = fetch
        if packages:
            body["packages"] = list(packages)
        if on_stdout is not None or on_stderr is not None or on_output is not None:
            doc = self._stream(path, body, {"stdout": on_stdout, "stderr": on_stderr, "output": on_output})
        else:
            doc = self._request("POST", path, body)
        return result_from(doc, self.url, fetch)

    def image_info(self) -> dict[str, Any]:
        """The server's image manifest."""
        return self._request("GET", "/v1/image")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/v1/health")

    def _stream(self, path: str, body: Any, callbacks: dict[str, TextCallback | None]) -> Any:
        final: dict[str, Any] = {}

        def on_line(line: bytes) -> None:
            try:
                event = json.loads(line)
                kind = event.get("type")
            except (ValueError, AttributeError):
                raise RemoteError(f"{self.url} streamed a line that is not a JSON object") from None
            if kind in callbacks:
                callback = callbacks[kind]
                if callback is not None:
                    value = event["text"] if kind != "output" else _display(event, self.url)
                    try:
                        callback(value)
                    except Exception:  # noqa: BLE001 - the caller's bug must not break the run
                        import logging
                        logging.getLogger("sandbox.remote").exception("the %s callback raised; it gets no more output of this run", kind)
                        callbacks[kind] = None
            elif kind == "result":
                final.update(event)
                del final["type"]
            elif kind == "error":
                raise RemoteError(f"the run failed on the server: {event['error']['message']}")

        self._request("POST", path, body, on_line, {"Accept": "application/x-ndjson"})
        if not final:
            raise RemoteError(f"{self.url} ended the stream without a result")
        return final

    def _request(self, method: str, path: str, body: Any = None, on_line: Callable[[bytes], None] | None = None,
                 extra_headers: dict[str, str] | None = None, *, raw: bytes | None = None,
                 raw_answer: bool = False) -> Any:
        """One call. `body` goes as JSON, or `raw` as bytes; a 200 answer is parsed as JSON unless
        `raw_answer` (then its bytes are returned). An error status raises the engine's exception."""
        payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
        headers = {**self._headers, **(extra_headers or {})}
        if raw is not None:
            headers["Content-Type"] = "application/octet-stream"
        try:
            status, reason, data = self._http.request(method, path, payload, headers, on_line)
        except (OSError, http.client.HTTPException) as exc:
            raise SandboxUnavailableError(f"cannot reach {self.url}: {exc}") from None
        if on_line is not None and status == 200:
            return None
        return answer(self.url, path, status, reason, data, raw_answer)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def answer(url: str, path: str, status: int, reason: str, data: bytes, raw_answer: bool = False) -> Any:
    """A call's answer: a 2xx's JSON (its bytes if `raw_answer`), or the engine's exception for an error
    status. Also used by `sandbox run`'s warm-engine path (warmrun.py), which does its own HTTP."""
    if 200 <= status < 300 and (raw_answer or status == 204):
        return data
    try:
        doc = json.loads(data)
    except ValueError:
        raise RemoteError(f"{url} answered {status} with a body that is not JSON", status) from None
    if 200 <= status < 300:
        return doc
    err = doc.get("error") if isinstance(doc, dict) else None
    message = err.get("message", reason) if isinstance(err, dict) else reason
    kind = err.get("type") if isinstance(err, dict) else None
    known = from_wire(kind, message) if kind != "sandbox_error" else None
    if known is not None:
        raise known
    if kind == "too_many_calls":  # a quota of this key or session (the service's, not the engine's)
        raise QueueFullError(message)
    if status == 401:
        raise RemoteError(f"{message}: give the server's key with api_key= or in SANDBOX_API_KEY", status)
    if status == 404 and path.startswith("/v1/sessions/"):
        raise SessionClosedError(message)   # an unknown session, as Sandbox.get_session() says it
    raise {413: InvalidInputError, 422: InvalidInputError, 429: QueueFullError,
           503: SandboxUnavailableError}.get(status, lambda m: RemoteError(m, status))(message)


def result_from(doc: Any, url: str, fetch: Iterable[str] = ()) -> Result:
    """A result document from a server as a Result, every name in it checked (module docstring)."""
    try:
        result = Result.from_dict(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise RemoteError(f"{url} answered with a malformed result ({exc!r})") from None
    for f in result.files:  # a file asked for by `fetch` keeps its /tmp/ path, as in-process; no other
        if f.path not in fetch:
            _checked(f.path, "a file name from the server")
        check_path(f.path, "a file name from the server", tmp=True)
    for image in result.images:
        _checked(image.name, "an image name from the server")
    return result


def _limit_changes(limits: Limits | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if limits is None:
        return None
    from .limits import Limits

    return Limits.changes(limits)


def _display(event: dict, url: str) -> DisplayOutput:
    """A streamed `{"type": "output", ...}` event as a DisplayOutput, checked as a result's are."""
    try:
        return DisplayOutput.from_dict(event)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise RemoteError(f"{url} streamed a malformed rich output ({exc!r})") from None


def _checked(name: object, what: str) -> str:
    """`name` if it is a path the engine would accept as an input name; InvalidInputError otherwise."""
    return check_path(name, what)


class RemoteSession:
    """A session on a `sandbox serve` server, with Session's methods. `expires_at` is the server's at
    creation, then moved by `ttl` at each call this client makes (the server moves its own likewise)."""

    def __init__(self, sandbox: RemoteSandbox, doc: dict[str, Any]) -> None:
        self._sb = sandbox
        self.id: str = doc["session_id"]
        self.ttl: float = float(doc["ttl"])
        self.expires_at: float = float(doc["expires_at"])
        self.closed = False
        self.close_reason: str | None = None
        self._path = "/v1/sessions/" + urllib.parse.quote(self.id, safe="")

    def run(self, code: str, files: Files | None = None, *, stdin: bytes | str | None = None,
            timeout: float | None = None, limits: Limits | Mapping[str, Any] | None = None,
            filename: str = "main.py", on_stdout: TextCallback | None = None,
            on_stderr: TextCallback | None = None, env: Mapping[str, str] | None = None,
            fetch: Iterable[str] = ()) -> Result:
        """Session.run() on the server: state carries over from the calls before."""
        return self._call(lambda: self._sb._execute(
            self._path + "/execute", code, files, stdin=stdin, timeout=timeout, limits=limits, filename=filename,
            on_stdout=on_stdout, on_stderr=on_stderr, env=env, fetch=fetch))

    def install(self, packages: list[str]) -> dict[str, str]:
        """Session.install() on the server: what the session now has beyond the image."""
        doc = self._call(lambda: self._sb._request("POST", self._path + "/packages", {"packages": list(packages)}))
        try:
            return {str(k): str(v) for k, v in doc["packages"].items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise RemoteError(f"{self._sb.url} answered with a malformed package list ({exc!r})") from None

    def files(self) -> list[FileInfo]:
        from .sessions import FileInfo

        doc = self._call(lambda: self._sb._request("GET", self._path + "/files"))
        try:
            return [FileInfo(_checked(f["path"], "a file name from the server"), int(f["size"]), str(f["mime_type"]))
                    for f in doc["files"]]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, InvalidInputError):
                raise
            raise RemoteError(f"{self._sb.url} answered with a malformed file list ({exc!r})") from None

    def read_file(self, path: str) -> bytes:
        return self._call(lambda: self._sb._request("GET", self._file(path), raw_answer=True))

    def write_file(self, path: str, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        self._call(lambda: self._sb._request("PUT", self._file(path), raw=raw))

    def delete_file(self, path: str) -> None:
        self._call(lambda: self._sb._request("DELETE", self._file(path), raw_answer=True))

    def close(self) -> None:
        """Close the session on the server (idempotent)."""
        if self.closed:
            return
        try:
            self._sb._request("DELETE", self._path, raw_answer=True)
        except SessionClosedError:
            pass
        self.closed, self.close_reason = True, self.close_reason or "closed"

    def _file(self, path: str) -> str:
        if not path:
            raise InvalidInputError("a file path must not be empty")
        return self._path + "/files/" + urllib.parse.quote(path, safe="/")

    def _call(self, call: Callable[[], Any]) -> Any:
        if self.closed:
            raise SessionClosedError(self.close_reason or "closed")
        try:
            answer = call()
        except SessionClosedError as exc:
            self.closed, self.close_reason = True, str(exc)
            raise
        self.expires_at = time.time() + self.ttl
        return answer

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
