"""Typed results of an execution: what `Sandbox.run()` returns and `--json` prints."""

from __future__ import annotations

import base64
import enum
import json
from dataclasses import dataclass, field
from typing import Any

from .guest.protocol import BINARY_MIMES, CHART_MIME, OUTPUT_MIME_CAPS, TABLE_MIME


class Outcome(str, enum.Enum):
    """How an execution ended. A closed set, derived from the engine's own observations."""

    OK = "ok"
    ERROR = "error"                        # uncaught exception or non-zero exit
    TIMEOUT = "timeout"                    # wall clock ran out
    MEMORY_LIMIT = "memory_limit"          # the cgroup's OOM killer fired
    CPU_LIMIT = "cpu_limit"                # RLIMIT_CPU used up
    POLICY_VIOLATION = "policy_violation"  # killed by the seccomp filter
    CRASHED = "crashed"                    # killed by another signal (SIGSEGV, SIGABRT, ...)
    SANDBOX_ERROR = "sandbox_error"        # engine fault; the caller may retry

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ExecError:
    """An uncaught exception in the user's code. `line` is in the user's source."""

    type: str
    message: str
    line: int | None
    traceback: str


@dataclass(frozen=True)
class Figure:
    """A matplotlib figure rendered to PNG, with its chart data (type, title, axes, scales and the
    plotted data per series: see DisplayOutput.chart) when the figure's artists could be read."""

    name: str
    mime_type: str
    width: int
    height: int
    data: bytes = field(repr=False)
    chart: dict | None = field(default=None, repr=False)


Image = Figure  # the name before 0.2; kept so existing imports work


@dataclass(frozen=True)
class File:
    """A file the code created or changed in its working directory."""

    path: str
    mime_type: str
    size: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Usage:
    wall_ms: float
    cpu_ms: float
    peak_memory_bytes: int
    packages_ms: float = 0.0  # time spent getting the call's package set (a first use: resolve, download, unpack)


@dataclass(frozen=True)
class Output:
    """A chunk of live output: text the program wrote to `stream` ("stdout" or "stderr")."""

    stream: str
    text: str




@dataclass(frozen=True)
class DisplayOutput:
    """A rich output, as a notebook shows it: what `display(obj)` showed, or the value of the
    program's last expression (`main=True`). `data` is a MIME bundle: "text/plain" always, then
    any of "text/html", "text/markdown", "text/latex", "image/svg+xml" (str), "image/png",
    "image/jpeg" (bytes), "application/json", "application/vnd.vegalite.v5+json",
    "application/vnd.plotly.v1+json" and CHART_MIME (parsed JSON). `truncated`: a value was over
    its cap (policies/default.toml, max_output_*), so a text was cut or a value left out.
    HTML and SVG are the program's: untrusted, never to be shown same-origin with anything."""

    data: dict[str, Any] = field(repr=False)
    main: bool = False
    truncated: bool = False

    def __repr__(self) -> str:
        return f"DisplayOutput(mime={sorted(self.data)}, main={self.main}, truncated={self.truncated})"

    @property
    def text(self) -> str:
        return self.data.get("text/plain", "")

    @property
    def html(self) -> str | None:
        return self.data.get("text/html")

    @property
    def markdown(self) -> str | None:
        return self.data.get("text/markdown")

    @property
    def png(self) -> bytes | None:
        return self.data.get("image/png")

    @property
    def jpeg(self) -> bytes | None:
        return self.data.get("image/jpeg")

    @property
    def svg(self) -> str | None:
        return self.data.get("image/svg+xml")

    @property
    def latex(self) -> str | None:
        return self.data.get("text/latex")

    @property
    def json(self) -> Any:
        return self.data.get("application/json")

    @property
    def chart(self) -> dict | None:
        return self.data.get(CHART_MIME)

    @property
    def table(self) -> dict | None:
        """A DataFrame's columns as {name: [values]} (small frames only; E2B's `data`)."""
        return self.data.get(TABLE_MIME)

    @property
    def vegalite(self) -> dict | None:
        return next((v for m, v in self.data.items() if m.startswith("application/vnd.vegalite.")), None)

    @property
    def plotly(self) -> dict | None:
        return self.data.get("application/vnd.plotly.v1+json")

    def to_dict(self) -> dict[str, Any]:
        return {"main": self.main, "truncated": self.truncated,
                "data": {m: base64.b64encode(v).decode() if m in BINARY_MIMES else v for m, v in self.data.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DisplayOutput:
        data = d["data"]
        if not isinstance(data, dict) or not isinstance(data.get("text/plain"), str) \
                or not all(m in OUTPUT_MIME_CAPS for m in data):
            raise ValueError("output data must be a MIME bundle of known types with text/plain")
        return cls(data={m: base64.b64decode(v) if m in BINARY_MIMES else v for m, v in data.items()},
                   main=bool(d.get("main")), truncated=bool(d.get("truncated")))


Rich = DisplayOutput  # a short name

# The file name ending of each MIME type when outputs are written as files (`sandbox run --out`,
# LibreChat's files): output_<n>.<ending>.
FILE_ENDINGS = {"text/plain": "txt", "text/markdown": "md", "text/latex": "tex", "text/html": "html",
                "image/svg+xml": "svg", "image/png": "png", "image/jpeg": "jpg", "application/json": "json",
                "application/vnd.vegalite.v4+json": "vl.json", "application/vnd.vegalite.v5+json": "vl.json",
                "application/vnd.vegalite.v6+json": "vl.json", "application/vnd.plotly.v1+json": "plotly.json",
                CHART_MIME: "chart.json", TABLE_MIME: "table.json"}


@dataclass(frozen=True)
class Result:
    """Everything one execution produced."""

    outcome: Outcome
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    error: ExecError | None
    exit_code: int | None
    images: list[Figure]
    files: list[File]
    usage: Usage
    outputs: list[DisplayOutput] = field(default_factory=list)  # display() and the last expression, in order
    outputs_dropped: int = 0  # rich outputs left out: over max_outputs or max_output_bytes

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def main(self) -> DisplayOutput | None:
        """The last expression's value, as a notebook cell shows it (None if there was none)."""
        return next((o for o in reversed(self.outputs) if o.main), None)

    @property
    def charts(self) -> list[dict]:
        """The data of every chart: matplotlib (and seaborn) figures, then altair and plotly outputs."""
        return [f.chart for f in self.images if f.chart] + [o.chart for o in self.outputs if o.chart]

    def to_dict(self) -> dict[str, Any]:
        """The JSON result document (the keys are a stable contract)."""
        return {
            "outcome": self.outcome.value,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
            "error": None if self.error is None else {
                "type": self.error.type, "message": self.error.message,
                "line": self.error.line, "traceback": self.error.traceback,
            },
            "exit_code": self.exit_code,
            "images": [{"name": i.name, "mime_type": i.mime_type, "width": i.width, "height": i.height,
                        "data_base64": base64.b64encode(i.data).decode(), "chart": i.chart} for i in self.images],
            "files": [{"path": f.path, "mime_type": f.mime_type, "size": f.size,
                       "data_base64": base64.b64encode(f.data).decode()} for f in self.files],
            "usage": {"wall_ms": self.usage.wall_ms, "cpu_ms": self.usage.cpu_ms,
                      "peak_memory_bytes": self.usage.peak_memory_bytes, "packages_ms": self.usage.packages_ms},
            "outputs": [o.to_dict() for o in self.outputs],
            "outputs_dropped": self.outputs_dropped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        """The inverse of to_dict() (for a result that crossed the network); KeyError/ValueError if malformed."""
        e, u = d["error"], d["usage"]
        return cls(
            outcome=Outcome(d["outcome"]), stdout=d["stdout"], stderr=d["stderr"],
            stdout_truncated=bool(d["stdout_truncated"]), stderr_truncated=bool(d["stderr_truncated"]),
            error=None if e is None else ExecError(e["type"], e["message"], e["line"], e["traceback"]),
            exit_code=d["exit_code"],
            images=[Figure(i["name"], i["mime_type"], i["width"], i["height"], base64.b64decode(i["data_base64"]),
                           i.get("chart") if isinstance(i.get("chart"), dict) else None) for i in d["images"]],
            files=[File(f["path"], f["mime_type"], f["size"], base64.b64decode(f["data_base64"])) for f in d["files"]],
            usage=Usage(u["wall_ms"], u["cpu_ms"], u["peak_memory_bytes"], float(u.get("packages_ms") or 0.0)),
            outputs=[DisplayOutput.from_dict(o) for o in d.get("outputs") or []],
            outputs_dropped=int(d.get("outputs_dropped") or 0),
        )

    def output_files(self, text: bool = True, charts: bool = True) -> list[tuple[str, bytes]]:
        """The rich outputs and the figures' chart data as (file name, bytes): output_<n>.<ending>
        per MIME type of output n (1-based; `text=False` leaves out text/plain), and
        figure_<n>.chart.json beside each figure's PNG (unless `charts=False`)."""
        out: list[tuple[str, bytes]] = []
        for n, o in enumerate(self.outputs, 1):
            for mime, value in o.data.items():
                if mime == "text/plain" and not text:
                    continue
                data = value if isinstance(value, bytes) else value.encode() if isinstance(value, str) \
                    else json.dumps(value).encode()
                out.append((f"output_{n}.{FILE_ENDINGS.get(mime, 'bin')}", data))
        if charts:
            out += [(i.name.removesuffix(".png") + ".chart.json", json.dumps(i.chart).encode())
                    for i in self.images if i.chart]
        return out

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)
