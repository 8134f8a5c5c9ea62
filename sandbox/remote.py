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
import os
from collections.abc import Mapping
from typing import Any

import httpx

from .errors import InvalidInputError, QueueFullError, SandboxError, SandboxUnavailableError
from .limits import Limits
from .results import Result

Files = Mapping[str, "bytes | str"]


class RemoteError(SandboxError):
    """The service refused the call for a reason the engine has no exception for (401, 5xx, bad reply)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RemoteSandbox:
    """A client of a `sandbox serve` server. Thread-safe; keeps its connections alive between calls."""

    def __init__(self, url: str | None = None, *, api_key: str | None = None, connect_timeout: float = 10.0) -> None:
        url = url or os.environ.get("SANDBOX_URL")
        if not url:
            raise InvalidInputError("give the server's URL (or set SANDBOX_URL)")
        api_key = api_key if api_key is not None else os.environ.get("SANDBOX_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # No read timeout: the server's wall clock ends every run.
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers,
                                  timeout=httpx.Timeout(connect_timeout, read=None))
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
        try:
            r = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise SandboxUnavailableError(f"cannot reach {self.url}: {exc}") from None
        try:
            doc = r.json()
        except ValueError:
            raise RemoteError(f"{self.url} answered {r.status_code} with a body that is not JSON", r.status_code) from None
        if r.status_code == 200:
            return doc
        message = doc.get("error", {}).get("message", r.reason_phrase) if isinstance(doc, dict) else r.reason_phrase
        raise {422: InvalidInputError, 429: QueueFullError, 503: SandboxUnavailableError}.get(
            r.status_code, lambda m: RemoteError(m, r.status_code))(message)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
