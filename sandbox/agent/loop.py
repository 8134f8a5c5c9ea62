"""The iterative model loop: the model writes Python, the sandbox runs it, the result goes back to
the model, until the model answers in plain text.

Rules (Gemini's code-execution tool, for any model):
- each run gets at most `timeout` seconds (30 by default) and the input files in its working
  directory; files a run writes are given to the later runs too (each run is a fresh process);
- the model reads the output, a failure summary (traceback, or the limit that stopped the run) and,
  where its backend accepts images, every figure;
- after a failed run the model may regenerate its code, at most `max_regenerations` times in a row
  (5 by default); one more failure ends the loop with a final answer saying it gave up. A successful
  run resets the count. `max_runs` bounds the runs of one question all the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..compat.gemini import executable_code_part, result_parts
from ..compat.text import run_report
from ..errors import InvalidInputError
from ..results import Outcome, Result
from ..types import Runner

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_REGENERATIONS = 5
DEFAULT_MAX_RUNS = 20

TOOL_NAME = "run_python"
LIBRARIES = ("altair, chess, cv2, matplotlib, mpmath, numpy, pandas, pdfminer, reportlab, seaborn, sklearn, "
             "statsmodels, striprtf, sympy, tabulate, scipy")


def tool_description(timeout: float = DEFAULT_TIMEOUT) -> str:
    """What the model is told about the tool: the environment it runs in."""
    return (f"Run Python 3 code in an isolated sandbox and return its output. Available libraries: {LIBRARIES} "
            f"(no installs, no network). Each run is a fresh process limited to {timeout:g} s; print what you "
            "need to see. Input files are in the working directory. matplotlib figures (plt.show() or left "
            "open) are returned as PNG images.")


TOOL_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"code": {"type": "string", "description": "The Python program to run."}},
    "required": ["code"],
}


IMAGE_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif",
               b"RIFF": "image/webp"}


@dataclass(frozen=True)
class Prompt:
    """The question, and the input images a model that accepts images is shown with it."""

    text: str
    images: tuple[tuple[str, str, bytes], ...] = ()  # (name, mime type, bytes)

    @classmethod
    def of(cls, text: str, files: Mapping[str, bytes]) -> Prompt:
        images = []
        for name, data in files.items():
            mime = next((m for sig, m in IMAGE_TYPES.items() if data.startswith(sig)), None)
            if mime == "image/webp" and data[8:12] != b"WEBP":
                mime = None
            if mime is not None:
                images.append((name, mime, data))
        return cls(text, tuple(images))


@dataclass(frozen=True)
class Reply:
    """One model turn: text, and the code it asks to run (None: this is the final answer).
    `raw` is the backend's own record of the turn, replayed to it verbatim."""

    text: str = ""
    code: str | None = None
    call_id: str | None = None
    error: str | None = None  # the model called the tool but its arguments were unusable
    raw: Any = None


@dataclass(frozen=True)
class Step:
    """A model turn that asked for a run, and what came of it."""

    reply: Reply
    result: Result | None  # None when nothing ran (unusable arguments)
    report: str            # the text the model is given back
    images: bool           # whether the backend is sent the figures


class Backend(Protocol):
    """A model. `reply()` gets the whole conversation each time (backends keep no state)."""

    accepts_images: bool

    def reply(self, system: str, prompt: Prompt, steps: list[Step]) -> Reply: ...


@dataclass
class Transcript:
    """A question's whole run: Gemini-shaped parts in order, plus the raw results."""

    prompt: str
    parts: list[dict[str, Any]] = field(default_factory=list)
    runs: list[tuple[str, Result | None]] = field(default_factory=list)
    answer: str = ""
    gave_up: bool = False

    @property
    def images(self) -> list[bytes]:
        return [img.data for _, r in self.runs if r is not None for img in r.images]

    def to_gemini_response(self) -> dict[str, Any]:
        """The transcript as a `GenerateContentResponse` REST document."""
        return {"candidates": [{"content": {"role": "model", "parts": self.parts}, "finishReason": "STOP",
                                "index": 0}]}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_gemini_response(), **kwargs)


PREVIEW_LINES, PREVIEW_CHARS = 5, 600


def _preview(data: bytes) -> str | None:
    """The first lines of a text file (so the model sees a CSV's header), or None for binary data."""
    head = data[:PREVIEW_CHARS * 4]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of the slice
            return None
        text = head[:exc.start].decode("utf-8")
    if "\0" in text:
        return None
    return "\n".join(text.splitlines()[:PREVIEW_LINES])[:PREVIEW_CHARS]


def system_prompt(files: Mapping[str, bytes], timeout: float) -> str:
    text = ("You answer questions by writing Python and running it with the run_python tool when computing, "
            "analysing data or plotting helps. Read each result; if the code failed, fix it and run it again. "
            "When you have the answer, reply with plain text and no tool call.\n" + tool_description(timeout))
    if files:
        text += "\nFiles in the working directory:"
        for name, data in files.items():
            text += f"\n- {name} ({len(data)} bytes)"
            preview = _preview(data)
            if preview:
                text += ", first lines:\n" + "\n".join("    " + ln for ln in preview.splitlines())
    return text


def feedback(result: Result, images_sent: bool) -> str:
    """The text a model reads after a run: outcome, output, failure summary, figures."""
    text = f"outcome: {result.outcome.value}\n" + (run_report(result) or "(no output)\n")
    if result.images:
        names = ", ".join(f"{i.name} ({i.width}x{i.height})" for i in result.images)
        text += f"figures: {names}" + (" (attached)" if images_sent else " (not shown: this model takes no images)")
        text += "\n"
    if result.files:
        text += "files written: " + ", ".join(f.path for f in result.files) + "\n"
    for output in result.outputs:  # display() and the last expression, as a notebook shows them
        shown = output.markdown or output.text
        cut = shown if len(shown) <= OUTPUT_CHARS else shown[:OUTPUT_CHARS] + "\n[cut]"
        text += f"{'value of the last expression' if output.main else 'displayed'}:\n{cut}\n"
    return text


OUTPUT_CHARS = 4000


def _failed(result: Result | None) -> bool:
    return result is None or result.outcome is not Outcome.OK


class Agent:
    """Runs questions through a model backend and a sandbox.

    >>> Agent(Sandbox(slots=1), OpenAIChatBackend("http://127.0.0.1:8000/v1")).ask("sum of the first 50 primes?")
    """

    def __init__(self, sandbox: Runner, backend: Backend, *, timeout: float = DEFAULT_TIMEOUT,
                 max_regenerations: int = DEFAULT_MAX_REGENERATIONS, max_runs: int = DEFAULT_MAX_RUNS,
                 progress: Callable[[str], None] | None = None) -> None:
        if max_regenerations < 0 or max_runs < 1 or timeout <= 0:
            raise ValueError("max_regenerations must be >= 0, max_runs >= 1 and timeout > 0")
        self.sandbox, self.backend = sandbox, backend
        self.timeout, self.max_regenerations, self.max_runs = timeout, max_regenerations, max_runs
        self._progress = progress or (lambda msg: None)

    def ask(self, prompt: str, files: Mapping[str, bytes] | None = None) -> Transcript:
        workspace = dict(files or {})
        system = system_prompt(workspace, self.timeout)
        transcript = Transcript(prompt)
        question = Prompt.of(prompt, workspace)
        steps: list[Step] = []
        failures = 0
        while True:
            self._progress(f"asking the model ({len(steps) + 1})")
            reply = self.backend.reply(system, question, steps)
            if reply.text:
                transcript.parts.append({"text": reply.text})
            if reply.code is None and reply.error is None:
                transcript.answer = reply.text
                return transcript
            if len(transcript.runs) >= self.max_runs:
                return self._give_up(transcript, f"it asked for more than {self.max_runs} runs")
            result, refused = None, reply.error
            if refused is None:
                code = reply.code or ""
                self._progress(f"running code ({len(transcript.runs) + 1})")
                try:
                    result = self.sandbox.run(code, workspace, timeout=self.timeout)
                except InvalidInputError as exc:  # e.g. code over the size limit: the model can fix it
                    refused = f"the sandbox refused it: {exc}"
            if result is None:
                report = f"outcome: error\nthe tool call was not run: {refused}\n"
                transcript.runs.append((reply.code or "", None))
            else:
                transcript.runs.append((code, result))
                transcript.parts.append(executable_code_part(code, reply.call_id))
                transcript.parts.extend(result_parts(result, reply.call_id))
                workspace.update({f.path: f.data for f in result.files})
                report = feedback(result, self.backend.accepts_images)
            steps.append(Step(reply, result, report, self.backend.accepts_images))
            failures = failures + 1 if _failed(result) else 0
            if failures > self.max_regenerations:
                why = (f"its code failed {failures} times in a row"
                       + (f" (last: {result.outcome.value})" if result is not None else ""))
                return self._give_up(transcript, why)

    def _give_up(self, transcript: Transcript, why: str) -> Transcript:
        last = next((r for _, r in reversed(transcript.runs) if r is not None), None)
        detail = ""
        if last is not None and last.outcome is not Outcome.OK:
            detail = "\nThe last error was:\n" + run_report(last).strip()[-2000:]
        transcript.answer = f"I gave up: {why}, so I have no answer.{detail}"
        transcript.parts.append({"text": transcript.answer})
        transcript.gave_up = True
        return transcript
