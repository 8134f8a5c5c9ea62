"""A scripted chat-completions server on 127.0.0.1: the one accepted stand-in for a model.

Each POST /v1/chat/completions gets the next canned reply of the script and is recorded, so a test
can check what the loop sent (the error it fed back, the figures, the files it announced).
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)


def call(code: str, text: str = "", name: str = "run_python", arguments: str | None = None) -> dict[str, Any]:
    """An assistant message that calls the tool."""
    args = json.dumps({"code": code}) if arguments is None else arguments
    return {"role": "assistant", "content": text or None,
            "tool_calls": [{"id": f"call_{next(_ids)}", "type": "function",
                            "function": {"name": name, "arguments": args}}]}


def answer(text: str) -> dict[str, Any]:
    """An assistant message with the final answer."""
    return {"role": "assistant", "content": text}


class ScriptedModel:
    """`with ScriptedModel([call(...), answer(...)]) as m: OpenAIChatBackend(m.url)`."""

    def __init__(self, script: list[dict[str, Any] | Callable[[dict], dict[str, Any]]]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        model = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [
                        {"id": "scripted", "object": "model", "created": 0, "owned_by": "tests"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                model.requests.append(body)
                if not model.script:
                    return self._send(500, {"error": {"message": "script exhausted", "type": "server_error"}})
                step = model.script.pop(0)
                message = step(body) if callable(step) else step
                finish = "tool_calls" if message.get("tool_calls") else "stop"
                self._send(200, {"id": f"chatcmpl-{len(model.requests)}", "object": "chat.completion",
                                 "created": 0, "model": body.get("model", "scripted"),
                                 "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedModel:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def tool_messages(self, request: int) -> list[str]:
        """The tool results the loop sent in request number `request`."""
        return [m["content"] for m in self.requests[request]["messages"] if m["role"] == "tool"]
