"""`sandbox batch run --ray HEAD:PORT` against a real multi-process Ray cluster: a head started with
`ray start --head` and a second node with `ray start --address`, each its own process tree on
loopback, with Ray 2.60's token authentication on (the token in a file of the test's own, never
~/.ray/auth_token). The test stops both `ray start --block` processes itself (SIGTERM: each stops
what it started), never `ray stop` (which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox.batch.ray import WORKER_PORTS

RAY = str(Path(sys.executable).with_name("ray"))
NODE = ["--num-cpus", "1", "--object-store-memory", str(200 << 20), "--node-ip-address", "127.0.0.1"]


def _free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in WORKER_PORTS:
            return port


def _ports(*flags: str) -> list[str]:
    return [a for f in flags for a in (f, str(_free_port()))]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray-cluster")
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0",
           "HOME": str(tmp)}  # no ~/.ray/auth_token of the machine's user is read or written
    env.pop("RAY_AUTH_TOKEN", None)
    port = _free_port()
    assert port not in WORKER_PORTS  # a head port inside the worker range collides with workers
    agent = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
             "--runtime-env-agent-port")
    procs = []
    try:
        head = subprocess.Popen([RAY, "start", "--head", "--block", "--port", str(port), "--include-dashboard=false",
                                 *NODE, *_ports(*agent)], env=env, stdout=open(tmp / "head.log", "w"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(head)
        _wait_nodes(port, env, 1, head, tmp / "head.log")
        worker = subprocess.Popen([RAY, "start", "--block", "--address", f"127.0.0.1:{port}", *NODE, *_ports(*agent)],
                                  env=env, stdout=open(tmp / "worker.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        procs.append(worker)
        _wait_nodes(port, env, 2, worker, tmp / "worker.log")
        yield {"address": f"127.0.0.1:{port}", "env": env, "tmp": tmp, "procs": procs}
    finally:
        for p in reversed(procs):
            _stop(p)


def _wait_nodes(port: int, env: dict, n: int, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ray start exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        st = subprocess.run([RAY, "status", "--address", f"127.0.0.1:{port}"], env=env, capture_output=True,
                            text=True, timeout=120)
        active = st.stdout.split("Active:", 1)[1].split("Pending:", 1)[0] if "Active:" in st.stdout else ""
        if len(re.findall(r"node_", active)) >= n:
            return
        time.sleep(2)
    raise AssertionError(f"{n} Ray node(s) did not come up:\n{log.read_text()[-3000:]}")


def _items(path: Path, n: int = 8) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"item-{i}", "code": f"import time\ntime.sleep(0.3)\ndef f():\n    return {i}\n",
                                "tests": f"assert f() == {i}\n"}) + "\n")
    return path


def test_batch_runs_to_completion_on_a_two_node_cluster_with_token_auth(cluster):
    tmp = cluster["tmp"]
    out = tmp / "out.jsonl"
    p = subprocess.run([sys.executable, "-m", "sandbox", "batch", "run", str(_items(tmp / "in.jsonl")), "-o", str(out),
                        "--ray", cluster["address"], "--no-progress"], env=cluster["env"], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "2 node actor(s)" in p.stderr, p.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [f"item-{i}" for i in range(8)]
    assert all(r["status"] == "passed" for r in records)
    assert all(p.poll() is None for p in cluster["procs"])  # the cluster is still up: the batch stopped nothing


def test_without_the_token_a_short_message_says_what_to_set(cluster):
    env = {k: v for k, v in cluster["env"].items() if not k.startswith("RAY_AUTH")}
    p = subprocess.run([sys.executable, "-m", "sandbox", "batch", "run", str(_items(cluster["tmp"] / "in2.jsonl", 1)),
                        "-o", str(cluster["tmp"] / "out2.jsonl"), "--ray", cluster["address"], "--no-progress"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 3
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr[-3000:]  # not a warning a second while Ray retries
    assert "token" in lines[0] and "RAY_AUTH_TOKEN" in lines[0] and "ray get-auth-token" in lines[0]
