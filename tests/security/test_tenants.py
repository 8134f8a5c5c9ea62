"""One tenant cannot hurt another, or the host, through the shared service (issue 17, the service side).

Two real keys against a real `sandbox serve` on a loopback port with a real engine; every request is
real HTTP. One test (or a few) per class of the issue's table; docs/threat-model.md names them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import httpx
import psutil
import pytest

from sandbox import InvalidInputError
from sandbox.compat import librechat
from sandbox.remote import RemoteSandbox, RemoteSession

from tests.server.conftest import KEY, OTHER_KEY, Server

A = {"Authorization": f"Bearer {KEY}"}
B = {"Authorization": f"Bearer {OTHER_KEY}"}
NDJSON = {"Accept": "application/x-ndjson"}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """One slot; quotas set low enough to reach in a test (their defaults are in sandbox/server/settings.py)."""
    s = Server(tmp_path_factory.mktemp("tenants"), "--slots", "1", "--max-sessions-per-key", "3",
               "--max-waiting-per-session", "2", "--max-runs-per-key", "2", "--max-waiting-per-key", "2",
               "--peer-spaces-per-key", "5", "--peer-store-mb-per-key", "1", "--max-mcp-sessions-per-key", "2",
               "--max-connections-per-client", "1000")   # row 7's test opens 700 at once
    yield s
    s.stop()


def _rss(s: Server) -> int:
    return psutil.Process(s.proc.pid).memory_info().rss


def _raw(url: str, head: str, body: bytes = b"", timeout: float = 5.0) -> bytes:
    """Send a request head (and maybe part of a body) on a raw socket; whatever the server answers."""
    u = urllib.parse.urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
        return data


def _head(path: str, length: int | None, extra: str = "") -> str:
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{size}{extra}\r\n"


# --- row 5: nothing before auth ---------------------------------------------------------------------------

KEYED_ROUTES = ["/v1/execute", "/v1/sessions", "/v1/sessions/abc/execute", "/run_code", "/e2b/execute",
                "/e2b/contexts", "/librechat/exec", "/librechat/upload", "/mcp",
                "/k/not-a-key-aaaaaaaaaaaaaaaa/run_code", "/k/not-a-key-aaaaaaaaaaaaaaaa/e2b/execute"]


@pytest.mark.parametrize("path", KEYED_ROUTES)
def test_the_key_is_checked_before_the_body_is_read(srv, path):
    """The head of a 60 MiB POST without a (valid) key is answered 401 at once: nobody waits for a body."""
    t0 = time.monotonic()
    answer = _raw(srv.url, _head(path, 60 << 20), timeout=3)
    assert answer.startswith(b"HTTP/1.1 401"), (path, answer[:200])
    assert time.monotonic() - t0 < 2.5
    chunked = _raw(srv.url, _head(path, None), timeout=3)
    assert chunked.startswith(b"HTTP/1.1 401"), (path, chunked[:200])


def test_a_60_mib_post_without_a_key_does_not_grow_the_server(srv):
    before = _rss(srv)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss(srv))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    body = b'{"code": "' + b"x" * (60 << 20) + b'"}'
    try:
        for path in ("/v1/execute", "/e2b/execute", "/k/not-a-key-aaaaaaaaaaaaaaaa/e2b/execute"):
            try:
                r = httpx.post(srv.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=60)
                assert r.status_code == 401, r.text[:200]
            except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
                pass  # the server answered and closed before taking the body: what we want
        time.sleep(0.3)
    finally:
        done.set()
        sampler.join()
    assert peak - before < 100 << 20, f"the server's RSS grew by {(peak - before) >> 20} MiB"


def test_every_route_has_a_body_cap_sized_to_it(srv):
    """A key holder's body is capped per route before it is read: a few KiB where nothing big belongs."""
    for path in ("/v1/sessions", "/e2b/contexts", f"/k/{KEY}/e2b/contexts"):
        extra = "" if path.startswith("/k/") else f"Authorization: Bearer {KEY}\r\n"
        answer = _raw(srv.url, _head(path, 2 << 20, extra), timeout=3)
        assert answer.startswith(b"HTTP/1.1 413"), (path, answer[:200])
    code_only = _raw(srv.url, _head("/e2b/execute", 20 << 20, f"Authorization: Bearer {KEY}\r\n"), timeout=3)
    assert code_only.startswith(b"HTTP/1.1 413"), code_only[:200]


def test_uvicorn_runs_with_connection_limits_and_timeouts():
    from sandbox.server.serve import uvicorn_config
    from sandbox.server.settings import Settings

    settings = Settings()
    config = uvicorn_config(object(), settings)
    assert config.limit_concurrency == settings.max_connections > 0
    assert config.backlog == settings.backlog > 0
    assert 0 < config.timeout_keep_alive <= 30
    assert config.h11_max_incomplete_event_size is not None


# --- slow clients: no connection held for ever, before or after the key ---------------------------------------

@pytest.fixture(scope="module")
def slow_srv(tmp_path_factory):
    """Short deadlines and 8 connections, so a test can reach both in seconds (defaults: settings.py)."""
    s = Server(tmp_path_factory.mktemp("slow"), "--slots", "1", "--max-connections", "8", "--head-timeout", "1",
               "--body-timeout", "2", "--write-stall-timeout", "2")
    yield s
    s.stop()


def _connect(url: str) -> socket.socket:
    u = urllib.parse.urlsplit(url)
    return socket.create_connection((u.hostname, u.port), timeout=10)


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server ends the connection within `within` seconds (EOF or reset)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_silent_and_trickling_connections_cannot_take_every_place(slow_srv):
    """Slowloris without a key: 8 connections that send nothing or a byte at a time would hold all 8
    places (everyone else gets 503); each is closed when its request head is late."""
    silent = [_connect(slow_srv.url) for _ in range(4)]
    trickle = [_connect(slow_srv.url) for _ in range(4)]
    time.sleep(0.2)  # all 8 accepted before the real request
    try:
        head = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 64
        for i in range(5):  # a valid head, a few bytes every 0.4 s: never idle, never complete
            for sock in trickle:
                try:
                    sock.send(head[i * 4:i * 4 + 4])
                except OSError:
                    pass
            time.sleep(0.4)
        r = httpx.post(slow_srv.url + "/v1/execute", json={"code": "print(1)"}, headers=A, timeout=30)
        assert r.status_code == 200, r.text[:200]
        assert r.json()["stdout"] == "1\n"
        assert all(_closed_by_server(sock, 2) for sock in silent + trickle)
    finally:
        for sock in silent + trickle:
            sock.close()
    assert "no complete request head within 1 s" in slow_srv.output()


def _connect_from(url: str, source: str) -> socket.socket:
    u = urllib.parse.urlsplit(url)
    return socket.create_connection((u.hostname, u.port), timeout=10, source_address=(source, 0))


def _health_on(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_one_client_address_cannot_take_every_connection(tmp_path):
    """Slowloris from one address that pays every deadline: it may hold at most
    --max-connections-per-client connections; the next one from it gets 503 at once, unparsed,
    while another address (127.0.0.2, also loopback) is served. Uncapped, the fifth connection
    below was served like the others (and with 8 of them every other client got 503)."""
    s = Server(tmp_path, "--slots", "1", "--max-connections", "8", "--max-connections-per-client", "4")
    held = [_connect_from(s.url, "127.0.0.1") for _ in range(4)]
    try:
        time.sleep(0.2)
        extra = _connect_from(s.url, "127.0.0.1")
        with extra:
            answer = _health_on(extra)
            assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
            assert _closed_by_server(extra, 2)
        with _connect_from(s.url, "127.0.0.2") as other:
            assert _health_on(other).startswith(b"HTTP/1.1 200"), "another address was refused"
        held.pop().close()
        time.sleep(0.2)
        with _connect_from(s.url, "127.0.0.1") as again:
            assert _health_on(again).startswith(b"HTTP/1.1 200"), "a freed place was not given back"
    finally:
        for sock in held:
            sock.close()
        s.stop()


def test_a_body_that_never_finishes_is_dropped(slow_srv):
    sock = _connect(slow_srv.url)
    try:
        sock.sendall(_head("/v1/execute", 1000, f"Authorization: Bearer {KEY}\r\n").encode() + b'{"code": "')
        t0 = time.monotonic()
        assert _closed_by_server(sock, 6)
        assert time.monotonic() - t0 < 5
    finally:
        sock.close()


def test_a_response_nobody_reads_is_dropped(slow_srv):
    """A key holder asks for a 40 MiB result document and never reads it: the server drops it after
    the stall deadline instead of holding it (and its memory) as long as the connection lives."""
    code = "open('big.bin', 'wb').write(b'a' * (30 << 20))"
    body = json.dumps({"code": code}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    u = urllib.parse.urlsplit(slow_srv.url)
    sock.connect((u.hostname, u.port))
    try:
        sock.sendall(_head("/v1/execute", len(body), f"Authorization: Bearer {KEY}\r\n").encode() + body)
        time.sleep(8)  # the run (a second or two), then more than the 2 s stall deadline unread
        got, length = b"", None
        sock.settimeout(10)
        try:
            while chunk := sock.recv(1 << 20):
                got += chunk
                if length is None and b"\r\n\r\n" in got:
                    head = got.split(b"\r\n\r\n")[0].decode().lower()
                    length = int(head.split("content-length:")[1].split()[0])
        except (ConnectionResetError, socket.timeout):
            pass
        assert length is not None and length > 40 << 20, got[:300]
        assert len(got) < length, "the whole response was kept for a reader that did not read"
    finally:
        sock.close()
    assert "the response was not read for 2 s" in slow_srv.output()
    assert KEY not in slow_srv.output()


# --- row 6: no transform of code before its size check or on the event loop -------------------------------

def _probe_loop(url: str, seconds: float, worst: list[float]) -> None:
    """Time /v1/health again and again: it answers from the event loop, so a blocked loop shows here."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        httpx.get(url + "/v1/health", timeout=60)
        worst.append(time.monotonic() - t0)
        time.sleep(0.02)


def test_deeply_nested_code_is_a_normal_run_never_a_500(srv):
    for depth in (50_000, 200_000):
        nested = "x = " + "-" * depth + "1\nx"
        for path, headers in ((f"/k/{KEY}/e2b/execute", {}), ("/e2b/execute", A)):
            r = httpx.post(srv.url + path, json={"code": nested}, headers=headers, timeout=120)
            assert r.status_code == 200, r.text[:300]
            events = [json.loads(x) for x in r.text.splitlines()]
            assert events[-1]["type"] == "end_of_execution"
    deep = "(" * 100_000 + ")" * 100_000
    r = httpx.post(srv.url + "/e2b/execute", json={"code": deep}, headers=A, timeout=120)
    assert r.status_code in (200, 400, 413, 422), r.text[:300]
    assert KEY not in srv.output()


def test_e2b_transform_is_off_the_event_loop_and_after_the_size_check(srv):
    big = "x = 1\n" * 600_000 + "x"  # 3.6 MiB: under the code cap, far over what the transform takes
    worst: list[float] = []
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        probe = ex.submit(_probe_loop, srv.url, 4.0, worst)
        time.sleep(0.3)
        r = httpx.post(srv.url + "/e2b/execute", json={"code": big}, headers=A, timeout=120)
        probe.result()
    assert r.status_code == 200, r.text[:300]
    assert max(worst) < 0.5, f"the event loop was blocked {max(worst):.2f} s"
    over = httpx.post(srv.url + "/e2b/execute", json={"code": "x = 1\n" * 800_000}, headers=A, timeout=120)
    assert over.status_code in (413, 400) and over.status_code != 500


def test_the_librechat_data_dir_rewrite_is_linear():
    code = "open('/mnt/data/a.csv')\n" * 60_000
    t0 = time.perf_counter()
    out = librechat.map_data_dir(code)
    took = time.perf_counter() - t0
    assert out == "open('a.csv')\n" * 60_000
    assert took < 2.0, f"{took:.2f} s for 60,000 literals"


def test_librechat_rewrite_does_not_block_the_loop(srv):
    code = "x = '/mnt/data/a.csv'\n" * 60_000
    worst: list[float] = []
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        probe = ex.submit(_probe_loop, srv.url, 3.0, worst)
        time.sleep(0.2)
        r = httpx.post(srv.url + "/librechat/exec", json={"lang": "py", "code": code}, headers={"X-API-Key": KEY},
                       timeout=120)
        probe.result()
    assert r.status_code == 200, r.text[:300]
    assert max(worst) < 0.5, f"the event loop was blocked {max(worst):.2f} s"


# --- row 9: keys never reach a log -------------------------------------------------------------------------

def test_keys_never_reach_a_log(srv):
    httpx.post(srv.url + f"/v1/execute?api_key={KEY}", json={"code": "1"}, timeout=60)
    httpx.get(srv.url + f"/v1/health?api_key={OTHER_KEY}&x=1", timeout=60)
    httpx.get(srv.url + f"/k/{KEY}/no-such-route", timeout=60)
    httpx.post(srv.url + f"/k/{KEY}/e2b/execute", json={"code": "x = " + "-" * 200_000 + "1"}, timeout=120)
    httpx.post(srv.url + f"/k/{KEY}/e2b/execute", content=b"{not json", timeout=60,
               headers={"Content-Type": "application/json"})
    httpx.post(srv.url + f"/k/{KEY}/run_code", json={"code": "print(1)", "language": "python"}, timeout=60)
    time.sleep(0.3)
    out = srv.output()
    assert "/k/***/run_code" in out  # the access log is on, and redacted
    assert KEY not in out and OTHER_KEY not in out


@pytest.mark.parametrize("key", ["abc/def+ghi=jklmnopqrstu", "key with space aaaaaaaa", "percent%2Faaaaaaaaaaaa"])
def test_keys_the_path_routes_cannot_carry_are_refused(tmp_path, key):
    f = tmp_path / "keys"
    f.write_text(key + "\n")
    p = subprocess.run([sys.executable, "-m", "sandbox", "serve", "--port", "0", "--api-key-file", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "URL" in p.stderr and "tr '+/' '-_'" in p.stderr and key not in p.stderr


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   # another\n"])
def test_an_empty_key_file_is_refused(tmp_path, text):
    f = tmp_path / "keys"
    f.write_text(text)
    p = subprocess.run([sys.executable, "-m", "sandbox", "serve", "--port", "0", "--api-key-file", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no API key" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_librechat_accepts_x_api_key(srv):
    r = httpx.post(srv.url + "/librechat/exec", json={"lang": "py", "code": "print(7)"}, headers={"X-API-Key": KEY},
                   timeout=60)
    assert r.status_code == 200 and r.json()["stdout"] == "7\n"
    assert httpx.post(srv.url + "/librechat/exec", json={"lang": "py", "code": "1"}, timeout=60,
                      headers={"X-API-Key": "wrong-key-aaaaaaaaaaaaaa"}).status_code == 401


# --- row 8 / "what to build" 6: quotas per key, checked atomically -----------------------------------------

def test_sessions_per_key_are_capped_atomically(srv):
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=srv.url, headers=A, timeout=120) as c:
            return await asyncio.gather(*(c.post("/v1/sessions", json={}) for _ in range(10)))

    answers = asyncio.run(main())
    made = [r for r in answers if r.status_code == 201]
    refused = [r for r in answers if r.status_code == 429]
    try:
        assert len(made) == 3 and len(refused) == 7, [r.status_code for r in answers]
        assert all(r.json()["error"]["type"] == "session_limit" and int(r.headers["retry-after"]) >= 1 for r in refused)
        other = httpx.post(srv.url + "/v1/sessions", json={}, headers=B, timeout=120)
        assert other.status_code == 201  # the other key is not touched by A's cap
        httpx.delete(srv.url + f"/v1/sessions/{other.json()['session_id']}", headers=B, timeout=60)
    finally:
        for r in made:
            httpx.delete(srv.url + f"/v1/sessions/{r.json()['session_id']}", headers=A, timeout=60)


def test_quota_defaults_are_on():
    from sandbox.server.settings import Settings

    s = Settings()
    for name in ("max_sessions_per_key", "max_waiting_per_key", "max_waiting_per_session",
                 "max_mcp_sessions_per_key", "peer_spaces_per_key", "peer_bytes_per_key"):
        assert getattr(s, name) > 0, name
    assert s.max_runs_per_key is None  # the number of slots (test_by_default_...)


def _b_beside_a_flood(url: str, a_code: str, flood: int, b_calls: int) -> list[float]:
    """Key A keeps `flood` calls of `a_code` in flight; after 1 s, key B's `b_calls` print(1), one
    after another: how long each took (seconds)."""
    async def main() -> list[float]:
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=100)) as c:
            ok = await c.post("/v1/execute", json={"code": "print(0)"}, headers=B)  # warm
            assert ok.status_code == 200
            tasks = [asyncio.create_task(c.post("/v1/execute", headers=A, json={"code": a_code}))
                     for _ in range(flood)]
            await asyncio.sleep(1.0)
            took = []
            for _ in range(b_calls):
                t0 = time.monotonic()
                mine = await c.post("/v1/execute", json={"code": "print(1)"}, headers=B)
                took.append(time.monotonic() - t0)
                assert mine.status_code == 200 and mine.json()["stdout"] == "1\n", mine.text
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return took
    return asyncio.run(main())


def test_by_default_another_key_waits_at_most_one_run_per_slot(tmp_path):
    """Row 6, fairness with the default quotas: key A keeps 20 calls of 0.6 s queued on a one-slot
    server; key B's print(1) waits for at most the one run of A's that holds the slot (a key's
    calls in the engine are capped at the number of slots, so none of A's are queued there)."""
    s = Server(tmp_path, "--slots", "1")
    try:
        took = _b_beside_a_flood(s.url, "import time; time.sleep(0.6)", 20, 1)[0]
        # One run of A's (0.6 s) ahead at most; ten of them (6 s) before this default.
        assert took < 2.0, f"key B waited {took:.1f} s behind key A's queued calls"
    finally:
        s.stop()


def test_while_another_key_calls_a_flood_keeps_its_share_of_the_slots(tmp_path):
    """Row 6, fair share: on a two-slot server key A keeps 30 calls of 3 s queued. Once key B is
    calling, A holds only its share (one slot), so B's later calls find the other slot free. Without
    the share, A's next run takes every slot B's call frees, and B's calls alternate with A's 3 s
    runs: of two calls in a row, one waits 1.5 s or more."""
    s = Server(tmp_path, "--slots", "2")
    try:
        took = _b_beside_a_flood(s.url, "import time; time.sleep(3)", 30, 6)
        # The first call may wait for one of A's runs (it found both slots A's); none after it does.
        assert took[0] < 4.0, took
        assert max(took[1:]) < 1.2, f"key B's calls waited for key A's runs: {[round(t, 2) for t in took]}"
    finally:
        s.stop()


def test_runs_per_key_are_capped_and_the_other_key_goes_first(srv):
    async def main() -> tuple[list[httpx.Response], float]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=srv.url, timeout=120, limits=limits) as c:
            flood = [asyncio.create_task(c.post("/v1/execute", json={"code": "import time; time.sleep(1)"}, headers=A))
                     for _ in range(30)]
            await asyncio.sleep(1.0)
            t0 = time.monotonic()
            mine = await c.post("/v1/execute", json={"code": "print(1)"}, headers=B)
            took = time.monotonic() - t0
            assert mine.status_code == 200 and mine.json()["stdout"] == "1\n"
            return await asyncio.gather(*flood), took

    answers, took = asyncio.run(main())
    codes = [r.status_code for r in answers]
    assert codes.count(429) >= 25, codes
    assert all(r.headers.get("retry-after") for r in answers if r.status_code == 429)
    assert took < 4.0, f"key B waited {took:.1f} s behind key A's flood"


def test_a_flood_on_one_session_does_not_starve_another_key(srv):
    """Row 7: key A's 700 concurrent calls to its own session; key B's print(1) on /v1/execute."""
    sid = httpx.post(srv.url + "/v1/sessions", json={}, headers=A, timeout=120).json()["session_id"]

    async def main() -> tuple[list, float]:
        limits = httpx.Limits(max_connections=800, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=srv.url, timeout=300, limits=limits) as c:
            flood = [asyncio.create_task(c.post(f"/v1/sessions/{sid}/execute", headers=A,
                                                json={"code": "import time; time.sleep(0.2)"})) for _ in range(700)]
            await asyncio.sleep(3.0)
            t0 = time.monotonic()
            mine = await c.post("/v1/execute", json={"code": "print(1)"}, headers=B)
            took = time.monotonic() - t0
            assert mine.status_code == 200 and mine.json()["stdout"] == "1\n", mine.text
            answers = await asyncio.gather(*flood, return_exceptions=True)
            return answers, took

    try:
        answers, took = asyncio.run(main())
    finally:
        httpx.delete(srv.url + f"/v1/sessions/{sid}", headers=A, timeout=60)
    refused = [r for r in answers if isinstance(r, httpx.Response) and r.status_code == 429]
    assert len(refused) > 600, [getattr(r, "status_code", r) for r in answers][:20]
    assert all(r.headers.get("retry-after") for r in refused)
    assert took < 3.0, f"key B's print(1) took {took:.1f} s"


def _refusal_times(srv: Server, calls: list[tuple[str, dict, dict]]) -> list[float]:
    """Send every (path, body, headers) call at once; when each refused one (429 or 401) came back."""
    async def main() -> list[float]:
        t0, times = time.monotonic(), []
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=srv.url, timeout=120, limits=limits) as c:
            async def one(path: str, body: dict, headers: dict) -> None:
                r = await c.post(path, json=body, headers=headers)
                if r.status_code in (401, 429):
                    assert r.status_code == 401 or r.headers.get("retry-after"), r.headers
                    times.append(time.monotonic() - t0)
            await asyncio.gather(*(one(*call) for call in calls))
        return sorted(times)
    return asyncio.run(main())


def test_a_key_asking_again_at_once_gets_its_refusals_paced(srv):
    """Row 7's sibling: a key that answers each 429 by asking again at once, on many connections,
    costs the server a refusal per request. Its 429s go out at most 50 a second (gate.py), so 95 of
    them take about 1.9 s; unpaced they all come back within a few tenths of a second."""
    sid = httpx.post(srv.url + "/v1/sessions", json={}, headers=A, timeout=120).json()["session_id"]
    try:
        times = _refusal_times(srv, [(f"/v1/sessions/{sid}/execute", {"code": "import time; time.sleep(3)"}, A)] * 100)
    finally:
        httpx.delete(srv.url + f"/v1/sessions/{sid}", headers=A, timeout=60)
    assert len(times) >= 90, len(times)
    assert times[-1] - times[0] >= 1.5, f"{len(times)} refusals within {times[-1] - times[0]:.2f} s"
    # A polite key's first refusal is not held: B's own session, busy, refuses B at once.
    sid_b = httpx.post(srv.url + "/v1/sessions", json={}, headers=B, timeout=120).json()["session_id"]
    try:
        times_b = _refusal_times(srv, [(f"/v1/sessions/{sid_b}/execute", {"code": "import time; time.sleep(2)"}, B)] * 6)
        assert times_b and times_b[0] < 1.0, times_b
    finally:
        httpx.delete(srv.url + f"/v1/sessions/{sid_b}", headers=B, timeout=60)


def test_wrong_keys_from_one_address_get_their_refusals_paced(srv):
    times = _refusal_times(srv, [("/v1/execute", {"code": "print(1)"}, {"Authorization": "Bearer wrong"})] * 80)
    assert len(times) == 80
    assert times[-1] - times[0] >= 1.2, f"80 refusals within {times[-1] - times[0]:.2f} s"


def test_peer_store_spaces_and_bytes_are_per_key(srv):
    mine = httpx.post(srv.url + "/e2b/contexts", json={}, headers=B, timeout=60).json()["id"]
    up = httpx.post(srv.url + "/librechat/upload", files={"file": ("b.txt", b"B" * 1000)}, headers={"X-API-Key": OTHER_KEY},
                    timeout=60).json()
    for _ in range(40):
        assert httpx.post(srv.url + "/e2b/contexts", json={}, headers=A, timeout=60).status_code == 200
    for _ in range(4):  # 4 x 400 KB: over A's 1 MiB share, so A's own oldest upload goes
        httpx.post(srv.url + "/librechat/upload", files={"file": ("a.bin", b"A" * 400_000)}, headers={"X-API-Key": KEY},
                   timeout=60)
    a_contexts = httpx.get(srv.url + "/e2b/contexts", headers=A, timeout=60).json()
    assert len(a_contexts) <= 5
    # B's own context, after the default one every key lists (issue 18)
    assert [c["id"] for c in httpx.get(srv.url + "/e2b/contexts", headers=B, timeout=60).json()] == ["default", mine]
    got = httpx.get(srv.url + f"/librechat/download/{up['session_id']}/{up['files'][0]['fileId']}",
                    headers={"X-API-Key": OTHER_KEY}, timeout=60)
    assert got.status_code == 200 and got.content == b"B" * 1000


def _mcp_init(url: str, headers: dict) -> httpx.Response:
    return httpx.post(url + "/mcp", json=INIT, headers={**MCP_HEADERS, **headers}, timeout=60)


def test_mcp_sessions_are_bound_to_their_key_and_capped_per_key(srv):
    first = _mcp_init(srv.url, A)
    assert first.status_code == 200, first.text
    sid = first.headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    stolen = httpx.post(srv.url + "/mcp", json=ping, headers={**MCP_HEADERS, **B, "mcp-session-id": sid}, timeout=60)
    assert stolen.status_code == 404, stolen.text
    ended = httpx.delete(srv.url + "/mcp", headers={**MCP_HEADERS, **B, "mcp-session-id": sid}, timeout=60)
    assert ended.status_code == 404
    still = httpx.post(srv.url + "/mcp", json=ping, headers={**MCP_HEADERS, **A, "mcp-session-id": sid}, timeout=60)
    assert still.status_code == 200, still.text
    second = _mcp_init(srv.url, A)
    assert second.status_code == 200
    third = _mcp_init(srv.url, A)
    assert third.status_code == 429 and third.headers.get("retry-after"), third.text
    assert _mcp_init(srv.url, B).status_code == 200
    for r in (first, second):
        httpx.delete(srv.url + "/mcp", headers={**MCP_HEADERS, **A, "mcp-session-id": r.headers["mcp-session-id"]},
                     timeout=60)
    assert _mcp_init(srv.url, A).status_code == 200  # closing frees the key's share


# --- row 12: live output coalesced --------------------------------------------------------------------------

def test_live_output_is_coalesced_exact_and_in_order(srv):
    code = ("import sys, time\nt = time.monotonic()\nn = 0\nwhile time.monotonic() - t < 2:\n"
            "    sys.stdout.write(str(n % 10)); sys.stdout.flush(); n += 1\n"
            "    if n % 1000 == 0: time.sleep(0.01)\n"
            "    if n % 50000 == 0: sys.stderr.write('e'); sys.stderr.flush()\n"
            "print()\nprint(n, file=sys.stderr)")
    events = []
    with httpx.stream("POST", srv.url + "/v1/execute", json={"code": code}, headers={**A, **NDJSON}, timeout=120) as r:
        for line in r.iter_lines():
            events.append(json.loads(line))
    result = events[-1]
    assert result["type"] == "result" and result["outcome"] == "ok"
    live = events[:-1]
    out = "".join(e["text"] for e in live if e["type"] == "stdout")
    err = "".join(e["text"] for e in live if e["type"] == "stderr")
    assert out == result["stdout"] and err == result["stderr"]
    n = int(result["stderr"].rsplit("e", 1)[-1])
    assert n > 2000 and out == "".join(str(i % 10) for i in range(n)) + "\n"
    assert len(live) < 400, f"{len(live)} lines for {n} one-byte writes"


# --- row 10 / class 7: clients trust no server --------------------------------------------------------------

class _Evil(http.server.BaseHTTPRequestHandler):
    """A server that answers every run with files named to escape the caller's directory."""

    names = ["../escaped.txt"]

    def log_message(self, *args) -> None:
        pass

    def _send(self, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/v1/sessions":
            self._send({"session_id": "s1", "expires_at": time.time() + 600, "ttl": 600})
            return
        import base64
        self._send({"outcome": "ok", "stdout": "", "stderr": "", "stdout_truncated": False, "stderr_truncated": False,
                    "error": None, "exit_code": 0, "images": [],
                    "files": [{"path": n, "size": 1, "mime_type": "text/plain", "data_base64": base64.b64encode(b"x").decode()}
                              for n in self.names],
                    "usage": {"wall_ms": 1, "cpu_ms": 1, "peak_memory_bytes": 0}})

    def do_GET(self) -> None:
        self._send({"files": [{"path": n, "size": 1, "mime_type": "text/plain"} for n in self.names]})


@pytest.fixture()
def evil():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Evil)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize("name", ["../escaped.txt", "/tmp/abs.txt", "a/../../b", "a\\..\\b", "nul\0.txt"])
def test_remote_clients_check_names_from_the_server(evil, name):
    _Evil.names = [name]
    with RemoteSandbox(evil, api_key=KEY) as sb:
        with pytest.raises(InvalidInputError):
            sb.run("print(1)")
        session = RemoteSession(sb, {"session_id": "s1", "expires_at": time.time() + 600, "ttl": 600})
        with pytest.raises(InvalidInputError):
            session.files()
        with pytest.raises(InvalidInputError):
            session.run("print(1)")


def test_run_url_out_never_writes_outside_its_directory(evil, tmp_path):
    _Evil.names = ["../escaped.txt"]
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "sandbox", "run", "--url", evil, "--out", str(out), "-c", "print(1)"],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "SANDBOX_API_KEY": KEY})
    assert not (tmp_path / "escaped.txt").exists()
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr


# --- also: /v1/image shows no host path ---------------------------------------------------------------------

def test_image_info_shows_no_host_path(srv):
    doc = httpx.get(srv.url + "/v1/image", headers=A, timeout=60).json()
    assert doc["python_version"] and doc["packages"]
    flat = json.dumps(doc)
    assert '"/' not in flat, [k for k, v in doc.items() if isinstance(v, str) and v.startswith("/")]
