"""The README and docs/ stay true: every ```python block runs, every command line names a real flag.

Each ```python block of README.md and docs/*.md is run as a program of its own, with this test's
interpreter, in a temporary directory that holds the files the examples read (examples/sales.csv as
sales.csv), and must exit 0 within its timeout. Blocks that use `RemoteSandbox` get a real
`sandbox serve` (one for the whole module) through SANDBOX_URL and SANDBOX_API_KEY.

Shell blocks (```sh, ```console) are not run (they start servers, clusters, long batches), but every
`sandbox SUBCOMMAND ... --flag` in them is checked against the parser's own `--help`, every
`python -m MODULE --flag` against that module's, and every `make TARGET` against the Makefile, so the
docs cannot drift from the CLI. Every fence must name its language, so nothing meant as output is
mistaken for code and nothing meant as code escapes the test.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^[ \t]*```(\S*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)  # indented in lists too
LANGUAGES = {"python", "sh", "console", "text", "json", "http", "toml"}
BLOCK_TIMEOUT = 120  # seconds; a block that starts a pool takes 5-10 s on a loaded 2-core machine
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}


def blocks(language: str | None = None) -> list[tuple[str, str, str]]:
    """(page:line, language, body) of every fenced block, in page order."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            if language is None or m.group(1) == language:
                found.append((f"{page.relative_to(ROOT)}:{line}", m.group(1), textwrap.dedent(m.group(2))))
    return found


def ids(found: list[tuple[str, str, str]]) -> list[str]:
    return [where for where, _, _ in found]


# --- the python blocks --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """One `sandbox serve` (one slot, a key), started only when a block needs it."""
    keys = tmp_path_factory.mktemp("serve") / "keys.txt"
    key = "docs-test-key-0123456789abcdef"
    keys.write_text(key + "\n")
    with socket.socket() as s:  # a free port: a fixed one may be taken on a shared machine
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "serve", "--port", str(port), "--slots", "1",
                             "--api-key-file", str(keys), "--log-level", "warning"], env=ENV)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, "sandbox serve exited"
            try:
                with urllib.request.urlopen(url + "/v1/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "sandbox serve did not become healthy in 90 s"
            time.sleep(0.5)
        yield {"SANDBOX_URL": url, "SANDBOX_API_KEY": key}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


PYTHON = blocks("python")


@pytest.mark.parametrize("where,language,code", PYTHON, ids=ids(PYTHON))
def test_python_block_runs(where: str, language: str, code: str, tmp_path: Path, request) -> None:
    shutil.copy(ROOT / "examples" / "sales.csv", tmp_path / "sales.csv")
    env = dict(ENV)
    if "RemoteSandbox" in code:
        env.update(request.getfixturevalue("server"))
    (tmp_path / "block.py").write_text(code)
    p = subprocess.run([sys.executable, "block.py"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=BLOCK_TIMEOUT)
    assert p.returncode == 0, f"{where} exited {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"


# --- the shell blocks ---------------------------------------------------------------------------

@cache
def help_text(*command: str) -> str:
    """`--help` of a command (argparse's usage and options), or '' when it has none."""
    p = subprocess.run([*command, "--help"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    return p.stdout if p.returncode == 0 else ""


def subcommands(help: str) -> set[str]:
    """The choices of an argparse subparser, from `{run,image,...}` in its usage."""
    m = re.search(r"\{([\w,-]+)\}", help)
    return set(m.group(1).split(",")) if m else set()


def options(help: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help))


def commands(body: str, language: str) -> list[list[str]]:
    """The command lines of a shell block as words, split at `|`, `&&`, `;` and `$(`."""
    lines = []
    for raw in body.splitlines():
        line = raw.strip()
        if language == "console":
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        line = line.replace("$(", " ; ").replace(")", " ) ")
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()
        command: list[str] = []
        for w in words + [";"]:
            if w in ("|", "&&", "||", ";", ")"):
                if command:
                    lines.append(command)
                command = []
            else:
                command.append(w)
    return lines


def strip_prefix(words: list[str]) -> list[str]:
    """Drop `sudo`, `env -u X`, `VAR=value` and `timeout N` before the command itself."""
    while words:
        if words[0] == "sudo":
            words = words[1:]
        elif words[0] == "env":
            words = words[1:]
            while words and (words[0].startswith("-") or "=" in words[0]):
                words = words[2:] if words[0] == "-u" else words[1:]
        elif re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            words = words[1:]
        else:
            break
    return words


SHELL = [b for language in ("sh", "console") for b in blocks(language)]


@pytest.mark.parametrize("where,language,body", SHELL, ids=ids(SHELL))
def test_shell_block_matches_cli(where: str, language: str, body: str) -> None:
    problems = []
    for words in map(strip_prefix, commands(body, language)):
        if not words:
            continue
        if Path(words[0]).name == "sandbox":
            path = ["sandbox"]
            rest = words[1:]
            while rest and rest[0] in subcommands(help_text(sys.executable, "-m", "sandbox", *path[1:])):
                path.append(rest.pop(0))
            if len(path) == 1 and rest and not rest[0].startswith("-"):
                problems.append(f"`sandbox {rest[0]}` is not a subcommand")
                continue
            help = help_text(sys.executable, "-m", "sandbox", *path[1:])
        elif len(words) > 2 and Path(words[0]).name.startswith("python") and words[1] == "-m":
            path, rest = words[:3], words[3:]
            help = help_text(sys.executable, "-m", words[2])
            if not help:
                problems.append(f"`python -m {words[2]} --help` fails")
                continue
        elif words[0] == "make":
            targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
            problems += [f"`make {t}`: no such target" for t in words[1:] if not t.startswith("-") and t not in targets]
            continue
        else:
            continue  # curl, ray, head...: not ours to check
        known = options(help)
        for w in rest:
            flag = w.split("=", 1)[0]
            if re.fullmatch(r"--?[A-Za-z][\w-]*", flag) and flag not in known:
                problems.append(f"`{' '.join(path)}` has no option {flag}")
    assert not problems, f"{where}: " + "; ".join(problems)


# --- the pages as a whole -----------------------------------------------------------------------

def test_every_fence_names_a_known_language() -> None:
    bad = [f"{where}: ```{language}" for where, language, _ in blocks() if language not in LANGUAGES]
    assert not bad, "fences without a known language (use text for output and trees): " + ", ".join(bad)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", page.read_text())
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_relative_links_resolve() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, fragment = target.partition("#")
            file = (page.parent / path) if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif not file.resolve().is_relative_to(ROOT):
                broken.append(f"{page.relative_to(ROOT)}: {target} is outside the repository")
            elif fragment and file.suffix == ".md" and fragment not in anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such heading")
    assert not broken, broken


def test_readme_is_short_and_opens_with_the_setup() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 210
    first = blocks("sh")[0]
    assert first[0] == "README.md:3" and "sudo make run" in first[2] and "sudo make test" in first[2]
