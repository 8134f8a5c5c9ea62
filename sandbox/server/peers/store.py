"""Files kept host-side between runs for the peers that have sessions (LibreChat's sessions, E2B's
contexts): bytes in memory, owned by the API key that made them, capped, expired when idle.

Until the engine has stateful sessions, this is the state a peer keeps: files, never variables.
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
    """Spaces keyed by (owner, kind, id). Least recently used spaces go first when the byte cap
    is reached; a space idle past `ttl` is dropped."""

    def __init__(self, max_bytes: int = 512 << 20, max_spaces: int = 10_000, ttl: float = 24 * 3600) -> None:
        self.max_bytes, self.max_spaces, self.ttl = max_bytes, max_spaces, ttl
        self._spaces: OrderedDict[tuple[str, str, str], Space] = OrderedDict()

    def create(self, owner: str, kind: str) -> tuple[str, Space]:
        self._expire()
        sid = new_id()
        space = self._spaces[(owner, kind, sid)] = Space()
        while len(self._spaces) > self.max_spaces:
            self._spaces.popitem(last=False)
        return sid, space

    def get(self, owner: str, kind: str, sid: str) -> Space | None:
        """The space, or None if it does not exist or belongs to another key."""
        self._expire()
        space = self._spaces.get((owner, kind, sid))
        if space is not None:
            space.used = time.monotonic()
            self._spaces.move_to_end((owner, kind, sid))
        return space

    def list(self, owner: str, kind: str) -> list[tuple[str, Space]]:
        self._expire()
        return [(sid, s) for (o, k, sid), s in self._spaces.items() if o == owner and k == kind]

    def delete(self, owner: str, kind: str, sid: str) -> bool:
        return self._spaces.pop((owner, kind, sid), None) is not None

    def fit(self, keep: Space) -> None:
        """Drop least recently used spaces (never `keep`) until the bytes fit; refuse if `keep`
        alone is over the cap."""
        if keep.size > self.max_bytes:
            raise ApiError(413, "too_large", f"the files of this session are over the {self.max_bytes} bytes kept per server")
        total = sum(s.size for s in self._spaces.values())
        for key in list(self._spaces):
            if total <= self.max_bytes:
                break
            if self._spaces[key] is not keep:
                total -= self._spaces.pop(key).size

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.ttl
        for key in [k for k, s in self._spaces.items() if s.used < cutoff]:
            del self._spaces[key]


async def get_store(request: Request) -> PeerStore:
    """The app's one PeerStore, made on first use (async: runs on the event loop, so never twice)."""
    store = getattr(request.app.state, "peer_store", None)
    if store is None:
        store = request.app.state.peer_store = PeerStore()
    return store
