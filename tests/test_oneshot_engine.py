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
CASES = {
    "print": (["-c", "import sys; print('out'); print('err', file=sys.stderr); print('é' * 3)"], {}),
    "traceback": (["error.py"], {"error.py": ERROR}),
    "figure-and-out": (["plot.py", "--out", "OUT"], {"plot.py": PLOT}),
    "stdin": (["-c", "print(repr(input()))"], {}),
    "input-file": (["-c", "print(open('data.csv').read().upper(), end='')", "--file", "sales.csv=data.csv"],
                   {"sales.csv": "a,b\n1,2\n"}),
    "exit-code": (["-c", "import sys; print('bye'); sys.exit(4)"], {}),
    "timeout": (["-c", "import time; print('start', flush=True); time.sleep(5)", "--timeout", "1"], {}),
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
        doc = sandbox("run", *argv, "--json", *extra, env={"SANDBOX_SOCKET": str(engine.path)}, cwd=work)
        # the engine path went to the engine, the one-shot path did not
        assert engine.executions() - before == (2 if path == "engine" else 0), engine.output()[-2000:]
        out = work / "out"
        written = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} \
            if out.exists() else {}
        results[path] = (text.returncode, text.stdout, text.stderr.replace(str(work).encode(), b"WORK"),
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
