"""Packages on demand: resolve, download and unpack wheels on the host into a content-addressed
cache that every jail sees read-only. The code that uses them never gets a network.

A request is a list of requirement strings ("humanize", "polars>=1"). It is served in steps:

1. Checked against the policy ([packages] of policies/default.toml): each name must be allowed
   (and its resolved version must match the allow-list entry's specifier); a name the image pins
   is served by the image, or refused if the request asks for another version of it.
2. Resolved by pip's own resolver, run with the image's interpreter (so the Python version, ABI and
   platform are the image's) as `pip install --dry-run --report`: the image's installed packages
   are what is already there, so pip plans only what is missing, and a plan that would replace one
   of the image's packages is refused with the conflict named. Wheels only (`--only-binary=:all:`:
   a setup.py is code), from the operator's wheelhouse (`--no-index --find-links`) or index.
3. Downloaded: exactly the files of pip's plan (from its report's URLs: the index, or a file in the
   wheelhouse), each capped in size and checked against the sha256 pip reported. (Not a second pip
   run: its start-up alone would cost more than the download of a small wheel.)
4. Unpacked in a jail of its own (guest/unpack.py under nsjail: no network, the jail's unprivileged
   uid, the wheels read-only, one writable directory), with strict path rules (no absolute path, no
   `..`, no symlink or device; every byte counted toward max_set_bytes); the host then takes the
   tree back (_adopt: only directories and single-link regular files, never following a link) and
   renames it into `<cache>/sets/<key>/` in one step: a refused or failed request leaves nothing.

`<key>` is an HMAC (with a host secret that never enters a jail) of the resolved names, versions
and wheel hashes: the same resolution is the same set, and no tenant can compute the name of a
set it was not given. `<cache>/sets` is mode 0711: a jail reaches a set by its name, never lists.
A request's resolution is remembered (`<cache>/requests/`), so a repeated request costs a
dictionary look-up and a stat; concurrent requests for the same set resolve once (a lock per
request, across threads and processes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

# packaging (15-20 ms of imports: its requirement parser) loads when a call names packages, not
# with every Sandbox(): a one-shot `sandbox run` without --package never needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from packaging.requirements import Requirement


def canonicalize_name(name: str) -> str:
    from packaging.utils import canonicalize_name as canonical

    return canonical(name)


def _requirement(spec: str) -> Requirement:
    """packaging's Requirement; ValueError (its InvalidRequirement) for a bad one."""
    from packaging.requirements import Requirement

    return Requirement(spec)

from ..errors import InvalidInputError, SandboxError, SandboxUnavailableError
from ..guest import protocol
from ..limits import JailSettings, PackageSettings
from ..results import Result
from . import cgroups, jail
from .image import Image, check_bindable, state_dir

Progress = Callable[[str], None]
MAX_SPEC = 200            # characters of one requirement string
SET_FILE = "set.json"
SITE = "site"             # the directory of a set that goes on sys.path
TOUCH_EVERY = 60.0        # seconds between two "last used" marks of a set
UNPACK_BOOT = (f"import sys; sys.path.insert(0, {jail.GUEST_MOUNT!r}); "
               "from guest.unpack import main; main()")   # guest/unpack.py, in the unpacking jail
MEMO_SIZE = 4096          # requests remembered in memory (the index on disk remembers the rest)


@dataclass(frozen=True)
class PackageSet:
    """A resolved, unpacked set of packages. `packages`: name -> version of what the set adds to
    the image; `jail_path`: its directory as the jail sees it (for sys.path); `ms`: what this
    request cost (resolution, download and unpacking on a first use; a look-up afterwards)."""

    key: str
    packages: dict[str, str]
    size: int
    path: Path
    jail_path: str
    ms: float = 0.0
    cached: bool = True
    requested: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return {"key": self.key, "packages": dict(self.packages), "size": self.size,
                "ms": round(self.ms, 3), "cached": self.cached, "requested": list(self.requested)}


def parse_request(specs: object, limit: int) -> list[Requirement]:
    """A caller's `packages=` as requirements: a list of strings, each a name with an optional
    version specifier (extras allowed; URLs, paths and markers are not). InvalidInputError otherwise."""
    if specs is None:
        return []
    if isinstance(specs, str) or not isinstance(specs, (list, tuple)):
        raise InvalidInputError("packages must be a list of requirement strings, such as ['humanize', 'polars>=1']")
    if len(specs) > limit:
        raise InvalidInputError(f"{len(specs)} packages exceed the {limit} one request may ask for")
    out: dict[str, Requirement] = {}
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip() or len(spec) > MAX_SPEC:
            raise InvalidInputError(f"package {str(spec)[:80]!r} must be a requirement string of at most "
                                    f"{MAX_SPEC} characters")
        if spec.lstrip().startswith("-"):
            raise InvalidInputError(f"package {spec!r} is not a requirement (options are not accepted)")
        try:
            req = _requirement(spec)
        except ValueError as exc:
            raise InvalidInputError(f"package {spec!r} is not a valid requirement: {exc}") from None
        if req.url or req.marker:
            raise InvalidInputError(f"package {spec!r}: URLs, paths and environment markers are not accepted; "
                                    "give a name and a version specifier")
        req.name = canonicalize_name(req.name)
        if req.name in out:
            raise InvalidInputError(f"package {req.name!r} is named twice in the request")
        out[req.name] = req
    return [out[n] for n in sorted(out)]


class PackageStore:
    """The host's package cache for one image. Thread-safe; several processes may share a cache."""

    def __init__(self, image: Image, settings: PackageSettings) -> None:
        self.image = image
        self.settings = settings
        self.root = Path(settings.cache_dir) if settings.cache_dir else state_dir() / "packages"
        self._memo: dict[str, tuple[PackageSet, float]] = {}   # request hash -> (set, last touch)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._secret: bytes | None = None

    @functools.cached_property
    def pins(self) -> dict[str, str]:
        """The image's own packages, by canonical name: its versions."""
        return {canonicalize_name(n): v for n, v in self.image.manifest.get("packages", {}).items()}

    @functools.cached_property
    def _allow(self) -> dict[str, Requirement | None]:
        """The policy's allow-list, parsed when a call first names packages (a bad entry is refused then)."""
        return self._parse_allow(self.settings.allow)

    # -- layout -------------------------------------------------------------------------------

    @property
    def sets_dir(self) -> Path:
        return self.root / "sets"

    def ensure(self) -> Path:
        """Create the cache's directories (the sets directory 0711: traversable, not listable);
        returns the sets directory, which every jail binds read-only."""
        try:
            check_bindable(self.root)
        except SandboxError:
            raise InvalidInputError(f"the package cache {self.root} is under a directory every jail mounts a tmpfs "
                                    "over (/tmp, /work, /dev, /proc): set cache_dir in [packages] elsewhere") from None
        for d, mode in ((self.root, 0o755), (self.sets_dir, 0o711), (self.root / "requests", 0o700),
                        (self.root / "locks", 0o700), (self.root / "staging", 0o700)):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, mode)
        return self.sets_dir

    def _key_secret(self) -> bytes:
        if self._secret is None:
            path = self.root / "secret"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(32))
            for _ in range(50):  # another process may be writing it right now
                data = path.read_bytes()
                if len(data) == 32:
                    break
                time.sleep(0.01)
            else:
                raise SandboxError(f"the package cache's secret {path} is damaged; remove it and the sets")
            self._secret = data
        return self._secret

    def jail_path(self, key: str) -> str:
        return f"{protocol.PACKAGES_MOUNT}/{key}/{SITE}"

    # -- the policy ---------------------------------------------------------------------------

    @staticmethod
    def _parse_allow(entries: Iterable[str]) -> dict[str, Requirement | None]:
        allow: dict[str, Requirement | None] = {}
        for entry in entries:
            if entry.strip() == "*":
                allow["*"] = None
                continue
            try:
                req = _requirement(entry)
            except ValueError as exc:
                raise InvalidInputError(f"bad [packages] allow entry {entry!r}: {exc}") from None
            allow[canonicalize_name(req.name)] = req
        return allow

    def check_request(self, reqs: list[Requirement]) -> list[Requirement]:
        """The requirements that need a set: a pinned name whose pin matches is the image's own
        (dropped), one that does not is refused; every other name must be allowed."""
        wanted = []
        for req in reqs:
            pinned = self.pins.get(req.name)
            if pinned is not None:
                if req.specifier and not req.specifier.contains(pinned, prereleases=True):
                    raise InvalidInputError(f"package {str(req)!r} conflicts with the image's {req.name}=={pinned}: "
                                            "the image's pinned packages cannot be replaced")
                continue
            if req.name not in self._allow and "*" not in self._allow:
                raise InvalidInputError(f"package {req.name!r} is not allowed by this sandbox's policy "
                                        f"({self._allow_text()})")
            wanted.append(req)
        return wanted

    def _allow_text(self) -> str:
        if not self._allow:
            return "no package is allowed: the [packages] allow list is empty"
        names = sorted(self._allow)
        return "allowed: " + ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")

    def _check_versions(self, plan: list[dict]) -> None:
        for item in plan:
            rule = self._allow.get(item["name"])
            if rule is not None and rule.specifier and not rule.specifier.contains(item["version"], prereleases=True):
                raise InvalidInputError(f"package {item['name']}=={item['version']} is not allowed by this sandbox's "
                                        f"policy (allowed: {rule})")

    # -- the one entry point ------------------------------------------------------------------

    def prepare(self, specs: object, progress: Progress | None = None, *, operator: bool = False) -> PackageSet | None:
        """The set for a request (None when the image already has everything it names). Refuses
        (InvalidInputError naming the package) what the policy does not allow, source-only packages,
        conflicts with the image's pins and sets over max_set_bytes. `operator`: `sandbox packages
        add`, which may download even when the policy's `download` is off."""
        t0 = time.monotonic()
        reqs = self.check_request(parse_request(specs, self.settings.max_packages))
        if not reqs:
            return None
        request = "\n".join(str(r) for r in reqs)
        source = self.settings.wheelhouse or self.settings.index_url
        rhash = hashlib.sha256(f"{self.image.manifest.get('lock', '')}\n{source}\n{request}".encode()).hexdigest()[:32]
        found = self._memo_get(rhash)
        if found is not None:
            self._check_versions(_items(found))  # the policy may allow fewer versions than when it was made
            return _with_ms(found, t0)
        with self._lock(rhash):
            found = self._memo_get(rhash) or self._index_get(rhash)
            if found is not None:
                self._check_versions(_items(found))
                return _with_ms(found, t0)
            if not (self.settings.download or operator):
                raise InvalidInputError(f"packages {', '.join(map(str, reqs))} are not in this sandbox's package "
                                        "cache and on-demand download is off (an operator adds them with "
                                        "`sandbox packages add`)")
            made = self._make(reqs, progress or (lambda line: None))
            if made is None:
                return None
            self._index_put(rhash, made)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[rhash] = (made, time.monotonic())
            return _with_ms(made, t0, cached=False)

    # -- the request index --------------------------------------------------------------------

    def _memo_get(self, rhash: str) -> PackageSet | None:
        entry = self._memo.get(rhash)
        if entry is None:
            return None
        found, touched = entry
        if not (found.path / SET_FILE).exists():  # removed by `sandbox packages remove/prune`
            self._memo.pop(rhash, None)
            return None
        if time.monotonic() - touched > TOUCH_EVERY:
            _touch(found.path)
            self._memo[rhash] = (found, time.monotonic())
        return found

    def _index_get(self, rhash: str) -> PackageSet | None:
        try:
            key = json.loads((self.root / "requests" / f"{rhash}.json").read_text())["key"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        found = self.load(key) if isinstance(key, str) else None
        if found is not None:
            _touch(found.path)
            self._memo[rhash] = (found, time.monotonic())
        return found

    def _index_put(self, rhash: str, made: PackageSet) -> None:
        _write_atomic(self.root / "requests" / f"{rhash}.json", json.dumps({"key": made.key}).encode())

    def load(self, key: str) -> PackageSet | None:
        """The set stored under `key`, or None."""
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            return None
        path = self.sets_dir / key
        try:
            meta = json.loads((path / SET_FILE).read_text())
        except (OSError, ValueError):
            return None
        return PackageSet(key, dict(meta.get("packages", {})), int(meta.get("size", 0)), path, self.jail_path(key),
                          requested=tuple(meta.get("requested", ())))

    @contextlib.contextmanager
    def _lock(self, rhash: str):
        """The request's lock, across threads and processes: one of 256 stripes (a fixed set of
        lock files, so refused requests leave none behind), by the request hash's first byte."""
        stripe = rhash[:2]
        with self._guard:
            lock = self._locks.setdefault(stripe, threading.Lock())
        with lock:
            self.ensure()
            fd = os.open(self.root / "locks" / f"{stripe}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    # -- resolution, download, unpacking --------------------------------------------------------

    def _pip(self, args: list[str], progress: Progress, what: str) -> tuple[int, str]:
        """The image's own pip, isolated from the host's pip configuration; its lines go to `progress`."""
        cmd = [str(self.image.python), "-I", "-m", "pip", "--isolated", "--disable-pip-version-check",
               "--no-input", *args]
        env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1"}
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"):
            if name in os.environ:
                env[name] = os.environ[name]
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                    errors="replace", cwd="/")
        except OSError as exc:
            raise SandboxUnavailableError(f"cannot run the image's pip for {what}: {exc}") from None
        lines: list[str] = []
        deadline = time.monotonic() + self.settings.resolve_timeout_seconds
        timer = threading.Timer(self.settings.resolve_timeout_seconds, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                if line:
                    lines.append(line)
                    progress(line)
            proc.wait()
        finally:
            timer.cancel()
        if time.monotonic() > deadline:
            raise SandboxUnavailableError(f"{what} took longer than {self.settings.resolve_timeout_seconds:g} s")
        return proc.returncode, "\n".join(lines[-40:])

    def _source_args(self) -> list[str]:
        if self.settings.wheelhouse:
            if not Path(self.settings.wheelhouse).is_dir():
                raise SandboxUnavailableError(f"the package wheelhouse {self.settings.wheelhouse} is not a directory")
            return ["--no-index", "--find-links", self.settings.wheelhouse]
        return ["--index-url", self.settings.index_url]

    def _resolve(self, reqs: list[Requirement], staging: Path, progress: Progress) -> list[dict]:
        """pip's plan: [{name, version, sha256, url}] of what the image lacks."""
        report = staging / "report.json"
        code, out = self._pip(["install", "--dry-run", "--only-binary=:all:",
                               "--report", str(report), "--quiet", *self._source_args(), *map(str, reqs)],
                              progress, "resolving packages")
        if code != 0:
            raise _pip_refusal(out, reqs, self.pins)
        try:
            data = json.loads(report.read_text())
            plan = []
            for item in data.get("install", []):
                meta, info = item["metadata"], item["download_info"]
                digest = (info.get("archive_info") or {}).get("hashes", {}).get("sha256") \
                    or (info.get("archive_info") or {}).get("hash", "").removeprefix("sha256=")
                plan.append({"name": canonicalize_name(meta["name"]), "version": str(meta["version"]),
                             "sha256": digest, "url": info["url"]})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SandboxError(f"pip's resolution report could not be read: {exc}") from None
        for item in plan:
            if item["name"] in self.pins:
                raise InvalidInputError(f"packages {', '.join(map(str, reqs))} need {item['name']}=={item['version']}, "
                                        f"which conflicts with the image's {item['name']}=={self.pins[item['name']]}: "
                                        "the image's pinned packages cannot be replaced")
            if not item["url"].split("?")[0].split("#")[0].endswith(".whl"):
                raise InvalidInputError(f"package {item['name']} has no wheel for this image (source distributions "
                                        "are never built: a setup.py is code)")
            if not re.fullmatch(r"[0-9a-f]{64}", item["sha256"] or ""):
                raise SandboxError(f"pip gave no sha256 for {item['name']}; refusing to use it unchecked")
        self._check_versions(plan)
        return sorted(plan, key=lambda i: i["name"])

    def _fetch(self, item: dict, wheels: Path, deadline: float, progress: Progress) -> Path:
        """The wheel pip resolved, from its URL in pip's report (the operator's index, or a file in
        the wheelhouse), at most max_set_bytes, checked against the sha256 pip reported."""
        url = item["url"]
        parsed = urllib.parse.urlsplit(url)
        name = urllib.parse.unquote(parsed.path.rsplit("/", 1)[-1])
        if not re.fullmatch(r"[A-Za-z0-9_.+!-]+\.whl", name):
            raise InvalidInputError(f"package {item['name']}: pip resolved an unexpected file name {name[:80]!r}")
        target = wheels / name
        limit = self.settings.max_set_bytes + (1 << 20)
        digest = hashlib.sha256()
        size = 0
        if parsed.scheme == "file":
            house = Path(self.settings.wheelhouse).resolve() if self.settings.wheelhouse else None
            from urllib.request import url2pathname   # here: every Sandbox() imports this module (~20 ms)
            source = Path(url2pathname(parsed.path)).resolve()
            if house is None or not source.is_relative_to(house):
                raise SandboxError(f"pip resolved {item['name']} to a local file outside the wheelhouse: {source}")
            opener = lambda: open(source, "rb")  # noqa: E731
        elif parsed.scheme in ("https", "http"):
            from urllib.request import urlopen
            opener = lambda: urlopen(url, timeout=60)  # noqa: E731
        else:
            raise SandboxError(f"pip resolved {item['name']} to an unsupported URL {url[:120]}")
        progress(f"downloading {name}")
        try:
            with opener() as src, open(target, "xb") as out:
                while chunk := src.read(1 << 20):
                    size += len(chunk)
                    if size > limit:
                        raise InvalidInputError(f"package {item['name']!r} makes the set larger than max_set_bytes "
                                                f"(its wheel alone is over {limit} bytes)")
                    if time.monotonic() > deadline:
                        raise SandboxUnavailableError(f"downloading {name} took longer than "
                                                      f"{self.settings.resolve_timeout_seconds:g} s")
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as exc:  # urllib's URLError and HTTPError are OSErrors
            raise SandboxUnavailableError(f"could not download {name}: {exc}") from None
        if digest.hexdigest() != item["sha256"]:
            raise SandboxError(f"the wheel of {item['name']} does not match the sha256 pip resolved")
        return target

    def _unpack_in_jail(self, fetched: list[tuple[str, Path]], staging: Path, wheels: Path, site: Path,
                        deadline: float) -> None:
        """Unpack the wheels with guest/unpack.py in an nsjail jail of its own: every namespace (no
        network), the jail's unprivileged uid, the wheels read-only at /wheels and `site`, owned by
        that uid until _adopt() takes it back, writable at /out. Refusals come back as its answer."""
        settings = JailSettings.from_policy()
        cgroups.ensure_parents()
        for d in (self.root / "staging", staging):
            os.chmod(d, 0o711)                      # the jail's uid binds from below them
        os.chmod(wheels, 0o755)
        for _, wheel in fetched:
            os.chmod(wheel, 0o644)
        os.chown(site, settings.outside_uid, settings.outside_uid)
        os.chmod(site, 0o700)
        nodes = {f"/dev/{n}": Path(f"/dev/{n}") for n in ("null", "zero", "full", "random", "urandom")}
        timeout = max(5, int(deadline - time.monotonic()))
        cfg = jail.config(self.image, settings, nodes)
        cfg = cfg.replace("time_limit: 0\n", f"time_limit: {timeout}\n")
        cfg = cfg.replace("rlimit_fsize_type: HARD\n",
                          f"rlimit_fsize: {(self.settings.max_set_bytes >> 20) + 1}\n")   # MiB, one file
        cfg += (f'mount {{ src: "{wheels}" dst: "/wheels" is_bind: true rw: false mandatory: true }}\n'
                f'mount {{ src: "{site}" dst: "/out" is_bind: true rw: true mandatory: true }}\n')
        path = staging / "unpack.cfg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(cfg)
        cmd = [str(jail.nsjail_binary()), "--config", str(path), "--quiet", "--", str(self.image.python),
               "-I", "-B", "-c", UNPACK_BOOT, str(self.settings.max_set_bytes), "/out",
               *(f"{name}=/wheels/{wheel.name}" for name, wheel in fetched)]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout + 10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, 9)
            proc.communicate()
            raise SandboxError(f"unpacking took longer than {timeout} s") from None
        finally:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, 9)
                proc.wait()
        try:
            answer = json.loads(out.decode(errors="replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            answer = None
        if not isinstance(answer, dict) or proc.returncode != 0:
            raise SandboxError(f"the unpacking jail failed (exit {proc.returncode}): "
                               f"{err.decode(errors='replace')[-600:]}")
        if isinstance(answer.get("error"), str):
            raise InvalidInputError(answer["error"][:1000])

    def _make(self, reqs: list[Requirement], progress: Progress) -> PackageSet | None:
        self.ensure()
        staging = Path(tempfile.mkdtemp(prefix="set-", dir=self.root / "staging"))
        try:
            progress(f"resolving {' '.join(map(str, reqs))}")
            plan = self._resolve(reqs, staging, progress)
            lines = "\n".join(f"{i['name']}=={i['version']} sha256:{i['sha256']}" for i in plan)
            key = hmac.new(self._key_secret(), lines.encode(), hashlib.sha256).hexdigest()
            existing = self.load(key)
            if existing is not None:
                return existing
            if not plan:  # everything is already in the image (under a name its manifest does not list)
                return None
            wheels = staging / "wheels"
            wheels.mkdir()
            target = staging / "set"
            site = target / SITE
            site.mkdir(parents=True)
            deadline = time.monotonic() + self.settings.resolve_timeout_seconds
            fetched = [(item["name"], self._fetch(item, wheels, deadline, progress)) for item in plan]
            progress(f"unpacking {', '.join(w.name for _, w in fetched)} (in a jail of its own)")
            self._unpack_in_jail(fetched, staging, wheels, site, deadline)
            size = _adopt(site, self.settings.max_set_bytes)
            meta = {"packages": {i["name"]: i["version"] for i in plan}, "size": size,
                    "requested": [str(r) for r in reqs], "wheels": {i["name"]: i["sha256"] for i in plan},
                    "image": self.image.name, "created": time.time()}
            (target / SET_FILE).write_text(json.dumps(meta, indent=1) + "\n")
            _seal(target)
            self._make_room(size)
            try:
                os.rename(target, self.sets_dir / key)
            except OSError:  # another process made the same set first: same content
                if self.load(key) is None:
                    raise
            made = self.load(key)
            if made is None:
                raise SandboxError(f"the package set {key[:12]} vanished as it was made")
            progress(f"package set {key[:12]} ready: " + ", ".join(f"{n}=={v}" for n, v in made.packages.items()))
            return made
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -- the operator's view ------------------------------------------------------------------

    def sets(self) -> list[dict]:
        """Every set in the cache: key, packages, size, last use (epoch seconds)."""
        out = []
        try:
            keys = sorted(os.listdir(self.sets_dir))
        except OSError:
            return []
        for key in keys:
            found = self.load(key)
            if found is None:
                continue
            try:
                used = found.path.stat().st_mtime
            except OSError:
                continue
            out.append({"key": key, "packages": found.packages, "size": found.size, "last_used": used,
                        "requested": list(found.requested)})
        return out

    def remove(self, names: Iterable[str]) -> list[str]:
        """Remove every set that holds one of `names`; returns their keys."""
        wanted = {canonicalize_name(n) for n in names}
        gone = [s["key"] for s in self.sets() if wanted & set(s["packages"])]
        for key in gone:
            self._drop(key)
        return gone

    def prune(self, days: float) -> list[str]:
        """Remove the sets unused for `days` days; returns their keys."""
        cutoff = time.time() - days * 86400
        gone = [s["key"] for s in self.sets() if s["last_used"] < cutoff]
        for key in gone:
            self._drop(key)
        # and the remembered requests whose set is gone
        for entry in (self.root / "requests").glob("*.json"):
            try:
                key = json.loads(entry.read_text())["key"]
            except (OSError, ValueError, KeyError, TypeError):
                key = ""
            if not isinstance(key, str) or self.load(key) is None:
                with contextlib.suppress(OSError):
                    entry.unlink()
        return gone

    def _drop(self, key: str) -> None:
        """Out of sight first (a rename within the cache), then deleted: no jail sees half a set."""
        self.ensure()
        path = self.sets_dir / key
        trash = self.root / "staging" / f"drop-{key[:16]}-{secrets.token_hex(4)}"
        try:
            os.rename(path, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)
        for rhash, (found, _) in list(self._memo.items()):
            if found.key == key:
                self._memo.pop(rhash, None)

    def _make_room(self, incoming: int) -> None:
        """Keep the cache within max_cache_bytes: drop the least recently used sets not used in the
        last ten minutes; refuse the new set if that is not enough."""
        sets = sorted(self.sets(), key=lambda s: s["last_used"])
        total = sum(s["size"] for s in sets) + incoming
        for s in sets:
            if total <= self.settings.max_cache_bytes:
                break
            if time.time() - s["last_used"] < 600:
                continue
            self._drop(s["key"])
            total -= s["size"]
        if total > self.settings.max_cache_bytes:
            raise InvalidInputError(f"the package cache is full (max_cache_bytes={self.settings.max_cache_bytes}, "
                                    "every set in it was used in the last ten minutes); retry later")

    def status(self) -> tuple[bool, str]:
        """Whether on-demand packages can work on this host, and why (for `sandbox doctor`)."""
        s = self.settings
        if not s.allow:
            return False, "no package is allowed (the [packages] allow list of the policy is empty)"
        if not (self.image.python.exists()):
            return False, f"the image's interpreter {self.image.python} is missing"
        cached = len(self.sets())
        if s.wheelhouse:
            ok = Path(s.wheelhouse).is_dir()
            return ok, (f"wheelhouse {s.wheelhouse} {'present' if ok else 'missing'}; {cached} sets cached"
                        + ("" if s.download else "; download is off: only cached sets are served"))
        if not s.download:
            return cached > 0, f"download is off: only the {cached} cached sets are served"
        import urllib.request

        try:
            with urllib.request.urlopen(s.index_url.rstrip("/") + "/", timeout=5):
                pass
        except Exception as exc:  # noqa: BLE001 - any failure means unreachable
            return False, f"package index {s.index_url} unreachable ({exc}); {cached} sets cached"
        return True, f"package index {s.index_url} reachable; {cached} sets cached"


def _items(found: PackageSet) -> list[dict]:
    return [{"name": n, "version": v} for n, v in found.packages.items()]


def _with_ms(found: PackageSet, t0: float, cached: bool = True) -> PackageSet:
    return PackageSet(found.key, found.packages, found.size, found.path, found.jail_path,
                      (time.monotonic() - t0) * 1000, cached, found.requested)


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_NO_WHEEL = re.compile(r"(?:No matching distribution found for|Could not find a version that satisfies the "
                       r"requirement) ([A-Za-z0-9._-]+)([^\n(]*)")


def _pip_refusal(output: str, reqs: list[Requirement], pins: dict[str, str]) -> SandboxError:
    """pip's failure as an error that names the package when pip does."""
    tail = "\n".join(line for line in output.splitlines()[-12:] if not line.startswith("  "))[-1500:]
    missing = _NO_WHEEL.search(output)
    if missing:
        name = missing.group(1)
        pinned = pins.get(canonicalize_name(name))
        if pinned is not None:  # a dependency wants another version of one of the image's packages
            return InvalidInputError(f"packages {', '.join(map(str, reqs))} need {name}{missing.group(2).strip()}, "
                                     f"which conflicts with the image's {canonicalize_name(name)}=={pinned}: "
                                     "the image's pinned packages cannot be replaced")
        return InvalidInputError(f"package {name!r}: no wheel of it (or of the version asked for) for this image's "
                                 "Python and platform; source distributions are never built (a setup.py is code)")
    if "ResolutionImpossible" in output or "conflict" in output.lower():
        return InvalidInputError(f"packages {', '.join(map(str, reqs))} cannot be resolved together with the "
                                 f"image's pinned packages:\n{tail}")
    if any(s in output for s in ("NewConnectionError", "Max retries exceeded", "Network is unreachable",
                                 "Temporary failure in name resolution", "ConnectionError")):
        return SandboxUnavailableError(f"the package index could not be reached:\n{tail}")
    return SandboxError(f"pip failed for {', '.join(map(str, reqs))}:\n{tail}")


def _adopt(site: Path, limit: int) -> int:
    """Take an unpacked tree back from the unpacking jail (which has exited: nothing can change it
    now): only directories and regular files with one link, at most `limit` bytes together, then
    owned by the host's root. Returns the total size. Never follows a link the jail could plant."""
    total = 0
    entries = [site]
    for dirpath, dirnames, filenames in os.walk(site):
        for n in dirnames + filenames:
            path = Path(dirpath) / n
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                if st.st_nlink != 1:
                    raise SandboxError(f"the unpacking jail left a hard link: {path.name!r}")
                total += st.st_size
            elif not stat.S_ISDIR(st.st_mode):
                raise SandboxError(f"the unpacking jail left something that is not a file or directory: {path.name!r}")
            entries.append(path)
    if total > limit:
        raise InvalidInputError(f"the package set is larger than max_set_bytes ({total} > {limit})")
    for path in entries:
        os.chown(path, 0, 0, follow_symlinks=False)
    return total


def _seal(target: Path) -> None:
    """Owned by the host, readable by all, writable by nobody but the host: directories 0755,
    files 0644 (0755 where the wheel had an executable bit is not needed: nothing is run from here)."""
    for dirpath, dirnames, filenames in os.walk(target):
        os.chmod(dirpath, 0o755)
        for n in filenames:
            os.chmod(os.path.join(dirpath, n), 0o644)


def with_packages_ms(result: Result, ms: float) -> Result:
    """`result` with the call's package cost in its usage."""
    if not ms:
        return result
    return dataclasses.replace(result, usage=dataclasses.replace(result.usage, packages_ms=round(ms, 3)))


def request_extra(found: PackageSet | None) -> dict:
    """What a call's request header carries for its package set."""
    return {protocol.PACKAGES: [found.jail_path]} if found is not None else {}
