"""Issue #12: code that runs under plain Python runs the same in the sandbox.

Each test is a row of the issue's table (or a listed input type), through the real engine.
"""

from __future__ import annotations

import io
import json

import pytest

from sandbox import Outcome, Sandbox


@pytest.fixture(scope="module")
def sb():
    with Sandbox(slots=1) as s:
        yield s


def ok(r):
    assert r.outcome is Outcome.OK, (r.outcome, r.error, r.stderr[-3000:])
    return r


def test_sqlite_on_a_file_in_the_working_dir(sb):
    r = ok(sb.run("""
import sqlite3
con = sqlite3.connect("t.db")
con.execute("create table t (x integer, y text)")
con.executemany("insert into t values (?, ?)", [(1, "a"), (2, "b")])
con.commit()
other = sqlite3.connect("t.db")            # a second connection sees the committed rows
print(other.execute("select sum(x), group_concat(y) from t").fetchone())
with con:
    con.execute("insert into t values (3, 'c')")
print(other.execute("select count(*) from t").fetchone()[0])
"""))
    assert r.stdout == "(3, 'a,b')\n3\n"
    assert [f.path for f in r.files] == ["t.db"]
    assert r.files[0].data.startswith(b"SQLite format 3\x00")


def test_pandas_to_sql_and_read_sql(sb):
    r = ok(sb.run("""
import sqlite3
import pandas as pd
con = sqlite3.connect("results.db")
pd.DataFrame({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5]}).to_sql("x", con, index=False)
print(pd.read_sql("select a, b from x where a > 1", con).to_json(orient="records"))
"""))
    assert json.loads(r.stdout) == [{"a": 2, "b": 1.5}, {"a": 3, "b": 2.5}]


def test_sqlite_across_processes_with_locks(sb):
    # Two processes of one execution write one database file in turn: real POSIX locks. (Run at
    # the same time they fail about 1 in 20 with "disk I/O error": SQLite's hot-journal check asks
    # F_GETLK, which stays refused, see tests/security/README.md "File locks".)
    r = ok(sb.run("""
import multiprocessing as mp, sqlite3
def writer(n):
    con = sqlite3.connect("shared.db", timeout=10)
    for i in range(20):
        with con:
            con.execute("insert into t values (?)", (n * 100 + i,))
if __name__ == "__main__":
    con = sqlite3.connect("shared.db")
    con.execute("create table t (v)"); con.commit()
    ps = [mp.get_context("fork").Process(target=writer, args=(n,)) for n in range(2)]
    for p in ps:
        p.start(); p.join()
    print(con.execute("select count(*), count(distinct v) from t").fetchone(), [p.exitcode for p in ps])
"""))
    assert r.stdout == "(40, 40) [0, 0]\n"


def test_gridsearchcv_with_all_cores(sb):
    r = ok(sb.run("""
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC
X, y = load_iris(return_X_y=True)
search = GridSearchCV(SVC(), {"C": [0.1, 1, 10]}, n_jobs=-1, cv=3).fit(X, y)
print(sorted(search.best_params_), round(search.best_score_, 2) > 0.9)
""", timeout=120))
    assert r.stdout == "['C'] True\n"


def test_joblib_default_backend(sb):
    r = ok(sb.run("""
from joblib import Parallel, delayed
import math
print(Parallel(n_jobs=2)(delayed(math.factorial)(n) for n in range(6)))
""", timeout=120))
    assert r.stdout == "[1, 1, 2, 6, 24, 120]\n"


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_start_methods(sb, method):
    # The functions live in the user's __main__: spawn and forkserver children re-import it
    # from its file, as they do under `python main.py`.
    r = ok(sb.run(f"""
import multiprocessing as mp
def square(x):
    return x * x
if __name__ == "__main__":
    with mp.get_context({method!r}).Pool(2) as pool:
        print(pool.map(square, range(5)))
    q = mp.get_context({method!r}).Queue()
    p = mp.get_context({method!r}).Process(target=q.put, args=("child",))
    p.start(); print(q.get(timeout=20)); p.join(); print(p.exitcode)
""", timeout=60))
    assert r.stdout == "[0, 1, 4, 9, 16]\nchild\n0\n"
    assert r.files == []  # the script the runner wrote for its children is not in the work dir


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_under_the_pids_limit(sb, method):
    # More workers than the pids limit allows: the pool fails cleanly (fork returns EAGAIN),
    # the run ends as an ordinary error, and the next run is unaffected.
    r = sb.run(f"""
import multiprocessing as mp
if __name__ == "__main__":
    with mp.get_context({method!r}).Pool(40) as pool:
        print(sum(pool.map(abs, range(100))))
""", limits={"max_processes": 16}, timeout=30)
    assert r.outcome is Outcome.ERROR, (r.outcome, r.stderr[-2000:])
    assert r.error.type == "BlockingIOError", r.error
    ok(sb.run("print(1)"))


def test_script_name_and_data_next_to_it(sb):
    # __file__ is the name given (as the engine always had it), and names a file that exists, as for
    # `python analysis.py`: the script sits in the work dir with the inputs "next to" it (issue 18);
    # it is not an output unless the program changes it.
    r = ok(sb.run("""
import os
from pathlib import Path
print(__file__, (Path(__file__).parent / "data.csv").read_text().strip(), sorted(os.listdir(".")),
      open(__file__).read().startswith("\\nimport os"))
""", filename="analysis.py", files={"data.csv": "a,b"}))
    assert r.stdout == "analysis.py a,b ['analysis.py', 'data.csv'] True\n"
    assert r.files == []


def test_read_xml_with_lxml_defaults(sb):
    xml = "<rows><row><a>1</a><b>x</b></row><row><a>2</a><b>y</b></row></rows>"
    r = ok(sb.run("""
import pandas as pd
df = pd.read_xml("data.xml")
print(df.to_json(orient="records"))
import lxml; print(lxml.__version__)
""", files={"data.xml": xml}))
    lines = r.stdout.splitlines()
    assert json.loads(lines[0]) == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert sb.image_info()["packages"]["lxml"] == lines[1]


def test_every_listed_input_type_reads_with_usual_defaults(sb):
    from PIL import Image as PILImage  # the host's Pillow only makes the inputs

    png, jpg = io.BytesIO(), io.BytesIO()
    PILImage.new("RGB", (4, 3), (255, 0, 0)).save(png, "PNG")
    PILImage.new("RGB", (4, 3), (0, 0, 255)).save(jpg, "JPEG")
    files = {"d.csv": "a,b\n1,2\n3,4\n", "notes.txt": "hello\nworld\n", "p.png": png.getvalue(),
             "j.jpg": jpg.getvalue(), "d.xml": "<r><i><v>5</v></i></r>", "helper.py": "def f():\n    return 42\n"}
    r = ok(sb.run("""
import pandas as pd, matplotlib.image as mpimg, cv2
from PIL import Image
import helper
print(pd.read_csv("d.csv").b.sum(), open("notes.txt").read().split(), Image.open("p.png").size,
      mpimg.imread("p.png").shape, cv2.imread("j.jpg").shape, pd.read_xml("d.xml").v[0], helper.f())
""", files=files))
    assert r.stdout == "6 ['hello', 'world'] (4, 3) (3, 4, 3) (3, 4, 3) 5 42\n"


def test_policy_violation_names_the_syscall(sb):
    r = sb.run("import ctypes\nprint('before', flush=True)\nctypes.CDLL(None).syscall(101, 0, 0, 0, 0)\nprint('after')")
    assert r.outcome is Outcome.POLICY_VIOLATION
    assert r.stdout == "before\n"
    assert r.error is not None and r.error.type == "PolicyViolation"
    assert "ptrace" in r.error.message and "101" in r.error.message


def test_numa_memory_policy_calls_fail_politely(sb):
    r = ok(sb.run("""
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
out = []
for nr in (237, 238, 256, 279):   # mbind, set_mempolicy, migrate_pages, move_pages
    ctypes.set_errno(0)
    out.append((libc.syscall(nr, 0, 0, 0, 0, 0, 0), errno.errorcode[ctypes.get_errno()]))
print(out)
"""))
    assert r.stdout == "[(-1, 'ENOSYS'), (-1, 'ENOSYS'), (-1, 'ENOSYS'), (-1, 'ENOSYS')]\n"


def test_gallery_sample_runs_the_same_in_the_sandbox_and_the_image_interpreter(sb):
    # The CI slice of `sandbox bench --workload fidelity`: a fixed sample of seaborn's gallery
    # (from its sdist, via pip), run in the sandbox and by the image's interpreter side by side.
    from sandbox.bench import fidelity

    res = fidelity.run(sb, quick=True, timeout=90, log=lambda m: None)
    (g,) = res["galleries"]
    assert g["examples"] == len(fidelity.SAMPLE["seaborn"]), res["markdown"]
    assert g["passed_both"] == g["examples"], res["markdown"]
    assert g["policy_kills"] == [] and g["figures_sandbox"] == g["figures_host"] > 0, res["markdown"]


def test_joblib_workers_stay_inside_the_memory_limit(sb):
    # A worker that allocates past the execution's memory limit is killed by the cgroup's OOM
    # killer; joblib reports the dead worker and the run ends as memory_limit.
    r = sb.run("""
import numpy as np
from joblib import Parallel, delayed
def big(n):
    return float(np.ones(n).sum())
print(Parallel(n_jobs=2)(delayed(big)(n) for n in (10, 80_000_000)))
""", limits={"memory_bytes": 256 << 20}, timeout=120)
    assert r.outcome is Outcome.MEMORY_LIMIT, (r.outcome, r.error, r.stderr[-2000:])
    ok(sb.run("print(1)"))
