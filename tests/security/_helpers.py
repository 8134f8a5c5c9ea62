"""Shared helpers for the adversarial suite: run an attack program, describe a result, read its evidence.

Every attack program prints its evidence as one line `EVIDENCE <json>` (flushed at once, so it
survives a later kill), and the tests assert on that evidence *and* on the outcome.
"""

from __future__ import annotations

import json
import textwrap

from sandbox import Outcome

# Prepended to every attack program: a flushed evidence printer and a raw-syscall helper.
PRELUDE = '''
import ctypes as _ct, json as _json, os as _os, sys as _sys
def evidence(**kw):
    _sys.stdout.write("EVIDENCE " + _json.dumps(kw, default=str) + "\\n")
    _sys.stdout.flush()
_libc = _ct.CDLL(None, use_errno=True)
_libc.syscall.restype = _ct.c_long
def raw_syscall(nr, *args):
    """(return value, errno) of a raw syscall; args are passed as C longs."""
    _ct.set_errno(0)
    ret = _libc.syscall(_ct.c_long(nr), *[_ct.c_long(a) for a in args])
    return ret, _ct.get_errno()
def errno_of(fn, *a, **kw):
    """None if fn succeeded, else the errno (or exception name) it failed with."""
    try:
        fn(*a, **kw)
    except OSError as e:
        return e.errno
    except Exception as e:
        return type(e).__name__
    return None
'''


def program(body: str) -> str:
    return PRELUDE + textwrap.dedent(body)


def describe(r) -> str:
    err = None if r.error is None else (r.error.type, r.error.message[:500])
    return (f"outcome={r.outcome.value} exit_code={r.exit_code} error={err}\n"
            f"stdout={r.stdout[-3000:]!r}\nstderr={r.stderr[-3000:]!r}")


def run(sb, body: str, **kw):
    """Run an attack program (PRELUDE + dedented body)."""
    kw.setdefault("timeout", 20)
    return sb.run(program(body), **kw)


def expect(r, *outcomes: Outcome) -> None:
    assert r.outcome in outcomes, describe(r)


def evidence(r) -> list[dict]:
    return [json.loads(line[len("EVIDENCE "):]) for line in r.stdout.splitlines() if line.startswith("EVIDENCE ")]


def one(r) -> dict:
    ev = evidence(r)
    assert len(ev) == 1, describe(r)
    return ev[0]


def assert_alive(sb) -> None:
    """The engine still answers a trivial program with outcome ok."""
    r = sb.run("print(1)", timeout=20)
    assert r.outcome is Outcome.OK and r.stdout == "1\n", describe(r)


def ok(r):
    """The result, asserted ok."""
    assert r.outcome is Outcome.OK, describe(r)
    return r
