"""Engine sessions a peer route makes on its own (a LibreChat session's interpreter, an E2B key's
default context), which the caller never asked for by name: at the key's session cap, the least
recently used idle one of them is closed to make room for the session a call needs (its files stay
where the peer keeps them; its next call starts a fresh interpreter, as a kernel restart). Sessions
the caller made on purpose (`/v1/sessions`, an E2B context from `POST /contexts`) are never closed
here.

    session = await implicit(request).create(sb, owner)              # may close an idle implicit one
    implicit(request).touch(owner, session.id, forget=lambda: ...)   # evictable, most recently used
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import Request

from ..errors import ApiError


class Implicit:
    def __init__(self) -> None:
        self._lru: OrderedDict[str, tuple[str, Callable[[], None]]] = OrderedDict()  # session -> (owner, forget)

    def touch(self, owner: str, session_id: str, forget: Callable[[], None]) -> None:
        self._lru[session_id] = (owner, forget)
        self._lru.move_to_end(session_id)

    def drop(self, session_id: str) -> None:
        self._lru.pop(session_id, None)

    async def create(self, request: Request, sb: Any, owner: str, **kwargs: Any) -> Any:
        sessions = request.app.state.sessions
        try:
            return await sessions.create(sb, owner, **kwargs)
        except ApiError as exc:
            if exc.status_code != 429:
                raise
            victim = next((sid for sid, (o, _) in self._lru.items()
                           if o == owner and not sessions.turns.held(sid)), None)
            if victim is None:
                raise
            _, forget = self._lru.pop(victim)
            forget()
            try:
                await sessions.close(owner, victim)
            except ApiError:
                pass  # it ended meanwhile
            return await sessions.create(sb, owner, **kwargs)


def implicit(request: Request) -> Implicit:
    found = getattr(request.app.state, "peer_implicit", None)
    if found is None:
        found = request.app.state.peer_implicit = Implicit()
    return found
