"""RemoteSandbox and `sandbox run --url` against a real server: the same run() and Result as in-process,
and the same session() as Sandbox.session()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from sandbox import FileInfo, InvalidInputError, NoSuchFileError, Outcome, Result, SessionClosedError
from sandbox.remote import RemoteError, RemoteSandbox

from .conftest import KEY, OTHER_KEY


def test_run_returns_a_real_result(server):
    with RemoteSandbox(server.url, api_key=KEY) as sb:
        r = sb.run("import matplotlib.pyplot as plt, sys\nprint(open('a.bin', 'rb').read()[1], input())\n"
                   "plt.bar([1], [2]); plt.show()\nopen('o.txt', 'w').write('w')\nsys.exit(0)",
                   files={"a.bin": b"\x00\xff"}, stdin=b"line\n", timeout=20, limits={"memory_bytes": 512 << 20})
        assert isinstance(r, Result) and r.outcome is Outcome.OK and r.ok
        assert r.stdout == "255 line\n"
        assert r.images[0].data.startswith(b"\x89PNG") and r.images[0].width > 0
        assert r.files[0].path == "o.txt" and r.files[0].data == b"w"
        assert Result.from_dict(r.to_dict()) == r

        err = sb.run("x = 1\nraise KeyError('k')")
        assert err.outcome is Outcome.ERROR and err.error.type == "KeyError" and err.error.line == 2
        assert "numpy" in sb.image_info()["packages"]


def test_errors_map_to_the_engines_exceptions(server):
    with RemoteSandbox(server.url, api_key=KEY) as sb:
        with pytest.raises(InvalidInputError, match="escape|relative|\\.\\."):
            sb.run("print(1)", files={"../x": b""})
        with pytest.raises(InvalidInputError, match="unknown limits"):
            sb.run("print(1)", limits={"bogus": 1})
    with RemoteSandbox(server.url, api_key="wrong-key-0000000000000") as sb:
        with pytest.raises(RemoteError) as info:
            sb.run("print(1)")
        assert info.value.status == 401


def test_unreachable_server_is_unavailable():
    from sandbox import SandboxUnavailableError

    with RemoteSandbox("http://127.0.0.1:9", api_key=KEY) as sb, pytest.raises(SandboxUnavailableError):
        sb.run("print(1)")


def test_cli_run_url(server, tmp_path):
    env = {**os.environ, "SANDBOX_API_KEY": KEY}
    p = subprocess.run([sys.executable, "-m", "sandbox", "run", "--url", server.url, "-c",
                        "import matplotlib.pyplot as plt; plt.plot([1, 2]); plt.show(); print(7 * 6)",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "42\n"
    assert any(f.suffix == ".png" for f in (tmp_path / "out").iterdir())

    env["SANDBOX_URL"] = server.url
    p = subprocess.run([sys.executable, "-m", "sandbox", "run", "-c", "1/0", "--json"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 1 and json.loads(p.stdout)["error"]["type"] == "ZeroDivisionError"

    env["SANDBOX_API_KEY"] = "wrong-key-0000000000000"
    p = subprocess.run([sys.executable, "-m", "sandbox", "run", "-c", "print(1)"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 3 and "API key is not valid" in p.stderr and "Traceback" not in p.stderr


def test_threads_share_a_client_and_idle_connections_closed_by_the_server_are_replaced(server):
    import concurrent.futures
    import time

    with RemoteSandbox(server.url, api_key=KEY) as sb:
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            outs = list(ex.map(lambda i: sb.run(f"print({i} * 2)").stdout, range(8)))
        assert outs == [f"{i * 2}\n" for i in range(8)]
        time.sleep(6)  # past uvicorn's 5 s keep-alive: the server has closed the idle connections
        assert sb.run("print('again')").stdout == "again\n"


def test_live_output_callbacks(server):
    seen: list[tuple[str, str, float]] = []
    code = "import sys, time\nprint('a', flush=True)\nprint('b', file=sys.stderr, flush=True)\ntime.sleep(4)\nprint('c')"
    with RemoteSandbox(server.url, api_key=KEY) as sb:
        t0 = time.monotonic()
        r = sb.run(code, on_stdout=lambda t: seen.append(("out", t, time.monotonic())),
                   on_stderr=lambda t: seen.append(("err", t, time.monotonic())))
        done = time.monotonic()
        assert r.outcome is Outcome.OK and r.stdout == "a\nc\n" and r.stderr == "b\n"
        assert "".join(t for k, t, _ in seen if k == "out") == "a\nc\n"
        assert "".join(t for k, t, _ in seen if k == "err") == "b\n"
        assert done - seen[0][2] > 1.0 and seen[0][2] >= t0   # 'a' arrived while the program slept

        def broken(text: str) -> None:
            raise RuntimeError("a caller's bug")
        r = sb.run("print(1)\nprint(2)", on_stdout=broken)   # logged, called no more; the run still returns
        assert r.stdout == "1\n2\n"
        with pytest.raises(InvalidInputError):
            sb.run("print(1)", files={"../x": b""}, on_stdout=print)


def test_session_keeps_state_and_files(server):
    with RemoteSandbox(server.url, api_key=KEY) as sb:
        t0 = time.time()
        with sb.session(ttl=120) as s:
            assert len(s.id) >= 16 and s.ttl == 120 and t0 + 110 < s.expires_at < time.time() + 130
            assert not s.closed
            r = s.run("import pandas as pd\ndf = pd.read_csv('sales.csv')", files={"sales.csv": b"total\n3\n4\n"})
            assert r.outcome is Outcome.OK, r.error
            r = s.run("print(df.total.sum())\ndf.to_csv('copy.csv', index=False)")
            assert r.stdout == "7\n" and [f.path for f in r.files] == ["copy.csv"]
            s.write_file("notes.txt", "written remotely")
            s.write_file("raw.bin", bytes(range(256)))
            files = {f.path: f for f in s.files()}
            assert isinstance(files["copy.csv"], FileInfo) and files["copy.csv"].size == len(b"total\n3\n4\n")
            assert files["raw.bin"].size == 256 and {"sales.csv", "notes.txt"} <= set(files)
            assert s.read_file("raw.bin") == bytes(range(256))
            assert s.run("print(open('notes.txt').read())").stdout == "written remotely\n"
            s.delete_file("notes.txt")
            with pytest.raises(NoSuchFileError):
                s.read_file("notes.txt")
            with pytest.raises(NoSuchFileError):
                s.delete_file("notes.txt")
            with pytest.raises(FileNotFoundError):   # NoSuchFileError is one too
                s.read_file("never.txt")
            with pytest.raises(InvalidInputError):
                s.write_file("../out.txt", b"x")
            seen = []
            r = s.run("import time\nprint('a', flush=True)\ntime.sleep(2)\nprint(len(df))", on_stdout=seen.append)
            assert r.stdout == "a\n2\n" and "".join(seen) == "a\n2\n"
            again = sb.get_session(s.id)                      # the same session, found by id
            assert again.run("print(df.total.max())").stdout == "4\n"
        assert s.closed
        with pytest.raises(SessionClosedError):
            s.run("print(1)")
        with pytest.raises(SessionClosedError):
            sb.get_session(s.id)
        s.close()                                             # idempotent


def test_session_errors_map_to_the_engines_exceptions(server):
    with RemoteSandbox(server.url, api_key=KEY) as mine, RemoteSandbox(server.url, api_key=OTHER_KEY) as theirs:
        s = mine.session(ttl=60)
        try:
            with pytest.raises(SessionClosedError):           # another key's session: as if unknown
                theirs.get_session(s.id)
            with pytest.raises(InvalidInputError):
                mine.session(ttl=-1)
            with pytest.raises(InvalidInputError):
                mine.session(limits={"bogus": 1})
        finally:
            s.close()
        ended = mine.session(ttl=1)
        time.sleep(3)
        with pytest.raises(SessionClosedError):
            ended.run("print(1)")
        assert ended.closed and ended.close_reason


def test_env_and_fetch_travel_to_the_server(server):
    code = ("import os\nprint(os.environ['GREETING'], os.environ.get('OTHER'))\n"
            "open('/tmp/out.txt', 'w').write('from tmp')\nopen('/mnt/b', 'w').write('from mnt')")
    with RemoteSandbox(server.url, api_key=KEY) as sb:
        r = sb.run(code, env={"GREETING": "hello"}, fetch=["/tmp/out.txt", "/tmp/mnt/b", "/tmp/missing"])
        assert r.outcome is Outcome.OK and r.stdout == "hello None\n", r
        assert {f.path: f.data for f in r.files} == {"/tmp/out.txt": b"from tmp", "/tmp/mnt/b": b"from mnt"}
        streamed = []
        r = sb.run("import os\nprint(os.environ['GREETING'])", env={"GREETING": "live"}, on_stdout=streamed.append)
        assert r.stdout == "live\n" and "".join(streamed) == "live\n"
        assert sb.run("import os\nprint(os.environ.get('GREETING'))").stdout == "None\n"  # for that run only
        with pytest.raises(InvalidInputError, match="belongs to the sandbox"):
            sb.run("print(1)", env={"PATH": "/evil"})
        with pytest.raises(InvalidInputError, match="under /tmp/"):
            sb.run("print(1)", fetch=["/etc/passwd"])
        with pytest.raises(InvalidInputError, match="not one string"):
            sb.run("print(1)", fetch="/tmp/out.txt")


def test_env_and_fetch_in_a_remote_session(server):
    with RemoteSandbox(server.url, api_key=KEY) as sb, sb.session() as s:
        s.run("open('/tmp/kept.txt', 'w').write('one')")
        r = s.run("import os\nprint(os.environ['STAGE'])", env={"STAGE": "two"}, fetch=["/tmp/kept.txt"])
        assert r.outcome is Outcome.OK and r.stdout == "two\n"
        assert [(f.path, f.data) for f in r.files] == [("/tmp/kept.txt", b"one")]   # the session's /tmp
        assert s.run("import os\nprint(os.environ.get('STAGE'))").stdout == "None\n"
        with pytest.raises(InvalidInputError, match="belongs to the sandbox"):
            s.run("print(1)", env={"LD_PRELOAD": "x"})


def test_a_tmp_path_from_the_server_is_taken_only_when_fetched():
    # A hostile server's answer: a /tmp/ file the call did not ask for is refused, so `--out DIR`
    # never writes outside DIR; the same path asked for by `fetch` is the run's fetched file.
    import http.server
    import threading

    doc = Result.from_dict({"outcome": "ok", "stdout": "", "stderr": "", "stdout_truncated": False,
                            "stderr_truncated": False, "error": None, "exit_code": 0, "images": [],
                            "files": [], "usage": {"wall_ms": 1, "cpu_ms": 1, "peak_memory_bytes": 0}}).to_dict()
    doc["files"] = [{"path": "/tmp/x", "mime_type": "text/plain", "size": 1, "data_base64": "eA=="}]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with RemoteSandbox(f"http://127.0.0.1:{httpd.server_address[1]}", api_key=KEY) as sb:
            with pytest.raises(InvalidInputError, match="absolute"):
                sb.run("1")
            assert [f.path for f in sb.run("1", fetch=["/tmp/x"]).files] == ["/tmp/x"]
    finally:
        httpd.shutdown()
