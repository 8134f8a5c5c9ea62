"""Images: the venv a jail runs (pinned requirements), built once and rebuilt only when its lock changes.

An image definition is a folder `images/<name>/` with `requirements.txt` (pinned) and
`preload.txt` (modules the zygote imports before any request). It is built into
`<state dir>/images/<name>/` with a `manifest.json` of versions. The jail mounts the venv
read-only and runs it as an unprivileged uid, so everything must be world-readable and the
interpreter must not live under a 0700 home (pyenv under /root will not do).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ImageError
from ..limits import PACKAGE_ROOT

BUILD_FORMAT = 1  # bump when the layout of a built image or GUEST_REQUIREMENTS change
DEFAULT_PYTHON = "/usr/bin/python3"
# What the guest code itself needs in every image, whatever the image's own requirements say.
GUEST_REQUIREMENTS = ["pyseccomp==0.1.2"]


def state_dir() -> Path:
    """Where images and runtime files live; must be traversable by the sandbox's uid."""
    if "SANDBOX_HOME" in os.environ:
        return Path(os.environ["SANDBOX_HOME"])
    return Path("/var/lib/sandbox") if os.geteuid() == 0 else Path.home() / ".local/share/sandbox"


# Places inside the jail that get a tmpfs of their own: nothing bound from the host may live
# below them, or the tmpfs hides it. (The jail binds images at their host paths.)
JAIL_TMPFS = ("/tmp", "/work", "/dev", "/proc")


def check_bindable(path: Path) -> None:
    p = str(Path(path).resolve())
    for top in JAIL_TMPFS:
        if p == top or p.startswith(top + "/"):
            raise ImageError(f"{p} is under {top}, which the jail mounts a tmpfs over; set SANDBOX_HOME "
                             "to a directory elsewhere (default /var/lib/sandbox)")


def definitions_dir() -> Path:
    return Path(os.environ.get("SANDBOX_IMAGES_DIR", PACKAGE_ROOT / "images"))


@dataclass(frozen=True)
class Image:
    """A built image, as recorded in its manifest."""

    name: str
    path: Path           # the image folder
    python: Path         # the venv's interpreter
    base_prefix: Path    # the base interpreter's installation, mounted read-only in the jail
    preload: list[str]
    manifest: dict

    @property
    def mpl_seed(self) -> Path:
        return self.path / "mplconfig"


def _lock_hash(definition: Path, python: str) -> str:
    h = hashlib.sha256(f"format={BUILD_FORMAT}\npython={python}\n".encode())
    for name in ("requirements.txt", "preload.txt"):
        f = definition / name
        h.update(name.encode() + b"\0" + (f.read_bytes() if f.exists() else b""))
    return h.hexdigest()[:16]


def _world_readable(path: Path) -> bool:
    """True if every directory from / down to path can be traversed by any uid."""
    p = path.resolve()
    for d in [*reversed(p.parents), p]:
        try:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _python_facts(python: str) -> dict:
    code = "import json,sys; print(json.dumps({'version': sys.version.split()[0], 'base_prefix': sys.base_prefix, 'hexversion': sys.hexversion}))"
    try:
        out = subprocess.run([python, "-I", "-c", code], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ImageError(f"cannot run the image interpreter {python}: {exc}") from None
    return json.loads(out)


def choose_python(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    if Path(DEFAULT_PYTHON).exists():
        return DEFAULT_PYTHON
    return sys.executable


def load(name: str = "default") -> Image:
    """The built image, or ImageError saying how to build it."""
    path = state_dir() / "images" / name
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        raise ImageError(f"image {name!r} is not built: run `sandbox image build{'' if name == 'default' else ' --name ' + name}`") from None
    except ValueError:
        raise ImageError(f"image {name!r} has a corrupt manifest: rebuild it with `sandbox image build`") from None
    definition = definitions_dir() / name
    if definition.is_dir() and manifest.get("lock") != _lock_hash(definition, manifest.get("interpreter", "")):
        raise ImageError(f"image {name!r} is stale (its definition changed): run `sandbox image build`")
    return Image(name=name, path=path, python=path / "venv/bin/python", base_prefix=Path(manifest["base_prefix"]),
                 preload=list(manifest["preload"]), manifest=manifest)


def build(name: str = "default", requirements: Path | None = None, python: str | None = None,
          force: bool = False, preload: Path | None = None, log: Callable[[str], None] = print) -> Image:
    """Build (or verify) an image. A custom image is a `requirements` file (and optionally a
    `preload` file of modules to import in the zygote) under a new `name`.

    The steps: find (or write) the definition; stop if the built image has the same lock; check the
    interpreter and the state dir; build a venv beside the target; install and probe it; write its
    manifest; swap it in for the old image in one rename."""
    definition = _definition(name, requirements, preload)
    interpreter = choose_python(python)
    lock = _lock_hash(definition, interpreter)
    target = state_dir() / "images" / name
    if not force and _is_built(target, lock):
        log(f"image {name!r} is up to date ({lock}) at {target}")
        return load(name) if requirements is None else _load_at(name, target)

    facts = _check_interpreter(interpreter)
    root = _prepare_state_dir()
    work = root / "images" / f".{name}.build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.monotonic()
    log(f"building image {name!r} with {interpreter} (Python {facts['version']}) into {target}")
    _install(work, interpreter, definition, log)
    modules = _preload_list(definition)
    packages = _probe(work, modules, log)
    manifest = {
        "name": name,
        "lock": lock,
        "interpreter": interpreter,
        "python_version": facts["version"],
        "base_prefix": facts["base_prefix"],
        "preload": modules,
        "packages": dict(sorted(packages.items())),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - t0, 1),
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _make_world_readable(work)
    _swap_in(work, target)
    log(f"image {name!r} built in {manifest['build_seconds']} s: {len(packages)} packages")
    return _load_at(name, target)


def _definition(name: str, requirements: Path | None, preload: Path | None) -> Path:
    """The image's definition folder: `images/<name>/`, or for a custom image one written under the
    state dir from the given files. ImageError for a bad name or a missing file."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ImageError(f"image name {name!r} must be letters, digits, '-' or '_'")
    definition = definitions_dir() / name
    if requirements is not None:
        requirements = Path(requirements)
        if not requirements.is_file():
            raise ImageError(f"requirements file not found: {requirements}")
        if preload is not None and not Path(preload).is_file():
            raise ImageError(f"preload file not found: {preload}")
        definition = state_dir() / "definitions" / name
        definition.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(requirements, definition / "requirements.txt")
        (definition / "preload.txt").write_text(Path(preload).read_text() if preload else "")
    if not (definition / "requirements.txt").is_file():
        raise ImageError(f"no image definition {definition}/requirements.txt")
    return definition


def _is_built(target: Path, lock: str) -> bool:
    """True if the image at `target` was built from this lock and has its interpreter (a corrupt
    manifest: not built)."""
    manifest_file = target / "manifest.json"
    if not manifest_file.exists():
        return False
    try:
        return json.loads(manifest_file.read_text()).get("lock") == lock and (target / "venv/bin/python").exists()
    except ValueError:
        return False


def _check_interpreter(interpreter: str) -> dict:
    """The interpreter's facts, if it is 3.11 or newer and installed where the jail's uid can read it."""
    facts = _python_facts(interpreter)
    if facts["hexversion"] < 0x030B0000:
        raise ImageError(f"{interpreter} is Python {facts['version']}; the image needs 3.11 or newer")
    if not _world_readable(Path(facts["base_prefix"])):
        raise ImageError(
            f"{interpreter} lives under {facts['base_prefix']}, which the sandbox's unprivileged uid cannot read; "
            "install Debian's python3 (apt-get install python3 python3-venv) or pass --python PATH")
    return facts


def _prepare_state_dir() -> Path:
    """The state dir and its images/ folder, made and opened to every uid; refused where the jail
    mounts a tmpfs or where another uid cannot reach it."""
    root = state_dir()
    check_bindable(root)
    root.mkdir(parents=True, exist_ok=True)
    for d in (root, root / "images"):
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o755)
    if not _world_readable(root):
        raise ImageError(f"state dir {root} is not traversable by other users; set SANDBOX_HOME to a path that is")
    return root


def _install(work: Path, interpreter: str, definition: Path, log: Callable[[str], None]) -> None:
    """A venv at `work/venv` with the pinned requirements and the guest's own."""
    _run([interpreter, "-m", "venv", str(work / "venv")], "create the venv")
    pip = [str(work / "venv/bin/python"), "-m", "pip", "--disable-pip-version-check"]
    log("installing pinned requirements (this takes a few minutes the first time)")
    _run([*pip, "install", "--no-input", "--progress-bar", "off", "-r", str(definition / "requirements.txt"),
          *GUEST_REQUIREMENTS], "install the requirements", stream=log)


def _preload_list(definition: Path) -> list[str]:
    """The modules of the definition's preload.txt (blank lines and comments skipped)."""
    if not (definition / "preload.txt").exists():
        return []
    return [m.strip() for m in (definition / "preload.txt").read_text().splitlines()
            if m.strip() and not m.startswith("#")]


def _probe(work: Path, modules: list[str], log: Callable[[str], None]) -> dict[str, str]:
    """Import every preload module in the new venv (which also prebuilds matplotlib's font cache in
    `work/mplconfig`); the installed distributions, name -> version."""
    log("checking every preload module imports and prebuilding the matplotlib font cache")
    env = {"PATH": "/usr/bin:/bin", "MPLCONFIGDIR": str(work / "mplconfig"), "MPLBACKEND": "Agg", "HOME": str(work),
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    probe = ("import importlib, json, sys, importlib.metadata as md\n"
             f"mods = {modules!r}\n"
             "for m in mods: importlib.import_module(m)\n"
             "if 'matplotlib' in sys.modules: import matplotlib.font_manager\n"
             "print(json.dumps({d.metadata['Name'].lower(): d.version for d in md.distributions()}))\n")
    out = _run([str(work / "venv/bin/python"), "-I", "-c", probe], "import the preload modules", env=env)
    return json.loads(out.strip().splitlines()[-1])


def _swap_in(work: Path, target: Path) -> None:
    """The new image at `target`: the old one moved aside, the new one renamed in, the old one removed."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    work.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _load_at(name: str, target: Path) -> Image:
    manifest = json.loads((target / "manifest.json").read_text())
    return Image(name=name, path=target, python=target / "venv/bin/python", base_prefix=Path(manifest["base_prefix"]),
                 preload=list(manifest["preload"]), manifest=manifest)


def load_any(name: str) -> Image:
    """A built image by name, whether defined in images/ or built from a custom requirements file."""
    if (definitions_dir() / name).is_dir():
        return load(name)
    target = state_dir() / "images" / name
    if not (target / "manifest.json").exists():
        raise ImageError(f"image {name!r} is not built: run `sandbox image build --name {name} --requirements FILE`")
    return _load_at(name, target)


def _make_world_readable(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                mode = os.stat(p).st_mode
                os.chmod(p, (mode | 0o444 | (0o111 if mode & 0o100 else 0)) & 0o755)


def _run(cmd: list[str], what: str, env: dict | None = None, stream: Callable[[str], None] | None = None) -> str:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if stream and line.startswith(("Collecting", "Successfully")):
            stream("  " + line.rstrip())
    if proc.wait() != 0:
        tail = "".join(lines[-20:])
        raise ImageError(f"failed to {what} (exit {proc.returncode}):\n{tail}")
    return "".join(lines)
