"""Files kept host-side between runs for the peers that have sessions (LibreChat's sessions, E2B's
contexts): bytes in memory, owned by the API key that made them, capped per key and per server,
expired when idle. One key's spaces never push out another key's while that key is within its share.

The variables of a LibreChat session live in the engine session its space names (`Space.session`).
"""

from __future__ import annotations

import mimetypes
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from fastapi import Request

from ..errors import ApiError


def new_id() -> str:
    """21 URL-safe characters (the shape LibreChat checks its ids against)."""
    return secrets.token_urlsafe(16)[:21]


@dataclass
class StoredFile:
    name: str
    data: bytes
    mtime: float

    @property
    def content_type(self) -> str:
        return mimetypes.guess_type(self.name)[0] or "application/octet-stream"


@dataclass
class Space:
    """One session or context: its files by id, and how many runs it has had."""

    files: dict[str, StoredFile] = field(default_factory=dict)
    runs: int = 0
    session: str | None = None      # the engine session that runs this space's code (LibreChat), once it ran
    tag: tuple = ()                 # what a peer finds the space again by (LibreChat: user_id, entity_id)
    used: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return sum(len(f.data) for f in self.files.values())

    def by_name(self) -> dict[str, bytes]:
        """name -> bytes, the latest file of each name winning."""
        return {f.name: f.data for f in sorted(self.files.values(), key=lambda f: f.mtime)}

    def put(self, name: str, data: bytes) -> str:
        """Store `data` as `name`, replacing a file of the same name; its id."""
        for fid, f in list(self.files.items()):
            if f.name == name:
                del self.files[fid]
        fid = new_id()
        self.files[fid] = StoredFile(name, data, time.time())
        return fid


class PeerStore:
    """Spaces keyed by (owner, kind, id), with a share per key: a key keeps at most `spaces_per_key`
    spaces and `bytes_per_key` bytes, and past either its own least recently used spaces go (never
    another key's). The server-wide caps (`max_spaces`, `max_bytes`) evict from the key that holds the
    most. A space idle past `ttl` is dropped."""

    def __init__(self, max_bytes: int = 512 << 20, max_spaces: int = 10_000, ttl: float = 24 * 3600, *,
                 bytes_per_key: int = 64 << 20, spaces_per_key: int = 256) -> None:
        self.max_bytes, self.max_spaces, self.ttl = max_bytes, max_spaces, ttl
        self.bytes_per_key, self.spaces_per_key = bytes_per_key, spaces_per_key
        self._spaces: OrderedDict[tuple[str, str, str], Space] = OrderedDict()
        self._owned: dict[str, OrderedDict[tuple[str, str, str], Space]] = {}   # the same, per owner

    def create(self, owner: str, kind: str) -> tuple[str, Space]:
        self._expire()
        sid = new_id()
        key = (owner, kind, sid)
        space = self._spaces[key] = Space()
        self._owned.setdefault(owner, OrderedDict())[key] = space
        mine = self._owned[owner]
        while len(mine) > self.spaces_per_key:
            self._drop(next(iter(mine)))
        while len(self._spaces) > self.max_spaces:
            self._drop(next(iter(self._largest(lambda o: len(self._owned[o]), keep=space))))
        return sid, space

    def get(self, owner: str, kind: str, sid: str) -> Space | None:
        """The space, or None if it does not exist or belongs to another key."""
        self._expire()
        key = (owner, kind, sid)
        space = self._spaces.get(key)
        if space is not None:
            space.used = time.monotonic()
            self._spaces.move_to_end(key)
            self._owned[owner].move_to_end(key)
        return space

    def list(self, owner: str, kind: str) -> list[tuple[str, Space]]:
        self._expire()
        return [(sid, s) for (_, k, sid), s in self._owned.get(owner, {}).items() if k == kind]

    def delete(self, owner: str, kind: str, sid: str) -> bool:
        return self._drop((owner, kind, sid))

    def fit(self, keep: Space) -> None:
        """Drop least recently used spaces (never `keep`) until the bytes fit: first the owner's of
        `keep` within its share, then, past the server's cap, those of the key holding the most.
        Refuse if `keep` alone is over the key's share."""
        owner = next((o for o, mine in self._owned.items() if any(s is keep for s in mine.values())), None)
        share = min(self.bytes_per_key, self.max_bytes)
        if keep.size > share:
            raise ApiError(413, "too_large", f"the files of this session are over the {share} bytes kept per key")
        if owner is not None:
            mine = self._owned[owner]
            used = sum(s.size for s in mine.values())
            for key in [k for k, s in mine.items() if s is not keep]:
                if used <= self.bytes_per_key:
                    break
                used -= mine[key].size
                self._drop(key)
        total = sum(s.size for s in self._spaces.values())
        while total > self.max_bytes:
            victims = [k for k in self._largest(lambda o: sum(s.size for s in self._owned[o].values()), keep)]
            if not victims:
                break
            total -= self._spaces[victims[0]].size
            self._drop(victims[0])

    def _largest(self, measure, keep: Space) -> list[tuple[str, str, str]]:
        """The spaces (oldest first, never `keep`) of the key that holds the most by `measure`."""
        owners = sorted(self._owned, key=measure, reverse=True)
        for o in owners:
            keys = [k for k, s in self._owned[o].items() if s is not keep]
            if keys:
                return keys
        return []

    def _drop(self, key: tuple[str, str, str]) -> bool:
        space = self._spaces.pop(key, None)
        if space is None:
            return False
        mine = self._owned.get(key[0])
        if mine is not None:
            mine.pop(key, None)
            if not mine:
                del self._owned[key[0]]
        return True

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.ttl
        for key in [k for k, s in self._spaces.items() if s.used < cutoff]:
            self._drop(key)


async def get_store(request: Request) -> PeerStore:
    """The app's one PeerStore, made on first use (async: runs on the event loop, so never twice)."""
    store = getattr(request.app.state, "peer_store", None)
    if store is None:
        settings = request.app.state.settings
        store = request.app.state.peer_store = PeerStore(bytes_per_key=settings.peer_bytes_per_key,
                                                         spaces_per_key=settings.peer_spaces_per_key)
    return store
