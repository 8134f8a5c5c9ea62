"""Inputs: files placed in the working directory, and calls rejected before anything runs."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from sandbox import InvalidInputError, Outcome

from _helpers import make_png, run_ok


def _runs(sb) -> int:
    return sb.stats().runs


def test_many_kinds_of_input_files_are_placed_in_the_working_directory(sb):
    png = make_png(12, 7)
    xml = "<?xml version='1.0'?><catalog><book id='b1'><price>10.5</price></book><book id='b2'><price>4.5</price></book></catalog>"
    files = {
        "notes.txt": "first line\nsecond línea\n",
        "image.png": png,
        "catalog.xml": xml,
        "table.csv": "a,b\n1,2\n3,4\n",
        "data/x.csv": b"k,v\nx,1\ny,2\nz,3\n",
        "data/deeper/raw.bin": bytes(range(256)),
        "empty.txt": b"",
    }
    code = """
import os, hashlib, json
import xml.etree.ElementTree as ET
import pandas as pd
from PIL import Image
import cv2

listing = sorted(os.path.relpath(os.path.join(d, f), '.') for d, _, fs in os.walk('.') for f in fs)
listing.remove(__file__)  # the program's own file sits with its inputs, as for `python main.py`
print(json.dumps(listing))
print(open('notes.txt', encoding='utf-8').read().splitlines()[1])
print(Image.open('image.png').size, cv2.imread('image.png').shape)
root = ET.parse('catalog.xml').getroot()
print(sum(float(b.find('price').text) for b in root.iter('book')), [b.get('id') for b in root])
print(int(pd.read_csv('table.csv')['b'].sum()), pd.read_csv('data/x.csv')['v'].tolist())
print(hashlib.sha256(open('data/deeper/raw.bin', 'rb').read()).hexdigest())
print(os.path.getsize('empty.txt'), os.getcwd())
"""
    r = run_ok(sb, code, files=files)
    lines = r.stdout.splitlines()
    assert json.loads(lines[0]) == sorted(files)
    assert lines[1] == "second línea"
    assert lines[2] == "(12, 7) (7, 12, 3)"
    assert lines[3] == "15.0 ['b1', 'b2']"
    assert lines[4] == "6 [1, 2, 3]"
    assert lines[5] == hashlib.sha256(bytes(range(256))).hexdigest()
    assert lines[6].split()[0] == "0"
    assert r.files == []  # nothing changed, so nothing comes back


def test_str_inputs_are_utf8_and_bytes_inputs_are_exact(sb):
    files = {"u.txt": "ünïcödé ✓", "b.bin": b"\x00\xff\x80\r\n"}
    r = run_ok(sb, "print(open('u.txt', 'rb').read().hex())\nprint(open('b.bin', 'rb').read().hex())", files=files)
    assert r.stdout.split() == ["ünïcödé ✓".encode().hex(), "00ff800d0a"]


def test_bytearray_and_memoryview_inputs(sb):
    files = {"a.bin": bytearray(b"abc"), "m.bin": memoryview(b"xyz")}
    r = run_ok(sb, "print(open('a.bin').read() + open('m.bin').read())", files=files)
    assert r.stdout == "abcxyz\n"


def test_input_files_are_writable_by_the_program(sb):
    r = run_ok(sb, "open('in.txt', 'a').write(' more')\nimport os\nos.remove('del.txt')",
               files={"in.txt": "some", "del.txt": "x"})
    assert {f.path: f.data for f in r.files} == {"in.txt": b"some more"}


def test_empty_and_none_files_mean_no_inputs(sb):
    # Only the program's own file (as for `python main.py`).
    assert run_ok(sb, "import os\nprint(os.listdir('.'))", files={}).stdout == "['main.py']\n"
    assert run_ok(sb, "import os\nprint(os.listdir('.'))", files=None).stdout == "['main.py']\n"


def test_large_input_file(sb):
    blob = bytes(range(256)) * (8 << 12)  # 8 MiB
    r = run_ok(sb, "import hashlib\nprint(hashlib.sha256(open('big.bin','rb').read()).hexdigest())", files={"big.bin": blob})
    assert r.stdout.strip() == hashlib.sha256(blob).hexdigest()


def test_filename_argument_names_the_program(sb):
    r = run_ok(sb, "import sys\nprint(sys.argv[0], __file__)", filename="solution.py")
    assert r.stdout == "solution.py solution.py\n"


# -- rejected before anything runs ------------------------------------------------------------

BAD_NAMES = ["../x", "/etc/passwd", "a\0b", "", "a/../b", "./x", "a//b", "x/", "..", ".", "dir/./f",
             "back\\slash", "ctl\x01char", "new\nline", "a" * 300, "/".join(["d"] * 2100)]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_input_names_are_rejected_before_anything_runs(sb, name):
    before = _runs(sb)
    with pytest.raises(InvalidInputError):
        sb.run("print('ran')", files={name: b"data"})
    with pytest.raises(ValueError):  # it is a ValueError too, for callers that catch those
        sb.run("print('ran')", files={"ok.txt": "fine", name: b"data"})
    assert _runs(sb) == before


@pytest.mark.parametrize("name", [123, None, b"bytes-name", ("t",)])
def test_non_string_input_names_are_rejected(sb, name):
    with pytest.raises(InvalidInputError):
        sb.run("print('ran')", files={name: b"data"})


@pytest.mark.parametrize("value", [123, None, ["list"], {"d": 1}, 4.5])
def test_non_bytes_input_contents_are_rejected(sb, value):
    with pytest.raises(InvalidInputError):
        sb.run("print('ran')", files={"f.txt": value})


def test_files_must_be_a_mapping(sb):
    with pytest.raises(InvalidInputError):
        sb.run("print('ran')", files=[("a.txt", b"x")])
    with pytest.raises(InvalidInputError):
        sb.run("print('ran')", files="a.txt")


def test_file_and_directory_clash_is_rejected(sb):
    with pytest.raises(InvalidInputError):
        sb.run("print('ran')", files={"data": b"x", "data/inner.csv": b"y"})
    with pytest.raises(InvalidInputError):
        sb.run("print('ran')", files={"data/inner.csv": b"y", "data": b"x"})


def test_oversize_inputs_are_rejected_before_anything_runs(sb):
    before = _runs(sb)
    with pytest.raises(InvalidInputError):
        sb.run("print('ran')", files={"a.txt": b"x" * 11}, limits={"max_input_bytes": 10})
    with pytest.raises(InvalidInputError):  # the total counts, not each file
        sb.run("print('ran')", files={"a.txt": b"x" * 6, "b.txt": b"y" * 6}, limits={"max_input_bytes": 10})
    with pytest.raises(InvalidInputError):
        sb.run("print('ran')", files={f"f{i}": b"" for i in range(4)}, limits={"max_input_files": 3})
    assert _runs(sb) == before
    # Exactly at the cap is fine.
    r = run_ok(sb, "print(open('a.txt').read())", files={"a.txt": b"x" * 10}, limits={"max_input_bytes": 10})
    assert r.stdout == "x" * 10 + "\n"


@pytest.mark.parametrize("code", [b"print(1)", None, 42, ["print(1)"], bytearray(b"print(1)")])
def test_code_must_be_a_str(sb, code):
    before = _runs(sb)
    with pytest.raises(InvalidInputError):
        sb.run(code)
    assert _runs(sb) == before


def test_oversize_code_is_rejected(sb):
    with pytest.raises(InvalidInputError):
        sb.run("x = 1\n" * 100, limits={"max_code_bytes": 100})


@pytest.mark.parametrize("filename", ["../evil.py", "/abs.py", "", "a\0.py"])
def test_bad_program_filename_is_rejected(sb, filename):
    with pytest.raises(InvalidInputError):
        sb.run("print(1)", filename=filename)


def test_input_named_like_the_program_does_not_replace_the_code(sb):
    r = run_ok(sb, "print('the real code')", files={"main.py": "print('an input file')"})
    assert r.stdout == "the real code\n"


# -- property: any valid names and contents round-trip -----------------------------------------

_component = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\0"),
    min_size=1, max_size=12,
).filter(lambda c: c not in (".", "..") and len(c.encode()) <= 255)


@st.composite
def _file_sets(draw):
    paths = draw(st.lists(st.lists(_component, min_size=1, max_size=3).map("/".join), min_size=1, max_size=6,
                          unique=True))
    # A path cannot be both a file and a directory.
    for p in paths:
        assume(not any(q.startswith(p + "/") for q in paths))
    return {p: draw(st.binary(max_size=2000)) for p in paths}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(files=_file_sets())
def test_arbitrary_files_round_trip_into_the_working_dir_and_back(sb, files):
    # The program reports what it found (name -> content) and writes a copy of each file
    # under out/; the copies come back as output files, the unchanged inputs do not.
    code = """
import os, json, base64, shutil
found = {}
for d, _, fs in os.walk('.'):
    for f in fs:
        p = os.path.relpath(os.path.join(d, f), '.')
        if p == __file__ and p not in INPUTS:
            continue  # the program's own file
        found[p] = base64.b64encode(open(p, 'rb').read()).decode()
print(json.dumps(found))
for p in found:
    os.makedirs(os.path.dirname(os.path.join('out', p)), exist_ok=True)
    shutil.copyfile(p, os.path.join('out', p))
"""
    r = run_ok(sb, f"INPUTS = {sorted(files)!r}\n" + code, files=files)
    found = {k: base64.b64decode(v) for k, v in json.loads(r.stdout).items()}
    assert found == files
    assert {f.path: f.data for f in r.files} == {"out/" + k: v for k, v in files.items()}
    assert r.outcome is Outcome.OK


# -- standard input -----------------------------------------------------------------------------

def test_stdin_text_reaches_input_and_sys_stdin(sb):
    r = run_ok(sb, "import sys\na = input(); b = sys.stdin.read()\nprint(a.upper(), repr(b))", stdin="first\nrest\nmore\n")
    assert r.stdout == "FIRST 'rest\\nmore\\n'\n"


def test_stdin_bytes_are_inherited_by_subprocesses(sb):
    code = "import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', 'import sys; print(len(sys.stdin.buffer.read()))'], capture_output=True, text=True).stdout.strip())"
    r = run_ok(sb, code, stdin=bytes(range(256)) * 1000)
    assert r.stdout == "256000\n"


def test_no_stdin_reads_as_empty(sb):
    r = run_ok(sb, "import sys\nprint(repr(sys.stdin.read()))\ntry:\n    input()\nexcept EOFError:\n    print('eof')")
    assert r.stdout == "''\neof\n"


def test_stdin_counts_against_the_input_cap(sb):
    with pytest.raises(InvalidInputError, match="stdin"):
        sb.run("pass", stdin=b"x" * 2000, limits={"max_input_bytes": 1000})
    with pytest.raises(InvalidInputError, match="stdin must be bytes or str"):
        sb.run("pass", stdin=123)


def test_code_with_a_lone_surrogate_is_invalid_input_not_a_crash(sb):
    # No UTF-8 file could hold this program; before, encode() raised UnicodeEncodeError from the engine.
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        sb.run("print('\ud800')")
