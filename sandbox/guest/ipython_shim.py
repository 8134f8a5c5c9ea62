"""A stand-in for IPython's display API, for images without IPython.

Notebook code (and the peers' own tests) write `from IPython.display import display, HTML, Markdown,
Image`. Without IPython that is an ImportError; with it outside a kernel, `display()` only prints a
repr. This module answers those imports with the names of `IPython.display` mapped onto the
sandbox's own display protocol (guest/display.py): each object offers its `_repr_*_` methods and
`display()` publishes it as a rich output.

Its finder sits last on sys.meta_path, so an image that installs the real IPython gets the real
one. Modules served: `IPython`, `IPython.display`, `IPython.core`, `IPython.core.display`,
`IPython.core.display_functions`, `IPython.core.getipython`. `get_ipython()` is None (there is no
interactive shell) and the version reported is 9.0, so libraries that look at IPython take their
"no shell" path. Standard library only.
"""

from __future__ import annotations

import base64
import importlib.machinery
import json
import os
import sys

from . import display as _display

SHIM_VERSION = (9, 0, 0, "")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8"


def get_ipython():
    """No interactive shell runs here."""
    return None


# ---- display functions ---------------------------------------------------------------------------

class DisplayHandle:
    """What display(..., display_id=...) returns; an update shows the object again (no output here
    is replaced in place)."""

    def __init__(self, display_id=None):
        self.display_id = display_id

    def display(self, obj, **kwargs):
        display(obj, **kwargs)

    def update(self, obj, **kwargs):
        display(obj, **kwargs)

    def __repr__(self):
        return f"<DisplayHandle display_id={self.display_id}>"


def display(*objs, include=None, exclude=None, metadata=None, transient=None, display_id=None, raw=False,
            clear=False, **kwargs):
    """Show each object as a rich output (IPython's signature; `metadata`, `transient`, `clear` have
    no effect here)."""
    _display.display(*objs, raw=raw, include=include, exclude=exclude)
    if display_id:
        return DisplayHandle(None if display_id is True else display_id)
    return None


def update_display(obj, *, display_id, **kwargs):
    display(obj, **kwargs)


def clear_output(wait=False):
    """Outputs already published stay (there is no live view to clear)."""


def _display_as(mime, objs, raw, metadata=None):
    for obj in objs:
        if raw:
            _display.display({mime: obj, "text/plain": ""}, raw=True)
        else:
            _display.display(obj, include=[mime])


def display_pretty(*objs, raw=False, metadata=None):
    for obj in objs:
        _display.display({"text/plain": obj} if raw else {"text/plain": _display._safe_repr(obj)}, raw=True)


def _display_function(name, mime, doc=None):
    """IPython's `display_<kind>(*objs, raw=False, metadata=None)`: show only each object's `mime` data
    (with raw=True each object is that data already); `metadata` has no effect here."""

    def show(*objs, raw=False, metadata=None):
        _display_as(mime, objs, raw)

    show.__name__ = show.__qualname__ = name
    show.__doc__ = doc or f"Show each object's {mime} (raw=True: each object is that data already)."
    return show


display_html = _display_function("display_html", "text/html")
display_markdown = _display_function("display_markdown", "text/markdown")
display_svg = _display_function("display_svg", "image/svg+xml")
display_png = _display_function("display_png", "image/png")
display_jpeg = _display_function("display_jpeg", "image/jpeg")
display_latex = _display_function("display_latex", "text/latex")
display_json = _display_function("display_json", "application/json")
display_javascript = _display_function("display_javascript", "text/plain",
                                       "JavaScript is not a kind of output here: only its text/plain goes.")


# ---- display objects -----------------------------------------------------------------------------

class DisplayObject:
    """Data to show, given as `data`, a `filename` to read it from, or a `url` (never fetched here:
    the sandbox has no network)."""

    _read_binary = False

    def __init__(self, data=None, url=None, filename=None, metadata=None):
        if isinstance(data, str) and filename is None and url is None:
            if data.startswith(("http://", "https://")):
                url, data = data, None
            elif len(data) < 4096 and "\n" not in data and os.path.isfile(data):
                filename, data = data, None
        self.data = data
        self.url = url
        self.filename = filename
        self.metadata = metadata or {}
        if filename is not None and data is None:
            with open(filename, "rb" if self._read_binary else "r") as f:
                self.data = f.read()

    def __repr__(self):
        return f"<IPython.core.display.{type(self).__name__} object>"

    def _text(self):
        """The data as text (bytes decoded as UTF-8), or None when it is neither."""
        if isinstance(self.data, bytes):
            return self.data.decode("utf-8", "replace")
        return self.data if isinstance(self.data, str) else None


# The text kinds: each shows its data, as text, under its own `_repr_*_` method.

class TextDisplayObject(DisplayObject):
    """IPython's base of the text kinds."""


class Pretty(TextDisplayObject):
    def __repr__(self):
        return self._text() or ""


class HTML(TextDisplayObject):
    _repr_html_ = __html__ = DisplayObject._text


class Markdown(TextDisplayObject):
    _repr_markdown_ = DisplayObject._text


class Latex(TextDisplayObject):
    _repr_latex_ = DisplayObject._text


class Math(TextDisplayObject):
    def _repr_latex_(self):
        text = (self._text() or "").strip("$")
        return f"$\\displaystyle {text}$"


class SVG(DisplayObject):
    _read_binary = True
    _repr_svg_ = DisplayObject._text


class Code(TextDisplayObject):
    def __init__(self, data=None, url=None, filename=None, language=None):
        self.language = language
        super().__init__(data=data, url=url, filename=filename)

    def _repr_markdown_(self):
        text = self._text()
        return None if text is None else f"```{self.language or ''}\n{text}\n```"

    def __repr__(self):
        return self._text() or ""


class JSON(DisplayObject):
    def __init__(self, data=None, url=None, filename=None, expanded=False, metadata=None, root="root", **kwargs):
        super().__init__(data=data, url=url, filename=filename, metadata=metadata)
        if isinstance(self.data, (str, bytes)):
            self.data = json.loads(self.data)

    def _repr_json_(self):
        return self.data


class Javascript(TextDisplayObject):
    """Not shown as JavaScript here (no browser runs it): its repr is all that goes."""

    def __init__(self, data=None, url=None, filename=None, lib=None, css=None):
        super().__init__(data=data, url=url, filename=filename)


class Image(DisplayObject):
    """A PNG or JPEG from bytes, a file or base64 text; a URL-only image is an HTML <img>."""

    _read_binary = True

    def __init__(self, data=None, url=None, filename=None, format=None, embed=None, width=None, height=None,
                 retina=False, unconfined=False, metadata=None, alt=None):
        if isinstance(data, bytes) and filename is None and url is None:
            super().__init__(data=None, metadata=metadata)
            self.data = data
        else:
            super().__init__(data=data, url=url, filename=filename, metadata=metadata)
        if isinstance(self.data, str):  # base64 text, as IPython accepts it
            try:
                self.data = base64.b64decode(self.data, validate=False)
            except ValueError:
                self.data = None
        self.width, self.height, self.alt = width, height, alt
        self.embed = embed if embed is not None else self.data is not None
        name = (filename or url or "").lower()
        if format is None:
            if name.endswith((".jpg", ".jpeg")) or (self.data or b"").startswith(JPEG_SIGNATURE):
                format = "jpeg"
            elif name.endswith(".png") or (self.data or b"").startswith(PNG_SIGNATURE):
                format = "png"
        self.format = "jpeg" if format == "jpg" else format

    def _repr_png_(self):
        return self.data if self.embed and self.format == "png" else None

    def _repr_jpeg_(self):
        return self.data if self.embed and self.format == "jpeg" else None

    def _repr_html_(self):
        if self.embed or not self.url:
            return None
        size = "".join(f' {k}="{v}"' for k, v in (("width", self.width), ("height", self.height)) if v)
        return f'<img src="{_escape(self.url)}"{size}/>'


def _escape(text):
    return str(text).replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


# ---- the modules ---------------------------------------------------------------------------------

DISPLAY_NAMES = ("display", "update_display", "clear_output", "DisplayHandle", "display_pretty", "display_html",
                 "display_markdown", "display_svg", "display_png", "display_jpeg", "display_latex", "display_json",
                 "display_javascript", "DisplayObject", "TextDisplayObject", "Pretty", "HTML", "Markdown", "Latex",
                 "Math", "SVG", "Code", "JSON", "Javascript", "Image")
MODULES = {
    "IPython": ("get_ipython",),
    "IPython.core": (),
    "IPython.display": DISPLAY_NAMES,
    "IPython.core.display": DISPLAY_NAMES,
    "IPython.core.display_functions": ("display", "update_display", "clear_output", "DisplayHandle"),
    "IPython.core.getipython": ("get_ipython",),
}


class _Loader:  # a loader by its methods alone (importlib.abc is a costly import: preload.FigureHook)
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        here = globals()
        for name in MODULES[module.__name__]:
            setattr(module, name, here[name])
        if module.__name__ == "IPython":
            module.version_info = SHIM_VERSION
            module.__version__ = "9.0.0"
            module.__doc__ = "The sandbox's stand-in for IPython's display API (guest/ipython_shim.py)."


class Finder:
    """Finds the modules above when nothing before it on sys.meta_path did (no real IPython)."""

    def find_spec(self, name, path=None, target=None):
        if name not in MODULES:
            return None
        package = name in ("IPython", "IPython.core")
        return importlib.machinery.ModuleSpec(name, _Loader(), is_package=package)


def install():
    if not any(isinstance(f, Finder) for f in sys.meta_path):
        sys.meta_path.append(Finder())
