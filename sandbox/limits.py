"""Execution limits and the policy files they come from (policies/*.toml)."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from .errors import InvalidInputError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def policy_dir() -> Path:
    return Path(os.environ.get("SANDBOX_POLICY_DIR", PACKAGE_ROOT / "policies"))


@dataclass(frozen=True)
class Limits:
    """Per-execution limits. Defaults come from policies/default.toml; override per call
    with `limits.replace(timeout_seconds=5)` or `Sandbox.run(..., timeout=5)`."""

    timeout_seconds: float = 30
    cpu_seconds: int = 30
    memory_bytes: int = 1 << 30
    max_processes: int = 64
    file_size_bytes: int = 256 << 20
    open_files: int = 1024
    workdir_bytes: int = 256 << 20
    tmp_bytes: int = 256 << 20
    shm_bytes: int = 64 << 20
    max_stdout_bytes: int = 1 << 20
    max_stderr_bytes: int = 1 << 20
    max_images: int = 32
    max_image_bytes: int = 8 << 20
    max_outputs: int = 64
    max_output_bytes: int = 32 << 20
    max_output_text_bytes: int = 256 << 10
    max_output_html_bytes: int = 4 << 20
    max_output_image_bytes: int = 8 << 20
    max_output_json_bytes: int = 8 << 20
    max_output_json_values: int = 100_000
    max_files: int = 64
    max_file_bytes: int = 64 << 20
    max_input_files: int = 256
    max_input_bytes: int = 128 << 20
    max_code_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidInputError(f"limit {f.name} must be a finite number, not {value!r}")
            if f.name != "timeout_seconds" and not isinstance(value, int):
                raise InvalidInputError(f"limit {f.name} must be a whole number, not {value!r}")
            if value <= 0 and f.name not in ("max_images", "max_files", "max_outputs"):
                raise InvalidInputError(f"limit {f.name} must be positive, not {value!r}")
            if value < 0:
                raise InvalidInputError(f"limit {f.name} must not be negative, not {value!r}")
        if self.timeout_seconds > 24 * 3600:
            raise InvalidInputError("limit timeout_seconds must be at most one day")

    @classmethod
    def from_policy(cls, path: Path | None = None) -> Limits:
        """Defaults from a policy file (policies/default.toml unless given)."""
        data = load_toml(path or policy_dir() / "default.toml")
        table = data.get("limits", {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(table) - known
        if unknown:
            raise InvalidInputError(f"unknown limits in policy: {', '.join(sorted(unknown))}")
        return cls(**table)

    @staticmethod
    def changes(value: Limits | Mapping[str, Any] | None) -> dict[str, Any] | None:
        """A caller's `limits=` argument as a plain mapping of limit names to values (a Limits
        gives every field), or None; InvalidInputError for anything else."""
        if value is None:
            return None
        if isinstance(value, Limits):
            return dataclasses.asdict(value)
        if isinstance(value, Mapping):
            return dict(value)
        raise InvalidInputError("limits must be a Limits or a mapping of limit names to values")

    @classmethod
    def coerce(cls, value: Limits | Mapping[str, Any] | None, base: Limits,
               timeout: float | None = None) -> Limits:
        """A caller's `limits=` (and `timeout=`) as Limits: a Limits as it is, a mapping as changes
        to `base`, None as `base`. The one place every entry point turns its argument into limits."""
        if isinstance(value, Limits):
            lim = value
        else:
            changes = cls.changes(value)
            lim = base.replace(**changes) if changes else base
        return lim if timeout is None else lim.replace(timeout_seconds=timeout)

    def replace(self, **changes: Any) -> Limits:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise InvalidInputError(f"unknown limits: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def profile(self) -> dict[str, int]:
        """The limits a child applies to itself before it sees a request (mounts, rlimits)."""
        return {
            "workdir_bytes": self.workdir_bytes,
            "tmp_bytes": self.tmp_bytes,
            "shm_bytes": self.shm_bytes,
            "cpu_seconds": self.cpu_seconds,
            "file_size_bytes": self.file_size_bytes,
            "open_files": self.open_files,
        }

    def result_cap(self) -> int:
        """Largest result frame a child may send: every image and file at its cap, the rich outputs
        and the figures' chart data (max_output_bytes together), plus JSON."""
        return self.max_images * self.max_image_bytes + self.max_file_bytes + self.max_output_bytes + (4 << 20)

    def per_request(self) -> dict[str, Any]:
        """The limits the zygote and the runner enforce for one request, as sent in it."""
        return {
            "timeout": self.timeout_seconds,
            "max_stdout_bytes": self.max_stdout_bytes,
            "max_stderr_bytes": self.max_stderr_bytes,
            "max_images": self.max_images,
            "max_image_bytes": self.max_image_bytes,
            "max_files": self.max_files,
            "max_file_bytes": self.max_file_bytes,
            "max_outputs": self.max_outputs,
            "max_output_bytes": self.max_output_bytes,
            "max_output_text_bytes": self.max_output_text_bytes,
            "max_output_html_bytes": self.max_output_html_bytes,
            "max_output_image_bytes": self.max_output_image_bytes,
            "max_output_json_bytes": self.max_output_json_bytes,
            "max_output_json_values": self.max_output_json_values,
            "max_result_bytes": self.result_cap(),
        }


@dataclass(frozen=True)
class JailSettings:
    """Settings of a slot's jail (the [jail] table of policies/default.toml)."""

    cpus: float = 1.0
    cpu_period_ms: int = 10        # CFS period of the slot's CPU bandwidth (see cgroups.SlotCgroup.set_cpu)
    outside_uid: int = 100000
    user_outside_uid: int = 101000
    user_uids: int = 64            # uids mapped from user_outside_uid: every live child has its own
    spares_lean: int = 2           # isolated children each fork server keeps waiting
    spares_full: int = 1
    packages_dir: str = ""         # the package cache's sets, bound read-only (set from [packages], not [jail])

    @classmethod
    def from_policy(cls, path: Path | None = None) -> JailSettings:
        table = load_toml(path or policy_dir() / "default.toml").get("jail", {})
        try:
            return cls(**table)
        except TypeError as exc:
            raise InvalidInputError(f"bad [jail] table in policy: {exc}") from None


@dataclass(frozen=True)
class SessionSettings:
    """Lifetimes and capacity of sessions (the [sessions] table of policies/default.toml)."""

    ttl_seconds: float = 600            # idle time after which a session is closed
    max_ttl_seconds: float = 86400      # the largest ttl a caller may ask for
    max_lifetime_seconds: float = 86400  # a session is closed this long after it opened, busy or not
    max_sessions: int = 256             # open sessions per Sandbox
    spares: int = 2                     # isolated session interpreters kept waiting
    total_memory_bytes: int = 16 << 30  # every session of a Sandbox together (admission: sum of their limits)
    total_processes: int = 4096

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                    or not math.isfinite(value):
                raise InvalidInputError(f"sessions setting {f.name} must be a positive number, not {value!r}")

    @classmethod
    def from_policy(cls, path: Path | None = None) -> SessionSettings:
        table = load_toml(path or policy_dir() / "default.toml").get("sessions", {})
        try:
            return cls(**table)
        except TypeError as exc:
            raise InvalidInputError(f"bad [sessions] table in policy: {exc}") from None


@dataclass(frozen=True)
class PackageSettings:
    """Packages on demand (the [packages] table of policies/default.toml): which names a call may
    ask for (`allow`: requirement strings, a name alone or with a version specifier; "*" allows
    any name), the largest unpacked set (`max_set_bytes`) and cache (`max_cache_bytes`), whether a
    request not in the cache may be downloaded (`download`), from where (`index_url`, or the
    operator's `wheelhouse` directory: then nothing is fetched from any index), and where the
    cache lives (`cache_dir`; empty: <SANDBOX_HOME>/packages)."""

    allow: tuple[str, ...] = ()
    max_set_bytes: int = 256 << 20
    max_cache_bytes: int = 4 << 30
    max_packages: int = 16             # names in one request
    download: bool = True
    index_url: str = "https://pypi.org/simple"
    wheelhouse: str = ""
    cache_dir: str = ""
    resolve_timeout_seconds: float = 300

    def __post_init__(self) -> None:
        if not isinstance(self.allow, (list, tuple)) or not all(isinstance(a, str) for a in self.allow):
            raise InvalidInputError("packages setting allow must be a list of requirement strings")
        object.__setattr__(self, "allow", tuple(self.allow))
        for name in ("max_set_bytes", "max_cache_bytes", "max_packages", "resolve_timeout_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                    or not math.isfinite(value):
                raise InvalidInputError(f"packages setting {name} must be a positive number, not {value!r}")
        if not isinstance(self.download, bool):
            raise InvalidInputError(f"packages setting download must be true or false, not {self.download!r}")
        for name in ("index_url", "wheelhouse", "cache_dir"):
            if not isinstance(getattr(self, name), str):
                raise InvalidInputError(f"packages setting {name} must be a string")

    @classmethod
    def from_policy(cls, path: Path | None = None) -> PackageSettings:
        table = load_toml(path or policy_dir() / "default.toml").get("packages", {})
        try:
            return cls(**table)
        except TypeError as exc:
            raise InvalidInputError(f"bad [packages] table in policy: {exc}") from None


_parsed: dict[str, tuple[bytes, dict[str, Any]]] = {}   # path -> (its bytes, their tables)


def load_toml(path: Path) -> dict[str, Any]:
    """A policy file's tables (a copy of its own for each caller), parsed once for each content
    the file has had: an engine's start reads default.toml for the limits, the jail, the sessions
    and the packages, and a one-shot `sandbox run` once more for its own limits."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        cached = _parsed.get(str(path))
        if cached is not None and cached[0] == raw:
            return copy.deepcopy(cached[1])
        data = tomllib.loads(raw.decode())
    except FileNotFoundError:
        raise InvalidInputError(f"policy file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"policy file {path} is not valid TOML: {exc}") from None
    _parsed[str(path)] = (raw, data)
    return copy.deepcopy(data)


def seccomp_policy(path: Path | None = None) -> dict[str, Any]:
    """The seccomp allow-list (policies/seccomp.toml), checked for shape before it is sent to a jail."""
    data = load_toml(path or policy_dir() / "seccomp.toml")
    if not isinstance(data.get("allow"), list) or not data["allow"]:
        raise InvalidInputError("seccomp policy needs a non-empty 'allow' list")
    if data.get("default", "kill") not in ("kill",) and not str(data.get("default")).startswith("E"):
        raise InvalidInputError("seccomp policy 'default' must be 'kill' or an errno name")
    return data
