"""Live output: on_stdout/on_stderr and AsyncSandbox.stream() get the text while the code runs."""

from __future__ import annotations

import asyncio
import threading
import time

from sandbox import AsyncSandbox, Outcome, Output, Result

from _helpers import run_ok

SLOW = "import sys, time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')\n"


def test_first_chunk_arrives_before_the_run_ends(sb):
    seen: list[tuple[float, str]] = []
    t0 = time.monotonic()
    r = run_ok(sb, SLOW, on_stdout=lambda text: seen.append((time.monotonic(), text)))
    end = time.monotonic()
    assert "".join(t for _, t in seen) == r.stdout == "first\nsecond\n"
    # The first line was delivered while the program was still sleeping.
    assert seen[0][1].startswith("first") and end - seen[0][0] >= 1.0, (t0, seen, end)


def test_streams_keep_their_own_order_and_the_result_holds_the_same_text(sb):
    out, err = [], []
    code = "import sys\nfor i in range(200):\n    print(i, flush=True)\n    print(-i, file=sys.stderr, flush=True)\n"
    r = run_ok(sb, code, on_stdout=out.append, on_stderr=err.append)
    assert "".join(out) == r.stdout == "".join(f"{i}\n" for i in range(200))
    assert "".join(err) == r.stderr == "".join(f"{-i}\n" for i in range(200))


def test_a_character_split_across_chunks_arrives_whole(sb):
    out = []
    code = "import os\ndata = 'é€😀'.encode() * 3000\nfor i in range(0, len(data), 7):\n    os.write(1, data[i:i + 7])\n"
    r = run_ok(sb, code, on_stdout=out.append)
    assert "".join(out) == r.stdout == "é€😀" * 3000 and "\ufffd" not in r.stdout


def test_streaming_stops_at_the_cap_and_the_result_is_flagged(sb):
    out = []
    r = sb.run("print('x' * 5000)\nprint('y' * 5000)", on_stdout=out.append, limits={"max_stdout_bytes": 3000})
    assert r.outcome is Outcome.OK and r.stdout_truncated
    assert "".join(out) == r.stdout and len(r.stdout) == 3000


def test_output_before_a_timeout_is_streamed_and_kept(sb):
    out = []
    r = sb.run("print('before', flush=True)\nwhile True:\n    pass", timeout=1.5, on_stdout=out.append)
    assert r.outcome is Outcome.TIMEOUT
    assert "".join(out) == r.stdout == "before\n"


def test_a_callback_that_raises_does_not_break_the_run_or_the_engine(sb):
    calls = []

    def bad(text: str) -> None:
        calls.append(text)
        raise RuntimeError("the caller's bug")

    err = []
    r = sb.run("import sys\nprint('a', flush=True)\nprint('b', flush=True)\nprint('c', file=sys.stderr)",
               on_stdout=bad, on_stderr=err.append)
    assert r.outcome is Outcome.OK and r.stdout == "a\nb\n"
    assert len(calls) == 1 and "".join(err) == "c\n"  # called once, then no more; stderr unaffected
    assert run_ok(sb, "print(1)").stdout == "1\n"


def test_a_slow_callback_does_not_hold_up_the_run(sb):
    # The zygote's wall clock would stall if it waited for the caller; the callbacks run on
    # their own thread, so a 1 s timeout still ends a run whose callback takes 3 s in total.
    gate = threading.Event()
    r = sb.run("for i in range(3):\n    print(i, flush=True)\nwhile True:\n    pass", timeout=1,
               on_stdout=lambda text: gate.wait(1))
    assert r.outcome is Outcome.TIMEOUT and r.stdout == "0\n1\n2\n"


def test_async_stream_yields_output_then_the_result():
    async def main() -> list:
        async with AsyncSandbox(slots=1) as asb:
            events, stamps = [], []
            async for event in asb.stream(SLOW):
                events.append(event)
                stamps.append(time.monotonic())
            r = await asb.run("print(2)", on_stdout=lambda t: None)
            assert r.stdout == "2\n"
            return events, stamps

    events, stamps = asyncio.run(main())
    assert isinstance(events[-1], Result) and events[-1].outcome is Outcome.OK
    outputs = events[:-1]
    assert outputs and all(isinstance(e, Output) and e.stream == "stdout" for e in outputs)
    assert "".join(e.text for e in outputs) == events[-1].stdout == "first\nsecond\n"
    assert stamps[-1] - stamps[0] >= 1.0  # the first event came well before the result


BYTE_AT_A_TIME = ("import os, time\nt = time.monotonic()\nn = 0\nwhile time.monotonic() - t < 1.0:\n"
                  "    os.write(1, b'x')\n    n += 1\nos.write(2, str(n).encode())\n")


def _coalesced(run) -> None:
    """A program writing one byte at a time for a second reaches the host in few chunks (held up to
    20 ms in the jail, guest/supervise.Live), every byte there and in order. Uncoalesced, each
    byte was a frame the host read and a callback it made: tens of thousands a second."""
    chunks: list[str] = []
    r = run(BYTE_AT_A_TIME, on_stdout=chunks.append)
    assert r.outcome is Outcome.OK, r
    written = int(r.stderr)
    assert "".join(chunks) == r.stdout == "x" * min(written, len(r.stdout)), (len(r.stdout), written)
    assert written > 1000, written
    assert len(chunks) <= 150, f"{len(chunks)} chunks for {written} bytes written one at a time"


def test_live_output_is_coalesced_in_the_jail(sb):
    _coalesced(sb.run)


def test_a_session_s_live_output_is_coalesced_in_the_jail(sb):
    with sb.session() as s:
        _coalesced(s.run)
