"""The dependencies peer routes build on (the contract with sandbox/server/peers/): the key in the path
(`/k/{api_key}/...`), the owner id, the engine's error mapping, and the app's one sandbox; served by
real uvicorn on a loopback port with an extra router, as a peer's would be."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import httpx
import uvicorn
from fastapi import APIRouter, Depends

from sandbox import QueueFullError
from sandbox.server import Settings, create_app
from sandbox.server.deps import OwnerDep, PathOwnerDep, SandboxDep, owner_of, require_path_key
from sandbox.server.serve import RedactKeys

from .conftest import KEY, OTHER_KEY


def test_path_key_owner_sandbox_and_errors():
    peer = APIRouter(prefix="/k/{api_key}/peer", dependencies=[Depends(require_path_key)])

    @peer.post("/run")
    async def run(body: dict, sb: SandboxDep, owner: PathOwnerDep) -> dict:
        r = await sb.run(body["code"])
        return {"owner": owner, "stdout": r.stdout}

    @peer.get("/busy")
    async def busy(owner: PathOwnerDep) -> dict:
        raise QueueFullError("pretend the queue is full")

    bearer = APIRouter()

    @bearer.get("/whoami")
    async def whoami(owner: OwnerDep) -> dict:
        return {"owner": owner}

    app = create_app(Settings(slots=1, api_keys=(KEY, OTHER_KEY), mcp=False))
    app.include_router(peer)
    app.include_router(bearer)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="info"))
    access = logging.getLogger("uvicorn.access")
    access.addFilter(RedactKeys())
    records: list[logging.LogRecord] = []
    collector = logging.Handler()
    collector.emit = records.append  # type: ignore[method-assign]
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 180
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        access.addHandler(collector)
        ok = httpx.post(f"{url}/k/{KEY}/peer/run", json={"code": "print('peer')"}, timeout=60)
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"owner": owner_of(KEY), "stdout": "peer\n"}
        assert KEY not in ok.json()["owner"] and owner_of(KEY) != owner_of(OTHER_KEY)
        bad = httpx.post(f"{url}/k/not-a-key-000000000000/peer/run", json={"code": "1"}, timeout=60)
        assert bad.status_code == 401 and bad.json()["error"]["type"] == "unauthorized"
        full = httpx.get(f"{url}/k/{KEY}/peer/busy", timeout=60)
        assert full.status_code == 429 and full.headers["retry-after"] == "1"
        assert full.json() == {"error": {"type": "queue_full", "message": "pretend the queue is full"}}
        me = httpx.get(f"{url}/whoami", headers={"Authorization": f"Bearer {OTHER_KEY}"}, timeout=60)
        assert me.json() == {"owner": owner_of(OTHER_KEY)}
        access.removeHandler(collector)
        logged = "\n".join(r.getMessage() for r in records)
        assert "/k/***/peer/run" in logged and KEY not in logged
    finally:
        server.should_exit = True
        thread.join(60)
    assert not thread.is_alive()
