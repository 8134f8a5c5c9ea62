"""The `sandbox` command, run as a user would: a subprocess of the installed entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sandbox(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sandbox", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_run_script_with_inputs_writes_chart_and_files(tmp_path):
    out = tmp_path / "results"
    p = sandbox("run", str(ROOT / "examples/analysis.py"), "--file", str(ROOT / "examples/sales.csv"),
                "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "total sales: 1004" in p.stdout
    png = (out / "figure_1.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert (out / "monthly_totals.csv").read_text().splitlines()[0] == "month,total"


def test_json_document_and_exit_status():
    p = sandbox("run", "-c", "print(2**100)", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["outcome"] == "ok" and doc["stdout"] == f"{2**100}\n"
    assert set(doc) == {"outcome", "stdout", "stderr", "stdout_truncated", "stderr_truncated", "error",
                        "exit_code", "images", "files", "usage", "outputs", "outputs_dropped"}


def test_exit_status_per_outcome():
    err = sandbox("run", "-c", "1/0")
    assert err.returncode == 1
    assert "ZeroDivisionError" in err.stderr and "zygote" not in err.stderr
    timeout = sandbox("run", "-c", "import time; time.sleep(10)", "--timeout", "1")
    assert timeout.returncode == 3 and "timeout" in timeout.stderr


def test_usage_errors_exit_2_without_a_traceback(tmp_path):
    for args in (["run"], ["run", "-c", "1", str(tmp_path / "x.py")], ["run", "-c", "1", "--file", "/nonexistent"],
                 ["run", "-c", "1", "--file", f"{tmp_path}/a=../escape"], ["run", "-c", "1", "--timeout", "-1"]):
        if args[-1] == f"{tmp_path}/a=../escape":
            (tmp_path / "a").write_text("x")
        p = sandbox(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert "Traceback" not in p.stderr, (args, p.stderr)


def test_doctor_reports_every_check():
    p = sandbox("doctor")
    assert p.returncode == 0, p.stdout
    for name in ("privileges", "user namespaces", "cgroups", "seccomp", "nsjail", "image"):
        assert f"OK    {name}" in p.stdout


def test_image_build_is_a_no_op_when_up_to_date():
    p = sandbox("image", "build")
    assert p.returncode == 0, p.stderr
    assert "up to date" in p.stderr
    info = json.loads(sandbox("image", "info").stdout)
    assert info["packages"]["numpy"] and info["python_version"].startswith("3.")
