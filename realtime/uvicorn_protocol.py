"""uvicorn's sans-I/O WebSocket protocol, holding less for each idle socket.

``uvicorn chatproject.asgi:application --ws realtime.uvicorn_protocol:WebSocketProtocol`` (the
shipped command: docker/Dockerfile, scripts/quickstart, the test harness and the benchmark).
Frames, handshakes, closes and flow control are uvicorn's own (``websockets-sansio``, which
``--ws auto`` picks too); only what each connection keeps while it is open changes:

* the receive queue: uvicorn's ``asyncio.Queue`` makes three deques per socket (about 2.3 KB)
  for what is at most a few events with one reader; here a list made when an event waits;
* the transport's "writable" flag: an ``asyncio.Event`` (with its deque of waiters) becomes a
  flag whose waiters exist only while the transport is paused;
* the handshake's request and response (their header objects) are let go once the socket is
  accepted or refused, including the request websockets' parser kept; the application reads
  the headers from the ASGI scope.

Measured with the benchmark's S3 (``--trace-memory``): see the README. Everything else, and
every later uvicorn fix, is inherited; ``uvicorn`` is pinned, and the integration tests run it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import Protocol


class Inbox:
    """What uvicorn uses of ``asyncio.Queue`` (``put_nowait``, ``get``, ``empty``) for one
    reader: the ASGI app's ``receive``."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: list[Any] | None = None
        self.waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        if self.items is None:
            self.items = [item]
        else:
            self.items.append(item)
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def get(self) -> Any:
        while not self.items:
            waiter = self.waiter
            if waiter is None or waiter.done():
                waiter = self.waiter = asyncio.get_running_loop().create_future()
            await waiter
        item = self.items.pop(0)
        if not self.items:
            self.items = None
        return item

    def empty(self) -> bool:
        return not self.items

    def qsize(self) -> int:
        return len(self.items) if self.items else 0


class Flag:
    """What uvicorn uses of ``asyncio.Event`` for "the transport takes writes": set, clear,
    is_set and wait; the waiters' list exists only while someone waits."""

    __slots__ = ("value", "waiters")

    def __init__(self, value: bool = True) -> None:
        self.value = value
        self.waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self.value

    def set(self) -> None:
        self.value = True
        waiters, self.waiters = self.waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self.value = False

    async def wait(self) -> bool:
        if self.value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(waiter)
        try:
            await waiter
        finally:
            if self.waiters is not None and waiter in self.waiters:
                self.waiters.remove(waiter)
        return True


class WebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # Its headers are in the scope now; a handshake refused here has no further use for it.
        self.request = None  # type: ignore[assignment]
        # websockets' handshake parser goes on parsing frames in the same generator, whose frame
        # keeps the request (and its headers) as a local for as long as the socket is open. A
        # frame parser started afresh is the same parser in the same state when nothing is
        # buffered yet (a client sends no frame before the handshake's response), so it
        # replaces that one; otherwise the original stays.
        conn = self.conn
        if not self.handshake_complete and not conn.reader.buffer and conn.parser_exc is None:
            parser = Protocol.parse(conn)
            next(parser)
            conn.parser = parser

    def start_keepalive(self) -> None:
        # Called once the accepting response was written: it is not needed any more.
        self.response = None  # type: ignore[assignment]
        super().start_keepalive()
