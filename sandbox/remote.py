"""`RemoteSandbox`: the `Sandbox.run()` API over HTTP, against `sandbox serve`. Moving a program from
in-process to remote is one line:

    sb = Sandbox()                                      # in-process
    sb = RemoteSandbox("http://host:8080", api_key=k)   # the same run() and Result, one HTTP round trip

The service's error statuses come back as the engine's exceptions: 422 InvalidInputError, 429
QueueFullError, 503 SandboxUnavailableError; 401 and anything else is a RemoteError.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import queue
import socket
import urllib.parse
from collections.abc import Mapping
from typing import Any

from .errors import InvalidInputError, QueueFullError, SandboxError, SandboxUnavailableError
from .limits import Limits
from .results import Result

Files = Mapping[str, "bytes | str"]


class RemoteError(SandboxError):
    """The service refused the call for a reason the engine has no exception for (401, 5xx, bad reply)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Connections:
    """Keep-alive HTTP/1.1 connections, one per concurrent caller, reused (the standard library's client:
    a quarter of the CPU per call of the heavier clients, which matters when the run itself is 1 ms)."""

    def __init__(self, url: str, connect_timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInputError(f"not an http(s) URL: {url!r}")
        self.cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self.host, self.port, self.prefix = parts.hostname, parts.port, parts.path.rstrip("/")
        self.connect_timeout = connect_timeout
        self.idle: queue.SimpleQueue[http.client.HTTPConnection] = queue.SimpleQueue()

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, str, bytes]:
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
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.request(method, self.prefix + path, body, headers)
                r = conn.getresponse()
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


class RemoteSandbox:
    """A client of a `sandbox serve` server. Thread-safe; keeps its connections alive between calls."""

    def __init__(self, url: str | None = None, *, api_key: str | None = None, connect_timeout: float = 10.0) -> None:
        url = url or os.environ.get("SANDBOX_URL")
        if not url:
            raise InvalidInputError("give the server's URL (or set SANDBOX_URL)")
        api_key = api_key if api_key is not None else os.environ.get("SANDBOX_API_KEY")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._http = _Connections(url, connect_timeout)
        self.url = url

    def run(self, code: str, files: Files | None = None, *, stdin: bytes | str | None = None,
            timeout: float | None = None, limits: Limits | Mapping[str, Any] | None = None,
            filename: str = "main.py") -> Result:
        """Sandbox.run() on the server: same arguments, same Result."""
        if isinstance(stdin, (bytes, bytearray)):
            try:
                stdin = bytes(stdin).decode()
            except UnicodeDecodeError:
                raise InvalidInputError("stdin must be UTF-8 text for a remote run") from None
        if isinstance(limits, Limits):
            limits = dataclasses.asdict(limits)
        body: dict[str, Any] = {
            "code": code, "filename": filename, "stdin": stdin, "timeout": timeout,
            "limits": None if limits is None else dict(limits),
            "files": {name: base64.b64encode(data.encode() if isinstance(data, str) else bytes(data)).decode()
                      for name, data in (files or {}).items()},
        }
        doc = self._request("POST", "/v1/execute", body)
        try:
            return Result.from_dict(doc)
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteError(f"{self.url} answered with a malformed result ({exc!r})") from None

    def image_info(self) -> dict[str, Any]:
        """The server's image manifest."""
        return self._request("GET", "/v1/image")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/v1/health")

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        try:
            status, reason, data = self._http.request(method, path, payload, self._headers)
        except (OSError, http.client.HTTPException) as exc:
            raise SandboxUnavailableError(f"cannot reach {self.url}: {exc}") from None
        try:
            doc = json.loads(data)
        except ValueError:
            raise RemoteError(f"{self.url} answered {status} with a body that is not JSON", status) from None
        if status == 200:
            return doc
        err = doc.get("error") if isinstance(doc, dict) else None
        message = err.get("message", reason) if isinstance(err, dict) else reason
        raise {422: InvalidInputError, 429: QueueFullError, 503: SandboxUnavailableError}.get(
            status, lambda m: RemoteError(m, status))(message)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
