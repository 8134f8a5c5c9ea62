"""Small helpers shared by the behaviour tests (no fixtures here: see conftest.py)."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CGROUP_ROOT = Path("/sys/fs/cgroup")
ENGINE_FRAMES = ("runner.py", "zygote.py", "isolation.py", "/opt/sandbox", "sandbox/guest")


def run_ok(sb, code, **kw):
    """Run code and assert it succeeded, showing stderr and the error when it did not."""
    r = sb.run(code, **kw)
    assert r.outcome.value == "ok", (r.outcome, r.exit_code, r.stderr[-2000:], r.error)
    return r


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) read straight from a PNG's IHDR chunk."""
    assert data.startswith(PNG_SIGNATURE), data[:16]
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def make_png(width: int, height: int) -> bytes:
    """A valid RGB PNG built by hand (no imaging library on the host)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 7 % 256, y * 11 % 256, 128))
        for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.05) -> bool:
    """Poll until predicate() is true. The bound is generous: it only stops a hung test, it
    never decides pass/fail on speed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def cgroup_dirs(jail_pid: int) -> list[Path]:
    """The cgroup directories nsjail creates for one jail: one on v2, one per controller on v1."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT / "sandbox" / f"NSJAIL.{jail_pid}"]
    return [CGROUP_ROOT / c / "sandbox" / f"NSJAIL.{jail_pid}" for c in ("memory", "pids", "cpu")]


def assert_no_engine_frames(traceback_text: str) -> None:
    for marker in ENGINE_FRAMES:
        assert marker not in traceback_text, f"engine frame {marker!r} leaked into the traceback:\n{traceback_text}"
