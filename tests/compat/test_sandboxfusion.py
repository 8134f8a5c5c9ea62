"""SandboxFusion's `/run_code`, driven with the `sandbox-fusion` client package against the real server."""

from __future__ import annotations

import base64
import warnings

import httpx
import pytest
from live_server import KEY
from sandbox_fusion import RunCodeRequest, RunCodeResponse, run_code

from sandbox import Outcome
from sandbox.compat import sandboxfusion as sf


def endpoint(server, key: str = KEY) -> str:
    return f"{server.url}/k/{key}"  # the client sends no auth header: the key travels in the path


def test_python_runs_and_answers_success(server):
    resp = run_code(RunCodeRequest(code="print(sum(range(10)))", language="python"), endpoint=endpoint(server),
                    max_attempts=1)
    assert resp.status.value == "Success" and resp.message == ""
    assert resp.run_result.status.value == "Finished" and resp.run_result.return_code == 0
    assert resp.run_result.stdout == "45\n" and resp.run_result.stderr == ""
    assert resp.run_result.execution_time > 0 and resp.compile_result is None


def test_stdin_files_and_fetch_files(server):
    code = ("import sys\nname = sys.stdin.read().strip()\ndata = open('in/data.txt').read()\n"
            "open('out.txt', 'w').write(name + ':' + data)\nprint('wrote')")
    req = RunCodeRequest(code=code, language="python", stdin="alice\n",
                         files={"in/data.txt": base64.b64encode(b"42").decode()},
                         fetch_files=["out.txt", "in/data.txt", "missing.txt"])
    resp = run_code(req, endpoint=endpoint(server), max_attempts=1)
    assert resp.status.value == "Success", resp
    assert base64.b64decode(resp.files["out.txt"]) == b"alice:42"
    assert base64.b64decode(resp.files["in/data.txt"]) == b"42"  # an unchanged input
    assert "missing.txt" not in resp.files


def test_exception_is_failed_with_the_traceback_in_stderr(server):
    resp = run_code(RunCodeRequest(code="print('x')\nraise ValueError('bad')", language="python"),
                    endpoint=endpoint(server), max_attempts=1)
    assert resp.status.value == "Failed"
    assert resp.run_result.status.value == "Finished" and resp.run_result.return_code == 1
    assert resp.run_result.stdout == "x\n"
    assert "Traceback" in resp.run_result.stderr and "ValueError: bad" in resp.run_result.stderr


def test_run_timeout_is_time_limit_exceeded(server):
    resp = run_code(RunCodeRequest(code="import time\nprint('a', flush=True)\ntime.sleep(30)", language="python",
                                   run_timeout=1), endpoint=endpoint(server), max_attempts=1)
    assert resp.status.value == "Failed"
    assert resp.run_result.status.value == "TimeLimitExceeded"
    assert resp.run_result.stdout == "a\n" and resp.run_result.return_code is None


def test_memory_limit_mb(server):
    # The 0.3.7 client's RunCodeRequest has no memory_limit_MB (newer servers take it): send the
    # body with httpx and parse the answer with the client's own RunCodeResponse.
    body = {"code": "x = bytearray(1 << 30)\nprint('never')", "language": "python", "memory_limit_MB": 256}
    raw = httpx.post(f"{endpoint(server)}/run_code", json=body, timeout=120)
    resp = RunCodeResponse(**raw.json())
    assert resp.status.value == "Failed" and resp.run_result.stdout == ""
    assert "memory limit" in resp.run_result.stderr


def test_other_languages_get_a_clear_error(server):
    with pytest.raises(Exception, match="not supported: this sandbox runs Python only"):
        run_code(RunCodeRequest(code="int main(){}", language="cpp"), endpoint=endpoint(server), max_attempts=1)


def test_auth(server):
    with pytest.raises(Exception, match="401"):
        run_code(RunCodeRequest(code="print(1)", language="python"), endpoint=server.url, max_attempts=1)
    with pytest.raises(Exception, match="401"):
        run_code(RunCodeRequest(code="print(1)", language="python"), endpoint=endpoint(server, "wrong-key-0123456789"),
                 max_attempts=1)
    raw = httpx.post(f"{server.url}/run_code", json={"code": "print(1)", "language": "python"},
                     headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert RunCodeResponse(**raw.json()).run_result.stdout == "1\n"  # the bearer header works at /run_code


@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_outcome_parses_with_the_clients_model(outcomes, outcome):
    code, result = outcomes[outcome]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resp = RunCodeResponse(**sf.to_sandboxfusion(result))
    expected = {Outcome.OK: "Success", Outcome.SANDBOX_ERROR: "SandboxError"}.get(outcome, "Failed")
    assert resp.status.value == expected
    limit = outcome in (Outcome.TIMEOUT, Outcome.CPU_LIMIT)
    assert (resp.run_result.status.value == "TimeLimitExceeded") == limit


def test_limits_may_tighten_the_policy_never_loosen_it(server):
    resp = run_code(RunCodeRequest(code="import time\ntime.sleep(45)", language="python", run_timeout=3600),
                    endpoint=endpoint(server), max_attempts=1)
    assert resp.run_result.status.value == "TimeLimitExceeded"
    assert resp.run_result.execution_time < 45  # the policy's 30 s ended it, not the 3600 asked for
    req, _ = sf.from_sandboxfusion({"code": "", "language": "python", "run_timeout": 3600, "memory_limit_MB": 1 << 20},
                                   max_timeout=30.0, max_memory_bytes=1 << 30)
    assert req.timeout == 30.0 and req.limits == {"memory_bytes": 1 << 30}


def test_absolute_paths_under_mnt_data_and_tmp(server):
    code = ("print(open('/mnt/data/in.txt').read(), open('/tmp/work/in.txt').read())\n"
            "open('/mnt/data/out.txt', 'w').write('d')\nopen('/tmp/out.txt', 'w').write('t')")
    req = RunCodeRequest(code=code, language="python",
                         files={"/mnt/data/in.txt": base64.b64encode(b"A").decode(),
                                "/tmp/work/in.txt": base64.b64encode(b"B").decode()},
                         fetch_files=["/mnt/data/out.txt", "/tmp/out.txt", "/mnt/data/in.txt", "/tmp/none"])
    resp = run_code(req, endpoint=endpoint(server), max_attempts=1)
    assert resp.status.value == "Success", resp
    assert resp.run_result.stdout == "A B\n"
    got = {k: base64.b64decode(v) for k, v in resp.files.items()}
    assert got == {"/mnt/data/out.txt": b"d", "/tmp/out.txt": b"t", "/mnt/data/in.txt": b"A"}
    with pytest.raises(Exception, match="outside the sandbox's places"):  # the client raises on a SandboxError
        run_code(RunCodeRequest(code="1", language="python", files={"/etc/x": "eA=="}),
                 endpoint=endpoint(server), max_attempts=1)


def test_any_directory_under_mnt_is_the_runs_own(server):
    # The code names /mnt/... itself (no rewriting): the jail's /mnt is the run's /tmp/mnt.
    code = ("import os\nprint(open('/mnt/in/x.txt').read())\nopen('/mnt/b', 'w').write('sauce')\n"
            "os.makedirs('/mnt/deep/er')\nopen(os.path.join('/mnt/deep/er', 'y'), 'w').write('y')\n"
            "open(os.path.join('/mnt/data', 'z.txt'), 'w').write('z')")
    req = RunCodeRequest(code=code, language="python", files={"/mnt/in/x.txt": base64.b64encode(b"input").decode()},
                         fetch_files=["/mnt/b", "/mnt/deep/er/y", "/mnt/data/z.txt", "/mnt/in/x.txt", "/mnt/none"])
    resp = run_code(req, endpoint=endpoint(server), max_attempts=1)
    assert resp.status.value == "Success", resp
    assert resp.run_result.stdout == "input\n"
    got = {k: base64.b64decode(v) for k, v in resp.files.items()}
    assert got == {"/mnt/b": b"sauce", "/mnt/deep/er/y": b"y", "/mnt/data/z.txt": b"z", "/mnt/in/x.txt": b"input"}
    # Nothing of it is left for the next run.
    resp = run_code(RunCodeRequest(code="import os; print(os.listdir('/mnt'))", language="python"),
                    endpoint=endpoint(server), max_attempts=1)
    assert resp.run_result.stdout == "['data']\n"


@pytest.mark.parametrize("path", ["/etc/passwd", "/usr/lib/x", "/mnt/../etc/x", "/mnt/a/../../etc/x", "/mnt/", "/tmp/../x"])
def test_system_paths_and_dotdot_are_refused(server, path):
    for field in ({"files": {path: "eA=="}}, {"fetch_files": [path]}):
        with pytest.raises(Exception, match="outside the sandbox's places|'..' component|has an empty"):
            run_code(RunCodeRequest(code="1", language="python", **field), endpoint=endpoint(server), max_attempts=1)


def test_language_pytest_runs_the_code_as_a_test_module(server):
    from sandbox.host.image import load

    passing = "def test_add():\n    assert 1 + 1 == 2\n"
    failing = "def test_add():\n    assert 1 + 1 == 3\n"
    ok = run_code(RunCodeRequest(code=passing, language="pytest"), endpoint=endpoint(server), max_attempts=1)
    bad = run_code(RunCodeRequest(code=failing, language="pytest"), endpoint=endpoint(server), max_attempts=1)
    assert bad.status.value == "Failed"
    if "pytest" in {k.lower() for k in load().manifest.get("packages", {})}:
        assert ok.status.value == "Success", ok
        assert "1 passed" in ok.run_result.stdout and "1 failed" in bad.run_result.stdout
    else:  # an image built before pytest was pinned in it says so
        assert ok.status.value == "Failed" and "pytest is not installed" in ok.run_result.stderr


def test_run_jupyter_cells_share_one_interpreter(server):
    from sandbox_fusion import RunJupyterRequest, run_jupyter

    before = set(server.app.state.sessions._open)
    req = RunJupyterRequest(cells=["a = 'hello'", "a", "print(a)", "assert False", "len(a)",
                                   "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()"])
    resp = run_jupyter(req, endpoint=endpoint(server), max_attempts=1)
    cells = resp.cells
    assert cells[0].stdout == "" and cells[1].display == [{"text/plain": "'hello'"}]
    assert cells[2].stdout == "hello\n" and cells[3].error[0]["ename"] == "AssertionError"
    assert cells[4].display == [{"text/plain": "5"}] and "image/png" in cells[5].display[0]
    assert resp.status.value == "Failed"   # a cell raised
    server.app.state.sessions.prune()
    assert set(server.app.state.sessions._open) <= before   # its session is closed at the end
