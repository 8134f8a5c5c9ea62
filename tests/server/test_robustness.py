"""Load and shutdown: a full queue answers 429 with Retry-After; SIGTERM lets short runs finish, kills
the rest after the grace period, and leaves no process of the server behind."""

from __future__ import annotations

import concurrent.futures
import signal
import time

import httpx
import psutil

from .conftest import KEY, Server

AUTH = {"Authorization": f"Bearer {KEY}"}


def _wait_for(url: str, predicate, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pool = httpx.get(url + "/v1/health", timeout=10).json()["pool"]
        if predicate(pool):
            return pool
        time.sleep(0.05)
    raise AssertionError(f"pool never reached the state: {pool}")


def _post(url: str, code: str, headers: dict | None = None, **kw) -> httpx.Response:
    return httpx.post(url + "/v1/execute", json={"code": code, **kw}, headers={**AUTH, **(headers or {})}, timeout=120)


def test_full_queue_is_429_with_retry_after(tmp_path):
    # One key fills the engine's queue here: it may hold more engine places than the one slot
    # (by default a key holds one place per slot, and its further calls wait in its own queue).
    s = Server(tmp_path, "--slots", "1", "--max-queue", "1", "--max-runs-per-key", "8", "--no-mcp")
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            running = ex.submit(_post, s.url, "import time; time.sleep(3); print('first')")
            _wait_for(s.url, lambda p: p["busy"] == 1)
            queued = ex.submit(_post, s.url, "print('second')")
            _wait_for(s.url, lambda p: p["waiting"] == 1)
            refused = _post(s.url, "print('third')")
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "queue_full"
            streamed = _post(s.url, "print('fourth')", headers={"Accept": "application/x-ndjson"})
            assert streamed.status_code == 429 and streamed.headers["retry-after"] == "1"
            assert running.result().json()["stdout"] == "first\n"
            assert queued.result().json()["stdout"] == "second\n"
        metrics = httpx.get(s.url + "/metrics").text
        assert 'sandbox_runs_rejected_total{reason="QueueFullError"} 2.0' in metrics
    finally:
        s.stop()


def test_shutdown_finishes_short_runs_kills_long_ones_and_leaves_nothing(tmp_path):
    s = Server(tmp_path, "--slots", "2", "--grace", "3", "--no-mcp")
    try:
        _shutdown_checks(s)
    finally:
        s.stop()  # a failed check must not leave the server and its jails running


def _shutdown_checks(s: Server) -> None:
    server = psutil.Process(s.proc.pid)
    sid = httpx.post(s.url + "/v1/sessions", json={}, headers=AUTH, timeout=60).json()["session_id"]
    in_session = f"{s.url}/v1/sessions/{sid}/execute"
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        short = ex.submit(_post, s.url, "import time; time.sleep(1.5); print('finished')")
        long = ex.submit(_post, s.url, "import time; print('started', flush=True); time.sleep(600)")
        session_long = ex.submit(httpx.post, in_session, json={"code": "import time; time.sleep(600)"}, headers=AUTH,
                                 timeout=120)
        _wait_for(s.url, lambda p: p["busy"] == 2)
        time.sleep(0.5)  # the session call is under way too
        family = server.children(recursive=True)
        assert any(p.name() == "nsjail" for p in family)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert short.result().json()["stdout"] == "finished\n"   # within the grace period: it finishes
        killed = long.result()                                    # after it: killed, and told so
        assert killed.status_code == 200 and killed.json()["outcome"] == "sandbox_error", killed.text
        assert killed.json()["stdout"] == "started\n"                 # with what it had flushed (issue 21)
        assert killed.json()["error"]["type"] == "SandboxShutdown", killed.text
        in_session_killed = session_long.result()                 # a session's call likewise
        assert in_session_killed.status_code == 200, in_session_killed.text
        assert in_session_killed.json()["outcome"] == "sandbox_error", in_session_killed.text
        assert in_session_killed.json()["error"]["type"] == "SandboxShutdown", in_session_killed.text
        code = s.proc.wait(60)
        elapsed = time.monotonic() - t0
    assert code in (0, -signal.SIGTERM), s.output()
    assert elapsed < 60
    _, alive = psutil.wait_procs(family, timeout=10)
    assert alive == [], [(p.pid, p.name()) for p in alive]
    out = s.output()
    assert "Traceback" not in out and "killing 2 run(s) still in flight" in out, out
