"""deploy/: the systemd unit (written by `sandbox install-service`, checked by `systemd-analyze verify`)
and the container recipe (its build steps against this checkout, its entry point run for real)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sandbox.cli import parser
from sandbox.server.serve import settings_from

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SANDBOX = str(Path(sys.executable).with_name("sandbox"))
KEY = "deploy-key-0123456789abcdef"
NSJAIL_BREAKERS = ("ProtectControlGroups", "ProtectKernelTunables", "ProtectHostname", "RestrictNamespaces",
                   "SystemCallFilter", "CapabilityBoundingSet", "PrivateDevices", "PrivateUsers", "DynamicUser",
                   "MemoryDenyWriteExecute")


def _unit(tmp_path: Path, *args: str) -> Path:
    p = subprocess.run([sys.executable, "-m", "sandbox", "install-service", "--dest", str(tmp_path),
                        "--api-key-file", str(tmp_path / "keys.txt"), *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "systemctl daemon-reload" in p.stdout
    return tmp_path / "sandbox.service"


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    unit = _unit(tmp_path, "--serve-arg=--slots=2")
    p = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr
    d = _directives(unit.read_text())
    # the engine's cgroups in the unit's delegated subtree (sandbox/host/cgroups.parent_dir)
    assert "SANDBOX_CGROUP_PARENT=self" in d["Environment"], d["Environment"]
    assert d["Delegate"] == ["yes"] and d["Restart"] == ["on-failure"] and d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["RestartPreventExitStatus"] == ["2 3"] and d["ExecStartPre"] == [f"{SANDBOX} doctor"]
    assert not set(NSJAIL_BREAKERS) & set(d), set(NSJAIL_BREAKERS) & set(d)
    # ExecStart is this installation's sandbox, with arguments `sandbox serve` accepts and starts with
    cmd = shlex.split(d["ExecStart"][0])
    assert cmd[0] == SANDBOX and os.access(cmd[0], os.X_OK) and cmd[1] == "serve"
    (tmp_path / "keys.txt").write_text(KEY + "\n")
    settings = settings_from(parser().parse_args(cmd[1:]))
    assert settings.slots == 2 and settings.api_keys == (KEY,) and settings.host == "127.0.0.1"
    # a typo is caught: the check is real
    unit.write_text(unit.read_text().replace("Delegate=yes", "Delegte=yes"))
    p = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120)
    assert "Unknown key" in p.stderr


def test_install_service_never_replaces_a_different_unit_without_force(tmp_path):
    unit = _unit(tmp_path)
    unit.write_text("# the operator's own\n")
    p = subprocess.run([sys.executable, "-m", "sandbox", "install-service", "--dest", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--force" in p.stderr and unit.read_text() == "# the operator's own\n"


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", text)
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_the_container_recipe_matches_this_checkout():
    steps = _instructions((DEPLOY / "Containerfile").read_text())
    kinds = [k for k, _ in steps]
    assert kinds[0] == "ARG" and kinds[1] == "FROM" and "HEALTHCHECK" in kinds and "ENTRYPOINT" in kinds
    for kind, arg in steps:
        if kind == "COPY":
            *sources, _dest = arg.split()
            assert all((ROOT / s).exists() for s in sources), arg
    apt = next(a for k, a in steps if k == "RUN" and "apt-get install" in a)
    makefile_debs = re.search(r"^DEBS\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert all(deb in apt for deb in makefile_debs), (makefile_debs, apt)  # the host side's packages, as make installs
    pip = next(a for k, a in steps if k == "RUN" and "pip install" in a)
    extra = re.search(r"\.\[(\w+)\]", pip).group(1)
    assert f"\n{extra} = [" in (ROOT / "pyproject.toml").read_text()
    assert any(k == "RUN" and a.strip() == "sandbox image build" for k, a in steps)
    health = next(a for k, a in steps if k == "HEALTHCHECK")
    assert health.endswith('CMD ["sandbox", "doctor"]')
    # the default command is one `sandbox serve` accepts (plain HTTP in the container said explicitly)
    cmd = eval(next(a for k, a in steps if k == "CMD"))  # a JSON array
    args = parser().parse_args(["serve", *cmd])
    assert args.insecure_http and args.host == "0.0.0.0" and args.api_key_file == "/run/secrets/sandbox-keys"
    p = subprocess.run(["sh", "-n", str(DEPLOY / "container-entrypoint.sh")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_the_entrypoint_runs_doctor_then_serves(tmp_path):
    """The container's entry point, run for real on this host (outside a container): doctor, then serve."""
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin"}
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(DEPLOY / "container-entrypoint.sh"), "--port", "0", "--slots", "1", "--no-mcp",
                                 "--api-key-file", str(keys)], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        while not (m := re.search(r"serving on (http://\S+) ", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert "all checks passed" in log.read_text()  # doctor ran first
        r = httpx.post(m.group(1) + "/v1/execute", json={"code": "print('from the entry point')"},
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        assert r.json()["stdout"] == "from the entry point\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
