"""`sandbox run` on a warm engine: a real `sandbox serve --unix-socket` started here, `sandbox run` as a
subprocess pointed at it with SANDBOX_SOCKET, its output compared byte for byte with the one-shot path's
(`--no-engine`), and the socket's access control: mode and owner on the client side, SO_PEERCRED on the
server side, keys on TCP only."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from sandbox.remote import RemoteSandbox

ROOT = Path(__file__).resolve().parent.parent
KEY = "oneshot-key-5d1e9a7c3b2f4860"
NOBODY = 65534


def sandbox(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("SANDBOX_SOCKET", "SANDBOX_URL")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "sandbox", *args], capture_output=True, cwd=cwd, env=full,
                          timeout=300)


class UnixServer:
    """`sandbox serve --unix-socket PATH ...`; ready once it prints its serving line."""

    def __init__(self, path: Path, log: Path, *args: str) -> None:
        self.path, self.log_path = path, log
        self.log = open(log, "w")
        env = {k: v for k, v in os.environ.items() if k != "SANDBOX_API_KEYS"}
        self.proc = subprocess.Popen([sys.executable, "-m", "sandbox", "serve", "--unix-socket", str(path), "--slots", "1",
                                      "--no-mcp", *args], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 180
        while "serving on" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def executions(self) -> int:
        return self.output().count("\"POST /v1/execute HTTP/1.1\"")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            self.log.close()


@pytest.fixture(scope="module")
def sock_dir():
    """A directory under /tmp (not pytest's 0700 tree) that another uid may traverse but not write."""
    d = Path(tempfile.mkdtemp(prefix="sandbox-oneshot-", dir="/tmp"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def engine(sock_dir):
    """One engine on a Unix socket and on a loopback port, with a key configured (for TCP only)."""
    keys = sock_dir / "keys"
    keys.write_text(KEY + "\n")
    s = UnixServer(sock_dir / "engine.sock", sock_dir / "server.log", "--port", "0", "--api-key-file", str(keys))
    yield s
    s.stop()


def _strip_timing(doc: dict) -> dict:
    doc = dict(doc)
    doc["usage"] = {k: v for k, v in doc["usage"].items() if not k.endswith("_ms") and k != "peak_memory_bytes"}  # measurements
    return doc


PLOT = """import matplotlib
import matplotlib.pyplot as plt
plt.plot([1, 3, 2]); plt.title('t')
plt.show()
open('notes.txt', 'w').write('written\\n')
print('plotted')
"""
ERROR = """def f(x):
    return 1 / x

print('before')
f(0)
"""
FILES = """import os
os.makedirs('sub/deeper', exist_ok=True)
open('sub/deeper/a.txt', 'w').write('deep\\n')
open('data.bin', 'wb').write(bytes(range(256)) + open('bin.dat', 'rb').read())
print('files written')
"""
FIGS = """import matplotlib.pyplot as plt
for n in range(2):
    plt.figure(); plt.bar(['a', 'b'], [n, n + 1]); plt.title(f'fig {n}')
plt.show()
"""
CASES = {
    "print": (["-c", "import sys; print('out'); print('err', file=sys.stderr); print('é' * 3)"], {}),
    "traceback": (["error.py"], {"error.py": ERROR}),
    "figure-and-out": (["plot.py", "--out", "OUT"], {"plot.py": PLOT}),
    "stdin": (["-c", "print(repr(input()))"], {}),
    "input-file": (["-c", "print(open('data.csv').read().upper(), end='')", "--file", "sales.csv=data.csv"],
                   {"sales.csv": "a,b\n1,2\n"}),
    "exit-code": (["-c", "import sys; print('bye'); sys.exit(4)"], {}),
    "timeout": (["-c", "import time; print('start', flush=True); time.sleep(5)", "--timeout", "1"], {}),
    # the forms the warm path reads itself (warmrun.py), each against the one-shot path's bytes
    "non-utf8-bytes": (["-c", "import sys; sys.stdout.buffer.write(b'a\\xffb\\xc3\\n'); "
                              "sys.stderr.buffer.write(b'\\xfe\\x00z\\n')"], {}),
    "large-output": (["-c", "import sys; print('x' * 600_000); print('y' * 300_000, file=sys.stderr)"], {}),
    "over-the-cap": (["-c", "print('z' * 5_000_000)"], {}),
    "files-json": (["files.py", "--json", "--out", "OUT", "--file", "bin.dat"], {"files.py": FILES, "bin.dat": "\x00\x01"}),
    "two-figures-out": (["--out=OUT", "--image", "default", "figs.py"], {"figs.py": FIGS}),
    "exit-message": (["-c", "import sys; sys.stderr.write('warn\\n'); sys.exit('fatal: no input')"], {}),
    "expression-output": (["-c", "from IPython.display import display\ndisplay({'a': 1})\n41 + 1", "--out", "OUT"], {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_output_as_the_one_shot_path(engine, tmp_path, case):
    args, files = CASES[case]
    results = {}
    for path, extra in (("engine", []), ("one-shot", ["--no-engine"])):
        work = tmp_path / path
        work.mkdir()
        for name, text in files.items():
            (work / name).write_text(text)
        argv = [a.replace("OUT", str(work / "out")) for a in args]
        before = engine.executions()
        text = sandbox("run", *argv, *extra, env={"SANDBOX_SOCKET": str(engine.path)}, cwd=work)
        doc = sandbox("run", *argv, *([] if "--json" in argv else ["--json"]), *extra,
                      env={"SANDBOX_SOCKET": str(engine.path)}, cwd=work)
        # the engine path went to the engine, the one-shot path did not
        assert engine.executions() - before == (2 if path == "engine" else 0), engine.output()[-2000:]
        out = work / "out"
        written = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} \
            if out.exists() else {}
        stdout = _strip_timing(json.loads(text.stdout)) if "--json" in argv else text.stdout   # measurements differ
        results[path] = (text.returncode, stdout, text.stderr.replace(str(work).encode(), b"WORK"),
                         doc.returncode, _strip_timing(json.loads(doc.stdout)), written)
    assert results["engine"] == results["one-shot"]
    code, stdout, stderr, *_ = results["engine"]
    assert b"sandbox/" not in stderr   # no frame of ours in what the program's traceback shows
    if case == "figure-and-out":
        assert {"figure_1.png", "notes.txt"} <= set(results["engine"][5])
    if case == "traceback":
        assert code == 1 and b'File "error.py", line 2, in f' in stderr and b"ZeroDivisionError" in stderr
    if case == "stdin":
        assert code == 1 and b"EOFError" in stderr
    if case == "timeout":
        assert code == 3 and stdout == b"start\n" and b"outcome: timeout" in stderr


def test_keys_apply_on_tcp_but_the_socket_needs_none(engine):
    url = re.search(r"(http://127\.0\.0\.1:\d+) ", engine.output()).group(1)
    assert httpx.post(url + "/v1/execute", json={"code": "print(1)"}, timeout=60).status_code == 401
    ok = httpx.post(url + "/v1/execute", json={"code": "print(1)"}, headers={"Authorization": f"Bearer {KEY}"},
                    timeout=60)
    assert ok.json()["stdout"] == "1\n"
    with RemoteSandbox(unix_socket=str(engine.path)) as sb:
        assert sb.run("print(2)").stdout == "2\n"
    st = engine.path.lstat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()


# As another uid: connect to the socket, send a request, print what comes back (or the error).
_AS_OTHER = r"""
import os, socket, sys
uid = int(sys.argv[2])
if uid != os.geteuid():
    os.setgid(uid); os.setgroups([]); os.setuid(uid)
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
try:
    s.connect(sys.argv[1])
    body = b'{"code": "print(40 + 2)"}'
    s.sendall(b"POST /v1/execute HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    print(repr(data[:12]), b'"stdout":"42\\n"' in data.replace(b" ", b""))
except OSError as exc:
    print("error", type(exc).__name__)
"""


def test_another_uid_is_refused_by_the_peer_check(engine):
    """The socket made world-writable here, so only the server's SO_PEERCRED check stands between
    another uid and the engine: the request must get no answer. The same script as our own uid (the
    control) gets its result, so the refusal is the peer check's."""
    engine.path.chmod(0o666)
    try:
        def as_uid(uid: int) -> str:
            return subprocess.run([sys.executable, "-I", "-c", _AS_OTHER, str(engine.path), str(uid)],
                                  capture_output=True, text=True, timeout=60).stdout.strip()

        assert as_uid(os.geteuid()) == "b'HTTP/1.1 200' True"
        other = as_uid(NOBODY)
        assert other in ("b'' False", "error ConnectionResetError", "error BrokenPipeError"), other
        assert f"from uid {NOBODY}" in engine.output()
    finally:
        engine.path.chmod(0o600)


def test_a_socket_nobody_should_trust_is_refused_not_used(tmp_path):
    code = ["run", "-c", "print('ran')"]
    path = tmp_path / "engine.sock"
    # Nothing there: the one-shot path.
    p = sandbox(*code, env={"SANDBOX_SOCKET": str(path)})
    assert (p.returncode, p.stdout) == (0, b"ran\n"), p.stderr
    # A socket of ours with mode 0666: refused with a message, and --no-engine gets past it.
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen()
    try:
        path.chmod(0o666)
        p = sandbox(*code, env={"SANDBOX_SOCKET": str(path)})
        assert p.returncode == 3 and b"has mode 0666, not 0600" in p.stderr and b"--no-engine" in p.stderr
        assert p.stdout == b"" and b"Traceback" not in p.stderr
        p = sandbox(*code, "--no-engine", env={"SANDBOX_SOCKET": str(path)})
        assert (p.returncode, p.stdout) == (0, b"ran\n")
        # Owned by another uid.
        path.chmod(0o600)
        os.chown(path, NOBODY, -1)
        p = sandbox(*code, env={"SANDBOX_SOCKET": str(path)})
        assert p.returncode == 3 and f"owned by uid {NOBODY}".encode() in p.stderr
        os.chown(path, os.geteuid(), -1)
    finally:
        live.close()
    # A stale socket (nobody listens): the one-shot path.
    p = sandbox(*code, env={"SANDBOX_SOCKET": str(path)})
    assert (p.returncode, p.stdout) == (0, b"ran\n"), p.stderr
    # Not a socket.
    path.unlink()
    path.write_text("x")
    p = sandbox(*code, env={"SANDBOX_SOCKET": str(path)})
    assert p.returncode == 3 and b"is not a socket" in p.stderr


def test_serve_refuses_paths_another_user_could_swap(tmp_path, engine):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (tmp_path / "file").write_text("x")
    for path, why in ((shared / "e.sock", "writable by others"), (tmp_path / "file", "not a socket"),
                      (engine.path, "already listening")):
        p = sandbox("serve", "--unix-socket", str(path), "--no-mcp")
        assert p.returncode == 2 and why.encode() in p.stderr, (path, p.stderr)
        assert b"Traceback" not in p.stderr
    assert (tmp_path / "file").read_text() == "x" and engine.path.is_socket()


def test_unix_only_server_replaces_a_stale_socket_and_removes_its_own(sock_dir):
    path = sock_dir / "only.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()   # a socket file nobody listens on
    s = UnixServer(path, sock_dir / "only.log")
    try:
        assert "serving on unix:" in s.output() and "http://" not in s.output()  # no TCP unless asked
        p = sandbox("run", "-c", "print(6 * 7)", env={"SANDBOX_SOCKET": str(path)})
        assert (p.returncode, p.stdout) == (0, b"42\n") and s.executions() == 1
    finally:
        assert s.stop() in (0, -signal.SIGTERM)
    assert not path.exists()


def test_the_warm_path_imports_nothing_heavy(engine):
    """`sandbox run -c` on a warm engine: no http.client, no dataclasses (results), no argparse, no
    engine module: its start-up is the interpreter's, json's and socket's (docs/performance.md)."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "sandbox", "run", "-c", "print(5)"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "SANDBOX_SOCKET": str(engine.path)})
    assert p.returncode == 0 and p.stdout == "5\n", p.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    assert "sandbox.warmrun" in imported and "sandbox.engine_socket" in imported
    heavy = {"http.client", "dataclasses", "argparse", "sandbox.results", "sandbox.remote", "sandbox.client",
             "sandbox.limits", "typing", "email.parser", "ssl"}
    assert not heavy & imported, heavy & imported


# --- a hostile server on the socket: the warm path checks what it sends as the engine checks inputs ----------

def _result_doc(names=(), image_names=(), **extra) -> dict:
    import base64
    data = base64.b64encode(b"x").decode()
    doc = {"outcome": "ok", "stdout": "hi\n", "stderr": "", "stdout_truncated": False, "stderr_truncated": False,
           "error": None, "exit_code": 0,
           "images": [{"name": n, "mime_type": "image/png", "width": 1, "height": 1, "data_base64": data, "chart": None}
                      for n in image_names],
           "files": [{"path": n, "size": 1, "mime_type": "text/plain", "data_base64": data} for n in names],
           "usage": {"wall_ms": 1, "cpu_ms": 1, "peak_memory_bytes": 0}}
    doc.update(extra)
    return doc


class _Hostile:
    """A server on a Unix socket (ours: our uid, mode 0600) that answers every request with `answer`."""

    def __init__(self, path: Path) -> None:
        import http.server
        import socketserver
        import threading

        outer = self
        self.answer: tuple[int, bytes] = (200, b"{}")
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests += 1
                status, body = outer.answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        path.chmod(0o600)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def hostile(tmp_path):
    d = Path(tempfile.mkdtemp(prefix="sandbox-hostile-", dir="/tmp"))
    server = _Hostile(d / "engine.sock")
    server.path = d / "engine.sock"
    yield server
    server.close()
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("name", ["../escaped.txt", "/tmp/abs.txt", "a/../../b", "a\\..\\b", "nul\0.txt", "bell\a"])
@pytest.mark.parametrize("where", ["files", "images"])
def test_names_from_the_engine_are_checked_before_anything_is_written(hostile, tmp_path, name, where):
    doc = _result_doc(**{"names" if where == "files" else "image_names": [name, "fine.txt"]})
    hostile.answer = (200, json.dumps(doc).encode())
    out = tmp_path / "deep" / "out"
    for extra in ([], ["--json"]):
        p = sandbox("run", "--out", str(out), "-c", "print(1)", *extra, env={"SANDBOX_SOCKET": str(hostile.path)})
        assert p.returncode == 2 and b"from the server" in p.stderr and b"Traceback" not in p.stderr, p.stderr
        assert p.stdout == b""   # nothing printed either: the check comes first, as on the full path
    assert hostile.requests == 2
    assert not (tmp_path / "deep").exists() and not (tmp_path / "escaped.txt").exists()


def test_good_names_from_the_engine_are_written(hostile, tmp_path):
    hostile.answer = (200, json.dumps(_result_doc(names=["sub/a.txt"], image_names=["figure_1.png"])).encode())
    out = tmp_path / "out"
    p = sandbox("run", "--out", str(out), "-c", "print(1)", env={"SANDBOX_SOCKET": str(hostile.path)})
    assert p.returncode == 0 and p.stdout == b"hi\n", p.stderr
    assert (out / "sub/a.txt").read_bytes() == b"x" and (out / "figure_1.png").read_bytes() == b"x"
    assert f"wrote 2 file(s) to {out}/: figure_1.png, a.txt".encode() in p.stderr


@pytest.mark.parametrize("answer, code, message", [
    ((429, b'{"error": {"type": "queue_full", "message": "every slot is busy"}}'), 3, b"every slot is busy"),
    ((422, b'{"error": {"type": "invalid_input", "message": "bad file name"}}'), 2, b"bad file name"),
    ((500, b"<html>oops</html>"), 3, b"answered 500 with a body that is not JSON"),
    ((200, b"not json"), 3, b"answered 200 with a body that is not JSON"),
    ((200, b'{"outcome": "ok"}'), 3, b"answered with a malformed result"),
    ((200, json.dumps(_result_doc(outcome="exploded")).encode()), 3, b"answered with a malformed result"),
])
def test_error_answers_on_the_warm_path(hostile, answer, code, message):
    hostile.answer = answer
    p = sandbox("run", "-c", "print(1)", env={"SANDBOX_SOCKET": str(hostile.path)})
    assert p.returncode == code and message in p.stderr and b"Traceback" not in p.stderr, p.stderr
    assert hostile.requests == 1   # sent once, never again on the one-shot path


def test_the_normalized_document_is_from_dict_to_dict():
    """warmrun._normalized is Result.from_dict(d).to_dict() without the dataclasses, on odd documents too."""
    from sandbox.results import Result
    from sandbox.warmrun import _normalized

    docs = [
        _result_doc(),
        _result_doc(names=["a.txt"], image_names=["figure_1.png"], outputs=[], outputs_dropped="3", extra_key=1),
        _result_doc(error={"type": "ValueError", "message": "m", "line": 2, "traceback": "", "x": 1},
                    outcome="error", stdout_truncated=1, stderr_truncated=0),
        {**_result_doc(image_names=["f.png"]), "usage": {"wall_ms": 1.5, "cpu_ms": 2, "peak_memory_bytes": 3,
                                                          "packages_ms": 4}},
    ]
    docs[3]["images"][0]["chart"] = {"type": "bar"}
    docs[1]["images"][0]["chart"] = ["not", "a", "dict"]
    docs[1]["files"][0]["data_base64"] = "e A=\n="   # not canonical: decoded and encoded again, as from_dict does
    for doc in docs:
        assert _normalized(doc) == Result.from_dict(doc).to_dict()
        assert json.dumps(_normalized(doc)) == Result.from_dict(doc).to_json()


def test_forms_the_warm_path_leaves_to_the_full_parser(engine):
    """Options it does not read go to argparse with its messages; nothing reaches the engine twice."""
    env = {"SANDBOX_SOCKET": str(engine.path)}
    before = engine.executions()
    p = sandbox("run", "-c", "print(1)", "x.py", env=env)
    assert p.returncode == 2 and b"exactly one" in p.stderr
    p = sandbox("run", "--bogus", "-c", "print(1)", env=env)
    assert p.returncode == 2 and b"unrecognized arguments: --bogus" in p.stderr
    p = sandbox("run", "/nonexistent/x.py", env=env)
    assert p.returncode == 2 and b"cannot read /nonexistent/x.py" in p.stderr
    p = sandbox("run", "-c", "print(7)", "--file", "/nonexistent/in.csv", env=env)
    assert p.returncode == 2 and b"cannot read input file /nonexistent/in.csv" in p.stderr
    assert engine.executions() == before
    p = sandbox("run", "--timeout", "20", "-c", "print(8)", env=env)   # the full path, still on the engine
    assert (p.returncode, p.stdout) == (0, b"8\n") and engine.executions() == before + 1


# --- the per-user engine: sandbox engine start|stop|status, --idle-exit ---------------------------------------

def _status(env: dict) -> tuple[int, dict | None]:
    p = sandbox("engine", "status", "--json", env=env)
    return p.returncode, (json.loads(p.stdout) if p.returncode == 0 else None)


def test_engine_start_status_run_idle_exit_and_stop():
    d = Path(tempfile.mkdtemp(prefix="sandbox-engine-", dir="/tmp"))
    sock = d / "run" / "engine.sock"
    env = {"SANDBOX_SOCKET": str(sock)}
    try:
        p = sandbox("engine", "status", env=env)
        assert p.returncode == 3 and p.stdout.startswith(b"down: no engine")
        p = sandbox("engine", "stop", env=env)
        assert p.returncode == 0 and b"no engine is up" in p.stderr
        p = sandbox("engine", "start", "--idle-exit", "4", "--slots", "1", env=env)
        assert p.returncode == 0 and b"engine up on unix:" in p.stderr, p.stderr
        st = sock.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
        assert stat.S_IMODE((d / "run").stat().st_mode) == 0o700
        code, status = _status(env)
        assert code == 0 and status["slots"] == 1 and status["idle_exit_seconds"] == 4.0 and status["runs"] == 0
        pid = status["pid"]
        assert b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes()
        p = sandbox("engine", "start", env=env)   # already up: changes nothing
        assert p.returncode == 0 and f"already up on unix:{sock} (pid {pid})".encode() in p.stderr
        # a run longer than the idle time: in flight is not idle
        p = sandbox("run", "-c", "import time; time.sleep(6); print('slept')", env=env)
        assert (p.returncode, p.stdout) == (0, b"slept\n"), p.stderr
        code, status = _status(env)
        assert code == 0 and status["pid"] == pid and status["runs"] == 1 and status["idle_seconds"] < 4
        # idle: it ends by itself (the status calls below do not keep it up) and removes its socket
        deadline = time.monotonic() + 60
        while _status(env)[0] == 0:
            assert time.monotonic() < deadline, "the engine did not exit when idle"
            time.sleep(0.5)
        assert not sock.exists()
        assert "--idle-exit): stopping" in (d / "run" / "engine.log").read_text()
        # the next run takes the one-shot path
        p = sandbox("run", "-c", "print('one-shot')", env=env)
        assert (p.returncode, p.stdout) == (0, b"one-shot\n")
        # start again (never exits by itself: --idle-exit 0), then stop
        p = sandbox("engine", "start", "--idle-exit", "0", env=env)
        assert p.returncode == 0, p.stderr
        code, status = _status(env)
        assert code == 0 and status["idle_exit_seconds"] is None
        p = sandbox("engine", "stop", env=env)
        assert p.returncode == 0 and f"engine stopped (pid {status['pid']})".encode() in p.stderr
        assert not Path(f"/proc/{status['pid']}").exists() and not sock.exists()
        assert _status(env)[0] == 3
    finally:
        code, status = _status(env)
        if code == 0:
            os.kill(status["pid"], signal.SIGTERM)
        shutil.rmtree(d, ignore_errors=True)


def test_serve_refuses_a_bad_idle_exit(tmp_path):
    p = sandbox("serve", "--unix-socket", str(tmp_path / "e.sock"), "--idle-exit", "0", "--no-mcp")
    assert p.returncode == 2 and b"--idle-exit must be more than 0" in p.stderr


def test_run_engine_auto_starts_the_per_user_engine_once():
    d = Path(tempfile.mkdtemp(prefix="sandbox-auto-", dir="/tmp"))
    env = {"SANDBOX_SOCKET": str(d / "engine.sock")}
    try:
        p = sandbox("run", "--engine", "auto", "-c", "print('first')", env=env)
        assert (p.returncode, p.stdout) == (0, b"first\n") and b"engine up on unix:" in p.stderr, p.stderr
        code, status = _status(env)
        assert code == 0 and status["runs"] == 1 and status["idle_exit_seconds"] == 900.0
        p = sandbox("run", "--engine=auto", "-c", "print('second')", env=env)
        assert (p.returncode, p.stdout, p.stderr) == (0, b"second\n", b"")
        code, again = _status(env)
        assert again["pid"] == status["pid"] and again["runs"] == 2
        p = sandbox("run", "-c", "print('default')", env=env)   # without --engine auto: uses the one up
        assert (p.returncode, p.stdout) == (0, b"default\n") and _status(env)[1]["runs"] == 3
    finally:
        sandbox("engine", "stop", env=env)
        shutil.rmtree(d, ignore_errors=True)


def test_run_without_engine_auto_never_starts_one():
    d = Path(tempfile.mkdtemp(prefix="sandbox-noauto-", dir="/tmp"))
    env = {"SANDBOX_SOCKET": str(d / "engine.sock")}
    try:
        p = sandbox("run", "-c", "print('one-shot')", env=env)
        assert (p.returncode, p.stdout) == (0, b"one-shot\n") and not (d / "engine.sock").exists()
        assert _status(env)[0] == 3
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_engine_start_refuses_a_directory_others_may_write(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    p = sandbox("engine", "start", env={"SANDBOX_SOCKET": str(shared / "engine.sock")})
    assert p.returncode == 3 and b"writable by others" in p.stderr and b"Traceback" not in p.stderr
    assert list(shared.iterdir()) == []   # no log, no socket
