"""Deadlines on each HTTP connection, so a slow client cannot hold a connection (and the memory of its
response) for ever: uvicorn's keep-alive timeout covers only the idle time between requests.

- a request's head (request line and headers) must arrive within `head_seconds` of the connection
  opening or of the request's first byte: a client that opens connections and sends nothing (or a
  byte at a time, "slowloris") would otherwise hold every place of `--max-connections` and every other
  client, key or no key, would get 503;
- its body within `body_seconds` of the head;
- a response whose reader stops reading is dropped after `write_stall_seconds` without progress: the
  whole result document (up to tens of MiB of files and images) sits in the send buffer meanwhile;
- one client address holds at most `per_client` connections at once (0: no cap); beyond, a new
  connection gets 503 and is closed before anything of it is parsed, so one address cannot take
  every place of `--max-connections` even while paying each deadline (behind a proxy on this host
  every client has the proxy's address: give 0 and let the proxy cap per client).

The deadlines live in uvicorn's own protocol class (the `http=` hook of its config): only there are a
connection's bytes and its write buffer visible; the ASGI app sees neither.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("sandbox.server")


_BUSY = json.dumps({"error": {"type": "unavailable", "message": "this client address has as many connections "
                               "open as the server allows one address: reuse them, or retry later"}}).encode()
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"retry-after: 1\r\ncontent-length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY)


def protocol_class(head_seconds: float, body_seconds: float, write_stall_seconds: float,
                   per_client: int = 0) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with these deadlines and this cap per client address (a class
    per server, since uvicorn builds one protocol instance per connection from the class alone)."""
    open_by_address: Counter[str] = Counter()

    class DeadlineProtocol(HttpToolsProtocol):
        _timers: dict[str, asyncio.TimerHandle]
        _address: str | None = None   # counted against its address's cap
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._timers = {}
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            address = peer[0] if isinstance(peer, tuple) and peer else None   # None: a Unix socket
            if per_client and address is not None:
                if open_by_address[address] >= per_client:
                    self._refused = True
                    transport.write(BUSY)
                    transport.close()
                    return
                open_by_address[address] += 1
                self._address = address
            self._arm("head", head_seconds)

        def data_received(self, data: bytes) -> None:
            if not self._refused:  # a refused connection's bytes are never parsed
                super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()
            if self._address is not None:
                open_by_address[self._address] -= 1
                if open_by_address[self._address] <= 0:
                    del open_by_address[self._address]
                self._address = None
            super().connection_lost(exc)

        # The parser's callbacks, in the order a request's bytes arrive.
        def on_message_begin(self) -> None:
            super().on_message_begin()
            if "head" not in self._timers:  # the next request on a kept-alive connection
                self._arm("head", head_seconds)

        def on_headers_complete(self) -> None:
            self._disarm("head")
            self._arm("body", body_seconds)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm("body")
            super().on_message_complete()

        # The transport's flow control: paused while the send buffer is over its high-water mark.
        def pause_writing(self) -> None:
            super().pause_writing()
            self._arm("write", write_stall_seconds)

        def resume_writing(self) -> None:
            self._disarm("write")
            super().resume_writing()

        def _arm(self, what: str, seconds: float) -> None:
            self._disarm(what)
            self._timers[what] = self.loop.call_later(seconds, self._expire, what, seconds)

        def _disarm(self, what: str) -> None:
            timer = self._timers.pop(what, None)
            if timer is not None:
                timer.cancel()

        def _expire(self, what: str, seconds: float) -> None:
            self._timers.pop(what, None)
            if self.transport.is_closing():
                return
            host = self.client[0] if self.client else "?"
            log.warning("closing a connection from %s: %s", host, _WHY[what].format(seconds=seconds),
                        extra={"event": "slow_client", "stage": what, "client": host})
            # abort, not close: close() would wait for the unread send buffer to drain first.
            self.transport.abort()

    return DeadlineProtocol


_WHY = {"head": "no complete request head within {seconds:g} s",
        "body": "request body not complete within {seconds:g} s",
        "write": "the response was not read for {seconds:g} s"}

