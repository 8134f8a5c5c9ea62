"""`sandbox ask QUESTION --model URL`: the model loop from a shell.

Prints the transcript (the model's text, each program, its output, where each chart was written),
or with --json the Gemini-shaped `GenerateContentResponse` document. Exit status: 0 answered,
1 gave up, 2 usage error, 3 the model or the sandbox could not be reached.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_GAVE_UP, EXIT_USAGE, EXIT_OTHER = 0, 1, 2, 3


def _say(msg: str) -> None:
    print(f"sandbox ask: {msg}", file=sys.stderr, flush=True)


def add_parser(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("ask", help="answer a question with a model that runs Python here (Gemini's code-execution loop)")
    a.add_argument("question")
    a.add_argument("--model", required=True, metavar="URL",
                   help="an OpenAI-compatible base URL (http://host:port/v1; key from OPENAI_API_KEY), "
                        "or gemini:MODEL for Gemini (key from GEMINI_API_KEY)")
    a.add_argument("--model-name", help="model name on an OpenAI-compatible server (default: the first it lists)")
    a.add_argument("--file", action="append", default=[], metavar="PATH[=NAME]", help="input file (repeatable)")
    a.add_argument("--out", metavar="DIR", help="write the charts (PNG) here")
    a.add_argument("--json", action="store_true", help="print the Gemini-shaped transcript as JSON")
    a.add_argument("--images", action="store_true",
                   help="send charts back to an OpenAI-compatible model (only for models that accept images)")
    a.add_argument("--max-regenerations", type=int, default=5, help="regenerations after failed runs (default 5)")
    a.add_argument("--timeout", type=float, default=30.0, help="seconds per run (default 30)")
    a.add_argument("--image", default="default", help="sandbox image (default: default)")
    a.add_argument("--url", help="run the code on a `sandbox serve` at this URL instead of a local pool "
                                 "(default: $SANDBOX_URL; key from SANDBOX_API_KEY)")
    a.set_defaults(func=cmd_ask)


def _backend(args: argparse.Namespace):
    from .backends import GeminiBackend, OpenAIChatBackend

    if args.model.startswith("gemini:"):
        key = os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
        return GeminiBackend(args.model.removeprefix("gemini:") or "gemini-2.5-flash", api_key=key)
    if not args.model.startswith(("http://", "https://")):
        raise ValueError(f"--model must be an http(s) URL or gemini:MODEL, not {args.model!r}")
    return OpenAIChatBackend(args.model, args.model_name, api_key=os.environ.get("OPENAI_API_KEY"),
                             accepts_images=args.images)


def _print_transcript(transcript, out: Path | None) -> None:
    figure = 0
    for part in transcript.parts:
        if "text" in part:
            print(part["text"].rstrip() + "\n")
        elif "executableCode" in part:
            print("```python\n" + part["executableCode"]["code"].rstrip() + "\n```")
        elif "codeExecutionResult" in part:
            res = part["codeExecutionResult"]
            label = "" if res["outcome"] == "OUTCOME_OK" else f" ({res['outcome']})"
            print(f"output{label}:\n" + (res["output"].rstrip() or "(none)") + "\n")
        elif "inlineData" in part:
            figure += 1
            if out is None:
                print(f"[chart {figure}: give --out DIR to save it]\n")
                continue
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"chart_{figure}.png"
            path.write_bytes(base64.b64decode(part["inlineData"]["data"]))
            print(f"[chart {figure}: {path}]\n")


def cmd_ask(args: argparse.Namespace) -> int:
    from ..localfiles import read_inputs
    from ..client import Sandbox
    from ..errors import InvalidInputError, SandboxError
    from .loop import Agent

    try:
        files = read_inputs(args.file)
        backend = _backend(args)
        url = args.url or os.environ.get("SANDBOX_URL")
        if url:
            from ..remote import RemoteSandbox  # the server extra's client
            sandbox = RemoteSandbox(url)
        else:
            _say("starting a jail (the first start imports the scientific stack: a few seconds)")
            sandbox = Sandbox(slots=1, image=args.image)
        with sandbox as sb:
            agent = Agent(sb, backend, timeout=args.timeout, max_regenerations=args.max_regenerations,
                          progress=_say)
            transcript = agent.ask(args.question, files)
    except (InvalidInputError, ValueError) as exc:
        _say(str(exc))
        return EXIT_USAGE
    except SandboxError as exc:
        _say(str(exc))
        return EXIT_OTHER
    except Exception as exc:  # the model's client raises its own errors (connection, 4xx/5xx)
        if type(exc).__module__.split(".")[0] not in ("openai", "google", "httpx"):
            raise
        _say(f"the model failed: {type(exc).__name__}: {exc}")
        return EXIT_OTHER
    out = Path(args.out) if args.out else None
    if args.json:
        print(transcript.to_json())
        if out is not None:
            for n, data in enumerate(transcript.images, 1):
                out.mkdir(parents=True, exist_ok=True)
                (out / f"chart_{n}.png").write_bytes(data)
    else:
        _print_transcript(transcript, out)
    return EXIT_GAVE_UP if transcript.gave_up else EXIT_OK
