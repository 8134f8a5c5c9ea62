"""Runners: one way each of executing a Python program and timing it from the caller's side.

Every runner has the same shape: `run(code, files, timeout) -> sample`, where a sample is a
plain dict (JSON-able once the private `_png` key is dropped):

    {"ok": bool, "ms": float, "error": str | None, "stdout": str, "png": {...} | None, ...}

`ms` is always measured by the harness around the whole call (send, execute, receive), never
taken from what the runner reports about itself. Runners:

- `sandbox`      the engine: `Sandbox.run()` on a warm pool (isolated).
- `subprocess`   a fresh `python -I -S` per program (no isolation, no site-packages).
- `fresh-import` a fresh `python -I` per program; the program imports what it needs (no isolation).
- `nsjail-cold`  a fresh nsjail jail per program (the slot's own jail config), cold interpreter inside.
- `jupyter-warm` one warm ipykernel (jupyter_client) executing each program as a cell (no isolation).
- `warm-exec`    one warm interpreter that exec()s each program it reads from a pipe (no isolation,
                 no fork): the floor that any warm executor pays for a round trip.

The unisolated baselines run the image's own interpreter (same Python, same library versions)
with the same environment the jail gets (thread caps, Agg backend, prebuilt font cache).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping

Files = Mapping[str, "bytes | str"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_MARK = "@@BENCH-PNG@@"

# Appended to programs run by the unisolated baselines: render every open matplotlib figure to
# PNG exactly the way the sandbox's runner does (fig.savefig(buf, format="png")) and hand it back
# on stdout. The sandbox does the same work inside the child, so the comparison is like for like.
FIGURE_EPILOGUE = f"""
import sys as _bench_sys
_bench_plt = _bench_sys.modules.get("matplotlib.pyplot")
if _bench_plt is not None:
    import io as _bench_io, base64 as _bench_b64
    for _bench_n in _bench_plt.get_fignums():
        _bench_buf = _bench_io.BytesIO()
        _bench_plt.figure(_bench_n).savefig(_bench_buf, format="png")
        _bench_plt.close(_bench_n)
        print("\\n{PNG_MARK}" + _bench_b64.b64encode(_bench_buf.getvalue()).decode())
"""

# A cold jail has no writable matplotlib config dir; seed one from the image's prebuilt font
# cache the way the zygote does, so matplotlib does not rebuild its cache on every run.
JAIL_MPL_PROLOGUE = """
import os as _bench_os, shutil as _bench_shutil
if _bench_os.environ.get("SANDBOX_MPL_SEED") and _bench_os.path.isdir(_bench_os.environ["SANDBOX_MPL_SEED"]):
    _bench_shutil.copytree(_bench_os.environ["SANDBOX_MPL_SEED"], "/tmp/bench-mpl", dirs_exist_ok=True)
    _bench_os.environ["MPLCONFIGDIR"] = "/tmp/bench-mpl"
"""


def png_info(data: bytes | None) -> dict | None:
    if not data or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", data[16:24])
    return {"width": w, "height": h, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()[:16]}


def split_png(stdout: str) -> tuple[str, bytes | None]:
    """Separate the epilogue's PNG lines from the program's own stdout."""
    if PNG_MARK not in stdout:
        return stdout, None
    kept, png = [], None
    for line in stdout.split("\n"):
        if line.startswith(PNG_MARK):
            if png is None:
                try:
                    png = base64.b64decode(line[len(PNG_MARK):])
                except ValueError:
                    png = b""
        else:
            kept.append(line)
    text = "\n".join(kept)
    if text.endswith("\n\n"):
        text = text[:-1]  # the newline the epilogue printed before the marker
    return text, png


def sample(ok: bool, ms: float, stdout: str = "", error: str | None = None, png: bytes | None = None,
           **extra: Any) -> dict:
    s = {"ok": ok, "ms": round(ms, 4), "error": error, "stdout": stdout[:2000], "png": png_info(png), "_png": png}
    s.update(extra)
    return s


def bench_env(image) -> dict[str, str]:
    """The unisolated baselines' environment: the jail's allow-list minus its private paths."""
    from sandbox.host import jail

    env = jail.environment(image)
    env.pop("SANDBOX_MPL_SEED", None)
    return env


def _write_files(directory: Path, files: Files | None) -> None:
    for name, data in (files or {}).items():
        p = directory / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else bytes(data))


class Runner:
    name = "runner"
    isolated = False
    description = ""

    def start(self) -> None:
        pass

    def run(self, code: str, files: Files | None = None, timeout: float = 60.0, figures: bool = False) -> dict:
        """Run one program. figures=True: also return the first matplotlib figure as PNG (the
        sandbox always does; the baselines append FIGURE_EPILOGUE only when asked, so that
        print(1) is not charged for it)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def pids(self) -> list[int]:
        """Host pids of long-lived processes this runner keeps (for the memory workload)."""
        return []


class SandboxRunner(Runner):
    """The engine, called exactly as a user would: `sb.run(code, files=..., timeout=...)`."""

    name = "sandbox"
    isolated = True
    description = "Sandbox.run() on a warm pool (nsjail slot, pre-forked isolated child)"

    def __init__(self, sb) -> None:
        self.sb = sb

    def run(self, code: str, files: Files | None = None, timeout: float = 60.0, figures: bool = False) -> dict:
        t0 = time.perf_counter()
        r = self.sb.run(code, files=files, timeout=timeout)
        ms = (time.perf_counter() - t0) * 1000
        ok = r.outcome.value == "ok"
        err = None if ok else f"{r.outcome.value}: {r.error.type + ': ' + r.error.message if r.error else r.stderr[-300:]}"
        return sample(ok, ms, r.stdout, err, r.images[0].data if r.images else None,
                      outcome=r.outcome.value, child_wall_ms=r.usage.wall_ms, child_cpu_ms=r.usage.cpu_ms,
                      peak_memory_bytes=r.usage.peak_memory_bytes)


class SubprocessRunner(Runner):
    """A fresh interpreter per program, unisolated. site=False: `python -I -S` (stdlib only);
    site=True: `python -I`, so the program can import the image's libraries (paying for it)."""

    isolated = False

    def __init__(self, python: str | Path, env: dict[str, str], site: bool, mpl_seed: Path | None = None,
                 name: str | None = None) -> None:
        self.python = str(python)
        self.site = site
        self.flags = ["-I"] if site else ["-I", "-S"]
        self.name = name or ("fresh-import" if site else "subprocess")
        self.description = f"fresh `{Path(self.python).name} {' '.join(self.flags)}` per program, no isolation"
        self._env = dict(env)
        self._mpl_seed = mpl_seed
        self._base: str | None = None

    def start(self) -> None:
        self._base = tempfile.mkdtemp(prefix=f"bench-{self.name}-")
        if self.site and self._mpl_seed and Path(self._mpl_seed).is_dir():
            cfg = Path(self._base) / "mplconfig"
            shutil.copytree(self._mpl_seed, cfg)
            self._env["MPLCONFIGDIR"] = str(cfg)
        self._env["HOME"] = self._base

    def run(self, code: str, files: Files | None = None, timeout: float = 60.0, figures: bool = False) -> dict:
        assert self._base is not None, "start() first"
        if figures:
            code = code + "\n" + FIGURE_EPILOGUE
        t0 = time.perf_counter()
        cwd = tempfile.mkdtemp(dir=self._base)
        _write_files(Path(cwd), files)
        try:
            p = subprocess.run([self.python, *self.flags, "-c", code], cwd=cwd, env=self._env,
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
            ms = (time.perf_counter() - t0) * 1000
            out, png = split_png(p.stdout.decode(errors="replace"))
            ok = p.returncode == 0
            return sample(ok, ms, out, None if ok else f"exit {p.returncode}: {p.stderr.decode(errors='replace')[-300:]}",
                          png, exit_code=p.returncode)
        except subprocess.TimeoutExpired:
            return sample(False, (time.perf_counter() - t0) * 1000, "", "timeout")
        finally:
            shutil.rmtree(cwd, ignore_errors=True)  # after the clock stopped, like the sandbox's teardown

    def close(self) -> None:
        if self._base:
            shutil.rmtree(self._base, ignore_errors=True)


class ColdJailRunner(Runner):
    """A fresh nsjail jail per program, with the very config a slot gets (namespaces, read-only
    image binds, cgroup limits, uid maps), running a cold interpreter: what the engine would cost
    without warm slots. Input files are bound read-only at the jail's working directory."""

    isolated = True

    def __init__(self, image, site: bool, name: str = "nsjail-cold") -> None:
        self.image = image
        self.site = site
        self.flags = ["-I"] if site else ["-I", "-S"]
        self.name = name
        self.description = (f"fresh nsjail jail (slot config) per program running "
                            f"`python {' '.join(self.flags)}`")
        self._dir: str | None = None
        self._cfg: str | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        from sandbox.host import cgroups, jail
        from sandbox.limits import JailSettings

        cgroups.ensure_parents()
        self._dir = tempfile.mkdtemp(prefix="bench-nsjail-")
        os.chmod(self._dir, 0o755)
        data = Path(self._dir) / "data"
        data.mkdir()
        os.chmod(data, 0o755)
        host_nodes = {f"/dev/{n}": Path(f"/dev/{n}") for n in ("null", "zero", "full")}
        cfg = jail.config(self.image, JailSettings.from_policy(), host_nodes)
        cfg = cfg.replace('cwd: "/"\n', 'cwd: "/data"\n')
        cfg += f'mount {{ src: "{data}" dst: "/data" is_bind: true rw: false mandatory: true }}\n'
        path = Path(self._dir) / "jail.cfg"
        path.write_text(cfg)
        self._cfg = str(path)
        self._data = data
        self._nsjail = str(jail.nsjail_binary())

    def run(self, code: str, files: Files | None = None, timeout: float = 60.0, figures: bool = False) -> dict:
        assert self._cfg is not None, "start() first"
        if figures:
            code = JAIL_MPL_PROLOGUE + "\n" + code + "\n" + FIGURE_EPILOGUE
        t0 = time.perf_counter()
        if files:
            with self._lock:  # same names and content for every run of a workload
                _write_files(self._data, files)
                for p in self._data.rglob("*"):
                    os.chmod(p, 0o755 if p.is_dir() else 0o644)
        cmd = [self._nsjail, "--config", self._cfg, "--quiet", "--", str(self.image.python), *self.flags, "-c", code]
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                               env={"PATH": "/usr/bin:/bin"})
        except subprocess.TimeoutExpired:
            return sample(False, (time.perf_counter() - t0) * 1000, "", "timeout")
        ms = (time.perf_counter() - t0) * 1000
        out, png = split_png(p.stdout.decode(errors="replace"))
        ok = p.returncode == 0
        return sample(ok, ms, out, None if ok else f"exit {p.returncode}: {p.stderr.decode(errors='replace')[-300:]}",
                      png, exit_code=p.returncode)

    def close(self) -> None:
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


class JupyterRunner(Runner):
    """One warm IPython kernel; each program is executed as one cell (state persists, like a
    notebook). The kernel runs the harness's own interpreter (ipykernel cannot be added to the
    image without changing it) with the image's site-packages first on PYTHONPATH, so the
    programs see the image's library versions."""

    name = "jupyter-warm"
    isolated = False

    def __init__(self, image, env: dict[str, str]) -> None:
        self.image = image
        self.python = sys.executable  # jupyter_client launches the native kernel with sys.executable
        self.description = f"warm ipykernel ({Path(self.python).parent.parent}) executing each program as a cell"
        self._env = dict(env)
        self.km = None
        self.kc = None
        self.info: dict = {}

    def start(self) -> None:
        from jupyter_client import KernelManager

        self._dir = tempfile.mkdtemp(prefix="bench-jupyter-")
        site = _site_packages(self.image.python)
        env = dict(self._env)
        env["PATH"] = f"{Path(self.python).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        env["HOME"] = self._dir
        env["JUPYTER_PLATFORM_DIRS"] = "1"
        env["PYTHONPATH"] = site
        seed = self.image.mpl_seed
        if Path(seed).is_dir():
            shutil.copytree(seed, Path(self._dir) / "mplconfig")
            env["MPLCONFIGDIR"] = str(Path(self._dir) / "mplconfig")
        self._cwd = Path(self._dir) / "work"
        self._cwd.mkdir()
        km = KernelManager(kernel_name="python3", transport="ipc", ip=str(Path(self._dir) / "kernel"))
        km.start_kernel(env=env, cwd=str(self._cwd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        self.km, self.kc = km, kc
        probe = self._execute("import sys, json, importlib.metadata as _md\n"
                              "print(json.dumps({'python': sys.version.split()[0], 'executable': sys.executable,"
                              " 'versions': {d: _md.version(d) for d in ('ipykernel', 'numpy', 'pandas', 'matplotlib')},"
                              " 'numpy_from': __import__('numpy').__file__}))",
                              60)
        try:
            self.info = json.loads(probe[1].strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.info = {"probe_output": probe[1][-500:]}

    def _execute(self, code: str, timeout: float) -> tuple[bool, str, str | None]:
        out: list[str] = []
        err: list[str] = []

        def hook(msg: dict) -> None:
            t = msg["msg_type"]
            if t == "stream" and msg["content"].get("name") == "stdout":
                out.append(msg["content"]["text"])
            elif t == "error":
                err.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")

        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=hook, store_history=False,
                                            allow_stdin=False)
        ok = reply["content"]["status"] == "ok" and not err
        return ok, "".join(out), ("; ".join(err) or reply["content"].get("evalue")) if not ok else None

    def run(self, code: str, files: Files | None = None, timeout: float = 60.0, figures: bool = False) -> dict:
        assert self.kc is not None, "start() first"
        t0 = time.perf_counter()
        _write_files(self._cwd, files)
        try:
            ok, out, err = self._execute(code + "\n" + FIGURE_EPILOGUE if figures else code, timeout)
        except TimeoutError:
            return sample(False, (time.perf_counter() - t0) * 1000, "", "timeout")
        ms = (time.perf_counter() - t0) * 1000
        out, png = split_png(out)
        return sample(ok, ms, out, err, png)

    def pids(self) -> list[int]:
        pid = getattr(getattr(self.km, "provisioner", None), "pid", None)
        return [pid] if pid else []

    def close(self) -> None:
        try:
            if self.kc is not None:
                self.kc.stop_channels()
            if self.km is not None:
                self.km.shutdown_kernel(now=True)
        finally:
            shutil.rmtree(getattr(self, "_dir", ""), ignore_errors=True)


WARM_EXEC_SERVER = r"""
import contextlib, io, json, os, struct, sys, traceback
_in = sys.stdin.buffer
_out = os.fdopen(os.dup(1), "wb")  # the reply channel; fd 1 itself goes to /dev/null
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
while True:
    head = _in.read(4)
    if len(head) < 4:
        break
    code = _in.read(struct.unpack(">I", head)[0]).decode()
    buf = io.StringIO()
    ok, err = True, None
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(code, "<program>", "exec"), {"__name__": "__main__"})
    except BaseException as e:
        ok, err = False, f"{type(e).__name__}: {e}"
    reply = json.dumps({"ok": ok, "stdout": buf.getvalue(), "error": err}).encode()
    _out.write(struct.pack(">I", len(reply)) + reply)
    _out.flush()
"""


class WarmExecRunner(Runner):
    """One warm, unisolated interpreter reading programs from a pipe and exec()ing each in a fresh
    namespace: no fork, no isolation, no protocol beyond a length prefix. Sandbox latency minus
    this is what isolation and supervision cost on the request path."""

    name = "warm-exec"
    isolated = False
    description = "one warm `python -I` exec()ing each program read from a pipe, no fork, no isolation"

    def __init__(self, python: str | Path, env: dict[str, str], mpl_seed: Path | None = None) -> None:
        self.python = str(python)
        self._env = dict(env)
        self._mpl_seed = mpl_seed
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="bench-warm-exec-")
        if self._mpl_seed and Path(self._mpl_seed).is_dir():
            shutil.copytree(self._mpl_seed, Path(self._dir) / "mplconfig")
            self._env["MPLCONFIGDIR"] = str(Path(self._dir) / "mplconfig")
        self._env["HOME"] = self._dir
        self._cwd = Path(self._dir) / "work"
        self._cwd.mkdir()
        self.proc = subprocess.Popen([self.python, "-I", "-c", WARM_EXEC_SERVER], cwd=self._cwd, env=self._env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def run(self, code: str, files: Files | None = None, timeout: float = 60.0, figures: bool = False) -> dict:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout, "start() first"
        with self._lock:
            t0 = time.perf_counter()
            _write_files(self._cwd, files)
            data = (code + "\n" + FIGURE_EPILOGUE if figures else code).encode()
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
            head = self.proc.stdout.read(4)
            if len(head) < 4:
                return sample(False, (time.perf_counter() - t0) * 1000, "", "warm-exec server died")
            reply = json.loads(self.proc.stdout.read(struct.unpack(">I", head)[0]))
            ms = (time.perf_counter() - t0) * 1000
        out, png = split_png(reply["stdout"])
        return sample(reply["ok"], ms, out, reply["error"], png)

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(5)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(getattr(self, "_dir", ""), ignore_errors=True)


def _site_packages(python: str | Path) -> str:
    out = subprocess.run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout
    return out.strip()
