"""Rich outputs inside the jail: `display()`, the objects' `_repr_*_` protocol, and the value of a
program's last expression, as a notebook cell shows them.

Every output is a MIME bundle (`text/plain` always, then whatever the object offers: HTML, markdown,
PNG, JPEG, SVG, LaTeX, JSON, a vega-lite spec, a plotly figure, chart data). A few kinds get more
than their own reprs give:

- a pandas DataFrame (or Series): its `_repr_html_`, and a markdown table cut to a budget of rows,
  columns and characters, with a note of what was left out (for a model's context);
- a PIL image: PNG (`Image.show()` displays it too);
- an altair chart: its vega-lite spec, a PNG rendered here by vl-convert when it is installed, and
  its chart data; `chart.show()` displays it;
- a plotly figure: its JSON, an HTML fragment (plotly.js not included: the viewer brings its own),
  and its chart data; `fig.show()` displays it;
- a matplotlib figure: goes to the figures (a PNG plus its chart data, see chart_of_figure).

Nothing here is trusted by the host: it re-checks every cap and type (host/wire.py). The caps are
applied here too, so a program that displays too much loses the excess, flagged, not the run.
Standard library only: the libraries above are reached through the objects themselves or
sys.modules / importlib, never imported by this module.
"""

from __future__ import annotations

import ast
import base64
import builtins
import importlib
import json
import sys

from . import protocol

MAX_TABLE_ROWS = 20       # the markdown table: head and tail rows kept
MAX_TABLE_COLUMNS = 12    # ...first and last columns kept
MAX_CELL_CHARS = 40       # ...each cell cut to this
MAX_TABLE_CHARS = 6000    # ...and the whole table (about 1,500 tokens)
MAX_REPR_CHARS = 256 << 10
MAX_TABLE_DATA_CELLS = 10_000  # a DataFrame this small also travels as data ({column: [values]})


class Outputs:
    """The outputs of the request in flight, within the request's caps."""

    def __init__(self) -> None:
        self.reset({})

    def reset(self, limits: dict) -> None:
        self.items: list[tuple[bool, bool, list[tuple[str, bytes]]]] = []  # (main, truncated, [(mime, value)])
        self.dropped = 0
        self.total = 0
        self.json_values = 0  # of the JSON values sent so far (protocol.json_values), under max_output_json_values
        self.limits = limits
        self.figure_sink = None  # runner's: takes a matplotlib figure
        self.live = None  # runner's, for a request with live outputs: takes (main, truncated, [(mime, value)])

    def add(self, bundle: dict, main: bool = False) -> None:
        if len(self.items) >= self.limits.get("max_outputs", 0):
            self.dropped += 1
            return
        encoded, truncated, values = [], False, 0
        for mime, value in bundle.items():
            if mime not in protocol.OUTPUT_MIME_CAPS:
                continue  # a type no surface knows (raw=True bundles may carry any)
            cap = self.limits.get(protocol.OUTPUT_MIME_CAPS[mime], 0)
            data = _encode(mime, value)
            if data is None:
                continue
            if mime in protocol.JSON_MIMES and not self._json_room(values + protocol.json_values(data)):
                truncated = True
                continue  # over the run's JSON values: left out, as a value over its bytes is
            if len(data) > cap:
                truncated = True
                if mime not in protocol.TEXT_MIMES:
                    continue  # an image, HTML or JSON cut short is no longer one
                data = data[:cap].decode("utf-8", "ignore").encode()
            if mime in protocol.JSON_MIMES:
                values += protocol.json_values(data)
            encoded.append((mime, data))
        size = sum(len(d) for _, d in encoded)
        if not any(m == "text/plain" for m, _ in encoded) or self.total + size > self.limits.get("max_output_bytes", 0):
            self.dropped += 1
            return
        self.total += size
        self.json_values += values
        self.items.append((main, truncated, encoded))
        if self.live is not None:
            self.live(main, truncated, encoded)

    def _json_room(self, values: int) -> bool:
        return self.json_values + values <= self.limits.get("max_output_json_values", 0)

    def take(self, size: int, json_values: int = 0) -> bool:
        """Room for `size` more bytes under max_output_bytes and `json_values` more JSON values
        under max_output_json_values (taken if there is)."""
        if self.total + size > self.limits.get("max_output_bytes", 0) or not self._json_room(json_values):
            return False
        self.total += size
        self.json_values += json_values
        return True

    def meta_and_blobs(self) -> tuple[list[dict], list[bytes]]:
        meta, blobs = [], []
        for main, truncated, encoded in self.items:
            meta.append({"main": main, "truncated": truncated, "items": [[m, len(d)] for m, d in encoded]})
            blobs += [d for _, d in encoded]
        return meta, blobs


OUTPUTS = Outputs()


def _encode(mime: str, value) -> bytes | None:
    if mime in protocol.BINARY_MIMES:
        if isinstance(value, str):
            try:
                return base64.b64decode(value, validate=False)
            except ValueError:
                return None
        return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else None
    if mime in protocol.JSON_MIMES:
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("utf-8", "replace")
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                return None
        # protocol.dumps: the host counts the values of what it is sent before it parses them
        # (max_output_json_values), which is exact only for this escaping encoder's text.
        try:
            return protocol.dumps(value, default=_json_default).encode()
        except ValueError:  # NaN or infinity somewhere: null, as JSON has no such numbers
            try:
                return protocol.dumps(_finite(json.loads(json.dumps(value, default=_json_default)))).encode()
            except (TypeError, ValueError, RecursionError):
                return None
        except (TypeError, RecursionError):
            return None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    return value.encode("utf-8", "backslashreplace")


def _finite(v):
    if isinstance(v, float):
        return v if v - v == 0 else None
    if isinstance(v, list):
        return [_finite(x) for x in v]
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v


def _json_default(o):
    if hasattr(o, "tolist"):  # numpy arrays and scalars
        return o.tolist()
    if hasattr(o, "isoformat"):
        return o.isoformat()
    return str(o)


def display(*objs, raw: bool = False, include=None, exclude=None, **_ignored) -> None:
    """Show each object as a rich output, as IPython's display() does. With raw=True each object
    is a MIME bundle already ({"image/png": bytes or base64, "text/plain": ...})."""
    for obj in objs:
        publish(obj, raw=raw, include=include, exclude=exclude)


def publish(obj, main: bool = False, raw: bool = False, include=None, exclude=None) -> None:
    if not raw and _is_matplotlib_figure(obj) and OUTPUTS.figure_sink is not None:
        OUTPUTS.figure_sink(obj)
        return
    try:
        bundle = dict(obj) if raw and isinstance(obj, dict) else bundle_of(obj)
    except Exception:  # noqa: BLE001 - a hostile or broken repr must not take the run down
        bundle = {}
    if include:
        bundle = {m: v for m, v in bundle.items() if m in include or m == "text/plain"}
    if exclude:
        bundle = {m: v for m, v in bundle.items() if m not in exclude or m == "text/plain"}
    if not isinstance(bundle.get("text/plain"), str):
        bundle["text/plain"] = _safe_repr(obj) if not raw else ""  # a raw bundle without text has none
    OUTPUTS.add(bundle, main=main)


def _safe_repr(obj) -> str:
    try:
        text = repr(obj)
    except Exception:  # noqa: BLE001
        text = f"<{type(obj).__name__} object>"
    return text[:MAX_REPR_CHARS] if isinstance(text, str) else f"<{type(obj).__name__} object>"


def _module(obj) -> str:
    return getattr(type(obj), "__module__", "") or ""


def _is_matplotlib_figure(obj) -> bool:
    return _module(obj).startswith("matplotlib.figure") and hasattr(obj, "savefig")


REPR_METHODS = (("text/html", "_repr_html_"), ("text/markdown", "_repr_markdown_"), ("image/svg+xml", "_repr_svg_"),
                ("image/png", "_repr_png_"), ("image/jpeg", "_repr_jpeg_"), ("text/latex", "_repr_latex_"),
                ("application/json", "_repr_json_"))


def bundle_of(obj) -> dict:
    """The MIME bundle of one object (text/plain may be missing: the caller adds its repr)."""
    module = _module(obj)
    if (module == "pandas" or module.startswith("pandas.")) and type(obj).__name__ in ("DataFrame", "Series"):
        return _pandas(obj)
    if module.startswith("plotly.") and hasattr(obj, "to_plotly_json"):
        return _plotly(obj)
    if module.startswith("altair.") and hasattr(obj, "to_dict"):
        return _altair(obj)
    if module.startswith("PIL.") and hasattr(obj, "save") and hasattr(obj, "mode"):
        return _pil(obj)
    if isinstance(obj, type):
        return {}  # a class: its _repr_*_ are unbound functions
    bundle: dict = {}
    method = getattr(obj, "_repr_mimebundle_", None)
    if callable(method):
        try:
            got = method(include=None, exclude=None)
        except Exception:  # noqa: BLE001
            got = None
        if isinstance(got, tuple) and got:
            got = got[0]
        if isinstance(got, dict):
            bundle.update({m: v for m, v in got.items() if m in protocol.OUTPUT_MIME_CAPS and v is not None})
    for mime, name in REPR_METHODS:
        if mime in bundle:
            continue
        method = getattr(obj, name, None)
        if not callable(method):
            continue
        try:
            value = method()
        except Exception:  # noqa: BLE001 - e.g. sympy's _repr_png_ without LaTeX
            continue
        if isinstance(value, tuple) and value:  # (data, metadata)
            value = value[0]
        if value is not None:
            bundle[mime] = value
    return bundle


# ---- pandas -------------------------------------------------------------------------------------

def _pandas(obj) -> dict:
    frame = obj.to_frame() if type(obj).__name__ == "Series" else obj
    plain, markdown = tables(frame)
    bundle = {"text/plain": plain if type(obj).__name__ == "DataFrame" else _safe_repr(obj), "text/markdown": markdown}
    if type(obj).__name__ == "DataFrame" and obj.size <= MAX_TABLE_DATA_CELLS and obj.columns.is_unique:
        bundle[protocol.TABLE_MIME] = {str(k): v for k, v in obj.to_dict(orient="list").items()}
    html = getattr(obj, "_repr_html_", None)
    if callable(html):
        value = html()
        if isinstance(value, str):
            bundle["text/html"] = value
    return bundle


def _cut(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 1] + "…"


def _pick(total: int, keep: int) -> list[int]:
    if total <= keep:
        return list(range(total))
    head = (keep + 1) // 2
    return list(range(head)) + list(range(total - (keep - head), total))


def tables(df) -> tuple[str, str]:
    """A DataFrame as an aligned plain-text table and a markdown table, from one pass over at most
    MAX_TABLE_ROWS x MAX_TABLE_COLUMNS cells; what was cut is said in a last line."""
    n_rows, n_cols = df.shape
    rows, cols = _pick(n_rows, MAX_TABLE_ROWS), _pick(n_cols, MAX_TABLE_COLUMNS)
    part = df.iloc[rows, cols]
    header = [""] + [_cut(str(c), MAX_CELL_CHARS) for c in part.columns]
    body = []
    index = list(part.index)
    values = part.to_numpy(dtype=object).tolist() if len(rows) and len(cols) else [[] for _ in rows]
    for i, (label, row) in enumerate(zip(index, values)):
        if i == len(rows) // 2 + len(rows) % 2 and n_rows > len(rows):
            body.append(["…"] * len(header))
        body.append([_cut(str(label), MAX_CELL_CHARS)] + [_cut(str(v), MAX_CELL_CHARS) for v in row])
    if n_cols > len(cols):
        at = (len(cols) + 1) // 2 + 1
        header.insert(at, "…")
        for r in body:
            r.insert(at, "…")
    widths = [max(len(r[j]) for r in [header] + body) for j in range(len(header))]
    plain_lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header] + body]
    md_row = lambda r: "| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"  # noqa: E731
    md_lines = [md_row(header), "|" + "|".join("---" for _ in header) + "|"] + [md_row(r) for r in body]
    note = ""
    if n_rows > len(rows) or n_cols > len(cols):
        note = f"[{n_rows} rows x {n_cols} columns; {n_rows - len(rows)} rows and {n_cols - len(cols)} columns not shown]"
    md, used = [], 0
    for i, line in enumerate(md_lines):
        if used + len(line) > MAX_TABLE_CHARS and i > 2:
            note = f"[{n_rows} rows x {n_cols} columns; cut to {i - 2} rows to fit {MAX_TABLE_CHARS} characters]"
            break
        md.append(line)
        used += len(line) + 1
    if note:
        md.append("")
        md.append(note)
        plain_lines.append(note)
    return "\n".join(plain_lines), "\n".join(md)


# ---- PIL ----------------------------------------------------------------------------------------

def _pil(img) -> dict:
    io = importlib.import_module("io")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return {"image/png": buf.getvalue(), "text/plain": f"<PIL image {img.mode} {img.size[0]}x{img.size[1]}>"}


class _PilViewer:
    """Registered first with PIL.ImageShow: Image.show() displays the image instead of spawning a viewer."""

    format = None
    options: dict = {}

    def show(self, image, **options) -> int:
        display(image)
        return 1


# ---- altair / vega-lite -------------------------------------------------------------------------

def _altair(chart) -> dict:
    spec = chart.to_dict()
    version = str(getattr(sys.modules.get("altair"), "SCHEMA_VERSION", "v5")).split(".")[0]
    mime = f"application/vnd.vegalite.{version}+json"
    if mime not in protocol.OUTPUT_MIME_CAPS:
        mime = "application/vnd.vegalite.v5+json"
    bundle = {mime: spec, "text/plain": f"<altair.{type(chart).__name__}>"}
    try:
        vlc = importlib.import_module("vl_convert")
        bundle["image/png"] = vlc.vegalite_to_png(spec)
    except Exception:  # noqa: BLE001 - no vl-convert in this image, or the spec does not render
        pass
    chart_data = chart_of_vegalite(spec)
    if chart_data is not None:
        bundle[protocol.CHART_MIME] = chart_data
    return bundle


# The fields of a matplotlib chart (e2b-charts' shape) a spec does not give: the same keys, so a
# reader of one shape (E2B's SDK among them) reads every chart.
NO_UNITS = {"x_unit": None, "y_unit": None, "x_ticks": [], "x_tick_labels": [], "y_ticks": [], "y_tick_labels": []}

_MARKS = {"line": "line", "point": "scatter", "circle": "scatter", "square": "scatter", "bar": "bar",
          "arc": "pie", "boxplot": "box_and_whisker", "area": "line", "tick": "scatter"}


def chart_of_vegalite(spec: dict) -> dict | None:
    """A single-view vega-lite spec's chart data, in the shape matplotlib charts have."""
    if not isinstance(spec, dict):
        return None
    mark = spec.get("mark")
    mark = mark.get("type") if isinstance(mark, dict) else mark
    enc = spec.get("encoding") if isinstance(spec.get("encoding"), dict) else {}
    title = spec.get("title")
    title = title.get("text") if isinstance(title, dict) else title
    values = None
    data = spec.get("data") if isinstance(spec.get("data"), dict) else {}
    if isinstance(data.get("values"), list):
        values = data["values"]
    elif isinstance(data.get("name"), str) and isinstance(spec.get("datasets"), dict):
        values = spec["datasets"].get(data["name"])
    field = lambda ch: (enc.get(ch) or {}).get("field") if isinstance(enc.get(ch), dict) else None  # noqa: E731
    label = lambda ch: ((enc.get(ch) or {}).get("title") or field(ch)) if isinstance(enc.get(ch), dict) else None  # noqa: E731
    scale = lambda ch: (((enc.get(ch) or {}).get("scale") or {}).get("type") or "linear") if isinstance(enc.get(ch), dict) else None  # noqa: E731
    kind = _MARKS.get(mark, "unknown")
    chart = {"type": kind, "title": title if isinstance(title, str) else None, "x_label": label("x"),
             "y_label": label("y"), "x_scale": scale("x"), "y_scale": scale("y"), "elements": [],
             "source": "vega-lite", **NO_UNITS}
    x, y, color = field("x"), field("y"), field("color")
    if isinstance(values, list) and x and y:
        series: dict = {}
        for row in values:
            if isinstance(row, dict):
                key = str(row.get(color)) if color else (y or "")
                series.setdefault(key, []).append([row.get(x), row.get(y)])
        if kind == "bar":
            chart["elements"] = [{"label": str(px), "group": g, "value": py} for g, pts in series.items() for px, py in pts]
        else:
            chart["elements"] = [{"label": g, "points": pts} for g, pts in series.items()]
    return chart


# ---- plotly -------------------------------------------------------------------------------------

def _plotly(fig) -> dict:
    spec = fig.to_plotly_json()
    bundle = {"application/vnd.plotly.v1+json": spec, "text/plain": f"<plotly {type(fig).__name__}>"}
    pio = sys.modules.get("plotly.io") or importlib.import_module("plotly.io")
    bundle["text/html"] = pio.to_html(fig, include_plotlyjs=False, full_html=False)
    chart_data = chart_of_plotly(json.loads(json.dumps(spec, default=_json_default)))
    if chart_data is not None:
        bundle[protocol.CHART_MIME] = chart_data
    return bundle


_DTYPES = {"i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I", "i8": "q", "u8": "Q", "f4": "f", "f8": "d"}


def _values(v) -> list:
    """A trace's data array: a list, or plotly's typed array ({"dtype": "f8", "bdata": base64})."""
    if isinstance(v, dict) and isinstance(v.get("bdata"), str) and v.get("dtype") in _DTYPES:
        array = importlib.import_module("array").array(_DTYPES[v["dtype"]])
        raw = base64.b64decode(v["bdata"])
        array.frombytes(raw[:len(raw) - len(raw) % array.itemsize])
        return array.tolist()
    return list(v) if isinstance(v, (list, tuple)) else []


_TRACES = {"scatter": "line", "scattergl": "line", "bar": "bar", "pie": "pie", "box": "box_and_whisker",
           "histogram": "histogram"}


def chart_of_plotly(spec: dict) -> dict | None:
    if not isinstance(spec, dict) or not isinstance(spec.get("data"), list):
        return None
    layout = spec.get("layout") if isinstance(spec.get("layout"), dict) else {}

    def text(v):
        v = v.get("text") if isinstance(v, dict) else v
        return v if isinstance(v, str) else None

    axis = lambda k: layout.get(k) if isinstance(layout.get(k), dict) else {}  # noqa: E731
    traces = [t for t in spec["data"] if isinstance(t, dict)]
    kinds = set()
    elements = []
    for t in traces:
        kind = _TRACES.get(t.get("type", "scatter"), "unknown")
        if kind == "line" and "markers" in str(t.get("mode", "")) and "lines" not in str(t.get("mode", "")):
            kind = "scatter"
        kinds.add(kind)
        name = t.get("name") if isinstance(t.get("name"), str) else ""
        x, y = _values(t.get("x")), _values(t.get("y"))
        if kind == "bar":
            elements += [{"label": str(a), "group": name, "value": b} for a, b in zip(x, y)]
        elif kind == "pie":
            elements += [{"label": str(a), "angle": b, "radius": 1} for a, b in zip(_values(t.get("labels")), _values(t.get("values")))]
        elif kind == "histogram":
            elements.append({"label": name, "values": x or y})
        else:
            elements.append({"label": name, "points": [[a, b] for a, b in zip(x, y)]})
    return {"type": kinds.pop() if len(kinds) == 1 else ("superchart" if kinds else "unknown"),
            "title": text(layout.get("title")), "x_label": text(axis("xaxis").get("title")),
            "y_label": text(axis("yaxis").get("title")), "x_scale": axis("xaxis").get("type") or "linear",
            "y_scale": axis("yaxis").get("type") or "linear", "elements": elements, "source": "plotly", **NO_UNITS}


# ---- matplotlib ---------------------------------------------------------------------------------

def chart_of_figure(fig) -> bytes | None:
    """A matplotlib figure's chart data as JSON (type, title, axes, scales, the plotted data per
    series), by E2B's extractor (the e2b-charts package) where the image has it, so the E2B route
    carries exactly the shape E2B's SDK reads. None when there is none or it fails."""
    module = sys.modules.get("e2b_charts")
    if module is None:
        try:
            module = importlib.import_module("e2b_charts")
        except ImportError:
            return None
    try:
        data = module.chart_figure_to_dict(fig)
        if isinstance(data, dict) and data.get("type") == "superchart" and len(data.get("elements") or []) == 1:
            data = data["elements"][0]  # one axes: the chart itself, as E2B's SDK expects
        return protocol.dumps(data, default=_json_default).encode()
    except Exception:  # noqa: BLE001 - an artist the extractor does not know, NaN data
        return None


# ---- the cell: run the code, show its last expression ---------------------------------------------

def run_cell(code: str, filename: str, namespace: dict) -> None:
    """exec() the code in the namespace; if its last statement is an expression (not ended with
    ';', as a notebook reads it), its value, unless None, becomes the main output."""
    tree = compile(code, filename, "exec", ast.PyCF_ONLY_AST)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not _silenced(code, tree.body[-1]):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, filename, "exec"), namespace)
    if last is not None:
        value = eval(compile(last, filename, "eval"), namespace)
        if value is not None:
            publish(value, main=True)


def _silenced(code: str, node: ast.Expr) -> bool:
    end = getattr(node, "end_lineno", None)
    if end is None:
        return False
    lines = code.splitlines()
    # Column offsets count UTF-8 bytes.
    rest = lines[end - 1].encode()[node.end_col_offset:].decode("utf-8", "ignore") if end - 1 < len(lines) else ""
    return rest.split("#", 1)[0].strip().startswith(";")


ALTAIR_APIS = ("altair.vegalite.v5.api", "altair.vegalite.v6.api", "altair.vegalite.v4.api")


def _show(self, *args, **kwargs) -> None:
    """plotly's and altair's own show(): display the figure."""
    display(self)


def install() -> None:
    """Make display() a builtin and the libraries' own show() calls display, before any request
    (the callers install ipython_shim beside it).
    Idempotent, and a no-op where the zygote did it already: every child calls it (a lean one has
    not had it), and every write to an object shared with the zygote (a reference taken, a class
    changed) dirties a page the child then owns (this walked sys.modules once: about 10 MiB of USS
    per idle session)."""
    if getattr(builtins, "display", None) is not display:
        builtins.display = display
    image_show = sys.modules.get("PIL.ImageShow")
    if image_show is None and "PIL.Image" in sys.modules:
        try:
            image_show = importlib.import_module("PIL.ImageShow")
        except ImportError:
            image_show = None
    if image_show is not None and not any(isinstance(v, _PilViewer) for v in getattr(image_show, "_viewers", [])):
        image_show.register(_PilViewer(), order=-1)
    base = sys.modules.get("plotly.basedatatypes")
    if base is None and "plotly" in sys.modules:
        try:  # plotly imports its figure classes lazily: load the base once, here
            base = importlib.import_module("plotly.basedatatypes")
        except ImportError:
            base = None
    if base is not None and base.BaseFigure.__dict__.get("show") is not _show:
        base.BaseFigure.show = _show
    # By name, never by walking sys.modules: that takes a reference to every module, a write to
    # thousands of pages shared with the zygote that each child would then own.
    api = next(filter(None, map(sys.modules.get, ALTAIR_APIS)), None)
    if api is not None and hasattr(api, "TopLevelMixin") and api.TopLevelMixin.__dict__.get("show") is not _show:
        api.TopLevelMixin.show = _show
