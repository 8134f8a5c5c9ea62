"""The `sandbox` command: run code, build images, check the host, benchmark.

Exit status of `sandbox run`: 0 ok, 1 error, 2 usage error, 3 any other outcome (or no engine).
"""

from __future__ import annotations

import os
import sys

from .warmrun import EXIT_ERROR, EXIT_OK, EXIT_OTHER, EXIT_USAGE

# Each command imports what it needs when it runs: `sandbox run` must not pay for the server's
# FastAPI, the agent or the image builder (tens to hundreds of milliseconds of imports), and on a
# warm engine not even argparse (warmrun.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def _say(msg: str) -> None:
    print(f"sandbox: {msg}", file=sys.stderr, flush=True)


def _engine(args: argparse.Namespace, overrides: dict) -> str | None:
    """The socket of a warm engine this run can go to (engine_socket.py), or None: the run starts its
    own. Not for --package (pip's progress is shown by the one-shot path) nor for limits the engine's
    policy would refuse (a server lets a caller tighten its limits, never loosen them)."""
    if args.no_engine or args.package:
        return None
    from . import engine_socket

    path = engine_socket.find(args.image)   # EngineSocketError: something not to trust is there
    if path is not None and overrides:
        from .limits import Limits
        policy = Limits.from_policy()
        if any(value > getattr(policy, name) for name, value in overrides.items()):
            return None
    return path


def _start_engine(args: argparse.Namespace, overrides: dict) -> str | None:
    """`--engine auto` and no engine up: start the per-user one (`sandbox engine start`, default idle
    exit) and use it; if it does not come up, this run takes the one-shot path."""
    import argparse

    from . import engine_cli, engine_socket

    if engine_socket.find(args.image) is not None:
        return None   # one is up, but this run's limits are looser than its policy: not for it
    started = engine_cli.cmd_start(argparse.Namespace(image=args.image, idle_exit=None, slots=None, wait=180.0))
    return _engine(args, overrides) if started == EXIT_OK else None


def cmd_run(args: argparse.Namespace) -> int:
    # The warm-engine path imports only the light client (remote.py, results, limits): the engine's
    # modules (client, host) load only on the one-shot path.
    from .errors import InvalidInputError, SandboxError
    from .localfiles import read_inputs

    if (args.script is None) == (args.code is None):
        _say("give a script path or -c CODE (exactly one)")
        return EXIT_USAGE
    if args.code is not None:
        code, filename = args.code, "main.py"
    else:
        try:
            from pathlib import Path
            code, filename = Path(args.script).read_text(), os.path.basename(args.script)
        except (OSError, UnicodeDecodeError) as exc:
            _say(f"cannot read {args.script}: {exc}")
            return EXIT_USAGE
    overrides = {}
    if args.timeout is not None:
        overrides["timeout_seconds"] = args.timeout
    if args.memory_mb is not None:
        overrides["memory_bytes"] = args.memory_mb << 20
    if args.cpu_seconds is not None:
        overrides["cpu_seconds"] = args.cpu_seconds
    try:
        files = read_inputs(args.file)
        if overrides:  # checked here whichever path runs the code
            from .limits import Limits
            Limits.from_policy().replace(**overrides)
    except InvalidInputError as exc:
        _say(str(exc))
        return EXIT_USAGE
    url = args.url or os.environ.get("SANDBOX_URL")
    engine = None
    if not url:
        from .engine_socket import EngineSocketError
        try:
            engine = _engine(args, overrides)
            if engine is None and getattr(args, "engine", None) == "auto" and not (args.no_engine or args.package):
                engine = _start_engine(args, overrides)
        except EngineSocketError as exc:
            _say(f"not using the engine socket: {exc}. Remove it or fix it, or run with --no-engine")
            return EXIT_OTHER
    try:
        if url or engine:  # one HTTP round trip to a running `sandbox serve` (key from SANDBOX_API_KEY)
            from .remote import RemoteSandbox
            with RemoteSandbox(url, unix_socket=engine) as remote:
                result = remote.run(code, files, filename=filename, limits=overrides or None,
                                    **({"packages": args.package} if args.package else {}))
        else:
            from .client import Sandbox
            from .limits import Limits
            limits = Limits.from_policy().replace(**overrides)
            # One run: a jail that warms nothing ahead (Sandbox(warm=False): no preload, one child,
            # no rehearsal); the program imports what it uses, as a bare interpreter would.
            with Sandbox(slots=1, image=args.image, limits=limits, warm=False) as sb:
                found = None
                if args.package:  # resolved first, with pip's progress on stderr (cached: a look-up)
                    found = sb.packages.prepare(args.package, progress=lambda line: _say(line))
                result = sb.run(code, files, filename=filename, packages=args.package or None)
                if found is not None:  # the first use's cost, paid before run()
                    from .host.packages import with_packages_ms
                    result = with_packages_ms(result, found.ms + result.usage.packages_ms)
    except InvalidInputError as exc:
        _say(str(exc))
        return EXIT_USAGE
    except SandboxError as exc:
        _say(str(exc))
        return EXIT_OTHER

    from .warmrun import render
    return render(result, args)


def cmd_image_build(args: argparse.Namespace) -> int:
    from .errors import ImageError
    from .host import image

    try:
        img = image.build(args.name, requirements=args.requirements, python=args.python, force=args.force,
                          preload=args.preload, log=lambda m: _say(m))
    except ImageError as exc:
        _say(str(exc))
        return EXIT_OTHER
    _say(f"ready: {img.path} (Python {img.manifest['python_version']}, {len(img.manifest['packages'])} packages)")
    return EXIT_OK


def cmd_image_info(args: argparse.Namespace) -> int:
    import json

    from .errors import ImageError
    from .host import image

    try:
        img = image.load_any(args.name)
    except ImageError as exc:
        _say(str(exc))
        return EXIT_OTHER
    print(json.dumps(img.manifest, indent=2))
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from .host import doctor

    results = doctor.checks(image=args.image)
    width = max(len(c.name) for c in results)
    for c in results:
        print(f"{'OK  ' if c.ok else 'WARN' if c.optional else 'FAIL'}  {c.name.ljust(width)}  {c.detail}")
    bad = [c for c in results if not c.ok and not c.optional]
    print("all checks passed: this host can run sandboxes" if not bad else f"{len(bad)} check(s) failed")
    return EXIT_OK if not bad else EXIT_ERROR


def cmd_bench(argv: list[str]) -> int:
    from .bench.cli import main as bench_main  # the harness (sandbox/bench/); its baselines need the bench extra

    return bench_main(argv)


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; `only="run"` builds the run and engine commands alone (the other commands'
    parsers import their modules, the server's FastAPI among them)."""
    import argparse
    from pathlib import Path

    p = argparse.ArgumentParser(prog="sandbox", description="Run untrusted Python in warm, isolated jails.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a script or -c CODE in a jail")
    r.add_argument("script", nargs="?", help="Python file to run")
    r.add_argument("-c", dest="code", help="code to run instead of a script")
    r.add_argument("--file", action="append", default=[], metavar="PATH[=NAME]",
                   help="input file placed in the working directory (repeatable)")
    r.add_argument("--out", metavar="DIR", help="write figures (PNG) and files the code wrote here")
    r.add_argument("--json", action="store_true", help="print one JSON result document")
    r.add_argument("--timeout", type=float, help="wall clock limit in seconds (default from policies/default.toml)")
    r.add_argument("--memory-mb", type=int, help="memory limit in MiB")
    r.add_argument("--cpu-seconds", type=int, help="CPU time limit in seconds")
    r.add_argument("--image", default="default", help="image to run in (default: default)")
    r.add_argument("--url", help="send the run to a `sandbox serve` at this URL (default: $SANDBOX_URL; "
                                 "key from $SANDBOX_API_KEY)")
    r.add_argument("--no-engine", action="store_true",
                   help="start an engine for this run even if a warm one listens on the engine socket "
                        "($SANDBOX_SOCKET, else $XDG_RUNTIME_DIR/sandbox/engine.sock, else "
                        "/tmp/sandbox-UID/engine.sock; see `sandbox serve --unix-socket`)")
    r.add_argument("--engine", choices=["auto"],
                   help="auto: if no engine is up, start the per-user one first (`sandbox engine start`: it "
                        "exits after 15 min idle) and send this run and the next ones there")
    r.add_argument("--package", action="append", default=[], metavar="NAME",
                   help="a package from the policy's allow-list for this run, e.g. humanize or 'polars>=1' "
                        "(repeatable; downloaded on the host on first use, the run has no network)")
    r.set_defaults(func=cmd_run)
    from .engine_cli import add_parser as add_engine  # `sandbox engine start|stop|status`: light, as run
    add_engine(sub)
    if only == "run":
        return p

    im = sub.add_parser("image", help="build or inspect images")
    isub = im.add_subparsers(dest="image_command", required=True)
    b = isub.add_parser("build", help="build (or verify) an image; rebuilt only when its lock changes")
    b.add_argument("--name", default="default")
    b.add_argument("--requirements", type=Path, help="pinned requirements file for a custom image")
    b.add_argument("--preload", type=Path, help="with --requirements: file of modules the zygote imports, one a line")
    b.add_argument("--python", help="interpreter to base the image on (default /usr/bin/python3)")
    b.add_argument("--force", action="store_true", help="rebuild even if up to date")
    b.set_defaults(func=cmd_image_build)
    i = isub.add_parser("info", help="print an image's manifest")
    i.add_argument("--name", default="default")
    i.set_defaults(func=cmd_image_info)

    from .packages_cli import add_parser as add_packages  # `sandbox packages`: the package cache
    add_packages(sub)

    d = sub.add_parser("doctor", help="check this host can run sandboxes safely")
    d.add_argument("--image", default="default")
    d.set_defaults(func=cmd_doctor)

    sv = sub.add_parser("serve", help="the engine as an HTTP service and MCP server (needs the server extra)")
    from .server import serve as _serve
    _serve.add_arguments(sv)
    sv.set_defaults(func=_serve.cmd_serve)
    from .server.service_unit import add_parser as add_install_service
    add_install_service(sub)
    mc = sub.add_parser("mcp", help="an MCP server on stdio with a run_python tool (needs the server extra)")
    mc.add_argument("--slots", type=int, default=1, help="jails in the pool (default 1)")
    mc.add_argument("--image", default="default", help="image to run in (default: default)")
    mc.set_defaults(func=lambda a: __import__("sandbox.server.mcp_server", fromlist=["cmd_mcp"]).cmd_mcp(a))

    from .agent.cli import add_parser as add_ask  # `sandbox ask`: the model loop (sandbox/agent/)
    add_ask(sub)

    from .batch.cli import add_parser as add_batch_parser

    add_batch_parser(sub)

    sub.add_parser("bench", help="benchmarks against baselines (see benchmarks/README.md)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return cmd_bench(argv[1:])
    try:
        if argv[:1] == ["run"]:
            from .warmrun import main as warm_run
            status = warm_run(argv[1:])   # None: not a form it takes, or no warm engine (nothing was sent)
            if status is not None:
                return status
        args = parser(only="run" if argv[:1] in (["run"], ["engine"]) else None).parse_args(argv)
        return args.func(args)
    except BrokenPipeError:
        # stdout closed early (`sandbox doctor | head -1`): not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not print a second traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
