"""The asyncio twin: the same engine behind `async with AsyncSandbox() as sb: await sb.run(...)`."""

from __future__ import annotations

import asyncio

import pytest

from sandbox import AsyncSandbox, InvalidInputError, Outcome, SandboxClosedError


def test_async_sandbox_runs_and_gathers():
    async def main():
        async with AsyncSandbox(slots=1) as sb:
            r = await sb.run("print(1)")
            assert r.outcome is Outcome.OK and r.stdout == "1\n"

            # Many concurrent awaits on one slot: queued, each gets its own answer.
            codes = [f"import time\ntime.sleep(0.05)\nprint({i} ** 2)" for i in range(6)]
            results = await asyncio.gather(*(sb.run(c) for c in codes))
            assert [r.stdout for r in results] == [f"{i ** 2}\n" for i in range(6)]
            assert all(r.outcome is Outcome.OK for r in results)

            # Keyword arguments pass through: files, timeout, limits, filename.
            r = await sb.run("print(open('in.txt').read().upper())", files={"in.txt": "abc"})
            assert r.stdout == "ABC\n"
            r = await sb.run("import time\ntime.sleep(5)", timeout=1)
            assert r.outcome is Outcome.TIMEOUT
            r = await sb.run("print('x' * 500)", limits={"max_stdout_bytes": 10})
            assert r.stdout_truncated is True
            r = await sb.run("1/0", filename="calc.py")
            assert r.outcome is Outcome.ERROR and 'File "calc.py", line 1' in r.error.traceback

            # Invalid input raises in the awaiting coroutine, and the sandbox stays usable.
            with pytest.raises(InvalidInputError):
                await sb.run("print(1)", files={"../x": "no"})
            assert "numpy" in {k.lower() for k in sb.image_info()["packages"]}

            # The event loop is not blocked while a run is in flight.
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            t = asyncio.create_task(ticker())
            r = await sb.run("import time\ntime.sleep(0.5)\nprint('slow')")
            t.cancel()
            assert r.stdout == "slow\n"
            assert ticks >= 3
        with pytest.raises(SandboxClosedError):
            await sb.run("print(1)")

    asyncio.run(main())


def test_async_run_before_start_raises():
    async def main():
        sb = AsyncSandbox(slots=1)
        with pytest.raises(SandboxClosedError):
            await sb.run("print(1)")
        await sb.close()  # closing a never-started sandbox is harmless

    asyncio.run(main())


def test_async_calls_beyond_the_queue_bound_get_queue_full():
    import asyncio

    from sandbox import AsyncSandbox, Outcome, QueueFullError

    async def main():
        async with AsyncSandbox(slots=1, max_queue=1) as sb:
            calls = [sb.run("import time; time.sleep(1)") for _ in range(4)]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    full = [r for r in results if isinstance(r, QueueFullError)]
    done = [r for r in results if not isinstance(r, BaseException)]
    assert full and done, results  # the bound held, and admitted calls ran
    assert all(r.outcome is Outcome.OK for r in done)
