"""What a run hands back: stdout/stderr, structured errors, exit statuses, charts and files."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given, settings, strategies as st

from sandbox import Outcome

from _helpers import assert_no_engine_frames, png_size, run_ok

# -- stdout and stderr -------------------------------------------------------------------------


def test_print_goes_to_stdout_and_stderr(sb):
    r = run_ok(sb, "import sys\nprint('hello')\nprint('oops', file=sys.stderr)\nsys.stdout.write('no newline')")
    assert r.stdout == "hello\nno newline"
    assert r.stderr == "oops\n"
    assert r.stdout_truncated is False and r.stderr_truncated is False
    assert r.error is None and r.exit_code == 0


def test_fd_level_writes_are_captured(sb):
    r = run_ok(sb, "import os\nos.write(1, b'raw-out\\n')\nos.write(2, b'raw-err\\n')")
    assert r.stdout == "raw-out\n"
    assert r.stderr == "raw-err\n"


def test_interleaved_python_and_fd_writes_keep_their_order(sb):
    r = run_ok(sb, "import os\nprint('a')\nos.write(1, b'b\\n')\nprint('c')\nos.write(1, b'd\\n')")
    assert r.stdout == "a\nb\nc\nd\n"


# The stdio wrappers a run writes through are built once in its fork server (runner.prepare_shared)
# and inherited by every child: each child's still write to its own pipes, unbuffered, and what one
# run does to them never reaches the next. Both servers: a stdlib-only program runs in a lean
# child, one that imports numpy in a full one.
FLAVORS = pytest.mark.parametrize("imports", ["", "import numpy\n"], ids=["lean", "full"])


@FLAVORS
def test_stdio_is_unbuffered_text_on_the_runs_own_fds(sb, imports):
    r = run_ok(sb, imports + "import sys\n"
               "print(sys.stdout.write_through, sys.stderr.write_through, sys.stdout.encoding,\n"
               "      sys.stdout.fileno(), sys.stderr.fileno(), repr(sys.stdin.read()))")
    assert r.stdout == "True True utf-8 1 2 ''\n"


@FLAVORS
def test_an_unflushed_print_before_a_hard_kill_is_kept(sb, imports):
    r = sb.run(imports + "import os, signal, sys\nprint('kept')\nprint('err', file=sys.stderr)\n"
               "os.kill(os.getpid(), signal.SIGKILL)")
    assert r.stdout == "kept\n" and r.stderr.startswith("err\n")
    assert r.exit_code != 0


@FLAVORS
def test_what_a_run_does_to_its_stdio_is_gone_in_the_next(sb, imports):
    sb.run(imports + "import sys\nsys.stdout.reconfigure(encoding='latin-1')\nsys.stdout.mark = 1\n"
           "sys.stderr.close()\nimport builtins\nbuiltins.display = None")
    for _ in range(3):  # whichever spare comes next
        r = run_ok(sb, imports + "import sys\nprint(sys.stdout.encoding, hasattr(sys.stdout, 'mark'),"
                   " sys.stderr.closed, callable(display))")
        assert r.stdout == "utf-8 False False True\n"


def test_subprocess_output_is_captured(sb):
    code = ("import subprocess\n"
            "subprocess.run(['echo', 'x'], check=True)\n"
            "subprocess.run(['sh', '-c', 'echo from-sh-err >&2'], check=True)\n"
            "print(subprocess.run(['echo', 'captured'], capture_output=True, text=True).stdout.strip().upper())\n")
    r = run_ok(sb, code)
    assert r.stdout == "x\nCAPTURED\n"
    assert r.stderr == "from-sh-err\n"


def test_child_python_process_output_is_captured(sb):
    r = run_ok(sb, "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'print(6*7)'], check=True)")
    assert r.stdout == "42\n"


def test_non_ascii_output_round_trips(sb):
    r = run_ok(sb, "print('héllo wörld ✓ 日本語 🐍')")
    assert r.stdout == "héllo wörld ✓ 日本語 🐍\n"


def test_invalid_utf8_bytes_do_not_break_the_result(sb):
    r = run_ok(sb, "import os\nos.write(1, b'ok \\xff\\xfe end\\n')")
    assert r.stdout.startswith("ok ") and r.stdout.endswith(" end\n")


def test_atexit_handlers_run_and_their_output_is_kept(sb):
    r = run_ok(sb, "import atexit\natexit.register(lambda: print('bye'))\nprint('hi')")
    assert r.stdout == "hi\nbye\n"


def test_main_module_semantics(sb):
    code = ("import sys\n"
            "if __name__ == '__main__':\n"
            "    print('as main', sys.argv[0])\n"
            "class Point:\n"
            "    pass\n"
            "import pickle\n"
            "print(type(pickle.loads(pickle.dumps(Point()))).__name__)\n")
    r = run_ok(sb, code)
    assert r.stdout == "as main main.py\nPoint\n"


@settings(max_examples=15, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_arbitrary_text_round_trips_through_stdout_and_stderr(sb, text):
    payload = json.dumps(text)
    r = run_ok(sb, f"import sys, json\nt = json.loads({payload!r})\nsys.stdout.write(t)\nsys.stderr.write(t[::-1])")
    assert r.stdout == text
    assert r.stderr == text[::-1]


# -- errors ------------------------------------------------------------------------------------


def test_uncaught_exception_is_a_structured_error(sb):
    code = ("x = 1\n"
            "\n"
            "def inner(v):\n"
            "    return {}[v]\n"
            "\n"
            "def outer():\n"
            "    return inner('missing')\n"
            "\n"
            "print('before')\n"
            "outer()\n"
            "print('never')\n")
    r = sb.run(code)
    assert r.outcome is Outcome.ERROR
    assert r.exit_code == 1
    assert r.stdout == "before\n"
    e = r.error
    assert e is not None
    assert e.type == "KeyError"
    assert e.message == "'missing'"
    assert e.line == 4  # the deepest frame in the user's own source
    assert "Traceback (most recent call last)" in e.traceback
    assert 'File "main.py", line 10, in <module>' in e.traceback
    assert 'File "main.py", line 7, in outer' in e.traceback
    assert 'File "main.py", line 4, in inner' in e.traceback
    assert "return {}[v]" in e.traceback  # source lines are shown
    assert e.traceback.rstrip().endswith("KeyError: 'missing'")
    assert_no_engine_frames(e.traceback)


def test_user_defined_exception_type_is_named(sb):
    r = sb.run("class MyError(Exception):\n    pass\nraise MyError('custom failure')")
    assert r.outcome is Outcome.ERROR
    assert r.error.type.split(".")[-1] == "MyError"
    assert r.error.message == "custom failure"
    assert r.error.line == 3
    assert_no_engine_frames(r.error.traceback)


def test_exception_inside_a_library_reports_the_users_line(sb):
    code = "import numpy as np\n\na = np.arange(6)\nb = a.reshape(4, 4)\n"
    r = sb.run(code)
    assert r.outcome is Outcome.ERROR
    assert r.error.type == "ValueError"
    assert "reshape" in r.error.message
    assert r.error.line == 4
    assert 'File "main.py", line 4' in r.error.traceback
    assert_no_engine_frames(r.error.traceback)


def test_custom_filename_appears_in_the_traceback(sb):
    r = sb.run("a = 1\nb = a / 0\n", filename="analysis.py")
    assert r.outcome is Outcome.ERROR
    assert r.error.type == "ZeroDivisionError"
    assert r.error.line == 2
    assert 'File "analysis.py", line 2' in r.error.traceback
    assert_no_engine_frames(r.error.traceback)


def test_syntax_error_has_the_line_number(sb):
    r = sb.run("a = 1\nb = 2\nc = = 3\nprint('never')\n")
    assert r.outcome is Outcome.ERROR
    assert r.stdout == ""
    assert r.error.type == "SyntaxError"
    assert r.error.line == 3
    assert "c = = 3" in r.error.traceback
    assert_no_engine_frames(r.error.traceback)


def test_indentation_error_has_the_line_number(sb):
    r = sb.run("def f():\n    x = 1\n      y = 2\n")
    assert r.outcome is Outcome.ERROR
    assert r.error.type == "IndentationError"
    assert r.error.line == 3


def test_error_raised_while_showing_a_chart_has_no_engine_frames(sb):
    # plt.show() is the engine's hook; an exception while rendering must still look like the
    # user's own error (their line, their frames), not the engine's internals.
    r = sb.run("import matplotlib.pyplot as plt\nplt.figure()\nplt.title(r'$\\frac{$')\nplt.show()\n")
    assert r.outcome is Outcome.ERROR
    assert r.error.type == "ValueError"
    assert r.error.line == 4
    assert 'File "main.py", line 4' in r.error.traceback
    assert_no_engine_frames(r.error.traceback)


def test_exception_message_with_unicode_and_newlines(sb):
    r = sb.run("raise RuntimeError('line one\\nlinha dois ✗')")
    assert r.error.type == "RuntimeError"
    assert r.error.message == "line one\nlinha dois ✗"


def test_importing_a_missing_module_is_an_error(sb):
    r = sb.run("import definitely_not_installed_pkg")
    assert r.outcome is Outcome.ERROR
    assert r.error.type == "ModuleNotFoundError"
    assert r.error.line == 1


# -- exit statuses -----------------------------------------------------------------------------


def test_sys_exit_zero_is_ok(sb):
    r = sb.run("import sys\nprint('done')\nsys.exit(0)\nprint('never')")
    assert r.outcome is Outcome.OK
    assert r.exit_code == 0 and r.error is None
    assert r.stdout == "done\n"


def test_sys_exit_without_argument_is_ok(sb):
    r = sb.run("import sys\nsys.exit()")
    assert r.outcome is Outcome.OK and r.exit_code == 0


def test_sys_exit_nonzero_is_an_error_outcome(sb):
    r = sb.run("import sys\nprint('partial')\nsys.exit(3)")
    assert r.outcome is Outcome.ERROR
    assert r.exit_code == 3
    assert r.error is None  # an exit status is not an exception
    assert r.stdout == "partial\n"


def test_sys_exit_with_message_prints_it_and_exits_1(sb):
    r = sb.run("import sys\nsys.exit('fatal: bad input')")
    assert r.outcome is Outcome.ERROR
    assert r.exit_code == 1
    assert "fatal: bad input" in r.stderr


def test_os_exit_nonzero_is_an_error_outcome(sb):
    r = sb.run("import os\nprint('x', flush=True)\nos._exit(5)")
    assert r.outcome is Outcome.ERROR
    assert r.exit_code == 5
    assert r.stdout == "x\n"


def test_subprocess_exit_status_does_not_decide_the_outcome(sb):
    r = run_ok(sb, "import subprocess\nprint(subprocess.run(['sh', '-c', 'exit 7']).returncode)")
    assert r.stdout == "7\n"


# -- charts ------------------------------------------------------------------------------------


def test_shown_and_open_figures_are_returned_in_order_with_their_sizes(sb):
    code = ("import matplotlib.pyplot as plt\n"
            "fig = plt.figure(figsize=(4, 3), dpi=50)\n"
            "plt.plot([1, 2, 3])\n"
            "plt.show()\n"
            "print('open after show:', plt.get_fignums())\n"
            "plt.figure(figsize=(2, 2), dpi=100)\n"
            "plt.bar(['a', 'b'], [1, 2])\n"
            "fig3, ax = plt.subplots(figsize=(3, 1), dpi=100)\n"
            "ax.scatter([1, 2], [2, 1])\n")
    r = run_ok(sb, code)
    assert r.stdout == "open after show: []\n"  # show() closed what it rendered
    assert [i.name for i in r.images] == ["figure_1.png", "figure_2.png", "figure_3.png"]
    assert [(i.width, i.height) for i in r.images] == [(200, 150), (200, 200), (300, 100)]
    for img in r.images:
        assert img.mime_type == "image/png"
        assert png_size(img.data) == (img.width, img.height)


def test_multiple_show_calls_each_add_figures(sb):
    code = ("import matplotlib.pyplot as plt\n"
            "for i in range(3):\n"
            "    plt.figure(figsize=(1 + i, 1), dpi=100)\n"
            "    plt.plot([0, i])\n"
            "    plt.show()\n")
    r = run_ok(sb, code)
    assert [(i.name, i.width, i.height) for i in r.images] == [
        ("figure_1.png", 100, 100), ("figure_2.png", 200, 100), ("figure_3.png", 300, 100)]


def test_closed_figures_are_not_returned(sb):
    code = ("import matplotlib.pyplot as plt\n"
            "a = plt.figure(figsize=(1, 1), dpi=100)\n"
            "b = plt.figure(figsize=(2, 1), dpi=100)\n"
            "plt.close(a)\n"
            "c = plt.figure(figsize=(3, 1), dpi=100)\n")
    r = run_ok(sb, code)
    assert [(i.width, i.height) for i in r.images] == [(200, 100), (300, 100)]


def test_savefig_only_figure_is_a_file_and_closed_figure_is_not_an_image(sb):
    code = ("import matplotlib.pyplot as plt\n"
            "fig = plt.figure(figsize=(2, 2), dpi=50)\n"
            "plt.plot([1, 2])\n"
            "fig.savefig('chart.png')\n"
            "plt.close(fig)\n")
    r = run_ok(sb, code)
    assert r.images == []
    assert [f.path for f in r.files] == ["chart.png"]
    assert r.files[0].mime_type == "image/png"
    assert png_size(r.files[0].data) == (100, 100)


def test_no_figures_means_no_images(sb):
    assert run_ok(sb, "import matplotlib.pyplot as plt\nprint(1)").images == []


def test_seaborn_chart_is_returned(sb):
    code = ("import seaborn as sns, pandas as pd, numpy as np\n"
            "import matplotlib.pyplot as plt\n"
            "df = pd.DataFrame({'x': np.arange(50), 'y': np.arange(50) ** 0.5, 'g': ['a', 'b'] * 25})\n"
            "plt.figure(figsize=(5, 4), dpi=40)\n"
            "sns.lineplot(data=df, x='x', y='y', hue='g')\n"
            "plt.show()\n")
    r = run_ok(sb, code)
    assert len(r.images) == 1
    assert (r.images[0].width, r.images[0].height) == (200, 160)
    assert png_size(r.images[0].data) == (200, 160)
    assert len(r.images[0].data) > 1000


def test_pandas_plot_left_open_is_returned(sb):
    code = ("import pandas as pd\n"
            "ax = pd.Series([3, 1, 2]).plot(kind='bar', figsize=(3, 2))\n"
            "ax.figure.set_dpi(100)\n")
    r = run_ok(sb, code)
    assert len(r.images) == 1 and r.images[0].name == "figure_1.png"
    assert (r.images[0].width, r.images[0].height) == (300, 200)


# -- files -------------------------------------------------------------------------------------


def test_created_file_is_returned(sb):
    r = run_ok(sb, "open('out.txt', 'w').write('result 42\\n')")
    assert [(f.path, f.data, f.size, f.mime_type) for f in r.files] == [
        ("out.txt", b"result 42\n", 10, "text/plain")]


def test_unchanged_inputs_are_not_returned_but_changed_ones_are(sb):
    files = {"keep.txt": "same", "edit.txt": "before", "grow.txt": "abc"}
    code = ("with open('grow.txt', 'a') as f:\n"
            "    f.write('def')\n"
            "with open('keep.txt') as f:\n"
            "    print(f.read())\n")
    r = run_ok(sb, code, files=files)
    assert r.stdout == "same\n"
    got = {f.path: f.data for f in r.files}
    assert got == {"grow.txt": b"abcdef"}


def test_input_rewritten_with_same_size_is_returned_with_new_content(sb):
    code = ("with open('edit.txt', 'w') as f:\n"
            "    f.write('after!')\n"  # same size as 'before': the content must be compared
            "with open('edit.txt') as f:\n"
            "    print(f.read())\n")
    r = run_ok(sb, code, files={"edit.txt": "before"})
    assert r.stdout == "after!\n"
    assert [(f.path, f.size, f.data) for f in r.files] == [("edit.txt", 6, b"after!")]


def test_nested_directories_are_returned_with_relative_paths(sb):
    code = ("import os\n"
            "os.makedirs('out/deep/er', exist_ok=True)\n"
            "open('out/a.txt', 'w').write('A')\n"
            "open('out/deep/er/b.json', 'w').write('{\"b\": 1}')\n"
            "os.makedirs('empty_dir')\n")
    r = run_ok(sb, code)
    got = {f.path: f.data for f in r.files}
    assert got == {"out/a.txt": b"A", "out/deep/er/b.json": b'{"b": 1}'}
    assert {f.path: f.mime_type for f in r.files}["out/deep/er/b.json"] == "application/json"


def test_binary_output_is_exact(sb):
    code = ("data = bytes(range(256)) * 64 + b'\\x00\\r\\n\\x1a'\n"
            "open('blob.bin', 'wb').write(data)\n")
    r = run_ok(sb, code)
    assert len(r.files) == 1
    f = r.files[0]
    expected = bytes(range(256)) * 64 + b"\x00\r\n\x1a"
    assert f.path == "blob.bin" and f.data == expected and f.size == len(expected)


def test_deleted_and_renamed_inputs(sb):
    code = "import os\nos.remove('gone.txt')\nos.rename('old.txt', 'new.txt')\n"
    r = run_ok(sb, code, files={"gone.txt": "x", "old.txt": "payload"})
    assert {f.path: f.data for f in r.files} == {"new.txt": b"payload"}


def test_files_written_before_an_error_are_still_returned(sb):
    r = sb.run("open('partial.csv', 'w').write('a,b\\n1,2\\n')\nraise RuntimeError('late failure')")
    assert r.outcome is Outcome.ERROR
    assert {f.path: f.data for f in r.files} == {"partial.csv": b"a,b\n1,2\n"}


def test_csv_round_trip_through_pandas(sb):
    rows = [("alice", 30, 55000.5), ("bob", 25, 48000.0), ("carol", 41, 72000.25), ("dave", 35, 61000.0)]
    src = "name,age,salary\n" + "".join(f"{n},{a},{s}\n" for n, a, s in rows)
    code = ("import pandas as pd\n"
            "df = pd.read_csv('people.csv')\n"
            "df['salary_k'] = (df['salary'] / 1000).round(2)\n"
            "df['senior'] = df['age'] >= 35\n"
            "df.sort_values('age').to_csv('out/summary.csv', index=False)\n"
            "print(len(df), df['age'].sum())\n")
    code = "import os\nos.makedirs('out')\n" + code
    r = run_ok(sb, code, files={"people.csv": src})
    assert r.stdout == "4 131\n"
    assert [f.path for f in r.files] == ["out/summary.csv"]  # the unchanged input is not returned
    f = r.files[0]
    assert f.mime_type == "text/csv"
    parsed = list(csv.DictReader(io.StringIO(f.data.decode())))
    assert [p["name"] for p in parsed] == ["bob", "alice", "dave", "carol"]
    assert [float(p["salary_k"]) for p in parsed] == [48.0, 55.0, 61.0, 72.0]
    assert [p["senior"] for p in parsed] == ["False", "False", "True", "True"]
    assert set(parsed[0]) == {"name", "age", "salary", "salary_k", "senior"}


def test_input_code_file_can_be_imported(sb):
    # A code file passed as an input is importable, as it would be next to a script run with
    # `python main.py` (the working directory is the script's directory).
    files = {"helper.py": "def double(x):\n    return 2 * x\n\ndef boom():\n    return 1 / 0\n"}
    r = sb.run("import helper\nprint(helper.double(21))\nhelper.boom()\n", files=files)
    assert r.stdout == "42\n", (r.outcome, r.error)
    assert r.outcome is Outcome.ERROR
    assert r.error.type == "ZeroDivisionError"
    assert r.error.line == 3
    assert "helper.py" in r.error.traceback


def test_files_come_from_the_working_directory_even_after_chdir(sb):
    # Outputs are the working directory's files, whatever the program's cwd is at the end.
    code = ("import os\n"
            "open('result.txt', 'w').write('r')\n"
            "os.chdir('/tmp')\n"
            "open('scratch.txt', 'w').write('s')\n")
    r = run_ok(sb, code)
    assert {f.path: f.data for f in r.files} == {"result.txt": b"r"}


def test_chdir_to_a_system_directory_does_not_return_its_files(sb):
    r = run_ok(sb, "import os\nopen('result.txt', 'w').write('r')\nos.chdir('/etc')\n")
    assert {f.path: f.data for f in r.files} == {"result.txt": b"r"}


def test_output_file_with_a_non_utf8_name_does_not_break_the_call(sb):
    # run() never raises for what the code does: an unrepresentable name is dropped (or
    # escaped), and the rest of the result is intact.
    code = ("import os\n"
            "fd = os.open(b'bad\\xff.bin', os.O_CREAT | os.O_WRONLY)\n"
            "os.write(fd, b'x')\n"
            "os.close(fd)\n"
            "open('good.txt', 'w').write('g')\n"
            "print('done')\n")
    r = sb.run(code)
    assert r.outcome is Outcome.OK
    assert r.stdout == "done\n"
    assert {f.path: f.data for f in r.files}.get("good.txt") == b"g"
    for f in r.files:
        f.path.encode("utf-8")  # every returned path is valid text
    json.dumps(r.to_dict(), ensure_ascii=False).encode("utf-8")


# -- everyday program patterns ------------------------------------------------------------------


def test_builtin_exit_and_quit(sb):
    r = sb.run("print('a')\nexit(2)")
    assert r.outcome is Outcome.ERROR and r.exit_code == 2 and r.stdout == "a\n"
    assert run_ok(sb, "quit()").exit_code == 0


def test_reading_stdin_gets_eof_instead_of_hanging(sb):
    r = sb.run("x = input('name? ')", timeout=10)
    assert r.outcome is Outcome.ERROR
    assert r.error.type == "EOFError"


def test_warnings_and_logging_go_to_stderr(sb):
    r = run_ok(sb, "import warnings, logging\nwarnings.warn('careful')\nlogging.warning('logged')\nprint('x')")
    assert r.stdout == "x\n"
    assert "UserWarning: careful" in r.stderr and "WARNING:root:logged" in r.stderr


def test_multiprocessing_pool_works(sb):
    code = ("import multiprocessing as mp\n"
            "def sq(x):\n"
            "    return x * x\n"
            "if __name__ == '__main__':\n"
            "    with mp.Pool(2) as p:\n"
            "        print(p.map(sq, range(6)))\n")
    assert run_ok(sb, code, timeout=20).stdout == "[0, 1, 4, 9, 16, 25]\n"


def test_lingering_non_daemon_thread_does_not_hold_the_run(sb):
    code = "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\nprint('main done')"
    r = run_ok(sb, code, timeout=10)
    assert r.stdout == "main done\n"


def test_replacing_sys_stdout_with_a_file(sb):
    r = run_ok(sb, "import sys\nsys.stdout = open('log.txt', 'w')\nprint('to file')")
    assert r.stdout == ""
    assert {f.path: f.data for f in r.files} == {"log.txt": b"to file\n"}
