"""The fair share of `Places` (server/quotas.py) on its own, with real asyncio tasks: how many places
a key may hold as keys come and go. (The end-to-end form, two keys on a real server, is in
tests/security/test_tenants.py.)"""

from __future__ import annotations

import asyncio

import pytest

from sandbox.server.errors import ApiError
from sandbox.server.quotas import Places


async def _hold(places: Places, key: str, release: asyncio.Event, running: list[str]) -> None:
    async with places.hold(key):
        running.append(key)
        await release.wait()
        running.remove(key)


def test_a_key_alone_holds_every_place_then_its_share_then_all_again():
    async def main() -> None:
        p = Places(4, 32, "calls", share_window=0.3)
        running: list[str] = []
        ends = [asyncio.Event() for _ in range(8)]
        a = [asyncio.create_task(_hold(p, "A", end, running)) for end in ends]
        await asyncio.sleep(0.05)
        assert running.count("A") == 4 and p.queued("A") == 4        # alone: all four places
        b_end = asyncio.Event()
        b = asyncio.create_task(_hold(p, "B", b_end, running))
        await asyncio.sleep(0.05)
        assert running.count("B") == 1                               # within its share at once
        assert p.share("A") == 2 and p.share("B") == 2
        for i, left in ((0, 3), (1, 2), (2, 2)):                      # A gives back what is over its share
            ends[i].set()
            await asyncio.sleep(0.05)
            assert running.count("A") == left, (i, running)
        b_end.set()
        await b
        await asyncio.sleep(0.4)                                      # B's window passes
        assert p.share("A") == 4
        ends[3].set()                                                 # one place given back: A takes all four
        await asyncio.sleep(0.05)
        assert running.count("A") == 4 and p.queued("A") == 0, running
        for end in ends:
            end.set()
        await asyncio.gather(*a)
        assert p.held("A") == 0 and p.queued("A") == 0

    asyncio.run(main())


def test_the_share_never_drops_below_one_place_and_the_waiting_cap_holds():
    async def main() -> None:
        p = Places(2, 1, "calls", share_window=10)
        release, running = asyncio.Event(), []
        tasks = [asyncio.create_task(_hold(p, k, release, running)) for k in "ABC"]
        await asyncio.sleep(0.05)
        assert sorted(running) == ["A", "B", "C"]                    # 2 // 3 keys: still one place each
        waiter = asyncio.create_task(_hold(p, "A", release, running))
        await asyncio.sleep(0.05)
        assert p.queued("A") == 1
        with pytest.raises(ApiError) as refused:
            await _hold(p, "A", release, running)
        assert refused.value.status_code == 429
        release.set()
        await asyncio.gather(*tasks, waiter)

    asyncio.run(main())
