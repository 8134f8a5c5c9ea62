"""deploy/Containerfile built and run with Debian's podman: `sandbox doctor` passes inside the container
with the documented least privilege, and the container serves a run.

What this machine needs beyond the recipe, and why (each is said in docs/operations.md):
- the base image: no registry is reachable from the test machines, so the base is Debian 12 made with
  debootstrap from the apt mirror (cached in /var/cache/sandbox-deploy) and `podman import`ed;
- runc, not crun: crun refuses a cgroup v1 host whose v2 mount has a controller ("hybrid");
- ulimits no higher than the host's hard ones (the machine's root lacks CAP_SYS_RESOURCE);
- the host's CA bundle and pip.conf mounted into the build (an intercepting proxy signs PyPI).
The Makefile installs podman, runc and debootstrap (`make deploy-deps`).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BASE = "localhost/sandbox-deploy-base:bookworm"
TAG = "localhost/sandbox-deploy-test:latest"
CACHE = Path("/var/cache/sandbox-deploy")
KEY = "container-key-0123456789abcd"
PODMAN = ["podman", "--runtime", "runc"]


def _ulimits() -> list[str]:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


PRIVILEGE = ["--cap-drop=all",
             "--cap-add=SYS_ADMIN,SETUID,SETGID,SETPCAP,SYS_CHROOT,NET_ADMIN,KILL,CHOWN,FOWNER,DAC_OVERRIDE,MKNOD,SYS_RESOURCE",
             "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
             "--security-opt", "unmask=/proc/*", "--cgroupns=private", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"]


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _base_image() -> None:
    if _run(["podman", "image", "exists", BASE], 60).returncode == 0:
        return
    rootfs = CACHE / "rootfs"
    if not (rootfs / "usr/bin/python3").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.mkdir(parents=True)
        p = _run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,libseccomp2,libstdc++6,ca-certificates",
                  "bookworm", str(rootfs), "http://deb.debian.org/debian"], 1800)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    p = subprocess.run(["podman", "import", "-", BASE], stdin=tar.stdout, capture_output=True, text=True, timeout=600)
    tar.wait()
    assert p.returncode == 0, p.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_container_builds_passes_doctor_and_serves_a_run(tmp_path):
    _base_image()
    mounts = [a for f in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf") if os.path.exists(f)
              for a in ("-v", f"{f}:{f}:ro")]
    p = _run([*PODMAN, "build", "--format", "docker", *_ulimits(), *mounts, "--build-arg", f"BASE={BASE}",
              "-f", str(ROOT / "deploy/Containerfile"), "-t", TAG, str(ROOT)], 3000)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    inspect = json.loads(_run(["podman", "inspect", TAG], 60).stdout)[0]
    assert inspect["Healthcheck"]["Test"] == ["CMD", "sandbox", "doctor"]

    # doctor's verdict inside the container, with exactly the documented privileges
    p = _run([*PODMAN, "run", "--rm", *_ulimits(), *PRIVILEGE, "--entrypoint", "sandbox", TAG, "doctor"], 300)
    assert p.returncode == 0 and "all checks passed" in p.stdout, p.stdout + p.stderr

    # and without them it refuses, saying why (no silent unsandboxed run)
    p = _run([*PODMAN, "run", "--rm", *_ulimits(), "--entrypoint", "sandbox", TAG, "doctor"], 300)
    assert p.returncode != 0 and "FAIL" in p.stdout, p.stdout + p.stderr

    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    name = f"sandbox-deploy-test-{os.getpid()}"
    port = _free_port()
    p = _run([*PODMAN, "run", "-d", "--name", name, *_ulimits(), *PRIVILEGE, "-v", f"{keys}:/run/secrets/sandbox-keys:ro",
              "-p", f"127.0.0.1:{port}:8080", TAG, *inspect["Config"]["Cmd"], "--slots", "1"], 300)
    assert p.returncode == 0, p.stderr
    try:
        deadline = time.monotonic() + 300
        while "serving on" not in (logs := _run(["podman", "logs", name], 60)).stdout + logs.stderr:
            assert time.monotonic() < deadline, logs.stdout[-3000:] + logs.stderr[-3000:]
            time.sleep(1)
        while True:  # the published port may answer a moment after the server inside
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/execute", headers={"Authorization": f"Bearer {KEY}"},
                               json={"code": "import numpy as np; print(np.arange(6).sum())"}, timeout=120)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(1)
        assert r.status_code == 200 and r.json()["stdout"] == "15\n", r.text
        assert httpx.post(f"http://127.0.0.1:{port}/v1/execute", json={"code": "1"}, timeout=60).status_code == 401
        stopped = _run(["podman", "stop", "-t", "30", name], 120)
        assert stopped.returncode == 0
        logs = _run(["podman", "logs", name], 60)
        assert KEY not in logs.stdout + logs.stderr
        assert re.search(r'"event": "request".*"route": "/v1/execute"', logs.stdout + logs.stderr)
    finally:
        _run(["podman", "rm", "-f", name], 120)
