"""The real server (the server helper's create_app under uvicorn) on an ephemeral 127.0.0.1 port,
in a thread of the test process."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from sandbox.server.app import create_app
from sandbox.server.settings import Settings

KEY = "compat-test-key-5c1e9a7b3d"
OTHER_KEY = "compat-other-key-8f2b6d4a1e"


class LiveServer:
    def __init__(self, slots: int = 1) -> None:
        self.app = create_app(Settings(api_keys=(KEY, OTHER_KEY), slots=slots))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 180  # the pool's first start imports the scientific stack
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()
