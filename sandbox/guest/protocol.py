"""Length-prefixed frames: a JSON header followed by raw binary blobs.

Shared by the host and the jail, so it imports only the standard library.
Every byte that comes out of a jail is hostile: sizes are checked against a cap
*before* anything is allocated, and JSON is parsed from a bounded buffer. Never pickle.

Wire format of one frame:

    magic b"SBX1" | u32 header_len | u64 body_len | header (UTF-8 JSON object) | body

The header names the blobs in the body in order (each with its length), so binary
data (input files, PNGs, stdout) travels without base64.

In a header encode() writes, the bytes `,` `:` `[` `{` are JSON's own: inside a string they
are written as JSON's unicode escapes. So counting them (one pass over the bytes) bounds how
many values a header holds before it is parsed; parse_header(max_values=) refuses one with
more, and the host derives that bound from what a genuine frame can hold (host/wire.py).
"""

from __future__ import annotations

import json
import os
import struct

# The vocabulary of the frames between the host and the zygote: every frame after the init
# frame says what it is under OP. Both sides import these names; no op is a literal elsewhere.
OP = "op"
CALL = "call"                  # host -> zygote: a request (a stateless run, or a session's call with "sid")
CANCEL = "cancel"              # host -> zygote: kill the call in flight (its reply says "cancelled")
OPEN = "open"                  # host -> zygote: start session "sid"      -> OPENED {pid} or {error}
CLOSE = "close"                # host -> zygote: end session "sid"        -> CLOSED
OUTPUT = "output"              # zygote -> host: a chunk of live output of the call in flight (+ the bytes)
DISPLAY = "display"            # runner -> zygote (on the result channel, ahead of the result) -> host: one
                               # rich output as it is displayed {main, truncated, items} (+ its values);
                               # only for a request with "live_outputs"
DONE = "done"                  # zygote -> host: the reply to a call (see guest/supervise.build_reply)
SETUP_FAILED = "setup_failed"  # zygote -> host: the child could not be isolated; nothing ran
OPENED = "opened"
CLOSED = "closed"
ERROR = "error"                # zygote -> host: a session op that cannot be done now

# Packages on demand: the host's package cache (its sets, each a directory named by its hash) is
# bound read-only here in every jail; a call's "packages" lists the set directories under it that
# go on sys.path before its code runs (host/packages.py makes them, guest/runner.py uses them).
PACKAGES_MOUNT = "/opt/packages"
PACKAGES = "packages"

# Rich outputs (guest/display.py sends them, host/wire.py checks them): each MIME type a display
# may carry, and the per-request limit that caps one value of it. Text types travel as UTF-8,
# images as their bytes, JSON types as JSON text. A type not listed here is never sent.
CHART_MIME = "application/vnd.sandbox.chart+json"  # a chart's data (type, title, axes, series)
TABLE_MIME = "application/vnd.sandbox.table+json"  # a small DataFrame's columns, {name: [values]}
TEXT_MIMES = ("text/plain", "text/markdown", "text/latex")
OUTPUT_MIME_CAPS = {
    "text/plain": "max_output_text_bytes",
    "text/markdown": "max_output_text_bytes",
    "text/latex": "max_output_text_bytes",
    "text/html": "max_output_html_bytes",
    "image/svg+xml": "max_output_html_bytes",
    "image/png": "max_output_image_bytes",
    "image/jpeg": "max_output_image_bytes",
    "application/json": "max_output_json_bytes",
    "application/vnd.vegalite.v4+json": "max_output_json_bytes",
    "application/vnd.vegalite.v5+json": "max_output_json_bytes",
    "application/vnd.vegalite.v6+json": "max_output_json_bytes",
    "application/vnd.plotly.v1+json": "max_output_json_bytes",
    CHART_MIME: "max_output_json_bytes",
    TABLE_MIME: "max_output_json_bytes",
}
JSON_MIMES = tuple(m for m in OUTPUT_MIME_CAPS if m.endswith("json"))
BINARY_MIMES = ("image/png", "image/jpeg")

MAGIC = b"SBX1"
PREFIX = struct.Struct(">4sIQ")
MAX_HEADER = 4 << 20  # 4 MiB of JSON is far beyond any legitimate header


class ProtocolError(Exception):
    """A frame was malformed, oversized or cut short."""


_encode_string = json.encoder.encode_basestring_ascii


def _string(text: str) -> str:
    out = _encode_string(text)
    if "," in out or ":" in out or "[" in out or "{" in out:
        out = out.replace(",", "\\u002c").replace(":", "\\u003a").replace("[", "\\u005b").replace("{", "\\u007b")
    return out


def _key(key: object) -> str:
    if key is None or isinstance(key, (int, float)):
        return json.dumps(key)  # as json.dumps spells a key that is not a string
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def _refuse(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps(value: object, default=_refuse) -> str:
    """JSON text of `value` (as json.dumps with ensure_ascii, no spaces and no NaN), with `,` `:`
    `[` `{` inside strings written as \\u escapes: these bytes are then structure alone (see
    structure()). json's own C encoder, given this string encoder: as fast as json.dumps.
    `default` turns what JSON cannot hold into what it can (as json.dumps's)."""
    make = json.encoder.c_make_encoder
    if make is None:
        return _dumps_py(value)
    return "".join(make({}, default, _string, None, ":", ",", False, False, False)(value, 0))


def _dumps_py(value: object) -> str:
    """dumps() in Python, where the json module has no C encoder."""
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, dict):
        return "{" + ",".join([_string(k if isinstance(k, str) else _key(k)) + ":" + _dumps_py(v)
                               for k, v in value.items()]) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join([_dumps_py(v) for v in value]) + "]"
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:
        return int.__repr__(value)
    return json.dumps(value)  # a float or an int subclass (json's spelling), or TypeError for what JSON cannot hold


_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b",:[{")


def structure(raw: bytes) -> int:
    """The bytes `,` `:` `[` `{` of a header (one pass, under a nanosecond a byte). In one encode()
    wrote they are all structure, and a JSON text has at most this many values and keys besides
    its first value: every array element follows `[` or `,`, every member's key `{` or `,`, its
    value `:`."""
    return len(raw.translate(None, _NOT_STRUCTURE))


def json_values(raw: bytes) -> int:
    """The values (and keys) a JSON text that dumps() wrote holds, at most: what the host may
    have to build to parse it, counted before it does (max_output_json_values)."""
    return structure(raw) + 1


def encode(header: dict, blobs: list[bytes] = ()) -> bytes:
    head = dumps(header).encode()
    body_len = sum(len(b) for b in blobs)
    return b"".join([PREFIX.pack(MAGIC, len(head), body_len), head, *blobs])


def parse_prefix(prefix: bytes, max_body: int) -> tuple[int, int]:
    """Validate a frame prefix; return (header_len, body_len)."""
    magic, head_len, body_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError("bad frame magic")
    if head_len > MAX_HEADER:
        raise ProtocolError(f"frame header of {head_len} bytes exceeds the cap")
    if body_len > max_body:
        raise ProtocolError(f"frame body of {body_len} bytes exceeds the cap of {max_body}")
    return head_len, body_len


MAX_NUMBER = 24  # characters of a number in a header from a jail (sizes, counts, milliseconds)


def _number(kind: type) -> object:
    def parse(text: str) -> object:
        if len(text) > MAX_NUMBER:
            raise ValueError(f"a number of {len(text)} characters")
        value = kind(text)
        if value in (_INF, -_INF):
            raise ValueError(f"{text} is out of range")
        return value
    return parse


_INF = float("inf")


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


# Made once: json.loads with these as arguments builds a new decoder on every call (a header
# from a jail is parsed on every run).
_BOUNDED = json.JSONDecoder(parse_int=_number(int), parse_float=_number(float), parse_constant=_no_constant)


def parse_header(raw: bytes, max_values: int | None = None) -> dict:
    """The JSON object of a frame's header. With `max_values` (a header from a jail), refused
    before any parse if structure() says it may hold more values than that, and its numbers are
    at most MAX_NUMBER characters (NaN and Infinity refused): parsing it then costs a few
    nanoseconds a byte and a small constant per value, whatever a hostile writer puts in it."""
    if max_values is not None:
        found = structure(raw)
        if found > max_values:
            raise ProtocolError(f"frame header of {len(raw)} bytes has {found} separators and brackets; "
                                f"what can be sent here has at most {max_values}")
    try:
        header = json.loads(raw) if max_values is None else _BOUNDED.decode(str(raw, "utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"frame header is not JSON: {exc}") from None
    except RecursionError:  # hostile nesting: json recurses once per level
        raise ProtocolError("frame header is nested too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    return header


def split_blobs(body: bytes | memoryview, sizes: list) -> list[bytes]:
    """Cut the body into blobs of the given sizes; the sizes must add up exactly."""
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes):
        raise ProtocolError("blob sizes must be non-negative integers")
    if sum(sizes) != len(body):
        raise ProtocolError("blob sizes do not add up to the frame body")
    out, pos = [], 0
    for n in sizes:
        out.append(bytes(body[pos:pos + n]))
        pos += n
    return out


def read_exact(fd: int, n: int) -> bytes:
    """Blocking read of exactly n bytes from fd; ProtocolError on EOF."""
    buf = bytearray(n)
    view = memoryview(buf)
    pos = 0
    while pos < n:
        got = os.readv(fd, [view[pos:]])
        if got == 0:
            raise ProtocolError("stream closed in the middle of a frame" if pos else "stream closed")
        pos += got
    return bytes(buf)


def read_frame(fd: int, max_body: int) -> tuple[dict, bytes]:
    """Blocking read of one frame from fd (used inside the jail, where fds are trusted)."""
    head_len, body_len = parse_prefix(read_exact(fd, PREFIX.size), max_body)
    header = parse_header(read_exact(fd, head_len))
    body = read_exact(fd, body_len) if body_len else b""
    return header, body


def write_all(fd: int, data: bytes | memoryview, _write=os.write) -> None:
    view = memoryview(data)  # os.write bound at import: the user's code may replace it
    while view:
        view = view[_write(fd, view):]
