"""A wheelhouse and a policy for the packages-on-demand tests: wheels this file writes itself
(no network), an sdist, and a policy directory whose [packages] table points at them."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from sandbox.limits import PackageSettings, policy_dir

# Names no image has: the tests check that against the image's manifest too.
HELLO = "sbtest-hello"
DEPENDENT = "sbtest-dependent"     # requires sbtest-hello
BIG = "sbtest-big"                 # larger than the tests' max_set_bytes
SOURCE_ONLY = "sbtest-source"      # only an sdist in the wheelhouse
OLD_NUMPY = "sbtest-oldnumpy"      # requires numpy<1.0: would replace the image's numpy
NOT_ALLOWED = "sbtest-forbidden"   # in the wheelhouse, not in the allow list
MAX_SET_BYTES = 1 << 20


def make_wheel(directory: Path, name: str, version: str, files: dict[str, bytes | str],
               requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel (py3-none-any) holding `files`, with its dist-info and RECORD."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    members = {k: (v.encode() if isinstance(v, str) else v) for k, v in files.items()}
    members[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode()
    members[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: sandbox-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for path, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    members[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


def make_sdist(directory: Path, name: str, version: str) -> Path:
    dist = name.replace("-", "_")
    path = directory / f"{dist}-{version}.tar.gz"
    setup = b"raise SystemExit('a setup.py is code: this must never run')\n"
    with tarfile.open(path, "w:gz") as tf:
        for member, data in ((f"{dist}-{version}/setup.py", setup),
                             (f"{dist}-{version}/PKG-INFO", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode())):
            ti = tarfile.TarInfo(member)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def build_wheelhouse(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    make_wheel(directory, HELLO, "1.0", {"sbtest_hello/__init__.py": "def greet(n):\n    return f'hello {n}'\n"})
    make_wheel(directory, HELLO, "2.0", {"sbtest_hello/__init__.py": "def greet(n):\n    return f'hello {n}, v2'\n"})
    make_wheel(directory, DEPENDENT, "1.0", {"sbtest_dependent.py": "import sbtest_hello\nVALUE = sbtest_hello.greet('dep')\n"},
               requires=(f"{HELLO}==1.0",))
    make_wheel(directory, BIG, "1.0", {"sbtest_big/__init__.py": "", "sbtest_big/blob.bin": os.urandom(MAX_SET_BYTES + 4096)})
    make_wheel(directory, OLD_NUMPY, "1.0", {"sbtest_oldnumpy.py": ""}, requires=("numpy<1.0",))
    make_wheel(directory, NOT_ALLOWED, "1.0", {"sbtest_forbidden.py": ""})
    make_sdist(directory, SOURCE_ONLY, "1.0")
    return directory


def write_policy(directory: Path, wheelhouse: Path, cache: Path, /, **extra: object) -> Path:
    """A copy of the policy directory whose [packages] table serves the test wheelhouse."""
    directory.mkdir(parents=True, exist_ok=True)
    src = policy_dir()
    shutil.copyfile(src / "seccomp.toml", directory / "seccomp.toml")
    text = (src / "default.toml").read_text()
    text = text.split("\n[packages]")[0]
    allow = [HELLO, DEPENDENT, BIG, SOURCE_ONLY, OLD_NUMPY]
    settings = {"allow": allow, "max_set_bytes": MAX_SET_BYTES, "download": True,
                "wheelhouse": str(wheelhouse), "cache_dir": str(cache), **extra}
    lines = ["", "[packages]"]
    for k, v in settings.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, list):
            lines.append(f"{k} = [{', '.join(repr(x).replace(chr(39), chr(34)) for x in v)}]")
        elif isinstance(v, str):
            lines.append(f'{k} = "{v}"')
        else:
            lines.append(f"{k} = {v}")
    (directory / "default.toml").write_text(text + "\n".join(lines) + "\n")
    return directory


def bindable_dir(prefix: str) -> Path:
    """A directory a jail can bind (not under /tmp, which the jail mounts a tmpfs over)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    os.chmod(path, 0o755)
    return path


def cache_entries(cache: Path) -> tuple[list[str], list[str]]:
    """(sets, staging leftovers) in a package cache."""
    sets = sorted(os.listdir(cache / "sets")) if (cache / "sets").is_dir() else []
    staging = sorted(os.listdir(cache / "staging")) if (cache / "staging").is_dir() else []
    return sets, staging


class PackageWorld:
    """A wheelhouse, a cache and a policy directory for one test module; `env()` points a Sandbox or
    a `sandbox` command at them. As a context manager, the cache is removed at the end (the rest
    lives in pytest's tmp directory)."""

    def __init__(self, tmp: Path, **policy: object) -> None:
        self.wheelhouse = build_wheelhouse(tmp / "wheelhouse")
        self.cache = bindable_dir("sandbox-pkgtest-")
        self.policy = write_policy(tmp / "policy", self.wheelhouse, self.cache, **policy)

    def __enter__(self) -> PackageWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def env(self) -> dict[str, str]:
        return {"SANDBOX_POLICY_DIR": str(self.policy)}

    @contextlib.contextmanager
    def policy_env(self) -> Iterator[None]:
        """This world's policy in the environment for the block (what a Sandbox reads as it starts)."""
        old = os.environ.get("SANDBOX_POLICY_DIR")
        os.environ["SANDBOX_POLICY_DIR"] = str(self.policy)
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("SANDBOX_POLICY_DIR", None)
            else:
                os.environ["SANDBOX_POLICY_DIR"] = old

    def sandbox(self, **kwargs: object):
        """A Sandbox started under this world's policy (the environment is restored at once)."""
        from sandbox import Sandbox

        with self.policy_env():
            return Sandbox(**kwargs)

    def settings(self, **changes: object) -> PackageSettings:
        """The package settings of this world's policy, with `changes`."""
        return dataclasses.replace(PackageSettings.from_policy(self.policy / "default.toml"), **changes)

    def entries(self) -> tuple[list[str], list[str]]:
        return cache_entries(self.cache)

    def remove(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)
