"""The host-side file store behind LibreChat sessions and E2B contexts: ownership, caps, expiry."""

from __future__ import annotations

import pytest

from sandbox.server.errors import ApiError
from sandbox.server.peers.store import PeerStore


def test_spaces_belong_to_their_owner_and_kind():
    store = PeerStore()
    sid, space = store.create("alice", "librechat")
    space.put("a.txt", b"1")
    assert store.get("alice", "librechat", sid) is space
    assert store.get("bob", "librechat", sid) is None
    assert store.get("alice", "e2b", sid) is None
    assert [s for s, _ in store.list("alice", "librechat")] == [sid]
    assert store.list("bob", "librechat") == []
    assert not store.delete("bob", "librechat", sid) and store.delete("alice", "librechat", sid)


def test_a_name_is_stored_once_latest_wins():
    _, space = PeerStore().create("o", "k")
    first = space.put("data.csv", b"old")
    second = space.put("data.csv", b"new")
    assert first != second and list(space.files) == [second]
    assert space.by_name() == {"data.csv": b"new"}


def test_least_recently_used_spaces_go_first_over_the_byte_cap():
    store = PeerStore(max_bytes=100)
    old, s1 = store.create("o", "k")
    s1.put("a", b"x" * 60)
    new, s2 = store.create("o", "k")
    s2.put("b", b"y" * 60)
    store.fit(s2)
    assert store.get("o", "k", old) is None and store.get("o", "k", new) is s2
    s2.put("c", b"z" * 50)
    with pytest.raises(ApiError) as exc:
        store.fit(s2)
    assert exc.value.status_code == 413


def test_idle_spaces_expire():
    store = PeerStore(ttl=0.0)
    sid, _ = store.create("o", "k")
    assert store.get("o", "k", sid) is None


def test_the_number_of_spaces_is_bounded():
    store = PeerStore(max_spaces=3)
    ids = [store.create("o", "k")[0] for _ in range(5)]
    assert [s for s, _ in store.list("o", "k")] == ids[2:]
