"""The codebase's shape, kept by a check rather than by review: no import circles, no import
running up a layer, layers that reach the engine only through the public API (the contracts in
pyproject.toml, checked by import-linter), and a guest that imports only the standard library and
pyseccomp (it runs inside the jail, where nothing else is installed for it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUEST = ROOT / "sandbox" / "guest"
GUEST_MAY_IMPORT = set(sys.stdlib_module_names) | {"pyseccomp"}


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.exists(), "import-linter is not installed (the test extra): pip install -e '.[test]'"
    p = subprocess.run([str(lint), "--no-cache", "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "4 kept, 0 broken" in p.stdout, p.stdout[-2000:]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level name) of every absolute import in a file; relative imports stay in the guest."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_the_guest_imports_only_the_standard_library_and_pyseccomp():
    files = sorted(GUEST.glob("*.py"))
    assert len(files) >= 8
    outside = [f"{f.name}:{line} imports {name}" for f in files for line, name in _imports(f)
               if name not in GUEST_MAY_IMPORT]
    assert not outside, outside


def test_the_guest_check_sees_a_foreign_import(tmp_path):
    # The checker itself: a module that imports numpy or the host side is caught.
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nimport numpy\nfrom sandbox.host import wire\n")
    assert [n for _, n in _imports(bad) if n not in GUEST_MAY_IMPORT] == ["numpy", "sandbox"]
